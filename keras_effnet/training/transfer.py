"""Fine-tuning a pretrained EfficientNet on a user's folder of photos, fast on a CPU.

    model = classifier("lite0", classes=5, weights="imagenet")
    summary = fit_transfer(model, scan_folder("train/"), scan_folder("val/"), epochs=10)

The recipe (`TRANSFER`) for a few thousand photos:

- The trunk (stem to the end of the last stride-16 block) stays frozen, so its output
  for a photo does not change during training. It is computed once for each of a few
  augmented views of every photo (random resized crop and flip, at a lower resolution
  than the model's, see below) and for the validation photos, then the top (the
  stride-32 blocks, `top_conv` and a new head) trains on those features: each epoch
  reads the next view. The forward pass through the frozen trunk is paid `views` times
  per photo instead of once per epoch, and no backward pass goes through it.
- The views are taken at `train_scale` of the model's resolution (0.875: 196 px for a
  224 px model) and the model is evaluated and exported at its own resolution: a random
  resized crop makes objects look larger than the evaluation centre crop does, and a
  smaller training size compensates (Touvron et al., "Fixing the train-test resolution
  discrepancy", NeurIPS 2019), at 0.77x the pixels.
- BatchNormalization keeps ImageNet's statistics (inference mode) everywhere.
- The head starts at zero (the loss starts at ln(classes), and the pretrained blocks get
  no gradient until the head has learnt something); AdamW with a short linear warm-up
  and a cosine decay; label smoothing 0.1; stochastic depth and dropout as built.
- With a validation set, the weights of the epoch with the best validation accuracy
  (ties: the lower loss) are the ones kept.

`head_only=True` is the linear-probe protocol (MediaPipe Model Maker's default): the
whole backbone is the trunk, its pooled features are computed once per view, and only
the head trains.
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np

from keras_effnet import graph
from keras_effnet.console import quieted
from keras_effnet.features import feature_info
from keras_effnet.training.data import ImageFolder, view_dataset

__all__ = ["HEAD_ONLY", "TRANSFER", "BestWeights", "TransferRecipe", "extract_features",
           "fit_transfer", "inference", "split_at", "trunk_end"]


@dataclasses.dataclass(frozen=True)
class TransferRecipe:
    """Hyper-parameters of the fine-tuning recipe; `dataclasses.replace` to change one."""

    trunk: str = "stride16"  # frozen up to the end of the last stride-16 block; "pool": all
    views: int = 3  # augmented views of each training photo computed through the trunk
    train_scale: float = 0.875  # views at this fraction of the model's resolution
    crop_area: tuple = (0.25, 1.0)  # random resized crop: fraction of the photo's area
    learning_rate: float = 1e-3  # AdamW peak for a batch of 32 (sqrt-scaled for others)
    weight_decay: float = 1e-4  # AdamW, decoupled
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    cache_bytes: int = 6 * 2**30  # the features kept in memory, at most


TRANSFER = TransferRecipe()
# the linear probe: pooled features of the whole frozen backbone, centre crops at the
# model's own size (one view: a frozen backbone sees each photo once)
HEAD_ONLY = TransferRecipe(trunk="pool", views=1, train_scale=1.0, crop_area=(1.0, 1.0),
                           learning_rate=3e-3, weight_decay=1e-4, warmup_epochs=0.0)

_HEAD = ("avg_pool", "top_dropout", "predictions")


def trunk_end(model: keras.Model, trunk: str = "stride16") -> str:
    """The name of the layer whose output ends the frozen trunk: the last layer of the
    last block at 1/16 of the input resolution ("stride16"), or `avg_pool` ("pool")."""
    if trunk == "pool":
        if not graph.contains(model, "avg_pool"):
            raise ValueError(f"{model.name} has no 'avg_pool' layer: expected a classifier "
                             "built by keras_effnet (training.classifier)")
        return "avg_pool"
    if trunk != "stride16":
        raise ValueError(f"trunk must be 'stride16' or 'pool', got {trunk!r}")
    return next(level.layer for level in feature_info(model) if level.stride == 16)


def split_at(model: keras.Model, end: str, input_shape: tuple | None = None):
    """(trunk, top): two models over `model`'s own layers (weights shared), the trunk from
    the input to `end`'s output and the top from there to the predictions.
    `input_shape` rebuilds the graph for another input size first (the same layers)."""
    if input_shape is None:
        cut = model.get_layer(end).output
    else:
        model = graph.rebuild(model, input_shape=input_shape)
        layer = model.get_layer(end)
        cut = graph.output_tensors(layer, graph.call_count(layer) - 1)[0]  # the new call
    return keras.Model(model.inputs[0], cut, name=f"{model.name}_trunk"), \
        keras.Model(cut, model.outputs[0], name=f"{model.name}_top")


def inference(model: keras.Model):
    """`model` in inference mode as one compiled function for any batch and image size,
    traced once per model (a new function per view, or a short last batch, would retrace)."""
    import tensorflow as tf

    compiled = model.__dict__.get(_INFERENCE)
    if compiled is None:
        spec = tf.TensorSpec((None, None, None, 3), tf.float32)
        compiled = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        object.__setattr__(model, _INFERENCE, compiled)  # ours: not a tracked Keras attribute
    return compiled


_INFERENCE = "_keras_effnet_inference"


def extract_features(trunk: keras.Model, folder: ImageFolder, size: int, *, augment: bool,
                     seed: int = 0, area_range=(0.25, 1.0), batch: int = 64,
                     progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(float16 trunk outputs, labels) of every image of `folder`, one view each: a random
    crop when `augment`, else the evaluation centre crop; at `size` px."""
    run = inference(trunk)
    features, labels = [], []
    for images, onehot in view_dataset(folder, size, batch, augment=augment, seed=seed,
                                       area_range=area_range):
        features.append(keras.ops.convert_to_numpy(run(images)).astype(np.float16))
        labels.append(np.argmax(onehot.numpy(), axis=1))
        if progress is not None:
            progress(len(images))
    return np.concatenate(features), np.concatenate(labels)


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best `val_accuracy` (ties: the lower
    `val_loss`) and puts them back when training ends."""

    def __init__(self):
        super().__init__()
        self.best = None
        self.best_epoch = None
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_accuracy" not in logs:
            return
        key = (logs["val_accuracy"], -logs.get("val_loss", 0.0))
        if self.best is None or key > self.best:
            self.best, self.best_epoch = key, epoch
            self.weights = [np.array(w) for w in self.model.get_weights()]

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def _optimizer(recipe: TransferRecipe, batch: int, total_steps: int, warmup_steps: int):
    peak = recipe.learning_rate * math.sqrt(batch / 32)  # Adam: sqrt scaling with the batch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else peak, max(1, total_steps - warmup_steps),
        warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)
    return keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay)


def _freeze(model: keras.Model, top: keras.Model, head_only: bool) -> None:
    trunk_layers = {id(layer) for layer in model.layers} - {id(layer) for layer in top.layers}
    for layer in graph.layers(model):
        if id(layer) in trunk_layers or isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif head_only:
            layer.trainable = layer.name in _HEAD
        else:
            layer.trainable = True


def _epoch_data(features: list, labels: np.ndarray, classes: int, batch: int, epochs: int,
                seed: int):
    """Batches for `epochs` epochs: epoch e reads view e mod len(features), shuffled."""
    import tensorflow as tf

    views = tf.constant(np.stack(features))
    onehot = tf.one_hot(labels, classes)
    count = len(labels)

    def epoch(e):
        view = tf.gather(views, e % len(features))
        order = tf.data.Dataset.range(count).shuffle(count, seed=seed + 1)
        return order.batch(batch, drop_remainder=True).map(
            lambda i: (tf.gather(view, i), tf.gather(onehot, i)))

    return tf.data.Dataset.range(epochs).flat_map(epoch).prefetch(2)


@quieted
def fit_transfer(model: keras.Model, train: ImageFolder, val: ImageFolder | None = None, *,
                 epochs: int = 10, batch: int = 32, seed: int = 0,
                 recipe: TransferRecipe = TRANSFER, head_only: bool = False,
                 verbose="auto", log=print) -> dict:
    """Fine-tune `model` (a classifier with a new head on pretrained weights) on `train`
    with the transfer recipe; its weights end as the best epoch's on `val` (or the last).
    Returns what it did: seconds and images/s of each phase, the history, the best epoch."""
    if head_only and recipe is TRANSFER:
        recipe = HEAD_ONLY
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(train) < batch:
        raise ValueError(f"{train.root!r} has {len(train)} images, fewer than one batch of "
                         f"{batch}; lower --batch or add images")
    size = model.input_shape[1]
    end = trunk_end(model, recipe.trunk)
    views = min(recipe.views, epochs)
    # a multiple of 8 below the model's size; the model's own at train_scale 1
    train_size = size if recipe.train_scale == 1.0 else \
        max(32, round(size * recipe.train_scale / 8) * 8)
    # the views run through the same layers at train_size; validation at the model's size
    trunk, top = split_at(model, end, (None, None, 3) if train_size != size else None)
    val_trunk = split_at(model, end)[0] if train_size != size else trunk
    per_image = int(np.prod(val_trunk.output.shape[1:]) * (train_size / size) ** 2)
    budget = recipe.cache_bytes // max(1, 2 * per_image * len(train))
    if budget < 1:
        raise ValueError(
            f"the features of {len(train)} images need {2 * per_image * len(train) / 2**30:.1f} "
            f"GiB, more than the recipe's cache of {recipe.cache_bytes / 2**30:.1f} GiB: train "
            "with recipe='paper' (the data streamed), or raise TransferRecipe.cache_bytes")
    views = min(views, budget)
    trainable = {id(layer): layer.trainable for layer in graph.layers(model)}
    _freeze(model, top, head_only)

    began = time.perf_counter()
    bar = keras.utils.Progbar(views * len(train) + (len(val) if val else 0),
                              unit_name="image", verbose=1 if verbose in ("auto", 1) else 0)
    log(f"computing the frozen trunk's features (up to {end}) for {views} view(s) of "
        f"{len(train)} photos at {train_size} px" + (f" and {len(val)} validation photos at "
                                                      f"{size} px" if val else ""))
    done = [0]

    def advance(n):
        done[0] += n
        bar.update(done[0])

    features, labels = [], None
    for view in range(views):
        x, y = extract_features(trunk, train, train_size, augment=recipe.crop_area != (1.0, 1.0),
                                seed=seed * 1000 + view, area_range=recipe.crop_area,
                                progress=advance)
        features.append(x)
        labels = y if labels is None else labels
        if len(y) != len(labels) or np.any(y != labels):
            raise RuntimeError("a training image decoded in one view and not in another; "
                               "remove the unreadable files the log names")
    validation = None
    if val is not None:
        vx, vy = extract_features(val_trunk, val, size, augment=False, progress=advance)
        validation = (vx.astype(np.float32), keras.ops.one_hot(vy, train.num_classes))
    extract_seconds = time.perf_counter() - began

    steps = len(labels) // batch
    warmup = round(recipe.warmup_epochs * steps)
    top.compile(optimizer=_optimizer(recipe, batch, steps * epochs, warmup),
                loss=keras.losses.CategoricalCrossentropy(
                    label_smoothing=recipe.label_smoothing),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                jit_compile=False)
    best = BestWeights()
    began = time.perf_counter()
    history = top.fit(_epoch_data(features, labels, train.num_classes, batch, epochs, seed),
                      epochs=epochs, steps_per_epoch=steps, validation_data=validation,
                      callbacks=[best], verbose=verbose, shuffle=False).history
    fit_seconds = time.perf_counter() - began
    if validation is not None:
        log(f"kept the weights of epoch {best.best_epoch + 1} (validation accuracy "
            f"{best.best[0]:.4f})")
    for layer in graph.layers(model):  # as the caller had them
        layer.trainable = trainable[id(layer)]
    return {
        "recipe": "transfer (head only)" if head_only else "transfer",
        "recipe_settings": dataclasses.asdict(recipe),
        "trunk_end": end, "views": views, "train_size": train_size,
        "feature_seconds": round(extract_seconds, 2),
        "feature_images_per_second": round((views * len(train) + (len(val) if val else 0))
                                           / extract_seconds, 1),
        "fit_seconds": round(fit_seconds, 2),
        "fit_images_per_second": round(steps * batch * epochs / fit_seconds, 1),
        "train_seconds": round(extract_seconds + fit_seconds, 2),
        "images_per_second": round(len(labels) * epochs / (extract_seconds + fit_seconds), 1),
        "best_epoch": None if best.best_epoch is None else best.best_epoch + 1,
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "final_step": steps * epochs,
    }
