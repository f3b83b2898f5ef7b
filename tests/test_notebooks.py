"""Every notebook in notebooks/ runs top to bottom on a fresh kernel (so none of them rots).

Each is executed with nbclient in a temporary working directory, with the repository's own Python
(the `python3` kernel resolves to the interpreter running the tests) and a headless matplotlib;
the outputs stay in memory: the committed notebooks have none.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
TIMEOUT_SECONDS = 180  # per cell; each notebook is meant to finish within 3 minutes on 2 cores


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits it: no display needed
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' work folders (tempfile.mkdtemp) go with the test's
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), f"{path.name}: commit it without outputs"
    client = NotebookClient(notebook, timeout=TIMEOUT_SECONDS, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [out for cell in notebook.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors


def test_notebooks_are_found():
    assert any(p.name == "02_rnn_fundamentals.ipynb" for p in NOTEBOOKS)
