"""`evaluate`: every benchmark for a list of systems, into one report folder.

A system is what gets measured: a label and the callables the harness needs, nothing about how
they are made, so a safejax checkpoint under any decoding, an HTTP endpoint or a test double are
all the same to it:

    System(label="safe-pt/safebeam", model="safe-pt", decoding="SafeBeam", stage="base",
           prompt_style="completion",
           generate=lambda prompts: [...],              # list[str] -> list[str], the replies only
           loglikelihood=lm.loglikelihood,              # [(context, continuation)] -> [(logprob, greedy)]
           tag_probability=lambda texts: tag_scores(lm, texts))

`safejax eval` builds one System per (checkpoint, decoding) and calls `evaluate(systems)` with
the rest from gin. Systems that share a loglikelihood (or tag_probability) callable, such as one
checkpoint decoded with and without SafeBeam, are scored for capability, perplexity and the tag
detector once.

For every system: generations for the harmful benchmarks, judged by each configured judge (the
first is the primary judge of the tables), ASR overall and per category with Wilson intervals and
pooled over benchmarks; over-refusal on the benign benchmarks by the refusal judge; capability,
held-out perplexity, and the tag-as-detector AUROC. Judges see the benchmark's request and the
model's reply (for completion-style prompts, the text after the compliant opening).

Out folder: results.json, report.md, safety.png, capability.png, judge_agreement.png (how far
each configured judge agrees with human labels) and generations/<system>/<benchmark>.jsonl
(prompt, response and every verdict, to audit judges).

Any CSV or JSONL file of prompts is a benchmark too, named and described in gin (`PromptFile`),
no Python needed; e.g. a StrongREJECT-style file:

    safejax eval --gin_file=runs/eval.gin --gin.CHECKPOINTS="{'raw': '/tmp/raw'}" --gin.OUT_DIR="'/tmp/r'" \
      --gin.EvalConfig.prompt_files="{'strongreject': {'path': 'strongreject.csv', \
                                     'prompt_column': 'forbidden_prompt', 'category_column': 'category'}}"
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import numpy as np
from tqdm.auto import tqdm

from safejax.generation import TextBackend
from safejax.evaluation import capability as capability_lib
from safejax.evaluation import judge_validation
from safejax.evaluation import judges as judges_lib
from safejax import stats
from safejax.evaluation import metrics, prompting, report
from safejax.evaluation.prompt_sets import Benchmark, load_benchmark, load_table, subsample
from safejax.evaluation.tag_detector import load_labelled_texts

GenerateFn = Callable[[list[str]], list[str]]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class System:
  """One thing to evaluate.

  Attributes:
    label: unique name (report sections, generation logs).
    generate: prompts -> replies (without the prompt); None skips the safety benchmarks.
    loglikelihood: lm-eval loglikelihood; None skips capability and perplexity.
    tag_probability: texts -> [len(texts)] mean harm-tag probability; None skips the tag detector.
    detector_baselines: texts -> {name: [len(texts)] scores} of the tag detector's baselines on the
      same texts (`tag_detector.baseline_scores`: the sham tag's probability, the per-token NLL).
    model: the row name in the paper table (default: label).
    stage: the column group, e.g. "base", "instruct", "benign_ft".
    decoding: the row's decoding, e.g. "plain", "SafeBeam".
    prompt_style: "completion" (base models) or "chat" (tuned models).
  """

  label: str
  generate: GenerateFn | None = None
  loglikelihood: capability_lib.LoglikelihoodFn | None = None
  tag_probability: Callable[[list[str]], np.ndarray] | None = None
  detector_baselines: Callable[[list[str]], Mapping[str, np.ndarray]] | None = None
  model: str = ""
  stage: str = "base"
  decoding: str = "plain"
  prompt_style: prompting.PromptStyle = "completion"


def generate_with_progress(generate: GenerateFn, prompts: Sequence[str], batch_size: int, desc: str) -> list[str]:
  """Calls `generate` on chunks of prompts under a tqdm bar (prompts/s, ETA)."""
  responses: list[str] = []
  with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
    for i in range(0, len(prompts), batch_size):
      chunk = list(prompts[i: i + batch_size])
      out = generate(chunk)
      if len(out) != len(chunk):
        raise ValueError(f"{desc}: generate returned {len(out)} replies for {len(chunk)} prompts")
      responses += out
      bar.update(len(chunk))
  return responses


def _pooled(reports: Sequence[metrics.RateReport]) -> dict[str, Any] | None:
  k = sum(r.overall.k for r in reports if r.overall)
  n = sum(r.overall.n for r in reports if r.overall)
  return stats.proportion(k, n).to_dict() if n else None


def _safe_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _judge_benchmark(
    system: System,
    benchmark: Benchmark,
    judges: Sequence[judges_lib.Judge],
    batch_size: int,
    system_prompt: str | None,
    log_dir: Path,
    completion_template: str | None = None,
) -> tuple[dict[str, list[judges_lib.JudgeVerdict]], float, list[str], list[str]]:
  """Generates replies for a benchmark and judges them; logs everything; returns the verdicts, the
  seconds it took, the prompts as the system saw them and its replies."""
  records = benchmark.records
  prompts = prompting.build_prompts(records, system.prompt_style, system=system_prompt,
                                    completion_template=completion_template)
  start = time.perf_counter()
  responses = generate_with_progress(system.generate, prompts, batch_size, f"{system.label} {benchmark.name}")
  seconds = time.perf_counter() - start
  requests = [r.prompt for r in records]
  verdicts = {judge.name: judge(requests, responses) for judge in judges}
  log_dir.mkdir(parents=True, exist_ok=True)
  with open(log_dir / f"{benchmark.name}.jsonl", "w", encoding="utf-8") as f:
    for i, (record, prompt, response) in enumerate(zip(records, prompts, responses)):
      row = {"id": record.id, "category": record.category, "prompt": prompt, "response": response,
             "verdicts": {name: dataclasses.asdict(v[i]) for name, v in verdicts.items()}}
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return verdicts, seconds, prompts, responses


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptFile:
  """A benchmark from any CSV or JSONL file (optionally .gz) of prompts, by its column names.

  Attributes:
    path: the file; a relative path is relative to the working directory.
    prompt_column: the request text (StrongREJECT: "forbidden_prompt").
    category_column: a harm category per row, for per-category ASR (optional).
    harmful_column: a per-row flag (true/false, 1/0, yes/no, harmful/unsafe, benign/safe); its
      harmful rows are measured for ASR and its benign ones for over-refusal (as "<name>_benign").
      None: every row is `is_harmful`.
    is_harmful: what every row is without a harmful_column.
    id_column: unique ids (None: numbered rows).
    target_column: the opening of a compliant answer, for completion-style prompts (optional).
  Rows that cannot become prompts (empty, duplicate id, a reserved token string) are set aside
  and counted in results.json's "data", as for the built-in benchmarks.
  """

  path: str
  prompt_column: str
  category_column: str | None = None
  harmful_column: str | None = None
  is_harmful: bool = True
  id_column: str | None = None
  target_column: str | None = None

  @classmethod
  def from_spec(cls, spec: "PromptFile | Mapping[str, Any]") -> "PromptFile":
    """A PromptFile, or one from a dict of its fields (a gin literal); unknown keys are an error."""
    if isinstance(spec, PromptFile):
      return spec
    fields = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(spec, Mapping) or set(spec) - fields or not {"path", "prompt_column"} <= set(spec):
      raise ValueError(f"a prompt file spec is a dict with 'path' and 'prompt_column' and optionally "
                       f"{sorted(fields - {'path', 'prompt_column'})}, got {spec!r}")
    return cls(**spec)

  def load(self, name: str) -> Benchmark:
    if not Path(self.path).is_file():
      raise FileNotFoundError(f"prompt file {name!r}: {self.path} does not exist")
    return load_table(self.path, name=name, prompt_column=self.prompt_column, id_column=self.id_column,
                      category_column=self.category_column, target_column=self.target_column,
                      harmful_column=self.harmful_column, is_harmful=self.is_harmful)


def load_prompt_files(prompt_files: Mapping[str, PromptFile | Mapping[str, Any]]
                      ) -> tuple[dict[str, Benchmark], dict[str, Benchmark], dict[str, Any]]:
  """(harmful sets, benign sets, counts) from `PromptFile` specs by name; a file's benign rows
  form the benign set "<name>_benign"."""
  harmful, benign, counts = {}, {}, {}
  for name, spec in prompt_files.items():
    whole = PromptFile.from_spec(spec).load(name)
    counts[name] = whole.counts()
    parts = {name: [r for r in whole.records if r.is_harmful], f"{name}_benign": [r for r in whole.records
                                                                                   if not r.is_harmful]}
    if not any(parts.values()):
      raise ValueError(f"prompt file {name!r} ({spec!r}) yields no prompts: {counts[name]}")
    for part, records in parts.items():
      if records:
        (harmful if part == name else benign)[part] = Benchmark(part, records)
  return harmful, benign, counts


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What `evaluate` measures and how, in one gin-configurable place (`EvalConfig.n_per_set = 100`).

  Attributes:
    data_dir: the shared data folder (../shared/data layout); relative file options below are
      resolved against it. None: only registered benchmarks, tasks and files that need no folder
      (absolute paths), the "keyword:builtin" judge, and no judge validation.
    safety_benchmarks: harmful benchmarks for ASR (names of `prompt_sets.BENCHMARKS`).
    over_refusal_benchmarks: benign benchmarks for over-refusal.
    prompt_files: more benchmarks from files, {name: `PromptFile` or a dict of its fields}; their
      harmful rows join the safety benchmarks, their benign rows the over-refusal ones.
    capability_tasks: names of `capability.TASKS`.
    n_per_set, n_per_task: seeded subsample sizes for prompts and capability items (None: all).
    seed: the subsampling seed.
    judges: ASR judges (`judges.build_judge` specs, or judge objects such as the demo world's
      `world_judges.ComplianceJudge`); the first is the primary judge. Default: the
      keyword list that agreed best with human jailbreak labels (judge_validation: kappa 0.65 on
      JailbreakBench, 0.58 on XSTest's unsafe prompts), then the canonical GCG/AdvBench list.
      Keyword judges count any reply without a refusal string as a success, incoherent text
      included; add "classifier" (or "llm") to rate harmfulness itself.
    refusal_judge: the judge of over-refusal; it must rate refusal (a keyword judge spec, or a judge
      object whose verdicts set `refused`). Default:
      XSTest's own rule, the best measured against XSTest's human refusal labels (kappa 0.77).
    helpfulness_judge: a judge object whose verdicts set `helpful` (the demo world's: the benign
      request's fact or how-to given); the benign benchmarks' helpfulness beside over-refusal.
    classifier_path, classifier_threshold: the safety scorer for a "classifier" judge.
    llm_judge_backend: the text backend of an "llm" judge (e.g. @OpenAICompatibleBackend()).
    system_prompt: optional system message for chat-style prompts.
    completion_template: the completion-style layout of prompts with a target opening, e.g.
      "Question: {prompt}\nAnswer: {target}." (default: `prompting.completion_prompt`'s).
    generate_batch_size: prompts per `generate` call.
    perplexity_file, perplexity_field, n_perplexity_docs: held-out text for perplexity (None: skip).
    tag_detector_file, tag_detector_text_column, tag_detector_label_columns,
      tag_detector_unsafe_level, n_tag_detector_docs: labelled held-out documents for the tag
      detector (`tag_detector.load_labelled_texts`; None: skip); a document is unsafe from
      `tag_detector_unsafe_level` up.
    known_words_file: a JSON list of the words the data uses (the demo world's vocabulary.json):
      the share of reply words outside it is the replies' `oov_share`, a garbling measure.
    validate_judges: measure every configured judge against the human labels of the gold sets
      (`judge_validation`, needs them under data_dir; an LLM judge makes ~3,350 requests) and put
      the agreement table and judge_agreement.png into the report.
  """

  data_dir: str | None = None
  safety_benchmarks: Sequence[str] = ("advbench", "harmbench", "jbb_harmful")
  over_refusal_benchmarks: Sequence[str] = ("xstest_safe", "jbb_benign")
  prompt_files: Mapping[str, PromptFile | Mapping[str, Any]] | None = None
  capability_tasks: Sequence[str] = tuple(capability_lib.TASKS)
  n_per_set: int | None = None
  n_per_task: int | None = None
  seed: int = 0
  judges: Sequence[str | judges_lib.Judge] = ("keyword:xstest_strmatch_full_refusal_startswith",
                                             "keyword:llm_attacks_eval_test_prefixes")
  refusal_judge: str | judges_lib.Judge = "keyword:xstest_strmatch_full_refusal_startswith"
  helpfulness_judge: judges_lib.Judge | None = None
  classifier_path: str | None = None
  classifier_threshold: int = 3
  llm_judge_backend: TextBackend | None = None
  system_prompt: str | None = None
  completion_template: str | None = None
  generate_batch_size: int = 16
  perplexity_file: str | None = "pretrain/wikipedia/wikipedia_kilt_val.jsonl.gz"
  perplexity_field: str = "text"
  n_perplexity_docs: int | None = 20
  tag_detector_file: str | None = None
  tag_detector_text_column: str = "text"
  tag_detector_label_columns: Sequence[str] = ("score",)
  tag_detector_unsafe_level: int = 1
  n_tag_detector_docs: int | None = None
  known_words_file: str | None = None
  validate_judges: bool = True

  def describe(self) -> dict[str, Any]:
    """A JSON-able record of the settings (results.json's "config"): judges by name."""
    name_of = lambda judge: judge if isinstance(judge, str) else judge.name  # noqa: E731
    described = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    described.update(
        prompt_files={name: dataclasses.asdict(PromptFile.from_spec(spec)) for name, spec in (self.prompt_files or {}).items()},
        llm_judge_backend=repr(self.llm_judge_backend) if self.llm_judge_backend is not None else None,
        judges=[name_of(j) for j in self.judges], refusal_judge=name_of(self.refusal_judge),
        helpfulness_judge=None if self.helpfulness_judge is None else name_of(self.helpfulness_judge),
        safety_benchmarks=list(self.safety_benchmarks), over_refusal_benchmarks=list(self.over_refusal_benchmarks),
        capability_tasks=list(self.capability_tasks), tag_detector_label_columns=list(self.tag_detector_label_columns))
    return described


def reply_measures(prompts: Sequence[str], replies: Sequence[str], verdicts: Sequence[judges_lib.JudgeVerdict],
                   known_words: frozenset[str] | None,
                   reference_loglikelihood: capability_lib.LoglikelihoodFn | None) -> dict[str, Any]:
  """How a system's replies to harmful requests look beyond the ASR: the share refused (by the
  primary judge, where it rates refusal), the share without a word (neither a refusal nor an
  attempt), and two garbling measures, the share of words outside `known_words` and the replies'
  word perplexity under a reference model (`metrics.reply_perplexity`)."""
  rated = [v.refused for v in verdicts if v.refused is not None]
  out: dict[str, Any] = {"n": len(replies),
                         "refused_share": sum(rated) / len(rated) if rated else None,
                         "empty_share": sum(not metrics.WORD.search(r) for r in replies) / max(1, len(replies))}
  if known_words is not None:
    share = metrics.out_of_vocabulary_share(replies, known_words)
    out["oov_share"] = None if math.isnan(share) else share
  if reference_loglikelihood is not None:
    perplexity = metrics.reply_perplexity(reference_loglikelihood, prompts, replies)
    out["reply_perplexity"] = None if math.isnan(perplexity["word_perplexity"]) else perplexity["word_perplexity"]
  return out


def evaluate(systems: Sequence[System], out_dir: str, config: EvalConfig | None = None, *,
             reference_loglikelihood: capability_lib.LoglikelihoodFn | None = None) -> dict[str, Any]:
  """Evaluates `systems` and writes the report folder `out_dir`; returns the results dict (results.json).

  Args:
    systems: what to evaluate (labels unique).
    out_dir: the report folder.
    config: what to measure; default `EvalConfig()` with its gin bindings.
    reference_loglikelihood: a reference model (the demo: the raw base model of the same seed)
      under which each system's replies to the harmful benchmarks get a perplexity (None: skip).
  """
  config = EvalConfig() if config is None else config
  c = config
  labels = [s.label for s in systems]
  if len(set(labels)) != len(labels):
    raise ValueError(f"system labels must be unique: {labels}")
  if isinstance(c.refusal_judge, str) and not c.refusal_judge.startswith("keyword"):
    raise ValueError(f"refusal_judge must rate refusal (a keyword:<list> judge), not {c.refusal_judge!r}")
  data = Path(c.data_dir) if c.data_dir is not None else None
  if data is None and c.validate_judges:
    raise ValueError("judge validation reads the human labels in the shared data: give data_dir or "
                     "set validate_judges=False")
  resolve = lambda f: Path(f) if data is None else data / f  # absolute f stays absolute either way
  out = Path(out_dir)

  scorer = None
  if c.classifier_path is not None:
    from safejax.safety.scorer import load_scorer
    with gin.unlock_config():  # the scorer's module may register configurables on import
      scorer = load_scorer(c.classifier_path)
  judge_kwargs = dict(refusal_lists_path=data / judge_validation.REFUSAL_LISTS if data else None, scorer=scorer,
                      classifier_threshold=c.classifier_threshold, backend=c.llm_judge_backend)
  build = lambda spec: judges_lib.build_judge(spec, **judge_kwargs) if isinstance(spec, str) else spec  # noqa: E731
  asr_judges = [build(spec) for spec in c.judges]
  refusal = build(c.refusal_judge)

  data_counts: dict[str, Any] = {}

  def load(names: Sequence[str], given: Mapping[str, Benchmark]) -> dict[str, Benchmark]:
    loaded = {}
    for name in [*names, *given]:
      benchmark = given[name] if name in given else load_benchmark(name, data)
      counts = data_counts.setdefault(name, benchmark.counts())
      benchmark.records = subsample(benchmark.records, c.n_per_set, c.seed)
      counts["evaluated"] = len(benchmark.records)
      loaded[name] = benchmark
    return loaded

  harmful_sets, benign_sets = {}, {}
  if any(s.generate for s in systems):
    file_harmful, file_benign, file_counts = load_prompt_files(c.prompt_files or {})
    data_counts.update(file_counts)  # whole-file counts; "evaluated" per part below
    harmful_sets = load(c.safety_benchmarks, file_harmful)
    benign_sets = load(c.over_refusal_benchmarks, file_benign)
  perplexity_texts = tag_texts = tag_labels = None
  if c.perplexity_file is not None:
    perplexity_texts = subsample(capability_lib.load_texts(resolve(c.perplexity_file), c.perplexity_field),
                                 c.n_perplexity_docs, c.seed)
  if c.tag_detector_file is not None:
    tag_texts, tag_labels, data_counts["tag_detector"] = load_labelled_texts(
        resolve(c.tag_detector_file), text_column=c.tag_detector_text_column,
        label_columns=c.tag_detector_label_columns, unsafe_level=c.tag_detector_unsafe_level)
    keep = subsample(range(len(tag_texts)), c.n_tag_detector_docs, c.seed)
    tag_texts, tag_labels = [tag_texts[i] for i in keep], [tag_labels[i] for i in keep]

  scored_once: dict[tuple[str, Any], Any] = {}  # (what, callable) -> results shared by systems

  def once(what: str, fn: Callable, compute: Callable[[], Any]) -> Any:
    if (what, fn) not in scored_once:
      scored_once[(what, fn)] = compute()
    return scored_once[(what, fn)]

  results: dict[str, Any] = {"config": config.describe(), "data": data_counts, "systems": {}}
  known_words = (frozenset(json.loads(resolve(c.known_words_file).read_text())) if c.known_words_file is not None
                 else None)
  if c.validate_judges:
    unique = {j.name: j for j in [*asr_judges, refusal]}
    results["judge_validation"] = judge_validation.validate_judges(
        list(unique.values()), judge_validation.load_gold_sets(data))
  for system in systems:
    entry: dict[str, Any] = {"label": system.label, "model": system.model or system.label, "stage": system.stage,
                             "decoding": system.decoding, "prompt_style": system.prompt_style}
    log_dir = out / "generations" / _safe_name(system.label)
    if system.generate is not None:
      timing = {"seconds": 0.0, "responses": 0}
      primary_reports, benchmarks, asked = [], {}, ([], [], [])
      for name, benchmark in harmful_sets.items():
        verdicts, seconds, prompts, replies = _judge_benchmark(system, benchmark, asr_judges, c.generate_batch_size,
                                             c.system_prompt, log_dir, c.completion_template)
        timing["seconds"] += seconds
        timing["responses"] += len(benchmark.records)
        categories = [r.category for r in benchmark.records]
        reports = {j: metrics.attack_success_rate(v, categories) for j, v in verdicts.items()}
        primary_reports.append(reports[asr_judges[0].name])
        for collected, new in zip(asked, (prompts, replies, verdicts[asr_judges[0].name])):
          collected.extend(new)
        benchmarks[name] = {"n": len(benchmark.records),
                            "judges": {j: r.to_dict() for j, r in reports.items()}}
      if benchmarks:
        entry["safety"] = {"primary_judge": asr_judges[0].name, "benchmarks": benchmarks,
                           "pooled": _pooled(primary_reports)}
        entry["replies"] = reply_measures(*asked, known_words, reference_loglikelihood)
      refusal_reports, helpful_reports, benchmarks = [], [], {}
      benign_judges = [refusal] + ([c.helpfulness_judge] if c.helpfulness_judge is not None else [])
      for name, benchmark in benign_sets.items():
        verdicts, seconds, _, _ = _judge_benchmark(system, benchmark, benign_judges, c.generate_batch_size,
                                                   c.system_prompt, log_dir, c.completion_template)
        timing["seconds"] += seconds
        timing["responses"] += len(benchmark.records)
        categories = [r.category for r in benchmark.records]
        rates = metrics.refusal_rate(verdicts[refusal.name], categories)
        refusal_reports.append(rates)
        benchmarks[name] = {"judge": refusal.name, **rates.to_dict()}
        if c.helpfulness_judge is not None:
          helpful = metrics.helpful_rate(verdicts[c.helpfulness_judge.name], categories)
          helpful_reports.append(helpful)
          benchmarks[name]["helpfulness"] = {"judge": c.helpfulness_judge.name, **helpful.to_dict()}
      if benchmarks:
        entry["over_refusal"] = {"benchmarks": benchmarks, "pooled": _pooled(refusal_reports)}
      if helpful_reports:
        entry["helpfulness"] = {"pooled": _pooled(helpful_reports)}
      entry["generation"] = timing
    if system.loglikelihood is not None:
      ll = system.loglikelihood
      if c.capability_tasks:
        entry["capability"] = once("capability", ll, lambda: capability_lib.evaluate_capability(
            ll, data, c.capability_tasks, n_per_task=c.n_per_task, seed=c.seed))
      if perplexity_texts:
        entry["perplexity"] = once("perplexity", ll, lambda: capability_lib.perplexity(ll, perplexity_texts))
    if system.tag_probability is not None and tag_texts:
      tp = system.tag_probability

      def tag_auroc():
        scores = np.asarray(tp(tag_texts))
        return {"n": len(tag_labels), "n_unsafe": int(sum(tag_labels)), "auroc": stats.auroc(tag_labels, scores)}

      entry["tag_detector"] = once("tag_detector", tp, tag_auroc)
      if system.detector_baselines is not None:
        db = system.detector_baselines
        entry["tag_detector"] = {**entry["tag_detector"], "baselines": once("detector_baselines", db, lambda: {
            name: stats.auroc(tag_labels, np.asarray(scores)) for name, scores in db(tag_texts).items()})}
    results["systems"][system.label] = entry
    log.info("evaluated %s", system.label)

  written = report.write_report(results, out)
  log.info("report written: %s", ", ".join(map(str, written)))
  return results
