"""benchmarks/accelerator_check.py, dry-run on CPU at the tiny shape: every section runs the code an
accelerator host would (train step on a data-parallel mesh, cached greedy, SafeBeam, beam search),
and reports figures, not errors or skips."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator_check.py"


def test_accelerator_check_dry_run_on_cpu(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("accelerator_check", SCRIPT)
  check = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(check)
  out = tmp_path / "check.json"
  report = check.main(["--tiny", "--decode_batches", "1", "--out", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  sections = {r["section"]: r for r in report["results"]}
  assert list(sections) == ["train tiny", "decode greedy batch 1", "decode safebeam batch 1", "decode beam batch 1"]
  problems = {name: r.get("error") or r.get("skipped") for name, r in sections.items() if "tokens_per_s" not in r}
  assert not problems, problems
  train = sections["train tiny"]
  assert train["batch_per_device"] * train["devices"] * train["length"] / train["step_s"] == train["tokens_per_s"]
  assert 0 < train["mfu"] and math.isfinite(train["loss"])
  assert all(r["tokens_per_s"] > 0 for r in sections.values())
  printed = capsys.readouterr().out
  assert "| tiny (xla attention) |" in printed and "SafeBeam / beam search tokens/s at batch 1" in printed


def test_sections_past_the_budget_are_reported_as_skipped():
  spec = importlib.util.spec_from_file_location("accelerator_check", SCRIPT)
  check = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(check)
  ran = []
  sections = [("first", lambda: ran.append(1) or {"tokens_per_s": 1.0}), ("second", lambda: 1 / 0)]
  results = check.run_sections(sections, check.Deadline(100.0), budget_each=1.0)
  assert results[0]["tokens_per_s"] == 1.0 and results[1]["error"].startswith("ZeroDivisionError")
  results = check.run_sections(sections, check.Deadline(0.5), budget_each=1.0)
  assert [r["skipped"] for r in results] == ["time budget: 0 s left"] * 2 and ran == [1]
