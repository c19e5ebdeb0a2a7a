"""The quickstart notebook runs top to bottom (Fashion-MNIST found by conftest.py) in a fresh kernel.

The kernel is this interpreter (``sys.executable``, i.e. the venv's): a kernelspec written to a temporary
JUPYTER_PATH, so whichever "python3" kernelspecs the machine has installed do not matter.
"""

import json
import re
import sys
from pathlib import Path

import pytest

from helpers import fashion_mnist_dir, needs_fashion_mnist

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
DATA = fashion_mnist_dir()
KERNEL = "ssl-siamese-test"


def _stdout(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("output_type") == "stream")


@pytest.mark.slow
@needs_fashion_mnist
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ssl_siamese test kernel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("SSL_SIAMESE_FASHION_MNIST", str(DATA))
    monkeypatch.setenv("SSL_SIAMESE_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    assert (tmp_path / "out" / "backbone.pt").is_file()
    assert (tmp_path / "out" / "train_index.npz").is_file()
    text = _stdout(notebook)
    assert "ResNet loaded strictly; same features as load_backbone: True" in text, text
    probe = float(re.search(r"linear probe: top-1 ([0-9.]+)", text).group(1))
    one_shot = float(re.search(r"one-shot accuracy: ([0-9.]+)", text).group(1))
    five_shot = float(re.search(r"5-shot accuracy: ([0-9.]+)", text).group(1))
    print(f"\nnotebook: linear probe top-1 {probe:.3f}, 10-way one-shot {one_shot:.3f}, 5-shot {five_shot:.3f}")
    assert probe > 0.5 and one_shot > 0.15 and five_shot > 0.25, text
