"""The `keras-effnet` command (absl flags).

    keras-effnet --help                   the commands, one line each (`_COMMANDS`)
    keras-effnet COMMAND --help           that command's flags, with their defaults
    keras-effnet train --model lite0 --data train/ --val_data val/ --out run --epochs 10

A flag belongs to the commands its help names in backquotes (`train`), or to all.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import textwrap
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

FLAGS = flags.FLAGS
_THEIRS = frozenset(FLAGS)  # absl's own; ours are those defined below
flags.DEFINE_string("model", "lite0", "variant for `classify`/`export`/`evaluate`/`convert` "
                    "(b0-b8, l2, lite0-4, edgetpu-s/m/l), or for `export` a .keras file "
                    "(keras-effnet train's model); `evaluate` also a SavedModel or a .tflite")
flags.DEFINE_string("tflite", None, "`classify`: run this .tflite in MediaPipe's ImageClassifier")
flags.DEFINE_string("target", None, "`export`: android (uint8 + float16 with metadata), coral "
                    "(Edge TPU file + op report), server (SavedModel) or all; overrides --formats")
flags.DEFINE_boolean("verbose", False, "also show TensorFlow's, LiteRT's and MediaPipe's own "
                     "start-up and converter messages")
flags.DEFINE_string("labels", None, "`export`: class names, one per line (default: the model's "
                    "own, or ImageNet's)")
flags.DEFINE_string("weights", "imagenet", "'imagenet', a weight file, or 'none'")
flags.DEFINE_integer("top", 5, "how many classes `classify` prints per image")
flags.DEFINE_float("phi", None, "compound coefficient for `info` instead of a named variant")
flags.DEFINE_boolean("stages", False, "`info` also prints the scaled stage table")
flags.DEFINE_string("out", None, "`export`: folder for the artifacts; `convert`: the "
                    ".weights.h5 to write")
flags.DEFINE_list("formats", None, "`export`: some of saved_model,float32,float16,dynamic,"
                  "int8,uint8,edgetpu (default: all of those), and onnx (the onnx extra)")
flags.DEFINE_string("se", "keep", "`export`: SE strategy keep|float|hard|pool|remove, or "
                    "several joined with '+'")
flags.DEFINE_multi_string("calibration", [], "`export`: folder of calibration photos (repeatable); "
                          "fewer than 100 are expanded with random crops (default: the "
                          "photos a trained model was trained on, or for ImageNet models "
                          "scikit-image's)")
flags.DEFINE_multi_string("images", [], "`export`: folder of evaluation images (repeatable); "
                          "labelled by class folders or names like 207_n02099601_x.JPEG")
flags.DEFINE_integer("runs", 20, "`export`: timed batch-1 runs per artifact (0: no timing)")
flags.DEFINE_boolean("overwrite", False, "`export`: replace existing artifacts")
flags.DEFINE_integer("class_index", None, "`cam`: the class to explain (default: the top one)")
flags.DEFINE_enum("runtime", "litert", ["litert", "mediapipe"], "`evaluate`: what runs a "
                  ".tflite: our LiteRT runner, or MediaPipe's ImageClassifier (as a phone does)")
flags.DEFINE_boolean("json", False, "`evaluate`: print one JSON object instead of the table")
flags.DEFINE_string("plot", None, "`evaluate`: also write the confusion matrix as this PNG")
# train / search
flags.DEFINE_string("data", None, "`train`/`search`/`evaluate`: image folder (one sub-folder "
                    "per class, or names starting with the class index)")
flags.DEFINE_string("val_data", None, "`train`: validation image folder")
flags.DEFINE_float("val_split", 0.0, "`train`: fraction of --data held out for validation")
flags.DEFINE_enum("strategy", "auto", ["auto", "cpu", "mirrored", "multi_worker", "tpu"],
                  "`train`/`search`: tf.distribute strategy")
flags.DEFINE_string("tpu", None, "`train`: TPU name or address for --strategy tpu")
flags.DEFINE_integer("epochs", 1, "`train`: epochs")
flags.DEFINE_integer("batch", 32, "`train`/`search`: global batch, split over the replicas")
flags.DEFINE_integer("image_size", None, "`train`: input size (default: the variant's); "
                     "`search`: the base size that gamma scales")
flags.DEFINE_boolean("mixed_precision", False, "`train`: mixed precision (float16 on GPUs, "
                     "bfloat16 on TPUs and CPUs; --precision picks one)")
flags.DEFINE_enum("precision", None, ["float32", "mixed_float16", "mixed_bfloat16"],
                  "`train`: dtype policy (overrides --mixed_precision)")
flags.DEFINE_float("learning_rate", None, "`train`: peak learning rate (default: the recipe's; "
                   "paper 0.016 x batch/256, transfer 1e-3 for a batch of 32)")
flags.DEFINE_enum("recipe", "auto", ["auto", "transfer", "paper"], "`train`: transfer (a new "
                  "head on pretrained weights: the frozen trunk's features computed once, "
                  "the top fine-tuned on them, the best validation epoch kept), paper (the "
                  "ImageNet recipe), or auto: transfer with --weights imagenet or a .h5 weight "
                  "file, else paper")
flags.DEFINE_float("warmup_epochs", None, "`train`: linear warm-up epochs (default: the "
                   "recipe's; paper 5, transfer 0.5)")
flags.DEFINE_boolean("ema", True, "`train`: keep a weight average (0.9999) for eval and export")
flags.DEFINE_float("randaugment", None, "`train`: RandAugment magnitude 0-10 (default: off)")
flags.DEFINE_boolean("sync_batchnorm", False, "`train`: BatchNorm statistics across replicas")
flags.DEFINE_boolean("freeze_backbone", False, "`train`: train only the new head (the transfer "
                     "recipe: on the backbone's pooled features, computed once)")
flags.DEFINE_integer("unfreeze_blocks", None, "`train`: with --freeze_backbone, also train the "
                     "last N blocks (BatchNorm stays frozen)")
flags.DEFINE_integer("steps_per_epoch", None, "`train`/`search`: steps per epoch (default: one "
                     "pass over --data)")
flags.DEFINE_integer("save_every_steps", 0, "`train`: also checkpoint every N steps (0: per "
                     "epoch only)")
flags.DEFINE_boolean("jit_compile", None, "`train`/`search`: XLA (default: Keras' auto, off "
                     "on CPU-only machines, where it is slower)")
flags.DEFINE_integer("seed", 0, "`train`/`search`: seed of the data order and augmentation")
flags.DEFINE_string("base", "b0", "`search`: the variant whose scaling is searched")
flags.DEFINE_float("base_phi", 0.0, "`search`: shrink the baseline first by this compound "
                   "coefficient (paper's alpha, beta, gamma), e.g. -4 on a CPU")
flags.DEFINE_list("candidates", None, "`search`: alpha:beta:gamma triples instead of the grid, "
                  "e.g. 1.2:1.1:1.15,1.4:1:1.2")
flags.DEFINE_float("grid_step", 0.1, "`search`: grid spacing of alpha, beta, gamma from 1")
flags.DEFINE_float("grid_max", 1.4, "`search`: largest alpha, beta, gamma on the grid")
flags.DEFINE_float("tolerance", 0.1, "`search`: how far alpha*beta^2*gamma^2 may be from 2")
flags.DEFINE_integer("max_candidates", None, "`search`: train only the N candidates closest "
                     "to the FLOPs target")
_OURS = frozenset(FLAGS) - _THEIRS  # every flag defined above (imports add TensorFlow's later)


def _info(args: list[str]) -> int:
    import keras_effnet as ke
    from keras_effnet.scaling import plan_blocks

    if FLAGS.phi is not None:
        if args:
            raise app.UsageError("give a variant name or --phi, not both")
        model = ke.EfficientNet(FLAGS.phi, weights=None)
        title = f"EfficientNet phi={FLAGS.phi:g}"
        depth, width, res = ke.compound_coefficients(FLAGS.phi)
        coefficients = f"depth {depth:.3f}  width {width:.3f}  resolution x{res:.3f}"
    else:
        if len(args) != 1:
            raise app.UsageError("usage: keras-effnet info VARIANT   (e.g. b4, lite0, edgetpu-s)")
        variant = ke.get_variant(args[0])
        model = ke.build(variant.name, weights=None)
        title = variant.constructor_name
        coefficients = f"depth {variant.depth:g}  width {variant.width:g}"
    report = ke.profile(model)
    blocks = [layer.name for layer in model.layers if layer.name.endswith("project_bn")]
    print(f"{title}  ({model.name})")
    print(f"  resolution   {report.input_shape[0]} x {report.input_shape[1]}")
    print(f"  coefficients {coefficients}")
    print(f"  params       {report.params:,}  ({report.params / 1e6:.2f} M)")
    print(f"  MACs         {report.macs:,}  ({report.macs / 1e9:.3f} B)")
    print(f"  blocks       {len(blocks)}")
    if FLAGS.stages and FLAGS.phi is None:
        print("  block        kind    k  s  expand  in -> out  se")
        for plan in plan_blocks(ke.get_variant(args[0])):
            print(f"  {plan.name[:-1]:<12} {plan.kind:<6} {plan.kernel_size:>2} {plan.strides:>2} "
                  f"{plan.expand_ratio:>6}  {plan.filters_in:>4} -> {plan.filters_out:<4} "
                  f"{plan.se_filters or '-'}")
    return 0


def _classify(paths: list[str]) -> int:
    images = _photos(paths)
    if FLAGS.tflite:
        return _classify_mediapipe(FLAGS.tflite, images)
    import numpy as np

    import keras_effnet as ke

    variant = ke.get_variant(FLAGS.model)
    weights = None if FLAGS.weights.lower() == "none" else FLAGS.weights
    model = ke.build(variant.name, weights=weights)
    batch = np.stack([ke.load_image(src, variant.resolution) for src in images.values()])
    preds = model.predict(batch, verbose=0)
    print(f"{variant.constructor_name}, weights={weights}, {variant.resolution} px, "
          "centre crop + bicubic")
    for name, top in zip(images, ke.decode_predictions(preds, top=FLAGS.top)):
        _print_top(name, [(label, score) for _, label, score in top])
    return 0


def _print_top(name: str, top: list[tuple[str, float]]) -> None:
    print(f"\n{name}")
    for rank, (label, score) in enumerate(top, 1):
        print(f"  {rank}. {label:<28} {score:6.3f}")


def _classify_mediapipe(path: str, images: dict) -> int:
    """The phone's runtime on the desktop: MediaPipe Tasks' ImageClassifier."""
    import numpy as np

    import keras_effnet as ke
    from keras_effnet.export import read_model
    from keras_effnet.export.runtimes import mediapipe_available, mediapipe_classify

    if not mediapipe_available():
        print("MediaPipe is not installed, so the phone's runtime cannot run here: "
              "pip install 'keras-effnet[android]'")
        return 0
    size = read_model(path).inputs[0].shape[1]
    results = mediapipe_classify(path, np.stack([ke.load_image(src, size)
                                                 for src in images.values()]), top=FLAGS.top)
    print(f"MediaPipe ImageClassifier (Android's task runtime) reading {path} as it is; "
          f"{size} px centre crops")
    for name, top in zip(images, results):
        _print_top(name, [(label or f"class {index} (no name)", score)
                          for index, label, score in top])
    return 0


def _photos(paths: list[str]) -> dict:
    """The files given, or when none scikit-image's chelsea and coffee (when installed)."""
    if paths:
        return {path: path for path in paths}
    try:
        import skimage.data
    except ImportError:
        raise app.UsageError("no images given: pass image paths (or pip install scikit-image "
                             "for its sample photos)") from None
    return {"skimage:chelsea": skimage.data.chelsea(), "skimage:coffee": skimage.data.coffee()}


