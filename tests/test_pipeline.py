"""The pipeline end to end: Beam and loop runners agree, accounting balances, re-runs are idempotent."""

import collections
import hashlib
import json
from pathlib import Path

import pytest

from data_fakes import FailingBackend, KeywordScorer, build_tiny_tfds, toy_document, write_toy_corpus
from safejax.backends import TemplateBackend
from safejax.data import manifest as manifest_lib, shards
from safejax.data.pipeline import PipelineConfig, run_beam, run_loop
from safejax.data.records import DEAD_LETTER, STREAMS
from safejax.data.routing import RoutingTable
from safejax.data.sources import SourceSpec
from safejax.vocab import HARM_TAG

IN_MEMORY = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


def _config(corpus_dir: Path, out: Path, **kwargs) -> PipelineConfig:
  spec = SourceSpec(name="toy", pattern=str(corpus_dir / "*.jsonl"), id_field="id", keep_fields=("title",),
                    max_chars=1000)
  defaults = dict(sources=[spec], output_dir=str(out), scorer=KeywordScorer(), num_shards=3, tag_p=0.2,
                  score_batch_size=7, generate_batch_size=4)
  return PipelineConfig(**{**defaults, **kwargs})


def _files(out: Path) -> dict[str, str]:
  return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}


def _stream(out: Path, stream: str) -> list[dict]:
  return list(shards.read_shards(manifest_lib.stream_files(str(out), stream)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
  directory = tmp_path_factory.mktemp("corpus")
  expected_dead = write_toy_corpus(directory / "toy.jsonl", n=36)
  return directory, expected_dead


@pytest.fixture(scope="module")
def beam_run(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("beam")
  return out, run_beam(_config(corpus[0], out), IN_MEMORY)


def test_accounting_balances_on_broken_input(corpus, beam_run):
  _, expected_dead = corpus
  out, manifest = beam_run
  docs = manifest["documents"]
  assert manifest["checks_hold"] and all(manifest["checks"].values())
  # 36 good documents, scores i % 6: 6 keep, 18 rephrase, 12 refuse; 7 broken lines.
  assert docs == {"in": 43, "kept": 6, "rephrased": 18, "refused": 12, "tagged": 0, "dead_lettered": 7}
  assert docs["in"] == docs["kept"] + docs["rephrased"] + docs["refused"] + docs["tagged"] + docs["dead_lettered"]
  assert manifest["dead_lettered"] == {f"read/{reason}": n for reason, n in expected_dead.items()}
  assert manifest["score_histogram"] == [6] * 6
  streams = {s: manifest["streams"][s]["records"] for s in (*STREAMS, DEAD_LETTER)}
  # Tag copies of the unsafe (>= 3) documents: 6 rephrased with score 3 and the 12 refused.
  assert streams == {"raw": 36, "keep": 6, "rephrase": 18, "refuseweb": 12, "moral_education": 12,
                     "tagged": 18, "dead_letter": 7}
  assert manifest["tags"]["tag_copies"] == 18
  assert manifest["special_tokens_removed"]["input"] == 1  # the role marker smuggled into document 0
  dead = _stream(out, DEAD_LETTER)
  assert collections.Counter(d["reason"] for d in dead) == expected_dead
  assert all(d["raw"] is not None or d["reason"] == "blank_line" for d in dead)


def test_tags_only_in_the_tagged_stream(beam_run):
  out, manifest = beam_run
  for stream in ("raw", "keep", "rephrase", "moral_education"):
    assert not any(HARM_TAG in r["text"] for r in _stream(out, stream)), stream
  assert not any(HARM_TAG in t["text"] for r in _stream(out, "refuseweb") for t in r["turns"])
  tagged = _stream(out, "tagged")
  assert sum(r["text"].count(HARM_TAG) for r in tagged) == manifest["tags"]["inserted"] > 0
  assert all(r["score"] >= 3 for r in tagged)
  raw = {r["id"]: r for r in _stream(out, "raw")}
  assert all(r["text"].replace(HARM_TAG, "") == raw[r["source_id"]]["text"] for r in tagged)


def test_every_output_traces_back_to_one_input(beam_run):
  out, _ = beam_run
  raw_ids = {r["id"] for r in _stream(out, "raw")}
  for stream in ("rephrase", "refuseweb", "moral_education", "tagged"):
    sources = [r["source_id"] for r in _stream(out, stream)]
    assert len(sources) == len(set(sources)) and set(sources) <= raw_ids, stream
  assert {r["id"] for r in _stream(out, "keep")} <= raw_ids


def test_loop_runner_writes_the_same_bytes_as_beam(corpus, beam_run, tmp_path):
  beam_out, _ = beam_run
  result = run_loop(_config(corpus[0], tmp_path))
  assert _files(tmp_path) == _files(beam_out)
  assert set(result.seconds) == {"read", "score", "route", "rephrase", "refuse", "tag", "write"}
  assert result.documents["read"] == 43 and result.documents["score"] == 36


def test_rerun_is_idempotent(corpus, beam_run):
  out, _ = beam_run
  before = _files(out)
  run_beam(_config(corpus[0], out), IN_MEMORY)
  assert _files(out) == before


@pytest.mark.slow
def test_worker_processes_do_not_change_the_output(tmp_path):
  # Subprocess workers cannot import the test doubles: inputs carry their scores instead.
  corpus_dir = tmp_path / "in"
  corpus_dir.mkdir()
  rows = [{"id": i, "text": f"document number {i} " * 10, "score": i % 6} for i in range(60)]
  (corpus_dir / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  spec = SourceSpec(name="s", pattern=str(corpus_dir / "*.jsonl"), id_field="id", score_field="score")
  outs = [tmp_path / "one", tmp_path / "two"]
  run_beam(PipelineConfig(sources=[spec], output_dir=str(outs[0])), IN_MEMORY)
  run_beam(PipelineConfig(sources=[spec], output_dir=str(outs[1])),
           ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
  assert _files(outs[0]) == _files(outs[1])


def test_fewer_shards_replace_the_old_ones(corpus, tmp_path):
  run_loop(_config(corpus[0], tmp_path, num_shards=3))
  manifest = run_loop(_config(corpus[0], tmp_path, num_shards=2)).manifest
  tfrecords = sorted(p.name for p in (tmp_path / "raw").iterdir())
  assert tfrecords == ["raw-00000-of-00002.tfrecord", "raw-00001-of-00002.tfrecord"]
  assert manifest["streams"]["raw"]["records"] == 36


def test_generation_failures_are_dead_lettered_and_still_balance(tmp_path):
  corpus_dir = tmp_path / "in"
  docs = [toy_document(i) for i in range(12)]
  docs[1]["title"] = "fail-rephrase"          # score 1
  docs[4]["title"] = "fail-moral_education"   # score 4: its dialogue is dropped too
  docs[11]["title"] = "fail-refuseweb"        # score 5
  corpus_dir.mkdir()
  (corpus_dir / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  config = _config(corpus_dir, tmp_path / "out", backend=FailingBackend(TemplateBackend()))
  manifest = run_beam(config, IN_MEMORY)
  assert manifest["checks_hold"]
  assert manifest["documents"] == {"in": 12, "kept": 2, "rephrased": 5, "refused": 2, "tagged": 0, "dead_lettered": 3}
  assert manifest["dead_lettered"] == {"generate/rephrase_failed": 1, "generate/moral_education_failed": 1,
                                       "generate/refuseweb_failed": 1}
  assert manifest["streams"]["refuseweb"]["records"] == manifest["streams"]["moral_education"]["records"] == 2


def test_unscorable_documents_and_given_scores(tmp_path):
  corpus_dir = tmp_path / "in"
  corpus_dir.mkdir()
  rows = [{"id": 0, "text": "calm", "score": 5}, {"id": 1, "text": "an attack"}, {"id": 2, "text": "unscorable"}]
  (corpus_dir / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  spec = SourceSpec(name="s", pattern=str(corpus_dir / "*.jsonl"), id_field="id", score_field=None)
  manifest = run_loop(PipelineConfig(sources=[spec], output_dir=str(tmp_path / "o"), scorer=KeywordScorer())).manifest
  assert manifest["documents"]["refused"] == 1 and manifest["dead_lettered"] == {"score/unscored": 1}
  # Without a scorer, documents must carry their score.
  given = SourceSpec(name="s", pattern=str(corpus_dir / "*.jsonl"), id_field="id", score_field="score")
  manifest = run_loop(PipelineConfig(sources=[given], output_dir=str(tmp_path / "p"))).manifest
  assert manifest["documents"]["refused"] == 1 and manifest["dead_lettered"] == {"read/bad_score": 2}
  assert manifest["checks_hold"]
  with pytest.raises(ValueError, match="no score_field and no scorer"):
    PipelineConfig(sources=[spec], output_dir=str(tmp_path / "q"))


def test_tag_only_route_counts_as_tagged(corpus, tmp_path):
  table = RoutingTable(keep=(0,), rephrase=(1, 2), refuse=(), tag=(3, 4, 5), tag_copy=(3, 4, 5))
  manifest = run_loop(_config(corpus[0], tmp_path, routing=table)).manifest
  assert manifest["checks_hold"]
  assert manifest["documents"] == {"in": 43, "kept": 6, "rephrased": 12, "refused": 0, "tagged": 18, "dead_lettered": 7}
  assert manifest["streams"]["tagged"]["records"] == 18 and manifest["tags"]["tag_copies"] == 0


def test_manifest_checks_catch_a_lost_document():
  summaries = [{"stream": "raw", "path": "raw/x", "counts": [(("records",), 2), (("chars",), 8), (("score", 0), 2)]},
               {"stream": "keep", "path": "keep/x", "counts": [(("records",), 1), (("chars",), 4),
                                                               (("disposition", "kept", "s"), 1)]}]
  manifest = manifest_lib.build_manifest({"s": 2}, summaries, {})
  assert not manifest["checks_hold"]
  assert not manifest["checks"]["in = kept + rephrased + refused + tagged + dead_lettered"]
  assert manifest["checks"]["streams.keep = kept"]


def test_prepare_command_runs_from_gin(tmp_path, capsys):
  from safejax import cli

  corpus_dir = tmp_path / "in"
  corpus_dir.mkdir()
  rows = [{"id": i, "text": f"document number {i} " * 10, "score": i % 6, "title": f"T{i}"} for i in range(12)]
  (corpus_dir / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  gin_file = tmp_path / "run.gin"
  gin_file.write_text(f"""
import safejax.data.pipeline
import safejax.data.sources
prepare.config = @PipelineConfig()
prepare.runner = 'beam'
prepare.beam_options = ['--direct_num_workers=1', '--direct_running_mode=in_memory']
PipelineConfig.output_dir = '{tmp_path / "out"}'
PipelineConfig.num_shards = 2
PipelineConfig.sources = [@toy/SourceSpec()]
toy/SourceSpec.name = 'toy'
toy/SourceSpec.pattern = '{corpus_dir}/*.jsonl'
toy/SourceSpec.id_field = 'id'
toy/SourceSpec.score_field = 'score'
toy/SourceSpec.keep_fields = ['title']
""")
  assert cli.main(["prepare", f"--gin_file={gin_file}"]) == 0
  printed = capsys.readouterr().out
  assert "in 12 = kept 2 + rephrased 6 + refused 4 + tagged 0 + dead-lettered 0" in printed
  assert (tmp_path / "out" / "report_card.png").stat().st_size > 0
  card = json.loads((tmp_path / "out" / "report_card.json").read_text())
  assert card["before"]["score_histogram"] == [2] * 6


def test_tfds_source_in_beam_and_loop(tmp_path):
  name = build_tiny_tfds(tmp_path / "tfds")
  spec = SourceSpec(name="t", pattern=name, format="tfds", tfds_data_dir=str(tmp_path / "tfds"))
  config = PipelineConfig(sources=[spec], output_dir=str(tmp_path / "beam"), scorer=KeywordScorer())
  manifest = run_beam(config, IN_MEMORY)
  assert manifest["checks_hold"] and manifest["documents"] == {
      "in": 4, "kept": 1, "rephrased": 1, "refused": 1, "tagged": 0, "dead_lettered": 1}
  run_loop(PipelineConfig(sources=[spec], output_dir=str(tmp_path / "loop"), scorer=KeywordScorer()))
  assert _files(tmp_path / "loop") == _files(tmp_path / "beam")


def _hostile_corpus(directory: Path) -> int:
  """A jsonl with a lone surrogate and nested reserved-token fragments, a truncated .jsonl.gz and a
  corrupt parquet file; returns the number of good documents."""
  import gzip

  directory.mkdir(parents=True)
  rows = [{"id": i, "text": f"document number {i} " * 5, "score": i % 6} for i in range(10)]
  lines = [json.dumps(r) for r in rows] + ['{"id": 99, "text": "lone \\ud800 surrogate", "score": 0}',
                                           json.dumps({"id": 98, "text": "<potentially_<|user|>unsafe_content>",
                                                       "score": 0})]
  (directory / "a.jsonl").write_text("\n".join(lines) + "\n")
  packed = gzip.compress("".join(json.dumps({"id": 100 + i, "text": f"gz {i} " * 50, "score": 1}) + "\n"
                                 for i in range(400)).encode())
  (directory / "b.jsonl.gz").write_bytes(packed[: len(packed) // 2])
  return len(rows)


@pytest.mark.parametrize("runner", ["loop", "beam"])
def test_hostile_inputs_are_dead_letters_and_the_manifest_is_written(tmp_path, runner):
  good = _hostile_corpus(tmp_path / "in")
  (tmp_path / "in" / "c.parquet").write_bytes(b"PAR1 garbage PAR1")
  specs = [SourceSpec(name="j", pattern=str(tmp_path / "in" / "*.jsonl*"), id_field="id", score_field="score"),
           SourceSpec(name="p", pattern=str(tmp_path / "in" / "*.parquet"), format="parquet", score_field="score")]
  config = PipelineConfig(sources=specs, output_dir=str(tmp_path / "out"), num_shards=2)
  manifest = run_loop(config).manifest if runner == "loop" else run_beam(config, IN_MEMORY)
  assert manifest["checks_hold"] and (tmp_path / "out" / "manifest.json").is_file()
  dead = manifest["dead_lettered"]
  assert dead["read/bad_encoding"] == 1 and dead["read/empty_document"] == 1  # the nested fragments: nothing left
  assert dead["read/unreadable_file"] == 2  # the truncated gz and the corrupt parquet, one each
  raw = _stream(tmp_path / "out", "raw")
  assert len([r for r in raw if r["id"].startswith("j/") and int(r["id"][2:]) < 100]) == good
  assert all("<" not in r["text"] for r in raw)
  assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


def test_a_failed_shard_write_leaves_no_temporary_file_and_no_manifest(corpus, tmp_path, monkeypatch):
  run_loop(_config(corpus[0], tmp_path))
  assert (tmp_path / "manifest.json").is_file()

  def broken(record):
    raise OSError("disk full")

  monkeypatch.setattr(shards, "record_to_example", broken)
  with pytest.raises(OSError, match="disk full"):
    run_loop(_config(corpus[0], tmp_path))
  assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
  # The old manifest would vouch for shards this run may have half replaced: it is gone.
  assert not (tmp_path / "manifest.json").exists()


def test_duplicate_ids_are_dead_letters_counted_in_the_manifest(tmp_path):
  """ids 5, "5" and 5.0 name one document: the first read is kept, the others are set aside as
  `duplicate_id`, and the accounting still balances; both runners write the same bytes."""
  rows = [{"id": 5, "text": "five", "s": 0}, {"id": "5", "text": "five again", "s": 0},
          {"id": 6, "text": "six", "s": 0}, {"id": 5.0, "text": "five once more", "s": 1}]
  (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  outs = {}
  for name in ("loop", "beam"):
    spec = SourceSpec(name="d", pattern=str(tmp_path / "dup.jsonl"), id_field="id", score_field="s")
    config = PipelineConfig(sources=[spec], output_dir=str(tmp_path / name), num_shards=2)
    manifest = run_loop(config).manifest if name == "loop" else run_beam(config, IN_MEMORY)
    assert manifest["checks_hold"] and manifest["documents"]["in"] == 4
    assert manifest["dead_lettered"] == {"read/duplicate_id": 2}
    assert sorted(r["id"] for r in _stream(tmp_path / name, "raw")) == ["d/5", "d/6"]
    assert {r["text"] for r in _stream(tmp_path / name, "raw")} == {"five", "six"}
    outs[name] = _files(tmp_path / name)
  assert outs["loop"] == outs["beam"]
