"""Report writing: standard JSON, partial results, the files written."""

import json
import math

from safejax.evaluation import report


def test_json_has_no_nan(tmp_path):
  report.write_json({"precision": math.nan, "rows": [1.0, math.inf], "ok": 0.5}, tmp_path / "r.json")
  assert json.loads((tmp_path / "r.json").read_text()) == {"precision": None, "rows": [1.0, None], "ok": 0.5}


def test_capability_only_results_give_a_table_and_one_chart(tmp_path):
  capability = {"copa": {"n": 10, "acc": 0.6, "chance": 0.5}, "average": {"acc": 0.6, "chance": 0.5}}
  results = {"config": {"seed": 0}, "systems": {
      "a": {"label": "a", "model": "a", "stage": "base", "decoding": "plain", "prompt_style": "completion",
            "capability": capability}}}
  written = report.write_report(results, tmp_path)
  assert [p.name for p in written] == ["results.json", "report.md", "capability.png"]
  table = report.paper_table(results).splitlines()
  assert table == ["| model | decoding | capability acc % base (chance) |", "|---|---|---|", "| a | plain | 60.0 (50.0) |"]
  assert "| copa | 10 | 60.0 | - | 50.0 |" in (tmp_path / "report.md").read_text()
