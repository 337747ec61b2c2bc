"""keras_effnet.layers: the fused BatchNormalization computes what Keras' does."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_effnet.layers import SMALL_BATCH, BatchNormalization


def _pair(policy="float32"):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        ours, theirs = BatchNormalization(), keras.layers.BatchNormalization()
        for layer in (ours, theirs):
            layer.build((None, 6, 5, 8))
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 2, 8), rng.normal(size=8), rng.normal(size=8),
               rng.uniform(0.5, 2, 8)]
    for layer in (ours, theirs):
        layer.set_weights([w.astype("float32") for w in weights])
    return ours, theirs


@pytest.mark.parametrize("policy,tolerance", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_fused_training_step_equals_keras(policy, tolerance):
    """Outputs, moving statistics and gradients of a training step agree with
    keras.layers.BatchNormalization (a float32 reduction order apart)."""
    ours, theirs = _pair(policy)
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (4, 6, 5, 8)), "float32")
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(tf.cast(x, layer.compute_dtype), training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * tf.range(8, dtype="float32"))
        grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
        results.append((y, grads, layer.moving_mean.numpy(), layer.moving_variance.numpy()))
    (y1, g1, m1, v1), (y2, g2, m2, v2) = results
    assert y1.dtype == y2.dtype
    np.testing.assert_allclose(np.float32(y1), np.float32(y2), atol=tolerance)
    np.testing.assert_allclose(m1, m2, atol=1e-6)
    np.testing.assert_allclose(v1, v2, atol=1e-5)  # the biased batch variance, as Keras
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=tolerance * 10, rtol=1e-3)


@pytest.mark.parametrize("policy,tolerance", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_fused_inference_equals_keras(policy, tolerance):
    """Inference, and a frozen layer called with training=True, use the moving
    statistics through the fused kernel: Keras' outputs and gradients, and the
    moving statistics are left alone."""
    ours, theirs = _pair(policy)
    shape = (SMALL_BATCH + 1, 6, 5, 8)  # smaller batches take Keras' own ops
    x = tf.constant(np.random.default_rng(2).normal(1.0, 2.0, shape), "float32")
    for frozen in (False, True):
        ours.trainable = theirs.trainable = not frozen
        results = []
        for layer in (ours, theirs):
            inputs = tf.cast(x, layer.compute_dtype)
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                y = layer(inputs, training=frozen)
                loss = tf.reduce_sum(tf.cast(y, "float32") * tf.range(8, dtype="float32"))
            results.append((y, tape.gradient(loss, inputs), layer.moving_mean.numpy()))
        (y1, g1, m1), (y2, g2, m2) = results
        assert y1.dtype == y2.dtype
        np.testing.assert_allclose(np.float32(y1), np.float32(y2), atol=tolerance)
        np.testing.assert_allclose(np.float32(g1), np.float32(g2), atol=tolerance, rtol=1e-3)
        np.testing.assert_array_equal(m1, m2)


def test_fused_kernel_is_used_and_synchronized_is_not(monkeypatch):
    ours, _ = _pair()
    real, called = tf.raw_ops.FusedBatchNormV3, []
    monkeypatch.setattr(tf.raw_ops, "FusedBatchNormV3",
                        lambda **kw: called.append(kw["is_training"]) or real(**kw))
    x = tf.ones((SMALL_BATCH + 1, 6, 5, 8))
    ours(x, training=False)
    ours(x, training=True)
    assert called == [False, True]
    ours(x[:SMALL_BATCH], training=False)  # a small known batch: Keras' ops, faster there
    assert called == [False, True]
    ours(x[:2], training=True)  # training is fused at any batch size
    assert called == [False, True, True]
    unknown = tf.function(lambda t: ours(t, training=False),
                          input_signature=[tf.TensorSpec((None, 6, 5, 8))])
    unknown(x[:2])  # a batch unknown when traced: fused
    assert called == [False, True, True, False]
    ours.synchronized = True
    ours(x, training=True)  # cross-replica statistics: Keras' path
    assert called == [False, True, True, False]
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours)) \
        .__class__ is BatchNormalization


@pytest.mark.parametrize("kernel,strides,padding", [(3, 1, "same"), (5, 2, "valid"),
                                                    (5, 2, "same"), (3, 2, "same")])
def test_depthwise_under_xla_equals_keras(kernel, strides, padding):
    """Under XLA on a CPU the layer sums shifted copies; outputs and gradients (input
    and kernel) equal keras.layers.DepthwiseConv2D's, and outside XLA it is Keras' op."""
    from keras_effnet.layers import DepthwiseConv2D, xla_on_cpu

    ours = DepthwiseConv2D(kernel, strides=strides, padding=padding, use_bias=True)
    theirs = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding=padding,
                                          use_bias=True)
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 11, 10, 6)), "float32")
    for layer in (ours, theirs):
        layer.build(x.shape)
    theirs.set_weights([np.random.default_rng(4).normal(size=w.shape).astype("float32")
                        for w in ours.get_weights()])
    ours.set_weights(theirs.get_weights())
    seen = []

    def step(layer, inputs):
        seen.append(xla_on_cpu())
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs)
            loss = tf.reduce_sum(y * tf.cos(tf.range(y.shape[-1], dtype="float32")))
        return [y, *tape.gradient(loss, [inputs, layer.kernel.value])]

    xla = tf.function(step, jit_compile=True)
    plain = tf.function(step)
    expected = plain(theirs, x)
    for got in (xla(ours, x), plain(ours, x)):
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert seen == [False, True, False]  # traced: plain (theirs), XLA (ours), plain (ours)
    assert not xla_on_cpu()  # eager
