"""General capability by log-likelihood, with lm-evaluation-harness semantics.

Everything here talks to a model only through
    loglikelihood(requests: list[(context, continuation)]) -> list[(logprob_sum, is_greedy)]
(lm-eval's `LM.loglikelihood`): the summed log-probability of the continuation's tokens given the
context, and whether greedy decoding would have produced exactly the continuation. Any model
(safejax's, an HTTP endpoint) that provides it can be scored.

Tasks (../shared/data/capability; formats in their SOURCE.md), zero-shot:
  multiple choice   score each choice as a continuation of the query; acc = argmax log-likelihood
                    is gold; acc_norm divides by the choice's length in characters (lm-eval's
                    acc_norm, reported where lm-eval reports it: HellaSwag, ARC, PIQA, OpenBookQA).
                    Query/answer joints follow llm-foundry's eval gauntlet, which made these
                    files: ARC, PIQA and BoolQ put "\\nAnswer:" between them, the others a space.
  WinoGrande        "partial" scoring: the shared continuation under each filled-in context.
  LAMBADA           last-word prediction: acc = greedy decoding yields the word; perplexity too.
Chance level sits beside each score (the mean of 1/number-of-choices; about 0 for LAMBADA).
Perplexity on held-out text is reported per word and per byte (lm-eval's wikitext metrics), so
models with different tokenizers compare.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from safejax.evaluation.prompt_sets import read_rows, subsample

LoglikelihoodFn = Callable[[list[tuple[str, str]]], list[tuple[float, bool]]]


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
  """One multiple-choice question: choice i is `continuations[i]` after `contexts[i]`.

  `choice_texts[i]` is the bare answer whose length normalises acc_norm.
  """

  contexts: tuple[str, ...]
  continuations: tuple[str, ...]
  choice_texts: tuple[str, ...]
  gold: int


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Where a task's file is (relative to the data folder) and how to score it."""

  path: str
  kind: Literal["choice", "schema", "last_word"]
  answer_cue: str = ""  # text after the query; choices follow after one space
  acc_norm: bool = False


TASKS: dict[str, TaskSpec] = {
    "hellaswag": TaskSpec("capability/hellaswag/hellaswag_val.jsonl.gz", "choice", acc_norm=True),
    "arc_easy": TaskSpec("capability/mc_evals/arc_easy.jsonl", "choice", "\nAnswer:", acc_norm=True),
    "arc_challenge": TaskSpec("capability/mc_evals/arc_challenge.jsonl", "choice", "\nAnswer:", acc_norm=True),
    "piqa": TaskSpec("capability/mc_evals/piqa.jsonl", "choice", "\nAnswer:", acc_norm=True),
    "openbook_qa": TaskSpec("capability/mc_evals/openbook_qa.jsonl", "choice", acc_norm=True),
    "copa": TaskSpec("capability/mc_evals/copa.jsonl", "choice"),
    "boolq": TaskSpec("capability/mc_evals/boolq.jsonl", "choice", "\nAnswer:"),
    "winogrande": TaskSpec("capability/mc_evals/winogrande.jsonl", "schema"),
    "lambada_openai": TaskSpec("capability/mc_evals/lambada_openai.jsonl", "last_word"),
}


def _rows(path: Path) -> list[dict[str, Any]]:
  rows = []
  for i, row, error in read_rows(path):
    if row is None:
      raise ValueError(f"{path} line {i}: {error}")
    rows.append(row)
  return rows


def _gold(row: dict[str, Any], n: int, path: Path) -> int:
  gold = row.get("gold")
  if not isinstance(gold, int) or not 0 <= gold < n:
    raise ValueError(f"{path}: gold {gold!r} is not an index into {n} choices in {row}")
  return gold


def register_task(name: str, spec: TaskSpec) -> None:
  """Adds (or replaces) a capability task, e.g. a run's own held-out items at an absolute path."""
  TASKS[name] = spec


