"""SeqIO Tasks over plain text corpora: files by glob (jsonl, jsonl.gz, txt, TFRecord).

  register_text_task("wiki_text", "../shared/data/pretrain/wikipedia/*.jsonl.gz", vocab_path)

Formats, chosen by file name:
  *.jsonl, *.jsonl.gz   one JSON object per line; the document is its `text_field`
  *.tfrecord*           tf.train.Example with a bytes feature `text_field` (what the Beam pipeline writes)
  *.txt, *.txt.gz       one document per line
Documents are tokenized, given an EOS, and split into chunks of the feature length, so a long
document feeds several training sequences instead of being truncated (the trainer then packs).
"""

from __future__ import annotations

import functools

import gin
import seqio
import tensorflow as tf

from safejax.vocab import Vocabulary, load_vocabulary


def _gzip(pattern: str) -> str | None:
  return "GZIP" if pattern.endswith(".gz") else None


def _parse_json_text(line: tf.Tensor, text_field: str) -> tf.Tensor:
  import json

  def parse(raw: bytes) -> bytes:
    record = json.loads(raw)
    text = record.get(text_field)
    if not isinstance(text, str):
      raise ValueError(f"jsonl record without a string {text_field!r}: {raw[:200]!r}")
    return text.encode("utf-8")

  return tf.reshape(tf.numpy_function(parse, [line], tf.string, stateful=False), [])


def text_file_source(file_pattern: str | dict[str, str], text_field: str = "text") -> seqio.DataSource:
  """A file-sharded seqio source yielding {"text": string} from jsonl / TFRecord / txt files."""
  split_to_pattern = file_pattern if isinstance(file_pattern, dict) else {"train": file_pattern}
  pattern = next(iter(split_to_pattern.values()))
  if ".tfrecord" in pattern:
    return seqio.TFExampleDataSource(
        split_to_pattern, feature_description={text_field: tf.io.FixedLenFeature([], tf.string)})
  compression = _gzip(pattern)
  if ".jsonl" in pattern:
    def read(path):
      lines = tf.data.TextLineDataset(path, compression_type=compression)
      return lines.map(lambda l: _parse_json_text(l, text_field), num_parallel_calls=tf.data.AUTOTUNE)
  elif ".txt" in pattern:
    read = lambda path: tf.data.TextLineDataset(path, compression_type=compression)
  else:
    raise ValueError(f"{pattern}: unknown text format (jsonl[.gz], txt[.gz] or tfrecord)")
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
                       text_field: str = "text") -> seqio.Task:
  """Registers (or re-registers) a language-modelling task over text files.

  vocab_path: a SentencePiece model, or a folder or file `safejax.vocab.load_vocabulary` reads (a
  model directory holding an imported Hugging Face tokenizer).
  """
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  vocab = load_vocabulary(vocab_path)
  source = text_file_source(file_pattern, text_field)
  # File sources other than TFRecord already yield the bare text.
  preprocessors = lm_preprocessors(text_field if isinstance(source, seqio.TFExampleDataSource) else "text")
  return seqio.TaskRegistry.add(name, source=source, output_features=output_features(vocab),
                                preprocessors=preprocessors)