def _export(args: list[str]) -> int:
    import keras_effnet as ke
    from keras_effnet.export.evaluate import load_labelled
    from keras_effnet.export.metadata import class_names_for
    from keras_effnet.export.pipeline import (
        FORMATS,
        calibration_set,
        default_calibration,
        default_eval_sets,
        export_all,
        target_formats,
    )
    from keras_effnet.export.se import check_se

    if args:
        raise app.UsageError(f"export takes flags only, got {args}")
    if not FLAGS.out:
        raise app.UsageError("export needs --out DIR")
    formats = target_formats(FLAGS.target) if FLAGS.target else FLAGS.formats or list(FORMATS)
    if FLAGS.model.endswith(".keras"):
        from keras_effnet.saving import load_model

        model = load_model(FLAGS.model)
        size = model.input_shape[1]
        title = f"{FLAGS.model} ({model.name}, classes: {_names(model.class_names)})"
    else:
        variant = ke.get_variant(FLAGS.model)
        weights = None if FLAGS.weights.lower() == "none" else FLAGS.weights
        model = ke.build(variant.name, weights=weights)
        size = variant.resolution
        title = f"{variant.constructor_name}, weights={weights}"
    labels = class_names_for(model, FLAGS.labels)  # bad labels fail before any work
    check_se(model, FLAGS.se)  # as does an SE strategy for a model without SE blocks
    # a fine-tuned model is verified on the labelled photos it was validated on, when known
    eval_sets = dict(default_eval_sets(model, size, labels))
    for folder in FLAGS.images:  # class folders or ImageNet names: labelled, as evaluate reads
        eval_sets[folder] = load_labelled(folder, size, labels, model.output_shape[-1])
    calibration = None
    if {"int8", "uint8", "edgetpu"} & set(formats):
        calibration = calibration_set(size, FLAGS.calibration) if FLAGS.calibration else \
            default_calibration(model, size)
    print(f"{title}, {size} px -> {FLAGS.out}")
    export_all(model, FLAGS.out, formats, se=FLAGS.se, calibration=calibration,
               eval_sets=eval_sets, overwrite=FLAGS.overwrite, runs=FLAGS.runs,
               target=FLAGS.target, labels=labels)
    return 0


