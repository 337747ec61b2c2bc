import hashlib
import json

import numpy as np
import pytest
from conftest import REPO

import keras_effnet as ke

PAPER_MACS = {"b0": 0.39e9, "b1": 0.70e9, "b2": 1.0e9, "b3": 1.8e9, "b4": 4.2e9, "b5": 9.9e9,
              "b6": 19e9, "b7": 37e9}  # paper Table 2 FLOPs (multiply-adds)
LITE_MACS = {"lite0": 407e6, "lite1": 631e6, "lite2": 899e6, "lite3": 1.44e9,
             "lite4": 2.64e9}  # tensorflow/tpu lite README "MAdds"


@pytest.mark.parametrize("variant", list(PAPER_MACS))
def test_macs_within_5_percent_of_paper(variant):
    report = ke.profile(ke.build(variant, weights=None))
    assert report.macs == pytest.approx(PAPER_MACS[variant], rel=0.05)
    assert report.params == sum(r.params for r in report.layers)
    assert report.macs == sum(r.macs for r in report.layers)


@pytest.mark.parametrize("variant", list(LITE_MACS))
def test_lite_macs_near_tpu_readme(variant):
    # the README's counts run 3-6% above a conv+dense count; "near" means within 7%
    assert ke.profile(ke.build(variant, weights=None)).macs == pytest.approx(
        LITE_MACS[variant], rel=0.07)


def test_profile_per_layer_facts():
    report = ke.profile(ke.EfficientNetB0(weights=None))
    rows = {r.name: r for r in report.layers}
    assert rows["stem_conv"].macs == 112 * 112 * 3 * 3 * 3 * 32
    assert rows["block1a_dwconv"].macs == 112 * 112 * 3 * 3 * 32
    assert rows["predictions"].macs == 1280 * 1000 and rows["predictions"].params == 1281000
    assert report.params == 5_330_571 and report.trainable_params < report.params


def test_profile_needs_fixed_input():
    with pytest.raises(ValueError, match="fixed input size"):
        ke.profile(ke.EfficientNetB0(weights=None, include_top=False))


def test_class_index_is_keras_file():
    path = REPO / "keras_effnet" / "data" / "imagenet_class_index.json"
    assert hashlib.md5(path.read_bytes()).hexdigest() == "c2c37ea517e94d9795004a39431a14cb"
    classes = ke.imagenet_classes()
    assert len(classes) == 1000 and classes[967] == ("n07920052", "espresso")
    assert json.loads(path.read_text())["282"] == ["n02123159", "tiger_cat"]


def test_decode_predictions():
    preds = np.zeros((2, 1000), "float32")
    preds[0, 282], preds[0, 281], preds[1, 967] = 0.7, 0.2, 0.9
    top = ke.decode_predictions(preds, top=2)
    assert top[0] == [("n02123159", "tiger_cat", pytest.approx(0.7)),
                      ("n02123045", "tabby", pytest.approx(0.2))]
    assert top[1][0][1] == "espresso"
    with pytest.raises(ValueError, match=r"\(N, 1000\)"):
        ke.decode_predictions(np.zeros((2, 10)))


def test_load_image_centre_crop(tmp_path, skimage_photos):
    from PIL import Image

    cat = skimage_photos["chelsea"]  # 300 x 451
    x = ke.load_image(cat, 224)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    path = tmp_path / "cat.png"
    Image.fromarray(cat).save(path)
    np.testing.assert_array_equal(ke.load_image(str(path), 224), x)
    whole = ke.load_image(cat, 64, crop_padding=0)
    assert whole.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="no image file"):
        ke.load_image(str(tmp_path / "missing.jpg"), 224)
    with pytest.raises(ValueError, match="HxWx3"):
        ke.load_image(np.zeros((5, 5, 2)), 224)
    assert ke.load_image(np.zeros((5, 5)), 8).shape == (8, 8, 3)  # grayscale is an image too


