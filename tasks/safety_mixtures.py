"""SeqIO Tasks over a pipeline run's streams and Mixtures for the paper's ablation ladder.

  from tasks.safety_mixtures import register_safety_mixtures
  names = register_safety_mixtures("/tmp/run/prepared", vocab)      # or a vocabulary path
  seqio.get_mixture_or_task(names.mixtures["tags"]).get_dataset({"targets": 512})

Tasks (one per stream of `safejax.data.pipeline`, files listed by the run's manifest):
  {prefix}_raw, {prefix}_keep, {prefix}_rephrase, {prefix}_refuseweb, {prefix}_moral_education,
  {prefix}_tagged
Mixtures (the ladder; each rung adds a stream):
  {prefix}_ladder_raw       raw text
  {prefix}_ladder_score0    score-0 documents only
  {prefix}_ladder_rephrase  + rephrased documents
  {prefix}_ladder_refusal   + RefuseWeb dialogues
  {prefix}_ladder_moral     + Moral Education articles
  {prefix}_ladder_tags      + raw unsafe documents with harm tags, and its score-0 text with the sham
                            tag at the same count ({prefix}_keep_sham, the tag's control)

Rates are by tokens: a task's rate is its stream's token count times its weight
(`stream_weights`, default 1 each), so with equal weights every token is seen about equally often.
Token counts are the manifest's character counts divided by characters per token measured with
the vocabulary on a sample of each stream (exact when the stream is smaller than the sample).
Streams without any record are left out of the mixtures.

Every task reads TFRecords with `seqio.TFExampleDataSource` and tokenizes before seqio's cache
placeholder, so it works on the fly and with seqio's offline cache. `cache_tasks` runs seqio's
`cache_tasks_main`, which imports task modules by name: it writes a small module that registers the
run (`write_task_module`) and names it there.

In gin (t5x style, evaluated when the trainer starts):
  import tasks.safety_mixtures
  train.task_registrations = [@register_safety_mixtures()]
  register_safety_mixtures.data_dir = '/tmp/run/prepared'
  register_safety_mixtures.vocabulary = '/tmp/run/vocab.model'
  train.mixture_or_task_name = 'safejax_ladder_tags'
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from safejax.data import manifest as manifest_lib, shards
from tasks.preprocessors import render_qa_as_chat, render_refuseweb, render_turns
from safejax.data.records import KEEP, MORAL_EDUCATION, RAW, REFUSEWEB, REPHRASE, STREAMS, TAGGED, doc_rng
from safejax.data.tagging import tag_text
from safejax.vocab import SHAM_TAG, ReservedTokens, Vocabulary, load_vocabulary
from tasks.text import lm_preprocessors, output_features

log = logging.getLogger(__name__)

# The tags rung reads its score-0 documents with the sham tag inserted (`KEEP_SHAM`): the same
# number of insertions as the harm tags of its tagged stream, at random words of safe text, so the
# sham is the tag's control inside one model (SafeBeam steered by it, its detector AUROC).
KEEP_SHAM = "keep_sham"
LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("raw", (RAW,)),
    ("score0", (KEEP,)),
    ("rephrase", (KEEP, REPHRASE)),
    ("refusal", (KEEP, REPHRASE, REFUSEWEB)),
    ("moral", (KEEP, REPHRASE, REFUSEWEB, MORAL_EDUCATION)),
    ("tags", (KEEP_SHAM, REPHRASE, REFUSEWEB, MORAL_EDUCATION, TAGGED)),
)

_TEXT_FEATURES = {"id": tf.io.FixedLenFeature([], tf.string), "text": tf.io.FixedLenFeature([], tf.string)}
_DIALOGUE_FEATURES = {"id": tf.io.FixedLenFeature([], tf.string), "turn_roles": tf.io.VarLenFeature(tf.string),
                      "turn_texts": tf.io.VarLenFeature(tf.string)}


@dataclasses.dataclass(frozen=True)
class SafetyTaskNames:
  tasks: dict[str, str]      # stream -> task name
  mixtures: dict[str, str]   # ladder rung -> mixture name
  tokens: dict[str, int]     # stream -> estimated tokens
  sham_p: float = 0.0        # the sham tag's per-word probability in the tags rung's score-0 text


def _training_text(stream: str, record: dict, *, seed: int, chat_template_rate: float) -> str:
  if stream == REFUSEWEB:
    return render_turns([t["role"] for t in record["turns"]], [t["text"] for t in record["turns"]], record["id"],
                        seed=seed, chat_template_rate=chat_template_rate)
  return record["text"]


def estimate_words(files: Sequence[str], chars: int, *, sample_size: int) -> int:
  """Words (runs of non-space characters) in a text stream: `chars` / characters per word on the
  first `sample_size` records."""
  sample_chars = sample_words = 0
  for record in itertools.islice(shards.read_shards(files), sample_size):
    sample_chars += len(record["text"])
    sample_words += len(record["text"].split())
  return round(chars * sample_words / sample_chars) if sample_chars else 0


def insert_sham_tags(dataset: tf.data.Dataset, *, p: float, seed: int = 0) -> tf.data.Dataset:
  """{"id", "text"} -> the text with the sham tag before each word but the first with probability p,
  drawn per (seed, id) as the harm tags are (`safejax.data.tagging.tag_text`), so every epoch and a
  resumed run insert the same ones."""
  def insert(example_id: bytes, text: bytes) -> bytes:
    decoded = text.decode("utf-8")
    rng = doc_rng(seed, example_id.decode("utf-8"), "sham")
    return tag_text(decoded, [[0, len(decoded), 1]], rng, p=p, level=1, token=SHAM_TAG)[0].encode("utf-8")

  def to_text(ex):
    text = tf.numpy_function(insert, [ex["id"], ex["text"]], tf.string, stateful=False)
    return {**ex, "text": tf.reshape(text, [])}

  return dataset.map(to_text, num_parallel_calls=tf.data.AUTOTUNE)


def estimate_tokens(files: Sequence[str], stream: str, chars: int, vocab: Vocabulary, *,
                    sample_size: int, seed: int = 0, chat_template_rate: float = 0.0) -> int:
  """Tokens in a stream: `chars` / (characters per token on the first `sample_size` records)."""
  sample_chars = sample_tokens = 0
  for record in itertools.islice(shards.read_shards(files), sample_size):
    text = _training_text(stream, record, seed=seed, chat_template_rate=chat_template_rate)
    sample_chars += len(text)
    sample_tokens += len(vocab.encode(text))
  if sample_chars == 0:
    return 0
  return round(chars * sample_tokens / sample_chars)


def stream_task(name: str, files: Sequence[str], stream: str, vocab: Vocabulary, num_examples: int, *,
                seed: int = 0, chat_template_rate: float = 0.0, sham_p: float | None = None,
                qa_chat_template_rate: float = 0.0) -> seqio.Task:
  """A language-modelling task over one stream's TFRecord shards (`sham_p`: with sham tags
  inserted; `qa_chat_template_rate`: a text stream's documents whose question-answer passages are
  rendered as chat transcripts, `tasks.preprocessors.render_qa_as_chat`)."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  dialogue = stream == REFUSEWEB
  source = seqio.TFExampleDataSource({"train": list(files)}, _DIALOGUE_FEATURES if dialogue else _TEXT_FEATURES,
                                     num_input_examples={"train": num_examples})
  preprocessors = lm_preprocessors("text")
  if dialogue:
    preprocessors = [functools.partial(render_refuseweb, seed=seed, chat_template_rate=chat_template_rate),
                     *preprocessors]
  if sham_p is not None:
    preprocessors = [functools.partial(insert_sham_tags, p=sham_p, seed=seed), *preprocessors]
  if qa_chat_template_rate and not dialogue:  # before the sham tags: a chat turn holds the harm tag only
    preprocessors = [functools.partial(render_qa_as_chat, seed=seed, rate=qa_chat_template_rate), *preprocessors]
  return seqio.TaskRegistry.add(name, source=source, output_features=output_features(vocab),
                                preprocessors=preprocessors)


