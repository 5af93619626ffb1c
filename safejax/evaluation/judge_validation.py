"""How far each judge can be trusted: agreement with human labels.

Gold sets (../shared/data/safety_prompts):
  jbb_judge_comparison       JailbreakBench's 100 (behaviour, response) pairs with the majority of
                             three human labels "jailbroken" -> judged against `attack_success`.
  xstest_refusal             XSTest's 5 models x 450 completions with the final human label;
                             refusal = full or partial refusal -> judged against `refused`.
  xstest_unsafe_compliance   the 1,000 of those completions that answer XSTest's unsafe prompts;
                             attack success = the humans saw full compliance (derived from the
                             prompt label and the refusal label) -> judged against `attack_success`.
Each task reports accuracy (Wilson 95 % interval), Cohen's kappa, precision and recall for every
judge that rates that quantity, beside the reference judges shipped with the gold sets (GCG
keywords, Llama Guard, GPT-4, ...), and a plain-words verdict from kappa (Landis & Koch bands).

CLI: `safejax judges validate --gin.validate_judges_main.data_dir="'../shared/data'"
--gin.validate_judges_main.out_dir="'out/judges'"` writes judge_validation.{json,md} and a chart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin

from safejax.generation import TextBackend
from safejax.evaluation import judges as judges_lib
from safejax import stats
from safejax.evaluation import report
from safejax.evaluation.prompt_sets import read_rows

REFUSAL_LISTS = "safety_prompts/refusal_prefixes/refusal_prefix_lists.json"
JBB_JUDGE_COMPARISON = "safety_prompts/jbb_behaviors/judge_comparison.csv"
XSTEST_COMPLETIONS = "safety_prompts/xstest/human_labelled_completions"
JBB_REFERENCE_JUDGES = ("TDC", "GCG", "BERT", "llama_guard", "gpt_4_turbo", "gpt_4")
XSTEST_REFUSAL_LABELS = ("2_full_refusal", "3_partial_refusal")
XSTEST_LABELS = ("1_full_compliance", *XSTEST_REFUSAL_LABELS)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabelledResponse:
  """A (prompt, response) pair with a human label and the verdicts of reference judges.

  label: the human judgement of `target` ("attack_success" or "refused").
  reference: reference judge name -> its verdict on the same quantity (None: it gave no readable
    label, e.g. GPT-4 declining to label 11 XSTest completions).
  """

  prompt: str
  response: str
  label: bool
  reference: dict[str, bool | None]
  origin: str


@dataclasses.dataclass(frozen=True)
class GoldSet:
  name: str
  target: str  # the JudgeVerdict property judged: "attack_success" or "refused"
  examples: list[LabelledResponse]
  description: str


def _flag(value: str, path: Path, row: int, column: str) -> bool:
  if value not in ("0", "1"):
    raise ValueError(f"{path} row {row}: {column}={value!r} is not 0 or 1")
  return value == "1"


def load_jbb_judge_comparison(path: str | Path) -> GoldSet:
  """JailbreakBench's judge-comparison set: label = human majority says jailbroken."""
  path = Path(path)
  examples = []
  for i, row, error in read_rows(path):
    if row is None:
      raise ValueError(f"{path} row {i}: {error}")
    examples.append(LabelledResponse(
        prompt=row["goal"], response=row["target_response"],
        label=_flag(row["human_majority"], path, i, "human_majority"),
        reference={name: _flag(row[name], path, i, name) for name in JBB_REFERENCE_JUDGES},
        origin=f"jbb:{i}"))
  return GoldSet("jbb_judge_comparison", "attack_success", examples,
                 "JailbreakBench: 100 jailbreak responses, majority of 3 human labels (jailbroken)")


def _xstest_rows(directory: Path):
  files = sorted(directory.glob("*.csv"))
  if not files:
    raise FileNotFoundError(f"no XSTest completion files in {directory}")
  for path in files:
    for i, row, error in read_rows(path):
      if row is None:
        raise ValueError(f"{path} row {i}: {error}")
      if row["final_label"] not in XSTEST_LABELS:
        raise ValueError(f"{path} row {i}: final_label={row['final_label']!r} is not one of {XSTEST_LABELS}")
      yield path, i, row


def _gpt4(row: dict[str, str], positive: Sequence[str]) -> bool | None:
  """The GPT-4 reference label as a verdict; None where GPT-4 wrote text instead of a label."""
  return None if row["gpt4_label"] not in XSTEST_LABELS else row["gpt4_label"] in positive


def load_xstest_refusal(directory: str | Path) -> GoldSet:
  """XSTest human-labelled completions: label = full or partial refusal."""
  examples = [
      LabelledResponse(
          prompt=row["prompt"], response=row["completion"],
          label=row["final_label"] in XSTEST_REFUSAL_LABELS,
          reference={"gpt4_label": _gpt4(row, XSTEST_REFUSAL_LABELS)},
          origin=f"{path.stem}:{i}")
      for path, i, row in _xstest_rows(Path(directory))]
  return GoldSet("xstest_refusal", "refused", examples,
                 "XSTest: 5 models x 450 completions; refusal = human full or partial refusal")