def load_task(name: str, data_dir: str | Path | None) -> list[ChoiceItem] | list[tuple[str, str]]:
  """The items of a task: ChoiceItems, or (context, word) pairs for LAMBADA."""
  if name not in TASKS:
    raise KeyError(f"unknown capability task {name!r}; known: {sorted(TASKS)}")
  spec = TASKS[name]
  path = Path(spec.path) if data_dir is None else Path(data_dir) / spec.path  # absolute paths stay
  rows = _rows(path)
  if spec.kind == "last_word":
    return [(row["context"], " " + row["continuation"].strip()) for row in rows]
  items = []
  for row in rows:
    if spec.kind == "schema":
      contexts = tuple(row["context_options"])
      continuation = " " + row["continuation"].strip()
      items.append(ChoiceItem(contexts, (continuation,) * len(contexts), (continuation,) * len(contexts),
                              _gold(row, len(contexts), path)))
    else:
      choices = tuple(row["endings"] if "endings" in row else row["choices"])
      context = row["query"].rstrip() + spec.answer_cue
      items.append(ChoiceItem((context,) * len(choices), tuple(" " + c.strip() for c in choices), choices,
                              _gold(row, len(choices), path)))
  return items


def score_choices(loglikelihood: LoglikelihoodFn, items: Sequence[ChoiceItem], *, acc_norm: bool) -> dict[str, Any]:
  """acc (and acc_norm) of multiple-choice items, all choices scored in one loglikelihood call."""
  requests = [(c, x) for item in items for c, x in zip(item.contexts, item.continuations)]
  results = loglikelihood(requests)
  if len(results) != len(requests):
    raise ValueError(f"loglikelihood returned {len(results)} results for {len(requests)} requests")
  correct, correct_norm, offset = [], [], 0
  for item in items:
    lls = np.array([ll for ll, _ in results[offset: offset + len(item.continuations)]])
    offset += len(item.continuations)
    correct.append(int(np.argmax(lls)) == item.gold)
    lengths = np.array([max(len(t), 1) for t in item.choice_texts], float)
    correct_norm.append(int(np.argmax(lls / lengths)) == item.gold)
  scores = {"n": len(items), "acc": float(np.mean(correct)),
            "chance": float(np.mean([1 / len(item.continuations) for item in items]))}
  if acc_norm:
    scores["acc_norm"] = float(np.mean(correct_norm))
  return scores


def score_last_word(loglikelihood: LoglikelihoodFn, items: Sequence[tuple[str, str]]) -> dict[str, Any]:
  """LAMBADA: acc = greedy decoding gives the last word; perplexity = exp(-mean log-likelihood)."""
  results = loglikelihood(list(items))
  return {"n": len(items), "acc": float(np.mean([greedy for _, greedy in results])),
          "perplexity": float(math.exp(-np.mean([ll for ll, _ in results]))), "chance": 0.0}


def evaluate_capability(
    loglikelihood: LoglikelihoodFn,
    data_dir: str | Path | None,
    tasks: Sequence[str],
    *,
    n_per_task: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
  """Scores every task (optionally a seeded subsample of n items each); adds their mean acc."""
  results: dict[str, Any] = {}
  for name in tasks:
    items = subsample(load_task(name, data_dir), n_per_task, seed)
    spec = TASKS[name]
    if spec.kind == "last_word":
      results[name] = score_last_word(loglikelihood, items)
    else:
      results[name] = score_choices(loglikelihood, items, acc_norm=spec.acc_norm)
  if results:
    results["average"] = {"acc": float(np.mean([r["acc"] for r in results.values()])),
                          "chance": float(np.mean([r["chance"] for r in results.values()]))}
  return results


def load_texts(path: str | Path, field: str = "text") -> list[str]:
  """The `field` of every row of a JSONL / CSV file (e.g. the held-out Wikipedia shard)."""
  texts = []
  for i, row, error in read_rows(path):
    if row is None or not str(row.get(field, "")).strip():
      raise ValueError(f"{path} row {i}: {error or f'no {field!r} text'}")
    texts.append(str(row[field]))
  return texts


def perplexity(loglikelihood: LoglikelihoodFn, texts: Sequence[str]) -> dict[str, Any]:
  """Word and byte perplexity and bits per byte of whole documents (lm-eval's wikitext metrics)."""
  if not texts:
    raise ValueError("perplexity needs at least one text")
  results = loglikelihood([("", t) for t in texts])
  logprob = sum(ll for ll, _ in results)
  words = sum(len(re.split(r"\s+", t.strip())) for t in texts)
  n_bytes = sum(len(t.encode("utf-8")) for t in texts)
  return {"n_docs": len(texts), "words": words, "bytes": n_bytes,
          "word_perplexity": math.exp(-logprob / words), "byte_perplexity": math.exp(-logprob / n_bytes),
          "bits_per_byte": -logprob / n_bytes / math.log(2)}
