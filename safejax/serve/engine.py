"""The model side of `safejax serve`: one worker thread batching the work of concurrent clients.

HTTP handlers run on an asyncio event loop; the model runs on one worker thread that owns it.
A handler cuts its request into work items, one per prompt (and one per choice for scoring), and
submits them; each item's `concurrent.futures.Future` is awaited by the handler.

Batching: the worker takes the oldest waiting item, collects the items that share its key until
`max_batch_size` rows are gathered or `batch_window_s` has passed since that item arrived, and runs
them as one call. The key of a generation item is how it decodes (a `DecodingConfig` whose
max_new_tokens is a bucket, and the stop token); of a scoring item, its length bucket. Batch
sizes, prompt lengths, generation lengths and scored lengths are padded to powers of two, so a
server compiles a handful of programs and reuses them; whatever waits while a batch runs is
batched in the next round.

Determinism: greedy decoding, beam search and SafeBeam do not depend on what else is in the
batch. Sampling does (one random key draws every row), so a sampling request that names a seed
runs as its own batch and its seed alone fixes its output; unseeded sampling requests are batched
under a fresh random seed.

Sequences come with their start token (0, the id seqio's DecoderFeatureConverter puts before each
training document, as in `safejax.evaluation.loglikelihood.LoglikelihoodModel`); adding it is the caller's
business.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import dataclasses
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from safejax.decoding import DecodingConfig, generate
from safejax.model.llama import Decoder
from safejax.vocab import Vocabulary

log = logging.getLogger(__name__)

# Top log-probabilities kept per position: OpenAI allows 5 for completions and 20 for chat.
MAX_TOP_LOGPROBS = 20


def bucket(n: int, minimum: int = 1, maximum: int | None = None) -> int:
  """The power of two >= max(n, minimum), capped at `maximum` (which must be >= n)."""
  size = 1 << (max(n, minimum) - 1).bit_length()
  return size if maximum is None else min(size, maximum)


def piece_text(vocab: Vocabulary, token: int) -> str:
  """The text of one id on its own ("" for reserved ids, U+FFFD for a lone partial byte)."""
  return vocab.piece_bytes(token).decode("utf-8", errors="replace")


def token_texts(vocab: Vocabulary, ids: Sequence[int]) -> list[str]:
  """The text each id adds when `ids` is detokenized; reserved ids (harm tag, markers) add "".

  "".join(token_texts(vocab, ids)) == vocab.decode_without_specials(ids) for ids without EOS.
  SentencePiece drops the word-boundary space of the sequence's first piece (its dummy prefix;
  byte-level BPE keeps it); pieces of a multi-byte character add it at the piece that completes it.
  """
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  texts, at_start = [], True
  for position, token in enumerate(ids):
    data = vocab.piece_bytes(token)
    if at_start and data:
      data, at_start = data.removeprefix(b" ") if vocab.adds_dummy_prefix else data, False
    texts.append(decoder.decode(data, final=position == len(ids) - 1))
  return texts


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One generated sequence. ids: the generated ids (a final stop token included, as written);
  finished: it ended with the stop token; tag_stopped: the harm tag cut it (see DecodeResult)."""

  ids: list[int]
  finished: bool
  tag_stopped: bool


@dataclasses.dataclass(frozen=True)
class TokenScores:
  """Scores of the tokens of a sequence s[0..S-1] after its first, each given all before it.

  log_probs: [S-1] log P(s[i] | s[:i]) for i = 1..S-1. top_ids, top_log_probs: [S-1, K] the K
  (= MAX_TOP_LOGPROBS) most likely tokens at each of those positions, most likely first.
  """

  log_probs: np.ndarray
  top_ids: np.ndarray
  top_log_probs: np.ndarray


@dataclasses.dataclass(frozen=True)
class GenerateKey:
  """What generation items must share to run in one batch."""

  decoding: DecodingConfig  # seed 0; max_new_tokens the power-of-two bucket of the request's
  stop_id: int
  exclusive: int | None = None  # set (to a unique number) for seeded sampling: runs alone


@dataclasses.dataclass(frozen=True)
class ScoreKey:
  length: int  # the bucketed number of scored positions


