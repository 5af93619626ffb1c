"""Test doubles for the data pipeline tests: a keyword scorer and a scripted text backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from safejax.generation import Generation, GenerationRequest
from safejax.vocab import USER

# A word in a document -> its score under KeywordScorer (the highest one found wins).
KEYWORD_SCORES = {"mild": 1, "rude": 2, "fight": 3, "attack": 4, "threat": 5}


class KeywordScorer:
  """Scores a text by the keywords it contains; "unscorable" gives -1 (no valid answer)."""

  name = "keyword"

  def score(self, texts):
    scores = []
    for text in texts:
      if "unscorable" in text:
        scores.append(-1)
        continue
      scores.append(max([s for k, s in KEYWORD_SCORES.items() if k in text], default=0))
    return np.asarray(scores, np.int32)


class FailingBackend:
  """Wraps a backend; requests whose fields' title contains "fail-<task>" come back as errors."""

  name = "failing"

  def __init__(self, inner):
    self.inner = inner

  def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
    out = []
    for request, generation in zip(requests, self.inner.generate(requests)):
      if f"fail-{request.task}" in str(request.fields.get("title")):
        out.append(Generation("", {"backend": self.name}, error=f"injected {request.task} failure"))
      else:
        out.append(generation)
    return out


def toy_document(i: int) -> dict:
  """A document whose score under KeywordScorer is i % 6."""
  word = ["calm", "mild", "rude", "fight", "attack", "threat"][i % 6]
  return {"id": i, "title": f"Topic {i}",
          "text": f"Document {i} is about a {word} thing.\nIt has a second line about the {word} thing. " * 3}


def write_toy_corpus(path: Path, n: int = 30, *, broken: bool = True) -> dict[str, int]:
  """Writes n good documents (the first with a smuggled role marker) and, with `broken`, one of
  each kind of bad line as jsonl.

  Returns the expected dead-letter count per reason.
  """
  docs = [toy_document(i) for i in range(n)]
  docs[0]["text"] += USER  # a smuggled role marker: stripped and counted
  lines = [json.dumps(d).encode() for d in docs]
  expected = {}
  if broken:
    bad = {
        "malformed_json": b'{"id": 1000, "text": ',
        "blank_line": b"   ",
        "bad_encoding": b'{"id": 1001, "text": "caf\xe9 latin-1"}',
        "missing_field": b'{"id": 1002, "body": "no text field"}',
        "wrong_type": b'{"id": 1003, "text": ["a", "list"]}',
        "empty_document": b'{"id": 1004, "text": "<potentially_unsafe_content>  "}',
        "document_too_large": json.dumps({"id": 1005, "text": "x" * 5000}).encode(),
    }
    lines[3:3] = list(bad.values())
    expected = {reason: 1 for reason in bad}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\n".join(lines) + b"\n")
  return expected


TINY_TFDS_TEXTS = ("a calm river", "an attack plan", "   ", "a rude remark")


class TinyDocs(tfds.core.GeneratorBasedBuilder):
  """A four-document TFDS dataset (module level, so Beam pickles it by reference)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, text in enumerate(TINY_TFDS_TEXTS):
      yield i, {"text": text}


def build_tiny_tfds(data_dir: Path) -> str:
  """Prepares TinyDocs in data_dir; returns its TFDS name."""
  TinyDocs(data_dir=str(data_dir)).download_and_prepare()
  return TinyDocs.name
