"""The interface every safety scorer implements, decision rules, windowing, the max-ensemble and loading.

A scorer maps texts to the 0..5 rubric (`safejax.safety.rubric`):

  score_probs(texts) -> float32 [n, 6]   a probability row per document
  score(texts)       -> int32   [n]      the document's score, 0..5

A `DecisionRule` turns a probability row into a score: argmax (the default), or calibrated
thresholds on the tail probabilities P(score >= k) (`safejax.safety.calibration` chooses them on
validation data, for the recall, precision and false-positive targets of each level). Every model
scorer carries its rule, saves it in `scorer.json` and reloads it, and `score(texts) ==
rule.decide(score_probs(texts))`, so the two never disagree.

Model scorers see only a bounded input (the n-gram model a number of words, the encoder a number
of word pieces): `WindowedScorer` cuts each document into windows of the scorer's own units,
scores all windows of a batch together and keeps, per document, the window with the highest
decided score (ties broken by the highest expected score sum_k k * p_k). The document's score is
therefore the max over its windows, as in the paper, and its probability row is that window's
row. A long clean document has many chances to get one window wrongly flagged, so thresholds are
calibrated on whole clean documents, not on windows (see `safejax.safety.calibration`).

`MaxEnsemble` combines any scorers the same way (the paper's recall-first choice): the document's
score is the max of the members' scores, each decided by the member's own rule, and its
probabilities those of the member that gave it.

Saved scorers are directories holding `scorer.json` ({"kind": ..., "config": {...},
"decision_rule": {...}}; a file without a rule decides by argmax) and safetensors weights;
`load_scorer(path)` reads any kind. Nothing is pickled.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gin
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
  """The score a probability row stands for by argmax: [..., 6] -> int32 [...]."""
  return np.argmax(probs, axis=-1).astype(np.int32)


def tail_probs(probs: np.ndarray) -> np.ndarray:
  """P(score >= k) for k = 0..5: [..., 6] -> float32 [..., 6] (column 0 is 1)."""
  return np.cumsum(probs[..., ::-1], axis=-1)[..., ::-1].astype(np.float32)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecisionRule:
  """How a probability row p [6] becomes a score.

  thresholds None: argmax_k p_k, the most probable level.
  thresholds (t_1, ..., t_5): the highest level k whose tail probability P(score >= k) =
    sum_{j >= k} p_j reaches t_k, 0 when none does. With non-decreasing thresholds "score >= k"
    is exactly "P(score >= k) >= t_k"; (0.5,) * 5 is the median of the row.
  """

  thresholds: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.thresholds is None:
      return
    thresholds = tuple(float(t) for t in self.thresholds)
    if len(thresholds) != NUM_LEVELS - 1 or not all(0.0 < t <= 1.0 for t in thresholds):
      raise ValueError(f"thresholds must be {NUM_LEVELS - 1} numbers in (0, 1] for the levels "
                       f"1..{NUM_LEVELS - 1}, got {self.thresholds}")
    object.__setattr__(self, "thresholds", thresholds)

  def decide(self, probs: np.ndarray) -> np.ndarray:
    """[..., 6] -> int32 [...] in 0..5."""
    probs = np.asarray(probs)
    if self.thresholds is None:
      return decide(probs)
    reached = tail_probs(probs)[..., 1:] >= np.asarray(self.thresholds, np.float32)  # [..., 5]
    levels = np.arange(1, NUM_LEVELS, dtype=np.int32)
    return np.max(np.where(reached, levels, 0), axis=-1).astype(np.int32)

  def to_json(self) -> dict:
    return {"thresholds": None if self.thresholds is None else list(self.thresholds)}

  @classmethod
  def from_json(cls, data: dict | None) -> "DecisionRule":
    """The rule saved by `to_json`; None (a scorer saved before rules existed) is argmax."""
    thresholds = (data or {}).get("thresholds")
    return cls(None if thresholds is None else tuple(thresholds))


ARGMAX = DecisionRule()


def expected_score(probs: np.ndarray) -> np.ndarray:
  """sum_k k * p_k. [..., 6] -> float32 [...]."""
  return (probs @ np.arange(NUM_LEVELS, dtype=np.float32)).astype(np.float32)


def _rank_key(probs: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Orders rows by (decided score, expected score): probs [..., 6], scores int [...] -> [...]."""
  return scores * float(NUM_LEVELS) + expected_score(probs)  # expected score < 6


def max_over_windows(window_probs: np.ndarray, doc_index: np.ndarray, num_docs: int,
                     rule: DecisionRule = ARGMAX) -> np.ndarray:
  """Per document, the probability row of its highest-ranked window (by `rule`'s score).

  Args:
    window_probs: float [m, 6], one row per window.
    doc_index: int [m], the document of each window; every document in 0..num_docs-1 must appear.
    num_docs: n.
    rule: decides each window's score.
  Returns:
    float32 [n, 6].
  """
  if np.bincount(doc_index, minlength=num_docs).min(initial=1) == 0:
    raise ValueError("every document needs at least one window")
  key = _rank_key(window_probs, rule.decide(window_probs))
  order = np.lexsort((key, doc_index))  # by document, then rank ascending
  last_of_doc = np.flatnonzero(np.r_[doc_index[order][1:] != doc_index[order][:-1], True])
  return window_probs[order[last_of_doc]].astype(np.float32)


