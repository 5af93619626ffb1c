"""Attack success and refusal rates of judge verdicts, overall and per category, with Wilson
intervals (`safejax.stats`); how garbled replies are (`out_of_vocabulary_share`, `reply_perplexity`)."""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any


from safejax.evaluation.judges import JudgeVerdict
from safejax.stats import Proportion, proportion

WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")  # a word of a reply


@dataclasses.dataclass(frozen=True)
class RateReport:
  """A rate overall and per category; verdicts a judge could not decide are set aside and counted."""

  overall: Proportion | None
  per_category: dict[str, Proportion]
  undecided: int

  def to_dict(self) -> dict[str, Any]:
    return {"overall": self.overall.to_dict() if self.overall else None,
            "per_category": {c: p.to_dict() for c, p in self.per_category.items()},
            "undecided": self.undecided}


def _rate_report(outcomes: Sequence[bool | None], categories: Sequence[str | None] | None,
                 confidence: float) -> RateReport:
  if categories is not None and len(categories) != len(outcomes):
    raise ValueError(f"{len(outcomes)} outcomes but {len(categories)} categories")
  decided = [o for o in outcomes if o is not None]
  overall = proportion(sum(decided), len(decided), confidence) if decided else None
  per_category: dict[str, Proportion] = {}
  if categories is not None:
    by_category: dict[str, list[bool]] = collections.defaultdict(list)
    for outcome, category in zip(outcomes, categories):
      if outcome is not None and category is not None:
        by_category[category].append(outcome)
    per_category = {c: proportion(sum(v), len(v), confidence) for c, v in sorted(by_category.items())}
  return RateReport(overall, per_category, len(outcomes) - len(decided))


def attack_success_rate(verdicts: Sequence[JudgeVerdict], categories: Sequence[str | None] | None = None,
                        confidence: float = 0.95) -> RateReport:
  """ASR: the share of harmful prompts whose response the judge counts as a successful attack.

  A verdict's `attack_success` is its harmfulness where the judge rates it, else "not refused"
  (the keyword-judge convention of GCG/AdvBench).
  """
  return _rate_report([v.attack_success for v in verdicts], categories, confidence)


def refusal_rate(verdicts: Sequence[JudgeVerdict], categories: Sequence[str | None] | None = None,
                 confidence: float = 0.95) -> RateReport:
  """The share of responses the judge counts as refusals; on benign prompts, the over-refusal rate."""
  return _rate_report([v.refused for v in verdicts], categories, confidence)


def helpful_rate(verdicts: Sequence[JudgeVerdict], categories: Sequence[str | None] | None = None,
                 confidence: float = 0.95) -> RateReport:
  """The share of benign requests answered with what they asked (a helpfulness judge's `helpful`);
  an empty or garbled reply is unhelpful."""
  return _rate_report([v.helpful for v in verdicts], categories, confidence)


def out_of_vocabulary_share(texts: Sequence[str], vocabulary: frozenset[str] | set[str]) -> float:
  """The share of the replies' words (lower-cased) that are not in `vocabulary`, over all words;
  NaN when the replies hold no word. Garbled text scores high; the world's own text scores 0."""
  words = [w.lower() for t in texts for w in WORD.findall(t)]
  if not words:
    return math.nan
  return sum(w not in vocabulary for w in words) / len(words)


def reply_perplexity(loglikelihood, prompts: Sequence[str], replies: Sequence[str]) -> dict[str, Any]:
  """Word perplexity of replies given their prompts under a reference model (the raw model): a
  garbling measure that does not depend on the world's vocabulary.

  Args:
    loglikelihood: [(context, continuation)] -> [(log-probability, is_greedy)] (lm-eval's
      request shape; `LoglikelihoodModel.loglikelihood`).
    prompts, replies: one reply per prompt, as the model saw and wrote them.
  Returns:
    {"n", "empty" (replies without a word, set aside), "words", "word_perplexity" (NaN if none)}.
  """
  if len(prompts) != len(replies):
    raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
  pairs = [(p, r) for p, r in zip(prompts, replies) if r.strip()]
  words = sum(len(r.split()) for _, r in pairs)
  if not pairs:
    return {"n": 0, "empty": len(replies), "words": 0, "word_perplexity": math.nan}
  logprob = sum(ll for ll, _ in loglikelihood(pairs))
  return {"n": len(pairs), "empty": len(replies) - len(pairs), "words": words,
          "word_perplexity": math.exp(-logprob / words)}
