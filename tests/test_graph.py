"""keras_effnet.graph: the one module that reads Keras' graph internals. Each function is
checked against a graph whose structure the test builds, so a Keras release that moves
an attribute fails here first (`make test-keras-min` runs this on the lowest Keras)."""

import keras
import numpy as np
import pytest
from keras import layers

from keras_effnet import graph


def _nested():
    """input -> scale -> [inner: dense_a -> relu] -> add(inner, scale) -> head,
    with `shared` called twice inside `inner`."""
    inner_in = keras.Input((4,), name="inner_in")
    shared = layers.Dense(4, name="shared")
    a = shared(inner_in)
    b = shared(layers.Activation("relu", name="relu")(a))
    inner = keras.Model(inner_in, b, name="inner")
    x_in = keras.Input((4,), name="x")
    scaled = layers.Rescaling(0.5, name="scale")(x_in)
    added = layers.Add(name="add")([inner(scaled), scaled])
    out = layers.Dense(2, name="head")(added)
    return keras.Model(x_in, out, name="outer")


def test_layers_walks_nested_models_three_ways():
    model = _nested()
    assert [layer.name for layer in graph.layers(model)] == [
        "x", "scale", "inner", "inner_in", "shared", "relu", "add", "head"]
    assert [layer.name for layer in graph.layers(model, nested="leaves")] == [
        "x", "scale", "inner_in", "shared", "relu", "add", "head"]
    assert [layer.name for layer in graph.layers(model, nested="models")] == [
        "x", "scale", "inner", "add", "head"]
    assert graph.contains(model, "relu") and not graph.contains(model, "nope")
    with pytest.raises(ValueError, match="nested must be"):
        list(graph.layers(model, nested="all"))


def test_calls_producers_and_consumers():
    model = _nested()
    inner = model.get_layer("inner")
    shared = inner.get_layer("shared")
    assert graph.call_count(shared) == 2 and graph.call_count(model.get_layer("head")) == 1
    (first_in, first_out), (second_in, second_out) = graph.calls(shared)
    assert first_in == graph.input_tensors(shared, 0) and second_out == \
        graph.output_tensors(shared, 1)
    # the second call's input is relu's output, made by relu's only call
    assert graph.producer(second_in[0]) == (inner.get_layer("relu"), 0)
    assert graph.producer(first_out[0]) == (shared, 0)
    assert graph.producer(second_out[0]) == (shared, 1)
    scaled = graph.output_tensors(model.get_layer("scale"))[0]
    assert [layer.name for layer in graph.consumers(model, scaled)] == ["inner", "add"]
    assert isinstance(graph.producer(model.inputs[0])[0], layers.InputLayer)
    with pytest.raises(ValueError, match="not a symbolic tensor"):
        graph.producer(np.zeros(3))


def test_rebuild_intercepts_calls_and_keeps_weights_and_name():
    model = _nested()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")

    def double_head(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return out * 2.0 if layer.name == "head" else out

    same = graph.rebuild(model)
    doubled = graph.rebuild(model, call=double_head)
    assert same.name == doubled.name == "outer"
    np.testing.assert_allclose(same.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(doubled.predict(x, verbose=0), 2 * model.predict(x, verbose=0),
                               rtol=1e-6)
    seen = []
    graph.rebuild(model, call=lambda layer, *a, **k: seen.append(layer.name) or layer(*a, **k),
                  recursive=True)
    # the nested model is rebuilt (its calls seen) when the outer graph reaches it
    assert seen == ["scale", "shared", "relu", "shared", "inner", "add", "head"]


def test_rebuild_replaces_layers_in_sequential_models_too():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="d"),
                              layers.Activation("relu", name="r")], name="seq")
    x = np.random.default_rng(1).normal(size=(2, 4)).astype("float32")
    linear = graph.rebuild(model, call=lambda layer, *a, **k: a[0] if layer.name == "r"
                           else layer(*a, **k))
    assert linear.name == "seq"
    dense = model.get_layer("d")
    kernel, bias = (np.asarray(w) for w in dense.weights)
    np.testing.assert_allclose(linear.predict(x, verbose=0), x @ kernel + bias, rtol=1e-5)
    assert (model.predict(x, verbose=0) >= 0).all()


def test_subclassed_models_are_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model"):
        graph.rebuild(Net(name="net"))
    assert not graph.is_functional(Net()) and graph.is_functional(_nested())
    assert graph.rename(_nested(), "other").name == "other"
