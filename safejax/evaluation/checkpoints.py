"""`safejax eval`: safejax checkpoints as evaluation systems, each with several decodings.

  safejax eval --gin.eval_checkpoints.checkpoints="{'raw': '/tmp/raw', 'safe': '/tmp/safe'}" \
    --gin.eval_checkpoints.out_dir="'/tmp/report'" --gin.EvalConfig.data_dir="'../shared/data'"

Every checkpoint becomes one `System` per decoding (default: beam search and SafeBeam with the
same beam size), sharing one `LoglikelihoodModel`, so capability, perplexity and the tag detector are
computed once per checkpoint. What is measured (benchmarks, judges, subsampling) is `EvalConfig`'s,
bound in gin.
"""

from __future__ import annotations

from collections.abc import Mapping

import gin

from safejax import decoding as decoding_lib
from safejax.evaluation import run as run_lib
from safejax.evaluation.loglikelihood import LoglikelihoodModel
from safejax.evaluation.tag_detector import tag_scores
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
  stop_id = vocab.token_id(END_OF_TURN) if prompt_style == "chat" else None
  systems = []
  for name, config in decodings.items():

    def generate(prompts, config=config):
      return [g.text for g in decoding_lib.generate_texts(model, vocab, prompts, config, batch_size=batch_size,
                                                          stop_id=stop_id)]

    systems.append(run_lib.System(label=f"{label}/{name}", generate=generate, loglikelihood=loglikelihood,
                                  tag_probability=tag_probability, model=label, stage=stage, decoding=name,
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
