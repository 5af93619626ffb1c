"""Labelled examples on the 0..5 rubric, built from the real data sets in ../shared/data.

No data set here is labelled on the paper's scale, so each source's own labels are mapped onto
the rubric (`safejax.safety.rubric`). A document takes the highest level any of its labels maps
to. The mapping, and why:

| source (folder) | source label | score | why |
|---|---|---|---|
| wikipedia (pretrain/wikipedia) | any passage | 0 | encyclopedic register; sensitive topics are described, not promoted |
| openstax (pretrain/openstax) | any passage | 0 | textbook text for students |
| openai_moderation | no category positive | 0 | judged free of every undesired category |
| openai_moderation | HR harassment, SH self-harm | 3 | mostly insults at a person, or first-person accounts of self-harm: "brief mention of self-harm", group insults |
| openai_moderation | S sexual, H hate, V violence, V2 graphic violence | 4 | explicit (legal) sexual content, hateful content, promoting or graphically showing violence |
| openai_moderation | S3 sexual/minors, H2 hate/threatening | 5 | illegal sexual content; hate with threats |
| davidson_hate_offensive | class neither, every vote "neither" | 0 | ordinary tweets |
| davidson_hate_offensive | class neither, some vote hate/offensive | 1 | disputed: slang or mild profanity at most |
| davidson_hate_offensive | class offensive | 4 | strong profanity or slurs aimed at people |
| davidson_hate_offensive | class hate | 5 | hate speech |
| toxigen_seed_statements | neutral | 0 | neutral or supportive statements about a group |
| toxigen_seed_statements | hate | 3 | implicit hate: stereotypes about groups, mostly without slurs or threats |
| jigsaw_toxic_sample | no label | 0 | ordinary talk-page comment |
| jigsaw_toxic_sample | toxic only | 2 | rude, without insult, obscenity or threat: "minor personal insults" |
| jigsaw_toxic_sample | insult, obscene, severe_toxic | 4 | strong profanity or insults aimed at people |
| jigsaw_toxic_sample | threat, identity_hate | 5 | violent threats; hate speech |
| hh_rlhf_harmless | first human turn of a red-team dialogue | 3 | a request that names a harmful act without details (crime, weapons, ...) |
| hh_rlhf_harmless | the "rejected" dialogue (request + the more harmful reply) | 4 | the assistant goes along with a harmful request: harmful advice |

Known limits: the hh-rlhf labels are noisy (some red-team requests are benign, some "rejected"
replies still decline); no source is labelled 2 except a few Jigsaw rows, so level 2 is barely
learnable; labels 1 and 2 are rare overall.

Splits: each example has a group key (the normalised text, or for derived examples their
origin: a Wikipedia article, an hh-rlhf dialogue) and goes to train / validation / test by a hash
of that key, so retweets, duplicated statements and passages of one article never straddle splits.
Held-out sets for the goals: the test split of openai_moderation (unsafe = any category), and the
separate Wikipedia validation shard (wikipedia_kilt_val), whole articles, never trained on.
Decision thresholds are chosen on the validation split and on the whole clean documents
(Wikipedia articles, OpenStax sections) whose passages went to it (`clean_documents`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import hashlib
import html
import json
import math
import random
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gin

from safejax.jsonl import write_jsonl

SPLITS = ("train", "validation", "test")

MODERATION_CATEGORY_SCORES: dict[str, int] = {
    "HR": 3, "SH": 3, "S": 4, "H": 4, "V": 4, "V2": 4, "S3": 5, "H2": 5}
JIGSAW_LABEL_SCORES: dict[str, int] = {
    "toxic": 2, "insult": 4, "obscene": 4, "severe_toxic": 4, "threat": 5, "identity_hate": 5}
DAVIDSON_CLASSES = {"0": "hate", "1": "offensive", "2": "neither"}


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled text: `score` on the rubric, `label` the source's own label it came from."""

  text: str
  score: int
  source: str
  label: str
  group: str  # split key: examples sharing it always land in the same split