@gin.configurable
def register_safety_mixtures(data_dir: str = gin.REQUIRED, vocabulary: Vocabulary | str = gin.REQUIRED, *,
                             prefix: str = "safejax", stream_weights: Mapping[str, float] | None = None,
                             refuseweb_seed: int = 0, refuseweb_chat_template_rate: float = 0.0,
                             qa_chat_template_rate: float = 0.0, token_sample_size: int = 1000) -> SafetyTaskNames:
  """Registers (or re-registers) the stream tasks and ladder mixtures of one pipeline run.

  Args:
    data_dir: the pipeline's output_dir (holding manifest.json).
    vocabulary: a vocabulary, or a path `safejax.vocab.load_vocabulary` reads (a SentencePiece
      model; a model directory holding an imported Hugging Face tokenizer).
    prefix: names are "{prefix}_{stream}" and "{prefix}_ladder_{rung}".
    stream_weights: multiplies each stream's token count in the rates (missing streams: 1.0).
    refuseweb_seed: seeds the speaker renaming of dialogues.
    refuseweb_chat_template_rate: the share of dialogues rendered in the chat template.
    qa_chat_template_rate: the share of text documents whose question-answer passages are rendered
      as chat transcripts (`tasks.preprocessors.render_qa_as_chat`).
    token_sample_size: records per stream tokenized to measure characters per token.
  Returns:
    The registered names and the token estimates.
  """
  vocab = vocabulary if isinstance(vocabulary, ReservedTokens) else load_vocabulary(vocabulary)
  data_dir = data_dir.rstrip("/")
  manifest = manifest_lib.read_manifest(data_dir)
  weights = {s: 1.0 for s in STREAMS}
  unknown = set(stream_weights or {}) - set(STREAMS)
  if unknown:
    raise ValueError(f"stream_weights names unknown streams {sorted(unknown)}; streams: {STREAMS}")
  weights.update(stream_weights or {})
  render = {"seed": refuseweb_seed, "chat_template_rate": refuseweb_chat_template_rate}

  tasks, tokens = {}, {}
  for stream in STREAMS:
    files = manifest_lib.stream_files(data_dir, stream, manifest)
    info = manifest["streams"][stream]
    tasks[stream] = stream_task(f"{prefix}_{stream}", files, stream, vocab, info["records"], **render,
                                qa_chat_template_rate=qa_chat_template_rate).name
    tokens[stream] = estimate_tokens(files, stream, info["chars"], vocab, sample_size=token_sample_size, **render)
  # The sham control: as many sham tags in the score-0 text as the tagged stream has harm tags.
  keep_files = manifest_lib.stream_files(data_dir, KEEP, manifest)
  keep_words = estimate_words(keep_files, manifest["streams"][KEEP]["chars"], sample_size=token_sample_size)
  sham_p = min(1.0, manifest.get("tags", {}).get("inserted", 0) / keep_words) if keep_words else 0.0
  tasks[KEEP_SHAM] = stream_task(f"{prefix}_{KEEP_SHAM}", keep_files, KEEP, vocab, manifest["streams"][KEEP]["records"],
                                 seed=refuseweb_seed, sham_p=sham_p, qa_chat_template_rate=qa_chat_template_rate).name
  tokens[KEEP_SHAM] = tokens[KEEP]
  weights[KEEP_SHAM] = weights[KEEP]

  mixtures = {}
  for rung, streams in LADDER:
    name = f"{prefix}_ladder_{rung}"
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)
    members = [(tasks[s], tokens[s] * weights[s]) for s in streams if tokens[s] > 0 and weights[s] > 0]
    if not members:
      log.warning("mixture %s left out: its streams %s are empty", name, streams)
      continue
    mixtures[rung] = seqio.MixtureRegistry.add(name, members).name
  return SafetyTaskNames(tasks, mixtures, tokens, sham_p)