def test_preprocess_input_variants():
    x = np.full((1, 2, 2, 3), 255.0)
    np.testing.assert_allclose(ke.preprocess_input(x, variant="lite0"), (255 - 127) / 128,
                               rtol=1e-6)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(ke.preprocess_input(x, variant="b0")[0, 0, 0], (1 - mean) / std,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="channels_last"):
        ke.preprocess_input(x, data_format="channels_first")


# --- photos as users have them (issue 15, item 2) ---------------------------------------------

def _save(array, path, **kwargs):
    from PIL import Image

    Image.fromarray(array).save(path, **kwargs)
    return path


def _orientation(value: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif.tobytes()


def test_exif_orientation_is_applied(tmp_path, skimage_photos):
    """A phone stores the pixels sideways plus a tag: the loader shows the photo upright.
    PNG keeps it lossless, so upright means equal."""
    cat = skimage_photos["chelsea"]
    sideways = np.rot90(cat, k=1)  # pixels as stored; tag 6 says "turn 90 degrees clockwise"
    path = _save(np.ascontiguousarray(sideways), tmp_path / "phone.png", exif=_orientation(6))
    np.testing.assert_array_equal(ke.read_image(path), cat)
    np.testing.assert_array_equal(ke.load_image(path, 64), ke.load_image(cat, 64))
    jpeg = _save(np.ascontiguousarray(sideways), tmp_path / "phone.jpg", exif=_orientation(6),
                 quality=95)
    assert ke.read_image(jpeg).shape == cat.shape
    assert np.abs(ke.read_image(jpeg).astype(int) - cat).mean() < 3


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path, skimage_photos):
    gray = np.asarray(skimage_photos["chelsea"]).mean(axis=-1).round().astype(np.uint8)
    path = _save(gray.astype(np.uint16) * 257, tmp_path / "scan16.png")
    loaded = ke.read_image(path)
    assert loaded.shape == gray.shape + (3,) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], gray)  # was all 255: clipped to white
    np.testing.assert_array_equal(ke.read_image(gray), np.repeat(gray[..., None], 3, -1))
    from PIL import Image

    Image.fromarray(gray.astype(np.float32) / 255.0, mode="F").save(tmp_path / "f.tiff")
    assert np.abs(ke.read_image(tmp_path / "f.tiff")[..., 0].astype(int) - gray).max() <= 1


def test_transparency_palette_and_cmyk(tmp_path, skimage_photos):
    from PIL import Image

    cat = skimage_photos["chelsea"]
    rgba = np.dstack([cat, np.full(cat.shape[:2], 255, np.uint8)])
    rgba[:40, :, 3] = 0  # a transparent band: white, as a viewer shows it
    loaded = ke.read_image(_save(rgba, tmp_path / "alpha.png"))
    assert (loaded[:40] == 255).all() and np.array_equal(loaded[40:], cat[40:])
    Image.fromarray(cat).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(cat).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    # PIL's default palette is the 216-colour web palette: close, not equal
    for name, error in (("palette.png", 20), ("cmyk.jpg", 12)):
        image = ke.read_image(tmp_path / name)
        assert image.shape == cat.shape and np.abs(image.astype(int) - cat).mean() < error, name


def test_unreadable_and_oversized_images_are_one_clear_error(tmp_path):
    from PIL import Image

    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 M pixels, 50 kB
    with pytest.raises(ke.ImageReadError, match="too large to open safely"):
        ke.read_image(tmp_path / "bomb.png")
    (tmp_path / "notes.jpg").write_text("not a photo")
    with pytest.raises(ValueError, match="could not read .*notes.jpg.* as an image"):
        ke.load_image(tmp_path / "notes.jpg", 32)
    with pytest.raises(ke.ImageReadError, match="expected an HxW, HxWx3 or HxWx4"):
        ke.read_image(np.zeros((4, 4, 2)))
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "keras_effnet.cli", "classify",
                             str(tmp_path / "bomb.png")], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "keras-effnet classify: error: ") and "too large to open safely" in result.stderr
