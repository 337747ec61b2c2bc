"""Walking and rewriting functional Keras graphs, nested models included.

    for layer in graph.layers(model):                 # every layer, nested ones too
    producer, index = graph.producer(tensor)          # which layer call made a tensor
    new = graph.rebuild(model, call=my_call)          # the same graph, calls intercepted

The export layer's SE strategies and preprocessing fold, Grad-CAM's rewiring, the QAT
translation and the training helpers are written with these functions. They are the
one place in the package that reads Keras' private graph attributes (a layer's
`_inbound_nodes`, a tensor's `_keras_history`): when a Keras release
moves them, this module is what changes, and `tests/test_graph.py` is what tells. The
supported Keras range is declared in setup.py; `make test-keras-min` runs the graph and
export tests on its lowest version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import keras

__all__ = [
    "call_count",
    "calls",
    "consumers",
    "contains",
    "input_tensors",
    "is_functional",
    "layers",
    "output_tensors",
    "producer",
    "rebuild",
    "rename",
]


def is_functional(model) -> bool:
    """True for a model built from a graph of layer calls (Functional, Sequential)."""
    return isinstance(model, keras.Model) and hasattr(model, "_inbound_nodes") and \
        hasattr(model, "layers") and bool(getattr(model, "inputs", None))


def layers(model: keras.Model, nested: str = "both") -> Iterator[keras.layers.Layer]:
    """Every layer of `model` in graph order, depth first into nested models.

    `nested`: "both" yields a nested model and then its layers; "leaves" yields only
    the layers inside it (what a graph rewrite sees); "models" yields the nested model
    and does not enter it."""
    if nested not in ("both", "leaves", "models"):
        raise ValueError(f"nested must be 'both', 'leaves' or 'models', got {nested!r}")
    for layer in model.layers:
        inner = hasattr(layer, "layers") and isinstance(layer, keras.Model)
        if not inner or nested != "leaves":
            yield layer
        if inner and nested != "models":
            yield from layers(layer, nested)


def contains(model: keras.Model, name: str) -> bool:
    """True when a layer called `name` is in `model` at any nesting depth."""
    return any(layer.name == name for layer in layers(model))


def call_count(layer) -> int:
    """How many times `layer` was called in graphs (a shared layer: more than once)."""
    return len(getattr(layer, "_inbound_nodes", ()) or ())


def calls(layer) -> list[tuple[list, list]]:
    """(input tensors, output tensors) of each call of `layer` in graphs, in order."""
    return [(list(node.input_tensors), list(node.output_tensors))
            for node in getattr(layer, "_inbound_nodes", ()) or ()]


def input_tensors(layer, call: int = 0) -> list:
    """The symbolic tensors passed to `layer` in its `call`-th call."""
    return list(layer._inbound_nodes[call].input_tensors)


def output_tensors(layer, call: int = 0) -> list:
    """The symbolic tensors `layer` returned in its `call`-th call."""
    return list(layer._inbound_nodes[call].output_tensors)


def producer(tensor) -> tuple[keras.layers.Layer, int]:
    """(layer, call index) that produced a symbolic tensor; an input's is its InputLayer."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ValueError(f"{tensor!r} is not a symbolic tensor of a functional graph")
    return history.operation, history.node_index


def consumers(model: keras.Model, tensor) -> list[keras.layers.Layer]:
    """The layers of `model` (not nested ones) that take `tensor` as an input."""
    return [layer for layer in model.layers
            if any(t is tensor for node in getattr(layer, "_inbound_nodes", ()) or ()
                   for t in node.input_tensors)]


def rename(model: keras.Model, name: str) -> keras.Model:
    """Give `model` the name `name` (kept in `name` since Keras 3, `_name` before)."""
    model.name = name
    return model


def rebuild(model: keras.Model, call: Callable | None = None,
            replace: Callable | None = None, recursive: bool = False,
            input_shape: tuple | None = None) -> keras.Model:
    """The graph of `model` rebuilt call by call, keeping the model's name.

    `replace(layer)` returns the layer to use in the new graph (default: the same
    layer, weights shared); `call(layer, *args, **kwargs)` returns the call's output
    and may add, skip or swap layers (default: `layer(*args, **kwargs)`). With
    `recursive=True` nested functional models are rebuilt the same way.
    `input_shape` (without the batch) gives the rebuilt graph a new input, e.g.
    `(None, None, 3)` for a convolutional model that then takes any image size."""
    if not is_functional(model):
        raise ValueError(f"{model.name} is a subclassed model: only functional and Sequential "
                         "graphs can be rewritten")
    replace = replace or (lambda layer: layer)
    if isinstance(model, keras.Sequential) and call is not None:
        # Keras' clone_model has no call_function for Sequential: rebuild it as a graph
        inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
        x = inputs
        for layer in model.layers:
            layer = replace(layer)
            if recursive and is_functional(layer):
                layer = rebuild(layer, call, replace, recursive)
            x = call(layer, x)
        return keras.Model(inputs, x, name=model.name)
    inputs = None
    if input_shape is not None:
        if len(model.inputs) != 1:
            raise ValueError(f"input_shape needs a model with one input; {model.name} has "
                             f"{len(model.inputs)}")
        inputs = keras.Input(shape=input_shape, dtype=model.inputs[0].dtype,
                             name=model.inputs[0].name)
    new = keras.models.clone_model(model, input_tensors=inputs, clone_function=replace,
                                   call_function=call, recursive=recursive)
    return rename(new, model.name)