def write_task_module(directory: str, data_dir: str, vocab_path: str, *, prefix: str = "safejax") -> str:
  """Writes a module to `directory` that registers one pipeline run's tasks and mixtures when
  imported (what `--module_import` of seqio's scripts needs); returns the module's name."""
  name = f"{prefix}_registered_tasks"
  source = (f"# Written by tasks.safety_mixtures.write_task_module: registers one pipeline run.\n"
            f"from tasks.safety_mixtures import register_safety_mixtures\n\n"
            f"register_safety_mixtures({data_dir!r}, {vocab_path!r}, prefix={prefix!r})\n")
  with open(os.path.join(directory, f"{name}.py"), "w", encoding="utf-8") as f:
    f.write(source)
  return name


def cache_tasks(data_dir: str, vocab_path: str, cache_dir: str, *, prefix: str = "safejax",
                pipeline_options: Sequence[str] = ("--runner=DirectRunner",), min_shards: int = 1) -> None:
  """Caches every stream task of a run with seqio's own Beam job (`seqio.scripts.cache_tasks_main`).

  Afterwards `seqio.add_global_cache_dirs([cache_dir])` and `get_dataset(..., use_cached=True)` read
  the cache. The job imports a module written for the run (`write_task_module`), which registers it.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as modules:
    module = write_task_module(modules, data_dir, vocab_path, prefix=prefix)
    command = [sys.executable, "-m", "seqio.scripts.cache_tasks_main", f"--module_import={module}",
               f"--tasks={prefix}_({'|'.join(STREAMS)})", f"--output_cache_dir={cache_dir}",
               f"--min_shards={min_shards}", f"--pipeline_options={','.join(pipeline_options)}"]
    path = os.pathsep.join(p for p in (root, modules, os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"seqio's cache_tasks_main failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