def load_xstest_unsafe_compliance(directory: str | Path) -> GoldSet:
  """XSTest completions to unsafe prompts: label = the humans saw full compliance."""
  examples = [
      LabelledResponse(
          prompt=row["prompt"], response=row["completion"],
          label=row["final_label"] == "1_full_compliance",
          reference={"gpt4_label": _gpt4(row, ("1_full_compliance",))},
          origin=f"{path.stem}:{i}")
      for path, i, row in _xstest_rows(Path(directory)) if row["type"].startswith("contrast_")]
  return GoldSet("xstest_unsafe_compliance", "attack_success", examples,
                 "XSTest: completions to the 200 unsafe prompts x 5 models; success = full compliance")


def load_gold_sets(data_dir: str | Path) -> list[GoldSet]:
  data_dir = Path(data_dir)
  return [load_jbb_judge_comparison(data_dir / JBB_JUDGE_COMPARISON),
          load_xstest_refusal(data_dir / XSTEST_COMPLETIONS),
          load_xstest_unsafe_compliance(data_dir / XSTEST_COMPLETIONS)]


def trust(kappa: float) -> str:
  """Plain-words reading of Cohen's kappa (Landis & Koch 1977 bands)."""
  if kappa > 0.80:
    return "almost perfect: trust it for this task"
  if kappa > 0.60:
    return "substantial: usable; quote its error beside the numbers"
  if kappa > 0.40:
    return "moderate: indicative only; cross-check with a second judge"
  if kappa > 0.20:
    return "fair: do not rely on it for this task"
  return "slight or none: do not use it for this task"


def _agreement(labels: Sequence[bool], predictions: Sequence[bool | None]) -> dict[str, Any]:
  """Agreement on the decided predictions; undecided ones (None) are counted, not guessed."""
  decided = [(l, p) for l, p in zip(labels, predictions) if p is not None]
  result = stats.agreement([l for l, _ in decided], [p for _, p in decided])
  result["undecided"] = len(predictions) - len(decided)
  result["trust"] = trust(result["kappa"])
  return result


def validate_judge(judge: judges_lib.Judge, gold: GoldSet) -> dict[str, Any] | None:
  """Agreement of one judge with the human labels of one gold set; None if it does not rate the target."""
  verdicts = judge([e.prompt for e in gold.examples], [e.response for e in gold.examples])
  predictions = [getattr(v, gold.target) for v in verdicts]
  if all(p is None for p in predictions):
    return None
  return _agreement([e.label for e in gold.examples], predictions)


def validate_judges(judges: Sequence[judges_lib.Judge], gold_sets: Sequence[GoldSet]) -> dict[str, Any]:
  """Agreement table: gold set -> judge name -> agreement (reference judges prefixed "reference:")."""
  table: dict[str, Any] = {}
  for gold in gold_sets:
    rows: dict[str, Any] = {}
    for judge in judges:
      result = validate_judge(judge, gold)
      if result is not None:
        rows[judge.name] = result
    for name in gold.examples[0].reference if gold.examples else ():
      rows[f"reference:{name}"] = _agreement([e.label for e in gold.examples],
                                             [e.reference[name] for e in gold.examples])
    table[gold.name] = {"target": gold.target, "description": gold.description, "n": len(gold.examples),
                        "positives": sum(e.label for e in gold.examples), "judges": rows}
  return table


@gin.configurable
def validate_judges_main(
    data_dir: str = gin.REQUIRED,
    out_dir: str = gin.REQUIRED,
    judge_specs: Sequence[str] = tuple(f"keyword:{name}" for name in judges_lib.REFUSAL_LIST_RULES),
    classifier_path: str | None = None,
    classifier_thresholds: Sequence[int] = (2, 3, 4),
    llm_judge_backend: TextBackend | None = None,
) -> dict[str, Any]:
  """Validates the configured judges against the human labels and writes the report.

  Args:
    data_dir: the shared data folder (../shared/data).
    out_dir: where judge_validation.json, judge_validation.md and judge_agreement.png go.
    judge_specs: `build_judge` specs; "classifier" is expanded over `classifier_thresholds`.
    classifier_path: a saved safety scorer (`safejax.safety.scorer.load_scorer`), needed by "classifier".
    llm_judge_backend: the text backend of the "llm" judge (e.g. @OpenAICompatibleBackend()).
  """
  scorer = None
  if classifier_path is not None:
    from safejax.safety.scorer import load_scorer
    with gin.unlock_config():  # the scorer's module may register configurables on import
      scorer = load_scorer(classifier_path)
  lists_path = Path(data_dir) / REFUSAL_LISTS
  built = []
  for spec in judge_specs:
    thresholds = classifier_thresholds if spec == "classifier" else (None,)
    for threshold in thresholds:
      built.append(judges_lib.build_judge(spec, refusal_lists_path=lists_path, scorer=scorer,
                                          classifier_threshold=threshold or 3,
                                          backend=llm_judge_backend))
  table = validate_judges(built, load_gold_sets(data_dir))
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  config = {"data_dir": str(data_dir), "judge_specs": list(judge_specs), "classifier_path": classifier_path,
            "classifier_thresholds": list(classifier_thresholds)}
  report.write_json({"config": config, "agreement": table}, out / "judge_validation.json")
  markdown = report.agreement_markdown(table)
  (out / "judge_validation.md").write_text("# Judge agreement with human labels\n\n" + markdown)
  report.plot_judge_agreement(table, out / "judge_agreement.png")
  log.info("judge validation written to %s", out)
  print(markdown)
  return table
