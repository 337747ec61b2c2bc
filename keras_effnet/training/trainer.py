"""`train(TrainConfig(...))`: what `keras-effnet train` runs, from data folder to .keras file.

One `model.fit` under the chosen strategy with the paper's recipe, a
checkpoint every epoch (and every N steps), TensorBoard logs, the final model
(weight average swapped in) and a JSON summary. Run again with the same
`out`, it resumes from the last checkpoint.

    out/checkpoints/state.npz   the last training state (see checkpoint.py)
    out/logs/                   TensorBoard
    out/model.keras             the trained model, its class names inside (keras_effnet.saving)
    out/labels.txt              the class names, one per line
    out/summary.json            settings, per-epoch metrics, steps, images/s
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings

import keras

from keras_effnet.console import quieted
from keras_effnet.files import atomic_output, is_remote, makedirs, write_json
from keras_effnet.saving import load_model, save_model
from keras_effnet.specs import get_variant
from keras_effnet.training import checkpoint, transfer
from keras_effnet.training import recipe as paper
from keras_effnet.training.data import eval_dataset, scan_folder, split, train_dataset
from keras_effnet.training.finetune import (
    check_classes,
    classifier,
    freeze_backbone,
    unfreeze_top,
)
from keras_effnet.training.strategy import (
    check_global_batch,
    fit_ready,
    get_strategy,
    strategy_name,
    sync_batchnorm,
    worker_info,
)

__all__ = ["RECIPES", "TrainConfig", "build_model", "train"]

RECIPES = ("auto", "transfer", "paper")


@dataclasses.dataclass
class TrainConfig:
    """Settings of one training run; the CLI flags of `keras-effnet train` map onto these."""

    data: str
    out: str
    model: str = "b0"
    phi: float | None = None  # scale `model` by this compound coefficient instead
    depth_coefficient: float | None = None  # or scale its depth and width directly (search)
    width_coefficient: float | None = None
    weights: str | None = None  # None, "imagenet", or a .keras / .weights.h5 file
    # "auto": "transfer" (keras_effnet.training.transfer) when a new head goes on pretrained
    # weights, else "paper" (the ImageNet recipe of keras_effnet.training.recipe)
    recipe: str = "auto"
    val_data: str | None = None
    val_split: float = 0.0
    strategy: str = "auto"
    tpu: str | None = None
    epochs: int = 1
    batch: int = 32  # global: split over the replicas
    image_size: int | None = None
    precision: str | None = None  # "mixed_float16" | "mixed_bfloat16"
    learning_rate: float | None = None  # peak; default: the recipe's (paper: 0.016 x batch/256)
    warmup_epochs: float | None = None  # default: the recipe's (paper: 5)
    ema: bool = True
    label_smoothing: float = paper.PAPER.label_smoothing
    weight_decay: float = paper.PAPER.weight_decay
    drop_connect_rate: float = paper.PAPER.drop_connect_rate
    randaugment: float | None = None
    sync_batchnorm: bool = False
    freeze_backbone: bool = False
    unfreeze_blocks: int | None = None
    steps_per_epoch: int | None = None
    save_every_steps: int = 0
    jit_compile: bool | str = "auto"
    seed: int = 0
    verbose: int | str = "auto"

    def paper_recipe(self) -> paper.Recipe:
        warmup = paper.PAPER.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs
        return dataclasses.replace(
            paper.PAPER, warmup_epochs=warmup, label_smoothing=self.label_smoothing,
            weight_decay=self.weight_decay, drop_connect_rate=self.drop_connect_rate)

    def transfer_recipe(self) -> transfer.TransferRecipe:
        base = transfer.HEAD_ONLY if self.freeze_backbone else transfer.TRANSFER
        changes = {}
        if self.learning_rate is not None:
            changes["learning_rate"] = self.learning_rate
        if self.warmup_epochs is not None:
            changes["warmup_epochs"] = self.warmup_epochs
        return dataclasses.replace(base, **changes)

    def recipe_name(self) -> str:
        """The recipe this run uses: `recipe`, or for "auto" the transfer recipe when a new
        head goes on ImageNet weights (the job of a user's folder of photos)."""
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}: expected one of "
                             f"{', '.join(RECIPES)}")
        if self.recipe != "auto":
            return self.recipe
        named = self.phi is None and not self.depth_coefficient and not self.width_coefficient
        return "transfer" if named and self.backbone_weights() else "paper"

    def backbone_weights(self) -> bool:
        """Whether a new head goes on pretrained weights: 'imagenet', or a weight file
        (`.weights.h5` / `.h5`: its own classifier, if any, is dropped for the new head)."""
        weights = str(self.weights or "")
        return weights == "imagenet" or weights.endswith(".h5")


