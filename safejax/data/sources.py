"""Reading input documents: jsonl / csv / parquet / text files by glob, and TFDS datasets.

Every input unit (a line, a row, a file, a TFDS example) becomes exactly one item: a document
record (see `records`) or a dead letter saying why not. Reasons:

  blank_line           an empty line in a jsonl file
  bad_encoding         bytes that are not UTF-8
  malformed_json       a jsonl line that is not a JSON object
  malformed_row        a csv row with too many or too few fields
  missing_field        the text (or the configured id / score) field is absent
  wrong_type           the text field is not a string
  empty_document       nothing but whitespace once reserved-token strings are removed
  document_too_large   more than `max_chars` characters (or bytes, before decoding)
  bad_score            a given score that is not an integer in 0..5
  duplicate_id         a second document with an id already read in the same source (ids are
                       compared as text: 5, 5.0 and "5" are one id); the first read is kept
  unreadable_file      a file that cannot be opened or read to its end: corrupt, truncated (a
                       .gz cut short), or not the format its name says (one per file, naming
                       it and how many items were read before; nothing after that is read)

Text is UTF-8, read as `utf-8-sig`: a byte-order mark at the start of a file (spreadsheets and
Windows editors write one) marks the encoding, is not data, and is dropped (else a csv header
reads "\ufefftext" and a jsonl file's first record is not JSON).

Every document goes through `safejax.vocab.sanitize_text`: reserved-token strings (the harm tag,
chat role markers) are removed until none is left, nested fragments included, and the record
counts the removals; a lone surrogate (JSON "\\ud800") in any kept field is `bad_encoding`.

Files are opened through Beam's `FileSystems` (local paths, gs://, s3://, hdfs://, ... whatever
Beam supports) as stored, and decompressed here by their extension (.gz, .bz2, .xz / .lzma, .zst,
.deflate) with decompressors that raise at a truncated stream: Beam's own decompression (like
`tf.data.TextLineDataset`'s) ends a .gz cut short without a word, losing its tail silently. The
Beam pipeline hands this module the files Beam's `fileio` matched; the plain loop matches them itself.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import posixpath
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

import gin
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from safejax.data.records import READ, dead_letter
from safejax.vocab import RejectedText, sanitize_text

FORMATS = ("jsonl", "csv", "parquet", "text", "tfds")
NUM_SCORES = 6
# Where a document was read ("file:line"), carried until the pipeline has checked ids
# (`first_of_each_id`), which drops it.
READ_AT = "read_at"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One input: where it is, how to read it, and which fields hold what.

  Attributes:
    name: short name; prefixes every document id ("<name>/<id>").
    pattern: a file glob (any Beam filesystem), or for `tfds` the dataset name ("name:version").
    format: one of FORMATS. `text` is one document per file.
    text_field: the field (column) holding the document.
    id_field: the field holding a stable id. Without one, file inputs use "<file name>:<line or
      row number>" and TFDS inputs a hash of the text.
    score_field: a field already holding a 0..5 safety score; such documents are not re-scored.
    keep_fields: fields copied into the record's `meta` (e.g. a title).
    split: the TFDS split.
    tfds_data_dir: the TFDS data directory (None: TFDS's default).
    max_chars: longer documents are dead-lettered.
  """

  name: str
  pattern: str
  format: str = "jsonl"
  text_field: str = "text"
  id_field: str | None = None
  score_field: str | None = None
  keep_fields: tuple[str, ...] = ()
  split: str = "train"
  tfds_data_dir: str | None = None
  max_chars: int = 200_000

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f"source {self.name!r}: format must be one of {FORMATS}, not {self.format!r}")
    if not self.name or "/" in self.name:
      raise ValueError(f"source name must be non-empty and contain no '/': {self.name!r}")
    if self.max_chars < 1:
      raise ValueError(f"source {self.name!r}: max_chars must be positive")
    object.__setattr__(self, "keep_fields", tuple(self.keep_fields))

  @property
  def max_bytes(self) -> int:
    # UTF-8 needs at most 4 bytes a character: a longer raw line cannot hold a valid document.
    return 4 * self.max_chars + 4096