def scores_and_probs(scorer: Scorer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(int32 [n] scores, float32 [n, 6] probabilities) of any scorer from one scoring pass.

  Scorers here have `score_and_probs`; for any other the score is the argmax of its row, and -1
  where the row is not a distribution (NaN: an LLM answer that was set aside).
  """
  if hasattr(scorer, "score_and_probs"):
    return scorer.score_and_probs(texts)
  probs = np.asarray(scorer.score_probs(texts), np.float32)
  return np.where(np.isnan(probs).any(-1), -1, decide(np.nan_to_num(probs))).astype(np.int32), probs


class WindowedScorer(abc.ABC):
  """Base class for model scorers: subclasses say how to cut windows and how to score them."""

  name: str = "windowed"
  batch_size: int = 256  # windows per model call
  decision_rule: DecisionRule = ARGMAX

  @abc.abstractmethod
  def windows(self, text: str) -> list[Any]:
    """Cuts one document into at least one window of the scorer's units (each has a len())."""

  @abc.abstractmethod
  def window_probs(self, windows: Sequence[Any]) -> Any:
    """float32 [len(windows), 6] for at most `batch_size` windows (a numpy or JAX array)."""

  def all_window_probs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every window's probability row and its document.

    Returns:
      probs: float32 [m, 6], one row per window (m >= len(texts): every document has a window).
      doc_index: int64 [m], the document of each window, ascending.
    """
    if isinstance(texts, str):
      raise TypeError("score_probs takes a sequence of texts, not one string")
    all_windows, doc_index = [], []
    for i, text in enumerate(texts):
      ws = self.windows(text)
      all_windows.extend(ws)
      doc_index.extend([i] * len(ws))
    probs = np.zeros((len(all_windows), NUM_LEVELS), np.float32)
    # Batches of similar-sized windows waste less padding; rows go back to window order after.
    order = np.argsort([len(w) for w in all_windows], kind="stable")
    batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
    # window_probs may return device arrays still being computed: collect first, convert after.
    results = [self.window_probs([all_windows[i] for i in batch])
               for batch in tqdm(batches, desc=f"score ({self.name})", unit="batch", leave=False,
                                 disable=len(batches) < 8)]
    for batch, result in zip(batches, results):
      probs[batch] = np.asarray(result)
    return probs, np.asarray(doc_index, np.int64)

  def score_probs(self, texts: Sequence[str]) -> np.ndarray:
    probs, doc_index = self.all_window_probs(texts)
    if not len(probs):
      return np.zeros((0, NUM_LEVELS), np.float32)
    return max_over_windows(probs, doc_index, len(texts), self.decision_rule)

  def score_and_probs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    probs = self.score_probs(texts)
    return self.decision_rule.decide(probs), probs

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return self.score_and_probs(texts)[0]


class MaxEnsemble:
  """Max of any scorers: score = max of the members' scores (recall first)."""

  def __init__(self, scorers: Sequence[Scorer]):
    if not scorers:
      raise ValueError("MaxEnsemble needs at least one scorer")
    self.scorers = list(scorers)
    self.name = "max(" + ", ".join(s.name for s in self.scorers) + ")"

  def score_and_probs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    member_scores, member_probs = map(np.stack, zip(*(scores_and_probs(s, texts) for s in self.scorers)))
    best = np.argmax(_rank_key(np.nan_to_num(member_probs), member_scores), axis=0)  # [n]
    docs = np.arange(member_probs.shape[1])
    return member_scores[best, docs], member_probs[best, docs].astype(np.float32)

  def score_probs(self, texts: Sequence[str]) -> np.ndarray:
    return self.score_and_probs(texts)[1]

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return self.score_and_probs(texts)[0]

  def save(self, path: str | Path) -> None:
    """Saves each member (with its decision rule) under path/members/<i> (members must have `save`)."""
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


def write_scorer_json(path: str | Path, kind: str, config: dict, decision_rule: DecisionRule | None = None) -> None:
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  meta = {"kind": kind, "format_version": FORMAT_VERSION, "config": config}
  if decision_rule is not None:
    meta["decision_rule"] = decision_rule.to_json()
  (path / SCORER_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_scorer_meta(path: str | Path, kind: str | None = None) -> dict:
  """The whole scorer.json at `path` ({"kind", "format_version", "config"[, "decision_rule"]})."""
  file = Path(path) / SCORER_JSON
  if not file.is_file():
    raise FileNotFoundError(f"no saved scorer at {path}: {SCORER_JSON} is missing")
  meta = json.loads(file.read_text())
  if kind is not None and meta.get("kind") != kind:
    raise ValueError(f"{path} holds a {meta.get('kind')!r} scorer, not {kind!r}")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{file}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
  return meta


def read_scorer_json(path: str | Path, kind: str | None = None) -> dict:
  """The saved config of the scorer at `path`, checking its kind when given."""
  return read_scorer_meta(path, kind)["config"]


def read_decision_rule(path: str | Path) -> DecisionRule:
  """The decision rule saved with the scorer at `path` (argmax when none was saved)."""
  return DecisionRule.from_json(read_scorer_meta(path).get("decision_rule"))


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


@functools.cache
def _cached_scorer(path: str) -> Scorer:
  return load_scorer(path)


class ScorerFromPath:
  """A saved scorer loaded on first use, once per process, and pickled as its path only: Beam
  ships what holds it (e.g. the template backend's sentence rater) to its workers with every
  bundle, and a pickled scorer's parameters made the demo's pipeline several times slower."""

  def __init__(self, path: str | Path):
    self.path = str(path)

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return _cached_scorer(self.path).score(texts)
