"""Training: the fine-tuning recipe for a user's photos, and at scale tf.distribute
strategies, the paper's recipe, data, resume.

    from keras_effnet import training
    folder = training.scan_folder("photos/")
    train, val = training.split(folder, 0.2)
    model = training.classifier("lite0", folder.num_classes, weights="imagenet")
    training.fit_transfer(model, train, val, epochs=10)        # minutes on a CPU

    strategy = training.get_strategy("mirrored")
    with strategy.scope():
        model = training.classifier("b0", classes=5)
        training.compile_recipe(model, global_batch=64, steps_per_epoch=100)
    model.fit(training.train_dataset(training.scan_folder("data/"), 224, 64),
              steps_per_epoch=100, epochs=10)

`keras-effnet train` runs `train(TrainConfig(...))`; `keras-effnet search` the
compound-scaling grid search of `keras_effnet.training.search`.
"""

from keras_effnet.training.checkpoint import TrainingState, load_state, restore
from keras_effnet.training.data import (
    ImageFolder,
    eval_dataset,
    scan_folder,
    split,
    tfrecord_dataset,
    train_dataset,
)
from keras_effnet.training.finetune import (
    block_ids,
    check_classes,
    classifier,
    freeze_backbone,
    unfreeze_top,
)
from keras_effnet.training.recipe import (
    PAPER,
    Recipe,
    RMSpropEMA,
    WarmupExponentialDecay,
    add_weight_decay,
    callbacks,
    compile_recipe,
    learning_rate_schedule,
    loss,
    rmsprop,
    set_precision,
)
from keras_effnet.training.search import SearchConfig, candidate_grid, search
from keras_effnet.training.strategy import (
    STRATEGIES,
    AverageBatchNormStatistics,
    check_global_batch,
    fit_ready,
    get_strategy,
    parse_tf_config,
    scaled_learning_rate,
    split_cpu,
    strategy_name,
    sync_batchnorm,
    worker_info,
)
from keras_effnet.training.trainer import RECIPES, TrainConfig, build_model, train
from keras_effnet.training.transfer import HEAD_ONLY, TRANSFER, TransferRecipe, fit_transfer

__all__ = [
    "HEAD_ONLY",
    "PAPER",
    "RECIPES",
    "STRATEGIES",
    "TRANSFER",
    "AverageBatchNormStatistics",
    "ImageFolder",
    "RMSpropEMA",
    "Recipe",
    "SearchConfig",
    "TrainConfig",
    "TrainingState",
    "TransferRecipe",
    "WarmupExponentialDecay",
    "add_weight_decay",
    "block_ids",
    "build_model",
    "callbacks",
    "candidate_grid",
    "check_classes",
    "check_global_batch",
    "classifier",
    "compile_recipe",
    "eval_dataset",
    "fit_ready",
    "fit_transfer",
    "freeze_backbone",
    "get_strategy",
    "learning_rate_schedule",
    "load_state",
    "loss",
    "parse_tf_config",
    "restore",
    "rmsprop",
    "scaled_learning_rate",
    "scan_folder",
    "search",
    "set_precision",
    "split",
    "split_cpu",
    "strategy_name",
    "sync_batchnorm",
    "tfrecord_dataset",
    "train",
    "train_dataset",
    "unfreeze_top",
    "worker_info",
]
