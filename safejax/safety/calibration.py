"""Decision thresholds chosen on validation data, level by level, for recall, precision and
false-positive targets.

A scorer's probability row p [6] becomes a score through its `DecisionRule`. Argmax is blind to
what the score is used for; here each level k that matters gets a threshold t_k on the tail
probability P(score >= k), chosen for a `LevelTarget`:

  recall    of "score >= k" on the target validation examples   >= min_recall
  precision of "score >= k" on the target validation examples   >= min_precision
  false-positive rate of "score >= k" on clean documents          <= max_clean_fpr

Windows. Documents are scored as in use: the max over their windows (the paper's rule). A
document has score >= k when any window's tail reaches t_k, i.e. when the max over its windows of
that tail does (`DocumentWindows.tails`). The clean documents are whole Wikipedia articles and
OpenStax sections of the validation split (`labelled.clean_documents`), tens of windows each: a
threshold that lets 1 % of clean windows through flags about a quarter of such articles, so the
false-positive budget is held on whole documents, which calibrates the per-window threshold for
documents of typical length. Two alternatives were measured on validation and not kept (see
gin/classify/ensemble.gin): requiring two flagged windows, and a length-aware threshold (the
per-window false-positive rate divided by the number of windows); both gain recall on short
documents but lose it on an unsafe passage inside a long clean document.

Search: for a single scorer every candidate threshold is tried; for a `MaxEnsemble` (score >= k
when any member says so) every combination of the members' candidates is. Candidates are
quantiles of each member's tails on the target examples and on the clean documents, thresholds
half-way between them. Selection: among the candidates within the false-positive budget, those
that meet both the recall and the precision targets give the best F1 (then recall); when none
does, recall comes first, as in the paper: the highest precision that keeps the recall target, or,
when the recall target is out of reach, the highest recall. Ties (a plateau of thresholds that classify
the validation data alike) go to the middle of the plateau. The report says which case applied.

Levels are calibrated from the highest down, each counting the documents that the levels above
already flag. A higher level's flags are a lower level's too, so the greedy choice can spend a lower
level's precision: on our data the n-gram scorer's F1-best ">= 3" threshold flags more of the
safe OpenAI-moderation prompts than the whole ">= 1" precision budget allows. So a level's choice looks
ahead: among its choices that meet its own targets as well as its best does (`level_options`),
calibration takes the best-ranked one under which the lower levels meet theirs too (each chosen the
same way), and the greedy choice when none does. The report gives each level's `rank` in its own
ranking (0: its own best).

The rule's other thresholds follow: a level between calibrated ones needs at least the median
(0.5) and at least the threshold of the calibrated level below it, so a higher level never needs
less evidence (e.g. t_2 = max(0.5, t_1), t_4 = t_5 = max(0.5, t_3)); with
non-decreasing thresholds "score >= k" is exactly "P(score >= k) >= t_k".
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import gin
import numpy as np

from safejax.safety import metrics
from safejax.safety.labelled import Example
from safejax.safety.rubric import NUM_LEVELS
from safejax.safety.scorer import ARGMAX, DecisionRule, MaxEnsemble, Scorer, WindowedScorer, tail_probs


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LevelTarget:
  """What the threshold of one level is chosen for (see the module docstring)."""

  level: int
  min_recall: float
  min_precision: float
  max_clean_fpr: float = 1.0
  sources: tuple[str, ...] = ()  # validation sources recall and precision are measured on; () = all

  def __post_init__(self):
    if not 1 <= self.level < NUM_LEVELS:
      raise ValueError(f"level must be in 1..{NUM_LEVELS - 1}, got {self.level}")
    for name in ("min_recall", "min_precision", "max_clean_fpr"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
    object.__setattr__(self, "sources", tuple(self.sources))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
  """The levels to calibrate and the search grid.

  Defaults are the goals of issue 3: score >= 3 on the whole validation split with recall >= 0.80
  and precision >= 0.60, with at most 1 % of clean validation documents flagged (the goal: under
  2 % of the 135 held-out Wikipedia articles; 1 % leaves room for the sampling error); score >= 1
  on the OpenAI moderation part with recall >= 0.80 and precision >= 0.70, no clean-document
  budget (no goal; the report gives the rate).
  """

  targets: tuple[LevelTarget, ...] = (
      LevelTarget(level=3, min_recall=0.80, min_precision=0.60, max_clean_fpr=0.01),
      LevelTarget(level=1, min_recall=0.80, min_precision=0.70, sources=("openai_moderation",)),
  )
  candidates: int = 128  # quantiles per member and level, per set (target examples, clean documents)
  lookahead: int = 64  # choices of a level tried for the sake of the levels below it (module docstring)

  def __post_init__(self):
    levels = [t.level for t in self.targets]
    if len(set(levels)) != len(levels):
      raise ValueError(f"one target per level, got levels {levels}")
    object.__setattr__(self, "targets", tuple(sorted(self.targets, key=lambda t: -t.level)))
    if self.lookahead < 1:
      raise ValueError(f"lookahead must be >= 1, got {self.lookahead}")


@dataclasses.dataclass(frozen=True)
class DocumentWindows:
  """One scorer's window probabilities for a set of documents, scored once, decided any way."""

  probs: np.ndarray  # float32 [m, 6], a row per window
  doc_index: np.ndarray  # int [m], the document of each window
  num_docs: int

  @classmethod
  def of(cls, scorer: WindowedScorer, texts: Sequence[str]) -> "DocumentWindows":
    probs, doc_index = scorer.all_window_probs(texts)
    return cls(probs, doc_index, len(texts))

  def tails(self) -> np.ndarray:
    """float32 [n, 6]: per document, the max over its windows of P(score >= k), k = 0..5.
    Under a threshold rule the document's score is >= k exactly when this reaches t_k."""
    tails = np.zeros((self.num_docs, NUM_LEVELS), np.float32)
    np.maximum.at(tails, self.doc_index, tail_probs(self.probs))
    return tails

  def scores(self, rule: DecisionRule) -> np.ndarray:
    """int32 [n]: the documents' scores under `rule`, the max over their windows."""
    scores = np.zeros(self.num_docs, np.int32)
    np.maximum.at(scores, self.doc_index, rule.decide(self.probs))
    return scores


