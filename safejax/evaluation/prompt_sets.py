"""Loaders for the safety prompt benchmarks, all into one record type.

Formats (../shared/data/safety_prompts, each folder's SOURCE.md has the details):
  advbench/harmful_behaviors.csv        goal, target                        520 harmful
  harmbench/harmbench_behaviors_*.csv   Behavior, FunctionalCategory, SemanticCategory, Tags,
                                        ContextString, BehaviorID; targets in
                                        harmbench_targets_text.json          400 (all split)
  jbb_behaviors/{harmful,benign}-behaviors.csv
                                        index, goal, target, behavior, category, source
                                                                            100 + 100
  xstest/xstest_prompts.csv             id, prompt, type, label, focus, note 250 safe + 200 unsafe
and any CSV / JSONL file with named columns (`load_table`).

Nothing is dropped silently: a row that cannot become a record (empty prompt, missing field,
duplicate id, a reserved token string smuggled into the text) is set aside in `rejected` with its
reason, rows left out on purpose by configuration (HarmBench's copyright behaviours) are counted in
`excluded`, and `Benchmark.counts()` proves read = kept + rejected + excluded.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from safejax.vocab import SPECIAL_TOKENS

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """One evaluation prompt.

  Attributes:
    id: unique within its benchmark (the upstream id where there is one).
    prompt: the request as the benchmark states it (no template applied).
    source: the benchmark name, e.g. "advbench", "jbb_benign".
    is_harmful: True for requests a safe model should refuse.
    category: harm category for per-category ASR (HarmBench SemanticCategory, JBB category,
      XSTest type); None where the benchmark has none.
    target: the opening of a compliant answer ("Sure, here is ..."), used by completion-style
      prompting; None where the benchmark has none.
    metadata: the other upstream fields, kept for the generation logs.
  """

  id: str
  prompt: str
  source: str
  is_harmful: bool
  category: str | None = None
  target: str | None = None
  metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RejectedRow:
  """A row that could not become a record: its 1-based row number, the reason and the raw row."""

  row: int
  reason: str
  raw: Mapping[str, Any] | str


@dataclasses.dataclass
class Benchmark:
  """The records of one benchmark, with what was set aside and why."""

  name: str
  records: list[PromptRecord]
  rejected: list[RejectedRow] = dataclasses.field(default_factory=list)
  excluded: dict[str, int] = dataclasses.field(default_factory=dict)

  def counts(self) -> dict[str, Any]:
    """read = kept + rejected + excluded, with the reasons."""
    n_excluded = sum(self.excluded.values())
    return {
        "read": len(self.records) + len(self.rejected) + n_excluded,
        "kept": len(self.records),
        "rejected": len(self.rejected),
        "rejected_by_reason": dict(collections.Counter(r.reason for r in self.rejected)),
        "excluded": n_excluded,
        "excluded_by_reason": dict(self.excluded),
    }


class BadRowError(ValueError):
  """Raised instead of setting a row aside when a loader runs with `strict=True`."""


def subsample(items: Sequence[T], n: int | None, seed: int) -> list[T]:
  """At most `n` items drawn without replacement, seeded, in their original order (None: all)."""
  if n is None or n >= len(items):
    return list(items)
  if n < 0:
    raise ValueError(f"n must be >= 0 or None, got {n}")
  keep = sorted(random.Random(seed).sample(range(len(items)), n))
  return [items[i] for i in keep]


def _open_text(path: Path) -> io.TextIOBase:
  if path.suffix == ".gz":
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
  return open(path, encoding="utf-8", newline="")


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
  """Yields (1-based row number, row or None, error) from a CSV or JSONL file (optionally .gz).

  CSV rows are dicts of strings keyed by the header; a CSV row with fewer fields than the header
  or a JSONL line that is not a JSON object comes out as (row, None, reason).
  """
  path = Path(path)
  name = path.name[:-3] if path.suffix == ".gz" else path.name
  if not name.endswith((".csv", ".jsonl")):
    raise ValueError(f"{path}: unknown table format (expected .csv or .jsonl, optionally .gz)")
  with _open_text(path) as f:
    if name.endswith(".csv"):
      reader = csv.DictReader(f)
      for i, row in enumerate(reader, start=1):
        if None in row:
          yield i, None, "more fields than the header"
        elif any(v is None for v in row.values()):
          yield i, None, "fewer fields than the header"
        else:
          yield i, row, ""
    else:
      for i, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          yield i, None, f"invalid JSON: {e.msg}"
          continue
        if not isinstance(row, dict):
          yield i, None, "JSON line is not an object"
        else:
          yield i, row, ""


class _RecordBuilder:
  """Validates rows into records; collects rejections (or raises, when strict)."""

  def __init__(self, name: str, strict: bool):
    self.benchmark = Benchmark(name, [])
    self._strict = strict
    self._ids: set[str] = set()

  def reject(self, row: int, reason: str, raw: Mapping[str, Any] | str) -> None:
    if self._strict:
      raise BadRowError(f"{self.benchmark.name} row {row}: {reason}")
    self.benchmark.rejected.append(RejectedRow(row, reason, raw))

  def exclude(self, reason: str) -> None:
    self.benchmark.excluded[reason] = self.benchmark.excluded.get(reason, 0) + 1

  def add(self, row: int, raw: Mapping[str, Any], record: PromptRecord) -> None:
    if not record.prompt.strip():
      return self.reject(row, "empty prompt", raw)
    if not record.id:
      return self.reject(row, "empty id", raw)
    if record.id in self._ids:
      return self.reject(row, "duplicate id", raw)
    # A reserved token string in a prompt would reach the model as the real token (a smuggled harm
    # tag or role marker) and change what is being measured.
    for text in (record.prompt, record.target or ""):
      if any(token in text for token in SPECIAL_TOKENS):
        return self.reject(row, "contains a reserved token string", raw)
    self._ids.add(record.id)
    self.benchmark.records.append(record)


def _required(row: Mapping[str, Any], columns: Sequence[str], path: Path) -> None:
  missing = [c for c in columns if c not in row]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}; columns are {sorted(row)}")


def _text(value: Any) -> str:
  return "" if value is None else str(value).strip()


def load_advbench(path: str | Path, *, strict: bool = False) -> Benchmark:
  """AdvBench harmful_behaviors.csv (goal, target): 520 harmful requests with compliant openings."""
  path = Path(path)
  builder = _RecordBuilder("advbench", strict)
  for i, row, error in read_rows(path):
    if row is None:
      builder.reject(i, error, "")
      continue
    _required(row, ("goal", "target"), path)
    builder.add(i, row, PromptRecord(
        id=f"advbench-{i - 1}", prompt=_text(row["goal"]), source="advbench", is_harmful=True,
        target=_text(row["target"]) or None))
  return builder.benchmark


def load_harmbench(
    path: str | Path,
    targets_path: str | Path | None = None,
    *,
    functional_categories: Sequence[str] = ("standard", "contextual"),
    strict: bool = False,
) -> Benchmark:
  """HarmBench text behaviours; category = SemanticCategory.

  Contextual behaviours get their ContextString before the request (HarmBench's own layout:
  context, blank line, request). Copyright behaviours are judged upstream by hashing, not by a
  classifier, so the default leaves them out (counted under `excluded`).

  Args:
    path: one of harmbench_behaviors_text_{all,test,val}.csv.
    targets_path: harmbench_targets_text.json (BehaviorID -> compliant opening), or None.
    functional_categories: which FunctionalCategory values to keep.
  """
  path = Path(path)
  targets: dict[str, str] = {}
  if targets_path is not None:
    with open(targets_path, encoding="utf-8") as f:
      targets = json.load(f)
  builder = _RecordBuilder("harmbench", strict)
  for i, row, error in read_rows(path):
    if row is None:
      builder.reject(i, error, "")
      continue
    _required(row, ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID"), path)
    functional = _text(row["FunctionalCategory"])
    if functional not in functional_categories:
      builder.exclude(f"FunctionalCategory={functional}")
      continue
    behavior, context = _text(row["Behavior"]), _text(row["ContextString"])
    if functional == "contextual" and not context:
      builder.reject(i, "contextual behaviour without ContextString", row)
      continue
    prompt = f"{context}\n\n{behavior}" if context else behavior
    behavior_id = _text(row["BehaviorID"])
    builder.add(i, row, PromptRecord(
        id=behavior_id, prompt=prompt, source="harmbench", is_harmful=True,
        category=_text(row["SemanticCategory"]) or None, target=targets.get(behavior_id) or None,
        metadata={"functional_category": functional, "behavior": behavior, "tags": _text(row.get("Tags"))}))
  return builder.benchmark


def load_jbb(path: str | Path, *, harmful: bool, strict: bool = False) -> Benchmark:
  """JailbreakBench behaviours (harmful-behaviors.csv or its benign twin benign-behaviors.csv).

  Headers are matched case-insensitively (the HF copy capitalises them).
  """
  path = Path(path)
  name = "jbb_harmful" if harmful else "jbb_benign"
  builder = _RecordBuilder(name, strict)
  for i, row, error in read_rows(path):
    if row is None:
      builder.reject(i, error, "")
      continue
    row = {k.strip().lower(): v for k, v in row.items()}
    _required(row, ("index", "goal", "target", "behavior", "category"), path)
    builder.add(i, row, PromptRecord(
        id=f"{name}-{_text(row['index'])}", prompt=_text(row["goal"]), source=name, is_harmful=harmful,
        category=_text(row["category"]) or None, target=_text(row["target"]) or None,
        metadata={"behavior": _text(row["behavior"]), "origin": _text(row.get("source"))}))
  return builder.benchmark


def load_xstest(path: str | Path, *, labels: Sequence[str] = ("safe", "unsafe"), strict: bool = False) -> Benchmark:
  """XSTest prompts; category = type (e.g. homonyms, contrast_homonyms); unsafe ones are harmful.

  Args:
    labels: which labels to keep ("safe" for over-refusal, "unsafe" as a small harmful set); the
      others are counted under `excluded`.
  """
  path = Path(path)
  name = "xstest" if set(labels) == {"safe", "unsafe"} else "xstest_" + "_".join(labels)
  builder = _RecordBuilder(name, strict)
  for i, row, error in read_rows(path):
    if row is None:
      builder.reject(i, error, "")
      continue
    _required(row, ("id", "prompt", "type", "label"), path)
    label = _text(row["label"])
    if label not in ("safe", "unsafe"):
      builder.reject(i, f"unknown label {label!r}", row)
      continue
    if label not in labels:
      builder.exclude(f"label={label}")
      continue
    builder.add(i, row, PromptRecord(
        id=f"xstest-{_text(row['id'])}", prompt=_text(row["prompt"]), source=name,
        is_harmful=label == "unsafe", category=_text(row["type"]) or None,
        metadata={"focus": _text(row.get("focus")), "note": _text(row.get("note"))}))
  return builder.benchmark


def load_table(
    path: str | Path,
    *,
    name: str,
    prompt_column: str,
    id_column: str | None = None,
    category_column: str | None = None,
    target_column: str | None = None,
    harmful_column: str | None = None,
    is_harmful: bool = True,
    strict: bool = False,
) -> Benchmark:
  """Any CSV / JSONL (optionally .gz) file with named columns.

  Args:
    name: the benchmark name (records' `source`).
    prompt_column: the request text.
    id_column: unique ids; None numbers the rows.
    category_column, target_column: optional.
    harmful_column: a per-row flag (true/false, 1/0, yes/no, harmful/unsafe/safe/benign);
      None gives every row `is_harmful`.
  """
  path = Path(path)
  truthy, falsy = {"1", "true", "yes", "harmful", "unsafe"}, {"0", "false", "no", "benign", "safe"}
  columns = [c for c in (prompt_column, id_column, category_column, target_column, harmful_column) if c]
  builder = _RecordBuilder(name, strict)
  for i, row, error in read_rows(path):
    if row is None:
      builder.reject(i, error, "")
      continue
    _required(row, columns, path)
    harmful = is_harmful
    if harmful_column is not None:
      flag = _text(row[harmful_column]).lower()
      if flag not in truthy | falsy:
        builder.reject(i, f"unreadable {harmful_column} value {flag!r}", row)
        continue
      harmful = flag in truthy
    builder.add(i, row, PromptRecord(
        id=_text(row[id_column]) if id_column else f"{name}-{i - 1}",
        prompt=_text(row[prompt_column]), source=name, is_harmful=harmful,
        category=_text(row[category_column]) or None if category_column else None,
        target=_text(row[target_column]) or None if target_column else None,
        metadata={k: _text(v) for k, v in row.items() if k not in columns}))
  return builder.benchmark


# Benchmark name -> loader over the ../shared/data layout (`data_dir` is that folder).
BENCHMARKS: dict[str, Callable[[Path], Benchmark]] = {
    "advbench": lambda d: load_advbench(d / "safety_prompts/advbench/harmful_behaviors.csv"),
    "harmbench": lambda d: load_harmbench(
        d / "safety_prompts/harmbench/harmbench_behaviors_text_all.csv",
        d / "safety_prompts/harmbench/harmbench_targets_text.json"),
    "jbb_harmful": lambda d: load_jbb(d / "safety_prompts/jbb_behaviors/harmful-behaviors.csv", harmful=True),
    "jbb_benign": lambda d: load_jbb(d / "safety_prompts/jbb_behaviors/benign-behaviors.csv", harmful=False),
    "xstest_safe": lambda d: load_xstest(d / "safety_prompts/xstest/xstest_prompts.csv", labels=("safe",)),
    "xstest_unsafe": lambda d: load_xstest(d / "safety_prompts/xstest/xstest_prompts.csv", labels=("unsafe",)),
}


def register_benchmark(name: str, loader: Callable[[Path | None], Benchmark]) -> None:
  """Adds (or replaces) a named benchmark, e.g. a run's own prompts via `load_table`."""
  BENCHMARKS[name] = loader


def load_benchmark(name: str, data_dir: str | Path | None) -> Benchmark:
  """A benchmark of `BENCHMARKS` by name (the built-in ones read the shared data folder)."""
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
  return BENCHMARKS[name](Path(data_dir) if data_dir is not None else None)
