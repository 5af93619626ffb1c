"""The data pipeline, as Apache Beam transforms and as a plain Python loop over the same functions.

  read (sources; one document per id) -> score (safejax.safety scorer, batched, loaded once per worker) -> route
    -> keep | rephrase | refuseweb + moral education | tag  -> sharded streams + dead letters
    -> manifest.json (accounting that must balance; see `manifest`)

Outputs under `output_dir`: one folder per stream (`raw`, `keep`, `rephrase`, `refuseweb`,
`moral_education`, `tagged`) of TFRecord shards, `dead_letter/` JSON lines, and `manifest.json`.
Shard contents depend only on the input and the configuration (see `shards`), so re-running over
the same input rewrites identical files, and the Beam and loop runners write the same bytes.

Beam runs on any runner: `beam_options` are handed to `PipelineOptions` untouched
(`--runner=DataflowRunner --project=...`, `--runner=FlinkRunner ...`); here the DirectRunner in
`--direct_running_mode=in_memory`, or `multi_processing` with `--direct_num_workers=N` (see
`prepare` for why not multi_threading).

  safejax prepare --gin_file=pipeline/shared_data.gin
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import gin
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.options.pipeline_options import PipelineOptions

from safejax.generation import TextBackend
from safejax.backends import TemplateBackend
from safejax.data import generators, manifest as manifest_lib, shards, sources as sources_lib
from safejax.data.records import (DEAD_LETTER, KEEP, MORAL_EDUCATION, RAW, REFUSEWEB, REPHRASE, STREAMS, TAGGED,
                                  is_dead_letter)
from safejax.data.routing import REFUSE, TAG, RoutingTable, route
from safejax.data.scoring import score_documents
from safejax.data.sources import SourceSpec
from safejax.data.tagging import sentence_segments, tag_record
from safejax.safety import load_scorer
from safejax.safety.rubric import UNSAFE_LEVEL

log = logging.getLogger(__name__)
ALL_STREAMS = (*STREAMS, DEAD_LETTER)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything a pipeline run depends on.

  Attributes:
    sources: the inputs.
    output_dir: where streams, dead letters and the manifest go (any tf.io.gfile path).
    scorer: a saved scorer's directory (`safejax.safety.load_scorer`, loaded once per worker), or a
      scorer object (pickled to the workers, e.g. an `LLMAnnotator`), or None when every input
      carries a score field.
    backend: the text backend of the generators.
    routing: scores -> routes.
    seed: seeds styles, sampling and tags (per document).
    tag_p: the probability of a harm tag before each candidate word (the paper's 5 %; the one
      home of this default: the demo and post-training read it from here).
    tag_level: segments scored at this level or above are tagged.
    tag_unit: which segments of a document get tags: "sentences" (its sentences scored one by one
      by the scorer, so that only unsafe sentences are tagged; documents that came with a score
      and no scorer fall back to their whole text) or "segments" (the scoring segments).
    segment_chars: scoring segment length (characters).
    score_batch_size: documents per scorer call.
    generate_batch_size: documents per backend call.
    generation_attempts: tries per document for a malformed generation.
    num_shards: shards per stream.
  """

  sources: Sequence[SourceSpec]
  output_dir: str
  scorer: Any = None
  backend: TextBackend = dataclasses.field(default_factory=TemplateBackend)
  routing: RoutingTable = dataclasses.field(default_factory=RoutingTable)
  seed: int = 0
  tag_p: float = 0.05
  tag_level: int = UNSAFE_LEVEL
  tag_unit: str = "sentences"
  segment_chars: int = 1000
  score_batch_size: int = 64
  generate_batch_size: int = 16
  generation_attempts: int = 2
  num_shards: int = 4

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(self.sources))
    names = [s.name for s in self.sources]
    if len(set(names)) != len(names):
      raise ValueError(f"source names must be unique, got {names}")
    unscored = [s.name for s in self.sources if s.score_field is None]
    if self.scorer is None and unscored:
      raise ValueError(f"sources {unscored} carry no score_field and no scorer is configured")
    if self.tag_unit not in ("sentences", "segments"):
      raise ValueError(f"tag_unit must be 'sentences' or 'segments', got {self.tag_unit!r}")
    if self.num_shards < 1 or self.score_batch_size < 1 or self.generate_batch_size < 1:
      raise ValueError("num_shards and batch sizes must be positive")
    object.__setattr__(self, "output_dir", self.output_dir.rstrip("/"))

  def describe(self) -> dict:
    """A JSON-able summary for the manifest (no secrets: backends show only name and model)."""
    scorer = self.scorer if isinstance(self.scorer, str) or self.scorer is None else getattr(
        self.scorer, "name", type(self.scorer).__name__)
    return {
        "sources": [dataclasses.asdict(s) for s in self.sources],
        "scorer": scorer,
        "backend": {"name": self.backend.name, "model": getattr(self.backend, "model", None)},
        "routing": self.routing.as_dict(),
        "seed": self.seed, "tag_p": self.tag_p, "tag_level": self.tag_level, "tag_unit": self.tag_unit,
        "segment_chars": self.segment_chars, "num_shards": self.num_shards,
        "generation_attempts": self.generation_attempts,
    }

  def load_scorer(self):
    if isinstance(self.scorer, str):
      # Scorer modules register gin configurables when first imported, possibly after the CLI
      # has locked the configuration.
      with gin.unlock_config():
        return load_scorer(self.scorer)
    return self.scorer


