"""keras_effnet.training: strategies, recipe, data, fine-tuning, resume, and the `train` CLI.

Models here are tiny (phi=-4 at 32 px, ~1.2 M parameters) and compiled without
XLA: the facts under test (same gradients on two replicas, identical workers,
a resumed step counter) do not depend on size, and the suite must stay fast.
"""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO

import keras_effnet as ke
from keras_effnet import training
from keras_effnet.training import recipe

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
ARCH = ["--model", "b0", "--phi=-4", "--image_size", "32", "--nojit_compile"]
TINY = [*ARCH, "--weights", "none"]


@pytest.fixture(scope="module")
def folder(class_folder):
    return class_folder


def _tiny(classes=3, **kwargs):
    return ke.EfficientNet(-4, resolution=32, classes=classes, **kwargs)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "keras_effnet.cli", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


# --- strategies ---------------------------------------------------------------------------


def test_mirrored_over_two_cpus_matches_one_device(folder):
    """2 SGD steps, global batch 8: two replicas with synchronized BatchNorm give the weights
    one device gives (the gradient of the same global batch)."""
    import tensorflow as tf

    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest splits the CPU in two"
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    keras.utils.set_random_seed(0)
    reference = _tiny(dropout_rate=0.0, drop_connect_rate=0.0)
    initial = reference.get_weights()

    def two_steps(strategy, sync):
        with strategy.scope():
            model = _tiny(dropout_rate=0.0, drop_connect_rate=0.0)
            model.set_weights(initial)
            assert training.sync_batchnorm(model, sync) > 0
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss="categorical_crossentropy",
                          jit_compile=False)
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
        return model.get_weights()

    mirrored = training.get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2
    single = two_steps(training.get_strategy("cpu"), False)
    synced = two_steps(mirrored, True)
    unsynced = two_steps(mirrored, False)
    moved = max(np.abs(a - b).max() for a, b in zip(single, initial))
    gap = max(np.abs(a - b).max() for a, b in zip(single, synced))
    per_replica = max(np.abs(a - b).max() for a, b in zip(single, unsynced))
    print(f"moved {moved:.3g}, synchronized gap {gap:.3g}, per-replica BN gap {per_replica:.3g}")
    assert moved > 1e-2, "the steps must change the weights for the comparison to mean anything"
    assert gap < 1e-3 * moved, f"mirrored differs from one device by {gap} (moved {moved})"
    assert per_replica > 10 * gap, "per-replica BatchNorm statistics should differ visibly"


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(folder, out, ports, extra=()):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "keras_effnet.cli", "train", *TINY, "--data", str(folder),
             "--out", str(out), "--strategy", "multi_worker", "--batch", "8", *extra],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


# two training processes (half a minute on 2 cores): make test-all; make test keeps the
# two-replica MirroredStrategy test above
@pytest.mark.slow
def test_multi_worker_two_processes_agree(folder, tmp_path):
    """Two `keras-effnet train --strategy multi_worker` processes on 127.0.0.1 end with the
    same weights; only the chief writes the model, the other worker its own copy."""
    out = tmp_path / "run"
    procs = _workers(folder, out, _free_ports(2),
                     ["--epochs", "1", "--steps_per_epoch", "3", "--noema"])
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "MultiWorkerMirroredStrategy"
    assert summary["workers"] == 2 and summary["replicas"] == 2 and summary["final_step"] == 3
    chief = keras.saving.load_model(out / "model.keras", compile=False)
    other = _tiny()
    other.load_weights(out / "workers" / "1" / "model.weights.h5")
    initial = _tiny().get_weights()
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(a.shape == b.shape and not np.allclose(a, b)
               for a, b in zip(chief.get_weights(), initial)), "training changed nothing"


def test_strategy_and_tf_config_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown strategy 'gpus'; expected one of auto, cpu"):
        training.get_strategy("gpus")
    for text, message in [
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('["worker"]', "must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "no 'cluster' mapping"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
         "each address must be 'host:port'"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
         "task index 2 is out of range"),
        ('{"cluster": {"worker": ["a:1"]}}', "no 'task' with 'type' and 'index'"),
        ('{"cluster": {"gpu": ["a:1"]}, "task": {"type": "gpu", "index": 0}}',
         "task type 'gpu'"),
    ]:
        monkeypatch.setenv("TF_CONFIG", text)
        with pytest.raises(ValueError, match=message):
            training.get_strategy("multi_worker")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        training.get_strategy("multi_worker")
    assert training.worker_info(training.parse_tf_config(
        '{"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, '
        '"task": {"type": "worker", "index": 1}}')) == (2, 3, False)


