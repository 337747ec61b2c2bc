"""tensorflow/tpu's original EfficientNet checkpoints -> this package's weights.

    keras-effnet convert CKPT_DIR --model b3 --out b3.weights.h5
    model = keras_effnet.EfficientNetB3(weights="b3.weights.h5")

The checkpoints of `models/official/efficientnet` (B0-B8, L2, Lite0-4, EdgeTPU-S/M/L,
AutoAugment, RandAugment, AdvProp, NoisyStudent) keep each variable under the model's
scope in the order tensorflow/tpu's builder created the layers:

    efficientnet-b0/stem/conv2d/kernel, stem/tpu_batch_normalization/{gamma,beta,...}
    efficientnet-b0/blocks_N/conv2d/kernel          (expansion, then the projection as
    efficientnet-b0/blocks_N/depthwise_conv2d/...    conv2d_1; batch norms numbered the
    efficientnet-b0/blocks_N/se/conv2d{,_1}/...      same way)
    efficientnet-b0/head/conv2d/kernel, head/tpu_batch_normalization, head/dense/...

Each variable may have an `ExponentialMovingAverage` shadow; tensorflow/tpu evaluates
with the averages, and so does this reader unless `moving_average=False`. EdgeTPU
checkpoints classify 1001 classes with background at index 0: the reader drops it, so
the classes are Keras' 1000.
"""

from __future__ import annotations

import os
import re

import numpy as np

from keras_effnet.scaling import plan_blocks
from keras_effnet.specs import FUSED, VariantSpec, get_variant

__all__ = ["checkpoint_to_keras", "convert_checkpoint"]

_EMA = "/ExponentialMovingAverage"
_BN = ("gamma", "beta", "moving_mean", "moving_variance")


def _scope(names: list[str], variant: VariantSpec) -> str:
    """The model's top-level scope in the checkpoint (efficientnet-b0, efficientnet-lite0,
    efficientnet-edgetpu-S, ...)."""
    scopes = sorted({n.split("/", 1)[0] for n in names if "/stem/" in n})
    if len(scopes) != 1:
        raise ValueError(f"expected one tensorflow/tpu EfficientNet (a '<scope>/stem/...' "
                         f"variable) in the checkpoint, found {scopes or 'none'}")
    return scopes[0]


def _block_layers(plan) -> list[tuple[str, str, int]]:
    """(our layer suffix, tensorflow/tpu layer kind, its index among that kind in the
    block) in creation order: expansion, depthwise, SE, projection."""
    layers = []
    convs = bns = 0
    if plan.kind == FUSED or plan.expand_ratio != 1:
        layers += [("expand_conv", "conv2d", convs), ("expand_bn", "bn", bns)]
        convs, bns = convs + 1, bns + 1
    if plan.kind != FUSED:
        layers += [("dwconv", "depthwise_conv2d", 0), ("bn", "bn", bns)]
        bns += 1
        if plan.se_filters:
            layers += [("se_reduce", "se/conv2d", 0), ("se_expand", "se/conv2d", 1)]
    return layers + [("project_conv", "conv2d", convs), ("project_bn", "bn", bns)]


def _numbered(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index}"