@dataclasses.dataclass(frozen=True)
class LevelResult:
  """The thresholds chosen for one level (one per member) and their validation numbers."""

  level: int
  thresholds: tuple[float, ...]
  recall: float
  precision: float
  clean_fpr: float
  outcome: str  # "targets met", "recall target kept, precision short", "recall short"
  rank: int = 0  # place in the level's own ranking of its choices (0: its best; see the docstring)


def _candidates(values: Sequence[np.ndarray], count: int) -> np.ndarray:
  """Thresholds in (0, 1]: the lowest of the picked values, then the midpoints between consecutive
  picked values (each flags what the value above it flags, with a margin on both sides). The
  picked values are quantiles of each array of tails (all its values if few)."""
  grid = np.linspace(0.0, 1.0, count)
  picked = [np.quantile(v, grid, method="inverted_cdf") if len(v) > count else v for v in values if len(v)]
  values = np.unique(np.concatenate(picked or [np.ones(1)]).astype(np.float64))
  out = np.unique(np.r_[values[:1], (values[1:] + values[:-1]) / 2].astype(np.float32))
  return out[out > 0]


def choose_level(tails: Sequence[np.ndarray], clean_tails: Sequence[np.ndarray], truth: np.ndarray,
                 target: LevelTarget, in_target: np.ndarray | None = None,
                 flagged_above: np.ndarray | None = None, clean_flagged_above: np.ndarray | None = None,
                 candidates: int = 128) -> LevelResult:
  """The best thresholds of one level for the members of a max-ensemble (or one scorer), by the
  preference of the module docstring: `level_options(...)[0]`. Arguments as `level_options`."""
  return level_options(tails, clean_tails, truth, target, in_target, flagged_above, clean_flagged_above,
                       candidates)[0]


