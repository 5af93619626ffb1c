"""Deterministic sharded output: which shard a record goes to, and writing/reading shard files.

Streams are TFRecord files of `tf.train.Example`, the format `seqio.TFExampleDataSource` reads
(and seqio's own cache uses). Each example holds the full record as JSON (`json`) plus the
columns the SeqIO tasks read directly:

  id          bytes
  text        bytes            (text streams)
  turn_roles  bytes, repeated  (refuseweb: "user" / "assistant")
  turn_texts  bytes, repeated

Dead letters are JSON lines, for people to read. A record's shard is a hash of its id and a shard
is sorted by (id, JSON) before writing, so the same records always give byte-identical files,
whatever runner, worker count or bundle order produced them (that is what makes re-runs
idempotent). Files are written through `tf.io.gfile` (local, gs://, ...), the same filesystem
layer seqio reads them with, to a temporary name first and then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator

import tensorflow as tf

from safejax.data.records import DEAD_LETTER


def shard_index(record_id: str, num_shards: int) -> int:
  """The shard of a record: a stable hash of its id, modulo `num_shards`."""
  digest = hashlib.sha256(str(record_id).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little") % num_shards


def shard_path(output_dir: str, stream: str, index: int, num_shards: int) -> str:
  suffix = "jsonl" if stream == DEAD_LETTER else "tfrecord"
  return f"{output_dir}/{stream}/{stream}-{index:05d}-of-{num_shards:05d}.{suffix}"


def shard_pattern(output_dir: str, stream: str) -> str:
  """A glob matching every shard file of a stream, whatever its shard count."""
  return f"{output_dir}/{stream}/{stream}-?????-of-?????.{'jsonl' if stream == DEAD_LETTER else 'tfrecord'}"


def to_json(record: dict) -> str:
  return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def record_to_example(record: dict) -> bytes:
  """A serialized tf.train.Example for one stream record (see the module docstring)."""
  def bytes_feature(values: Iterable[str]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values]))

  features = {"id": bytes_feature([record["id"]]), "json": bytes_feature([to_json(record)])}
  if "text" in record:
    features["text"] = bytes_feature([record["text"]])
  if "turns" in record:
    features["turn_roles"] = bytes_feature(t["role"] for t in record["turns"])
    features["turn_texts"] = bytes_feature(t["text"] for t in record["turns"])
  # Deterministic: protobuf map order otherwise depends on the process.
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


def example_to_record(serialized: bytes) -> dict:
  example = tf.train.Example.FromString(serialized)
  return json.loads(example.features.feature["json"].bytes_list.value[0].decode("utf-8"))


def write_shard(path: str, records: Iterable[dict]) -> int:
  """Writes one shard (sorted, atomically); returns the number of records written."""
  keyed = sorted(((r["id"] or "", to_json(r)), r) for r in records)
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
  try:
    if path.endswith(".jsonl"):
      with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(line + "\n" for (_, line), _ in keyed))  # even an empty write creates the file
    else:
      with tf.io.TFRecordWriter(tmp) as writer:
        for _, record in keyed:
          writer.write(record_to_example(record))
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    # A failed write leaves nothing behind: no half-written .tmp file next to the shards.
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise
  return len(keyed)


def remove_stale_shards(output_dir: str, stream: str, keep: Iterable[str]) -> list[str]:
  """Deletes shard files of `stream` not in `keep` (left by an earlier run with other shard counts)."""
  keep = set(keep)
  stale = [p for p in tf.io.gfile.glob(shard_pattern(output_dir, stream)) if p not in keep]
  for path in stale:
    tf.io.gfile.remove(path)
  return stale


def read_shards(paths: Iterable[str]) -> Iterator[dict]:
  """The records stored in shard files (TFRecord or JSON lines), file by file."""
  for path in paths:
    if path.endswith(".jsonl"):
      with tf.io.gfile.GFile(path, "r") as f:
        for line in f:
          yield json.loads(line)
    else:
      for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
        yield example_to_record(serialized)
