"""SeqIO Tasks over plain text corpora: files by glob (jsonl, jsonl.gz, txt, TFRecord).

  register_text_task("wiki_text", "../shared/data/pretrain/wikipedia/*.jsonl.gz", vocab_path)

Formats, chosen by file name:
  *.jsonl, *.jsonl.gz   one JSON object per line; the document is its `text_field`
  *.tfrecord*           tf.train.Example with a bytes feature `text_field` (what the Beam pipeline writes)
  *.txt, *.txt.gz       one document per line
A UTF-8 byte-order mark at the start of a file is not text and is dropped. Documents are
tokenized, given an EOS, and split into chunks of the feature length, so a long
document feeds several training sequences instead of being truncated (the trainer then packs).

jsonl and txt corpora are untrusted text: every document goes through `safejax.vocab.sanitize_text`
(reserved-token strings removed until none is left), so a corpus cannot plant a harm tag or a
chat marker in training. TFRecord streams are the pipeline's own output, sanitized when read and
tagged on purpose afterwards, and are read as they are.

Bad input (a line that is not a JSON object, lacks the text field, or is not valid Unicode)
stops the run with an error naming the file, the line and the reason (`on_bad_record="error"`,
the default), or is skipped with a logged warning naming the same (`"skip"`). A damaged file (a
.gz cut short or corrupt) always stops the run naming the file: TensorFlow's own gzip reader ends
a truncated file without a word, losing its tail. `safejax prepare` sets bad documents aside as
dead letters, with accounting, before training.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import json
import logging
import re
import zlib
from collections.abc import Iterator

import gin
import seqio
import tensorflow as tf

from safejax import UserError
from safejax.vocab import RejectedText, Vocabulary, load_vocabulary, sanitize_text

log = logging.getLogger(__name__)
ON_BAD_RECORD = ("error", "skip")


class CorpusError(UserError):
  """A corpus file or record that cannot be trained on; the message names the file (and line)."""

  @classmethod
  def carried_by(cls, error: Exception) -> "CorpusError | None":
    """The CorpusError a tf.data parse raised, from the TensorFlow error that reports it
    (`tf.numpy_function` passes on only the message), or None if it carries none."""
    match = re.search(rf"{cls.__name__}: (.+)", str(error))
    return cls(match.group(1).strip()) if match else None


def _document(line: bytes, jsonl: bool, text_field: str) -> str:
  """The sanitized document of one corpus line; raises RejectedText with the reason."""
  try:
    text = line.decode("utf-8")
  except UnicodeDecodeError as e:
    raise RejectedText("bad_encoding", str(e)) from None
  if jsonl:
    try:
      record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
      raise RejectedText("malformed_json", str(e) if isinstance(e, json.JSONDecodeError) else "nested too deeply") from None
    if not isinstance(record, dict):
      raise RejectedText("malformed_json", f"a JSON {type(record).__name__}, not an object")
    text = record.get(text_field)
    if not isinstance(text, str):
      raise RejectedText("missing_field", f"no string field {text_field!r}")
  return sanitize_text(text)[0]


def _bad_record(path: str, line_no: int, e: RejectedText, on_bad_record: str) -> None:
  """Raises CorpusError naming the file and line (on_bad_record="error"), or logs a warning."""
  where = f"{path}:{line_no}: {e.reason} ({e.detail[:200]})"
  if on_bad_record == "error":
    raise CorpusError(f"bad record in {where}; fix or remove it, set "
                      "register_text_task.on_bad_record='skip', or run the corpus through "
                      "`safejax prepare`, which sets bad documents aside") from None
  log.warning("skipped a bad record in %s", where)


def _check_on_bad_record(on_bad_record: str) -> None:
  if on_bad_record not in ON_BAD_RECORD:
    raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, not {on_bad_record!r}")


def _without_bom(line: bytes, line_no: int) -> bytes:
  """A line without the UTF-8 byte-order mark a file may start with (spreadsheets and Windows
  editors write one): it marks the encoding, it is not text, and it would break the first JSON
  record. Anywhere else U+FEFF is a character and stays."""
  return line.removeprefix(codecs.BOM_UTF8) if line_no == 1 else line


def _lines(path: str) -> Iterator[bytes]:
  """The lines of a file (optionally .gz), without their line ends (and the first without a
  byte-order mark).

  Raises:
    CorpusError: the file is damaged (a .gz cut short or corrupt), naming it and the last good line.
  """
  line_no = 0
  try:
    with tf.io.gfile.GFile(path, "rb") as raw, (gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw) as f:
      for line_no, line in enumerate(iter(f.readline, b""), start=1):
        yield _without_bom(line.rstrip(b"\r\n"), line_no)
  except (EOFError, OSError, zlib.error) as e:
    raise CorpusError(f"{path} is damaged after line {line_no} ({type(e).__name__}: {e}); the rest of the "
                      "file cannot be read: repair or remove it") from None


def corpus_documents(path: str, jsonl: bool, text_field: str = "text", on_bad_record: str = "error") -> Iterator[str]:
  """The sanitized documents of one jsonl or txt file (optionally .gz), one per non-blank line:
  in Python what `text_file_source` reads through tf.data.

  Raises:
    CorpusError: a bad record (with on_bad_record="error"), or a damaged file, naming the file.
  """
  _check_on_bad_record(on_bad_record)
  for line_no, line in enumerate(_lines(path), start=1):
    if line.strip():
      try:
        yield _document(line, jsonl, text_field)
      except RejectedText as e:
        _bad_record(path, line_no, e, on_bad_record)


def _parse_line(path: bytes, line_no: int, line: bytes, jsonl: bool, text_field: str,
                on_bad_record: str) -> tuple[bytes, bool]:
  """(document, keep) of one line that tf.data read; line 0 stands for the file's integrity check."""
  if line_no == 0:
    if path.endswith(b".gz"):
      for _ in _lines(path.decode("utf-8")):  # raises CorpusError on a damaged file
        pass
    return b"", False
  line = _without_bom(line, line_no)
  if not line.strip():
    return b"", False
  try:
    return _document(line, jsonl, text_field).encode("utf-8"), True
  except RejectedText as e:
    _bad_record(path.decode("utf-8"), int(line_no), e, on_bad_record)
    return b"", False