class _Reader:
    """A tensorflow/tpu checkpoint's variables under one model scope, read by layer."""

    def __init__(self, path, variant: VariantSpec, moving_average: bool):
        import tensorflow as tf

        try:
            self.reader = tf.train.load_checkpoint(os.fspath(path))
        except (ValueError, tf.errors.OpError) as exc:
            raise ValueError(f"{os.fspath(path)} is not a TensorFlow checkpoint (a folder with "
                             f"a 'checkpoint' file, or a prefix of .index/.data files): {exc}"
                             ) from None
        self.names = [n for n in self.reader.get_variable_to_shape_map() if not n.endswith(_EMA)]
        self.scope = _scope(self.names, variant)
        self.variant, self.moving_average, self.used = variant, moving_average, set()
        # the checkpoint names its batch norms tpu_batch_normalization or batch_normalization
        self.bn_kind = "tpu_batch_normalization" if any(
            "tpu_batch_normalization" in n for n in self.names) else "batch_normalization"

    def take(self, name: str) -> np.ndarray:
        full = f"{self.scope}/{name}"
        if full not in self.names:
            raise ValueError(f"the checkpoint has no {full!r}: it is not a tensorflow/tpu "
                             f"{self.variant.constructor_name} "
                             f"({len(plan_blocks(self.variant))} blocks)")
        self.used.add(full)
        if self.moving_average and self.reader.has_tensor(full + _EMA):
            return self.reader.get_tensor(full + _EMA)
        return self.reader.get_tensor(full)

    def layer(self, prefix: str, kind: str, index: int) -> list[np.ndarray]:
        if kind == "bn":
            return [self.take(f"{prefix}/{_numbered(self.bn_kind, index)}/{v}") for v in _BN]
        if kind == "se/conv2d":
            base = f"{prefix}/se/{_numbered('conv2d', index)}"
            return [self.take(f"{base}/kernel"), self.take(f"{base}/bias")]
        base = f"{prefix}/{_numbered(kind, index)}"
        if kind == "depthwise_conv2d":
            return [self.take(f"{base}/depthwise_kernel")]
        return [self.take(f"{base}/kernel")]

    def unused(self) -> list[str]:
        return [n for n in self.names if n not in self.used and not _bookkeeping(n)]


def checkpoint_to_keras(path: str | os.PathLike, variant: VariantSpec | str,
                        moving_average: bool = True) -> dict[str, list[np.ndarray]]:
    """{our layer name: [arrays]} from a tensorflow/tpu checkpoint (a folder or a prefix);
    every variable the variant needs must be there, and nothing else may be."""
    variant = get_variant(variant) if isinstance(variant, str) else variant
    ckpt = _Reader(path, variant, moving_average)
    out = {"stem_conv": ckpt.layer("stem", "conv2d", 0), "stem_bn": ckpt.layer("stem", "bn", 0)}
    for k, plan in enumerate(plan_blocks(variant)):
        for suffix, kind, index in _block_layers(plan):
            out[plan.name + suffix] = ckpt.layer(f"blocks_{k}", kind, index)
    out["top_conv"] = ckpt.layer("head", "conv2d", 0)
    out["top_bn"] = ckpt.layer("head", "bn", 0)
    if f"{ckpt.scope}/head/dense/kernel" in ckpt.names:
        kernel, bias = ckpt.take("head/dense/kernel"), ckpt.take("head/dense/bias")
        if kernel.shape[-1] == 1001:  # EdgeTPU: background at index 0
            kernel, bias = kernel[:, 1:], bias[1:]
        out["predictions"] = [kernel, bias]
    extra = ckpt.unused()
    if extra:
        raise ValueError(f"the checkpoint has {len(extra)} variables {variant.constructor_name} "
                         f"does not use (first: {extra[0]!r}): it holds another architecture")
    return out


def _bookkeeping(name: str) -> bool:
    """Training state that is not a weight: step counters, optimizer slots."""
    return bool(re.search(r"global_step|/RMSProp|/Momentum|/Adam|^beta[12]_power", name))


def convert_checkpoint(path: str | os.PathLike, variant: VariantSpec | str,
                       out: str | os.PathLike, overwrite: bool = False,
                       moving_average: bool = True) -> str:
    """Convert a tensorflow/tpu checkpoint into a `.weights.h5` for `variant` (built with its
    classifier); returns the written path. Nothing is written when the checkpoint does
    not fit."""
    from keras_effnet.builder import build_efficientnet
    from keras_effnet.files import atomic_output, check_destination
    from keras_effnet.weights import FileWeights, assign

    variant = get_variant(variant) if isinstance(variant, str) else variant
    if not os.fspath(out).endswith(".weights.h5"):
        raise ValueError(f"--out must end in .weights.h5 (Keras' weight format), got "
                         f"{os.fspath(out)!r}")
    check_destination(out, overwrite)
    arrays = checkpoint_to_keras(path, variant, moving_average)
    classes = arrays["predictions"][1].shape[0] if "predictions" in arrays else 1000
    model = build_efficientnet(variant, weights=None, classes=classes,
                               include_top="predictions" in arrays)
    assign(model, FileWeights(os.path.basename(os.fspath(path)), arrays, "name"), variant)
    with atomic_output(out, overwrite, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    return os.fspath(out)