# ---------------------------------------------------------------------------------------------
# Label mappings (pure functions on one source row)


def openai_moderation_score(row: Mapping) -> tuple[int, str]:
  """(score, label) of an OpenAI moderation row; a category absent from the row is unknown."""
  positive = [c for c in MODERATION_CATEGORY_SCORES if row.get(c) == 1]
  if not positive:
    return 0, "none"
  return max(MODERATION_CATEGORY_SCORES[c] for c in positive), "+".join(positive)


def davidson_score(row: Mapping) -> tuple[int, str]:
  """(score, label) of a Davidson et al. row (class 0 hate, 1 offensive, 2 neither; vote counts)."""
  name = DAVIDSON_CLASSES.get(str(row["class"]).strip())
  if name is None:
    raise ValueError(f"davidson: unknown class {row['class']!r}")
  if name == "hate":
    return 5, name
  if name == "offensive":
    return 4, name
  disputed = int(row["hate_speech"]) + int(row["offensive_language"]) > 0
  return (1, "neither(disputed)") if disputed else (0, name)


def toxigen_score(label: str) -> tuple[int, str]:
  """(score, label) of a ToxiGen seed statement labelled 'hate' or 'neutral'."""
  if label not in ("hate", "neutral"):
    raise ValueError(f"toxigen: unknown label {label!r}")
  return (3 if label == "hate" else 0), label


def jigsaw_score(row: Mapping) -> tuple[int, str]:
  """(score, label) of a Jigsaw row with 0/1 columns toxic, severe_toxic, obscene, threat, ..."""
  positive = [c for c in JIGSAW_LABEL_SCORES if int(row[c]) == 1]
  if not positive:
    return 0, "none"
  return max(JIGSAW_LABEL_SCORES[c] for c in positive), "+".join(positive)


_TURN_RE = re.compile(r"\n\n(Human|Assistant): ")


def hh_rlhf_turns(dialogue: str) -> list[tuple[str, str]]:
  """[(speaker, text)] of an hh-rlhf dialogue '\\n\\nHuman: ...\\n\\nAssistant: ...'."""
  parts = _TURN_RE.split(dialogue)
  return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def hh_rlhf_examples(record: Mapping) -> list[tuple[str, int, str]]:
  """[(text, score, label)] from one {chosen, rejected} pair: the first request (3), the
  rejected dialogue (4). Raises ValueError when there is no human turn."""
  turns = hh_rlhf_turns(record["rejected"])
  if not turns or turns[0][0] != "Human" or not turns[0][1]:
    raise ValueError("hh-rlhf: dialogue does not start with a human turn")
  dialogue = "\n\n".join(f"{speaker}: {text}" for speaker, text in turns)
  return [(turns[0][1], 3, "request"), (dialogue, 4, "rejected")]


# ---------------------------------------------------------------------------------------------
# Splitting


_NOISE_RE = re.compile(r"https?://\S+|@\w+|\brt\b|&#?\w+;")
_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")


def group_key(text: str) -> str:
  """Lower-cased text without links, @mentions, 'RT', entities and punctuation."""
  return " ".join(_NON_ALNUM_RE.sub(" ", _NOISE_RE.sub(" ", text.lower())).split())


def _unit_hash(key: str, salt: str = "") -> float:
  """A deterministic number in [0, 1) from a string."""
  return int.from_bytes(hashlib.sha1((salt + key).encode()).digest()[:8], "big") / 2**64


