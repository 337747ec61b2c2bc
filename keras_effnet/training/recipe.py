"""The paper's ImageNet training recipe as parts that can be taken one by one.

Tan & Le 2019, section 5.2, with the details of tensorflow/tpu's
`models/official/efficientnet/main.py`:

    RMSprop(rho=0.9, momentum=0.9, epsilon=1e-3)         `rmsprop()`
    lr 0.016 x global_batch/256, 5-epoch linear warm-up,
    then x0.97 every 2.4 epochs                           `learning_rate_schedule()`
    weight decay 1e-5, not on BatchNorm or biases         `add_weight_decay()`
    label smoothing 0.1                                   `loss()`
    weight moving average 0.9999 for evaluation/export    `rmsprop(ema=...)` + `callbacks()`
    stochastic depth, survival 0.8                        `drop_connect_rate=0.2` (builder)
    dropout 0.2 (B0) ... 0.5 (B7)                         the variant table
    RandAugment                                           `keras_effnet.training.data`
    mixed precision, softmax and SE sigmoid in float32    `set_precision()` + the builder

`compile_recipe(model, global_batch, steps_per_epoch)` takes them all.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from keras_effnet import graph
from keras_effnet.training.strategy import AverageBatchNormStatistics, scaled_learning_rate

__all__ = [
    "PAPER",
    "POLICIES",
    "RMSpropEMA",
    "Recipe",
    "WarmupExponentialDecay",
    "add_weight_decay",
    "callbacks",
    "compile_recipe",
    "learning_rate_schedule",
    "loss",
    "rmsprop",
    "set_precision",
]

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of the recipe; `dataclasses.replace(PAPER, ...)` to change one."""

    base_learning_rate: float = 0.016  # paper 5.2, for a batch of 256
    base_batch: int = 256
    warmup_epochs: float = 5.0  # tensorflow/tpu main.py: linear warm-up
    decay_rate: float = 0.97  # paper 5.2: x0.97 every 2.4 epochs, staircase
    decay_epochs: float = 2.4
    rho: float = 0.9  # paper 5.2: RMSProp decay 0.9, momentum 0.9
    momentum: float = 0.9
    epsilon: float = 1e-3  # tensorflow/tpu utils.build_optimizer
    weight_decay: float = 1e-5  # paper 5.2
    label_smoothing: float = 0.1  # tensorflow/tpu main.py
    ema_decay: float = 0.9999  # tensorflow/tpu main.py moving_average_decay
    drop_connect_rate: float = 0.2  # paper 5.2: survival probability 0.8


PAPER = Recipe()


@keras.saving.register_keras_serializable(package="keras_effnet")
class WarmupExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then `peak * rate^floor(t / decay_steps)`.

    t counts from the start of training, as in tensorflow/tpu's
    `build_learning_rate` (the decay is not shifted by the warm-up).
    """

    def __init__(self, peak: float, warmup_steps: int, decay_steps: int, decay_rate: float):
        if peak <= 0 or decay_steps < 1 or warmup_steps < 0 or not 0 < decay_rate <= 1:
            raise ValueError(
                f"expected peak > 0, warmup_steps >= 0, decay_steps >= 1, 0 < decay_rate <= 1; "
                f"got {peak}, {warmup_steps}, {decay_steps}, {decay_rate}")
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decayed = self.peak * ops.power(self.decay_rate, ops.floor(step / self.decay_steps))
        if self.warmup_steps == 0:
            return decayed
        warm = self.peak * step / self.warmup_steps
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate}


def learning_rate_schedule(global_batch: int, steps_per_epoch: int,
                           recipe: Recipe = PAPER, peak: float | None = None):
    """The paper's schedule for `global_batch`, in optimizer steps."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if peak is None:
        peak = scaled_learning_rate(global_batch, recipe.base_learning_rate, recipe.base_batch)
    return WarmupExponentialDecay(
        peak,
        warmup_steps=round(recipe.warmup_epochs * steps_per_epoch),
        decay_steps=max(1, round(recipe.decay_epochs * steps_per_epoch)),
        decay_rate=recipe.decay_rate,
    )


