"""The model side of `safejax serve`: one worker thread batching the work of concurrent clients.

HTTP handlers run on an asyncio event loop; the model runs on one worker thread that owns it.
A handler cuts its request into work items, one per prompt (and one per choice for scoring), and
submits them; each item's `concurrent.futures.Future` is awaited by the handler.

Batching: the worker takes the oldest waiting item, collects the items that share its key until
`max_batch_size` rows are gathered or `batch_window_s` has passed since that item arrived, and runs
them as one call. The key of a generation item is how it decodes (a `DecodingConfig` whose
max_new_tokens is a bucket, and the stop token) less the knobs that are the program's arguments
(`safejax.decoding.runner.TRACED`: temperature, top_k, top_p, tag_penalty, the tag thresholds, the
seed), which each row carries for itself; of a scoring item, its length bucket. Batch sizes,
prompt lengths, generation lengths and scored lengths are padded to powers of two.

Compiled programs: one per (method and its structural knobs, shape bucket), shared by every
client, whatever their temperatures or seeds. A batch whose program is missing is set aside while
its program compiles on a thread of its own; the worker goes on running the batches whose
programs are ready, so a request never waits behind a compilation it did not cause. At most
`max_programs` programs are kept (the least recently used is dropped, its memory with it), so the
server's memory stays bounded under any mix of requests; /stats counts them.

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
import collections
import concurrent.futures
import dataclasses
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from safejax.decoding import DecodingConfig
from safejax.decoding.runner import TRACED, prepare
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

  decoding: DecodingConfig  # max_new_tokens the power-of-two bucket of the request's; traced knobs at a placeholder
  stop_id: int
  exclusive: int | None = None  # set (to a unique number) for seeded sampling: runs alone


def batch_key_decoding(decoding: DecodingConfig) -> DecodingConfig:
  """`decoding` with the knobs each row carries itself (`runner.TRACED`, the seed) set to one
  placeholder, so requests that differ only in them batch together. A tag threshold keeps
  whether it is set: that changes the program."""
  placeholder = lambda value: None if value is None else 0.5
  return dataclasses.replace(decoding, seed=0, temperature=1.0, top_k=0, top_p=1.0, tag_penalty=0.0,
                             tag_stop_threshold=placeholder(decoding.tag_stop_threshold),
                             tag_threshold=placeholder(decoding.tag_threshold))


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
  decoding: DecodingConfig | None = None  # a generation's own knobs (the key holds placeholders)
  arrival: float = dataclasses.field(default_factory=time.monotonic)


def _token_scorer(graphdef: nnx.GraphDef):
  """The scorer of one model structure: (state, inputs, targets) [B, T] -> target log-probs
  [B, T], top log-probs [B, T, K], top ids [B, T, K]."""

  def score(state, inputs, targets):
    logits, _ = nnx.merge(graphdef, state)(inputs)
    log_probs = jax.nn.log_softmax(logits)
    target = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    top_log_probs, top_ids = jax.lax.top_k(log_probs, MAX_TOP_LOGPROBS)
    return target, top_log_probs, top_ids

  return score


@dataclasses.dataclass(frozen=True)
class _ScoreCall:
  """A scoring batch in `runner.DecodeCall`'s shape: its program's key and arguments."""

  program: tuple
  args: tuple

  def compile(self) -> jax.stages.Compiled:
    return jax.jit(_token_scorer(self.program[1])).lower(*self.args).compile()


@dataclasses.dataclass
class _Work:
  """A formed batch: its items, its call (program key, arguments) and how its output becomes the
  items' results and a token count."""

  items: list[_Item]
  call: Any  # runner.DecodeCall or _ScoreCall
  finish: Callable[[Any], tuple[list, int]]


@dataclasses.dataclass(frozen=True)
class _Compiled:
  """The compile thread's message to the worker: a program is ready (or failed)."""

  key: Hashable
  program: Any
  error: BaseException | None