def _evaluate(args: list[str]) -> int:
    import json

    from keras_effnet.export.evaluate import evaluate, format_report

    if args:
        raise app.UsageError(f"evaluate takes flags only, got {args}")
    if not FLAGS.data:
        raise app.UsageError("evaluate needs --data DIR (one sub-folder per class, or names "
                             "like 207_n02099601_x.JPEG) and --model (a .keras file, a "
                             "SavedModel, a .tflite or a variant name)")
    report = evaluate(FLAGS.model, FLAGS.data, runtime=FLAGS.runtime, plot=FLAGS.plot,
                      progress=not FLAGS.json and sys.stdout.isatty())
    if FLAGS.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_report(report))
        if FLAGS.plot:
            print(f"wrote {FLAGS.plot}")
    return 0


def _names(names) -> str:
    if not names:
        return "none recorded"
    return ", ".join(names[:5]) + (f", ... ({len(names)})" if len(names) > 5 else "")


def _cam(args: list[str]) -> int:
    import keras_effnet as ke

    if len(args) != 1:
        raise app.UsageError("usage: keras-effnet cam IMAGE --out cam.png [--model lite0] "
                             "[--class_index N]   (IMAGE may be chelsea or coffee)")
    if not FLAGS.out:
        raise app.UsageError("cam needs --out FILE.png")
    source = args[0]
    if source in ("chelsea", "coffee") and not os.path.exists(source):
        import skimage.data

        source = getattr(skimage.data, source)()
    variant = ke.get_variant(FLAGS.model)
    weights = None if FLAGS.weights.lower() == "none" else FLAGS.weights
    model = ke.build(variant.name, weights=weights)
    heatmap, info = ke.cam(model, source, class_index=FLAGS.class_index, return_info=True)
    label = ke.imagenet_classes()[info["class_index"]][1] if model.outputs[0].shape[-1] == 1000 \
        else f"class {info['class_index']}"
    title = f"{variant.constructor_name}: {label} ({info['score']:.3f})"
    ke.save_cam(FLAGS.out, info["image"], heatmap, title=title, overwrite=True)
    row, col = divmod(int(heatmap.argmax()), heatmap.shape[1])
    print(f"{title}; heatmap peak at row {row}, column {col} of {heatmap.shape[0]}x"
          f"{heatmap.shape[1]}; wrote {FLAGS.out}")
    return 0


