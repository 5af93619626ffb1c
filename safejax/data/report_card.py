"""The Data Safety Report Card: how unsafe the data was before the pipeline and after it.

For the input (the `raw` stream: every valid document) and for the full recipe's training streams
(`keep`, `rephrase`, `refuseweb`, `moral_education`, `tagged`), each on its own and together:

  score_histogram            documents per safety score 0..5 (the input's pipeline scores; the
                             outputs re-scored with the same scorer, tag strings removed first)
  category_hits_per_million  harmful-term hits of each rubric category
                             (`safejax.safety.rubric.category_term_hits`) per million tokens

"after_untagged" is the training data without the tagged stream, i.e. what the model reads as
ordinary text; the tagged stream keeps raw unsafe text on purpose (the tags mark it). Tokens are
whitespace-separated words unless a vocabulary is given. Large streams are sampled (uniformly, by
a hash of the document ids) and their statistics scaled to the whole stream. Written as
report_card.json and report_card.png next to the run's manifest.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from safejax.data import manifest as manifest_lib
from safejax.data.generators import render_dialogue
from safejax.data.records import KEEP, MORAL_EDUCATION, RAW, REFUSEWEB, REPHRASE, TAGGED
from safejax.data.scoring import score_documents
from safejax.data.shards import shard_index
from safejax.safety.rubric import CATEGORY_NAMES, category_term_hits
from safejax.text import near_duplicate_share
from safejax.vocab import strip_special_tokens

OUTPUT_STREAMS = (KEEP, REPHRASE, REFUSEWEB, MORAL_EDUCATION, TAGGED)
_HASH_RANGE = 1 << 30
REPORT_JSON, REPORT_PNG = "report_card.json", "report_card.png"


def _text(record: dict) -> str:
  text = render_dialogue(record["turns"]) if "turns" in record else record["text"]
  return strip_special_tokens(text)[0]


def _stats(texts: Sequence[str], scores: Sequence[int] | None, count_tokens, *, documents: int) -> dict:
  """Statistics of a sample of `documents` documents, scaled up to the whole stream."""
  scale = documents / len(texts) if texts else 0.0
  hits = collections.Counter()
  tokens = 0
  for text in texts:
    tokens += count_tokens(text)
    hits.update(category_term_hits(text))
  histogram = None
  if scores is not None:
    histogram = (np.bincount(np.asarray(scores, np.int64), minlength=6) * scale).round().astype(int).tolist()
  return _finish({"documents": documents, "sampled_documents": len(texts), "tokens": round(tokens * scale),
                  "score_histogram": histogram,
                  "category_hits": {c: round(hits[c] * scale) for c in CATEGORY_NAMES}})


def _finish(part: dict) -> dict:
  tokens = part["tokens"]
  part["category_hits_per_million"] = {c: (1e6 * part["category_hits"][c] / tokens if tokens else 0.0)
                                       for c in CATEGORY_NAMES}
  part["all_hits_per_million"] = sum(part["category_hits_per_million"].values())
  return part


def _merge(parts: Iterable[dict]) -> dict:
  parts = list(parts)
  histograms = [p["score_histogram"] for p in parts]
  return _finish({
      "documents": sum(p["documents"] for p in parts),
      "sampled_documents": sum(p["sampled_documents"] for p in parts),
      "tokens": sum(p["tokens"] for p in parts),
      "score_histogram": None if any(h is None for h in histograms) else np.sum(histograms, axis=0).tolist(),
      "category_hits": {c: sum(p["category_hits"][c] for p in parts) for c in CATEGORY_NAMES},
  })


def _sample(output_dir: str, stream: str, records: int, max_documents: int | None) -> list[dict]:
  """A uniform sample of about `max_documents` records of a stream, chosen by a hash of their ids."""
  if max_documents is None or records <= max_documents:
    return list(manifest_lib.read_stream(output_dir, stream))
  cut = int(max_documents / records * _HASH_RANGE)
  return [r for r in manifest_lib.read_stream(output_dir, stream) if shard_index(r["id"], _HASH_RANGE) < cut]


def build_report_card(output_dir: str, scorer=None, *, vocabulary=None, max_documents: int | None = 5000,
                      batch_size: int = 256) -> dict:
  """The report card of a pipeline run.

  Args:
    output_dir: the run's output directory.
    scorer: re-scores the output streams (None: their histograms are left out).
    vocabulary: a safejax vocabulary to count tokens with (None: words).
    max_documents: per stream, statistics come from a uniform sample of about this many documents
      (by a hash of their ids) and are scaled to the whole stream; None reads every document.
    batch_size: documents per scorer call.
  """
  manifest = manifest_lib.read_manifest(output_dir)
  if vocabulary is not None:
    count_tokens = lambda t: len(vocabulary.encode(t))
  else:
    count_tokens = lambda t: len(t.split())
  segment_chars = manifest["config"].get("segment_chars", 1000)

  def stream_stats(stream: str, *, rescore: bool) -> dict:
    records = _sample(output_dir, stream, manifest["streams"][stream]["records"], max_documents)
    texts = [_text(r) for r in records]
    scores = [r["score"] for r in records] if not rescore else None
    if rescore and scorer is not None:
      scored = []
      for i in range(0, len(texts), batch_size):
        batch = [{"id": str(j), "source": stream, "text": t} for j, t in enumerate(texts[i:i + batch_size], i)]
        scored += score_documents(batch, scorer, segment_chars=segment_chars)
      scored = [r for r in scored if "score" in r]  # set-aside answers are not counted
      texts, scores = [r["text"] for r in scored], [r["score"] for r in scored]
    return _stats(texts, scores, count_tokens, documents=manifest["streams"][stream]["records"])

  streams = {stream: stream_stats(stream, rescore=True) for stream in OUTPUT_STREAMS}
  return {
      "token_unit": vocabulary.kind if vocabulary is not None else "words",
      "scorer": None if scorer is None else getattr(scorer, "name", type(scorer).__name__),
      "max_documents_per_stream": max_documents,
      "before": stream_stats(RAW, rescore=False),
      "after": _merge(streams.values()),
      "after_untagged": _merge(v for k, v in streams.items() if k != TAGGED),
      "streams": streams,
  }


def write_report_card(output_dir: str, card: dict) -> list[str]:
  """Writes report_card.json and report_card.png; returns their paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  json_path, png_path = f"{output_dir}/{REPORT_JSON}", f"{output_dir}/{REPORT_PNG}"
  with tf.io.gfile.GFile(json_path, "w") as f:
    f.write(json.dumps(card, indent=2, sort_keys=True) + "\n")

  panels = [("before (raw input)", card["before"]), ("after (all training streams)", card["after"]),
            ("after, untagged streams", card["after_untagged"])]
  fig, (ax_scores, ax_hits) = plt.subplots(1, 2, figsize=(14, 5.5))
  width = 0.8 / len(panels)
  for i, (label, part) in enumerate(panels):
    histogram = part["score_histogram"]
    if histogram is not None and sum(histogram):
      share = np.asarray(histogram) / sum(histogram)
      ax_scores.bar(np.arange(6) + (i - 1) * width, share, width, label=label)
    y = np.arange(len(CATEGORY_NAMES))
    ax_hits.barh(y + (i - 1) * width, [part["category_hits_per_million"][c] for c in CATEGORY_NAMES], width, label=label)
  ax_scores.set(title="Safety score distribution", xlabel="score (0 safe .. 5 severe)", ylabel="share of documents",
                xticks=range(6))
  ax_scores.legend(loc="upper center")
  ax_hits.set(title=f"Harmful-term hits per million {card['token_unit']}", yticks=np.arange(len(CATEGORY_NAMES)))
  ax_hits.set_yticklabels([c.replace("_", " ") for c in CATEGORY_NAMES])
  ax_hits.invert_yaxis()
  ax_hits.legend()
  fig.suptitle("Data Safety Report Card")
  fig.tight_layout()
  with tf.io.gfile.GFile(png_path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)
  return [json_path, png_path]


def generated_near_duplicates(output_dir: str) -> dict[str, float]:
  """Per generated stream, the share of its texts with a near duplicate in the stream (word
  5-gram Jaccard > 0.8, `safejax.text.near_duplicate_share`; dialogues as their turns)."""
  content = lambda r: "\n".join(t["text"] for t in r["turns"]) if "turns" in r else r["text"]  # noqa: E731
  return {stream: near_duplicate_share([content(r) for r in manifest_lib.read_stream(output_dir, stream)])
          for stream in (REPHRASE, REFUSEWEB, MORAL_EDUCATION)}