# --------------------------------------------------------------------------------------------
# The per-document work shared by both runners.

def routed_outputs(record: dict, config: PipelineConfig) -> list[tuple[str, dict]]:
  """(what to do, record) pairs for a scored document: the raw stream, then its routes."""
  return [(RAW, record), *route(record, config.routing)]


def rephrase_batch(records: Sequence[dict], config: PipelineConfig) -> tuple[list[tuple[str, dict]], list[dict]]:
  outputs, dead = generators.rephrase(records, config.backend, seed=config.seed,
                                      attempts=config.generation_attempts)
  return [(REPHRASE, r) for r in outputs], dead


def refuse_batch(records: Sequence[dict], config: PipelineConfig) -> tuple[list[tuple[str, dict]], list[dict]]:
  dialogues, articles, dead = generators.refuse(records, config.backend, seed=config.seed,
                                                attempts=config.generation_attempts)
  return [(REFUSEWEB, r) for r in dialogues] + [(MORAL_EDUCATION, r) for r in articles], dead


def tag(record: dict, config: PipelineConfig, scorer=None) -> dict:
  """The tagged copy of a routed record: in its unsafe sentences when `config.tag_unit` asks and a
  scorer is at hand, else in its scoring segments."""
  segments = None
  if config.tag_unit == "sentences" and scorer is not None:
    segments = sentence_segments(record["text"], scorer)
  return tag_record(record, seed=config.seed, p=config.tag_p, level=config.tag_level, segments=segments)


def shard_key(stream: str, record: dict, num_shards: int) -> tuple[str, int]:
  return stream, shards.shard_index(record["id"] or shards.to_json(record), num_shards)


def write_one_shard(output_dir: str, stream: str, index: int, num_shards: int, records: Iterable[dict]) -> dict:
  """Writes a shard and returns its summary for the manifest."""
  records = list(records)
  path = shards.shard_path(output_dir, stream, index, num_shards)
  shards.write_shard(path, records)
  return {"stream": stream, "path": path[len(output_dir) + 1:],
          "counts": list(manifest_lib.summarize_records(stream, records).items())}


def finish(config: PipelineConfig, in_counts: dict[str, int], summaries: Sequence[dict]) -> dict:
  """Builds, checks and writes the manifest; removes shard files an earlier run left behind."""
  manifest = manifest_lib.build_manifest(in_counts, summaries, config.describe())
  for stream in ALL_STREAMS:
    keep = manifest_lib.stream_files(config.output_dir, stream, manifest)
    shards.remove_stale_shards(config.output_dir, stream, keep)
  manifest_lib.write_manifest(config.output_dir, manifest)
  if not manifest["checks_hold"]:
    failed = [name for name, ok in manifest["checks"].items() if not ok]
    raise RuntimeError(f"pipeline accounting does not balance: {failed}; see {config.output_dir}/manifest.json")
  return manifest


# --------------------------------------------------------------------------------------------
# Progress: Beam has no progress bar, so in-process runners (the DirectRunner in in_memory or
# multi_threading mode) tick this counter and `prepare` shows it; other runners show a summary.

class _Progress:
  """A thread-safe count of documents routed or dead-lettered in this process."""

  def __init__(self):
    self._lock = threading.Lock()
    self.done = 0

  def add(self, n: int = 1) -> None:
    with self._lock:
      self.done += n

  def reset(self) -> None:
    with self._lock:
      self.done = 0


