"""The EfficientNet family as data: stage rows and the variant table.

Every architectural fact lives here once: a channel count in a stage row, a
coefficient in the variant table. The builder reads these tables; nothing else
in the package hard-codes a width, a depth or a resolution.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

__all__ = [
    "B0_STAGES",
    "EDGETPU_STAGES",
    "LITE_STAGES",
    "VARIANTS",
    "StageSpec",
    "VariantSpec",
    "decode_stages",
    "encode_stages",
    "get_variant",
    "variant_names",
]

MBCONV = "mbconv"
FUSED = "fused"
_KINDS = (MBCONV, FUSED)
_FUSED_STRIDES = ("project", "expand")


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage of identical blocks, before width and depth scaling.

    `kind` is "mbconv" (expand 1x1 -> depthwise kxk -> SE -> project 1x1) or
    "fused" (expand kxk -> project 1x1, no depthwise, no SE).
    `se_ratio` is relative to the block's input channels; 0 means no SE.
    """

    kind: str
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int
    repeats: int
    se_ratio: float = 0.0
    id_skip: bool = True
    # fused stages: which conv strides. "project" (the 1x1 projection): tensorflow/tpu's
    # MBConvBlockWithoutDepthwise from the EdgeTPU release (631fb4c, 2019-07) until
    # 32572cb (2020-12), so the released EdgeTPU checkpoints; "expand" (the kxk
    # expansion): tensorflow/tpu and timm (666de85c, 2021-02) since. README: "The families".
    fused_stride: str = "project"

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"StageSpec.kind must be one of {_KINDS}, got {self.kind!r}")
        for field in ("kernel_size", "strides", "expand_ratio", "filters_in", "filters_out",
                      "repeats"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StageSpec.{field} must be a positive int, got {value!r}")
        if not 0.0 <= self.se_ratio <= 1.0:
            raise ValueError(f"StageSpec.se_ratio must be in [0, 1], got {self.se_ratio!r}")
        if self.kind == FUSED and self.se_ratio:
            raise ValueError("fused stages have no squeeze-excitation: se_ratio must be 0")
        if self.fused_stride not in _FUSED_STRIDES or (
                self.kind != FUSED and self.fused_stride != "project"):
            raise ValueError(f"StageSpec.fused_stride must be one of {_FUSED_STRIDES} (and "
                             f"'project' for mbconv stages), got {self.fused_stride!r}")

    def encode(self) -> str:
        """The tensorflow/tpu-style string form, e.g. 'r2_k3_s2_e6_i16_o24_se0.25'."""
        parts = [
            f"r{self.repeats}",
            f"k{self.kernel_size}",
            f"s{self.strides}",
            f"e{self.expand_ratio}",
            f"i{self.filters_in}",
            f"o{self.filters_out}",
        ]
        if self.se_ratio:
            parts.append(f"se{self.se_ratio:g}")
        if self.kind == FUSED:
            parts.append("fused" if self.fused_stride == "project" else "fusedx")
        if not self.id_skip:
            parts.append("noskip")
        return "_".join(parts)

    @classmethod
    def decode(cls, text: str) -> StageSpec:
        """Parse the string form written by `encode`."""
        fields: dict = {"kind": MBCONV, "id_skip": True, "se_ratio": 0.0}
        keys = {"r": "repeats", "k": "kernel_size", "s": "strides", "e": "expand_ratio",
                "i": "filters_in", "o": "filters_out"}
        for part in text.split("_"):
            if part in ("fused", "fusedx"):
                fields["kind"] = FUSED
                fields["fused_stride"] = "project" if part == "fused" else "expand"
            elif part == "noskip":
                fields["id_skip"] = False
            elif m := re.fullmatch(r"se(\d+(?:\.\d+)?)", part):
                fields["se_ratio"] = float(m.group(1))
            elif (m := re.fullmatch(r"([rksieo])(\d+)", part)):
                fields[keys[m.group(1)]] = int(m.group(2))
            else:
                raise ValueError(
                    f"cannot parse stage {text!r}: unknown part {part!r}; "
                    "expected e.g. 'r2_k3_s2_e6_i16_o24_se0.25'"
                )
        missing = set(keys.values()) - set(fields)
        if missing:
            raise ValueError(f"stage {text!r} lacks {sorted(missing)}")
        return cls(**fields)


def encode_stages(stages: tuple[StageSpec, ...]) -> list[str]:
    return [s.encode() for s in stages]


def decode_stages(texts: list[str]) -> tuple[StageSpec, ...]:
    return tuple(StageSpec.decode(t) for t in texts)


def _mb(*, kernel, strides, expand, filters_in, filters_out, repeats, se_ratio=0.25):
    return StageSpec(kind=MBCONV, kernel_size=kernel, strides=strides, expand_ratio=expand,
                     filters_in=filters_in, filters_out=filters_out, repeats=repeats,
                     se_ratio=se_ratio)


# paper Table 1: the B0 baseline, 7 MBConv stages after a 32-channel stem.
B0_STAGES: tuple[StageSpec, ...] = (
    _mb(kernel=3, strides=1, expand=1, filters_in=32, filters_out=16, repeats=1),
    _mb(kernel=3, strides=2, expand=6, filters_in=16, filters_out=24, repeats=2),
    _mb(kernel=5, strides=2, expand=6, filters_in=24, filters_out=40, repeats=2),
    _mb(kernel=3, strides=2, expand=6, filters_in=40, filters_out=80, repeats=3),
    _mb(kernel=5, strides=1, expand=6, filters_in=80, filters_out=112, repeats=3),
    _mb(kernel=5, strides=2, expand=6, filters_in=112, filters_out=192, repeats=4),
    _mb(kernel=3, strides=1, expand=6, filters_in=192, filters_out=320, repeats=1),
)

# tensorflow/tpu lite builder: the B0 stages with squeeze-excitation removed
# (SE is poorly supported by mobile accelerators and hurts int8).
LITE_STAGES: tuple[StageSpec, ...] = tuple(dataclasses.replace(s, se_ratio=0.0) for s in B0_STAGES)

# tensorflow/tpu edgetpu builder: fused blocks (no depthwise) in the first three
# stages, MBConv without SE after; the first stage is declared with 24 input
# channels although the stem gives 32, which sets its expansion to 24 * 4.
EDGETPU_STAGES: tuple[StageSpec, ...] = (
    StageSpec(kind=FUSED, kernel_size=3, strides=1, expand_ratio=4, filters_in=24,
              filters_out=24, repeats=1, id_skip=False),
    StageSpec(kind=FUSED, kernel_size=3, strides=2, expand_ratio=8, filters_in=24,
              filters_out=32, repeats=2),
    StageSpec(kind=FUSED, kernel_size=3, strides=2, expand_ratio=8, filters_in=32,
              filters_out=48, repeats=4),
    StageSpec(kind=MBCONV, kernel_size=5, strides=2, expand_ratio=8, filters_in=48,
              filters_out=96, repeats=5),
    StageSpec(kind=MBCONV, kernel_size=5, strides=1, expand_ratio=8, filters_in=96,
              filters_out=144, repeats=4),
    StageSpec(kind=MBCONV, kernel_size=5, strides=2, expand_ratio=8, filters_in=144,
              filters_out=192, repeats=2),
)

# Input statistics in 0-1 units (the model divides by 255 first).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# tensorflow/tpu lite and edgetpu builders: inception-style (x - 127) / 128,
# friendlier to post-training quantization.
INCEPTION_MEAN = (127.0 / 255.0,) * 3
INCEPTION_STD = (128.0 / 255.0,) * 3


# a short name's prefix -> the constructor's: b0 -> B0, l2 -> L2, lite0 -> Lite0,
# edgetpu-s -> EdgeTPUS
_CONSTRUCTOR_PREFIX = {"b": "B", "l": "L", "lite": "Lite", "edgetpu": "EdgeTPU"}


@dataclass(frozen=True, kw_only=True)
class VariantSpec:
    """One member of the family. Build one with `dataclasses.replace` on a row
    of `VARIANTS`; an unknown field name raises TypeError."""

    name: str  # public short name, e.g. "b0", "lite2", "edgetpu-s"
    model_name: str  # Keras model name, e.g. "efficientnetb0"
    family: str  # "b", "lite" or "edgetpu"
    width: float
    depth: float
    resolution: int
    dropout: float
    stages: tuple[StageSpec, ...]
    activation: str
    stem_filters: int = 32  # paper Table 1
    head_filters: int = 1280  # paper Table 1
    scale_stem_head: bool = True  # lite builder: False, stem and head stay 32 / 1280
    scale_end_repeats: bool = True  # lite builder: False, first and last stage keep their repeats
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD

    @property
    def constructor_name(self) -> str:
        if VARIANTS.get(self.name) != self:
            return f"EfficientNet({self.name})"
        prefix, index = re.fullmatch(r"([a-z]+?)-?([0-9]*[a-z]?)", self.name).groups()
        return f"EfficientNet{_CONSTRUCTOR_PREFIX[prefix]}{index.upper()}"


def _b(name, **scaling):
    return VariantSpec(name=name, model_name=f"efficientnet{name}", family="b",
                       stages=B0_STAGES, activation="swish", **scaling)


def _lite(i, **scaling):
    return VariantSpec(name=f"lite{i}", model_name=f"efficientnetlite{i}", family="lite",
                       stages=LITE_STAGES, activation="relu6", scale_stem_head=False,
                       scale_end_repeats=False, input_mean=INCEPTION_MEAN,
                       input_std=INCEPTION_STD, **scaling)


def _edgetpu(size, **scaling):
    """`scaling`: width, depth, resolution and dropout, by name (VariantSpec's fields)."""
    return VariantSpec(name=f"edgetpu-{size}", model_name=f"efficientnetedgetpu{size}",
                       family="edgetpu", stages=EDGETPU_STAGES, activation="relu",
                       input_mean=INCEPTION_MEAN, input_std=INCEPTION_STD, **scaling)


# B0-B7 from keras.applications / paper Table 2 (hand-rounded, not alpha**phi); Lite
# from the tpu lite builder; EdgeTPU from the tpu edgetpu builder.
VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        _b("b0", width=1.0, depth=1.0, resolution=224, dropout=0.2),
        _b("b1", width=1.0, depth=1.1, resolution=240, dropout=0.2),
        _b("b2", width=1.1, depth=1.2, resolution=260, dropout=0.3),
        _b("b3", width=1.2, depth=1.4, resolution=300, dropout=0.3),
        _b("b4", width=1.4, depth=1.8, resolution=380, dropout=0.4),
        _b("b5", width=1.6, depth=2.2, resolution=456, dropout=0.4),
        _b("b6", width=1.8, depth=2.6, resolution=528, dropout=0.5),
        _b("b7", width=2.0, depth=3.1, resolution=600, dropout=0.5),
        # tensorflow/tpu efficientnet_builder.py: B8 (AdvProp) and L2 (NoisyStudent)
        _b("b8", width=2.2, depth=3.6, resolution=672, dropout=0.5),
        _b("l2", width=4.3, depth=5.3, resolution=800, dropout=0.5),
        _lite(0, width=1.0, depth=1.0, resolution=224, dropout=0.2),
        _lite(1, width=1.0, depth=1.1, resolution=240, dropout=0.2),
        _lite(2, width=1.1, depth=1.2, resolution=260, dropout=0.3),
        _lite(3, width=1.2, depth=1.4, resolution=280, dropout=0.3),
        _lite(4, width=1.4, depth=1.8, resolution=300, dropout=0.3),
        _edgetpu("s", width=1.0, depth=1.0, resolution=224, dropout=0.2),
        _edgetpu("m", width=1.0, depth=1.1, resolution=240, dropout=0.2),
        _edgetpu("l", width=1.2, depth=1.4, resolution=300, dropout=0.3),
    )
}


def variant_names() -> list[str]:
    return list(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    """Look up a variant by short name ('b4', 'lite0', 'edgetpu-s'), Keras model
    name ('efficientnetb4') or constructor name ('EfficientNetB4')."""
    key = str(name).strip().lower().replace("_", "-")
    for prefix in ("efficientnet-", "efficientnet"):
        key = key.removeprefix(prefix)
    if key.startswith("edgetpu") and not key.startswith("edgetpu-"):
        key = "edgetpu-" + key[len("edgetpu"):]
    if key not in VARIANTS:
        raise ValueError(
            f"unknown EfficientNet variant {name!r}; expected one of "
            f"{', '.join(VARIANTS)} (or keras_effnet.EfficientNet(phi=...) for other sizes)"
        )
    return VARIANTS[key]