def build_model(config: TrainConfig, classes: int) -> keras.Model:
    """The model to train: a file's model, or the variant with a `classes`-way head."""
    from keras_effnet import EfficientNet, build

    weights = config.weights
    if weights and str(weights).endswith(".keras"):
        model = load_model(weights, compile=False)  # our fast layers back in
        check_classes(model, classes)
        return model
    spec = get_variant(config.model)
    size = config.image_size or spec.resolution
    if config.backbone_weights() and classes != 1000:
        model = classifier(spec.name, classes, weights=weights, image_size=size,
                           drop_connect_rate=config.drop_connect_rate)
    elif config.phi is not None or config.depth_coefficient or config.width_coefficient:
        model = EfficientNet(config.phi, base=spec.name, weights=weights, classes=classes,
                             depth_coefficient=config.depth_coefficient,
                             width_coefficient=config.width_coefficient,
                             resolution=config.image_size,
                             drop_connect_rate=config.drop_connect_rate)
    else:
        model = build(spec.name, weights=weights, classes=classes, input_shape=(size, size, 3),
                      drop_connect_rate=config.drop_connect_rate)
    if config.freeze_backbone:
        freeze_backbone(model)
    if config.unfreeze_blocks:
        unfreeze_top(model, config.unfreeze_blocks)
    return model


@quieted
def train(config: TrainConfig) -> tuple[keras.Model, dict]:
    """Train (or resume) as `config` says; returns the final model and the summary.

    The steps: read the folders, build the model under the strategy and restore the last
    checkpoint, fit from where it stopped, evaluate, save."""
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.recipe_name() == "transfer":
        return _train_transfer(config)
    strategy = get_strategy(config.strategy, tpu=config.tpu)
    check_global_batch(config.batch, strategy)
    folder, val_folder, steps_per_epoch = _read_folders(config)
    if config.precision:
        paper.set_precision(config.precision)
    model, state = _build_and_restore(config, strategy, folder.num_classes, steps_per_epoch)
    summary = _run_summary(config, model, folder, strategy, state)
    validation = eval_dataset(val_folder, summary["image_size"], config.batch) \
        if val_folder else None
    summary.update(_fit(config, model, strategy, folder, validation, state))
    if validation is not None:  # fit ended by writing the weight average into the model
        with _finite_validation():
            scores = model.evaluate(validation, verbose=0, return_dict=True)
        summary["final_eval"] = {k: float(v) for k, v in scores.items()}
    model.class_names = tuple(folder.class_names)  # what an export of it names
    _save(config, model, summary)
    return model, summary