def _json_value(value: Any) -> Any:
  """Makes parquet / TFDS values JSON-serializable (numpy scalars, bytes, arrays)."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="backslashreplace")
  if isinstance(value, np.ndarray):
    return [_json_value(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return value.item()
  return value


def make_record(spec: SourceSpec, row: Mapping[str, Any], location: str, default_id: str) -> dict:
  """Validates one parsed input row and turns it into a document record or a dead letter."""
  def reject(reason: str, detail: str, doc_id: str | None = None) -> dict:
    raw = row.get(spec.text_field) if isinstance(row.get(spec.text_field), str) else json.dumps(
        {k: _json_value(v) for k, v in row.items()}, ensure_ascii=False, default=repr)
    return dead_letter(READ, reason, doc_id=doc_id, source=spec.name, location=location,
                       detail=detail, raw=raw)

  if spec.id_field is None:
    local_id = default_id
  elif row.get(spec.id_field) is None or not normal_id(row[spec.id_field]):
    return reject("missing_field", f"no id field {spec.id_field!r}")
  else:
    local_id = normal_id(row[spec.id_field])
  doc_id = f"{spec.name}/{local_id}"
  if spec.text_field not in row or row[spec.text_field] is None:
    return reject("missing_field", f"no text field {spec.text_field!r}", doc_id)
  text = _json_value(row[spec.text_field])
  if not isinstance(text, str):
    return reject("wrong_type", f"text field {spec.text_field!r} holds {type(text).__name__}", doc_id)
  if len(text) > spec.max_chars:
    return reject("document_too_large", f"{len(text)} characters > max_chars={spec.max_chars}", doc_id)
  try:
    text, removed = sanitize_text(text)
  except RejectedText as e:
    return reject(e.reason, f"text field {spec.text_field!r}: {e.detail}", doc_id)
  if not text.strip():
    return reject("empty_document", "no text besides whitespace", doc_id)
  meta = {k: _json_value(row[k]) for k in spec.keep_fields if k in row}
  unwritable = _lone_surrogate_field({"id": doc_id, **{f"meta {k}": v for k, v in meta.items()}})
  if unwritable:
    return reject("bad_encoding", f"{unwritable} holds a lone surrogate", doc_id)
  record = {"id": doc_id, "source": spec.name, "text": text, "meta": meta, "special_tokens_removed": removed,
            READ_AT: location}
  if spec.score_field is not None:
    score = _json_value(row.get(spec.score_field))
    if isinstance(score, float) and score.is_integer():
      score = int(score)
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score < NUM_SCORES:
      return reject("bad_score", f"{spec.score_field!r} = {score!r} is not an integer in 0..5", doc_id)
    record["score"] = score
  return record


def normal_id(value: Any) -> str:
  """An input's id as text, the same however the input typed it: 5, 5.0 and "5" are all "5", so
  two documents the input told apart only by the id's type collide, visibly (`first_of_each_id`);
  surrounding whitespace is no part of an id."""
  value = _json_value(value)
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  return value.strip() if isinstance(value, str) else str(value)


def _natural(text: str) -> list:
  """A sort key that orders the numbers in `text` as numbers ("f.jsonl:9" before "f.jsonl:10")."""
  return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def first_of_each_id(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
  """Documents sharing an id: the first read (by file, then line or row) is kept, every other
  one becomes a `duplicate_id` dead letter naming where the kept one was read. Returns (kept
  records, dead letters), kept in the order of their first appearance; READ_AT is dropped.

  Both runners decide alike: the Beam pipeline groups by id and calls this on each group.
  """
  groups: dict[str, list[dict]] = {}
  for record in records:
    groups.setdefault(record["id"], []).append(record)
  kept, dead = [], []
  for doc_id, group in groups.items():
    group = sorted(group, key=lambda r: (_natural(r[READ_AT]), json.dumps(r, sort_keys=True, ensure_ascii=False)))
    first = group[0]
    for other in group[1:]:
      dead.append(dead_letter(READ, "duplicate_id", doc_id=doc_id, source=other["source"], location=other[READ_AT],
                              detail=f"id {doc_id!r} is also the id of the document read at {first[READ_AT]}, "
                                     "which is kept", raw=other["text"]))
    kept.append({k: v for k, v in first.items() if k != READ_AT})
  return kept, dead


def _lone_surrogate_field(fields: Mapping[str, Any]) -> str | None:
  """The name of the first field whose value (strings nested in lists and dicts too) cannot be
  written as UTF-8, or None."""
  for name, value in fields.items():
    try:
      json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8")
    except UnicodeEncodeError:
      return name
  return None


def _read_jsonl(spec: SourceSpec, path: str, f: IO[bytes]) -> Iterator[dict]:
  name = posixpath.basename(path)
  # Beam's decompressing reader is not iterable; readline works on every file object.
  for line_no, line in enumerate(iter(f.readline, b""), start=1):
    location, default_id = f"{path}:{line_no}", f"{name}:{line_no}"
    line = line.rstrip(b"\r\n")
    if line_no == 1:
      line = line.removeprefix(codecs.BOM_UTF8)  # a byte-order mark (see the module docstring)
    if not line.strip():
      yield dead_letter(READ, "blank_line", source=spec.name, location=location, detail="empty line")
      continue
    if len(line) > spec.max_bytes:
      yield dead_letter(READ, "document_too_large", doc_id=f"{spec.name}/{default_id}", source=spec.name,
                        location=location, detail=f"{len(line)} bytes", raw=line)
      continue
    try:
      row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
      yield dead_letter(READ, "bad_encoding", source=spec.name, location=location, detail=str(e), raw=line)
      continue
    except json.JSONDecodeError as e:
      yield dead_letter(READ, "malformed_json", source=spec.name, location=location, detail=str(e), raw=line)
      continue
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than the parser's stack
      yield dead_letter(READ, "malformed_json", source=spec.name, location=location,
                        detail="JSON nested too deeply to parse", raw=line)
      continue
    if not isinstance(row, dict):
      yield dead_letter(READ, "malformed_json", source=spec.name, location=location,
                        detail=f"a JSON {type(row).__name__}, not an object", raw=line)
      continue
    yield make_record(spec, row, location, default_id)


def _has_surrogates(text: str) -> bool:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return True
  return False


def read_bytes(f: IO[bytes], limit: int | None = None) -> bytes:
  """Reads to the end of `f`, or `limit` bytes. (Beam's decompressing reader returns at most one
  16 MiB buffer per `read()`, so a single call is not enough.)"""
  chunks, size = [], 0
  while limit is None or size < limit:
    chunk = f.read(1 << 20 if limit is None else min(1 << 20, limit - size))
    if not chunk:
      break
    chunks.append(chunk)
    size += len(chunk)
  return b"".join(chunks)


def _read_csv(spec: SourceSpec, path: str, f: IO[bytes]) -> Iterator[dict]:
  # surrogateescape lets one badly encoded row be set aside without losing the rest of the file.
  # csv rows may span lines, so the file is decoded whole (csv inputs are small).
  reader = csv.DictReader(io.StringIO(read_bytes(f).decode("utf-8-sig", errors="surrogateescape"), newline=""))
  name = posixpath.basename(path)
  rows = iter(reader)
  row_no = 0
  while True:
    row_no += 1
    location, default_id = f"{path}:row{row_no}", f"{name}:{row_no}"
    try:
      row = next(rows)
    except StopIteration:
      return
    except csv.Error as e:  # e.g. a field over csv's size limit; the reader resumes at the next line
      yield dead_letter(READ, "malformed_row", source=spec.name, location=location,
                        detail=f"{e} (ends at line {reader.line_num})")
      continue
    raw = ",".join("" if v is None else str(v) for v in row.values())
    if None in row or any(v is None for v in row.values()):
      yield dead_letter(READ, "malformed_row", source=spec.name, location=location,
                        detail=f"expected {len(reader.fieldnames)} fields",
                        raw=raw.encode("utf-8", errors="surrogateescape"))
      continue
    if any(_has_surrogates(k) or _has_surrogates(v) for k, v in row.items()):
      yield dead_letter(READ, "bad_encoding", source=spec.name, location=location,
                        detail="row is not valid UTF-8", raw=raw.encode("utf-8", errors="surrogateescape"))
      continue
    yield make_record(spec, row, location, default_id)


def _read_parquet(spec: SourceSpec, path: str, f: IO[bytes]) -> Iterator[dict]:
  import pyarrow as pa
  import pyarrow.parquet as pq

  name = posixpath.basename(path)
  columns = [c for c in dict.fromkeys((spec.text_field, spec.id_field, spec.score_field, *spec.keep_fields)) if c]
  row_no = 0
  try:
    parquet = pq.ParquetFile(f)
    columns = [c for c in columns if c in parquet.schema_arrow.names]  # absent ones dead-letter per row
    batches = parquet.iter_batches(batch_size=1024, columns=columns)
    for batch in batches:
      for row in batch.to_pylist():
        row_no += 1
        yield make_record(spec, row, f"{path}:row{row_no}", f"{name}:{row_no}")
  except (pa.ArrowException, UnicodeDecodeError) as e:  # ArrowInvalid is a ValueError: caught here, not wider
    raise UnreadableFile(f"not a readable parquet file ({type(e).__name__}: {e})") from None


def _read_text(spec: SourceSpec, path: str, f: IO[bytes]) -> Iterator[dict]:
  name = posixpath.basename(path)
  data = read_bytes(f, spec.max_bytes + 1)
  if len(data) > spec.max_bytes:
    yield dead_letter(READ, "document_too_large", doc_id=f"{spec.name}/{name}", source=spec.name,
                      location=path, detail=f"more than {spec.max_bytes} bytes", raw=data)
    return
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    yield dead_letter(READ, "bad_encoding", doc_id=f"{spec.name}/{name}", source=spec.name,
                      location=path, detail=str(e), raw=data)
    return
  yield make_record(spec, {spec.text_field: text}, path, name)


_FILE_READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "text": _read_text}


class UnreadableFile(Exception):
  """A file a reader cannot go on with (its library's error, worded for the dead letter)."""


class _FrameReader(io.RawIOBase):
  """A zlib (.deflate) or zstd (.zst) stream decompressed frame after frame; raises EOFError when
  the input ends inside a frame (zlib's and zstandard's stream readers just stop there)."""

  def __init__(self, raw: IO[bytes], new_decompressor: Callable[[], Any]):
    self._raw, self._new = raw, new_decompressor
    self._decompressor = new_decompressor()
    self._input, self._output, self._at, self._in_frame = b"", b"", 0, False

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    while self._at == len(self._output):
      if not self._input:
        self._input = self._raw.read(1 << 16)
        if not self._input:
          if self._in_frame:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
          return 0
      self._in_frame = True
      self._output, self._at = self._decompressor.decompress(self._input), 0
      self._input = b""
      if self._decompressor.eof:  # a frame ends; what follows is the next frame
        self._input = self._decompressor.unused_data
        self._decompressor, self._in_frame = self._new(), False
    n = min(len(buffer), len(self._output) - self._at)
    buffer[:n] = self._output[self._at:self._at + n]
    self._at += n
    return n


def _zstd_decompressor():
  import zstandard

  # Beam's window limit, so files compressed with --long read here as they do there.
  return zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()


def decompressed(path: str, raw: IO[bytes]) -> IO[bytes]:
  """`raw` (a file's bytes as stored) decompressed by the extension of `path` (Beam's suffixes)."""
  compression = CompressionTypes.detect_compression_type(path)
  if compression == CompressionTypes.GZIP:
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if compression == CompressionTypes.BZIP2:
    return bz2.BZ2File(raw, mode="rb")
  if compression == CompressionTypes.LZMA:
    return lzma.LZMAFile(raw, mode="rb")
  if compression == CompressionTypes.ZSTD:
    return io.BufferedReader(_FrameReader(raw, _zstd_decompressor))
  if compression == CompressionTypes.DEFLATE:
    return io.BufferedReader(_FrameReader(raw, zlib.decompressobj))
  return raw


def _zstd_error() -> tuple[type[Exception], ...]:
  try:
    import zstandard
  except ImportError:
    return ()
  return (zstandard.ZstdError,)


# What reading a damaged file raises: truncated streams (EOFError), corrupt ones (gzip.BadGzipFile
# and bz2's "Invalid data stream" are OSErrors; zlib.error, LZMAError, ZstdError), unreadable
# storage (OSError) and the readers' own `UnreadableFile`.
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, UnreadableFile, *_zstd_error())


