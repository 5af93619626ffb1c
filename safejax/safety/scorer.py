"""The interface every safety scorer implements, windowing, the max-ensemble and loading.

A scorer maps texts to the 0..5 rubric (`safejax.safety.rubric`):

  score_probs(texts) -> float32 [n, 6]   a probability row per document
  score(texts)       -> int32   [n]      the document's score, 0..5

For every scorer here `score(texts) == decide(score_probs(texts))` (argmax), so the two never
disagree. Model scorers see only a bounded input (the n-gram model a number of words, the encoder
a number of word pieces): `WindowedScorer` cuts each document into windows of the scorer's own
units, scores all windows of a batch together and keeps, per document, the window with the highest
score (ties broken by the highest expected score sum_k k * p_k). The document's score is therefore
the max over its windows, as in the paper, and its probability row is that window's row.

`MaxEnsemble` combines any scorers the same way (the paper's recall-first choice): the document's
score is the max of the members' scores and its probabilities those of the member that gave it.

Saved scorers are directories holding `scorer.json` ({"kind": ..., "config": {...}}) and
safetensors weights; `load_scorer(path)` reads any kind. Nothing is pickled.
"""

from __future__ import annotations

import abc
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from safejax.safety.rubric import NUM_LEVELS

SCORER_JSON = "scorer.json"
FORMAT_VERSION = 1

# kind -> "module:Class" with a `load(path) -> Scorer` classmethod; imported lazily.
SCORER_KINDS: dict[str, str] = {
    "ngram": "safejax.safety.ngram:NgramScorer",
    "encoder": "safejax.safety.encoder:EncoderScorer",
    "max_ensemble": "safejax.safety.scorer:MaxEnsemble",
}


