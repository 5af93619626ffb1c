"""The pipeline on samples of the real data in ../shared/data (skipped where it is absent).

Samples (the first rows of each file, in the original formats: gzipped jsonl and csv) are written
to a temporary folder. The fast test scores with a rubric-term stand-in; the slow tests train a
small real n-gram scorer (safejax.safety) on the labelled real data first.
"""

import csv
import gzip
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from safejax.data import manifest as manifest_lib, shards
from safejax.data.pipeline import PipelineConfig, run_beam
from safejax.data.sources import SourceSpec
from safejax.safety.rubric import category_term_hits
from safejax.vocab import HARM_TAG

IN_MEMORY = ["--direct_running_mode=in_memory"]


class TermScorer:
  """A stand-in scorer: 0 without rubric terms, 3 with one, 4 with two or more."""

  name = "terms"

  def score(self, texts):
    hits = [sum(category_term_hits(t).values()) for t in texts]
    return np.asarray([0 if h == 0 else 3 if h == 1 else 4 for h in hits], np.int32)


def _head(src: Path, dst: Path, n: int) -> None:
  """Copies the header (csv) and the first n rows of src to dst, keeping the format."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  if src.suffix == ".csv":
    with src.open(newline="", encoding="utf-8") as f, dst.open("w", newline="", encoding="utf-8") as g:
      reader = csv.reader(f)
      csv.writer(g).writerows(itertools.islice(reader, n + 1))
  else:
    with gzip.open(src, "rb") as f, gzip.open(dst, "wb") as g:
      g.writelines(itertools.islice(f, n))


@pytest.fixture(scope="module")
def real_sources(shared_data, tmp_path_factory) -> list[SourceSpec]:
  root = tmp_path_factory.mktemp("real")
  files = {
      "wikipedia": ("pretrain/wikipedia/wikipedia_kilt_subset.jsonl.gz", 12),
      "openai_moderation": ("classifier/openai_moderation/samples-1680.jsonl.gz", 120),
      "davidson": ("classifier/davidson_hate_offensive/labeled_data.csv", 120),
      "toxigen": ("classifier/toxigen_seed_statements/toxigen_seed_statements.csv", 60),
  }
  for name, (path, n) in files.items():
    _head(shared_data / path, root / name / Path(path).name, n)
  return [
      SourceSpec(name="wikipedia", pattern=str(root / "wikipedia/*.jsonl.gz"), id_field="id", keep_fields=("title",)),
      SourceSpec(name="openai_moderation", pattern=str(root / "openai_moderation/*.jsonl.gz"), text_field="prompt"),
      SourceSpec(name="davidson", pattern=str(root / "davidson/*.csv"), format="csv", text_field="tweet"),
      SourceSpec(name="toxigen", pattern=str(root / "toxigen/*.csv"), format="csv"),
  ]


def _stream(out: Path, stream: str) -> list[dict]:
  return list(shards.read_shards(manifest_lib.stream_files(str(out), stream)))


def test_real_formats_flow_through_and_balance(real_sources, tmp_path):
  manifest = run_beam(PipelineConfig(sources=real_sources, output_dir=str(tmp_path), scorer=TermScorer(),
                                     num_shards=2), IN_MEMORY)
  assert manifest["checks_hold"]
  assert {s: row["in"] for s, row in manifest["by_source"].items()} == {
      "wikipedia": 12, "openai_moderation": 120, "davidson": 120, "toxigen": 60}
  docs = manifest["documents"]
  assert docs["kept"] > 0 and docs["rephrased"] > 0 and docs["refused"] > 0
  assert manifest["tags"]["inserted"] > 0
  for stream in ("keep", "rephrase", "moral_education"):
    assert not any(HARM_TAG in r["text"] for r in _stream(tmp_path, stream)), stream
  titles = {r["meta"]["title"] for r in _stream(tmp_path, "raw") if r["source"] == "wikipedia"}
  assert len(titles) == 12


@pytest.fixture(scope="module")
def small_scorer(shared_data, tmp_path_factory) -> str:
  """A small n-gram scorer trained on the labelled real data (about a minute on 2 busy cores)."""
  from safejax.safety import labelled, ngram
  from safejax.safety.training import TrainConfig

  data = labelled.build_labelled(shared_data, labelled.LabelledConfig(max_per_source_score=400))
  texts, scores = labelled.texts_and_scores(data.splits["train"])
  scorer = ngram.train_ngram_scorer(texts, scores, ngram.NgramConfig(num_buckets=2**14, embed_dim=16, hidden_dim=32),
                                    TrainConfig(epochs=3, batch_size=64, learning_rate=0.01))
  path = tmp_path_factory.mktemp("scorer") / "ngram"
  scorer.save(path)
  return str(path)


def test_real_scorer_routes_real_data(real_sources, small_scorer, tmp_path):
  manifest = run_beam(PipelineConfig(sources=real_sources, output_dir=str(tmp_path), scorer=small_scorer,
                                     num_shards=2), IN_MEMORY)
  assert manifest["checks_hold"]
  by_source = manifest["by_source"]
  # Encyclopedia articles are mostly kept; offensive tweets mostly turned into refusals.
  assert by_source["wikipedia"]["kept"] >= 9
  assert by_source["davidson"]["refused"] + by_source["davidson"]["rephrased"] >= 80


@pytest.fixture(scope="module")
def production_scorer() -> str:
  """The project's trained scorer, named by $SAFEJAX_SCORER_DIR (`safejax classify train` writes it)."""
  path = os.environ.get("SAFEJAX_SCORER_DIR")
  if not path or not (Path(path) / "scorer.json").is_file():
    pytest.skip("set SAFEJAX_SCORER_DIR to a saved scorer (safejax classify train --gin_file=classify/ngram.gin)")
  return path


@pytest.mark.slow
def test_template_rewrites_of_real_unsafe_text_score_safe(real_sources, production_scorer, tmp_path):
  """The classifier scores template outputs made from real unsafe inputs as safe (score 0).

  Every moral-education article must score 0. Of the rephrasings, 95 % must: the n-gram scorer
  still flags a few short conversational sentences (podcast and dialogue styles) that carry no
  harm at all, because the conversational text of its training data comes from unsafe sources.
  """
  from safejax.safety import load_scorer

  run_beam(PipelineConfig(sources=real_sources, output_dir=str(tmp_path), scorer=production_scorer), IN_MEMORY)
  scorer = load_scorer(production_scorer)
  unsafe_sources = {r["id"] for r in _stream(tmp_path, "raw") if r["score"] >= 3}
  shares = {}
  for stream in ("rephrase", "moral_education"):
    records = [r for r in _stream(tmp_path, stream) if r["source_id"] in unsafe_sources]
    assert records, stream
    shares[stream] = float(np.mean(scorer.score([r["text"] for r in records]) == 0))
  assert shares["moral_education"] == 1.0 and shares["rephrase"] >= 0.95, shares