def read_text_lines(path: tf.Tensor, jsonl: bool, text_field: str = "text",
                    on_bad_record: str = "error") -> tf.data.Dataset:
  """The sanitized documents of one jsonl or txt file (optionally .gz) as a tf.data pipeline.

  tf.data's own line reader with a stateless parse: unlike a Python generator, tf.data can
  checkpoint it, so a trainer resumes it where it stopped instead of re-reading what it consumed.
  The parse still names the file and line of a bad record. TensorFlow's gzip reader ends a
  truncated file without a word, so each .gz file is first read through once in Python (one more
  decompression a pass) and a damaged one stops the run before any of its lines is trained on.
  """
  _check_on_bad_record(on_bad_record)
  compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
  integrity_check = tf.data.Dataset.from_tensors((tf.constant(0, tf.int64), tf.constant(b"")))
  lines = integrity_check.concatenate(tf.data.TextLineDataset(path, compression_type=compression).enumerate(start=1))

  def parse(line_no, line):
    text, keep = tf.numpy_function(
        functools.partial(_parse_line, jsonl=jsonl, text_field=text_field, on_bad_record=on_bad_record),
        [path, line_no, line], [tf.string, tf.bool], stateful=False)
    return tf.reshape(text, []), tf.reshape(keep, [])

  parsed = lines.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return parsed.filter(lambda text, keep: keep).map(lambda text, keep: text)


def text_file_source(file_pattern: str | dict[str, str], text_field: str = "text",
                     on_bad_record: str = "error") -> seqio.DataSource:
  """A file-sharded seqio source of documents from jsonl / TFRecord / txt files: TFRecord files
  yield {text_field: string}, the others the bare (sanitized) text (`read_text_lines`)."""
  split_to_pattern = file_pattern if isinstance(file_pattern, dict) else {"train": file_pattern}
  pattern = next(iter(split_to_pattern.values()))
  if ".tfrecord" in pattern:
    return seqio.TFExampleDataSource(
        split_to_pattern, feature_description={text_field: tf.io.FixedLenFeature([], tf.string)})
  if ".jsonl" not in pattern and ".txt" not in pattern:
    raise ValueError(f"{pattern}: unknown text format (jsonl[.gz], txt[.gz] or tfrecord)")
  _check_on_bad_record(on_bad_record)
  read = functools.partial(read_text_lines, jsonl=".jsonl" in pattern, text_field=text_field,
                           on_bad_record=on_bad_record)
  return seqio.FileDataSource(read_file_fn=read, split_to_filepattern=split_to_pattern)


def _to_text_feature(ds: tf.data.Dataset, text_field: str = "text") -> tf.data.Dataset:
  """Maps each element (a string, or a dict holding the text) to {"targets": text}."""
  def convert(x):
    text = x[text_field] if isinstance(x, dict) else x
    return {"targets": text}
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).filter(
      lambda ex: tf.strings.length(ex["targets"]) > 0)


@seqio.utils.map_over_dataset
def _drop_pretokenized(ex):
  return {"targets": ex["targets"]}


def split_tokens_to_length(ds: tf.data.Dataset, sequence_length: dict[str, int]) -> tf.data.Dataset:
  """Splits each tokenized `targets` into consecutive chunks of at most the feature length."""
  length = sequence_length["targets"]

  def chunks(ex):
    tokens = ex["targets"]
    starts = tf.range(0, tf.size(tokens), length)
    splits = tf.concat([starts, [tf.size(tokens)]], axis=0)
    return tf.data.Dataset.from_tensor_slices({"targets": tf.RaggedTensor.from_row_splits(tokens, splits)})

  return ds.flat_map(chunks)


def lm_preprocessors(text_field: str = "text") -> list:
  """text -> tokens + EOS -> chunks of the feature length (shared by every text stream)."""
  return [
      functools.partial(_to_text_feature, text_field=text_field),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos,
      _drop_pretokenized,
      split_tokens_to_length,
  ]


def output_features(vocab: Vocabulary) -> dict[str, seqio.Feature]:
  return {"targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32)}


@gin.configurable
def register_text_task(name: str, file_pattern: str | dict[str, str], vocab_path: str,
                       text_field: str = "text", on_bad_record: str = "error") -> seqio.Task:
  """Registers (or re-registers) a language-modelling task over text files.

  vocab_path: a SentencePiece model, or a folder or file `safejax.vocab.load_vocabulary` reads (a
  model directory holding an imported Hugging Face tokenizer).
  on_bad_record: "error" stops at a bad jsonl / txt record naming its file and line; "skip"
    skips it with a logged warning (see the module docstring).
  """
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  vocab = load_vocabulary(vocab_path)
  source = text_file_source(file_pattern, text_field, on_bad_record)
  # File sources other than TFRecord already yield the bare text.
  preprocessors = lm_preprocessors(text_field if isinstance(source, seqio.TFExampleDataSource) else "text")
  return seqio.TaskRegistry.add(name, source=source, output_features=output_features(vocab),
                                preprocessors=preprocessors)