@runtime_checkable
class Scorer(Protocol):
  """What the pipeline, the metrics and the ensemble need from a scorer."""

  name: str

  def score_probs(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), 6]: rows sum to 1."""

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """int32 [len(texts)] in 0..5."""


def decide(probs: np.ndarray) -> np.ndarray:
  """The score a probability row stands for: argmax. [..., 6] -> int32 [...]."""
  return np.argmax(probs, axis=-1).astype(np.int32)


def expected_score(probs: np.ndarray) -> np.ndarray:
  """sum_k k * p_k. [..., 6] -> float32 [...]."""
  return (probs @ np.arange(NUM_LEVELS, dtype=np.float32)).astype(np.float32)


def _rank_key(probs: np.ndarray) -> np.ndarray:
  """Orders rows by (decided score, expected score): [..., 6] -> float64 [...]."""
  return decide(probs) * float(NUM_LEVELS) + expected_score(probs)  # expected score < 6


def max_over_windows(window_probs: np.ndarray, doc_index: np.ndarray, num_docs: int) -> np.ndarray:
  """Per document, the probability row of its highest-ranked window.

  Args:
    window_probs: float [m, 6], one row per window.
    doc_index: int [m], the document of each window; every document in 0..num_docs-1 must appear.
    num_docs: n.
  Returns:
    float32 [n, 6].
  """
  if np.bincount(doc_index, minlength=num_docs).min(initial=1) == 0:
    raise ValueError("every document needs at least one window")
  order = np.lexsort((_rank_key(window_probs), doc_index))  # by document, then rank ascending
  last_of_doc = np.flatnonzero(np.r_[doc_index[order][1:] != doc_index[order][:-1], True])
  return window_probs[order[last_of_doc]].astype(np.float32)


class WindowedScorer(abc.ABC):
  """Base class for model scorers: subclasses say how to cut windows and how to score them."""

  name: str = "windowed"
  batch_size: int = 256  # windows per model call

  @abc.abstractmethod
  def windows(self, text: str) -> list[Any]:
    """Cuts one document into at least one window of the scorer's units (each has a len())."""

  @abc.abstractmethod
  def window_probs(self, windows: Sequence[Any]) -> Any:
    """float32 [len(windows), 6] for at most `batch_size` windows (a numpy or JAX array)."""

  def score_probs(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("score_probs takes a sequence of texts, not one string")
    all_windows, doc_index = [], []
    for i, text in enumerate(texts):
      ws = self.windows(text)
      all_windows.extend(ws)
      doc_index.extend([i] * len(ws))
    if not all_windows:
      return np.zeros((0, NUM_LEVELS), np.float32)
    # Batches of similar-sized windows waste less padding; rows go back to window order after.
    order = np.argsort([len(w) for w in all_windows], kind="stable")
    batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
    # window_probs may return device arrays still being computed: collect first, convert after.
    results = [self.window_probs([all_windows[i] for i in batch])
               for batch in tqdm(batches, desc=f"score ({self.name})", unit="batch", leave=False,
                                 disable=len(batches) < 8)]
    probs = np.zeros((len(all_windows), NUM_LEVELS), np.float32)
    for batch, result in zip(batches, results):
      probs[batch] = np.asarray(result)
    return max_over_windows(probs, np.asarray(doc_index), len(texts))

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return decide(self.score_probs(texts))


class MaxEnsemble:
  """Max of any scorers: score = max of the members' scores (recall first)."""

  def __init__(self, scorers: Sequence[Scorer]):
    if not scorers:
      raise ValueError("MaxEnsemble needs at least one scorer")
    self.scorers = list(scorers)
    self.name = "max(" + ", ".join(s.name for s in self.scorers) + ")"

  def score_probs(self, texts: Sequence[str]) -> np.ndarray:
    member_probs = np.stack([s.score_probs(texts) for s in self.scorers])  # [k, n, 6]
    best = np.argmax(_rank_key(member_probs), axis=0)  # [n]
    return member_probs[best, np.arange(member_probs.shape[1])].astype(np.float32)

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return decide(self.score_probs(texts))

  def save(self, path: str | Path) -> None:
    """Saves each member under path/members/<i> (members must have `save`)."""
    path = Path(path)
    for i, s in enumerate(self.scorers):
      if not hasattr(s, "save"):
        raise TypeError(f"ensemble member {s.name!r} cannot be saved")
      s.save(path / "members" / str(i))
    write_scorer_json(path, "max_ensemble", {"members": [f"members/{i}" for i in range(len(self.scorers))]})

  @classmethod
  def load(cls, path: str | Path) -> "MaxEnsemble":
    path = Path(path)
    config = read_scorer_json(path, "max_ensemble")
    return cls([load_scorer(path / member) for member in config["members"]])


def write_scorer_json(path: str | Path, kind: str, config: dict) -> None:
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / SCORER_JSON).write_text(json.dumps(
      {"kind": kind, "format_version": FORMAT_VERSION, "config": config}, indent=2, sort_keys=True))


def read_scorer_json(path: str | Path, kind: str | None = None) -> dict:
  """The saved config of the scorer at `path`, checking its kind when given."""
  file = Path(path) / SCORER_JSON
  if not file.is_file():
    raise FileNotFoundError(f"no saved scorer at {path}: {SCORER_JSON} is missing")
  meta = json.loads(file.read_text())
  if kind is not None and meta.get("kind") != kind:
    raise ValueError(f"{path} holds a {meta.get('kind')!r} scorer, not {kind!r}")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{file}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
  return meta["config"]


def load_scorer(path: str | Path) -> Scorer:
  """Loads any saved scorer (n-gram, encoder, max-ensemble) from its directory."""
  file = Path(path) / SCORER_JSON
  if not file.is_file():
    raise FileNotFoundError(f"no saved scorer at {path}: {SCORER_JSON} is missing")
  kind = json.loads(file.read_text()).get("kind")
  if kind not in SCORER_KINDS:
    raise ValueError(f"{file}: unknown scorer kind {kind!r}; known: {sorted(SCORER_KINDS)}")
  module_name, class_name = SCORER_KINDS[kind].split(":")
  return getattr(importlib.import_module(module_name), class_name).load(path)
