"""Running a Flax `Decoder` through the search algorithms: the model adapter and the jit cache.

`cached_tokens_to_logits` is the `tokens_to_logits` of a split `Decoder` (KV cache);
`full_recompute_tokens_to_logits` with `TokenHistory` is the no-cache baseline. `generate` picks an
algorithm by name and returns host arrays. One program is compiled per method, structure (beam
size, which hooks) and shape; the knobs a client varies (temperature, top_k, top_p, tag_penalty,
the tag thresholds, the seed) are its arguments (`Settings`), so new values never compile.
`prepare` gives a call's program key and arguments without running it (the server compiles
programs on a thread of their own, `safejax.serve.engine`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct

from safejax.decoding.safebeam import safebeam
from safejax.decoding.search import (NEG_INF, DecodeResult, LogitsProcessor, TokensToLogits, beam_rows, beam_search,
                                     chain, left_pad, sample)
from safejax.model.llama import Decoder, KVCache, ModelConfig, keep_sibling_slots

if TYPE_CHECKING:  # importing the vocabulary pulls in seqio; decoding only needs its methods.
  from safejax.vocab import SafejaxVocabulary


# ------------------------------------------------------------------------------------------------
# The Flax decoder behind `tokens_to_logits`, and the no-KV-cache baseline.


def cached_tokens_to_logits(graphdef: nnx.GraphDef, state: nnx.State) -> TokensToLogits:
  """`tokens_to_logits` of a `Decoder` split into (graphdef, state), decoding with its KV cache.

  Build it inside the jitted function from a traced `state`, so the parameters are arguments of
  the compiled program rather than constants baked into it, and outside the decoding loop: the
  layers' parameters are split here, once per call.
  """

  layers = nnx.merge(graphdef, state).split_layers()  # sliced here, once, not at every step of the loop

  def tokens_to_logits(tokens, positions, cache, input_mask, siblings=False):
    return nnx.merge(graphdef, state)(tokens, positions, cache=cache, input_mask=input_mask, siblings=siblings,
                                      layers=layers)

  return tokens_to_logits


@struct.dataclass
class TokenHistory:
  """The no-KV-cache baseline's cache: every token so far, run through the whole model each step.

  tokens, positions: [R, S] int32; valid: [R, S] bool (False on padding and unwritten slots);
  index: [] int32, the next slot.
  """

  tokens: jax.Array
  positions: jax.Array
  valid: jax.Array
  index: jax.Array

  @classmethod
  def init(cls, rows: int, length: int) -> "TokenHistory":
    zeros = jnp.zeros((rows, length), jnp.int32)
    return cls(zeros, zeros, jnp.zeros((rows, length), bool), jnp.zeros((), jnp.int32))

  def gather_rows(self, rows: jax.Array) -> "TokenHistory":
    take = lambda x: jnp.take(x, rows, axis=0)
    return TokenHistory(take(self.tokens), take(self.positions), take(self.valid), self.index)

  def gather_beams(self, parents: jax.Array) -> "TokenHistory":
    return self.gather_rows(beam_rows(parents))

  def keep_sibling(self, choice: jax.Array, num_siblings: int) -> "TokenHistory":
    (tokens, positions), valid, index = keep_sibling_slots(
        (self.tokens, self.positions), self.valid, self.index, choice, num_siblings)
    return TokenHistory(tokens, positions, valid, index)


def full_recompute_tokens_to_logits(graphdef: nnx.GraphDef, state: nnx.State) -> TokensToLogits:
  """`tokens_to_logits` without a KV cache (pair it with `TokenHistory.init`): each call re-runs
  the model over the whole history, masking padding with segment ids; siblings run each in a
  copy of the history of its own. The reference the cached path must match, and the baseline of
  the decoding benchmark."""

  def tokens_to_logits(tokens, positions, history: TokenHistory, input_mask, siblings=False):
    rows, new = tokens.shape
    write = lambda buffer, values: jax.lax.dynamic_update_slice_in_dim(buffer, values, history.index, axis=1)
    history = TokenHistory(write(history.tokens, tokens), write(history.positions, positions),
                           write(history.valid, input_mask), history.index + new)
    model = nnx.merge(graphdef, state)
    if not siblings:
      logits, _ = model(history.tokens, history.positions, segment_ids=history.valid.astype(jnp.int32))
      return jax.lax.dynamic_slice_in_dim(logits, history.index - new, new, axis=1), history
    # Copy j of a row hides the siblings other than j.
    slot = history.index - new + jnp.arange(new)  # [T]
    key_slot = jnp.arange(history.tokens.shape[1])
    other_sibling = (key_slot >= slot[0]) & (key_slot <= slot[-1]) & (key_slot != slot[:, None])  # [T, S]
    valid = (history.valid[:, None] & ~other_sibling).reshape(rows * new, -1)
    copies = lambda x: jnp.repeat(x, new, axis=0)
    logits, _ = model(copies(history.tokens), copies(history.positions), segment_ids=valid.astype(jnp.int32))
    return logits.reshape(rows, new, *logits.shape[1:])[:, jnp.arange(new), slot], history

  return tokens_to_logits


# ------------------------------------------------------------------------------------------------
# Running a `Decoder`: one compiled program per method, structure and shape; the knobs a client
# varies are the program's arguments.

METHODS = ("greedy", "sample", "beam", "safebeam")
# Sampling runs `sample` at temperature 1 with the traced knobs as its last logits processor (`_sampling`).
_ALGORITHMS = {"greedy": functools.partial(sample, temperature=0.0),
               "sample": functools.partial(sample, temperature=1.0), "beam": beam_search, "safebeam": safebeam}
# Knobs passed to the compiled program as arrays, one value per prompt, instead of being compiled
# into it: a new temperature must not cost a compilation (seconds) or a program's memory.
TRACED = ("temperature", "top_k", "top_p", "tag_penalty", "tag_stop_threshold", "tag_threshold")
_NEVER = 2.0  # a threshold no probability exceeds: a row without a tag stop


@struct.dataclass
class Settings:
  """The traced knobs of one call, one value per prompt row ([B] each).

  temperature, top_k, top_p: sampling (a row at temperature 0 decodes greedily; top_k 0 and top_p
  1 keep every token). tag_penalty: subtracted from the harm tag's logit (every method).
  tag_stop_threshold: greedy and sampling stop a row when the model's tag probability passes it.
  tag_threshold: SafeBeam drops candidates whose lookahead tag probability passes it.
  """

  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array
  tag_penalty: jax.Array
  tag_stop_threshold: jax.Array
  tag_threshold: jax.Array

  @classmethod
  def of(cls, rows: int, **values: Any) -> "Settings":
    """Settings for `rows` prompts; each value a scalar (all rows) or one per row; None: unused."""
    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "tag_penalty": 0.0, "tag_stop_threshold": _NEVER,
                "tag_threshold": _NEVER}
    arrays = {}
    for name, default in defaults.items():
      value = values.get(name)
      value = default if value is None else value
      dtype = np.int32 if name == "top_k" else np.float32
      arrays[name] = np.broadcast_to(np.asarray(value, dtype), (rows,)).copy()
    return cls(**arrays)


def _per_row(values: jax.Array, logits: jax.Array) -> jax.Array:
  """[B] per-prompt values as a [R, 1] column for R rows of logits (beams: k consecutive rows a prompt)."""
  return jnp.repeat(values, logits.shape[0] // values.shape[0])[:, None]


def _penalize(tag_id: int, penalty: jax.Array) -> LogitsProcessor:
  """`PenalizeToken` with a traced, per-prompt penalty."""
  def process(step, logits, tokens):
    del step, tokens
    return logits.at[:, tag_id].add(-_per_row(penalty, logits)[:, 0])

  return process


def _sampling(settings: Settings) -> LogitsProcessor:
  """Temperature, top-k and top-p with traced per-row values, as the last logits processor of
  `sample` run at temperature 1: it returns the logits of the distribution to draw from, so
  `sample`'s draw is that of `sample(temperature=t, top_k=k, top_p=p)` (a row at temperature 0
  keeps its argmax alone). The log-probabilities `sample` then reports are the drawn tokens'
  under that distribution. One sort serves both filters, which keep ties as `top_k_filter` does."""
  def process(step, logits, tokens):
    del step, tokens
    vocab = logits.shape[-1]
    greedy = settings.temperature <= 0
    scaled = logits / jnp.where(greedy, 1.0, settings.temperature)[:, None]
    descending = -jnp.sort(-scaled, axis=-1)
    k = jnp.where(settings.top_k > 0, jnp.minimum(settings.top_k, vocab), vocab)
    kth = jnp.take_along_axis(descending, (k - 1)[:, None], axis=-1)
    descending = jnp.where(descending < kth, NEG_INF, descending)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(mass_above < settings.top_p[:, None], descending, jnp.inf), axis=-1, keepdims=True)
    kept = jnp.where(scaled < jnp.maximum(kth, cutoff), NEG_INF, scaled)
    argmax_only = jnp.where(jnp.arange(vocab) == jnp.argmax(logits, axis=-1)[:, None], 0.0, NEG_INF)
    return jnp.where(greedy[:, None], argmax_only, kept)

  return process


def _decoder(graphdef: nnx.GraphDef, config: ModelConfig, method: str, use_kv_cache: bool,
             options: tuple[tuple[str, Any], ...]):
  """The decoder of one program: (state, prompts, prompt_mask, rng, settings) -> DecodeResult.

  `options` are the algorithm's static keyword arguments plus which traced knobs it uses
  (`uses_*`); the knobs' values come in `settings`.
  """
  options = dict(options)
  uses = {name: options.pop(f"uses_{name}") for name in ("tag_penalty", "tag_stop_threshold", "tag_threshold")}
  processor = options.pop("logits_processor", None)
  tag_id = options.get("tag_id") if method != "beam" else options.pop("tag_id", None)  # beam search takes none
  algorithm = functools.partial(_ALGORITHMS[method], **options)
  if use_kv_cache:
    make, init_cache = cached_tokens_to_logits, functools.partial(KVCache.init, config)
  else:
    make, init_cache = full_recompute_tokens_to_logits, TokenHistory.init

  def run(state, prompts, prompt_mask, rng, settings: Settings):
    traced: dict[str, Any] = {}
    processors = [processor, _penalize(tag_id, settings.tag_penalty) if uses["tag_penalty"] else None]
    if method == "sample":
      traced["rng"] = rng
      processors.append(_sampling(settings))
    if uses["tag_stop_threshold"]:
      traced["tag_stop_threshold"] = settings.tag_stop_threshold
    if uses["tag_threshold"]:
      traced["tag_threshold"] = settings.tag_threshold[:, None]  # against [B, candidates] risks
    return algorithm(make(graphdef, state), init_cache, prompts, prompt_mask, logits_processor=chain(*processors),
                     **traced)

  return run


@functools.lru_cache(maxsize=32)
def _jitted(graphdef: nnx.GraphDef, config: ModelConfig, method: str, use_kv_cache: bool,
            options: tuple[tuple[str, Any], ...]):
  """`generate`'s shared programs: one jitted decoder per structure (jit keeps one executable per
  shape)."""
  return jax.jit(_decoder(graphdef, config, method, use_kv_cache, options))


@dataclasses.dataclass(frozen=True)
class DecodeCall:
  """One batched decoder call, split into what selects its compiled program and what the program
  takes. `program` is hashable: method, structure, static options and argument shapes; every
  traced knob (`Settings`) and the seed are in `args`, so calls that differ only in those share
  one program. `run` uses `generate`'s shared jit cache; `compile` makes a program of its own
  (the server's, which it keeps or drops as it likes)."""

  program: tuple
  args: tuple

  def run(self) -> DecodeResult:
    return _jitted(*self.program[:5])(*self.args)

  def compile(self) -> jax.stages.Compiled:
    return jax.jit(_decoder(*self.program[:5])).lower(*self.args).compile()


def prepare(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    *,
    method: str = "greedy",
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    seed: int = 0,
    use_kv_cache: bool = True,
    prompt_multiple: int = 32,
    **options: Any,
) -> DecodeCall:
  """The `DecodeCall` of `generate`'s arguments (see there), not yet run."""
  if method not in METHODS:
    raise ValueError(f"unknown decoding method {method!r}; known: {', '.join(METHODS)}")
  tokens, mask = left_pad(prompts, pad_id, prompt_multiple)
  traced = {name: options.pop(name, None) for name in TRACED}
  if method == "sample" and traced["temperature"] is not None and np.any(np.asarray(traced["temperature"]) < 0):
    raise ValueError(f"temperature must be >= 0, got {traced['temperature']}")
  if method != "sample":  # greedy is argmax; the beams rank by log-probability
    traced.update(temperature=None, top_k=None, top_p=None)
  for name in ("tag_penalty", "tag_stop_threshold", "tag_threshold"):
    options[f"uses_{name}"] = traced[name] is not None
  if (traced["tag_penalty"] is not None or traced["tag_stop_threshold"] is not None) and options.get("tag_id") is None:
    raise ValueError("tag_penalty and tag_stop_threshold need tag_id")
  if traced["tag_threshold"] is not None and method != "safebeam":
    raise ValueError("tag_threshold is SafeBeam's")
  graphdef, state = nnx.split(model)
  options.update(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
  static = tuple(sorted(options.items()))
  settings = Settings.of(len(prompts), **traced)
  return DecodeCall(program=(graphdef, model.cfg, method, use_kv_cache, static, tokens.shape),
                    args=(state, tokens, mask, jax.random.key(seed), settings))


def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    *,
    method: str = "greedy",
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    seed: int = 0,
    use_kv_cache: bool = True,
    prompt_multiple: int = 32,
    **options: Any,
) -> DecodeResult:
  """Decodes token-id prompts with a `Decoder`; returns a host (numpy) `DecodeResult`.

  method: greedy | sample | beam | safebeam. options go to the algorithm (`sample`,
  `beam_search`, `safebeam`): temperature, top_k, top_p, tag_id, tag_penalty,
  tag_stop_threshold, beam_size, num_expand, drop_fraction, tag_threshold, alpha,
  logits_processor, candidate_filter. The knobs in `TRACED` (a scalar, or one value per prompt)
  and the seed are arguments of the compiled program, not part of it: any values share one
  compilation. Prompt lengths are rounded up to `prompt_multiple` so that similar batches share
  one too; `use_kv_cache=False` runs the full-recompute baseline. Sampling's `log_probs` are
  those of the distribution drawn from (after temperature, top-k and top-p).
  """
  call = prepare(model, prompts, method=method, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                 seed=seed, use_kv_cache=use_kv_cache, prompt_multiple=prompt_multiple, **options)
  return jax.device_get(call.run())


def detokenize(vocab: SafejaxVocabulary, result: DecodeResult) -> list[list[str]]:
  """Texts [B][n] of a host result; reserved tokens (the harm tag among them) are dropped."""
  tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
  return [[vocab.decode_without_specials(tokens[b, i, :lengths[b, i]].tolist()) for i in range(tokens.shape[1])]
          for b in range(tokens.shape[0])]
