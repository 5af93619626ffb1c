"""Documents per second of each pipeline stage, on the Beam DirectRunner and in the plain loop.

  python benchmarks/bench_pipeline.py --scorer=/tmp/safejax/ngram
  python benchmarks/bench_pipeline.py --scorer=/tmp/safejax/ngram --beam_options=--direct_running_mode=multi_processing,--direct_num_workers=2

Input: the sources of gin/pipeline/shared_data.gin (the real data in ../shared/data). The loop
runner times each stage directly. Beam fuses stages, so its per-stage numbers come from cumulative
pipelines (read; + score; + route; + generate and tag; the whole run with writing), each timed as
the fastest of --repeats runs: a stage's time is the difference between consecutive pipelines,
which also cancels Beam's start-up cost (on a busy machine a small stage can drown in the noise).
Each stage's rate counts the documents entering it. The last column is Beam's time over the loop's.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import apache_beam as beam
import gin
from apache_beam.options.pipeline_options import PipelineOptions

from safejax import cli
from safejax.data import pipeline as pl
from safejax.data.records import RAW
from safejax.data.routing import REFUSE, REPHRASE, TAG

STAGES = ("read", "score", "route", "generate+tag", "write")


def _cumulative_beam_pipeline(p: beam.Pipeline, config: pl.PipelineConfig, upto: str) -> None:
  """The pipeline's transforms up to and including `upto`; their outputs are discarded."""
  items = [p | pl.ReadSource(spec) for spec in config.sources] | "AllSources" >> beam.Flatten()
  last = items
  if upto != "read":
    split = items | "SplitDead" >> beam.ParDo(pl.SplitDeadLetters()).with_outputs("dead", main="documents")
    scored = (split.documents
              | "BatchScore" >> beam.BatchElements(max_batch_size=config.score_batch_size)
              | "Score" >> beam.ParDo(pl.ScoreBatch(config)).with_outputs("dead", main="scored"))
    last = scored.scored
  if upto not in ("read", "score"):
    routed = scored.scored | "Route" >> beam.ParDo(pl.RouteDocuments(config)).with_outputs(
        RAW, "keep", REPHRASE, REFUSE, TAG)
    last = routed[RAW]
  if upto == "generate+tag":
    outputs = []
    for route, generate in ((REPHRASE, pl.rephrase_batch), (REFUSE, pl.refuse_batch)):
      generated = (routed[route]
                   | f"Batch{route}" >> beam.BatchElements(max_batch_size=config.generate_batch_size)
                   | f"Generate{route}" >> beam.ParDo(pl.GenerateBatch(generate, config)).with_outputs("dead", main="out"))
      outputs.append(generated.out)
    outputs.append(routed[TAG] | "Tag" >> beam.Map(lambda r, c=config: ("tagged", pl.tag(r, c))))
    last = outputs | "AllOutputs" >> beam.Flatten()
  _ = last | "Discard" >> beam.Map(_discard)


def _discard(element) -> None:
  del element


def _time(fn, repeats: int) -> float:
  """The fastest of `repeats` runs (this machine's other work only ever adds time)."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--scorer", required=True, help="a saved scorer directory (safejax classify train)")
  parser.add_argument("--gin_file", default="pipeline/shared_data.gin")
  parser.add_argument("--beam_options", default="--direct_running_mode=in_memory",
                      help="comma-separated Beam flags")
  parser.add_argument("--repeats", type=int, default=2, help="runs per Beam pipeline; the fastest counts")
  args = parser.parse_args()
  beam_options = [o for o in args.beam_options.split(",") if o]

  cli.parse_gin([args.gin_file], [])
  with gin.unlock_config():
    config = gin.query_parameter("prepare.config").scoped_configurable_fn()
  work = tempfile.mkdtemp(prefix="bench_pipeline_")
  config = dataclasses.replace(config, scorer=args.scorer, output_dir=f"{work}/loop")

  loop = pl.run_loop(config)
  print(f"loop runner: {loop.seconds}", flush=True)
  docs = loop.documents
  entering = {"read": docs["read"], "score": docs["score"], "route": docs["route"],
              "generate+tag": docs["rephrase"] + docs["refuse"] + docs["tag"], "write": docs["write"]}
  loop_seconds = {"read": loop.seconds["read"], "score": loop.seconds["score"], "route": loop.seconds["route"],
                  "generate+tag": loop.seconds["rephrase"] + loop.seconds["refuse"] + loop.seconds["tag"],
                  "write": loop.seconds["write"]}

  cumulative = {}
  for stage in STAGES[:-1]:
    def run(stage=stage):
      with beam.Pipeline(options=PipelineOptions(beam_options)) as p:
        _cumulative_beam_pipeline(p, config, stage)
    cumulative[stage] = _time(run, args.repeats)
  beam_config = dataclasses.replace(config, output_dir=f"{work}/beam")
  cumulative["write"] = _time(lambda: pl.run_beam(beam_config, beam_options), args.repeats)
  beam_seconds, previous = {}, 0.0
  for stage in STAGES:
    beam_seconds[stage] = cumulative[stage] - previous  # may come out <= 0 when noise beats the stage
    previous = cumulative[stage]

  manifest = loop.manifest["documents"]
  print(f"input: {manifest['in']} documents from {len(config.sources)} sources ({args.gin_file}); "
        f"scorer {args.scorer}; backend {config.backend.name}; Beam options {beam_options}")
  print(f"routing: kept {manifest['kept']}, rephrased {manifest['rephrased']}, refused {manifest['refused']}, "
        f"dead-lettered {manifest['dead_lettered']}")
  print(f"{'stage':14s} {'docs in':>9s} {'loop s':>8s} {'loop docs/s':>12s} {'Beam s':>8s} {'Beam docs/s':>12s} "
        f"{'Beam/loop':>9s}")
  for stage in STAGES:
    n, b = entering[stage], beam_seconds[stage]
    beam_rate = f"{n / b:12.0f} {b / loop_seconds[stage]:9.2f}" if b > 0 else f"{'(noise)':>12s} {'-':>9s}"
    print(f"{stage:14s} {n:9d} {loop_seconds[stage]:8.2f} {n / loop_seconds[stage]:12.0f} {b:8.2f} {beam_rate}")
  loop_total, beam_total = sum(loop_seconds.values()), cumulative["write"]
  n = entering["read"]
  print(f"{'end to end':14s} {n:9d} {loop_total:8.2f} {n / loop_total:12.0f} {beam_total:8.2f} {n / beam_total:12.0f} "
        f"{beam_total / loop_total:9.2f}")
  print(f"outputs identical (loop vs Beam): {_same_outputs(config.output_dir, beam_config.output_dir)}")


def _same_outputs(a: str, b: str) -> bool:
  import filecmp
  import os

  names = []
  for root, _, files in os.walk(a):
    names += [os.path.relpath(os.path.join(root, f), a) for f in files]
  match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
  return not mismatch and not errors


if __name__ == "__main__":
  main()