PROGRESS = _Progress()


# --------------------------------------------------------------------------------------------
# Beam transforms.

class ReadFile(beam.DoFn):
  """Parses one matched file of a source into items (records and dead letters)."""

  def __init__(self, spec: SourceSpec):
    self.spec = spec

  def process(self, readable: fileio.ReadableFile) -> Iterator[dict]:
    # Opened as stored: `read_file` decompresses, so a truncated archive is caught, not cut short.
    yield from sources_lib.read_file(
        self.spec, readable.metadata.path, lambda: readable.open(compression_type=CompressionTypes.UNCOMPRESSED))


class ReadSource(beam.PTransform):
  """Items (records and dead letters) of one source; files through Beam's fileio, TFDS by shard."""

  def __init__(self, spec: SourceSpec):
    super().__init__(label=f"Read[{spec.name}]")
    self.spec = spec

  def expand(self, pbegin):
    spec = self.spec
    if spec.format == "tfds":
      import tensorflow_datasets as tfds

      return (pbegin
              | "ReadTFDS" >> tfds.beam.ReadFromTFDS(sources_lib.tfds_builder(spec), split=spec.split)
              | "ToRecord" >> beam.Map(lambda ex, spec=spec: sources_lib.tfds_row(spec, tfds.as_numpy(ex))))
    return (pbegin
            | "Match" >> fileio.MatchFiles(spec.pattern)
            | "Open" >> fileio.ReadMatches()
            # Spreads files over workers before the (per-file, sequential) parsing.
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(ReadFile(spec)))


class SplitDeadLetters(beam.DoFn):
  """Sends dead letters to the `dead` output and ticks progress for them."""

  def process(self, item: dict):
    if is_dead_letter(item):
      PROGRESS.add()
      yield beam.pvalue.TaggedOutput("dead", item)
    else:
      yield item


class FirstOfEachId(beam.DoFn):
  """Of the documents grouped under one id, keeps the first read (`sources.first_of_each_id`);
  the others go to `dead` as `duplicate_id`."""

  def process(self, keyed):
    _, group = keyed
    kept, dead = sources_lib.first_of_each_id(group)
    yield from kept
    for d in dead:
      PROGRESS.add()
      yield beam.pvalue.TaggedOutput("dead", d)


class ScoreBatch(beam.DoFn):
  """Scores batches of documents; the scorer is loaded once per worker, in `setup`."""

  def __init__(self, config: PipelineConfig):
    self.config = config
    self.scorer = None

  def setup(self):
    self.scorer = self.config.load_scorer()

  def process(self, batch: list[dict]):
    for item in score_documents(batch, self.scorer, segment_chars=self.config.segment_chars):
      if is_dead_letter(item):
        PROGRESS.add()
        yield beam.pvalue.TaggedOutput("dead", item)
      else:
        yield item


class TagDocuments(beam.DoFn):
  """The tagged copy of each routed document; the scorer (for its sentences) loaded once per worker."""

  def __init__(self, config: PipelineConfig):
    self.config = config
    self.scorer = None

  def setup(self):
    if self.config.tag_unit == "sentences":
      self.scorer = self.config.load_scorer()

  def process(self, record: dict):
    yield TAGGED, tag(record, self.config, self.scorer)


class RouteDocuments(beam.DoFn):
  """Tags each scored document with its outputs: `raw` and its routes (see `routed_outputs`)."""

  def __init__(self, config: PipelineConfig):
    self.config = config

  def process(self, record: dict):
    PROGRESS.add()
    for what, r in routed_outputs(record, self.config):
      yield beam.pvalue.TaggedOutput(what, r)


class GenerateBatch(beam.DoFn):
  """Runs a batch generator (`rephrase_batch` or `refuse_batch`); failures go to `dead`."""

  def __init__(self, generate, config: PipelineConfig):
    self.generate = generate
    self.config = config

  def process(self, batch: list[dict]):
    outputs, dead = self.generate(batch, self.config)
    yield from outputs
    for d in dead:
      yield beam.pvalue.TaggedOutput("dead", d)


