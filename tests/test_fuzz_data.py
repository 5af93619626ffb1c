"""Fuzzing text and files (issue 13): no reserved id ever comes from source text, and no input is
lost silently.

  text   arbitrary unicode with interleaved and nested reserved-token fragments, through the
         sanitiser, the pipeline's readers, the manifest and the vocabulary;
  files  random truncations and byte flips of jsonl, jsonl.gz and parquet inputs: every run
         dead-letters or errors clearly, and never leaves a half-written shard as complete.

Budgets are bounded (see `fuzzing.fuzz_settings`); the whole module takes well under a minute.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FRAGMENTS, LONE_SURROGATES, fuzz_settings, hostile_text, tally_fixture
from safejax.data import manifest as manifest_lib, shards
from safejax.data.pipeline import PipelineConfig, run_loop
from safejax.data.records import is_dead_letter
from safejax.data.routing import RoutingTable
from safejax.data.sources import SourceSpec, read_file
from safejax.vocab import SPECIAL_TOKENS, RejectedText, sanitize_text, strip_special_tokens

tally = tally_fixture("data")


def _has_token(text: str) -> bool:
  return any(token in text for token in SPECIAL_TOKENS)


def _writable(text: str) -> bool:
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def _reserved(vocab) -> set[int]:
  return set(vocab.special_ids.values())


# -- text ---------------------------------------------------------------------------------------

@fuzz_settings(300)
@given(text=hostile_text())
def test_sanitiser_leaves_no_reserved_token(text, tiny_vocab, tally):
  clean, removed = strip_special_tokens(text)
  assert not _has_token(clean)
  assert strip_special_tokens(clean) == (clean, 0)  # a fixpoint
  if not _has_token(text):
    assert (clean, removed) == (text, 0)  # text without tokens is untouched
  assert removed * min(map(len, SPECIAL_TOKENS)) <= len(text) - len(clean)
  assert not _reserved(tiny_vocab) & set(tiny_vocab.tokenizer.encode(clean))
  tally.add("unicode text with reserved-token fragments (sanitiser + vocabulary)",
            "tokens removed" if removed else "unchanged")


@fuzz_settings(30)
@given(texts=st.lists(hostile_text(), min_size=1, max_size=16))
def test_tensorflow_tokenizer_yields_no_reserved_id_from_sanitized_text(texts, tiny_vocab, tally):
  # seqio tokenizes with TF's SentencePiece op, not the Python one: both must agree there is none.
  import tensorflow as tf

  clean = [sanitize_text(t)[0] for t in texts]
  ids = tiny_vocab.encode_tf(tf.constant(clean))
  assert not _reserved(tiny_vocab) & set(ids.flat_values.numpy().tolist())
  tally.add("batches of sanitized text through seqio's TF tokenizer", "no reserved id", len(texts))


def _line(kind: str, text: str, score, ensure_ascii: bool) -> bytes:
  if kind == "record":
    line = json.dumps({"text": text, "score": score}, ensure_ascii=ensure_ascii)
    return line.encode("utf-8", errors="surrogatepass")  # lone surrogates become invalid UTF-8
  return text.encode("utf-8", errors="surrogatepass")


hostile_line = st.one_of(
    st.builds(_line, st.just("record"), hostile_text(surrogates=True),
              st.one_of(st.integers(-2, 7), st.floats(allow_nan=True), st.text(max_size=3), st.none()), st.booleans()),
    st.builds(lambda v: json.dumps(v).encode(), st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["text", "score", "id", "x"]),
                                                                           inner, max_size=4)),
        max_leaves=10)),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b"   ", b"\r", b"{", b'{"text": "\\ud800"}', b"[" * 5000, b'{"text": "' + b"\xff" * 3 + b'"}']),
)


def _lines_in(data: bytes) -> int:
  """How many lines `readline` yields from `data`."""
  return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


@fuzz_settings(40)
@given(lines=st.lists(hostile_line, min_size=1, max_size=12))
def test_every_hostile_jsonl_line_is_a_clean_record_or_a_dead_letter(lines, tiny_vocab, tally):
  data = b"\n".join(lines) + b"\n"
  items = list(read_file(SourceSpec(name="f", pattern="unused", score_field="score"), "hostile.jsonl",
                         lambda: io.BytesIO(data)))
  assert len(items) == _lines_in(data)  # every line accounted for, once
  for item in items:
    assert _writable(json.dumps(item, ensure_ascii=False))
    if is_dead_letter(item):
      tally.add("hostile jsonl line", f"dead letter ({item['reason']})")
      continue
    assert not _has_token(item["text"])
    assert not _reserved(tiny_vocab) & set(tiny_vocab.tokenizer.encode(item["text"]))
    tally.add("hostile jsonl line", "clean record")


_ALL_KEEP = RoutingTable(keep=(0, 1, 2, 3, 4, 5), rephrase=(), refuse=(), tag_copy=())


def _check_run(out: Path, manifest: dict, expected_in: int) -> None:
  """The manifest balances and counts every input unit; each shard it lists reads back whole; no
  temporary file is left."""
  assert manifest["checks_hold"] and manifest["documents"]["in"] == expected_in
  for stream, info in manifest["streams"].items():
    for shard in info["shards"]:
      assert sum(1 for _ in shards.read_shards([str(out / shard["path"])])) == shard["records"]
  assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@fuzz_settings(12)
@given(texts=st.lists(hostile_text(surrogates=True), min_size=1, max_size=10))
def test_pipeline_accounts_for_every_hostile_document(texts, tiny_vocab, tmp_path_factory, tally):
  directory = tmp_path_factory.mktemp("fuzz_pipeline")
  data = b"".join(_line("record", t, i % 6, i % 2 == 0) + b"\n" for i, t in enumerate(texts))
  (directory / "in.jsonl").write_bytes(data)
  spec = SourceSpec(name="f", pattern=str(directory / "in.jsonl"), score_field="score")
  config = PipelineConfig(sources=[spec], output_dir=str(directory / "out"), num_shards=1, routing=_ALL_KEEP)
  manifest = run_loop(config).manifest
  _check_run(directory / "out", manifest, len(texts))
  for stream in ("raw", "keep"):
    for record in manifest_lib.read_stream(str(directory / "out"), stream):
      assert not _reserved(tiny_vocab) & set(tiny_vocab.tokenizer.encode(record["text"]))
  tally.add("hostile documents through `prepare` (loop runner)", "accounted in the manifest", len(texts))
  tally.add("hostile documents through `prepare` (loop runner)", "records lost", 0)


_IDS = st.one_of(st.sampled_from([5, "5", 5.0, " 5", "5 ", 6, "6", "x", "X", ""]), st.integers(0, 3),
                 st.text(max_size=2))


@fuzz_settings(40)
@given(rows=st.lists(st.tuples(_IDS, hostile_text()), min_size=1, max_size=10), bom=st.booleans())
def test_ids_and_byte_order_marks_through_prepare(rows, bom, tmp_path_factory, tally):
  """Issue 23: ids however typed (5, "5", 5.0, " 5") name one document, so a second one is a
  `duplicate_id` dead letter, counted; a byte-order mark before the first record changes nothing."""
  directory = tmp_path_factory.mktemp("fuzz_ids")
  body = b"".join(json.dumps({"id": i, "text": t, "score": 0}).encode() + b"\n" for i, t in rows)
  (directory / "in.jsonl").write_bytes(("\ufeff".encode() if bom else b"") + body)
  spec = SourceSpec(name="f", pattern=str(directory / "in.jsonl"), id_field="id", score_field="score")
  without_bom = list(read_file(spec, str(directory / "in.jsonl"), lambda: io.BytesIO(body)))
  assert list(read_file(spec, str(directory / "in.jsonl"))) == without_bom
  records = [item for item in without_bom if not is_dead_letter(item)]
  config = PipelineConfig(sources=[spec], output_dir=str(directory / "out"), num_shards=1, routing=_ALL_KEEP)
  manifest = run_loop(config).manifest
  _check_run(directory / "out", manifest, len(rows))
  raw_ids = [r["id"] for r in manifest_lib.read_stream(str(directory / "out"), "raw")]
  assert len(raw_ids) == len(set(raw_ids)) == len({r["id"] for r in records})
  duplicates = manifest["dead_lettered"].get("read/duplicate_id", 0)
  assert duplicates == len(records) - len(set(raw_ids))
  tally.add("ids 5 / \"5\" / 5.0 through `prepare`" + (" (file with a BOM)" if bom else ""),
            "duplicate_id dead letters, counted" if duplicates else "unique ids kept", max(duplicates, 1))


# -- files --------------------------------------------------------------------------------------

def _corpus_rows(n: int = 60) -> list[dict]:
  return [{"text": f"document {i} " + "word " * (i % 7) + FRAGMENTS[i % len(FRAGMENTS)], "score": i % 6}
          for i in range(n)]


def _encoded(kind: str) -> bytes:
  rows = _corpus_rows()
  jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
  if kind == "jsonl":
    return jsonl
  if kind == "jsonl.gz":
    return gzip.compress(jsonl)
  sink = io.BytesIO()
  pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=16)
  return sink.getvalue()


ORIGINALS = {kind: _encoded(kind) for kind in ("jsonl", "jsonl.gz", "parquet")}


@st.composite
def damaged(draw):
  """(kind, damaged bytes, what was done): a truncation, byte flips, or both."""
  kind = draw(st.sampled_from(sorted(ORIGINALS)))
  data = bytearray(ORIGINALS[kind])
  damage = draw(st.sampled_from(["truncate", "flip", "truncate+flip"]))
  if "flip" in damage:
    for _ in range(draw(st.integers(1, 8))):
      at = draw(st.integers(0, len(data) - 1))
      data[at] ^= draw(st.integers(1, 255))
  if "truncate" in damage:
    data = data[: draw(st.integers(0, len(data) - 1))]
  return kind, bytes(data), damage


def _expected_units(kind: str, data: bytes) -> int | None:
  """The input units an independent reader finds in `data`, or None if it cannot read it whole."""
  try:
    if kind == "jsonl":
      return _lines_in(data)
    if kind == "jsonl.gz":
      return _lines_in(gzip.decompress(data))
    return pq.read_table(io.BytesIO(data)).num_rows
  except Exception:  # noqa: BLE001  any failure: the file is not whole
    return None


@fuzz_settings(150)
@given(case=damaged())
def test_damaged_files_are_dead_lettered_never_lost_silently(case, tally):
  kind, data, damage = case
  spec = SourceSpec(name="d", pattern="unused", format="parquet" if kind == "parquet" else "jsonl",
                    score_field="score")
  items = list(read_file(spec, f"damaged.{kind}", lambda: io.BytesIO(data)))
  unreadable = [i for i in items if is_dead_letter(i) and i["reason"] == "unreadable_file"]
  expected = _expected_units(kind, data)
  if expected is None:
    # What an independent reader cannot read whole must not pass as whole.
    assert unreadable, f"{kind} damaged ({damage}) read as whole: {len(items)} items"
    assert unreadable[-1] is items[-1] and f"damaged.{kind}" in unreadable[-1]["location"]
    outcome = "unreadable_file dead letter"
  elif unreadable:
    outcome = "unreadable_file dead letter"  # stricter than the reference reader (e.g. a bad row group)
  else:
    assert len(items) == expected
    outcome = "read whole, bad rows dead-lettered" if any(map(is_dead_letter, items)) else "read whole"
  for item in items:
    assert _writable(json.dumps(item, ensure_ascii=False))
    if not is_dead_letter(item):
      assert not _has_token(item["text"])
  tally.add(f"{kind} {damage}", outcome)
  tally.add(f"{kind} {damage}", "records lost", 0)


@fuzz_settings(10)
@given(case=damaged())
def test_damaged_files_through_prepare_still_write_the_manifest(case, tmp_path_factory, tally):
  kind, data, damage = case
  directory = tmp_path_factory.mktemp("fuzz_files")
  (directory / f"in.{kind}").write_bytes(data)
  spec = SourceSpec(name="d", pattern=str(directory / f"in.{kind}"), score_field="score",
                    format="parquet" if kind == "parquet" else "jsonl")
  config = PipelineConfig(sources=[spec], output_dir=str(directory / "out"), num_shards=2, routing=_ALL_KEEP)
  manifest = run_loop(config).manifest
  items = list(read_file(spec, str(directory / f"in.{kind}")))
  _check_run(directory / "out", manifest, len(items))
  tally.add(f"{kind} {damage} through `prepare`", "manifest written and balanced")


def test_a_lone_surrogate_through_the_sanitiser_is_rejected_with_a_reason():
  for surrogate in LONE_SURROGATES:
    with pytest.raises(RejectedText) as error:
      sanitize_text(f"a{surrogate}b")
    assert error.value.reason == "bad_encoding"
