"""Benchmark loaders: exact row counts on the real files, bad rows set aside with reasons."""

import collections
import json

import pytest

from safejax.evaluation import prompt_sets
from safejax.vocab import HARM_TAG


def test_advbench_real(shared_data):
  b = prompt_sets.load_benchmark("advbench", shared_data)
  assert len(b.records) == 520 and not b.rejected
  r = b.records[0]
  assert r.is_harmful and r.source == "advbench" and r.id == "advbench-0"
  assert r.target.startswith("Sure, here is")


def test_harmbench_real(shared_data):
  path = shared_data / "safety_prompts/harmbench/harmbench_behaviors_text_all.csv"
  targets = shared_data / "safety_prompts/harmbench/harmbench_targets_text.json"
  everything = prompt_sets.load_harmbench(path, targets, functional_categories=("standard", "contextual", "copyright"))
  assert len(everything.records) == 400 and not everything.rejected
  assert all(r.target for r in everything.records)
  default = prompt_sets.load_benchmark("harmbench", shared_data)
  counts = default.counts()
  assert (counts["read"], counts["kept"], counts["excluded"]) == (400, 300, 100)
  assert counts["excluded_by_reason"] == {"FunctionalCategory=copyright": 100}
  categories = collections.Counter(r.category for r in default.records)
  assert "copyright" not in categories and sum(categories.values()) == 300
  contextual = [r for r in default.records if r.metadata["functional_category"] == "contextual"]
  assert len(contextual) == 100 and all(r.prompt.endswith(r.metadata["behavior"]) for r in contextual)
  test_split = prompt_sets.load_harmbench(shared_data / "safety_prompts/harmbench/harmbench_behaviors_text_test.csv",
                                         functional_categories=("standard",))
  assert len(test_split.records) == 159


def test_jbb_real(shared_data):
  harmful = prompt_sets.load_benchmark("jbb_harmful", shared_data)
  benign = prompt_sets.load_benchmark("jbb_benign", shared_data)
  assert len(harmful.records) == 100 and len(benign.records) == 100
  assert all(r.is_harmful for r in harmful.records) and not any(r.is_harmful for r in benign.records)
  assert set(collections.Counter(r.category for r in harmful.records).values()) == {10}
  # Benign twins share index and category with their harmful behaviour.
  assert [r.category for r in harmful.records] == [r.category for r in benign.records]


def test_xstest_real(shared_data):
  safe = prompt_sets.load_benchmark("xstest_safe", shared_data)
  unsafe = prompt_sets.load_benchmark("xstest_unsafe", shared_data)
  assert len(safe.records) == 250 and len(unsafe.records) == 200
  assert safe.counts()["excluded"] == 200 and unsafe.counts()["excluded"] == 250
  assert all(r.category.startswith("contrast_") for r in unsafe.records)
  assert not any(r.is_harmful for r in safe.records) and all(r.target is None for r in safe.records)


def test_unknown_benchmark_names_the_known_ones(tmp_path):
  with pytest.raises(KeyError, match="advbench"):
    prompt_sets.load_benchmark("nope", tmp_path)


def test_csv_bad_rows_are_set_aside_with_reasons(tmp_path):
  path = tmp_path / "prompts.csv"
  path.write_text(
      "id,prompt,category,harmful\n"
      "a,Describe how tides work,science,no\n"
      "b,   ,science,no\n"                      # empty prompt
      "a,Explain photosynthesis,science,no\n"   # duplicate id
      f"c,Explain{HARM_TAG} rain,science,no\n"  # smuggled reserved token
      "d,Summarise a news story,news\n"         # short row
      "e,Write a scam email,fraud,maybe\n"      # unreadable flag
      "f,Write a scam email,fraud,yes\n")
  b = prompt_sets.load_table(path, name="mine", prompt_column="prompt", id_column="id",
                            category_column="category", harmful_column="harmful")
  assert [r.id for r in b.records] == ["a", "f"]
  assert [r.is_harmful for r in b.records] == [False, True]
  counts = b.counts()
  assert counts["read"] == 7 and counts["kept"] == 2 and counts["rejected"] == 5
  assert counts["rejected_by_reason"] == {
      "empty prompt": 1, "duplicate id": 1, "contains a reserved token string": 1,
      "fewer fields than the header": 1, "unreadable harmful value 'maybe'": 1}
  assert [r.row for r in b.rejected] == [2, 3, 4, 5, 6]
  with pytest.raises(prompt_sets.BadRowError, match="row 2: empty prompt"):
    prompt_sets.load_table(path, name="mine", prompt_column="prompt", id_column="id", strict=True)


def test_jsonl_bad_lines_and_missing_columns(tmp_path):
  path = tmp_path / "prompts.jsonl"
  path.write_text("\n".join([json.dumps({"text": "How do volcanoes form?", "topic": "geo"}),
                             "{not json", json.dumps(["a list"]), "",
                             json.dumps({"text": "Why is the sky blue?", "topic": "physics"})]) + "\n")
  b = prompt_sets.load_table(path, name="q", prompt_column="text", category_column="topic", is_harmful=False)
  assert [r.prompt for r in b.records] == ["How do volcanoes form?", "Why is the sky blue?"]
  assert [r.id for r in b.records] == ["q-0", "q-4"] and [r.category for r in b.records] == ["geo", "physics"]
  assert sorted(r.reason for r in b.rejected) == [
      "JSON line is not an object", "invalid JSON: Expecting property name enclosed in double quotes"]
  with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt'\]"):
    prompt_sets.load_table(path, name="q", prompt_column="prompt")
  with pytest.raises(ValueError, match="unknown table format"):
    prompt_sets.load_table(tmp_path / "x.parquet", name="q", prompt_column="text")


def test_subsample_is_seeded_ordered_and_bounded():
  items = list(range(100))
  a, b = prompt_sets.subsample(items, 10, seed=1), prompt_sets.subsample(items, 10, seed=1)
  assert a == b and a == sorted(a) and len(set(a)) == 10
  assert prompt_sets.subsample(items, 10, seed=2) != a
  assert prompt_sets.subsample(items, None, seed=0) == items == prompt_sets.subsample(items, 1000, seed=0)
