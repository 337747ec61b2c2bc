"""tf.distribute strategies by name, and the rules that follow from the replica count.

    strategy = get_strategy("mirrored")
    with strategy.scope():
        model = keras_effnet.EfficientNetB0(weights=None)
        sync_batchnorm(model)                      # cross-replica BatchNorm statistics
        model.compile(optimizer=..., loss=...)
    model.fit(dataset_batched_by_global_batch, ...)

We build no engine of our own: this picks TensorFlow's strategy the way its
documentation does (`TF_CONFIG` for several workers, `TPUClusterResolver` for a
TPU) and checks what users get wrong (a malformed `TF_CONFIG`, a batch the
replicas cannot share) before TensorFlow fails deep inside a collective.
"""

from __future__ import annotations

import json
import os

import keras

from keras_effnet import graph

__all__ = [
    "STRATEGIES",
    "AverageBatchNormStatistics",
    "check_global_batch",
    "fit_ready",
    "get_strategy",
    "parse_tf_config",
    "scaled_learning_rate",
    "split_cpu",
    "strategy_name",
    "sync_batchnorm",
    "worker_info",
]

STRATEGIES = ("auto", "cpu", "mirrored", "multi_worker", "tpu")
_TASK_TYPES = ("chief", "worker", "evaluator", "ps")
_STRATEGIES: dict[tuple, object] = {}


def _tf():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "tf.distribute strategies need the TensorFlow backend; this process runs "
            f"Keras on {keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
        )
    import tensorflow as tf

    return tf


def _check_cluster_entry(task_type, addresses) -> None:
    if task_type not in _TASK_TYPES:
        raise ValueError(f"TF_CONFIG cluster has task type {task_type!r}; expected some of "
                         f"{', '.join(_TASK_TYPES)}")
    if not isinstance(addresses, list) or not addresses:
        raise ValueError(f"TF_CONFIG cluster[{task_type!r}] must be a non-empty list of "
                         f"'host:port' strings, got {addresses!r}")
    for address in addresses:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"TF_CONFIG cluster[{task_type!r}] has {address!r}; each "
                             "address must be 'host:port'")


def parse_tf_config(text: str | None = None) -> dict | None:
    """Validate `TF_CONFIG` (the environment's when `text` is None); None when unset.

    The layout is TensorFlow's: {"cluster": {"worker": ["host:port", ...], ...},
    "task": {"type": "worker", "index": 0}}.
    """
    if text is None:
        text = os.environ.get("TF_CONFIG")
    if text is None or not text.strip():
        return None
    hint = ('expected JSON like {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc.msg} at char {exc.pos}); {hint}") \
            from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}; {hint}")
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no 'cluster' mapping of task type to addresses; {hint}")
    for task_type, addresses in cluster.items():
        _check_cluster_entry(task_type, addresses)
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG has no 'task' with 'type' and 'index'; {hint}")
    if task["type"] not in cluster:
        raise ValueError(f"TF_CONFIG task type {task['type']!r} is not in the cluster "
                         f"({', '.join(cluster)})")
    index = task["index"]
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG task index {index!r} is out of range: cluster has "
                         f"{len(cluster[task['type']])} {task['type']} address(es)")
    return config


def worker_info(config: dict | None = None) -> tuple[int, int, bool]:
    """(this worker's index, number of workers, whether it writes the shared files).

    The chief writes checkpoints and the final model; in a cluster without a
    'chief' entry that is worker 0, as in TensorFlow's multi-worker tutorial.
    """
    config = parse_tf_config() if config is None else config
    if config is None:
        return 0, 1, True
    cluster, task = config["cluster"], config["task"]
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if task["type"] == "chief":
        return 0, workers, True
    offset = len(cluster.get("chief", []))
    index = offset + task["index"]
    return index, workers, index == 0


