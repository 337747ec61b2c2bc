"""examples/: the notebooks run from top to bottom, offline, as a user would run them."""

import json
import os

import nbclient
import nbformat
from conftest import REPO


def test_finetune_notebook_runs_and_learns(tmp_path, monkeypatch):
    """examples/finetune.ipynb on scikit-image photos with Lite0's real weights (smaller
    images and fewer epochs than its defaults, to keep the suite short): every cell runs,
    the fine-tuned model separates the three classes and reloads from .keras."""
    monkeypatch.setenv("FINETUNE_IMAGE_SIZE", "128")
    monkeypatch.setenv("FINETUNE_EPOCHS", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)  # left by tfmot in this process
    notebook = nbformat.read(REPO / "examples" / "finetune.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no plot drawn"
    text = "".join(output.get("text", "") for output in outputs)
    result = json.loads(text.strip().splitlines()[-1])
    print(result)
    assert result["reloaded_matches"] and os.path.exists(result["saved"])
    assert result["val_accuracy"] >= 0.75  # chance is 1/3
    assert "36 photos, classes ('cat', 'coffee', 'rocket'): 27 to train on, 9 to validate" \
        in text
