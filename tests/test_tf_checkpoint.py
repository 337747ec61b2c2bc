"""tensorflow/tpu checkpoints: a checkpoint written here under tensorflow/tpu's variable
names (its builder's layer creation order) from a model with known weights converts back to
exactly those weights; moving averages are preferred; EdgeTPU's background class dropped."""

import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

import keras_effnet as ke
from keras_effnet import tf_checkpoint

_BN = ("gamma", "beta", "moving_mean", "moving_variance")


def _tpu_names(model, scope: str) -> dict[str, np.ndarray]:
    """{tensorflow/tpu variable name: value} for every weight of `model`. In a block,
    tensorflow/tpu creates conv2d layers in the order expansion, projection (SE convs in
    their own 'se' scope) and batch norms in the order expansion, depthwise, projection."""
    names = {}
    blocks = sorted({m.group(1) for layer in model.layers
                     if (m := re.match(r"(block\d+[a-z]_)", layer.name))},
                    key=lambda b: (int(re.search(r"\d+", b).group()), b))
    index = {prefix: k for k, prefix in enumerate(blocks)}
    counters = {}
    for layer in model.layers:
        if not layer.weights or layer.name in ("normalization",):
            continue
        m = re.match(r"(block\d+[a-z]_)(.*)", layer.name)
        if m:
            scope_name, role = f"blocks_{index[m.group(1)]}", m.group(2)
        else:
            scope_name, role = {"stem_conv": ("stem", "conv"), "stem_bn": ("stem", "bn"),
                                "top_conv": ("head", "conv"), "top_bn": ("head", "bn"),
                                "predictions": ("head", "dense")}[layer.name]
        values = [np.asarray(w) for w in layer.weights]
        if role.startswith("se_"):
            name = "se/conv2d" + ("" if role == "se_reduce" else "_1")
            names.update({f"{scope}/{scope_name}/{name}/kernel": values[0],
                          f"{scope}/{scope_name}/{name}/bias": values[1]})
            continue
        kind = {"dense": "dense", "dwconv": "depthwise_conv2d"}.get(role, (
            "tpu_batch_normalization" if role.endswith("bn") else "conv2d"))
        n = counters.get((scope_name, kind), 0)
        counters[(scope_name, kind)] = n + 1
        name = kind if n == 0 else f"{kind}_{n}"
        if kind == "tpu_batch_normalization":
            names.update({f"{scope}/{scope_name}/{name}/{v}": a for v, a in zip(_BN, values)})
        elif kind == "dense":
            names.update({f"{scope}/{scope_name}/dense/kernel": values[0],
                          f"{scope}/{scope_name}/dense/bias": values[1]})
        else:
            suffix = "depthwise_kernel" if kind == "depthwise_conv2d" else "kernel"
            names[f"{scope}/{scope_name}/{name}/{suffix}"] = values[0]
    return names


def _write(prefix: str, tensors: dict[str, np.ndarray]) -> str:
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(tensors),
                      shape_and_slices=[""] * len(tensors),
                      tensors=[tf.constant(v) for v in tensors.values()])
    return prefix


def _random(model, seed=0):
    """Random weights and BatchNorm statistics (the stem normalisation is the variant's)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name != "normalization":
            layer.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") + (
                1.0 if "variance" in w.path or "gamma" in w.path else 0.0)
                for w in layer.weights])
    return model


@pytest.mark.parametrize("variant,scope", [("b0", "efficientnet-b0"),
                                           ("lite0", "efficientnet-lite0")])
def test_checkpoint_round_trips_exactly_and_prefers_moving_averages(variant, scope, tmp_path):
    model = _random(ke.build(variant, weights=None))
    tensors = _tpu_names(model, scope)
    shadows = {f"{k}/ExponentialMovingAverage": v + 1.0 for k, v in tensors.items()}
    step = {"global_step": np.int64(1000), f"{scope}/stem/conv2d/kernel/RMSProp":
            tensors[f"{scope}/stem/conv2d/kernel"]}
    prefix = _write(str(tmp_path / "model.ckpt-1000"), {**tensors, **shadows, **step})
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path), prefix)

    out = tmp_path / f"{variant}.weights.h5"
    tf_checkpoint.convert_checkpoint(tmp_path, variant, out, moving_average=False)
    loaded = ke.build(variant, weights=str(out))
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    averaged = tf_checkpoint.checkpoint_to_keras(prefix, variant)
    np.testing.assert_array_equal(averaged["stem_conv"][0],
                                  model.get_layer("stem_conv").kernel.numpy() + 1.0)


def test_edgetpu_background_class_is_dropped(tmp_path):
    model = _random(ke.EfficientNetEdgeTPUS(weights=None, classes=1001))
    prefix = _write(str(tmp_path / "ckpt"), _tpu_names(model, "efficientnet-edgetpu-S"))
    arrays = tf_checkpoint.checkpoint_to_keras(prefix, "edgetpu-s")
    kernel, bias = (np.asarray(w) for w in model.get_layer("predictions").weights)
    np.testing.assert_array_equal(arrays["predictions"][0], kernel[:, 1:])
    np.testing.assert_array_equal(arrays["predictions"][1], bias[1:])
    np.testing.assert_array_equal(arrays["block1a_expand_conv"][0],
                                  model.get_layer("block1a_expand_conv").kernel.numpy())


def test_wrong_variant_or_not_a_checkpoint_writes_nothing(tmp_path):
    model = _random(ke.EfficientNetLite0(weights=None))
    prefix = _write(str(tmp_path / "ckpt"), _tpu_names(model, "efficientnet-lite0"))
    out = tmp_path / "x.weights.h5"
    with pytest.raises(ValueError, match="not a tensorflow/tpu EfficientNetLite1"):
        tf_checkpoint.convert_checkpoint(prefix, "lite1", out)
    with pytest.raises(ValueError, match="not a TensorFlow checkpoint"):
        tf_checkpoint.convert_checkpoint(tmp_path / "nothing", "lite0", out)
    with pytest.raises(ValueError, match="must end in .weights.h5"):
        tf_checkpoint.convert_checkpoint(prefix, "lite0", tmp_path / "x.h5")
    assert not out.exists()
    result = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "convert", prefix,
                             "--model", "lite0", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stdout and out.exists()
    result = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "convert", prefix,
                             "--model", "b0", "--out", str(tmp_path / "b0.weights.h5")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and "not a tensorflow/tpu EfficientNetB0" in result.stderr