@keras.saving.register_keras_serializable(package="keras_effnet")
class RMSpropEMA(keras.optimizers.RMSprop):
    """RMSprop whose weight average warms up as tensorflow/tpu's does.

    Keras' `use_ema` averages with a fixed momentum from the first step, so
    with 0.9999 a model trained for a few thousand steps would be evaluated
    and exported close to its random initialisation. tensorflow/tpu uses
    `tf.train.ExponentialMovingAverage(decay, num_updates=step)`, whose decay
    is min(decay, (1 + step) / (10 + step)); this does the same. Everything
    else is Keras' RMSprop: `SwapEMAWeights` evaluates with the average, and
    `fit` writes the average into the model when it ends.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        step = ops.cast(self.iterations, "float32")
        decay = ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                d = ops.cast(decay, var.dtype)
                average.assign(d * average + (1.0 - d) * var)


def rmsprop(learning_rate, recipe: Recipe = PAPER, ema: float | None = None) -> RMSpropEMA:
    """The paper's RMSprop; `ema` (e.g. `recipe.ema_decay`) adds the weight average."""
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"ema must be in (0, 1) or None, got {ema}")
    return RMSpropEMA(
        learning_rate=learning_rate, rho=recipe.rho, momentum=recipe.momentum,
        epsilon=recipe.epsilon, use_ema=ema is not None, ema_momentum=ema or 0.99,
    )


# (variable attribute, config attribute): convolution, depthwise and dense kernels
_KERNELS = (("kernel", "kernel_regularizer"), ("depthwise_kernel", "depthwise_regularizer"))


def add_weight_decay(model: keras.Model, rate: float = PAPER.weight_decay) -> int:
    """L2 weight decay on convolution and dense kernels only; returns how many got it.

    tensorflow/tpu adds `rate * sum(l2_loss(w))` (l2_loss = sum(w^2)/2) to the
    loss for every weight but BatchNorm's; biases are left out here too, as
    the issue and most re-implementations do. Being part of the loss, it goes
    through RMSprop's normalisation like the paper's (Keras' `weight_decay=`
    argument is the decoupled AdamW form, which is a different method).
    Call it before `compile`; called again, it replaces the rate.
    """
    if rate < 0:
        raise ValueError(f"weight decay must be >= 0, got {rate}")
    regularizer = keras.regularizers.L2(rate / 2.0) if rate else None
    count = 0
    for layer in graph.layers(model):
        for attribute, config_attribute in _KERNELS:
            variable = getattr(layer, attribute, None)
            if isinstance(variable, keras.Variable):
                variable.regularizer = regularizer
                setattr(layer, config_attribute, regularizer)  # so get_config() says so
                count += 1
    return count


def loss(recipe: Recipe = PAPER, from_logits: bool = False) -> keras.losses.Loss:
    """Cross-entropy with the recipe's label smoothing (labels one-hot, as the data gives)."""
    return keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=recipe.label_smoothing)


def set_precision(policy: str | None) -> str:
    """Set Keras' global dtype policy before building the model; returns the policy set.

    'mixed_float16' (GPUs) or 'mixed_bfloat16' (TPUs, recent CPUs); None or
    'float32' for full precision. Models built afterwards keep the SE sigmoid
    and the softmax in float32, and `model.compile` adds loss scaling under
    'mixed_float16'.
    """
    policy = policy or "float32"
    if policy not in POLICIES:
        raise ValueError(f"unknown precision policy {policy!r}; expected one of "
                         f"{', '.join(POLICIES)}")
    keras.config.set_dtype_policy(policy)
    return policy


def callbacks(model: keras.Model, strategy=None) -> list[keras.callbacks.Callback]:
    """The callbacks the recipe needs in `fit`.

    With several replicas, BatchNorm's moving statistics averaged over them at
    each epoch end (`AverageBatchNormStatistics`); with a weight average,
    evaluation on the average (`SwapEMAWeights`).
    """
    result = []
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        result.append(AverageBatchNormStatistics(strategy))
    optimizer = getattr(model, "optimizer", None)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if inner is not None and getattr(inner, "use_ema", False):
        result.append(keras.callbacks.SwapEMAWeights())
    return result


def compile_recipe(model: keras.Model, global_batch: int, steps_per_epoch: int, *,
                   recipe: Recipe = PAPER, learning_rate: float | None = None,
                   ema: bool = True, jit_compile="auto", metrics=None) -> keras.Model:
    """`model.compile` with the whole recipe: RMSprop + schedule + decay + smoothing + EMA.

    Run it under `strategy.scope()` when training distributed. The model's
    classifier must end in softmax (the default); top-1 and top-5 accuracy are
    tracked unless `metrics` says otherwise.
    """
    add_weight_decay(model, recipe.weight_decay)
    schedule = learning_rate_schedule(global_batch, steps_per_epoch, recipe, peak=learning_rate)
    classes = model.outputs[0].shape[-1]
    if metrics is None:
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if classes and classes > 5:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    model.compile(
        optimizer=rmsprop(schedule, recipe, ema=recipe.ema_decay if ema else None),
        loss=loss(recipe), metrics=metrics, jit_compile=jit_compile,
    )
    return model
