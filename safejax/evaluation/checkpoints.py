"""`safejax eval`: safejax checkpoints as evaluation systems, each with several decodings.

  safejax eval --gin.eval_checkpoints.checkpoints="{'raw': '/tmp/raw', 'safe': '/tmp/safe'}" \
    --gin.eval_checkpoints.out_dir="'/tmp/report'" --gin.EvalConfig.data_dir="'../shared/data'"

Every checkpoint becomes one `System` per decoding (default: beam search and SafeBeam with the
same beam size), sharing one `LoglikelihoodModel`, so capability, perplexity and the tag detector are
computed once per checkpoint. What is measured (benchmarks, judges, subsampling) is `EvalConfig`'s,
bound in gin.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from safejax import decoding as decoding_lib
from safejax.evaluation import judges as judges_lib
from safejax.evaluation import ladder, metrics, prompt_sets, prompting
from safejax.evaluation import run as run_lib
from safejax.evaluation.loglikelihood import LoglikelihoodModel
from safejax.evaluation.tag_detector import baseline_scores, tag_scores
from safejax.vocab import END_OF_TURN

# Beam search and SafeBeam with `DecodingConfig`'s beam size, expansion and drop fraction.
DEFAULT_DECODINGS = {
    "beam": decoding_lib.DecodingConfig(method="beam", max_new_tokens=64),
    "SafeBeam": decoding_lib.DecodingConfig(method="safebeam", max_new_tokens=64),
}


def checkpoint_systems(model_dir: str, label: str, decodings: Mapping[str, decoding_lib.DecodingConfig] = DEFAULT_DECODINGS,
                       *, stage: str = "base", prompt_style: str = "completion", max_length: int = 512,
                       batch_size: int = 16) -> list[run_lib.System]:
  """One System per decoding of the checkpoint in `model_dir` (labels "<label>/<decoding>").

  Chat-style systems stop their replies at END_OF_TURN, completion-style ones at EOS.
  """
  from safejax.checkpoints import load_for_inference

  model, vocab = load_for_inference(model_dir)
  lm = LoglikelihoodModel(model, vocab, max_length=max_length)
  loglikelihood = lm.loglikelihood  # one object for every system: scored once (see `evaluate`)
  tag_probability = lambda texts: tag_scores(lm, texts)
  baselines = lambda texts: baseline_scores(lm, texts)
  stop_id = vocab.token_id(END_OF_TURN) if prompt_style == "chat" else None
  systems = []
  for name, config in decodings.items():

    def generate(prompts, config=config):
      return [g.text for g in decoding_lib.generate_texts(model, vocab, prompts, config, batch_size=batch_size,
                                                          stop_id=stop_id)]

    systems.append(run_lib.System(label=f"{label}/{name}", generate=generate, loglikelihood=loglikelihood,
                                  tag_probability=tag_probability, detector_baselines=baselines, model=label,
                                  stage=stage, decoding=name,
                                  prompt_style=prompt_style))
  return systems


@gin.configurable
def eval_checkpoints(checkpoints: Mapping[str, str] = gin.REQUIRED,
                     out_dir: str = gin.REQUIRED,
                     decodings: Mapping[str, decoding_lib.DecodingConfig] = DEFAULT_DECODINGS,
                     stages: Mapping[str, str] | None = None, prompt_style: str = "completion",
                     max_length: int = 512, config: run_lib.EvalConfig | None = None) -> int:
  """Evaluates checkpoints ({label: model_dir}) under every decoding; writes evaluate's report to out_dir.

  config: what to measure; default `EvalConfig()` with its gin bindings (`EvalConfig.n_per_set`, ...).
  stages: {label: stage} for the paper table's column groups ("base", "instruct", "benign_ft");
  default "base" for every checkpoint.
  """
  systems = []
  for label, model_dir in checkpoints.items():
    stage = (stages or {}).get(label, "base")
    systems += checkpoint_systems(model_dir, label, decodings, stage=stage, prompt_style=prompt_style,
                                  max_length=max_length)
  run_lib.evaluate(systems, out_dir, config)
  return 0


def judged_replies(model_dir: str, prompts_file: str, decoding: decoding_lib.DecodingConfig, judge: judges_lib.Judge,
                   *, step: int | None = None, prompt_style: str = "completion", completion_template: str | None = None,
                   batch_size: int = 16) -> tuple[list[str], list[judges_lib.JudgeVerdict]]:
  """The replies of one checkpoint (the newest, or `step`) to the prompts of `prompts_file` (a jsonl
  with prompt, id, category, target) under `decoding`, and `judge`'s verdicts on them."""
  from safejax.checkpoints import load_for_inference

  records = prompt_sets.load_table(prompts_file, name="validation", prompt_column="prompt", id_column="id",
                                   category_column="category", target_column="target").records
  prompts = prompting.build_prompts(records, prompt_style, completion_template=completion_template)
  model, vocab = load_for_inference(model_dir, step)
  stop_id = vocab.token_id(END_OF_TURN) if prompt_style == "chat" else None
  replies = [g.text for g in decoding_lib.generate_texts(model, vocab, prompts, decoding, batch_size=batch_size,
                                                         stop_id=stop_id, progress=False)]
  return replies, judge([r.prompt for r in records], replies)