def _precision() -> str | None:
    if FLAGS.precision:
        return FLAGS.precision
    if not FLAGS.mixed_precision:
        return None
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def _train(args: list[str]) -> int:
    import json

    from keras_effnet.training import TrainConfig, train

    if args:
        raise app.UsageError(f"train takes flags only, got {args}")
    if not FLAGS.data or not FLAGS.out:
        raise app.UsageError("train needs --data DIR and --out DIR")
    weights = None if FLAGS.weights.lower() == "none" else FLAGS.weights
    config = TrainConfig(
        data=FLAGS.data, out=FLAGS.out, model=FLAGS.model, phi=FLAGS.phi, weights=weights,
        recipe=FLAGS.recipe,
        val_data=FLAGS.val_data, val_split=FLAGS.val_split, strategy=FLAGS.strategy,
        tpu=FLAGS.tpu, epochs=FLAGS.epochs, batch=FLAGS.batch, image_size=FLAGS.image_size,
        precision=_precision(), learning_rate=FLAGS.learning_rate,
        warmup_epochs=FLAGS.warmup_epochs, ema=FLAGS.ema, randaugment=FLAGS.randaugment,
        sync_batchnorm=FLAGS.sync_batchnorm, freeze_backbone=FLAGS.freeze_backbone,
        unfreeze_blocks=FLAGS.unfreeze_blocks, steps_per_epoch=FLAGS.steps_per_epoch,
        save_every_steps=FLAGS.save_every_steps,
        jit_compile="auto" if FLAGS.jit_compile is None else FLAGS.jit_compile,
        seed=FLAGS.seed, verbose=1 if sys.stdout.isatty() else 2,
    )
    _, summary = train(config)
    shown = {k: summary.get(k) for k in ("model", "recipe", "strategy", "replicas",
                                         "precision", "resumed_from_step", "final_step",
                                         "train_seconds", "images_per_second")}
    if "final_eval" in summary:
        shown["val_accuracy"] = summary["final_eval"].get("accuracy")
    print(json.dumps(shown))
    if "model_path" in summary:
        print(f"wrote {summary['model_path']} and {FLAGS.out}/summary.json")
    return 0


