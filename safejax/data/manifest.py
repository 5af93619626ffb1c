"""The manifest of a pipeline run: what came in, where every document went, what was written.

Accounting is per input unit (a line, row, file or TFDS example), each counted exactly once:

  in = kept + rephrased + refused + tagged + dead_lettered

  in             every input unit the readers produced, counted as it is read
  kept           documents whose primary route is `keep` (one `keep` record each)
  rephrased      documents whose primary route is `rephrase` and whose rewrite succeeded
  refused        documents whose primary route is `refuse` and whose dialogue and article both
                 succeeded (one `refuseweb` and one `moral_education` record each)
  tagged         documents whose primary route is `tag` (one `tagged` record each)
  dead_lettered  input units set aside with a reason: unreadable or invalid input (stage
                 `read`), no valid score (`score`), failed generation (`generate`)

Fan-out is reported per stream, not per document: a document routed to `rephrase` or `refuse`
whose score is in the routing table's `tag_copy` also yields a tagged copy, counted in
`streams.tagged.records` (and in `tags`), never a second time in the equation. Every valid
document also appears once in the `raw` stream. So besides the equation these hold exactly:

  streams.keep = kept, streams.rephrase = rephrased,
  streams.refuseweb = streams.moral_education = refused,
  streams.raw = in - dead_lettered[read] - dead_lettered[score],
  streams.tagged = tagged + tag copies.

The writers summarize each shard as they write it (`summarize_records`); the manifest is built
from those summaries and the readers' counts, so it proves what is on disk.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import tensorflow as tf

from safejax.data import shards

from safejax.data.records import (DEAD_LETTER, GENERATE, KEEP, MORAL_EDUCATION, RAW, READ, REFUSEWEB, REPHRASE,
                                  SCORE, STREAMS, TAGGED)
from safejax.data.routing import TAG

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DISPOSITIONS = ("kept", "rephrased", "refused", "tagged")
_STREAM_DISPOSITION = {KEEP: "kept", REPHRASE: "rephrased", REFUSEWEB: "refused"}


def summarize_records(stream: str, records: Iterable[dict]) -> collections.Counter:
  """Counts what a shard of `stream` holds: records, dispositions, scores, tags, characters.

  Keys are tuples: ("records",), ("disposition", name, source), ("score", s), ("dead_lettered",
  stage, reason, source), ("tags", "inserted" | "candidates" | "documents"), ("chars",),
  ("special_tokens_removed",).
  """
  counts = collections.Counter()
  for r in records:
    counts["records",] += 1
    counts["special_tokens_removed",] += r.get("special_tokens_removed", 0)
    if stream == DEAD_LETTER:
      counts["dead_lettered", r["stage"], r["reason"], r.get("source")] += 1
      continue
    counts["chars",] += len(r["text"]) if "text" in r else sum(len(t["text"]) for t in r["turns"])
    if stream in _STREAM_DISPOSITION:
      counts["disposition", _STREAM_DISPOSITION[stream], r["source"]] += 1
    elif stream == TAGGED:
      if r["route"] == TAG:
        counts["disposition", "tagged", r["source"]] += 1
      counts["tags", "inserted"] += r["tags"]
      counts["tags", "candidates"] += r["tag_candidates"]
      counts["tags", "documents"] += r["tags"] > 0
    elif stream == RAW:
      counts["score", r["score"]] += 1
  return counts


def build_manifest(in_counts: Mapping[str, int], shard_summaries: Iterable[Mapping], config: Mapping) -> dict:
  """The manifest (see the module docstring) from per-source input counts and shard summaries.

  Args:
    in_counts: {source name: input units read}.
    shard_summaries: one {"stream", "path" (relative to the output dir), "counts"} per shard, where
      counts is a `summarize_records` Counter (or its items as [key list, value] pairs).
    config: the run's configuration, stored as is.
  """
  streams: dict[str, dict] = {s: {"records": 0, "chars": 0, "shards": []} for s in (*STREAMS, DEAD_LETTER)}
  total = collections.Counter()
  for summary in sorted(shard_summaries, key=lambda s: s["path"]):
    counts = summary["counts"]
    counts = collections.Counter(dict(counts) if isinstance(counts, Mapping) else {tuple(k): v for k, v in counts})
    stream = streams[summary["stream"]]
    stream["records"] += counts["records",]
    stream["chars"] += counts["chars",]
    stream["shards"].append({"path": summary["path"], "records": counts["records",]})
    if summary["stream"] in (RAW, DEAD_LETTER):
      total["special_tokens_removed", "input"] += counts["special_tokens_removed",]
    elif summary["stream"] != KEEP:  # keep records are input documents, already counted in raw
      total["special_tokens_removed", "generated"] += counts["special_tokens_removed",]
    for key, value in counts.items():
      if key[0] in ("disposition", "dead_lettered", "score", "tags"):
        total[key] += value

  sources = sorted(set(in_counts) | {k[-1] for k in total if k[0] in ("disposition", "dead_lettered")})
  by_source = {}
  for source in sources:
    row = {"in": int(in_counts.get(source, 0))}
    row.update({d: total["disposition", d, source] for d in DISPOSITIONS})
    row["dead_lettered"] = sum(v for k, v in total.items() if k[0] == "dead_lettered" and k[3] == source)
    by_source[source] = row
  documents = {key: sum(row[key] for row in by_source.values()) for key in ("in", *DISPOSITIONS, "dead_lettered")}
  dead = collections.Counter()
  for key, value in total.items():
    if key[0] == "dead_lettered":
      dead[f"{key[1]}/{key[2]}"] += value
  dead_by_stage = {stage: sum(v for k, v in dead.items() if k.startswith(stage + "/"))
                   for stage in (READ, SCORE, GENERATE)}
  tag_copies = streams[TAGGED]["records"] - documents["tagged"]

  checks = {
      "in = kept + rephrased + refused + tagged + dead_lettered":
          documents["in"] == sum(documents[d] for d in DISPOSITIONS) + documents["dead_lettered"],
      "streams.keep = kept": streams[KEEP]["records"] == documents["kept"],
      "streams.rephrase = rephrased": streams[REPHRASE]["records"] == documents["rephrased"],
      "streams.refuseweb = streams.moral_education = refused":
          streams[REFUSEWEB]["records"] == streams[MORAL_EDUCATION]["records"] == documents["refused"],
      "streams.raw = in - dead_lettered[read] - dead_lettered[score]":
          streams[RAW]["records"] == documents["in"] - dead_by_stage[READ] - dead_by_stage[SCORE],
      "streams.dead_letter = dead_lettered": streams[DEAD_LETTER]["records"] == documents["dead_lettered"],
  }
  for source, row in by_source.items():
    checks[f"{source}: in = kept + rephrased + refused + tagged + dead_lettered"] = (
        row["in"] == sum(row[d] for d in DISPOSITIONS) + row["dead_lettered"])
  return {
      "format_version": FORMAT_VERSION,
      "documents": documents,
      "checks": checks,
      "checks_hold": all(checks.values()),
      "by_source": by_source,
      "dead_lettered": dict(sorted(dead.items())),
      "dead_lettered_by_stage": dead_by_stage,
      "score_histogram": [total["score", s] for s in range(6)],
      "tags": {"inserted": total["tags", "inserted"], "candidates": total["tags", "candidates"],
               "documents_with_tags": total["tags", "documents"], "tag_copies": tag_copies},
      "special_tokens_removed": {"input": total["special_tokens_removed", "input"],
                                 "generated": total["special_tokens_removed", "generated"]},
      "streams": streams,
      "config": dict(config),
  }


def write_manifest(output_dir: str, manifest: Mapping) -> str:
  path = f"{output_dir}/{MANIFEST}"
  tmp = f"{path}.tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def remove_manifest(output_dir: str) -> None:
  """Removes a run's manifest, as a new run over the same folder starts: until the new one is
  written, the folder holds no manifest, so shards of a run that failed midway are never read
  as complete under the old run's accounting."""
  path = f"{output_dir}/{MANIFEST}"
  if tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


def read_manifest(output_dir: str) -> dict:
  path = f"{output_dir}/{MANIFEST}"
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} is missing: run `safejax prepare` (the data pipeline) first")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def stream_files(output_dir: str, stream: str, manifest: Mapping | None = None) -> list[str]:
  """The shard files of a stream, as the manifest lists them (absolute paths)."""
  manifest = manifest if manifest is not None else read_manifest(output_dir)
  return [f"{output_dir}/{shard['path']}" for shard in manifest["streams"][stream]["shards"]]


def read_stream(output_dir: str, stream: str) -> Iterator[dict]:
  """Every record of one stream of a run (e.g. to train a vocabulary on the prepared text)."""
  return shards.read_shards(stream_files(output_dir, stream))


def sample_texts(output_dir: str, streams: Sequence[str], chars_per_stream: int) -> Iterator[str]:
  """Up to `chars_per_stream` characters of text from each stream, in stream order (dialogues as
  their turns, one per line): a balanced sample, e.g. to train a vocabulary on."""
  for stream in streams:
    taken = 0
    for record in read_stream(output_dir, stream):
      text = record["text"] if "text" in record else "\n".join(t["text"] for t in record["turns"])
      yield text
      taken += len(text)
      if taken >= chars_per_stream:
        break