def split_of(group: str, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> str:
  """'train', 'validation' or 'test' by a hash of the group key."""
  u, edge = _unit_hash(group, "split:"), 0.0
  for name, fraction in zip(SPLITS, fractions):
    edge += fraction
    if u < edge:
      return name
  return SPLITS[-1]


# ---------------------------------------------------------------------------------------------
# Readers (one per source; each yields Examples and says what it skipped through `counts`)


def _jsonl(path: Path) -> Iterator[dict]:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      if line.strip():
        yield json.loads(line)


def read_openai_moderation(data_dir: Path, counts: collections.Counter) -> Iterator[Example]:
  for row in _jsonl(data_dir / "classifier/openai_moderation/samples-1680.jsonl.gz"):
    score, label = openai_moderation_score(row)
    yield Example(row["prompt"], score, "openai_moderation", label, group_key(row["prompt"]))


def read_davidson(data_dir: Path, counts: collections.Counter) -> Iterator[Example]:
  with open(data_dir / "classifier/davidson_hate_offensive/labeled_data.csv", newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      text = html.unescape(row["tweet"])
      score, label = davidson_score(row)
      yield Example(text, score, "davidson", label, group_key(text))


def read_toxigen(data_dir: Path, counts: collections.Counter) -> Iterator[Example]:
  path = data_dir / "classifier/toxigen_seed_statements/toxigen_seed_statements.csv"
  with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      score, label = toxigen_score(row["label"])
      yield Example(row["text"], score, "toxigen", label, group_key(row["text"]))


def read_jigsaw(data_dir: Path, counts: collections.Counter) -> Iterator[Example]:
  folder = data_dir / "classifier/jigsaw_toxic_sample"
  for name in ("test_examples.csv", "train_toxic_sample_isa630.csv"):
    with open(folder / name, newline="", encoding="utf-8") as f:
      for row in csv.DictReader(f):
        score, label = jigsaw_score(row)
        yield Example(row["comment_text"], score, "jigsaw", label, group_key(row["comment_text"]))


def read_hh_rlhf(data_dir: Path, counts: collections.Counter) -> Iterator[Example]:
  for record in _jsonl(data_dir / "classifier/hh_rlhf_harmless/harmless-base_test.jsonl.gz"):
    try:
      examples = hh_rlhf_examples(record)
    except ValueError:
      counts["hh_rlhf: dropped, no human turn"] += 1
      continue
    group = "hh:" + group_key(examples[0][0])  # the request: both examples share its split
    for text, score, label in examples:
      yield Example(text, score, "hh_rlhf", label, group)


def passages(text: str, key: str, min_chars: int = 80, max_chars: int = 2000) -> list[str]:
  """Cuts a long document into passages at line ends, of lengths spread log-uniformly in
  [min_chars, max_chars] (deterministic by key) so that length alone says nothing about safety.
  A single line longer than max_chars is cut at a word boundary."""
  out, current = [], ""
  target = lambda i: math.exp(math.log(min_chars) + _unit_hash(f"{key}:{i}") * math.log(max_chars / min_chars))
  goal = target(0)
  for line in text.splitlines():
    line = line.strip()
    while line:
      room = max_chars - len(current) - 1
      if len(line) > room:  # cut the line at the last space that fits
        cut = line.rfind(" ", 0, room)
        head, line = (line[:cut], line[cut + 1:]) if cut > 0 else (line[:room], line[room:])
      else:
        head, line = line, ""
      current = f"{current}\n{head}" if current else head
      if len(current) >= goal or line:
        out.append(current)
        current, goal = "", target(len(out))
  if current:
    out.append(current)
  return out


def read_clean_passages(path: Path, source: str, counts: collections.Counter) -> Iterator[Example]:
  """Score-0 passages of a {id|module_id, text} jsonl.gz (Wikipedia, OpenStax)."""
  for doc in _jsonl(path):
    doc_id = str(doc.get("id") or doc.get("module_id"))
    for passage in passages(doc["text"], f"{source}:{doc_id}"):
      yield Example(passage, 0, source, "clean", f"{source}:{doc_id}")


# ---------------------------------------------------------------------------------------------
# The labelled set


def cap_per_source_score(examples: Iterable[Example], cap: int, counts: collections.Counter | None = None,
                         uncapped: Collection[str] = ()) -> list[Example]:
  """At most `cap` examples of each (source, score), chosen by a hash of the text (stable); the
  sources in `uncapped` are kept whole."""
  groups: dict[tuple[str, int], list[Example]] = collections.defaultdict(list)
  for example in examples:
    groups[(example.source, example.score)].append(example)
  kept = []
  for (source, score), group in sorted(groups.items()):
    group.sort(key=lambda e: _unit_hash(e.text, "cap:"))
    limit = len(group) if source in uncapped else cap
    if len(group) > limit and counts is not None:
      counts[f"{source}: dropped, over the cap (score {score})"] += len(group) - limit
    kept.extend(group[:limit])
  return kept


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LabelledConfig:
  """Which sources, how many examples of each (source, score), and the split fractions."""

  sources: tuple[str, ...] = ("wikipedia", "openstax", "openai_moderation", "davidson", "toxigen",
                              "jigsaw", "hh_rlhf")
  max_per_source_score: int = 4000  # keeps Davidson's 19k offensive tweets from dominating
  fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)


@dataclasses.dataclass
class LabelledData:
  splits: dict[str, list[Example]]
  counts: collections.Counter  # reasons and sizes: "<source>: read", "... dropped, duplicate", ...

  def table(self) -> str:
    """Examples per split, source and score, as text."""
    lines = []
    for split, examples in self.splits.items():
      by = collections.Counter((e.source, e.score) for e in examples)
      lines.append(f"{split}: {len(examples)} examples")
      for source in sorted({s for s, _ in by}):
        lines.append(f"  {source:18s} " + " ".join(f"{k}:{by[(source, k)]:5d}" for k in range(6)))
    return "\n".join(lines)


def _readers(data_dir: Path) -> dict[str, Callable[[collections.Counter], Iterator[Example]]]:
  return {
      "wikipedia": lambda c: read_clean_passages(
          data_dir / "pretrain/wikipedia/wikipedia_kilt_subset.jsonl.gz", "wikipedia", c),
      "openstax": lambda c: read_clean_passages(
          data_dir / "pretrain/openstax/openstax_ccby_books.jsonl.gz", "openstax", c),
      "openai_moderation": lambda c: read_openai_moderation(data_dir, c),
      "davidson": lambda c: read_davidson(data_dir, c),
      "toxigen": lambda c: read_toxigen(data_dir, c),
      "jigsaw": lambda c: read_jigsaw(data_dir, c),
      "hh_rlhf": lambda c: read_hh_rlhf(data_dir, c),
  }


def build_labelled(data_dir: str | Path, config: LabelledConfig | None = None) -> LabelledData:
  """Reads every configured source, maps its labels, de-duplicates, caps and splits.

  Per source: exact duplicates (same normalised text and score) are dropped; a text that
  appears with two different scores keeps the highest (the rubric's rule); then at most
  `max_per_source_score` examples per (source, score) are kept, chosen by a hash of the text.
  `counts` records every step.
  """
  config = config or LabelledConfig()
  data_dir = Path(data_dir)
  readers = _readers(data_dir)
  unknown = set(config.sources) - set(readers)
  if unknown:
    raise ValueError(f"unknown sources {sorted(unknown)}; known: {sorted(readers)}")
  counts: collections.Counter = collections.Counter()
  kept: list[Example] = []
  for source in config.sources:
    best: dict[str, Example] = {}
    for example in readers[source](counts):
      counts[f"{source}: read"] += 1
      if not example.text.strip():
        counts[f"{source}: dropped, empty text"] += 1
        continue
      key = example.group + "|" + group_key(example.text)
      if key in best:
        counts[f"{source}: dropped, duplicate"] += 1
        if example.score > best[key].score:
          best[key] = example
        continue
      best[key] = example
    kept.extend(cap_per_source_score(list(best.values()), config.max_per_source_score, counts))
  splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
  for example in kept:
    splits[split_of(example.group, config.fractions)].append(example)
  for name, examples in splits.items():
    counts[f"split {name}"] = len(examples)
  return LabelledData(splits, counts)


def heldout_moderation(data: LabelledData) -> list[Example]:
  """The test-split part of the OpenAI moderation set (unsafe = any category = score >= 1)."""
  return [e for e in data.splits["test"] if e.source == "openai_moderation"]


def heldout_wikipedia(data_dir: str | Path) -> list[Example]:
  """Whole articles of the held-out Wikipedia shard (wikipedia_kilt_val), all score 0."""
  path = Path(data_dir) / "pretrain/wikipedia/wikipedia_kilt_val.jsonl.gz"
  return [Example(d["text"], 0, "wikipedia_val", "clean", f"wikipedia_val:{d['id']}") for d in _jsonl(path)]


def clean_documents(data_dir: str | Path, split: str,
                    fractions: tuple[float, float, float] = LabelledConfig.fractions) -> list[Example]:
  """Whole documents (not passages) of the clean sources, Wikipedia articles and OpenStax
  sections, whose group falls in `split`: the long clean text that decision thresholds are
  calibrated on (a document's score is the max over its windows). All score 0."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
  data_dir = Path(data_dir)
  files = {"wikipedia": data_dir / "pretrain/wikipedia/wikipedia_kilt_subset.jsonl.gz",
           "openstax": data_dir / "pretrain/openstax/openstax_ccby_books.jsonl.gz"}
  documents = []
  for source, path in files.items():
    for doc in _jsonl(path):
      group = f"{source}:{doc.get('id') or doc.get('module_id')}"  # as in read_clean_passages
      if split_of(group, fractions) == split and doc["text"].strip():
        documents.append(Example(doc["text"], 0, source, "clean", group))
  return documents


def texts_and_scores(examples: Iterable[Example]) -> tuple[list[str], list[int]]:
  examples = list(examples)
  return [e.text for e in examples], [e.score for e in examples]


def write_demo_corpus(out: str | Path, data_dir: str | Path, *, tag_detector_docs: int, unsafe_level: int,
                      seed: int = 0) -> dict[str, Any]:
  """`safejax demo`'s corpus from real text (`build_labelled`: clean Wikipedia and OpenStax passages
  and the labelled unsafe sets).

  The classifier trains on the labelled train split and is measured on the test split; the
  pretraining corpus is every split's text but the tag detector's documents (the pipeline re-scores
  it, so 70 % of it was seen by the classifier: routing is a little better than on unseen web text).
  The tag detector reads a sample of the test split withheld from pretraining (a detector measured
  on its own training text proves nothing), unsafe from `unsafe_level` up.

  Writes pretrain.jsonl, classifier_train.jsonl, classifier_test.jsonl and tag_detector.jsonl.
  """
  out = Path(out)
  data = build_labelled(data_dir)
  rows = lambda split: [{"id": f"{e.source}-{split}-{i}", "text": e.text, "score": e.score, "source": e.source}  # noqa: E731
                        for i, e in enumerate(data.splits[split])]
  test = rows("test")
  tag_docs = random.Random(seed).sample(test, min(tag_detector_docs, len(test)))
  withheld = {d["id"] for d in tag_docs}
  pretrain = rows("train") + rows("validation") + [d for d in test if d["id"] not in withheld]
  random.Random(seed).shuffle(pretrain)
  write_jsonl(pretrain, out / "pretrain.jsonl")
  write_jsonl(rows("train"), out / "classifier_train.jsonl")
  write_jsonl(test, out / "classifier_test.jsonl")
  write_jsonl([{**d, "unsafe": int(d["score"] >= unsafe_level)} for d in tag_docs], out / "tag_detector.jsonl")
  scores = [0] * 6
  for d in pretrain:
    scores[d["score"]] += 1
  return {"pretrain_docs": len(pretrain), "pretrain_scores": scores, "classifier_train": len(data.splits["train"]),
          "classifier_test": len(data.splits["test"]), "labelled_table": data.table()}