def _train_transfer(config: TrainConfig) -> tuple[keras.Model, dict]:
    """The transfer recipe: the frozen trunk's features computed once per view, the top
    trained on them (keras_effnet.training.transfer), the best validation epoch kept."""
    if config.strategy not in ("auto", "cpu"):
        raise ValueError(f"the transfer recipe trains on one device; --strategy "
                         f"{config.strategy} needs --recipe paper")
    if config.unfreeze_blocks:
        raise ValueError("--unfreeze_blocks is for --recipe paper; the transfer recipe "
                         "trains the blocks after the stride-16 ones (or only the head "
                         "with --freeze_backbone)")
    paper_only = {"--randaugment": config.randaugment, "--sync_batchnorm": config.sync_batchnorm,
                  "--save_every_steps": config.save_every_steps,
                  "--steps_per_epoch": config.steps_per_epoch}
    given = [flag for flag, value in paper_only.items() if value]
    if given:
        raise ValueError(f"{', '.join(given)}: settings of --recipe paper; the transfer recipe "
                         "(the default on ImageNet weights) has its own augmentation and "
                         "trains each epoch on the whole folder")
    folder, val_folder, _ = _read_folders(config)
    if config.precision:
        paper.set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    model = build_model(dataclasses.replace(config, freeze_backbone=False),
                        folder.num_classes)
    summary = {
        "model": model.name, "variant": get_variant(config.model).name,
        "classes": folder.num_classes,
        "class_names": list(folder.class_names), "train_images": len(folder),
        "val_images": len(val_folder) if val_folder else 0,
        "skipped_files": len(folder.skipped), "image_size": model.inputs[0].shape[1],
        "global_batch": config.batch, "replicas": 1, "workers": 1, "strategy": "default",
        "precision": keras.config.dtype_policy().name, "epochs": config.epochs,
        "train_data": _absolute(config.data),
        "val_data": _absolute(config.val_data) if config.val_data else None,
        "resumed_from_step": 0,
    }
    summary.update(transfer.fit_transfer(
        model, folder, val_folder, epochs=config.epochs, batch=config.batch, seed=config.seed,
        recipe=config.transfer_recipe(), head_only=config.freeze_backbone,
        verbose=config.verbose))
    if val_folder is not None:  # the whole model on the photos, as a user scores it
        from keras_effnet.export.evaluate import evaluate

        summary["final_eval"] = {"accuracy": evaluate(
            model, val_folder, class_names=folder.class_names, progress=False).accuracy}
    else:
        print("no validation data (--val_data or --val_split): the last epoch's weights "
              "are kept, not the best")
    model.class_names = tuple(folder.class_names)
    _save(config, model, summary)
    return model, summary