def test_global_batch_and_learning_rate_follow_the_replicas():
    mirrored = training.get_strategy("mirrored")
    assert training.check_global_batch(8, mirrored) == 4
    with pytest.raises(ValueError, match="global batch 7 is not divisible by the 2 replicas of "
                                         "MirroredStrategy; use a multiple of 2"):
        training.check_global_batch(7, mirrored)
    assert training.scaled_learning_rate(4096) == pytest.approx(0.256)  # tpu's B0 at 4096
    assert training.scaled_learning_rate(256) == pytest.approx(0.016)


# --- recipe -------------------------------------------------------------------------------


def test_learning_rate_schedule_is_the_papers():
    schedule = training.learning_rate_schedule(global_batch=512, steps_per_epoch=100)
    peak = 0.016 * 2
    lr = lambda step: float(keras.ops.convert_to_numpy(schedule(step)))
    assert lr(0) == 0.0
    assert lr(250) == pytest.approx(peak / 2)  # half way through the 5-epoch warm-up
    assert lr(500) == pytest.approx(peak * 0.97 ** 2)  # epoch 5 = 2 decays of 2.4 epochs
    assert lr(719) == pytest.approx(peak * 0.97 ** 2)  # staircase
    assert lr(720) == pytest.approx(peak * 0.97 ** 3)
    config = schedule.get_config()
    assert type(schedule).from_config(config).get_config() == config


def test_weight_decay_skips_batchnorm_and_biases():
    model = _tiny()
    count = training.add_weight_decay(model, 1e-5)
    kernels = [v for layer in model.layers for v in layer.weights
               if v.path.endswith(("/kernel", "/depthwise_kernel"))]
    assert count == len(kernels) > 20
    decayed = {id(v) for v in model.weights if v.regularizer is not None}
    assert decayed == {id(v) for v in kernels}
    expected = 1e-5 / 2 * sum(float(np.square(v.numpy()).sum()) for v in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)


def test_optimizer_and_loss_are_the_papers():
    optimizer = training.rmsprop(0.016, ema=0.9999)
    assert (optimizer.rho, optimizer.momentum, optimizer.epsilon) == (0.9, 0.9, 1e-3)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9999
    assert training.loss().get_config()["label_smoothing"] == 0.1
    # the average warms up like tf.train.ExponentialMovingAverage(num_updates=step)
    variable = keras.Variable(np.zeros(3, "float32"))
    optimizer.build([variable])
    optimizer.iterations.assign(5)
    variable.assign(np.ones(3, "float32"))
    optimizer._update_model_variables_moving_average([variable])
    average = optimizer._model_variables_moving_average[0].numpy()
    np.testing.assert_allclose(average, 1 - 6 / 15, rtol=1e-6)  # decay min(0.9999, 6/15)


def _mixed_b0(policy):
    """B0 (full depth and width, 64 px) built and compiled with the whole recipe under
    `policy`; the global policy is restored after."""
    previous = keras.config.dtype_policy()
    try:
        training.set_precision(policy)
        model = ke.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=10)
        training.compile_recipe(model, global_batch=2, steps_per_epoch=20, jit_compile=False)
    finally:
        keras.config.set_dtype_policy(previous)
    return model


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_se_gates_and_softmax_in_float32(policy):
    model = _mixed_b0(policy)
    assert model.get_layer("block1a_dwconv").compute_dtype == policy.split("_")[1]
    assert model.get_layer("block1a_se_expand").compute_dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


