"""notebooks/evaluate.ipynb executed headless (nbclient) on a tiny checkpoint with the built-in benchmark."""

import base64
import json
import os
from pathlib import Path

import nbclient
import nbformat
import pytest

import tasks
from safejax import train
from safejax.model import ModelConfig

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "evaluate.ipynb"
TINY = ModelConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


def parameters_cell_index(nb: nbformat.NotebookNode) -> int:
  tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
  return tagged[0]


def inject_parameters(nb: nbformat.NotebookNode, values: dict) -> None:
  """papermill's layout: a cell tagged injected-parameters right after the parameters cell."""
  source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
  nb.cells.insert(parameters_cell_index(nb) + 1,
                  nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


def test_notebook_is_committed_clean():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code)
  # Every parameter the test sets exists in the parameters cell (an injected typo would go unnoticed).
  parameters = nb.cells[parameters_cell_index(nb)].source
  for name in ("MODEL_DIR", "DATA_DIR", "OUT_DIR", "N_PER_SET", "N_PER_TASK", "MAX_NEW_TOKENS", "BEAM_SIZE",
               "NUM_EXPAND", "BATCH_SIZE", "SCORE_MAX_LENGTH"):
    assert f"\n{name} = " in f"\n{parameters}", name


@pytest.fixture(scope="module")
def model_dir(tiny_corpus, tiny_vocab, tmp_path_factory) -> Path:
  """A checkpoint as `safejax train` writes it: 2 steps of a tiny decoder."""
  tasks.register_text_task("test_notebook_text", str(tiny_corpus), tiny_vocab.sentencepiece_model_file)
  path = tmp_path_factory.mktemp("notebook") / "tiny-model"
  train.train(model_dir=str(path), mixture_or_task_name="test_notebook_text", train_steps=2, batch_size=8,
              sequence_length=32, model_config=TINY, log_every=1, checkpoint_every=2, progress=False,
              async_checkpointing=False)
  return path


def test_notebook_runs_headless(model_dir, tmp_path, monkeypatch):
  # The kernel imports this checkout's safejax whatever the environment has installed.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  out = tmp_path / "report"
  nb = nbformat.read(NOTEBOOK, as_version=4)
  inject_parameters(nb, dict(MODEL_DIR=str(model_dir), DATA_DIR="", OUT_DIR=str(out), N_PER_SET=3, N_PER_TASK=None,
                             MAX_NEW_TOKENS=4, BEAM_SIZE=2, NUM_EXPAND=2, BATCH_SIZE=4, SCORE_MAX_LENGTH=64))
  client = nbclient.NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails

  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  results = json.loads((out / "results.json").read_text())
  assert list(results["systems"]) == ["tiny-model/beam", "tiny-model/SafeBeam"]
  for entry in results["systems"].values():
    assert entry["safety"]["pooled"]["n"] == 3  # N_PER_SET of the 6 built-in harmful prompts
    assert entry["safety"]["primary_judge"] == "keyword:builtin"
    assert entry["over_refusal"]["pooled"]["n"] == 3
    assert entry["capability"]["builtin_choice"]["n"] == 4
    assert entry["perplexity"]["n_docs"] == 3
  assert results["data"]["builtin_harmful"] == {"read": 6, "kept": 6, "rejected": 0, "rejected_by_reason": {},
                                                "excluded": 0, "excluded_by_reason": {}, "evaluated": 3}
  report_md = (out / "report.md").read_text()
  assert "| tiny-model | beam |" in report_md and "| tiny-model | SafeBeam |" in report_md
  for chart in ("safety.png", "capability.png"):
    assert (out / chart).read_bytes().startswith(b"\x89PNG")
  for label in ("tiny-model_beam", "tiny-model_SafeBeam"):
    assert len((out / "generations" / label / "builtin_harmful.jsonl").read_text().splitlines()) == 3

  # Shown in the notebook: both charts, the report's table and the replies side by side.
  displayed = [o for o in outputs if o.output_type == "display_data"]
  images = [base64.b64decode(o.data["image/png"]) for o in displayed if "image/png" in o.data]
  assert images == [(out / "safety.png").read_bytes(), (out / "capability.png").read_bytes()]
  markdown = [o.data["text/markdown"] for o in displayed if "text/markdown" in o.data]
  assert markdown[0] == report_md
  side_by_side = markdown[1].splitlines()
  assert side_by_side[:3] == ["**builtin_harmful**, judged by `keyword:builtin`", "",
                              "| prompt | tiny-model_SafeBeam | tiny-model_beam |"]
  assert len(side_by_side) == 7 and all(row.count("(attack ") == 2 for row in side_by_side[4:])  # 3 prompts