@dataclasses.dataclass
class _Item:
  key: Hashable
  ids: list[int]
  rows: int  # rows of the batch it fills (n copies when sampling n)
  seed: int | None
  future: concurrent.futures.Future
  arrival: float = dataclasses.field(default_factory=time.monotonic)


@functools.lru_cache(maxsize=8)
def _token_scorer(graphdef: nnx.GraphDef):
  """The jitted scorer of one model structure: (state, inputs, targets) [B, T] ->
  target log-probs [B, T], top log-probs [B, T, K], top ids [B, T, K]."""

  @jax.jit
  def score(state, inputs, targets):
    logits, _ = nnx.merge(graphdef, state)(inputs)
    log_probs = jax.nn.log_softmax(logits)
    target = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    top_log_probs, top_ids = jax.lax.top_k(log_probs, MAX_TOP_LOGPROBS)
    return target, top_log_probs, top_ids

  return score


class Engine:
  """A model behind a request queue: `submit_generate` and `submit_score` return futures."""

  def __init__(self, model: Decoder, vocab: Vocabulary, *, max_batch_size: int = 16,
               batch_window_s: float = 0.005):
    if max_batch_size < 1:
      raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    self.model, self.vocab = model, vocab
    self.max_batch_size, self.batch_window_s = max_batch_size, batch_window_s
    self._graphdef, self._state = nnx.split(model)
    self._score = _token_scorer(self._graphdef)
    self._options: dict[DecodingConfig, dict[str, Any]] = {}
    self._queue: queue.Queue[_Item | None] = queue.Queue()
    self._exclusive_ids = iter(range(1, 1 << 62))
    self._random = random.Random()
    self._lock = threading.Lock()
    self._stats = {"generate_batches": 0, "generate_items": 0, "generate_rows": 0, "generated_tokens": 0,
                   "score_batches": 0, "score_items": 0, "scored_tokens": 0, "largest_batch_items": 0,
                   "batch_seconds": 0.0}
    self._thread = threading.Thread(target=self._work, name="safejax-serve-engine", daemon=True)
    self._thread.start()

  # -- clients' side ------------------------------------------------------------------------------

  def submit_generate(self, ids: Sequence[int], decoding: DecodingConfig, *, stop_id: int, rows: int = 1,
                      seed: int | None = None) -> concurrent.futures.Future:
    """Generates from one prompt (ids, the start token included); the future gives candidates.

    decoding.max_new_tokens is the most tokens wanted; greedy and sampling run to its bucket and
    the caller cuts. rows: copies of the prompt (n samples); beam methods give beam_size
    candidates from one row. Returns a future of `rows` (greedy, sample) or beam_size candidates,
    best first.
    """
    if not 1 <= rows <= self.max_batch_size:
      raise ValueError(f"rows must lie in 1..{self.max_batch_size}, got {rows}")
    if decoding.method in ("greedy", "sample"):
      decoding = dataclasses.replace(decoding, max_new_tokens=bucket(decoding.max_new_tokens))
    exclusive = next(self._exclusive_ids) if decoding.method == "sample" and seed is not None else None
    key = GenerateKey(dataclasses.replace(decoding, seed=0), stop_id, exclusive)
    return self._submit(_Item(key, list(ids), rows, seed, concurrent.futures.Future()))

  def submit_score(self, ids: Sequence[int]) -> concurrent.futures.Future:
    """Scores ids[1:] given what precedes each (ids start with the start token); future: TokenScores."""
    if len(ids) < 2:
      raise ValueError("a scored sequence needs the start token and at least one more")
    key = ScoreKey(bucket(len(ids) - 1, 16))
    return self._submit(_Item(key, list(ids), 1, None, concurrent.futures.Future()))

  def stats(self) -> dict[str, float]:
    with self._lock:
      return dict(self._stats, queued=self._queue.qsize())

  def close(self) -> None:
    """Finishes the queued work and stops the worker."""
    self._queue.put(None)
    self._thread.join()

  def _submit(self, item: _Item) -> concurrent.futures.Future:
    if not self._thread.is_alive():
      raise RuntimeError("the engine is closed")
    self._queue.put(item)
    return item.future

  # -- the worker ---------------------------------------------------------------------------------

  def _work(self) -> None:
    pending: list[_Item] = []
    stopping = False
    while pending or not stopping:
      if not pending:
        item = self._queue.get()
        if item is None:
          break
        pending.append(item)
      first = pending[0]
      deadline = first.arrival + self.batch_window_s
      while not stopping and sum(i.rows for i in pending if i.key == first.key) < self.max_batch_size:
        wait = deadline - time.monotonic()
        try:
          item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
          break
        if item is None:
          stopping = True
        else:
          pending.append(item)
      batch, rows, rest = [], 0, []
      for item in pending:
        if item.key == first.key and (not batch or rows + item.rows <= self.max_batch_size):
          batch.append(item)
          rows += item.rows
        else:
          rest.append(item)
      pending = rest
      self._run(batch)

  def _run(self, batch: list[_Item]) -> None:
    start = time.perf_counter()
    try:
      results, tokens = self._run_score(batch) if isinstance(batch[0].key, ScoreKey) else self._run_generate(batch)
    except Exception as e:  # noqa: BLE001  the clients get it, the server goes on
      log.exception("batch of %d items failed", len(batch))
      for item in batch:
        item.future.set_exception(e)
      return
    kind = "score" if isinstance(batch[0].key, ScoreKey) else "generate"
    with self._lock:
      self._stats[f"{kind}_batches"] += 1
      self._stats[f"{kind}_items"] += len(batch)
      self._stats["scored_tokens" if kind == "score" else "generated_tokens"] += tokens
      if kind == "generate":
        self._stats["generate_rows"] += sum(item.rows for item in batch)
      self._stats["largest_batch_items"] = max(self._stats["largest_batch_items"], len(batch))
      self._stats["batch_seconds"] += time.perf_counter() - start
    for item, result in zip(batch, results):
      item.future.set_result(result)

  def _generate_options(self, decoding: DecodingConfig) -> dict[str, Any]:
    # Cached per configuration: the logits processors are closures, and a new closure would
    # compile a new program.
    if decoding not in self._options:
      self._options[decoding] = decoding.generate_options(self.vocab.harm_tag_id)
    return self._options[decoding]

  def _run_generate(self, batch: list[_Item]) -> tuple[list[list[Candidate]], int]:
    key: GenerateKey = batch[0].key
    prompts = [item.ids for item in batch for _ in range(item.rows)]
    filled = prompts + [prompts[0]] * (bucket(len(prompts), maximum=self.max_batch_size) - len(prompts))
    seed = batch[0].seed if key.exclusive is not None else self._random.randrange(1 << 31)
    options = dict(self._generate_options(key.decoding), seed=seed)
    result = generate(self.model, filled, eos_id=key.stop_id, pad_id=self.vocab.pad_id,
                      prompt_multiple=bucket(max(map(len, prompts)), 16), **options)
    tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    candidates = [[Candidate(tokens[row, i, :lengths[row, i]].tolist(), bool(result.finished[row, i]),
                             bool(result.tag_stopped[row, i])) for i in range(tokens.shape[1])]
                  for row in range(len(prompts))]
    results, row = [], 0
    for item in batch:
      results.append([c for r in range(row, row + item.rows) for c in candidates[r]])
      row += item.rows
    return results, int(lengths[:len(prompts)].sum())

  def _run_score(self, batch: list[_Item]) -> tuple[list[TokenScores], int]:
    length = batch[0].key.length
    size = bucket(len(batch), maximum=self.max_batch_size)
    inputs = np.zeros((size, length), np.int32)
    targets = np.zeros((size, length), np.int32)
    for row, item in enumerate(batch):
      # Right padding: under the causal mask the real positions never see it.
      inputs[row, :len(item.ids) - 1] = item.ids[:-1]
      targets[row, :len(item.ids) - 1] = item.ids[1:]
    target, top_log_probs, top_ids = jax.device_get(self._score(self._state, inputs, targets))
    results = [TokenScores(target[row, :len(item.ids) - 1], top_ids[row, :len(item.ids) - 1],
                           top_log_probs[row, :len(item.ids) - 1]) for row, item in enumerate(batch)]
    return results, sum(len(item.ids) - 1 for item in batch)