# float16 (the GPU policy, with loss scaling) takes about a minute on a CPU, bfloat16 about
# 50 s: make test-all
@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_b0_trains_20_steps_under_mixed_precision(policy):
    """No NaN or inf in 20 steps of B0 under the recipe (the dtypes are checked above)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (40, 64, 64, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, 40), 10)
    model = _mixed_b0(policy)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    applied = int(model.optimizer.iterations.numpy())
    if policy == "mixed_float16":
        # dynamic loss scaling skips a step on overflow and halves the scale (from 2**15;
        # it grows only after 2000 good steps): every one of the 20 steps is accounted for
        scale = float(model.optimizer.dynamic_scale.numpy())
        skipped = round(np.log2(model.optimizer.initial_scale / scale))
        print(f"{applied} steps applied, {skipped} skipped by loss scaling (scale {scale})")
        assert applied + skipped == 20 and applied >= 10
    else:
        assert applied == 20  # bfloat16 has float32's range: no loss scaling
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert np.isfinite(model.predict(x[:4], verbose=0)).all()


# --- data ---------------------------------------------------------------------------------


def test_folder_scan_counts_unreadable_files(folder):
    found = training.scan_folder(folder)
    assert found.class_names == ("cat", "coffee", "rocket")
    assert len(found) == 24 and found.num_classes == 3
    assert sorted(os.path.basename(p) for p, _ in found.skipped) == ["empty.png", "notes.jpg"]
    train, val = training.split(found, 0.25)
    assert (len(train), len(val)) == (18, 6) and set(val.labels) == {0, 1, 2}


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        training.scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        training.scan_folder(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(ValueError, match="without a leading class index"):
        training.scan_folder(tmp_path / "flat")


def test_pipelines_crop_resume_and_read_tfrecords(folder, tmp_path):
    import tensorflow as tf

    found = training.scan_folder(folder)
    images, labels = next(iter(training.train_dataset(found, 40, batch=4)))
    assert images.shape == (4, 40, 40, 3) and labels.shape == (4, 3)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    # resuming at step 3 gives the labels an uninterrupted run sees from step 3
    order = [np.argmax(y, -1).tolist()
             for _, y in training.train_dataset(found, 32, batch=4).take(5)]
    resumed = [np.argmax(y, -1).tolist()
               for _, y in training.train_dataset(found, 32, batch=4, start_step=3).take(2)]
    assert resumed == order[3:5]
    # evaluation: the centre crop of load_image (PIL) up to resampling differences
    evaluated = next(iter(training.eval_dataset(found, 40, batch=24)))[0].numpy()
    reference = ke.load_image(found.files[0], 40)
    assert np.abs(evaluated[0] - reference).mean() < 3.0
    # TFRecords in tensorflow/tpu's layout, labels stored 1-based
    path = str(tmp_path / "train-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
        for file, label in zip(found.files, found.labels):
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[Path(file).read_bytes()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[label + 1])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=feature)).SerializeToString())
    records = training.tfrecord_dataset(str(tmp_path / "train-*"), 40, 24, training=False,
                                        num_classes=3)
    _, record_labels = next(iter(records))
    assert np.argmax(record_labels, -1).tolist() == list(found.labels)
    with pytest.raises(ValueError, match="no TFRecord files match"):
        training.tfrecord_dataset(str(tmp_path / "nothing-*"), 40, 4, training=True)


# --- fine-tuning --------------------------------------------------------------------------


def test_freeze_then_unfreeze_top_blocks_keeps_batchnorm_frozen():
    model = training.classifier("lite0", classes=4, weights=None, image_size=64)
    assert model.get_layer("predictions").units == 4
    head = training.freeze_backbone(model)
    assert head == 1280 * 4 + 4
    opened = training.unfreeze_top(model, 2)
    assert training.block_ids(model)[-2:] == ["block6d", "block7a"]
    assert "block7a_project_conv" in opened and "top_conv" in opened
    assert not model.get_layer("block7a_project_bn").trainable
    assert not model.get_layer("block6c_project_conv").trainable
    trainable = {v.path.split("/")[0] for v in model.trainable_weights}
    assert trainable == set(opened) | {"predictions"}
    with pytest.raises(ValueError, match="blocks must be an int in 0..16"):
        training.unfreeze_top(model, 17)


# --- the train command --------------------------------------------------------------------


def test_train_bad_input_errors(folder, tmp_path):
    def config(**kwargs):
        return training.TrainConfig(**{"data": str(folder), "out": str(tmp_path / "out"),
                                       "phi": -4, "image_size": 32, "batch": 4, **kwargs})

    for kwargs, message in [
        ({"data": str(tmp_path / "nowhere")}, "data folder .* does not exist"),
        ({"data": str(tmp_path)}, "no readable images"),
        ({"strategy": "mirrored", "batch": 3},
         "global batch 3 is not divisible by the 2 replicas"),
        ({"batch": 32}, "has 24 images, fewer than one batch of 32"),
    ]:
        with pytest.raises(ValueError, match=message):
            training.train(config(**kwargs))
    assert not (tmp_path / "out").exists()
    # through the command line: one line on stderr, exit status 2, no traceback
    _tiny(classes=5).save(tmp_path / "five.keras")
    result = _cli("train", *ARCH, "--weights", str(tmp_path / "five.keras"), "--data",
                  str(folder), "--batch", "4", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search("error: the data has 3 classes but .* head has 5 outputs", result.stderr)
    result = _cli("train", *TINY, "--data", str(folder), "--out", str(tmp_path / "o"),
                  "--strategy", "gpus")
    assert result.returncode == 1 and "--strategy" in result.stderr and "gpus" in result.stderr
    # ImageNet weights that cannot be downloaded: one line naming the file, no traceback
    result = subprocess.run(
        [sys.executable, "-m", "keras_effnet.cli", "train", "--model", "b0", "--weights",
         "imagenet", "--image_size", "32", "--data", str(folder), "--batch", "4", "--out",
         str(tmp_path / "o")], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**ENV, "KERAS_EFFNET_WEIGHTS_URL": "http://127.0.0.1:9/"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: could not download efficientnetb0_notop.h5" in result.stderr


def _read_state(directory):
    try:
        return training.load_state(str(directory))
    except (OSError, ValueError, KeyError):
        return None  # caught between the write and the rename


def test_sigkill_mid_epoch_then_resume(folder, tmp_path):
    """SIGKILL `keras-effnet train` after a mid-epoch checkpoint; run it again: it restores
    that checkpoint's weights, continues its step counter, and finishes the run."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "keras_effnet.cli", "train", *TINY, "--data", str(folder),
            "--out", str(out), "--batch", "4", "--epochs", "3", "--steps_per_epoch", "5",
            "--save_every_steps", "1"]
    proc = subprocess.Popen(args, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state, deadline = None, time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            state = _read_state(out / "checkpoints")
            if state and state[0]["global_step"] >= 2 and state[0]["step_in_epoch"]:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = _read_state(out / "checkpoints")  # the last save before the kill
    killed_at = state[0]["global_step"]
    assert 2 <= killed_at < 15 and not (out / "model.keras").exists()
    assert state[0]["optimizer_iterations"] == killed_at
    result = subprocess.run(args, env=ENV, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at
    assert summary["restored_weights_norm"] == pytest.approx(
        training.checkpoint.weights_norm(state[1]), rel=1e-6)
    assert summary["final_step"] == summary["optimizer_iterations"] == 15
    epochs_run = len(summary["history"]["loss"])
    assert epochs_run == 3 - killed_at // 5
    model = keras.saving.load_model(out / "model.keras")
    assert model.output_shape == (None, 3)
    assert (out / "logs").is_dir()


# about a minute; make test keeps the MirroredStrategy run and a SIGKILLed single-worker
# resume
@pytest.mark.slow
def test_multi_worker_sigkill_one_worker_then_restart_both(folder, tmp_path):
    """BackupAndRestore's promise under MultiWorkerMirroredStrategy: SIGKILL one of two
    workers mid-epoch (the other then waits on it forever, so it is killed too, as a
    cluster manager would), start both again with the same command: both restore the
    chief's last save, continue its step counter and end with identical weights."""
    out = tmp_path / "run"
    ports = _free_ports(2)
    extra = ["--epochs", "2", "--steps_per_epoch", "6", "--save_every_steps", "1", "--noema"]
    procs = _workers(folder, out, ports, extra)
    state, deadline = None, time.time() + 300
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            state = _read_state(out / "checkpoints")
            if state and state[0]["global_step"] >= 3 and state[0]["step_in_epoch"]:
                procs[1].send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        time.sleep(1.0)  # worker 0 runs into the dead peer
    finally:
        for p in procs:
            p.kill()
        logs = [p.communicate(timeout=60)[0] for p in procs]
    assert procs[1].returncode == -signal.SIGKILL, "the run ended before it was killed:\n" + \
        logs[1][-3000:]
    saved = _read_state(out / "checkpoints")
    killed_at = saved[0]["global_step"]
    assert 3 <= killed_at < 12 and not (out / "model.keras").exists()
    procs = _workers(folder, out, ports, extra)
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log[-3000:] for log in logs]
    summaries = [json.loads((out / "summary.json").read_text()),
                 json.loads((out / "workers" / "1" / "summary.json").read_text())]
    norm = training.checkpoint.weights_norm(saved[1])
    for summary in summaries:  # both restored the save, not fresh weights
        assert summary["resumed_from_step"] == killed_at
        assert summary["restored_weights_norm"] == pytest.approx(norm, rel=1e-6)
        assert summary["final_step"] == summary["optimizer_iterations"] == 12
    chief = keras.saving.load_model(out / "model.keras", compile=False)
    other = _tiny()
    other.load_weights(out / "workers" / "1" / "model.weights.h5")
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_batchnorm_statistics_are_averaged_over_replicas():
    """Keras 3 keeps one set of moving statistics per replica; the epoch-end callback leaves
    every replica with their mean."""
    import tensorflow as tf

    strategy = training.get_strategy("mirrored")
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    variable = model.layers[0].moving_mean

    def diverge():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        variable.assign(tf.fill([4], tf.cast(replica, tf.float32) * 2.0 + 1.0))

    strategy.run(tf.function(diverge))
    before = [v.numpy() for v in strategy.experimental_local_results(variable.value)]
    assert not np.array_equal(before[0], before[1])
    callback = training.AverageBatchNormStatistics(strategy)
    callback.set_model(model)
    assert callback.average() == 2  # moving mean and variance of one layer
    for value in strategy.experimental_local_results(variable.value):
        np.testing.assert_allclose(value.numpy(), np.full(4, 2.0))


# --- the compound-scaling search ----------------------------------------------------------


def test_candidate_grid_keeps_the_flops_constraint():
    grid = training.candidate_grid(step=0.05, max_value=1.4)
    assert (1.2, 1.1, 1.15) in grid  # the paper's result lies on the 0.05 grid
    for alpha, beta, gamma in grid:
        assert min(alpha, beta, gamma) >= 1.0
        assert abs(alpha * beta**2 * gamma**2 - 2.0) <= 0.1 + 1e-9
    assert len(training.candidate_grid()) == 15  # the default 0.1 grid
    with pytest.raises(ValueError, match="no \\(alpha, beta, gamma\\) on a grid"):
        training.candidate_grid(step=0.2, max_value=1.4, tolerance=0.01)


def test_search_writes_the_table_and_reuses_a_finished_candidate(folder, tmp_path, capsys):
    """In process, one candidate, one step; the same search again trains nothing (two
    candidates, SIGKILLed between them, are the slow test below)."""
    config = training.SearchConfig(
        data=str(folder), out=str(tmp_path / "search"), base_phi=-4, image_size=32,
        candidates=[(1.4, 1.0, 1.2)], batch=8, steps_per_epoch=1, strategy="cpu",
        jit_compile=False, verbose=0)
    first = training.search(config)
    assert "[1/1] alpha=1.40 beta=1.00 gamma=1.20 (40 px): training" in capsys.readouterr().out
    out = tmp_path / "search"
    summary = out / "candidates" / "a1.40-b1.00-g1.20" / "summary.json"
    written = summary.stat().st_mtime_ns
    again = training.search(config)
    assert "[1/1] alpha=1.40 beta=1.00 gamma=1.20 (40 px): done before, reused" in \
        capsys.readouterr().out
    assert summary.stat().st_mtime_ns == written and again["candidates"] == first["candidates"]
    (row,) = first["candidates"]
    assert first["winner"] == row and row["params"] > 0 and 0 <= row["accuracy"] <= 1
    assert json.loads((out / "search.json").read_text())["candidates"] == [row]
    assert "| 1.40 | 1.00 | 1.20 |" in (out / "search.md").read_text()
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"


# about a minute (two candidates trained in two processes): make test-all
@pytest.mark.slow
def test_search_runs_killed_and_resumed(folder, tmp_path):
    """`keras-effnet search` over two candidates from a shrunk B0; SIGKILLed once the first is
    done, run again: the first is reused, the second trained, the table, JSON and plot
    written with params, MACs and accuracy per candidate."""
    out = tmp_path / "search"
    args = [sys.executable, "-m", "keras_effnet.cli", "search", "--data", str(folder),
            "--out", str(out), "--base_phi=-4", "--image_size", "32",
            "--candidates", "1.2:1.1:1.15,1.4:1.0:1.2", "--batch", "8",
            "--steps_per_epoch", "2", "--nojit_compile"]
    proc = subprocess.Popen(args, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "candidates" / "a1.20-b1.10-g1.15" / "summary.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not first.exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and first.exists()
    assert not (out / "search.json").exists()
    result = _cli(*args[3:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/2] alpha=1.20 beta=1.10 gamma=1.15 (36 px): done before, reused" in result.stdout
    assert "[2/2] alpha=1.40 beta=1.00 gamma=1.20 (40 px): training" in result.stdout
    report = json.loads((out / "search.json").read_text())
    rows = report["candidates"]
    assert [(r["alpha"], r["beta"], r["gamma"]) for r in rows] == [(1.2, 1.1, 1.15),
                                                                   (1.4, 1.0, 1.2)]
    for row, name in zip(rows, ("a1.20-b1.10-g1.15", "a1.40-b1.00-g1.20")):
        summary = json.loads((out / "candidates" / name / "summary.json").read_text())
        assert row["accuracy"] == summary["final_eval"]["accuracy"]
        hits = row["accuracy"] * 24  # scored on the folder's 24 readable photos
        assert abs(hits - round(hits)) < 1e-4, row["accuracy"]
        assert (row["params"], row["macs"]) == (summary["params"], summary["macs"])
    # deeper (alpha 1.4) and narrower (beta 1.0) than the paper's: fewer params
    assert rows[1]["params"] < rows[0]["params"]
    assert report["winner"] in rows and "winner" in (out / "search.md").read_text()
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 1.20 | 1.10 | 1.15 | 1.920 | 36 |" in result.stdout


def test_randaugment_changes_training_images_only(folder):
    found = training.scan_folder(folder)
    plain = next(iter(training.train_dataset(found, 32, batch=8, seed=3)))[0].numpy()
    augmented, labels = next(iter(training.train_dataset(found, 32, batch=8, seed=3,
                                                         randaugment=9)))
    augmented = augmented.numpy()
    assert augmented.shape == plain.shape and labels.shape == (8, 3)
    assert 0.0 <= augmented.min() and augmented.max() <= 255.0
    assert np.abs(augmented - plain).mean() > 1.0  # same crops (same seed), then augmented
    evaluated = next(iter(training.eval_dataset(found, 32, batch=8)))[0].numpy()
    again = next(iter(training.eval_dataset(found, 32, batch=8)))[0].numpy()
    np.testing.assert_array_equal(evaluated, again)  # evaluation is deterministic


def test_one_class_folder_is_refused(tmp_path, class_folder):
    import shutil

    shutil.copytree(class_folder / "cat", tmp_path / "only" / "cat")
    with pytest.raises(ValueError, match="has one class \\('cat'\\): a classifier needs at "
                                         "least 2 classes"):
        training.scan_folder(tmp_path / "only")


def test_training_pipeline_reads_photos_as_users_have_them(tmp_path, skimage_photos):
    """The folder pipeline decodes through keras_effnet.read_image: a sideways phone photo
    with its EXIF tag arrives upright, a 16-bit scan is not white."""
    from PIL import Image

    cat = skimage_photos["chelsea"]
    exif = Image.Exif()
    exif[0x0112] = 6
    for name in "abc":
        (tmp_path / name).mkdir()
    Image.fromarray(np.ascontiguousarray(np.rot90(cat))).save(tmp_path / "a" / "phone.png",
                                                              exif=exif.tobytes())
    Image.fromarray(cat).save(tmp_path / "b" / "upright.png")
    gray = cat.mean(axis=-1).round().astype(np.uint16) * 257
    Image.fromarray(gray).save(tmp_path / "c" / "scan.png")
    found = training.scan_folder(tmp_path)
    images = next(iter(training.eval_dataset(found, 64, batch=3)))[0].numpy()
    np.testing.assert_array_equal(images[0], images[1])  # the phone photo arrives upright
    assert 60 < images[2].mean() < 200  # was 255 everywhere: clipped


def test_base_phi_shrinks_the_baseline_resolution_too():
    from keras_effnet.training.search import SearchConfig, baseline_size

    # 224 x 1.15^-4 = 128.1: resolution follows depth and width down (paper coefficients)
    assert baseline_size(SearchConfig(data="d", out="o", base_phi=-4)) == 128
    assert baseline_size(SearchConfig(data="d", out="o")) == 224
    assert baseline_size(SearchConfig(data="d", out="o", base_phi=-4, image_size=64)) == 64


def _saved_state(directory, model):
    from keras_effnet.training import checkpoint

    meta = {"global_step": 3, "model_arrays": len(model.get_weights()),
            "optimizer_arrays": len(model.optimizer.variables)}
    return checkpoint.save_state(str(directory), model, meta)


@pytest.mark.parametrize("other", ["no_ema", "classes"])
def test_refused_checkpoint_leaves_the_model_untouched(tmp_path, other):
    """A checkpoint from another recipe (no EMA: fewer optimizer variables) or another
    head (4 classes) is refused before anything is assigned: the model keeps its weights."""
    from keras_effnet.training import checkpoint

    keras.utils.set_random_seed(0)
    saved = _tiny()
    recipe.compile_recipe(saved, 8, 10, ema=True)
    saved.optimizer.build(saved.trainable_variables)
    _saved_state(tmp_path, saved)
    keras.utils.set_random_seed(1)
    model = _tiny(classes=4 if other == "classes" else 3)
    recipe.compile_recipe(model, 8, 10, ema=other != "no_ema")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="different recipe|does not fit this model"):
        checkpoint.restore(str(tmp_path), model)
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_stale_partial_checkpoints_are_swept(tmp_path):
    model = _tiny()
    recipe.compile_recipe(model, 8, 10)
    model.optimizer.build(model.trainable_variables)
    stale = tmp_path / "state.npz.tmp-123"
    stale.write_bytes(b"half a checkpoint from a killed run")
    _saved_state(tmp_path, model)
    assert not stale.exists() and (tmp_path / "state.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


# make test-all; make test writes an export to ram:// (test_export_all_to_a_remote_folder)
@pytest.mark.slow
def test_train_writes_to_a_remote_path(folder):
    """--out through tf.io.gfile: TensorFlow's in-memory filesystem (ram://, in every
    build) stands in for gs://. The model, its class names, the summary and the
    checkpoint are all there and read back; nothing is written as a local file."""
    import uuid

    import tensorflow as tf

    from keras_effnet.saving import load_model

    out = f"ram://run-{uuid.uuid4().hex[:8]}"
    config = training.TrainConfig(data=str(folder), out=out, model="b0", phi=-4, image_size=32,
                                  batch=8, epochs=1, steps_per_epoch=2, weights=None,
                                  jit_compile=False, verbose=0)
    model, summary = training.train(config)
    assert summary["final_step"] == 2
    assert sorted(tf.io.gfile.listdir(out)) == ["checkpoints", "labels.txt", "logs",
                                                "model.keras", "summary.json"], \
        tf.io.gfile.listdir(out)
    saved = json.loads(tf.io.gfile.GFile(f"{out}/summary.json").read())
    assert saved["final_step"] == 2 and saved["model_path"] == f"{out}/model.keras"
    loaded = load_model(f"{out}/model.keras", compile=False)
    assert loaded.class_names == ("cat", "coffee", "rocket")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    assert not [p for p in tf.io.gfile.listdir(out) if ".partial-" in p]


def test_paper_run_with_validation_does_not_warn_of_running_out(folder, tmp_path):
    """Keras warned "Your input ran out of data; interrupting training" at the end of every
    run with a validation set (its size is learnt by running out; the final evaluate was
    outside the filter that fit had): the user did nothing wrong."""
    import warnings

    config = training.TrainConfig(data=str(folder), out=str(tmp_path / "run"), model="b0",
                                  phi=-4, image_size=32, batch=8, epochs=2, steps_per_epoch=2,
                                  val_split=0.25, weights=None, jit_compile=False, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, summary = training.train(config)
    assert summary["recipe"] == "paper" and "final_eval" in summary
    assert not [str(w.message) for w in caught if "ran out of data" in str(w.message)]
    # run again with other settings: refused, as the README says (it resumed silently on a
    # schedule of other epochs and learning rate)
    for change, message in (({"epochs": 3}, "epochs=2"), ({"learning_rate": 0.5},
                                                          "learning_rate=None")):
        with pytest.raises(ValueError, match=f"was written with {message}"):
            training.train(dataclasses.replace(config, **change))
