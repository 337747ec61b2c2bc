"""examples/: the notebooks run from top to bottom, offline, as a user would run them."""

import json
import math
import os

import nbclient
import nbformat
import pytest
from conftest import REPO, SHARED_DATA


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


def _photos() -> tuple[str | None, str]:
    """flowers-mini (200 real photos, 5 classes) next to a workplace checkout, else None:
    the notebooks then cut crops out of scikit-image photos."""
    mini = SHARED_DATA / "flowers-mini"
    return (str(mini), "flowers-mini") if mini.is_dir() else (None, "scikit-image crops")


def test_finetune_notebook_runs_and_learns(tmp_path, monkeypatch):
    """examples/finetune.ipynb as written (224 px, 10 epochs) on flowers-mini (160 photos
    to train, 40 held out) where it is, else on scikit-image crops: every cell runs, the
    first loss is ln(classes), the held-out accuracy is >= 85%, the model reloads from
    .keras, and its uint8 file scores within 5 points of it in MediaPipe."""
    data, name = _photos()
    env = {"FINETUNE_DATA": data} if data else {}
    text, result = _run_notebook("finetune.ipynb", env, tmp_path, monkeypatch)
    print(name, result)
    assert result["reloaded_matches"] and os.path.exists(result["saved"])
    classes = 5 if data else 3
    assert result["first_loss"] <= math.log(classes) + 0.1
    assert result["val_accuracy"] >= 0.85
    assert result["tflite_accuracy"] >= result["val_accuracy"] - 0.05
    if data:
        assert "200 photos, classes ('daisy', 'dandelion', 'roses', 'sunflowers', 'tulips'): " \
            "160 to train on, 40 held out" in text


def test_android_notebook_scores_the_users_classes_in_mediapipe(tmp_path, monkeypatch):
    """examples/android.ipynb as written on flowers-mini (else scikit-image crops): fine-tune
    Lite0, save with class names, export the android target, score the uint8 file in
    MediaPipe on the held-out photos: >= 85%, and the names shown are the user's."""
    pytest.importorskip("mediapipe", reason="the android extra (MediaPipe) is not installed")
    data, name = _photos()
    env = {"ANDROID_DATA": data} if data else {}
    _, result = _run_notebook("android.ipynb", env, tmp_path, monkeypatch)
    print(name, result)
    names = ["daisy", "dandelion", "roses", "sunflowers", "tulips"] if data else \
        ["cat", "espresso_cup", "rocket"]
    assert result["class_names"] == names and result["mediapipe_top1"] in names
    assert result["mediapipe_accuracy"] >= 0.85
    assert abs(result["mediapipe_accuracy"] - result["keras_accuracy"]) <= 0.05
    assert result["android_ready"] == {"uint8": True, "float16": True}


def _readme_block(containing: str) -> str:
    """The README's ```python block that contains `containing`."""
    text = (REPO / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"expected one README python block with {containing!r}"
    return found[0]


def test_readme_finetune_snippet_as_written(shared_data, capsys):
    """The README's fine-tune block on flowers-mini (its photos/ is that folder; nothing
    else changed): >= 85% on the 40 held-out photos, the first loss at ln(5)."""
    code = _readme_block("fit_transfer(")
    assert code.count('"photos/"') == 1
    namespace: dict = {}
    code = code.replace('"photos/"', repr(str(shared_data / "flowers-mini")))
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's code
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
    summary = namespace["summary"]
    print(accuracy, summary["history"]["loss"][0], summary["train_seconds"])
    assert len(namespace["val_set"]) == 40
    assert accuracy >= 0.85
    assert summary["history"]["loss"][0] <= math.log(5) + 0.1