def split_cpu(count: int) -> list[str]:
    """Make the CPU show up as `count` logical devices (before TensorFlow starts).

    Lets `MirroredStrategy` be tried, tested and debugged on a laptop. It
    must run before any TensorFlow op; afterwards TensorFlow refuses and this
    raises with that message.
    """
    tf = _tf()
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != count:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError as exc:
            raise RuntimeError(f"split_cpu({count}) must run before TensorFlow initialises its "
                               f"devices: {exc}") from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _tpu_strategy(tf, tpu: str | None):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.NotFoundError) as exc:
        raise ValueError(
            f"strategy 'tpu': no TPU found ({exc}). On a Cloud TPU VM use tpu='local'; "
            "elsewhere give the TPU's name or grpc:// address (flag --tpu)."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name: str = "auto", *, tpu: str | None = None):
    """A `tf.distribute.Strategy` by name.

    auto          TPU when `tpu` is given, several workers when `TF_CONFIG` lists
                  them, all GPUs when there are several, else the default
                  (one device) strategy
    cpu           one CPU device, whatever accelerators exist
    mirrored      synchronous data parallelism over this machine's GPUs, or over
                  its logical CPU devices when it has none (see `split_cpu`)
    multi_worker  synchronous data parallelism over the workers of `TF_CONFIG`
    tpu           `TPUStrategy` through `TPUClusterResolver(tpu)`
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    tf = _tf()
    config = parse_tf_config()
    if name == "auto":
        if tpu:
            name = "tpu"
        elif config is not None and worker_info(config)[1] > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "multi_worker" and config is None:
        raise ValueError(
            "strategy 'multi_worker' needs TF_CONFIG (the cluster's addresses and this "
            "task's place in it) in the environment of every worker")
    # one strategy object per kind and process: two MirroredStrategy objects number their
    # collective ops alike, so a second one's all-reduce meets the first's ("Shape mismatch
    # in the collective instance"); the multi-worker one and the TPU system may be set up
    # only once per process anyway
    if name == "mirrored":
        key = (name, *(d.name for d in tf.config.list_logical_devices("GPU")
                       or tf.config.list_logical_devices("CPU")))
    else:  # listing devices would start the runtime before collective ops are configured
        key = (name, tpu)
    if key not in _STRATEGIES:
        if name == "mirrored":
            _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(key[1:]))
        elif name == "multi_worker":
            _STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            _STRATEGIES[key] = _tpu_strategy(tf, tpu)
    return _STRATEGIES[key]


def strategy_name(strategy) -> str:
    """The name a user wrote (TensorFlow's multi-worker class calls itself CollectiveAllReduce)."""
    tf = _tf()
    for public, name in ((tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
                         (tf.distribute.TPUStrategy, "TPUStrategy"),
                         (tf.distribute.MirroredStrategy, "MirroredStrategy"),
                         (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy")):
        if isinstance(strategy, public):
            return name
    return "default (one device)"


def check_global_batch(global_batch: int, strategy) -> int:
    """The per-replica batch; a clear error when the replicas cannot share the batch."""
    replicas = strategy.num_replicas_in_sync
    if not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"the global batch must be a positive int, got {global_batch!r}")
    if global_batch % replicas:
        lower = global_batch - global_batch % replicas
        raise ValueError(
            f"global batch {global_batch} is not divisible by the {replicas} replicas of "
            f"{type(strategy).__name__}; use a multiple of {replicas} "
            f"(e.g. {lower or replicas} or {lower + replicas})")
    return global_batch // replicas


def scaled_learning_rate(global_batch: int, base_learning_rate: float = 0.016,
                         base_batch: int = 256) -> float:
    """Linear scaling: the paper's 0.016 is for a batch of 256 (tensorflow/tpu main.py)."""
    return base_learning_rate * global_batch / base_batch


def sync_batchnorm(model: keras.Model, enabled: bool = True) -> int:
    """Compute BatchNorm batch statistics across replicas (tensorflow/tpu's cross-replica BN).

    With a small per-replica batch, per-replica statistics are noisy and the
    model trained on N replicas differs from one trained on one device with
    the same global batch; synchronized, the two match. Returns the number of
    BatchNormalization layers changed (nested models included). TensorFlow
    backend only, as in Keras.
    """
    if enabled:
        _tf()
    count = 0
    for layer in graph.layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = enabled
            count += 1
    return count


def fit_ready(model: keras.Model, strategy) -> keras.Model:
    """Let `fit`/`evaluate` run under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).

    Keras 3 (3.15) fails there in two places, both in how it merges values
    across replicas, not in training itself:
    - before the first step `fit` all-reduces one (images, labels) batch only
      to learn its shapes, and the multi-worker strategy refuses to reduce a
      tuple ("Attempt to convert a value (PerReplica...)"): this worker's
      first local part has the same shapes;
    - after each step it averages the scalar losses and metrics with
      `strategy.reduce("MEAN", v, axis=0)`, which a scalar has no axis for:
      the step's logs are given that axis (shape [1]), so the reduction is the
      mean over replicas it was meant to be.
    Gradients, weights and BatchNorm are untouched. Other strategies are left
    as they are. Call it after `compile`, before `fit`.
    """
    tf = _tf()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model
    from keras import ops

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def with_axis(step):
        def run(data):
            return {name: ops.reshape(value, (1,)) if len(value.shape) == 0 else value
                    for name, value in step(data).items()}
        return run

    object.__setattr__(model, "_maybe_symbolic_build", maybe_symbolic_build)
    object.__setattr__(model, "train_step", with_axis(model.train_step))
    object.__setattr__(model, "test_step", with_axis(model.test_step))
    return model


class AverageBatchNormStatistics(keras.callbacks.Callback):
    """At each epoch end, set every replica's BatchNorm moving statistics to their mean.

    Keras 3 creates the moving mean and variance without a cross-replica
    aggregation, so without synchronized BatchNorm each replica (and each
    worker) keeps the statistics of its own share of the batches, and the
    model the chief saves describes a fraction of the data. tf.keras averaged
    them on every update; averaging once an epoch gives the same expected
    statistics at no per-step cost, and leaves every worker with the same
    weights. A no-op with one replica.
    """

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def average(self) -> int:
        if self.strategy.num_replicas_in_sync < 2:
            return 0
        tf = _tf()
        moving = [v for layer in graph.layers(self.model)
                  if isinstance(layer, keras.layers.BatchNormalization)
                  for v in (layer.moving_mean, layer.moving_variance)]

        def replica_means():
            context = tf.distribute.get_replica_context()
            return context.all_reduce("MEAN", [tf.identity(v.value) for v in moving])

        # all-reduced inside the replicas (the only place the collective can run), then
        # written from the cross-replica context, which updates every local copy
        means = self.strategy.run(tf.function(replica_means))
        with self.strategy.scope():
            for variable, mean in zip(moving, means):
                variable.assign(self.strategy.experimental_local_results(mean)[0])
        return len(moving)

    def on_epoch_end(self, epoch, logs=None):
        self.average()
