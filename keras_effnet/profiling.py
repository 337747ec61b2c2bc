"""Parameter and multiply-add counts, per layer and in total.

MACs count the multiply-adds of convolution and dense layers, the paper's
"FLOPs" convention (Table 2: B0 has 0.39B). Element-wise work (batch norm,
activations, the SE multiply, pooling) is left out, as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np

__all__ = ["LayerProfile", "ModelProfile", "profile"]


@dataclass(frozen=True)
class LayerProfile:
    name: str
    kind: str
    params: int
    macs: int
    output_shape: tuple


@dataclass(frozen=True)
class ModelProfile:
    name: str
    input_shape: tuple
    params: int
    trainable_params: int
    macs: int
    layers: tuple[LayerProfile, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def _layer_macs(layer: keras.layers.Layer) -> int:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, channels, multiplier = layer.kernel.shape
        out = layer.output.shape
        return int(out[1] * out[2] * kh * kw * channels * multiplier)
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        out = layer.output.shape
        return int(out[1] * out[2] * kh * kw * cin * cout)
    if isinstance(layer, keras.layers.Dense):
        cin, cout = layer.kernel.shape
        positions = int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) > 2 else 1
        return int(positions * cin * cout)
    return 0


def profile(model: keras.Model) -> ModelProfile:
    """Params and MACs of `model` for one image at its input size.

    The model must have a fixed input size: build it with `input_shape=` (or
    `include_top=True`, whose default input is the variant's resolution).
    """
    shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if shape is None or any(d is None for d in shape):
        raise ValueError(
            f"profile() needs a fixed input size, model {model.name!r} has input shape "
            f"{model.input_shape}; rebuild it with input_shape=(H, W, 3)"
        )
    rows = []
    for layer in model.layers:
        params = int(layer.count_params()) if layer.weights else 0
        macs = _layer_macs(layer)
        if params or macs:
            rows.append(LayerProfile(layer.name, type(layer).__name__, params, macs,
                                     tuple(layer.output.shape[1:])))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return ModelProfile(
        name=model.name,
        input_shape=shape,
        params=int(model.count_params()),
        trainable_params=trainable,
        macs=int(sum(r.macs for r in rows)),
        layers=tuple(rows),
    )
