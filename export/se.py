"""Squeeze-excitation (SE) and swish, treated on purpose before conversion.

SE is global mean -> 1x1 conv -> swish -> 1x1 conv -> sigmoid -> multiply. The
global mean squeezes a whole feature map into one int8 value per channel and
the sigmoid gate rescales every activation of the block, which is where int8
EfficientNets lose accuracy; the Edge TPU also refuses large global means.
Each strategy is a graph transformation of the Keras model, weights carried:

    keep    the model as it is
    float   unchanged here; the converter keeps the SE ops in float (tflite.py)
    hard    sigmoid -> hard sigmoid, swish -> hard swish, everywhere
    pool    the SE global mean -> an AveragePooling2D over the whole map
            (tensorflow/tpu's Lite and EdgeTPU builders do this for the Edge TPU)
    remove  no SE at all, as in EfficientNet-Lite: accuracy needs fine-tuning after it

Strategies combine with "+": "hard+pool".
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from keras_effnet import graph

__all__ = [
    "SE_STRATEGIES",
    "EdgeHardSwish",
    "SEBlock",
    "apply_se_strategy",
    "check_se",
    "find_se_blocks",
    "parse_se",
]

SE_STRATEGIES = ("keep", "float", "hard", "pool", "remove")
_SWISH = ("swish", "silu")
_SIGMOID = ("sigmoid",)


@dataclasses.dataclass(frozen=True)
class SEBlock:
    """One squeeze-excitation sub-graph, by layer name."""

    squeeze: str        # the GlobalAveragePooling2D
    layers: tuple       # every layer from the squeeze to the gate, in order
    excite: str         # the Multiply that applies the gate
    spatial: tuple      # (H, W) of the squeezed feature map, None when dynamic


def parse_se(se) -> tuple[str, ...]:
    """'hard+pool' or ['hard', 'pool'] -> ('hard', 'pool'), checked."""
    parts = se.split("+") if isinstance(se, str) else list(se)
    parts = tuple(p.strip().lower() for p in parts if p.strip())
    unknown = [p for p in parts if p not in SE_STRATEGIES]
    if not parts or unknown:
        raise ValueError(f"unknown SE strategy {se!r}: expected one of {', '.join(SE_STRATEGIES)}, "
                         "or several joined with '+' (e.g. 'hard+pool')")
    if "remove" in parts and len(parts) > 1 and set(parts) - {"remove", "hard"}:
        raise ValueError(f"se={se!r}: 'remove' drops SE, so it combines only with 'hard'")
    if "keep" in parts and len(parts) > 1:
        parts = tuple(p for p in parts if p != "keep")
    return parts


def check_se(model: keras.Model, se) -> tuple[str, ...]:
    """`parse_se(se)`, and a clear error when the strategy changes SE blocks (pool,
    remove) that `model` does not have: called by every writer before it writes."""
    parts = parse_se(se)
    if {"pool", "remove"} & set(parts) and not find_se_blocks(model):
        raise ValueError(f"se={se!r}: {model.name} has no squeeze-excitation blocks (a "
                         "Multiply gated by a GlobalAveragePooling2D of its input) to change; "
                         "the Lite variants have none: leave se at 'keep' for them")
    return parts


def find_se_blocks(model: keras.Model) -> list[SEBlock]:
    """Every SE sub-graph: a Multiply(x, gate) whose gate comes, through single-input
    layers, from a GlobalAveragePooling2D of the same x. Works for this package's
    models, keras.applications' EfficientNets and models that nest them."""
    blocks = []
    for layer in graph.layers(model, nested="leaves"):
        if not isinstance(layer, layers.Multiply) or not graph.call_count(layer):
            continue
        inputs = graph.input_tensors(layer)
        if len(inputs) != 2:
            continue
        for features, gate in (inputs, inputs[::-1]):
            block = _se_block(layer, features, gate)
            if block is not None:
                blocks.append(block)
                break
    return blocks


def _gate_path(gate) -> list:
    """The layers from `gate` back through single-input layers to the first
    GlobalAveragePooling2D or the graph's input, nearest first."""
    path, tensor = [], gate
    while True:
        op, call = graph.producer(tensor)
        if isinstance(op, layers.InputLayer):
            return path
        path.append(op)
        parents = graph.input_tensors(op, call)
        if isinstance(op, layers.GlobalAveragePooling2D) or len(parents) != 1:
            return path
        tensor = parents[0]


