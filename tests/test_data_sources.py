"""Reading inputs: every format, every dead-letter reason, reserved tokens stripped and counted."""

import collections
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_fakes import build_tiny_tfds, write_toy_corpus
from safejax.data.records import is_dead_letter
from safejax.data.sources import SourceSpec, iter_source, match_files, read_bytes
from safejax.vocab import HARM_TAG, USER


def _read(spec):
  items = list(iter_source(spec))
  return [i for i in items if not is_dead_letter(i)], [i for i in items if is_dead_letter(i)]


def test_jsonl_every_line_becomes_a_record_or_a_dead_letter(tmp_path):
  expected = write_toy_corpus(tmp_path / "a.jsonl", n=10)
  spec = SourceSpec(name="toy", pattern=str(tmp_path / "*.jsonl"), id_field="id", keep_fields=("title",),
                    max_chars=1000)
  records, dead = _read(spec)
  assert len(records) == 10 and len(records) + len(dead) == 10 + len(expected)
  assert collections.Counter(d["reason"] for d in dead) == expected
  assert {r["id"] for r in records} == {f"toy/{i}" for i in range(10)}
  assert records[0]["meta"] == {"title": "Topic 0"} and records[0]["source"] == "toy"
  bad = next(d for d in dead if d["reason"] == "bad_encoding")
  assert bad["stage"] == "read" and bad["location"].endswith("a.jsonl:6") and "\\xe9" in bad["raw"]