def _search(args: list[str]) -> int:
    from keras_effnet.training.search import SearchConfig, search

    if args:
        raise app.UsageError(f"search takes flags only, got {args}")
    if not FLAGS.data or not FLAGS.out:
        raise app.UsageError("search needs --data DIR and --out DIR")
    candidates = None
    if FLAGS.candidates:
        try:
            candidates = [tuple(float(v) for v in c.split(":")) for c in FLAGS.candidates]
        except ValueError:
            raise app.UsageError(f"--candidates takes alpha:beta:gamma triples, got "
                                 f"{','.join(FLAGS.candidates)}") from None
    config = SearchConfig(
        data=FLAGS.data, out=FLAGS.out, base=FLAGS.base,
        phi=1.0 if FLAGS.phi is None else FLAGS.phi, base_phi=FLAGS.base_phi,
        image_size=FLAGS.image_size, candidates=candidates, grid_step=FLAGS.grid_step,
        grid_max=FLAGS.grid_max, tolerance=FLAGS.tolerance, max_candidates=FLAGS.max_candidates,
        val_data=FLAGS.val_data, val_split=FLAGS.val_split, strategy=FLAGS.strategy,
        epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, batch=FLAGS.batch,
        learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
        jit_compile="auto" if FLAGS.jit_compile is None else FLAGS.jit_compile,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    result = search(config)
    print(result["table"])
    winner = result["winner"]
    print(f"winner: alpha={winner['alpha']:.2f} beta={winner['beta']:.2f} "
          f"gamma={winner['gamma']:.2f}; wrote {FLAGS.out}/search.json, search.md"
          + (", search.png" if "plot" in result else ""))
    return 0


def _convert(args: list[str]) -> int:
    from keras_effnet.tf_checkpoint import convert_checkpoint

    if len(args) != 1 or not FLAGS.out:
        raise app.UsageError("usage: keras-effnet convert CKPT_DIR --model b3 "
                             "--out FILE.weights.h5 [--overwrite]")
    out = convert_checkpoint(args[0], FLAGS.model, FLAGS.out, overwrite=FLAGS.overwrite)
    print(f"wrote {out}: load it with keras_effnet.build({FLAGS.model!r}, weights={out!r})")
    return 0


@dataclasses.dataclass(frozen=True)
class Command:
    run: Callable[[list[str]], int]
    usage: str  # after `keras-effnet `
    summary: str  # one line for `keras-effnet --help`


_COMMANDS = {
    "info": Command(_info, "info VARIANT | info --phi X",
                    "variant, resolution, params, MACs, blocks (--stages: the stage table)"),
    "classify": Command(_classify, "classify [IMAGE ...]",
                        "top classes of photos (none given: scikit-image's chelsea and coffee); "
                        "--tflite F runs an exported file in MediaPipe"),
    "export": Command(_export, "export --out DIR",
                      "SavedModel, TFLite modes, Edge TPU, each verified; --target android|"
                      "coral|server|all; --model FILE.keras for a trained model"),
    "evaluate": Command(_evaluate, "evaluate --model M --data DIR",
                        "top-1/top-5, per-class precision and recall of a .keras, SavedModel or "
                        ".tflite on labelled photos"),
    "cam": Command(_cam, "cam IMAGE --out cam.png", "Grad-CAM heatmap over a photo"),
    "train": Command(_train, "train --data DIR --out DIR",
                     "fine-tune on a folder of photos (or the paper's recipe under "
                     "tf.distribute); run again to resume"),
    "search": Command(_search, "search --data DIR --out DIR",
                      "alpha/beta/gamma grid search (the paper's step 1)"),
    "convert": Command(_convert, "convert CKPT --model b3 --out b3.weights.h5",
                       "a tensorflow/tpu checkpoint as Keras weights"),
}
_HELP = ("-h", "--help", "-help", "--helpshort", "-?")


def flag_commands(name: str) -> tuple[str, ...]:
    """The commands a flag is for: those its help names in backquotes (`train`), or all."""
    named = tuple(c for c in _COMMANDS if f"`{c}`" in (FLAGS[name].help or ""))
    return named or tuple(_COMMANDS)


def _own_flags() -> list[str]:
    return sorted(name for name in _OURS if FLAGS[name].name == name)  # not short names


def help_text(command: str | None = None) -> str:
    """`keras-effnet --help` (the commands, one line each) or `keras-effnet COMMAND
    --help` (its usage and its flags with their defaults)."""
    if command is None:
        width = max(map(len, _COMMANDS)) + 2
        lines = ["usage: keras-effnet COMMAND [flags]", "", "commands:"]
        lines += [f"  {name:<{width}}{c.summary}" for name, c in _COMMANDS.items()]
        lines += ["", ("keras-effnet COMMAND --help lists that command's flags; --helpfull "
                       "every flag, TensorFlow's included")]
        return "\n".join(lines)
    if command not in _COMMANDS:
        raise app.UsageError(_unknown_command(command))
    lines = [f"usage: keras-effnet {_COMMANDS[command].usage} [flags]", "",
             *textwrap.wrap(_COMMANDS[command].summary, 96), "", "flags:"]
    for name in _own_flags():
        if command not in flag_commands(name):
            continue
        flag = FLAGS[name]
        default = "none" if flag.default is None else flag.default_as_str.strip("'")
        text = re.sub(r"^(`\w+`/?)+:? ", "", " ".join(flag.help.split()))  # names: above
        lines += textwrap.wrap(f"--{name}: {text} (default: {default})", 96,
                               initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def _unknown_command(command: str) -> str:
    import difflib

    close = difflib.get_close_matches(command, list(_COMMANDS), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return (f"unknown command {command!r}{hint} Commands: {', '.join(_COMMANDS)} "
            "(keras-effnet --help says what each does)")


def main(argv: list[str]) -> int:
    """Run one command quietly (see keras_effnet.console); exceptions propagate."""
    from absl import logging

    from keras_effnet.console import start_quiet, stop_quiet

    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer logs at INFO
    if not FLAGS.verbose:
        start_quiet()  # already on when started as `keras-effnet` (see keras_effnet.console)
    try:
        if len(argv) < 2:
            raise app.UsageError(f"expected a command\n{help_text()}")
        if argv[1] not in _COMMANDS:
            raise app.UsageError(_unknown_command(argv[1]))
        code = _COMMANDS[argv[1]].run(argv[2:])
    except (ValueError, FileExistsError, OSError, app.UsageError):
        stop_quiet()  # bad input: one line each (below, or absl's usage message)
        raise
    except BaseException:
        stop_quiet(replay=True)  # the native messages may explain it
        raise
    # stays quiet: LiteRT and MediaPipe also log while the process shuts down
    return code


def _main(argv: list[str]) -> int:
    from keras_effnet.preprocessing import ImageReadError

    try:
        return main(argv)
    except ImageReadError as exc:  # a photo that cannot be read: one line, exit 1
        print(f"keras-effnet {argv[1]}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as exc:  # bad input: one clear line, no traceback
        print(f"keras-effnet {argv[1]}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # weights that cannot be downloaded, a folder that cannot be written
        print(f"keras-effnet {argv[1]}: error: {exc}", file=sys.stderr)
        return 1


def run(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    if any(arg in _HELP for arg in argv[1:]):  # absl's own --help lists no flag of ours
        command = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
        try:
            print(help_text(command))
        except app.UsageError as exc:
            print(f"keras-effnet: error: {exc}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    app.run(_main, argv=argv)


if __name__ == "__main__":
    run()