def reply_rates(replies: Sequence[str], verdicts: Sequence[judges_lib.JudgeVerdict]) -> dict[str, float]:
  """The shares of replies judged harmful (complied), refused, and without a word (empty)."""
  n = max(1, len(replies))
  return {"complied": sum(bool(v.harmful) for v in verdicts) / n, "refused": sum(bool(v.refused) for v in verdicts) / n,
          "empty": sum(not metrics.WORD.search(r) for r in replies) / n}


def choose_tau(model_dir: str, validation_prompts: str, safebeam: decoding_lib.DecodingConfig, *,
               grid: Sequence[float], judge: judges_lib.Judge, known_words: frozenset[str], max_garble: float,
               prompt_style: str = "completion", completion_template: str | None = None,
               batch_size: int = 16) -> dict[str, Any]:
  """SafeBeam's threshold tau for one checkpoint, chosen on validation prompts only
  (`ladder.choose_threshold`): each tau of `grid` decodes the prompts of `validation_prompts`,
  `judge` rates the replies and their share of words outside `known_words` measures garbling. When
  every tau garbles more than `max_garble`, the least garbling one is taken, and "rule" says so.
  """
  rates, garble = [], []
  for tau in grid:
    decoding = dataclasses.replace(safebeam, method="safebeam", drop_fraction=0.0, tag_threshold=tau)
    replies, verdicts = judged_replies(model_dir, validation_prompts, decoding, judge, prompt_style=prompt_style,
                                       completion_template=completion_template, batch_size=batch_size)
    rates.append(reply_rates(replies, verdicts)["complied"])
    share = metrics.out_of_vocabulary_share(replies, known_words)
    garble.append(0.0 if math.isnan(share) else share)
  try:
    return ladder.choose_threshold(grid, rates, garble, max_garble=max_garble)
  except ValueError:  # every tau garbles more than allowed: the least garbling one, and say so
    least = min(range(len(garble)), key=lambda i: (garble[i], rates[i]))
    return {"tau": float(grid[least]), "validation_rate": rates[least], "candidates": list(zip(grid, rates, garble)),
            "rule": f"no tau kept garbling <= {max_garble}: the least garbling one"}


def choose_risk_rule(model_dir: str, validation_prompts: str, safebeam: decoding_lib.DecodingConfig,
                     placebo: decoding_lib.DecodingConfig, *, judge: judges_lib.Judge, known_words: frozenset[str],
                     rules: Sequence[str] = ("boundary", "paper"), max_extra_garble: float = 0.02,
                     prompt_style: str = "completion", completion_template: str | None = None) -> dict[str, Any]:
  """SafeBeam's risk rule for a model, chosen on validation prompts only: among `rules` whose
  replies' share of unknown words is at most the placebo's plus `max_extra_garble`, the one with the
  lowest validation compliance (ties: the first); with none within, the least garbling one."""
  measured = {}
  for name, decoding in [*((rule, dataclasses.replace(safebeam, risk_rule=rule)) for rule in rules),
                         ("placebo", placebo)]:
    replies, verdicts = judged_replies(model_dir, validation_prompts, decoding, judge, prompt_style=prompt_style,
                                       completion_template=completion_template)
    share = metrics.out_of_vocabulary_share(replies, known_words)
    measured[name] = {**reply_rates(replies, verdicts), "oov_share": 0.0 if math.isnan(share) else share}
  limit = measured["placebo"]["oov_share"] + max_extra_garble
  within = [rule for rule in rules if measured[rule]["oov_share"] <= limit]
  if within:
    rule = min(within, key=lambda r: (measured[r]["complied"], rules.index(r)))
    why = f"lowest validation compliance among rules garbling at most the placebo + {max_extra_garble}"
  else:
    rule = min(rules, key=lambda r: measured[r]["oov_share"])
    why = f"no rule garbled within the placebo + {max_extra_garble}: the least garbling one"
  return {"rule": rule, "why": why, "measured": measured}
