"""A trained-like EfficientNet-B0 for quantization studies when B0's ImageNet
weights cannot be had: B0 distilled from EfficientNet-Lite0's real weights.

    python benchmarks/b0_proxy.py [--steps 400] [--batch 16]

Lite0 is B0 without squeeze-excitation and with ReLU6 instead of swish, so
every Lite0 weight fits the matching B0 layer. The proxy starts from those,
with each SE gate near a constant ~0.98 (small random reduce and expand kernels,
expand bias 4), and is then fitted for a few hundred steps (about 8 minutes on 2
cores) so that its logits match Lite0's on random crops of photos
(scikit-image's and ../shared/data/photos, never the evaluation set); the swish
activations get BatchNorm statistics from photos.

Limits, measured: after 400 steps the SE kernels have barely moved from their
start (mean |k| about 0.009), so the gates stay near-constant; and Lite0's weights
were trained under ReLU6's cap, which swish removes, so some activations span far
wider ranges than a B0 trained with swish would have (block1a's projection output:
int8 scale 0.67, a range of about 170). Integer quantization of this proxy is
therefore harder than of the real B0: its uint8 file keeps 38% top-1 agreement.

The result is cached as `<KERAS_HOME>/models/keras_effnet/b0_distilled_from_lite0.weights.h5`
with a JSON record of how it was made and how close it came to Lite0.
It is a proxy: its accuracy is Lite0's knowledge through a different
activation, not B0's published 77.1%.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_effnet.files import atomic_output, write_json

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE_NAME = "b0_distilled_from_lite0.weights.h5"
SE_GATE_BIAS = 4.0  # sigmoid(4) = 0.982: SE starts as a near-identity gate
# Zero SE kernels would be a fixed point of gradient descent (swish(0) = 0 gives the
# expand kernel no gradient, and the reduce kernel's gradient is proportional to the
# expand kernel): the SE branches would stay dead. Small random kernels let them learn.
SE_KERNEL_STD = 0.01
RECIPE = "se-random-0.01"  # part of the cache record: a proxy made another way is rebuilt


def cache_path() -> pathlib.Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return pathlib.Path(home) / "models" / "keras_effnet" / CACHE_NAME


def transplant_lite0(lite0, b0, seed: int = 0) -> int:
    """Copy every Lite0 weight into the B0 layer of the same name; set the SE
    layers (absent in Lite0) to a near-identity gate with small random kernels.
    Returns how many layers were copied."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lite = {layer.name: layer for layer in lite0.layers}
    copied = 0
    for layer in b0.layers:
        if not layer.weights:
            continue
        if layer.name in lite:
            layer.set_weights(lite[layer.name].get_weights())
            copied += 1
        elif layer.name.endswith("_se_reduce"):
            kernel, bias = layer.get_weights()
            layer.set_weights([_small(rng, kernel), np.zeros_like(bias)])
        elif layer.name.endswith("_se_expand"):
            kernel, bias = layer.get_weights()
            layer.set_weights([_small(rng, kernel), np.full_like(bias, SE_GATE_BIAS)])
        else:
            raise ValueError(f"B0 layer {layer.name!r} has weights but no Lite0 counterpart")
    return copied


def _small(rng, like):
    return rng.normal(0.0, SE_KERNEL_STD, like.shape).astype(like.dtype)


def photo_sources() -> list:
    """scikit-image's photos and ../shared/data/photos (when present): never the
    evaluation set."""
    from keras_effnet.export import bundled_photos
    from keras_effnet.export.data import image_files

    sources = list(bundled_photos()[0])
    if (SHARED / "photos").is_dir():
        sources += [str(p) for p in image_files(SHARED / "photos")]
    return sources