def test_gzipped_jsonl_and_line_number_ids(tmp_path):
  with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
    f.write(json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n")
  records, dead = _read(SourceSpec(name="gz", pattern=str(tmp_path / "*.jsonl.gz")))
  assert [r["id"] for r in records] == ["gz/b.jsonl.gz:1", "gz/b.jsonl.gz:2"] and not dead


def test_reserved_token_strings_are_removed_and_counted(tmp_path):
  (tmp_path / "c.jsonl").write_text(json.dumps({"text": f"a{HARM_TAG} b {USER}c{HARM_TAG}"}) + "\n")
  [record], _ = _read(SourceSpec(name="s", pattern=str(tmp_path / "c.jsonl")))
  assert record["text"] == "a b c" and record["special_tokens_removed"] == 3


def test_score_field_is_validated(tmp_path):
  rows = [{"text": "ok", "s": 3}, {"text": "float ok", "s": 2.0}, {"text": "too high", "s": 6},
          {"text": "bool", "s": True}, {"text": "missing"}]
  (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  records, dead = _read(SourceSpec(name="s", pattern=str(tmp_path / "d.jsonl"), score_field="s"))
  assert [r["score"] for r in records] == [3, 2]
  assert [d["reason"] for d in dead] == ["bad_score"] * 3


def test_csv_with_quoted_newlines_and_malformed_rows(tmp_path):
  (tmp_path / "e.csv").write_bytes(b'id,text\n1,"two\nlines"\n2,plain\n3,too,many\n4\n5,bad \xff byte\n')
  records, dead = _read(SourceSpec(name="c", pattern=str(tmp_path / "e.csv"), format="csv", id_field="id"))
  assert [(r["id"], r["text"]) for r in records] == [("c/1", "two\nlines"), ("c/2", "plain")]
  assert [d["reason"] for d in dead] == ["malformed_row", "malformed_row", "bad_encoding"]


def test_parquet_rows_and_missing_columns(tmp_path):
  table = pa.table({"doc": ["alpha", None, "gamma"], "title": ["A", "B", "C"]})
  pq.write_table(table, tmp_path / "f.parquet")
  records, dead = _read(SourceSpec(name="p", pattern=str(tmp_path / "*.parquet"), format="parquet",
                                   text_field="doc", keep_fields=("title",)))
  assert [(r["text"], r["meta"]["title"]) for r in records] == [("alpha", "A"), ("gamma", "C")]
  assert [d["reason"] for d in dead] == ["missing_field"]
  _, dead = _read(SourceSpec(name="p", pattern=str(tmp_path / "*.parquet"), format="parquet", text_field="nope"))
  assert [d["reason"] for d in dead] == ["missing_field"] * 3


def test_text_files_are_one_document_each(tmp_path):
  (tmp_path / "g.txt").write_text("a whole\nfile")
  (tmp_path / "h.txt").write_bytes(b"x" * 200)
  records, dead = _read(SourceSpec(name="t", pattern=str(tmp_path / "*.txt"), format="text", max_chars=20))
  assert [(r["id"], r["text"]) for r in records] == [("t/g.txt", "a whole\nfile")]
  assert [d["reason"] for d in dead] == ["document_too_large"]


def test_tfds_dataset(tmp_path):
  name = build_tiny_tfds(tmp_path)
  spec = SourceSpec(name="tfds", pattern=name, format="tfds", tfds_data_dir=str(tmp_path))
  records, dead = _read(spec)
  assert sorted(r["text"] for r in records) == ["a calm river", "a rude remark", "an attack plan"]
  assert [d["reason"] for d in dead] == ["empty_document"]
  assert all(r["id"].startswith("tfds/train:") for r in records)


def test_empty_glob_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no files match"):
    match_files(SourceSpec(name="x", pattern=str(tmp_path / "none*.jsonl")))


def test_bad_spec_is_rejected():
  with pytest.raises(ValueError, match="format"):
    SourceSpec(name="x", pattern="*", format="xml")
  with pytest.raises(ValueError, match="name"):
    SourceSpec(name="a/b", pattern="*")


def test_read_bytes_reads_to_the_end_of_short_reads():
  class Trickle(io.BytesIO):
    def read(self, n=-1):
      return super().read(min(3, n) if n and n > 0 else 3)

  assert read_bytes(Trickle(b"0123456789")) == b"0123456789"
  assert read_bytes(Trickle(b"0123456789"), limit=5) == b"01234"


def test_gzipped_csv(tmp_path):
  with gzip.open(tmp_path / "k.csv.gz", "wt", newline="") as f:
    f.write("text\n" + "".join(f"row {i}\n" for i in range(500)))
  records, dead = _read(SourceSpec(name="z", pattern=str(tmp_path / "k.csv.gz"), format="csv"))
  assert len(records) == 500 and not dead and records[-1]["text"] == "row 499"


# -- hostile inputs (issue 13) ------------------------------------------------------------------

def test_nested_reserved_token_fragments_leave_no_token(tmp_path):
  rows = [{"text": "a<potentially_<|user|>unsafe_content>b"},
          {"text": "c<potentially_unsafe_<potentially_unsafe_content>content>d"}]
  (tmp_path / "n.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  records, dead = _read(SourceSpec(name="n", pattern=str(tmp_path / "n.jsonl")))
  assert [(r["text"], r["special_tokens_removed"]) for r in records] == [("ab", 2), ("cd", 2)] and not dead


def test_lone_surrogates_are_dead_letters(tmp_path):
  # JSON may spell a lone surrogate, which is no character and cannot be written as UTF-8.
  lines = ['{"text": "a \\ud800 b"}', '{"id": "x\\udfff", "text": "fine"}', '{"text": "ok", "title": ["\\ud834"]}',
           '{"text": "good \\ud83d\\ude00"}']  # the last is a valid pair: an emoji
  (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
  records, dead = _read(SourceSpec(name="s", pattern=str(tmp_path / "s.jsonl"), id_field=None, keep_fields=("title",)))
  assert [r["text"] for r in records] == ["fine", "good \U0001F600"]  # the id field is not used here
  assert [d["reason"] for d in dead] == ["bad_encoding"] * 2
  assert "\\ud800" in dead[0]["raw"] and all(json.dumps(d, ensure_ascii=False).encode() for d in dead)
  records, dead = _read(SourceSpec(name="s", pattern=str(tmp_path / "s.jsonl"), id_field="id"))
  assert not records and [d["reason"] for d in dead] == ["missing_field", "bad_encoding", "missing_field",
                                                          "missing_field"]
  assert "lone surrogate" in dead[1]["detail"] and dead[1]["id"] == "s/x\\udfff"


def _jsonl_bytes(n: int) -> bytes:
  return "".join(json.dumps({"text": f"document {i} " + "word " * 40}) + "\n" for i in range(n)).encode()


def _compress(kind: str, data: bytes) -> bytes:
  import bz2
  import lzma
  import zlib

  import zstandard

  return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zst": zstandard.ZstdCompressor().compress,
          "deflate": zlib.compress}[kind](data)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zst", "deflate"])
def test_truncated_archives_are_a_dead_letter_not_a_silent_loss(tmp_path, kind):
  data = _compress(kind, _jsonl_bytes(2000))
  (tmp_path / f"whole.jsonl.{kind}").write_bytes(data)
  records, dead = _read(SourceSpec(name="z", pattern=str(tmp_path / f"whole.jsonl.{kind}")))
  assert len(records) == 2000 and not dead
  (tmp_path / f"half.jsonl.{kind}").write_bytes(data[: len(data) // 2])
  records, dead = _read(SourceSpec(name="z", pattern=str(tmp_path / f"half.jsonl.{kind}")))
  assert len(records) < 2000 and [d["reason"] for d in dead] == ["unreadable_file"]
  assert dead[0]["location"].endswith(f"half.jsonl.{kind}")
  assert f"after {len(records)} items" in dead[0]["detail"] and "Error" in dead[0]["detail"]


def test_a_file_that_is_not_its_format_is_a_dead_letter(tmp_path):
  (tmp_path / "a.parquet").write_bytes(b"PAR1 this is not a parquet file at all PAR1")
  (tmp_path / "b.parquet").write_bytes(b"")
  pq.write_table(pa.table({"text": ["kept"]}), tmp_path / "c.parquet")
  whole = (tmp_path / "c.parquet").read_bytes()
  (tmp_path / "d.parquet").write_bytes(whole[:4] + bytes(len(whole) - 8) + whole[-4:])  # zeroed body
  (tmp_path / "e.jsonl.gz").write_bytes(b"plain text with a .gz name\n")
  records, dead = _read(SourceSpec(name="p", pattern=str(tmp_path / "*.parquet"), format="parquet"))
  assert [r["text"] for r in records] == ["kept"]
  assert [(d["reason"], d["location"].rsplit("/", 1)[1]) for d in dead] == [
      ("unreadable_file", "a.parquet"), ("unreadable_file", "b.parquet"), ("unreadable_file", "d.parquet")]
  _, dead = _read(SourceSpec(name="g", pattern=str(tmp_path / "e.jsonl.gz")))
  assert [d["reason"] for d in dead] == ["unreadable_file"] and "Not a gzipped file" in dead[0]["detail"]


def test_json_nested_too_deep_is_malformed(tmp_path):
  (tmp_path / "d.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n" + json.dumps({"text": "after"}) + "\n")
  records, dead = _read(SourceSpec(name="d", pattern=str(tmp_path / "d.jsonl"), max_chars=100_000))
  assert [r["text"] for r in records] == ["after"] and [d["reason"] for d in dead] == ["malformed_json"]


def test_csv_field_over_the_csv_module_limit_is_a_dead_letter_and_reading_goes_on(tmp_path):
  (tmp_path / "big.csv").write_text("id,text\n1,first\n2," + "x" * 200_000 + "\n3,third\n")
  records, dead = _read(SourceSpec(name="c", pattern=str(tmp_path / "big.csv"), format="csv", id_field="id"))
  assert [r["text"] for r in records] == ["first", "third"]
  assert [d["reason"] for d in dead] == ["malformed_row"] and "field limit" in dead[0]["detail"]


# -- issue 23: a byte-order mark is not data; ids compare as text ---------------------------------


@pytest.mark.parametrize("fmt, name, content", [
    ("jsonl", "bom.jsonl", '{"id": "a", "text": "first"}\n{"id": "b", "text": "second"}\n'),
    ("csv", "bom.csv", "id,text\na,first\nb,second\n"),
    ("text", "bom.txt", "first"),
])
@pytest.mark.parametrize("compressed", [False, True])
def test_a_byte_order_mark_is_not_data(tmp_path, fmt, name, content, compressed):
  """Spreadsheets and Windows editors start a UTF-8 file with U+FEFF: the file reads as without it."""
  data = "\ufeff".encode() + content.encode()
  name = name + (".gz" if compressed else "")
  (tmp_path / name).write_bytes(gzip.compress(data) if compressed else data)
  records, dead = _read(SourceSpec(name="s", pattern=str(tmp_path / name), format=fmt,
                                   id_field=None if fmt == "text" else "id"))
  assert not dead
  assert [r["text"] for r in records] == (["first"] if fmt == "text" else ["first", "second"])
  if fmt != "text":
    assert [r["id"] for r in records] == ["s/a", "s/b"]


def test_a_byte_order_mark_inside_a_document_stays(tmp_path):
  (tmp_path / "mid.jsonl").write_text('{"text": "first"}\n{"text": "\ufeffsecond"}\n', encoding="utf-8")
  records, _ = _read(SourceSpec(name="s", pattern=str(tmp_path / "mid.jsonl")))
  assert [r["text"] for r in records] == ["first", "\ufeffsecond"]


def test_ids_compare_as_text(tmp_path):
  from safejax.data.sources import first_of_each_id, normal_id

  assert normal_id(5) == normal_id("5") == normal_id(5.0) == normal_id(" 5 ") == "5"
  assert normal_id(5.5) == "5.5" and normal_id("A") != normal_id("a")
  (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
      {"id": 5, "text": "five"}, {"id": "6", "text": "six"}, {"id": "5", "text": "five again"},
      {"id": 5.0, "text": "five once more"}, {"id": "", "text": "no id"}]))
  records, dead = _read(SourceSpec(name="j", pattern=str(tmp_path / "dup.jsonl"), id_field="id"))
  assert [r["id"] for r in records] == ["j/5", "j/6", "j/5", "j/5"] and [d["reason"] for d in dead] == ["missing_field"]
  kept, duplicates = first_of_each_id(reversed(records))  # whatever order they arrive in
  assert [(r["id"], r["text"]) for r in kept] == [("j/5", "five"), ("j/6", "six")]
  assert all("read_at" not in r for r in kept)
  assert [(d["reason"], d["location"].rsplit("/", 1)[-1], d["raw"]) for d in duplicates] == [
      ("duplicate_id", "dup.jsonl:3", "five again"), ("duplicate_id", "dup.jsonl:4", "five once more")]
  assert all(d["detail"].endswith("read at " + str(tmp_path / "dup.jsonl") + ":1, which is kept")
             for d in duplicates)
