"""Grad-CAM: the heatmap finds the cat, works nested, agrees across backends."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO
from PIL import Image

import keras_effnet as ke


@pytest.fixture(scope="module")
def lite0():
    return ke.build("lite0", weights="imagenet")


@pytest.fixture(scope="module")
def chelsea_stretched(skimage_photos):
    """The whole of chelsea (451x300) squeezed to 224x224, background included:
    the cat fills the left three quarters, the right quarter is a blurred room."""
    picture = Image.fromarray(skimage_photos["chelsea"]).resize((224, 224), Image.BICUBIC)
    return np.asarray(picture, dtype="float32")


def test_heatmap_peak_lies_on_the_cat(lite0, chelsea_stretched):
    heat, info = ke.cam(lite0, chelsea_stretched, return_info=True)
    assert heat.shape == (224, 224) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    assert info["layer"] == "top_activation"
    name = ke.imagenet_classes()[info["class_index"]][1]
    assert name in ("tiger_cat", "tabby", "Egyptian_cat"), name
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    # the cat's head in the squeezed photo: x 15-185 (of 451 px: 30-370), every row
    assert 15 <= col <= 185, (row, col)
    # and the heat is on the cat, not spread evenly: the background strip is cooler
    assert heat[:, 190:].mean() < 0.5 * heat[:, 15:185].mean()


def test_other_class_gives_other_map(lite0, chelsea_stretched):
    top = ke.cam(lite0, chelsea_stretched)
    espresso = ke.cam(lite0, chelsea_stretched, class_index=967)
    assert np.abs(top - espresso).max() > 0.2


def test_nested_in_user_models_same_map(lite0, chelsea_stretched):
    plain = ke.cam(lite0, chelsea_stretched)
    inputs = keras.Input((224, 224, 3))
    functional = keras.Model(inputs, lite0(inputs))
    sequential = keras.Sequential([keras.Input((224, 224, 3)), lite0])
    for wrapper in (functional, sequential):
        np.testing.assert_allclose(ke.cam(wrapper, chelsea_stretched), plain, atol=1e-5)


def test_fine_tuned_head_on_a_headless_backbone(chelsea_stretched):
    # the upstream complaint: the backbone is one layer of the user's model, and its
    # own input size is None x None
    keras.utils.set_random_seed(0)
    base = ke.build("lite0", weights="imagenet", include_top=False)
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    outputs = keras.layers.Dense(3, activation="softmax", name="my_head")(x)
    model = keras.Model(inputs, outputs)
    heat, info = ke.cam(model, chelsea_stretched, class_index=2, return_info=True)
    assert heat.shape == (224, 224) and np.isfinite(heat).all()
    assert info["class_index"] == 2 and 0.0 < info["score"] < 1.0


def test_bad_input(lite0):
    with pytest.raises(ValueError, match="outside the model's 1000 outputs"):
        ke.cam(lite0, np.zeros((224, 224, 3)), class_index=1000)
    with pytest.raises(ValueError, match="HxWx3"):
        ke.cam(lite0, np.zeros((224, 300, 2)))
    with pytest.raises(ValueError, match="fixed image input"):
        ke.cam(ke.build("lite0", weights=None, include_top=False), np.zeros((224, 224, 3)))
    with pytest.raises(ValueError, match="no image file"):
        ke.cam(lite0, "/nonexistent/cat.jpg")


# building under JAX compiles every initializer shape (half a minute): make test-all;
# make test runs the builder under JAX (test_builder.py)
@pytest.mark.slow
def test_same_map_under_jax_backend(tmp_path):
    pytest.importorskip("jax")
    keras.utils.set_random_seed(3)
    model = ke.EfficientNet(phi=-4, weights=None, input_shape=(64, 64, 3), classes=5)
    weights = tmp_path / "tiny.weights.h5"
    model.save_weights(weights)
    image = np.random.default_rng(3).uniform(0, 255, (64, 64, 3)).astype("float32")
    np.save(tmp_path / "image.npy", image)
    expected = ke.cam(model, image, class_index=1)
    script = (
        "import json, sys, numpy as np, keras, keras_effnet as ke\n"
        "m = ke.EfficientNet(phi=-4, weights=None, input_shape=(64, 64, 3), classes=5)\n"
        "m.load_weights(sys.argv[1])\n"
        "h = ke.cam(m, np.load(sys.argv[2]), class_index=1)\n"
        "np.save(sys.argv[3], h)\n"
        "print(json.dumps({'backend': keras.backend.backend()}))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script, str(weights), str(tmp_path / "image.npy"),
                          str(tmp_path / "jax.npy")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["backend"] == "jax"
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), expected, atol=1e-3)


def test_cli_writes_png(tmp_path):
    target = tmp_path / "cam.png"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "cam", "chelsea", "--model",
                          "lite0", "--out", str(target)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EfficientNetLite0: tiger_cat (0.385)" in out.stdout
    with Image.open(target) as png:
        assert png.format == "PNG" and png.size[0] >= 300
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    bad = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "cam", "nope.jpg", "--out",
                          str(tmp_path / "x.png")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    # a photo that cannot be read is exit 1 (keras_effnet.ImageReadError), like a bad download
    assert bad.returncode == 1 and "no image file at 'nope.jpg'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.png").exists()