class _Programs:
  """Compiled programs by key, at most `capacity` (the least recently used dropped), compiled one
  at a time on a thread of their own, so that the worker never stops for a compilation."""

  def __init__(self, capacity: int):
    if capacity < 1:
      raise ValueError(f"max_programs must be >= 1, got {capacity}")
    self.capacity = capacity
    self._programs: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="safejax-serve-compile")
    self.compilations, self.compile_seconds = 0, 0.0

  def get(self, key: Hashable) -> Any:
    with self._lock:
      program = self._programs.get(key)
      if program is not None:
        self._programs.move_to_end(key)
      return program

  def compile(self, key: Hashable, compile_fn: Callable[[], Any], done: Callable[[_Compiled], None]) -> None:
    """Compiles on the compile thread; `done` gets the outcome (the program, kept here too)."""
    def work():
      start = time.perf_counter()
      try:
        program = compile_fn()
      except Exception as e:  # noqa: BLE001  the batch's clients get it
        done(_Compiled(key, None, e))
        return
      with self._lock:
        self._programs[key] = program
        while len(self._programs) > self.capacity:
          self._programs.popitem(last=False)
        self.compilations += 1
        self.compile_seconds += time.perf_counter() - start
      done(_Compiled(key, program, None))

    self._pool.submit(work)

  def __len__(self) -> int:
    with self._lock:
      return len(self._programs)

  def close(self) -> None:
    self._pool.shutdown(wait=True)