def _se_block(multiply, features, gate) -> SEBlock | None:
    path = _gate_path(gate)
    if not path or not isinstance(path[-1], layers.GlobalAveragePooling2D):
        return None
    squeeze = path[-1]
    (source,) = graph.input_tensors(squeeze)
    if source is not features:
        return None
    spatial = tuple(source.shape[1:3])
    return SEBlock(squeeze.name, tuple(op.name for op in reversed(path)), multiply.name,
                   None if None in spatial else spatial)


@keras.saving.register_keras_serializable(package="keras_effnet")
class EdgeHardSwish(layers.Layer):
    """x * clip(x / 6 + 1/2, 0, 1), written so the TFLite converter keeps it as
    MUL, ADD, RELU and MINIMUM instead of fusing it into HARD_SWISH. Those ops are
    all on Coral's Edge TPU list, and HARD_SWISH is not (google-coral/edgetpu#272);
    on the CPU, LiteRT's int8 HARD_SWISH kernel also ran B0 at 27.9 ms against
    7.5 ms for this form (one thread, benchmarks/export_matrix.py). Numerically
    the same function as keras' hard_swish."""

    def call(self, x):
        return x * ops.minimum(ops.relu(x * (1.0 / 6.0) + 0.5), 1.0)


def _hard_name(activation):
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
    if name in _SWISH:
        return "edge_hard_swish"
    if name in _SIGMOID:
        return "hard_sigmoid"
    return None


def apply_se_strategy(model: keras.Model, se="keep") -> keras.Model:
    """A new model with the SE strategy applied (the same model for keep/float).
    Hard swish is written as `EdgeHardSwish`, hard sigmoid as keras' hard_sigmoid
    (which converts to ops the Edge TPU maps)."""
    parts = check_se(model, se)
    if not {"hard", "pool", "remove"} & set(parts):
        return model
    blocks = find_se_blocks(model)
    rewrite = _SERewrite(parts, blocks)
    new = graph.rebuild(model, call=rewrite.call, replace=rewrite.clone, recursive=True)
    for layer in graph.layers(new, nested="leaves"):
        source = rewrite.sources.get(layer.name)
        if source is not None and source.weights:
            layer.set_weights(source.get_weights())
    return new


class _SERewrite:
    """The layer replacements (`clone`) and call changes (`call`) of one strategy."""

    def __init__(self, parts: tuple[str, ...], blocks: list[SEBlock]):
        self.hard, self.pool, self.remove = ("hard" in parts, "pool" in parts,
                                             "remove" in parts)
        self.squeeze = {b.squeeze: b for b in blocks}
        self.excite = {b.excite for b in blocks}
        self.reshapes_after_pool = {b.layers[1] for b in blocks if len(b.layers) > 1}
        self.sources: dict = {}  # new layer name -> the layer whose weights it takes
        self.edge_activations: dict = {}

    def clone(self, layer):
        config = layer.get_config()
        new = _hard_name(config["activation"]) if self.hard and "activation" in config else None
        if new == "edge_hard_swish":
            config["activation"] = "linear"
            self.edge_activations[layer.name] = EdgeHardSwish(name=layer.name + "_hard_swish")
        elif new:
            config["activation"] = new
        self.sources[layer.name] = layer
        return layer.__class__.from_config(config)

    def call(self, layer, *args, **kwargs):
        name = layer.name
        if self.remove and name in self.excite:
            return args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
        if self.pool and name in self.squeeze:
            return self._pooled(name, args[0])
        if self.pool and name in self.reshapes_after_pool:
            return args[0]  # the pooled map is already (N, 1, 1, C)
        # (with "remove", the SE branch is still called: unused, it is pruned from the graph)
        out = layer(*args, **kwargs)
        edge = self.edge_activations.get(name)
        return edge(out) if edge is not None else out

    def _pooled(self, name, x):
        height, width = self.squeeze[name].spatial or (None, None)
        if height is None:
            raise ValueError(f"se='pool' needs a fixed input size: {name} sees a feature map "
                             "of unknown size; rebuild the model with input_shape=(H, W, 3)")
        return layers.AveragePooling2D((height, width), name=name + "_pool")(x)
