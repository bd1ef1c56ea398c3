"""notebooks/search_videos.ipynb runs top to bottom in a kernel pinned to this virtualenv."""
import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "search_videos.ipynb"


def test_search_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    spec = tmp_path / "jupyter" / "kernels" / "lightning-frozen-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lightning-frozen (venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("LF_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("LF_CHECKPOINT", raising=False)
    monkeypatch.delenv("LF_VIDEOS", raising=False)
    (tmp_path / "work").mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, kernel_name="lightning-frozen-venv", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "index: 9 videos, 63 windows (flat)" in text
    tables = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    assert any(".mp4" in table and "score" in table for table in tables)
    assert any("image/jpeg" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "work" / "index" / "faiss.index").is_file()
