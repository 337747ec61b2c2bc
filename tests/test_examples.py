"""examples/: the notebooks run from top to bottom, offline, as a user would run them."""

import json
import os

import nbclient
import nbformat
import pytest
from conftest import REPO


def _run_notebook(name: str, env: dict, tmp_path, monkeypatch) -> tuple[str, dict]:
    """Execute examples/<name> top to bottom; (all text it printed, its last line's JSON).
    Fails when it drew no figure."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)  # left by tfmot in this process
    notebook = nbformat.read(REPO / "examples" / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure"
    text = "".join(output.get("text", "") for output in outputs)
    return text, json.loads(text.strip().splitlines()[-1])


def test_finetune_notebook_runs_and_learns(tmp_path, monkeypatch):
    """examples/finetune.ipynb on scikit-image photos with Lite0's real weights (smaller
    images and fewer epochs than its defaults, to keep the suite short): every cell runs,
    the fine-tuned model separates the three classes and reloads from .keras."""
    text, result = _run_notebook("finetune.ipynb", {"FINETUNE_IMAGE_SIZE": "128",
                                                    "FINETUNE_EPOCHS": "2"},
                                 tmp_path, monkeypatch)
    print(result)
    assert result["reloaded_matches"] and os.path.exists(result["saved"])
    assert result["val_accuracy"] >= 0.75  # chance is 1/3
    assert "36 photos, classes ('cat', 'coffee', 'rocket'): 27 to train on, 9 to validate" \
        in text


def test_android_notebook_names_the_users_classes_in_mediapipe(tmp_path, monkeypatch):
    """examples/android.ipynb: fine-tune Lite0, save with class names, export the android
    target, classify a held-out photo with MediaPipe: the name shown is the user's."""
    pytest.importorskip("mediapipe", reason="the android extra (MediaPipe) is not installed")
    _, result = _run_notebook("android.ipynb", {"ANDROID_IMAGE_SIZE": "128",
                                                "ANDROID_EPOCHS": "2"}, tmp_path, monkeypatch)
    print(result)
    names = ["cat", "espresso_cup", "rocket"]
    assert result["class_names"] == names and result["mediapipe_top1"] in names
    assert result["android_ready"] == {"uint8": True, "float16": True}