class WriteShard(beam.DoFn):
  """Writes one (stream, shard index) group and yields its summary."""

  def __init__(self, output_dir: str, num_shards: int):
    self.output_dir = output_dir
    self.num_shards = num_shards

  def process(self, keyed):
    (stream, index), records = keyed
    yield write_one_shard(self.output_dir, stream, index, self.num_shards, (r for r in records if r is not None))


class WriteStreams(beam.PTransform):
  """(stream, record) pairs -> every shard of every stream written (empty ones too) -> summaries."""

  def __init__(self, output_dir: str, num_shards: int):
    super().__init__()
    self.output_dir = output_dir
    self.num_shards = num_shards

  def expand(self, pairs):
    n = self.num_shards
    keyed = pairs | "KeyByShard" >> beam.Map(lambda sr: (shard_key(sr[0], sr[1], n), sr[1]))
    # One empty marker per shard, so shards without records are still written.
    markers = pairs.pipeline | "AllShards" >> beam.Create([((s, i), None) for s in ALL_STREAMS for i in range(n)])
    return ((keyed, markers)
            | "Flatten" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShard(self.output_dir, n)))


def _batch(label: str, size: int) -> beam.PTransform:
  return label >> beam.BatchElements(min_batch_size=1, max_batch_size=size)


def build_pipeline(pipeline: beam.Pipeline, config: PipelineConfig) -> None:
  """Adds the whole pipeline (read to manifest) to `pipeline`."""
  items = ([pipeline | ReadSource(spec) for spec in config.sources] | "AllSources" >> beam.Flatten())
  in_counts = (items
               | "KeyBySource" >> beam.Map(lambda item: (item["source"], 1))
               | "CountIn" >> beam.CombinePerKey(sum))
  split = items | "SplitReadDead" >> beam.ParDo(SplitDeadLetters()).with_outputs("dead", main="documents")
  unique = (split.documents
            | "KeyById" >> beam.Map(lambda record: (record["id"], record))
            | "GroupById" >> beam.GroupByKey()
            | "FirstOfEachId" >> beam.ParDo(FirstOfEachId()).with_outputs("dead", main="documents"))
  scored = (unique.documents
            | _batch("BatchForScoring", config.score_batch_size)
            | "Score" >> beam.ParDo(ScoreBatch(config)).with_outputs("dead", main="scored"))
  routed = scored.scored | "Route" >> beam.ParDo(RouteDocuments(config)).with_outputs(RAW, KEEP, REPHRASE, REFUSE, TAG)
  rephrased = (routed[REPHRASE]
               | _batch("BatchForRephrasing", config.generate_batch_size)
               | "Rephrase" >> beam.ParDo(GenerateBatch(rephrase_batch, config)).with_outputs("dead", main="out"))
  refused = (routed[REFUSE]
             | _batch("BatchForRefusal", config.generate_batch_size)
             | "Refuse" >> beam.ParDo(GenerateBatch(refuse_batch, config)).with_outputs("dead", main="out"))
  dead = ((split.dead, unique.dead, scored.dead, rephrased.dead, refused.dead)
          | "AllDead" >> beam.Flatten()
          | "ToDeadLetterStream" >> beam.Map(lambda d: (DEAD_LETTER, d)))
  pairs = ((routed[RAW] | "ToRaw" >> beam.Map(lambda r: (RAW, r)),
            routed[KEEP] | "ToKeep" >> beam.Map(lambda r: (KEEP, r)),
            rephrased.out, refused.out,
            routed[TAG] | "Tag" >> beam.ParDo(TagDocuments(config)),
            dead)
           | "AllStreams" >> beam.Flatten())
  summaries = pairs | "WriteStreams" >> WriteStreams(config.output_dir, config.num_shards)
  _ = (pipeline
       | "ManifestTrigger" >> beam.Create([None])
       | "WriteManifest" >> beam.Map(
           lambda _, s, c, cfg=config: finish(cfg, c, s),
           s=beam.pvalue.AsList(summaries), c=beam.pvalue.AsDict(in_counts)))


def run_beam(config: PipelineConfig, beam_options: Sequence[str] = ()) -> dict:
  """Runs the Beam pipeline to completion and returns the manifest."""
  PROGRESS.reset()
  manifest_lib.remove_manifest(config.output_dir)
  with beam.Pipeline(options=PipelineOptions(list(beam_options))) as pipeline:
    build_pipeline(pipeline, config)
  return manifest_lib.read_manifest(config.output_dir)


# --------------------------------------------------------------------------------------------
# The same steps in a plain Python loop (one process, whole stages at a time).