def level_options(tails: Sequence[np.ndarray], clean_tails: Sequence[np.ndarray], truth: np.ndarray,
                  target: LevelTarget, in_target: np.ndarray | None = None,
                  flagged_above: np.ndarray | None = None, clean_flagged_above: np.ndarray | None = None,
                  candidates: int = 128, count: int = 1) -> list[LevelResult]:
  """Up to `count` threshold choices of one level, best first.

  The first is the level's best choice (module docstring). The others meet the level's targets as
  well as the best does (the same outcome) and are spread evenly over that outcome's ranking, from
  the best down to the last such choice, so they range from the F1-best to the most cautious.

  Args:
    tails: per member, float [n, 6] `document_tails` of the labelled validation documents.
    clean_tails: per member, float [c, 6] of the clean documents (c may be 0).
    truth: int [n] true scores.
    target: the level and its targets.
    in_target: bool [n], the documents recall and precision are measured on (default all).
    flagged_above: bool [n], documents already scored higher by calibrated higher levels.
    clean_flagged_above: bool [c], the same for the clean documents.
    candidates: quantiles per member and set.
    count: how many choices to return.
  Returns:
    the choices: thresholds (one per member), their numbers and their rank.
  """
  k, n = target.level, len(truth)
  in_target = np.ones(n, bool) if in_target is None else np.asarray(in_target, bool)
  c = len(clean_tails[0])
  flagged_above = np.zeros(n, bool) if flagged_above is None else flagged_above
  clean_flagged_above = np.zeros(c, bool) if clean_flagged_above is None else clean_flagged_above
  positive = (np.asarray(truth) >= k)[in_target]
  if not positive.any():
    raise ValueError(f"no validation example of score >= {k} among the target sources {target.sources}")
  # Member j's statistic on the target documents and then the clean ones: [n_target + c].
  stats = [np.r_[t[in_target, k], ct[:, k]] for t, ct in zip(tails, clean_tails)]
  above = np.r_[flagged_above[in_target], clean_flagged_above]
  is_clean = np.r_[np.zeros(in_target.sum(), bool), np.ones(c, bool)]
  per_member = max(2, int(round((2**16) ** (1 / len(tails)))) // 2)  # at most ~65k combinations
  grids = [_candidates([s[~is_clean], s[is_clean]], min(candidates, per_member)) for s in stats]
  num_pos = positive.sum()
  rows = []  # per head: (head, g [f], recall [f], precision [f], fpr [f]) of the feasible candidates
  for head in itertools.product(*[range(len(g)) for g in grids[:-1]]):
    base = above.copy()
    for j, i in enumerate(head):
      base |= stats[j] >= grids[j][i]
    flags = (stats[-1][None, :] >= grids[-1][:, None]) | base[None, :]  # [G, n_target + c]
    tp = np.count_nonzero(flags[:, ~is_clean] & positive, axis=1)
    flagged = np.count_nonzero(flags[:, ~is_clean], axis=1)
    recall, precision = tp / num_pos, np.where(flagged > 0, tp / np.maximum(flagged, 1), 1.0)
    fpr = flags[:, is_clean].mean(1) if c else np.zeros(len(flags))
    g = np.flatnonzero(fpr <= target.max_clean_fpr)
    rows.append((head, g, recall[g], precision[g], fpr[g]))
  heads = [h for h, g, *_ in rows for _ in g]
  g, recall, precision, fpr = (np.concatenate([r[i] for r in rows]) for i in range(1, 5))
  if not len(g):
    raise ValueError(f"level {k}: no thresholds keep the clean false-positive rate under "
                     f"{target.max_clean_fpr} (the levels above already flag too much)")
  met_r, met_p = recall >= target.min_recall, precision >= target.min_precision
  f1 = 2 * recall * precision / np.maximum(recall + precision, 1e-12)
  # The preference of the module docstring: (case, first criterion, second criterion).
  case = np.where(met_r & met_p, 2, np.where(met_r, 1, 0))
  first = np.select([case == 2, case == 1], [f1, precision], recall)
  second = np.select([case == 2, case == 1], [recall, recall], precision)
  same_case = np.flatnonzero(case == case.max())
  # Best first; a run of equal keys is a plateau of thresholds that classify the validation data
  # alike, represented by its middle (not an edge that the nearest validation example sits on).
  ranked = same_case[np.lexsort((-second[same_case], -first[same_case]))]
  key = np.stack([first[ranked], second[ranked]], 1)
  starts = np.flatnonzero(np.r_[True, np.any(key[1:] != key[:-1], axis=1)])
  ends = np.r_[starts[1:], len(ranked)]
  plateaus = [np.sort(ranked[s:e]) for s, e in zip(starts, ends)]  # in (head, threshold) order
  picks = np.unique(np.linspace(0, len(plateaus) - 1, max(1, min(count, len(plateaus)))).round().astype(int))
  outcome = ("targets met", "recall target kept, precision short", "recall short")[2 - case.max()]
  options = []
  for rank in picks:
    plateau = plateaus[rank]
    i = plateau[len(plateau) // 2]
    thresholds = tuple(float(grids[j][t]) for j, t in enumerate(heads[i])) + (float(grids[-1][g[i]]),)
    options.append(LevelResult(k, thresholds, float(recall[i]), float(precision[i]), float(fpr[i]), outcome,
                               int(rank)))
  return options


def derive_rule(calibrated: dict[int, float]) -> DecisionRule:
  """A full rule from the thresholds of the calibrated levels ({level: t}); the other levels need
  max(0.5, the threshold of the nearest calibrated level below), or 0.5 when there is none."""
  thresholds, floor = [], 0.5
  for level in range(1, NUM_LEVELS):
    if level in calibrated:
      floor = max(0.5, calibrated[level])
      thresholds.append(calibrated[level])
    else:
      thresholds.append(floor)
  return DecisionRule(tuple(thresholds))


def members_of(scorer: Scorer) -> list[WindowedScorer]:
  """The scorers whose rules calibration sets: the members of a MaxEnsemble, or the scorer."""
  members = scorer.scorers if isinstance(scorer, MaxEnsemble) else [scorer]
  for m in members:
    if not isinstance(m, WindowedScorer):
      raise TypeError(f"{m.name!r} has no decision rule to calibrate")
  return members


@dataclasses.dataclass(frozen=True)
class Curves:
  """What `plot_calibration` draws: each member's document tails on the validation sets."""

  members: list[str]
  tails: list[np.ndarray]  # per member, float [n, 6]
  clean_tails: list[np.ndarray]  # per member, float [c, 6]
  truth: np.ndarray  # int [n]
  sources: np.ndarray  # str [n]


def calibrate(scorer: Scorer, examples: Sequence[Example], clean_documents: Sequence[Example],
              config: CalibrationConfig | None = None) -> tuple[dict, Curves]:
  """Chooses and sets the decision rule of `scorer` (or of each ensemble member) in place.

  Args:
    scorer: a windowed scorer or a MaxEnsemble of them.
    examples: labelled validation examples.
    clean_documents: whole clean validation documents (all score 0).
    config: targets and grid.
  Returns:
    a JSON-ready report (per level the chosen thresholds and their validation numbers, each
    member's rule, and the validation reports (`metrics.report`) of the calibrated scorer and of
    argmax, with clean-document false-positive rates), and the curves to plot.
  """
  config = config or CalibrationConfig()
  members = members_of(scorer)
  truth = np.array([e.score for e in examples], np.int32)
  sources = np.array([e.source for e in examples])
  windows = [DocumentWindows.of(m, [e.text for e in examples]) for m in members]
  clean_windows = [DocumentWindows.of(m, [e.text for e in clean_documents]) for m in members]
  tails, clean_tails = [w.tails() for w in windows], [w.tails() for w in clean_windows]

  def flags_after(result: LevelResult, flagged: np.ndarray, clean_flagged: np.ndarray):
    """The documents flagged once `result`'s level is decided too."""
    flagged, clean_flagged = flagged.copy(), clean_flagged.copy()
    for j, t in enumerate(result.thresholds):
      flagged |= tails[j][:, result.level] >= t
      clean_flagged |= clean_tails[j][:, result.level] >= t
    return flagged, clean_flagged

  def plan(targets: Sequence[LevelTarget], flagged: np.ndarray, clean_flagged: np.ndarray) -> list[LevelResult]:
    """The choices for `targets` (highest level first), each looking ahead (module docstring)."""
    target, below = targets[0], targets[1:]
    in_target = np.isin(sources, target.sources) if target.sources else np.ones(len(truth), bool)
    options = level_options(tails, clean_tails, truth, target, in_target, flagged, clean_flagged,
                            config.candidates, count=config.lookahead if below else 1)
    if options[0].outcome != "targets met":  # then no plan meets every target: stay greedy
      options = options[:1]
    greedy = None
    for option in options:
      results = [option] + (plan(below, *flags_after(option, flagged, clean_flagged)) if below else [])
      if all(r.outcome == "targets met" for r in results):
        return results
      greedy = greedy or results
    return greedy

  results = plan(config.targets, np.zeros(len(truth), bool), np.zeros(len(clean_documents), bool))
  calibrated: list[dict[int, float]] = [{} for _ in members]
  for result in results:
    for j, t in enumerate(result.thresholds):
      calibrated[j][result.level] = t
  levels = [{**dataclasses.asdict(target), **dataclasses.asdict(result)}
            for target, result in zip(config.targets, results)]
  rules = [derive_rule(c) for c in calibrated]

  def validation_report(member_rules: Sequence[DecisionRule]) -> dict:
    """The ensemble's (or scorer's) numbers when its members decide by `member_rules`."""
    scores = np.max([w.scores(r) for w, r in zip(windows, member_rules)], axis=0)
    clean = np.max([w.scores(r) for w, r in zip(clean_windows, member_rules)], axis=0)
    report = {"all": metrics.report(truth, scores)}
    for source in sorted({s for t in config.targets for s in t.sources}):
      report[source] = metrics.report(truth[sources == source], scores[sources == source])
    report["clean_fpr"] = {f"at_{k}": float(np.mean(clean >= k)) if len(clean) else None for k in (1, 3)}
    return report

  report = {
      "levels": levels,
      "rules": {f"{j}:{m.name}": r.to_json() for j, (m, r) in enumerate(zip(members, rules))},
      "validation": {"calibrated": validation_report(rules),
                     "argmax": validation_report([ARGMAX] * len(members))},
      "sizes": {"examples": len(examples), "clean_documents": len(clean_documents)},
  }
  for m, r in zip(members, rules):
    m.decision_rule = r
  return report, Curves([m.name for m in members], tails, clean_tails, truth, sources)


def plot_calibration(report: dict, curves: Curves, path: str | Path) -> None:
  """Per calibrated level, each member's precision-recall curve on its target examples (a
  threshold sweep), the clean-document false-positive rate along it, and the chosen point."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  levels = report["levels"]
  fig, axes = plt.subplots(1, len(levels), figsize=(5.2 * len(levels), 4.4), squeeze=False)
  for ax, level in zip(axes[0], levels):
    k = level["level"]
    in_target = np.isin(curves.sources, level["sources"]) if level["sources"] else np.ones(len(curves.truth), bool)
    positive = curves.truth[in_target] >= k
    for name, tails, clean in zip(curves.members, curves.tails, curves.clean_tails):
      stat = tails[in_target, k]
      order = np.argsort(-stat, kind="stable")
      tp = np.cumsum(positive[order])
      recall, precision = tp / positive.sum(), tp / np.arange(1, len(stat) + 1)
      ax.plot(recall, precision, label=f"{name}: precision")
      if len(clean):
        fpr = (clean[None, :, k] >= stat[order][:, None]).mean(1)
        ax.plot(recall, fpr, linestyle=":", label=f"{name}: clean-document FPR")
    ax.scatter([level["recall"]], [level["precision"]], color="black", zorder=3, label="chosen (ensemble)")
    ax.axvline(level["min_recall"], color="grey", linewidth=0.8)
    ax.axhline(level["min_precision"], color="grey", linewidth=0.8)
    ax.set_xlabel(f"recall of score >= {k}")
    ax.set_ylim(0, 1.02)
    where = ", ".join(level["sources"]) or "all validation"
    ax.set_title(f"score >= {k} on {where}: {level['outcome']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report_table(report: dict) -> str:
  """Markdown: the chosen thresholds per level, then validation numbers under argmax and under the
  calibrated rules."""
  members = list(report["rules"])
  lines = ["## decision thresholds (chosen on validation)", "",
           "| level | measured on | targets: recall, precision, clean FPR | "
           + " | ".join(f"t ({m})" for m in members) + " | recall | precision | clean FPR | outcome | rank |",
           "|---|---|---|" + "---|" * len(members) + "---|---|---|---|---|"]
  for level in report["levels"]:
    lines.append(
        f"| >= {level['level']} | {', '.join(level['sources']) or 'all'} | {level['min_recall']:.2f}, "
        f"{level['min_precision']:.2f}, {level['max_clean_fpr']:.2f} | "
        + " | ".join(f"{t:.4g}" for t in level["thresholds"])
        + f" | {level['recall']:.3f} | {level['precision']:.3f} | {level['clean_fpr']:.3f} | {level['outcome']} "
        f"| {level.get('rank', 0)} |")
  sources = [k for k in report["validation"]["calibrated"] if k not in ("all", "clean_fpr")]
  lines += ["", "## validation", "",
            "| rule | macro-F1 | recall >=1 | precision >=1 | recall >=3 | precision >=3 | "
            + "".join(f"{s} recall >=1 | {s} precision >=1 | " for s in sources)
            + "clean FPR >=1 | clean FPR >=3 |",
            "|---|---|---|---|---|---|" + "---|---|" * len(sources) + "---|---|"]
  fmt = lambda x: "-" if x is None or x != x else f"{x:.3f}"
  for rule, v in report["validation"].items():
    row = [rule, v["all"]["macro_f1"], v["all"]["at_1"]["recall"], v["all"]["at_1"]["precision"],
           v["all"]["at_3"]["recall"], v["all"]["at_3"]["precision"]]
    for s in sources:
      row += [v[s]["at_1"]["recall"], v[s]["at_1"]["precision"]]
    row += [v["clean_fpr"]["at_1"], v["clean_fpr"]["at_3"]]
    lines.append("| " + " | ".join([row[0]] + [fmt(x) for x in row[1:]]) + " |")
  return "\n".join(lines)