class Engine:
  """A model behind a request queue: `submit_generate` and `submit_score` return futures."""

  def __init__(self, model: Decoder, vocab: Vocabulary, *, max_batch_size: int = 16,
               batch_window_s: float = 0.005, max_programs: int = 32):
    if max_batch_size < 1:
      raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    self.model, self.vocab = model, vocab
    self.max_batch_size, self.batch_window_s = max_batch_size, batch_window_s
    self._graphdef, self._state = nnx.split(model)
    self._programs = _Programs(max_programs)
    self._parked: dict[Hashable, list[_Work]] = {}  # batches waiting for their program
    self._queue: queue.Queue[_Item | _Compiled | None] = queue.Queue()
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
    key = GenerateKey(batch_key_decoding(decoding), stop_id, exclusive)
    return self._submit(_Item(key, list(ids), rows, seed, concurrent.futures.Future(), decoding))

  def submit_score(self, ids: Sequence[int]) -> concurrent.futures.Future:
    """Scores ids[1:] given what precedes each (ids start with the start token); future: TokenScores."""
    if len(ids) < 2:
      raise ValueError("a scored sequence needs the start token and at least one more")
    key = ScoreKey(bucket(len(ids) - 1, 16))
    return self._submit(_Item(key, list(ids), 1, None, concurrent.futures.Future()))

  def stats(self) -> dict[str, float]:
    with self._lock:
      stats = dict(self._stats, queued=self._queue.qsize())
    return dict(stats, compiled_programs=len(self._programs), compilations=self._programs.compilations,
                compile_seconds=round(self._programs.compile_seconds, 3))

  def close(self) -> None:
    """Finishes the queued work (waiting for its programs) and stops the worker."""
    self._queue.put(None)
    self._thread.join()
    self._programs.close()

  def _submit(self, item: _Item) -> concurrent.futures.Future:
    if not self._thread.is_alive():
      raise RuntimeError("the engine is closed")
    self._queue.put(item)
    return item.future

  # -- the worker ---------------------------------------------------------------------------------

  def _work(self) -> None:
    pending: list[_Item] = []
    stopping = False
    while pending or self._parked or not stopping:
      if not pending:
        message = self._queue.get()
        if message is None:
          stopping = True
        elif isinstance(message, _Compiled):
          self._programs_ready(message)
        else:
          pending.append(message)
        continue
      first = pending[0]
      deadline = first.arrival + self.batch_window_s
      while not stopping and sum(i.rows for i in pending if i.key == first.key) < self.max_batch_size:
        wait = deadline - time.monotonic()
        try:
          message = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
          break
        if message is None:
          stopping = True
        elif isinstance(message, _Compiled):
          self._programs_ready(message)
        else:
          pending.append(message)
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
    """Runs a batch if its program is compiled; else sets it aside and has the program compiled."""
    try:
      work = self._score_work(batch) if isinstance(batch[0].key, ScoreKey) else self._generate_work(batch)
    except Exception as e:  # noqa: BLE001  the clients get it, the server goes on
      self._fail(batch, e)
      return
    program = self._programs.get(work.call.program)
    if program is not None:
      self._execute(work, program)
      return
    waiting = self._parked.setdefault(work.call.program, [])
    waiting.append(work)
    if len(waiting) == 1:
      self._programs.compile(work.call.program, work.call.compile, self._queue.put)

  def _programs_ready(self, message: _Compiled) -> None:
    for work in self._parked.pop(message.key, []):
      if message.error is not None:
        self._fail(work.items, message.error)
      else:
        self._execute(work, message.program)

  def _fail(self, batch: list[_Item], error: BaseException) -> None:
    log.error("batch of %d items failed", len(batch), exc_info=(type(error), error, error.__traceback__))
    for item in batch:
      item.future.set_exception(error)

  def _execute(self, work: _Work, program) -> None:
    start = time.perf_counter()
    batch = work.items
    try:
      results, tokens = work.finish(jax.device_get(program(*work.call.args)))
    except Exception as e:  # noqa: BLE001  the clients get it, the server goes on
      self._fail(batch, e)
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

  def _generate_work(self, batch: list[_Item]) -> _Work:
    key: GenerateKey = batch[0].key
    prompts = [item.ids for item in batch for _ in range(item.rows)]
    decodings = [item.decoding for item in batch for _ in range(item.rows)]
    filler = bucket(len(prompts), maximum=self.max_batch_size) - len(prompts)
    prompts, decodings = prompts + [prompts[0]] * filler, decodings + [decodings[0]] * filler
    seed = batch[0].seed if key.exclusive is not None else self._random.randrange(1 << 31)
    options = dict(key.decoding.generate_options(self.vocab.harm_tag_id), seed=seed)
    for name in TRACED:  # each row's own value where the configuration passes the knob at all
      if options.get(name) is not None:
        options[name] = [getattr(decoding, name) for decoding in decodings]
    call = prepare(self.model, prompts, eos_id=key.stop_id, pad_id=self.vocab.pad_id,
                   prompt_multiple=bucket(max(map(len, prompts)), 16), **options)
    real_rows = sum(item.rows for item in batch)

    def finish(result) -> tuple[list[list[Candidate]], int]:
      tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
      candidates = [[Candidate(tokens[row, i, :lengths[row, i]].tolist(), bool(result.finished[row, i]),
                               bool(result.tag_stopped[row, i])) for i in range(tokens.shape[1])]
                    for row in range(real_rows)]
      results, row = [], 0
      for item in batch:
        results.append([c for r in range(row, row + item.rows) for c in candidates[r]])
        row += item.rows
      return results, int(lengths[:real_rows].sum())

    return _Work(batch, call, finish)

  def _score_work(self, batch: list[_Item]) -> _Work:
    length = batch[0].key.length
    size = bucket(len(batch), maximum=self.max_batch_size)
    inputs = np.zeros((size, length), np.int32)
    targets = np.zeros((size, length), np.int32)
    for row, item in enumerate(batch):
      # Right padding: under the causal mask the real positions never see it.
      inputs[row, :len(item.ids) - 1] = item.ids[:-1]
      targets[row, :len(item.ids) - 1] = item.ids[1:]

    def finish(output) -> tuple[list[TokenScores], int]:
      target, top_log_probs, top_ids = output
      results = [TokenScores(target[row, :len(item.ids) - 1], top_ids[row, :len(item.ids) - 1],
                             top_log_probs[row, :len(item.ids) - 1]) for row, item in enumerate(batch)]
      return results, sum(len(item.ids) - 1 for item in batch)

    call = _ScoreCall(("score", self._graphdef, size, length), (self._state, inputs, targets))
    return _Work(batch, call, finish)
