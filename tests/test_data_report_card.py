"""The Data Safety Report Card: score distributions and harmful-term rates before and after."""

import json

import pytest

from data_fakes import KeywordScorer, write_toy_corpus
from safejax.data.pipeline import PipelineConfig, run_loop
from safejax.data.report_card import build_report_card, write_report_card
from safejax.data.sources import SourceSpec
from safejax.safety.rubric import CATEGORY_NAMES


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("card")
  write_toy_corpus(root / "in" / "a.jsonl", n=24, broken=False)
  with (root / "in" / "a.jsonl").open("a") as f:  # documents with rubric terms
    f.write(json.dumps({"id": 100, "text": "they plan to attack and kill with a gun"}) + "\n")
    f.write(json.dumps({"id": 101, "text": "a threat: I will murder you, a scam and a bomb"}) + "\n")
  spec = SourceSpec(name="toy", pattern=str(root / "in" / "*.jsonl"), id_field="id")
  out = root / "out"
  run_loop(PipelineConfig(sources=[spec], output_dir=str(out), scorer=KeywordScorer(), num_shards=2))
  return out


def test_report_card_counts_and_rates(run_dir):
  card = build_report_card(str(run_dir), KeywordScorer())
  before = card["before"]
  assert before["documents"] == 26 and before["score_histogram"] == [4, 4, 4, 4, 5, 5]
  assert before["category_hits"]["violence"] == 2 and before["category_hits"]["weapons"] == 2
  assert before["category_hits_per_million"]["violence"] == pytest.approx(2e6 / before["tokens"])
  assert set(before["category_hits_per_million"]) == set(CATEGORY_NAMES)
  # Templates never use harm terms: all hits after the pipeline sit in the tagged raw copies.
  assert card["after_untagged"]["all_hits_per_million"] == 0
  assert card["streams"]["tagged"]["category_hits"]["violence"] == 2
  assert card["after"]["documents"] == sum(s["documents"] for s in card["streams"].values())
  assert sum(card["streams"]["moral_education"]["score_histogram"]) == card["streams"]["moral_education"]["documents"]


def test_report_card_without_a_scorer_and_files(run_dir):
  card = build_report_card(str(run_dir))
  assert card["after"]["score_histogram"] is None and card["before"]["score_histogram"] is not None
  json_path, png_path = write_report_card(str(run_dir), card)
  assert json.loads(open(json_path).read())["token_unit"] == "words"
  assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_large_streams_are_sampled_and_scaled(run_dir):
  full = build_report_card(str(run_dir), KeywordScorer())
  card = build_report_card(str(run_dir), KeywordScorer(), max_documents=10)
  raw = card["before"]
  assert raw["documents"] == 26 and 5 <= raw["sampled_documents"] <= 18
  assert abs(sum(raw["score_histogram"]) - 26) <= 1
  assert card["streams"]["keep"] == full["streams"]["keep"]  # 4 documents: not sampled
  assert 0.5 < raw["tokens"] / full["before"]["tokens"] < 2