@dataclasses.dataclass
class LoopResult:
  manifest: dict
  seconds: dict[str, float]  # wall time per stage
  documents: dict[str, int]  # documents entering each stage


def run_loop(config: PipelineConfig) -> LoopResult:
  """Runs the pipeline's functions stage by stage in this process; returns manifest and timings.

  Holds every stage's output in memory: meant for small inputs, tests and benchmarks.
  """
  PROGRESS.reset()
  manifest_lib.remove_manifest(config.output_dir)
  seconds, entering = {}, {}
  outputs: list[tuple[str, dict]] = []
  in_counts: collections.Counter = collections.Counter()

  start = time.perf_counter()
  documents = []
  for spec in config.sources:
    for item in sources_lib.iter_source(spec):
      in_counts[spec.name] += 1
      if is_dead_letter(item):
        PROGRESS.add()
        outputs.append((DEAD_LETTER, item))
      else:
        documents.append(item)
  documents, duplicates = sources_lib.first_of_each_id(documents)
  PROGRESS.add(len(duplicates))
  outputs += [(DEAD_LETTER, d) for d in duplicates]
  seconds["read"], entering["read"] = time.perf_counter() - start, sum(in_counts.values())

  start = time.perf_counter()
  scorer = config.load_scorer()
  scored = []
  for i in range(0, len(documents), config.score_batch_size):
    for item in score_documents(documents[i:i + config.score_batch_size], scorer, segment_chars=config.segment_chars):
      if is_dead_letter(item):
        PROGRESS.add()
        outputs.append((DEAD_LETTER, item))
      else:
        scored.append(item)
  seconds["score"], entering["score"] = time.perf_counter() - start, len(documents)

  start = time.perf_counter()
  by_route: dict[str, list[dict]] = collections.defaultdict(list)
  for record in scored:
    PROGRESS.add()
    for what, r in routed_outputs(record, config):
      by_route[what].append(r)
  outputs += [(RAW, r) for r in by_route[RAW]] + [(KEEP, r) for r in by_route[KEEP]]
  seconds["route"], entering["route"] = time.perf_counter() - start, len(scored)

  for name, generate, route_name in (("rephrase", rephrase_batch, REPHRASE), ("refuse", refuse_batch, REFUSE)):
    start = time.perf_counter()
    batch_records = by_route[route_name]
    for i in range(0, len(batch_records), config.generate_batch_size):
      made, dead = generate(batch_records[i:i + config.generate_batch_size], config)
      outputs += made + [(DEAD_LETTER, d) for d in dead]
    seconds[name], entering[name] = time.perf_counter() - start, len(batch_records)

  start = time.perf_counter()
  outputs += [(TAGGED, tag(r, config, scorer if config.tag_unit == "sentences" else None)) for r in by_route[TAG]]
  seconds["tag"], entering["tag"] = time.perf_counter() - start, len(by_route[TAG])

  start = time.perf_counter()
  grouped: dict[tuple[str, int], list[dict]] = {(s, i): [] for s in ALL_STREAMS for i in range(config.num_shards)}
  for stream, record in outputs:
    grouped[shard_key(stream, record, config.num_shards)].append(record)
  summaries = [write_one_shard(config.output_dir, s, i, config.num_shards, recs) for (s, i), recs in grouped.items()]
  manifest = finish(config, dict(in_counts), summaries)
  seconds["write"], entering["write"] = time.perf_counter() - start, len(outputs)
  return LoopResult(manifest, seconds, entering)


# --------------------------------------------------------------------------------------------
# The `safejax prepare` command.

def count_inputs(sources: Sequence[SourceSpec]) -> int | None:
  """The number of input units of local files and TFDS datasets (None if any source is remote)."""
  total = 0
  for spec in sources:
    if spec.format == "tfds":
      total += sources_lib.tfds_builder(spec).info.splits[spec.split].num_examples
      continue
    if "://" in spec.pattern:
      return None
    for path in sources_lib.match_files(spec):
      total += _count_file(spec, path)
  return total


