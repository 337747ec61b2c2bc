"""Shared fixtures: real photos, the ../shared data folder, an isolated Keras cache."""

import os
import pathlib

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


def photo_batch(photos, size):
    import keras_effnet as ke

    return np.stack([ke.load_image(p, size) for p in photos.values()])
