"""Custom layers: the stem's input normalization with fixed statistics, a BatchNorm whose
training step and inference are fused kernels on TensorFlow, and a depthwise convolution
that XLA compiles well on CPUs."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["BatchNormalization", "DepthwiseConv2D", "Normalization", "fast_twin", "plain_twin",
           "xla_on_cpu"]


@keras.saving.register_keras_serializable(package="keras_effnet")
class Normalization(keras.layers.Layer):
    """Computes `(x - mean) / std` per channel with statistics fixed at build time.

    It carries the same three weights as keras.applications' stem
    `Normalization` layer (`mean`, `variance`, `count`), so Keras' official
    `.h5` files, which are loaded by the order of weighted layers, still line
    up, and it has the same class name, so Keras 3 `.weights.h5` files (keyed
    by class name and order) are interchangeable with keras.applications'.
    The computation uses the configured statistics, never the stored
    weights: those files keep the ImageNet std where the variance belongs,
    and a model's preprocessing must not depend on which weights it holds.

    On images it runs as a 1x1 depthwise convolution plus an offset, so that
    a plain TFLite conversion turns Rescaling and Normalization into one
    DEPTHWISE_CONV_2D, the same stem `keras_effnet.export` writes. It cannot
    be merged into the stem convolution too: that convolution pads with
    normalised zeros (the mean pixel), a convolution over raw pixels pads
    with black, and the last row and column would be wrong.
    """

    def __init__(self, mean, std, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.axis = axis  # the channel axis: -1 (channels_last) or 1 (channels_first)
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(
                f"Normalization needs one mean and one positive std per channel, "
                f"got mean={self.mean}, std={self.std}"
            )

    def build(self, input_shape):
        channels = input_shape[self.axis]
        if channels != len(self.mean):
            raise ValueError(
                f"Normalization expects {len(self.mean)} input channels, got {channels}"
            )
        self.stored_mean = self.add_weight(
            name="mean", shape=(channels,), trainable=False,
            initializer=keras.initializers.Constant(np.array(self.mean)),
        )
        self.stored_variance = self.add_weight(
            name="variance", shape=(channels,), trainable=False,
            initializer=keras.initializers.Constant(np.square(self.std)),
        )
        self.count = self.add_weight(
            name="count", shape=(), dtype="int64", initializer="zeros", trainable=False
        )

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        shape = [1] * len(x.shape)
        shape[self.axis] = len(self.mean)  # broadcast along the channel axis
        std = np.array(self.std)
        offset = ops.convert_to_tensor((-np.array(self.mean) / std).reshape(shape),
                                       dtype=self.compute_dtype)
        if len(x.shape) != 4:
            return x / ops.convert_to_tensor(std.reshape(shape), dtype=self.compute_dtype) + offset
        # images: x * (1 / std) as a 1x1 depthwise convolution, which the TFLite converter
        # merges with the Rescaling before it into one DEPTHWISE_CONV_2D (as elementwise ops
        # they stay MUL, SUB, MUL over the full-size input: 0.84 ms against 0.22 ms of B0's
        # 13.5 on one thread, a stem-only probe); TensorFlow runs it faster too.
        # tests/test_export.py::test_stem_converts_to_two_exact_ops_on_both_paths
        kernel = ops.convert_to_tensor((1.0 / std).reshape(1, 1, -1, 1), dtype=self.compute_dtype)
        data_format = "channels_first" if self.axis in (1, -3) else "channels_last"
        return ops.depthwise_conv(x, kernel, 1, "valid", data_format=data_format) + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": list(self.mean), "std": list(self.std), "axis": self.axis})
        return config


SMALL_BATCH = 16  # inference batches up to this size run Keras' BatchNormalization ops


@keras.saving.register_keras_serializable(package="keras_effnet")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs through TensorFlow's fused kernels.

    Keras 3 computes a training step's batch statistics and normalisation as
    separate ops (moments, then scale and shift) and differentiates each;
    TensorFlow's `FusedBatchNormV3` does the forward pass in one kernel and
    the backward pass in another. On B0 that made a training step 1.36x
    faster on a 2-core CPU in float32 and 1.25x in mixed_bfloat16
    (benchmarks/train_throughput.py). The arithmetic is Keras': inputs cast
    to float32 first, the biased batch variance in the moving average, the
    same momentum and epsilon, the same weights. Inference (and a frozen
    layer) uses the same kernel with the moving statistics, one pass over
    the tensor where Keras makes two, when the batch is large or not known
    when the graph is traced: on an AVX-512 Xeon, B0 in a tf.function at
    batch 32 took 0.92x (2 threads) and 0.89x (1 thread) the time of Keras'
    ops. For a batch known to hold at most SMALL_BATCH images Keras' ops are
    faster (batch 1 on one thread: 0.90x the fused kernel's time; even at 8
    and 16), so those take Keras' path (figures from a probe script timing
    both paths in one process; benchmarks/latency.py and throughput.py hold
    the model-level results). The TFLite converter produces the same ops
    either way. Other backends, synchronized (cross-replica) statistics or
    renorm in training, masks and anything but 4-D channels-last inputs take
    Keras' own path. Same class name as Keras', so weight files and
    `get_layer` code see no difference.
    """

    def _fused_tf(self, inputs, mask) -> bool:
        return (mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and keras.backend.backend() == "tensorflow")

    def call(self, inputs, training=None, mask=None):
        if not self._fused_tf(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if not (training and self.trainable):
            batch = inputs.shape[0]
            if batch is not None and batch <= SMALL_BATCH:
                return super().call(inputs, training=training, mask=mask)
            return self._fused(inputs, training=False)
        if getattr(self, "renorm", False) or self.synchronized:  # renorm: Keras >= 3.13
            return super().call(inputs, training=training, mask=mask)
        return self._fused(inputs, training=True)

    def _fused(self, inputs, training: bool):
        import tensorflow as tf

        x = tf.cast(inputs, "float32")  # as Keras: BN statistics overflow in 16 bits
        ones = tf.ones(x.shape[-1:], "float32")
        gamma = tf.cast(self.gamma, "float32") if self.scale else ones
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros_like(ones)
        if not training:
            y = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)[0]
            return tf.cast(y, self.compute_dtype)
        empty = tf.constant([], "float32")
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # the kernel returns the unbiased variance; Keras averages the biased one
        count = tf.cast(tf.size(x, out_type=tf.int64) // x.shape[-1], "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)


def xla_on_cpu() -> bool:
    """True while the current computation is being compiled by XLA for a CPU:
    the JAX backend on a CPU, or TensorFlow inside `tf.function(jit_compile=True)`
    (what `compile(jit_compile=True)` makes) on a machine with no GPU or TPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend != "tensorflow":
        return False
    import tensorflow as tf

    try:  # how TensorFlow marks a graph being traced for XLA (internal module)
        from tensorflow.python.ops import control_flow_util

        in_xla = control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except (ImportError, AttributeError):
        return False
    return bool(in_xla) and not (tf.config.list_logical_devices("GPU")
                                 or tf.config.list_logical_devices("TPU"))


@keras.saving.register_keras_serializable(package="keras_effnet")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` that XLA compiles well on a CPU.

    XLA's CPU backend compiles a depthwise convolution (one group per
    channel) and its gradients slowly: a B0 training step under XLA on a
    2-core CPU took 8x as long as without XLA. When XLA compiles for a CPU
    (`xla_on_cpu()`: the JAX backend, or TensorFlow with `jit_compile=True`),
    this layer writes the same convolution as the sum of its k*k shifted,
    per-channel-scaled copies of the input, elementwise work that XLA fuses
    into loops, forward and backward. On 2 cores, B0 training steps ran 1.7x
    (float32) and 2.4x (mixed_bfloat16) keras.applications' speed under
    TensorFlow + XLA, 1.6x and 1.4x on JAX (benchmarks/train_throughput.py),
    and JAX inference 5-7x (benchmarks/throughput.py). Everywhere else
    (TensorFlow without XLA, GPUs, TPUs, PyTorch, dilated or multiplier > 1
    kernels) it is Keras' layer. Same class name and weights as Keras'.
    """

    def call(self, inputs):
        if not (self.depth_multiplier == 1 and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1) and len(inputs.shape) == 4
                and None not in tuple(inputs.shape[1:3]) and xla_on_cpu()):
            return super().call(inputs)
        x = inputs
        (k_h, k_w), (s_h, s_w) = self.kernel_size, self.strides
        if self.padding == "same":
            x = ops.pad(x, [(0, 0), _same_padding(x.shape[1], k_h, s_h),
                            _same_padding(x.shape[2], k_w, s_w), (0, 0)])
        out_h = (x.shape[1] - k_h) // s_h + 1
        out_w = (x.shape[2] - k_w) // s_w + 1
        kernel = ops.cast(self.kernel, x.dtype)
        outputs = None
        for i in range(k_h):
            for j in range(k_w):
                term = x[:, i:i + s_h * (out_h - 1) + 1:s_h,
                         j:j + s_w * (out_w - 1) + 1:s_w, :] * kernel[i, j, :, 0]
                outputs = term if outputs is None else outputs + term
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME: the output has ceil(size / stride) positions."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def plain_twin(layer: keras.layers.Layer) -> tuple[keras.layers.Layer, list | None] | None:
    """(Keras' own layer computing what `layer` computes, the weights it takes) for one of
    ours, else None: what a file loads with in plain Keras (keras_effnet.saving). The
    stem's `Normalization` becomes Keras' Normalization with our mean and variance (std
    squared) in its configuration, in full precision, so `fast_twin` gets the same std
    back (a float32 weight would not round-trip it)."""
    if type(layer) is Normalization:
        twin = keras.layers.Normalization(
            axis=layer.axis, mean=list(layer.mean), variance=[s * s for s in layer.std],
            name=layer.name, dtype=layer.dtype_policy)
        return twin, None
    for ours in (BatchNormalization, DepthwiseConv2D):  # same config and weights as Keras'
        if type(layer) is ours:
            return ours.__mro__[1].from_config(layer.get_config()), layer.get_weights()
    return None


def fast_twin(layer: keras.layers.Layer) -> tuple[keras.layers.Layer, list | None] | None:
    """The inverse of `plain_twin`: our layer for a Keras layer that `plain_twin` made."""
    if type(layer) is keras.layers.Normalization and layer.input_mean is not None:
        mean = np.asarray(layer.input_mean, np.float64).ravel()
        std = np.sqrt(np.asarray(layer.input_variance, np.float64)).ravel()
        twin = Normalization(mean.tolist(), std.tolist(), axis=layer.axis[0], name=layer.name,
                             dtype=layer.dtype_policy)
        return twin, None  # our statistics are the configuration; weights as built
    for ours in (BatchNormalization, DepthwiseConv2D):
        if type(layer) is ours.__mro__[1]:
            return ours.from_config(layer.get_config()), layer.get_weights()
    return None
