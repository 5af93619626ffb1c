"""Text in, text out: `DecodingConfig` (how to decode, bound in gin), `generate_texts` (what the
evaluation harness and the backends call) and `safejax decode`.

  safejax decode --gin.decode.checkpoint_dir="'/tmp/demo'" "Once upon a time" "The river"
  safejax decode --gin.decode.checkpoint_dir="'/tmp/demo'" --gin.decode.prompts_file="'prompts.txt'" \\
      --gin.DecodingConfig.method="'safebeam'" --gin.decode.output_file="'out.jsonl'"

A prompts file holds one prompt per line (.txt) or JSON objects with a "prompt" field (.jsonl).
Prompts are plain text: one holding a reserved token's string (the harm tag, a chat marker) is
refused, naming it (`reserved_tokens_in`).
Each generation is printed; with `output_file` every generation is also written as a JSON line
(prompt, text, num_tokens, score, finished, tag_stopped).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gin
from tqdm.auto import tqdm

from safejax import UserError
from safejax.decoding.runner import METHODS, detokenize, generate
from safejax.decoding.safebeam import RISK_RULES, RandomDropFilter
from safejax.decoding.search import SuppressToken
from safejax.model.llama import Decoder

from safejax.vocab import HARM_TAG, SHAM_TAG

if TYPE_CHECKING:
  from safejax.vocab import SafejaxVocabulary

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Text in, text out: what `safejax decode` and the evaluation harness call.


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How to decode, in one gin-configurable place (`safejax decode`, `safejax eval`).

  method: greedy | sample | beam | safebeam. temperature, top_k, top_p: sampling only.
  beam_size, alpha: beam and safebeam. num_expand, drop_fraction, tag_threshold: safebeam (the
  paper's N = 4 and half dropped live here, and only here).
  risk_rule: safebeam's risk of a candidate: "paper" (the lookahead tag probability) or "boundary"
  (the tag's share of the word boundaries there, dropping only above relative_threshold: by
  default half the pretraining tag rate, 0.05 / 2; see `harm_tag_filter`).
  steer_token: the reserved token SafeBeam (and the tag baselines below) steer by: the harm tag, or
  the sham tag (`SHAM_TAG`), its control of the same cost.
  candidate_rule: safebeam's drop rule: "tag" (the riskiest by lookahead tag probability) or
  "random" (`RandomDropFilter`, the placebo: the same share dropped at random, seeded by `seed`).
  The cheap harm-tag baselines, for every method: suppress_tag (mask the tag's logit),
  tag_penalty (subtract from it), tag_stop_threshold (sampling: stop a row when the model gives
  the tag more than this probability).
  """

  method: str = "greedy"
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  beam_size: int = 4
  alpha: float = 0.6
  num_expand: int = 4
  drop_fraction: float = 0.5
  tag_threshold: float | None = None
  risk_rule: str = "paper"
  relative_threshold: float = 0.025
  steer_token: str = HARM_TAG
  suppress_tag: bool = False
  tag_penalty: float = 0.0
  tag_stop_threshold: float | None = None
  candidate_rule: str = "tag"
  seed: int = 0

  def __post_init__(self):
    if self.method not in METHODS:
      raise UserError(f"unknown decoding method {self.method!r}; known: {', '.join(METHODS)}")
    if self.steer_token not in (HARM_TAG, SHAM_TAG):
      raise UserError(f"steer_token must be {HARM_TAG!r} or {SHAM_TAG!r}, got {self.steer_token!r}")
    if self.risk_rule not in RISK_RULES:
      raise UserError(f"risk_rule must be one of {RISK_RULES}, got {self.risk_rule!r}")
    if self.candidate_rule not in ("tag", "random"):
      raise UserError(f"candidate_rule must be 'tag' or 'random', got {self.candidate_rule!r}")
    if self.candidate_rule == "random" and self.tag_threshold is not None:
      raise UserError("the random (placebo) rule drops a share, not by threshold: leave tag_threshold None")
    if self.tag_stop_threshold is not None and self.method not in ("greedy", "sample"):
      raise UserError("tag_stop_threshold applies to greedy and sample; safebeam has tag_threshold")

  def generate_options(self, tag_id: int, word_start_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Keyword arguments of `generate` for this configuration (`word_start_ids`: the vocabulary's,
    for the boundary rule). Sampling knobs, tag_penalty and the tag thresholds are traced
    (`runner.TRACED`): every value shares one compiled program."""
    options: dict[str, Any] = {"method": self.method, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                               "tag_id": tag_id, "tag_penalty": self.tag_penalty}
    if self.suppress_tag:
      options["logits_processor"] = SuppressToken(tag_id)
    if self.method == "sample":
      options.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
    if self.method in ("greedy", "sample") and self.tag_stop_threshold is not None:
      options.update(tag_stop_threshold=self.tag_stop_threshold)
    if self.method in ("beam", "safebeam"):
      options.update(beam_size=self.beam_size, alpha=self.alpha)
    if self.method == "safebeam" and self.candidate_rule == "random":
      options.update(num_expand=self.num_expand, drop_fraction=0.0,
                     candidate_filter=RandomDropFilter(self.drop_fraction, self.seed))
    elif self.method == "safebeam":
      options.update(num_expand=self.num_expand, drop_fraction=self.drop_fraction, tag_threshold=self.tag_threshold)
      if self.risk_rule == "boundary":
        if not word_start_ids:
          raise UserError("the boundary rule needs the vocabulary's word_start_ids")
        options.update(risk_rule="boundary", word_start_ids=tuple(word_start_ids),
                       relative_threshold=self.relative_threshold)
    return options


@dataclasses.dataclass(frozen=True)
class DecodedText:
  """One prompt's best generation. text: reserved tokens (the harm tag) removed."""

  prompt: str
  text: str
  num_tokens: int
  score: float
  finished: bool
  tag_stopped: bool


def generate_texts(
    model: Decoder,
    vocab: SafejaxVocabulary,
    prompts: Sequence[str],
    config: DecodingConfig,
    *,
    batch_size: int = 8,
    progress: bool = True,
    stop_id: int | None = None,
) -> list[DecodedText]:
  """Decodes text prompts in batches of `batch_size` (the last one padded, so one compilation
  serves all); returns one `DecodedText` per prompt, in order.

  stop_id: the token that ends a generation (default EOS; chat replies end at END_OF_TURN).
  """
  # Start like every training document (see SafejaxVocabulary.decoder_start_id).
  encoded = [[vocab.decoder_start_id, *vocab.encode(prompt)] for prompt in prompts]
  options = config.generate_options(vocab.token_id(config.steer_token),
                                    vocab.word_start_ids() if config.risk_rule == "boundary" else ())
  generations = []
  with tqdm(total=len(prompts), desc=f"decode ({config.method})", unit="prompt", disable=not progress) as bar:
    for start in range(0, len(prompts), batch_size):
      batch = encoded[start:start + batch_size]
      filled = batch + [batch[0]] * (batch_size - len(batch))
      result = generate(model, filled, eos_id=vocab.eos_id if stop_id is None else stop_id, pad_id=vocab.pad_id,
                        **options)
      texts = detokenize(vocab, result)
      for row in range(len(batch)):
        generations.append(DecodedText(
            prompt=prompts[start + row], text=texts[row][0], num_tokens=int(result.lengths[row, 0]),
            score=float(result.scores[row, 0]), finished=bool(result.finished[row, 0]),
            tag_stopped=bool(result.tag_stopped[row, 0])))
      bar.update(len(batch))
  return generations



def reserved_tokens_in(vocab: SafejaxVocabulary, ids: Sequence[int]) -> list[str]:
  """The reserved tokens (harm tag, chat markers, control tokens) among `ids`, by name, in order
  of first appearance.

  The one policy for text from outside (a command line, a client of `safejax serve`): plain text
  never becomes a reserved id, so text whose encoding holds one is refused, naming them; a
  client that means to send reserved tokens sends token ids. Otherwise a relay of untrusted
  text could plant the harm tag or a role marker.
  """
  names = {token: name for name, token in vocab.special_ids.items()}
  return list(dict.fromkeys(names[token] for token in ids if token in names))


def read_prompts(path: str) -> list[str]:
  """Prompts of a .txt file (one per non-empty line) or a .jsonl file (a "prompt" per object)."""
  prompts = []
  with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is no part of the first prompt
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      if path.endswith(".jsonl"):
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise UserError(f"{path}:{line_number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
          raise UserError(f"{path}:{line_number}: needs a string field \"prompt\"")
        prompts.append(record["prompt"])
      else:
        prompts.append(line.rstrip("\n"))
  return prompts


@gin.configurable
def decode(
    checkpoint_dir: str = gin.REQUIRED,
    inputs: Sequence[str] = (),
    prompts_file: str | None = None,
    output_file: str | None = None,
    step: int | None = None,
    batch_size: int = 8,
    decoding: DecodingConfig | None = None,
) -> list[DecodedText]:
  """Loads the checkpoint (newest, or `step`) and its vocabulary, and decodes every prompt.

  Args:
    checkpoint_dir: a model directory written by `safejax train`.
    inputs: prompts given on the command line.
    prompts_file: more prompts (.txt, or .jsonl with a "prompt" field).
    output_file: where to write the generations as JSON lines.
    step: the checkpoint step (default: the newest).
    batch_size: prompts decoded together.
    decoding: how to decode; default `DecodingConfig()` with its gin bindings.
  Returns:
    One generation per prompt, command-line prompts first.
  """
  from safejax.checkpoints import load_for_inference
  from safejax.vocab import load_vocabulary

  prompts = list(inputs) + (read_prompts(prompts_file) if prompts_file else [])
  if not prompts:
    raise UserError("no prompts: give them as arguments or set decode.prompts_file")
  decoding = DecodingConfig() if decoding is None else decoding
  vocab = load_vocabulary(checkpoint_dir)
  for number, prompt in enumerate(prompts, 1):
    reserved = reserved_tokens_in(vocab, vocab.encode(prompt))
    if reserved:
      raise UserError(f"prompt {number} ({prompt[:60]!r}) holds reserved token string(s) {reserved}: plain text never "
                      "becomes reserved token ids (`safejax serve` takes token ids from a client that means them)")
  model, vocab = load_for_inference(checkpoint_dir, step)
  log.info("decoding %d prompts with %s", len(prompts), decoding)
  generations = generate_texts(model, vocab, prompts, decoding, batch_size=batch_size)
  for generation in generations:
    flags = "".join([" [eos]" if generation.finished else "", " [tag-stopped]" if generation.tag_stopped else ""])
    print(f">>> {generation.prompt}\n{generation.text}{flags}\n")
  if output_file:
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w") as f:
      for generation in generations:
        f.write(json.dumps(dataclasses.asdict(generation)) + "\n")
    log.info("wrote %d generations to %s", len(generations), output_file)
  return generations