def _count_file(spec: SourceSpec, path: str) -> int:
  """The input units of one file, for the progress bar's total; a file that cannot be read counts
  as the one dead letter it will become (reading it reports the damage)."""
  if spec.format == "text":
    return 1
  if spec.format == "csv":
    return sum(1 for _ in sources_lib.read_file(spec, path))
  lines = 0
  try:
    with sources_lib.open_stored(path) as raw, sources_lib.decompressed(path, raw) as f:
      if spec.format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(f).metadata.num_rows
      for _ in iter(f.readline, b""):
        lines += 1
      return lines
  except Exception:  # noqa: BLE001  only a progress estimate; the read itself dead-letters the file
    return lines + 1


def _summary(manifest: dict) -> str:
  docs, streams = manifest["documents"], manifest["streams"]
  lines = [
      f"in {docs['in']} = kept {docs['kept']} + rephrased {docs['rephrased']} + refused {docs['refused']} "
      f"+ tagged {docs['tagged']} + dead-lettered {docs['dead_lettered']}  (checks hold: {manifest['checks_hold']})",
      "streams: " + ", ".join(f"{s} {streams[s]['records']}" for s in ALL_STREAMS),
      f"scores 0..5: {manifest['score_histogram']}; tags inserted: {manifest['tags']['inserted']} "
      f"in {manifest['tags']['documents_with_tags']} documents",
  ]
  if manifest["dead_lettered"]:
    lines.append("dead letters: " + ", ".join(f"{k} {v}" for k, v in manifest["dead_lettered"].items()))
  return "\n".join(lines)


def _in_process(beam_options: Sequence[str]) -> bool:
  """Whether Beam runs the pipeline in this process (so `PROGRESS` ticks)."""
  options = PipelineOptions(list(beam_options)).get_all_options()
  return options.get("runner") in (None, "DirectRunner") and options.get("direct_running_mode") in (
      None, "in_memory", "multi_threading")


@gin.configurable
def prepare(config: PipelineConfig = gin.REQUIRED, *, runner: str = "beam",
            beam_options: Sequence[str] = ("--direct_running_mode=in_memory",), report_card: bool = True) -> int:
  """Runs the pipeline ("beam" or "loop"), shows progress, prints the accounting; returns 0.

  The progress bar counts documents routed or dead-lettered; it moves when the pipeline runs in
  this process (the loop, or the DirectRunner in in_memory mode). Other runners report progress
  their own way (the Dataflow console, Flink's UI); the accounting is printed at the end.

  The DirectRunner's multi_threading mode is not offered as a default: with Beam 2.77 it loses
  elements at GroupByKey under load (reproduced with a pure-Beam pipeline); the manifest's checks
  then fail the run. Use in_memory, or multi_processing with --direct_num_workers for parallelism.

  With `report_card`, also writes the Data Safety Report Card (`report_card.json` / `.png`) next
  to the manifest, scoring the outputs with the same scorer.
  """
  from tqdm import tqdm

  if runner not in ("beam", "loop"):
    raise ValueError(f"runner must be 'beam' or 'loop', not {runner!r}")
  if runner == "beam" and any("multi_threading" in o for o in beam_options):
    log.warning("--direct_running_mode=multi_threading can lose elements in Beam 2.77; the manifest "
                "checks will fail the run if it does. Prefer in_memory or multi_processing.")
  show_bar = runner == "loop" or _in_process(beam_options)
  total = count_inputs(config.sources) if show_bar else None
  result: dict[str, Any] = {}

  def work():
    try:
      result["manifest"] = run_beam(config, beam_options) if runner == "beam" else run_loop(config).manifest
    except BaseException as e:  # re-raised in the calling thread
      result["error"] = e

  thread = threading.Thread(target=work, daemon=True)
  start = time.perf_counter()
  with tqdm(total=total, unit="doc", desc=f"prepare ({runner})", disable=not show_bar) as bar:
    thread.start()
    while thread.is_alive():
      thread.join(0.5)
      bar.update(PROGRESS.done - bar.n)
    bar.update(PROGRESS.done - bar.n)
  if "error" in result:
    raise result["error"]
  manifest = result["manifest"]
  seconds = time.perf_counter() - start
  print(_summary(manifest))
  print(f"{manifest['documents']['in']} input units in {seconds:.1f} s "
        f"({manifest['documents']['in'] / seconds:.0f}/s); wrote {config.output_dir}/{manifest_lib.MANIFEST}")
  if report_card:
    from safejax.data import report_card as report_card_lib

    card = report_card_lib.build_report_card(config.output_dir, config.load_scorer())
    paths = report_card_lib.write_report_card(config.output_dir, card)
    print("report card: " + ", ".join(paths))
  return 0
