"""Shared fixtures: real photos, the ../shared data folder, an isolated Keras cache."""

import os
import pathlib
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _two_logical_cpus():
    """MirroredStrategy tests need 2 CPU devices, which must be made before TF starts."""
    try:
        from keras_effnet.training import split_cpu
    except ImportError:
        return
    split_cpu(2)


_two_logical_cpus()
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_keras_home(tmp_path_factory):
    """Keep tests away from the user's ~/.keras: downloads and caches go to a temp dir."""
    home = tmp_path_factory.mktemp("keras_home")
    old = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("KERAS_HOME", None)
    else:
        os.environ["KERAS_HOME"] = old


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a fresh clone has no ../shared): skipping")
    return SHARED_DATA


@pytest.fixture(scope="session")
def skimage_photos():
    """scikit-image's chelsea (a cat) and coffee (espresso): shipped in its wheel."""
    data = pytest.importorskip("skimage.data")
    return {"chelsea": data.chelsea(), "coffee": data.coffee()}


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory, skimage_photos):
    """A training folder: 3 classes (cat, coffee, rocket) x 8 crops of scikit-image
    photos, plus one fake and one empty image."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sources = {"cat": skimage_photos["chelsea"], "coffee": skimage_photos["coffee"],
               "rocket": skimage.data.rocket()}
    for name, image in sources.items():
        (root / name).mkdir()
        height, width, _ = image.shape
        for i in range(8):
            side = int(rng.integers(min(height, width) // 2, min(height, width)))
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crop = image[top:top + side, left:left + side]
            Image.fromarray(crop).resize((48, 48)).save(root / name / f"{i}.jpg")
    (root / "cat" / "notes.jpg").write_bytes(b"this is text, not a JPEG")
    (root / "coffee" / "empty.png").write_bytes(b"")
    return root


def photo_model(size: int = 64, classes: int = 10, base: str = "b0"):
    """A few-block SE model whose BatchNorm statistics come from real photos, so its
    activations have realistic ranges for calibration. Seeded: the random weights
    decide how far float rounding spreads, so tests must not change from run to run."""
    import keras

    import keras_effnet as ke
    from keras_effnet import export as kx

    keras.utils.set_random_seed(0)
    model = ke.EfficientNet(phi=-4, base=base, weights=None, input_shape=(size, size, 3),
                            classes=classes, drop_connect_rate=0.0, dropout_rate=0.0)
    photos = kx.calibration_views(kx.bundled_photos()[0], size, 32, seed=3)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(photos, training=True)
    for layer in bns:
        layer.momentum = 0.99
    return model


def photo_batch(photos, size):
    import keras_effnet as ke

    return np.stack([ke.load_image(p, size) for p in photos.values()])


def assert_loads_in_plain_keras(path, model, tmp_path) -> None:
    """`path` loads in a fresh interpreter that never imports keras_effnet, and computes
    what `model` (loaded through keras_effnet: our layers, the class names) computes."""
    from keras_effnet.layers import BatchNormalization

    assert isinstance(model.get_layer("stem_bn"), BatchNormalization)  # ours, back in
    images = np.random.default_rng(0).uniform(0, 255, (4, *model.input_shape[1:])).astype(
        np.float32)
    np.save(tmp_path / "images.npy", images)
    code = textwrap.dedent(f"""
        import sys
        import keras, numpy as np
        model = keras.saving.load_model({str(path)!r})
        assert not [m for m in sys.modules if m.startswith("keras_effnet")]
        np.save({str(tmp_path / "plain.npy")!r},
                model.predict(np.load({str(tmp_path / "images.npy")!r}), verbose=0))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=""))
    assert result.returncode == 0, result.stderr[-3000:]
    plain = np.load(tmp_path / "plain.npy")
    np.testing.assert_allclose(plain, model.predict(images, verbose=0), atol=1e-5, rtol=0)

