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


def test_table_cells_are_escaped(tmp_path):
  import re

  rate = {"n": 4, "rate": 0.25, "low": 0.05, "high": 0.7}
  judge = {"overall": rate, "per_category": {"a|b\nc": rate}}
  safety = {"benchmarks": {"my|bench\nfile": {"n": 4, "judges": {"kw|1": judge}}}, "pooled": rate}
  results = {"config": {}, "systems": {"m|x": {
      "label": "m|x", "model": "model|one\ntwo", "stage": "base", "decoding": "beam|4", "prompt_style": "chat",
      "safety": safety, "over_refusal": {"benchmarks": {"x\r\n|y": {"judge": "kw|1", "overall": rate}}, "pooled": rate}}}}
  markdown = report.markdown_report(results)
  rows = [line for line in markdown.splitlines() if line.startswith("|")]
  unescaped = lambda line: len(re.findall(r"(?<!\\)\|", line))  # noqa: E731
  for table in ("| model | decoding |", "| benchmark | n |", "| category | n |", "| benchmark | judge |"):
    header = next(i for i, line in enumerate(rows) if line.startswith(table))
    widths = {unescaped(line) for line in rows[header:header + 3]}
    assert len(widths) == 1, rows[header:header + 3]  # header, rule and row split the same way
  assert "| model\\|one two | beam\\|4 |" in markdown and "| a\\|b c | 4 |" in markdown
  assert report.cell("a\\|b") == "a\\\\\\|b"
