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


@dataclass(frozen=True)
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

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"StageSpec.kind must be one of {_KINDS}, got {self.kind!r}")
        for field in ("kernel_size", "strides", "expand_ratio", "filters_in", "filters_out", "repeats"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StageSpec.{field} must be a positive int, got {value!r}")
        if not 0.0 <= self.se_ratio <= 1.0:
            raise ValueError(f"StageSpec.se_ratio must be in [0, 1], got {self.se_ratio!r}")
        if self.kind == FUSED and self.se_ratio:
            raise ValueError("fused stages have no squeeze-excitation: se_ratio must be 0")

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
            parts.append("fused")
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
            if part == "fused":
                fields["kind"] = FUSED
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


def _mb(k, s, e, i, o, r, se=0.25):
    return StageSpec(MBCONV, k, s, e, i, o, r, se)


# paper Table 1: the B0 baseline, 7 MBConv stages after a 32-channel stem.
B0_STAGES: tuple[StageSpec, ...] = (
    _mb(3, 1, 1, 32, 16, 1),
    _mb(3, 2, 6, 16, 24, 2),
    _mb(5, 2, 6, 24, 40, 2),
    _mb(3, 2, 6, 40, 80, 3),
    _mb(5, 1, 6, 80, 112, 3),
    _mb(5, 2, 6, 112, 192, 4),
    _mb(3, 1, 6, 192, 320, 1),
)

# tensorflow/tpu lite builder: the B0 stages with squeeze-excitation removed
# (SE is poorly supported by mobile accelerators and hurts int8).
LITE_STAGES: tuple[StageSpec, ...] = tuple(dataclasses.replace(s, se_ratio=0.0) for s in B0_STAGES)

# tensorflow/tpu edgetpu builder: fused blocks (no depthwise) in the first three
# stages, MBConv without SE after; the first stage is declared with 24 input
# channels although the stem gives 32, which sets its expansion to 24 * 4.
EDGETPU_STAGES: tuple[StageSpec, ...] = (
    StageSpec(FUSED, 3, 1, 4, 24, 24, 1, id_skip=False),
    StageSpec(FUSED, 3, 2, 8, 24, 32, 2),
    StageSpec(FUSED, 3, 2, 8, 32, 48, 4),
    StageSpec(MBCONV, 5, 2, 8, 48, 96, 5),
    StageSpec(MBCONV, 5, 1, 8, 96, 144, 4),
    StageSpec(MBCONV, 5, 2, 8, 144, 192, 2),
)

# Input statistics in 0-1 units (the model divides by 255 first).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# tensorflow/tpu lite and edgetpu builders: inception-style (x - 127) / 128,
# friendlier to post-training quantization.
INCEPTION_MEAN = (127.0 / 255.0,) * 3
INCEPTION_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
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
        suffix = {"b": "B", "lite": "Lite", "edgetpu": "EdgeTPU"}[self.family]
        index = self.name[len(self.family):].lstrip("-").upper()
        return f"EfficientNet{suffix}{index}"


def _b(i, width, depth, resolution, dropout):
    return VariantSpec(f"b{i}", f"efficientnetb{i}", "b", width, depth, resolution, dropout,
                       B0_STAGES, "swish")


def _lite(i, width, depth, resolution, dropout):
    return VariantSpec(f"lite{i}", f"efficientnetlite{i}", "lite", width, depth, resolution,
                       dropout, LITE_STAGES, "relu6", scale_stem_head=False,
                       scale_end_repeats=False, input_mean=INCEPTION_MEAN,
                       input_std=INCEPTION_STD)


def _edgetpu(size, width, depth, resolution, dropout):
    return VariantSpec(f"edgetpu-{size}", f"efficientnetedgetpu{size}", "edgetpu", width, depth,
                       resolution, dropout, EDGETPU_STAGES, "relu", input_mean=INCEPTION_MEAN,
                       input_std=INCEPTION_STD)


# (width, depth, resolution, dropout): B0-B7 from keras.applications / paper
# Table 2 (hand-rounded, not alpha**phi); Lite from the tpu lite builder;
# EdgeTPU from the tpu edgetpu builder.
VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        _b(0, 1.0, 1.0, 224, 0.2),
        _b(1, 1.0, 1.1, 240, 0.2),
        _b(2, 1.1, 1.2, 260, 0.3),
        _b(3, 1.2, 1.4, 300, 0.3),
        _b(4, 1.4, 1.8, 380, 0.4),
        _b(5, 1.6, 2.2, 456, 0.4),
        _b(6, 1.8, 2.6, 528, 0.5),
        _b(7, 2.0, 3.1, 600, 0.5),
        _lite(0, 1.0, 1.0, 224, 0.2),
        _lite(1, 1.0, 1.1, 240, 0.2),
        _lite(2, 1.1, 1.2, 260, 0.3),
        _lite(3, 1.2, 1.4, 280, 0.3),
        _lite(4, 1.4, 1.8, 300, 0.3),
        _edgetpu("s", 1.0, 1.0, 224, 0.2),
        _edgetpu("m", 1.0, 1.1, 240, 0.2),
        _edgetpu("l", 1.2, 1.4, 300, 0.3),
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