def distil(steps: int = 400, batch: int = 16, learning_rate: float = 3e-4, seed: int = 0,
           log=print):
    """Build the proxy and return (model, record)."""
    import keras
    import numpy as np

    import keras_effnet as ke
    from keras_effnet.export import calibration_views

    keras.utils.set_random_seed(seed)
    teacher = ke.build("lite0", weights="imagenet")
    student = ke.build("b0", weights=None, drop_connect_rate=0.0, dropout_rate=0.0)
    copied = transplant_lite0(teacher, student, seed)
    size = student.input_shape[1]
    sources = photo_sources()
    # a fixed pool of random crops and flips, 128 of them held out
    pool = calibration_views(sources, size, count=max(512, batch * 8), seed=seed)
    targets = _logits(teacher, pool)
    head = student.get_layer("predictions")
    head.activation = keras.activations.get("linear")  # fit logits; softmax is put back
    student.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    held_out = slice(len(pool) - 128, len(pool))
    train = len(pool) - 128
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    before = _agreement(student, pool[held_out], targets[held_out])
    log(f"transplanted {copied} Lite0 layers into B0; before distillation: "
        f"top-1 agreement with Lite0 {100 * before[0]:.1f}%, logit MSE {before[1]:.3f} "
        f"(held-out crops)")
    progbar = keras.utils.Progbar(steps, stateful_metrics=["mse"])
    for step in range(steps):
        index = rng.choice(train, batch, replace=False)
        loss = student.train_on_batch(pool[index], targets[index])
        progbar.update(step + 1, [("mse", float(loss))])
    # BatchNorm statistics of the distilled network over many crops at once
    bns = [layer for layer in student.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    student(pool[:64], training=True)
    for layer in bns:
        layer.momentum = 0.99
    after = _agreement(student, pool[held_out], targets[held_out])
    head.activation = keras.activations.get("softmax")
    seconds = time.perf_counter() - start
    log(f"after {steps} steps ({seconds:.0f} s): top-1 agreement with Lite0 "
        f"{100 * after[0]:.1f}%, logit MSE {after[1]:.3f} (held-out crops)")
    record = {"teacher": "EfficientNetLite0 (ImageNet weights)", "recipe": RECIPE,
              "steps": steps, "batch": batch, "learning_rate": learning_rate, "seed": seed,
              "crops": len(pool),
              "photos": len(sources), "seconds": round(seconds, 1),
              "agreement_before": before[0], "mse_before": before[1],
              "agreement_after": after[0], "mse_after": after[1]}
    fresh = ke.build("b0", weights=None, drop_connect_rate=0.0, dropout_rate=0.0)
    fresh.set_weights(student.get_weights())  # a clean graph with the softmax head
    return fresh, record


def _logits(model, images):
    import keras

    head = model.get_layer("predictions")
    features = keras.Model(model.input, head.input).predict(images, batch_size=32, verbose=0)
    kernel, bias = head.get_weights()
    return features @ kernel + bias


def _agreement(model, images, targets):
    import numpy as np

    logits = model.predict(images, batch_size=32, verbose=0)
    agree = float(np.mean(logits.argmax(1) == targets.argmax(1)))
    return agree, float(np.mean((logits - targets) ** 2))


def load_or_distil(steps: int = 400, batch: int = 16, log=print):
    """The cached proxy when present (and made with the same settings), else a new one."""
    import keras_effnet as ke

    path = cache_path()
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        record = json.loads(meta.read_text())
        if (record.get("steps"), record.get("batch"), record.get("recipe")) == (
                steps, batch, RECIPE):
            model = ke.build("b0", weights=None, drop_connect_rate=0.0, dropout_rate=0.0)
            model.load_weights(path)
            log(f"distilled B0 proxy loaded from {path}")
            return model, record
    model, record = distil(steps, batch, log=log)
    with atomic_output(path, overwrite=True, suffix=".weights.h5") as partial:
        model.save_weights(str(partial))
    write_json(meta, record)
    log(f"distilled B0 proxy cached at {path}")
    return model, record


def main(argv):
    del argv
    from absl import flags

    _, record = load_or_distil(flags.FLAGS.steps, flags.FLAGS.batch)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_integer("steps", 400, "distillation steps")
    flags.DEFINE_integer("batch", 16, "crops per step")
    sys.exit(app.run(main))