def open_stored(path: str) -> IO[bytes]:
  """A file's bytes as stored (not decompressed), through Beam's filesystems."""
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_file(spec: SourceSpec, path: str, open_raw: Callable[[], IO[bytes]] | None = None) -> Iterator[dict]:
  """Items (records and dead letters) of one input file, decompressed by its extension.

  A file that cannot be opened or read to its end ends in one `unreadable_file` dead letter that
  names it, says why and how many items came before; those items stand (they were read whole),
  and nothing after the failure passes unnoticed.

  Args:
    open_raw: opens the file as stored (default: `open_stored(path)`); the Beam pipeline passes
      its matched file's opener.
  """
  items = 0
  try:
    with (open_raw or (lambda: open_stored(path)))() as raw, decompressed(path, raw) as f:
      for item in _FILE_READERS[spec.format](spec, path, f):
        items += 1
        yield item
  except _READ_ERRORS as e:
    yield dead_letter(READ, "unreadable_file", source=spec.name, location=path,
                      detail=f"{type(e).__name__}: {e} (after {items} items; the rest of the file is not read)")


def match_files(spec: SourceSpec) -> list[str]:
  """The files of a file source, sorted; raises FileNotFoundError when the glob matches nothing."""
  matched = FileSystems.match([spec.pattern])[0].metadata_list
  if not matched:
    raise FileNotFoundError(f"source {spec.name!r}: no files match {spec.pattern!r}")
  return sorted(m.path for m in matched)


def tfds_row(spec: SourceSpec, example: Mapping[str, Any]) -> dict:
  """A record (or dead letter) from one TFDS example (numpy values, as from `tfds.as_numpy`)."""
  row = {k: _json_value(v) for k, v in example.items()}
  text = row.get(spec.text_field)
  digest = "none"
  if isinstance(text, str):
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:20]
  return make_record(spec, row, f"tfds:{spec.pattern}/{spec.split}", f"{spec.split}:{digest}")


def tfds_builder(spec: SourceSpec):
  import tensorflow_datasets as tfds

  return tfds.builder(spec.pattern, data_dir=spec.tfds_data_dir)


def iter_source(spec: SourceSpec) -> Iterator[dict]:
  """Every item of a source, in file / dataset order (the plain-loop runner's reader)."""
  if spec.format == "tfds":
    import tensorflow_datasets as tfds

    dataset = tfds_builder(spec).as_dataset(split=spec.split, shuffle_files=False)
    for example in tfds.as_numpy(dataset):
      yield tfds_row(spec, example)
    return
  for path in match_files(spec):
    yield from read_file(spec, path)