def _absolute(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def _read_folders(config: TrainConfig):
    """(training folder, validation folder or None, steps per epoch), checked."""
    folder = scan_folder(config.data)
    val_folder = scan_folder(config.val_data) if config.val_data else None
    if val_folder is None and config.val_split:
        folder, val_folder = split(folder, config.val_split, config.seed)
    if val_folder is not None and val_folder.class_names != folder.class_names:
        raise ValueError(f"validation classes {val_folder.class_names[:5]}... differ from the "
                         f"training classes {folder.class_names[:5]}...")
    steps_per_epoch = config.steps_per_epoch or len(folder) // config.batch
    if steps_per_epoch < 1:
        raise ValueError(f"{config.data!r} has {len(folder)} images, fewer than one batch of "
                         f"{config.batch}; lower --batch or add images")
    return folder, val_folder, steps_per_epoch


def _build_and_restore(config: TrainConfig, strategy, classes: int, steps_per_epoch: int):
    """The compiled model under `strategy`, restored from the last checkpoint when there is
    one (every worker reads the chief's), and the callback that saves the next ones."""
    with strategy.scope():
        model = build_model(config, classes)
        if config.sync_batchnorm:
            sync_batchnorm(model)
        paper.compile_recipe(model, config.batch, steps_per_epoch, recipe=config.paper_recipe(),
                              learning_rate=config.learning_rate, ema=config.ema,
                              jit_compile=config.jit_compile)
        ckpt_dir = f"{config.out}/checkpoints"
        # what the schedule and the data order depend on: a rerun with other settings is
        # refused with a message, not resumed on a schedule it was not started with
        expect = {"global_batch": config.batch, "steps_per_epoch": steps_per_epoch,
                  "model": model.name, "epochs": config.epochs,
                  "learning_rate": config.learning_rate,
                  "warmup_epochs": config.warmup_epochs, "seed": config.seed}
        resumed = checkpoint.restore(ckpt_dir, model, expect)
    fit_ready(model, strategy)
    start_step = resumed["global_step"] if resumed else 0
    total_steps = config.epochs * steps_per_epoch
    if start_step >= total_steps:  # killed after the last step, before the model was saved
        print(f"already trained: the checkpoint in {ckpt_dir} is at step {start_step} of "
              f"{total_steps}")
        model.optimizer.finalize_variable_values(model.trainable_variables)
    state = checkpoint.TrainingState(
        ckpt_dir, start_step=start_step, total_steps=total_steps,
        steps_per_epoch=steps_per_epoch, every_steps=config.save_every_steps,
        writer=worker_info()[2], meta=expect,
        restored_norm=checkpoint.weights_norm(model) if resumed else None)
    return model, state


def _run_summary(config: TrainConfig, model, folder, strategy, state) -> dict:
    from keras_effnet import profile

    report = profile(model)
    return {
        "model": model.name, "variant": get_variant(config.model).name, "recipe": "paper",
        "params": report.params, "macs": report.macs, "classes": folder.num_classes,
        "class_names": list(folder.class_names), "train_images": len(folder),
        "skipped_files": len(folder.skipped), "image_size": model.inputs[0].shape[1],
        "global_batch": config.batch, "replicas": strategy.num_replicas_in_sync,
        "workers": worker_info()[1], "strategy": strategy_name(strategy),
        "precision": keras.config.dtype_policy().name, "epochs": config.epochs,
        "steps_per_epoch": state.steps_per_epoch, "total_steps": state.total_steps,
        "resumed_from_step": state.start_step,
        "restored_weights_norm": state.restored_norm,
    }


@contextlib.contextmanager
def _finite_validation():
    """The validation set's size is unknown to tf.data (a file that fails to decode is
    dropped), so Keras learns it by running out, and warns "Your input ran out of data"
    after each pass (fit's and evaluate's): not a fault of the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Your input ran out of data", UserWarning)
        yield


def _fit(config: TrainConfig, model, strategy, folder, validation, state) -> dict:
    """model.fit from the restored step to the last; what it did, for the summary."""
    # BatchNorm averaged over the replicas before the state is saved, so a resumed run and
    # every worker agree
    callbacks = [*paper.callbacks(model, strategy), state]
    if state.writer:
        callbacks.append(keras.callbacks.TensorBoard(f"{config.out}/logs", update_freq="epoch"))
    dataset = train_dataset(folder, model.inputs[0].shape[1], config.batch,
                            start_step=state.start_step, seed=config.seed,
                            randaugment=config.randaugment)
    began = time.perf_counter()
    history = {}
    if state.start_step < state.total_steps:
        with _finite_validation():
            history = model.fit(
                dataset, epochs=config.epochs,
                initial_epoch=state.start_step // state.steps_per_epoch,
                steps_per_epoch=state.steps_per_epoch, validation_data=validation,
                callbacks=callbacks, verbose=config.verbose,
                shuffle=False,  # the dataset shuffles, seeded
            ).history
    seconds = time.perf_counter() - began
    steps_run = state.step - state.start_step
    return {
        "final_step": state.step,
        "optimizer_iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "train_seconds": round(seconds, 2),
        "images_per_second": round(steps_run * config.batch / seconds, 2) if steps_run else None,
        "checkpoint_saves": state.saves,
    }


def _save(config: TrainConfig, model, summary: dict) -> None:
    """The chief writes the model, its labels and the summary; other workers their weights
    (to check that they agree with the chief's)."""
    index, _, chief = worker_info()
    if chief:
        makedirs(config.out)
        summary["model_path"] = f"{config.out}/model.keras"
        data = {"train": _absolute(config.data),
                "val": _absolute(config.val_data) if config.val_data else None}
        save_model(model, summary["model_path"], class_names=model.class_names,
                   training_data=data)
        write_json(f"{config.out}/summary.json", summary)
        return
    folder = f"{config.out}/workers/{index}"
    makedirs(folder)
    with atomic_output(f"{folder}/model.weights.h5", True, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    write_json(f"{folder}/summary.json", summary)
