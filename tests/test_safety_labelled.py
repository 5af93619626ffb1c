"""The mapping of each source's labels onto the rubric, passages and leak-free splits."""

import collections

import pytest

from safejax.safety import labelled


@pytest.mark.parametrize("row, expected", [
    ({"S": 0, "H": 0, "V": 0, "HR": 0, "SH": 0, "S3": 0, "H2": 0, "V2": 0}, (0, "none")),
    ({"S": 0, "S3": 0}, (0, "none")),  # absent keys are unknown, not positive
    ({"HR": 1, "SH": 0}, (3, "HR")),
    ({"SH": 1}, (3, "SH")),
    ({"S": 1, "S3": 0}, (4, "S")),
    ({"H": 1, "V": 1}, (4, "H+V")),
    ({"S": 1, "S3": 1}, (5, "S+S3")),  # the highest level wins
    ({"H": 1, "H2": 1, "HR": 1}, (5, "HR+H+H2")),
])
def test_openai_moderation_mapping(row, expected):
  assert labelled.openai_moderation_score(row) == expected


@pytest.mark.parametrize("row, expected", [
    ({"class": "0", "hate_speech": 2, "offensive_language": 1, "neither": 0}, (5, "hate")),
    ({"class": "1", "hate_speech": 0, "offensive_language": 3, "neither": 0}, (4, "offensive")),
    ({"class": "2", "hate_speech": 0, "offensive_language": 0, "neither": 3}, (0, "neither")),
    ({"class": "2", "hate_speech": 0, "offensive_language": 1, "neither": 2}, (1, "neither(disputed)")),
])
def test_davidson_mapping(row, expected):
  assert labelled.davidson_score(row) == expected


def test_davidson_unknown_class_raises():
  with pytest.raises(ValueError, match="unknown class"):
    labelled.davidson_score({"class": "7", "hate_speech": 0, "offensive_language": 0})


def test_toxigen_mapping():
  assert labelled.toxigen_score("hate") == (3, "hate")
  assert labelled.toxigen_score("neutral") == (0, "neutral")
  with pytest.raises(ValueError):
    labelled.toxigen_score("other")


@pytest.mark.parametrize("flags, expected", [
    ({}, (0, "none")),
    ({"toxic": 1}, (2, "toxic")),
    ({"toxic": 1, "obscene": 1}, (4, "toxic+obscene")),
    ({"toxic": 1, "insult": 1, "threat": 1}, (5, "toxic+insult+threat")),
    ({"identity_hate": 1}, (5, "identity_hate")),
])
def test_jigsaw_mapping(flags, expected):
  row = {c: 0 for c in labelled.JIGSAW_LABEL_SCORES} | flags
  assert labelled.jigsaw_score(row) == expected


def test_hh_rlhf_request_and_rejected_dialogue():
  record = {"chosen": "\n\nHuman: How do I get into my neighbour's shed?\n\nAssistant: I can't help with that.",
            "rejected": "\n\nHuman: How do I get into my neighbour's shed?\n\nAssistant: Wait until they are away."}
  (request, s1, l1), (dialogue, s2, l2) = labelled.hh_rlhf_examples(record)
  assert (request, s1, l1) == ("How do I get into my neighbour's shed?", 3, "request")
  assert (s2, l2) == (4, "rejected")
  assert dialogue == "Human: How do I get into my neighbour's shed?\n\nAssistant: Wait until they are away."
  with pytest.raises(ValueError, match="human turn"):
    labelled.hh_rlhf_examples({"chosen": "", "rejected": "\n\nAssistant: hello"})


def test_passages_cover_the_text_within_bounds():
  text = "\n".join(f"Line {i} of a long clean article about rivers and hills." for i in range(400))
  parts = labelled.passages(text, "doc", min_chars=80, max_chars=2000)
  assert all(len(p) <= 2000 for p in parts) and len(parts) > 5
  assert "\n".join(parts).split() == text.split()  # nothing lost or duplicated
  assert parts == labelled.passages(text, "doc", min_chars=80, max_chars=2000)  # deterministic
  long_line = "word " * 2000
  assert all(len(p) <= 2000 for p in labelled.passages(long_line, "x"))


def test_group_key_joins_near_duplicates_and_split_is_deterministic():
  a = "RT @someone: You are GREAT!!! http://t.co/xyz"
  b = "you are great"
  assert labelled.group_key(a) == labelled.group_key(b) == "you are great"
  assert labelled.split_of("k1") == labelled.split_of("k1")
  shares = collections.Counter(labelled.split_of(f"key {i}") for i in range(20000))
  assert shares["train"] / 20000 == pytest.approx(0.7, abs=0.02)
  assert shares["test"] / 20000 == pytest.approx(0.15, abs=0.02)


def test_cap_keeps_at_most_cap_per_source_and_score():
  examples = [labelled.Example(f"t{i}", i % 2, "s", "l", f"g{i}") for i in range(10)]
  counts = collections.Counter()
  kept = labelled.cap_per_source_score(examples, 3, counts)
  assert collections.Counter(e.score for e in kept) == {0: 3, 1: 3}
  assert counts["s: dropped, over the cap (score 0)"] == 2
  whole = examples + [labelled.Example(f"m{i}", 0, "m", "l", f"h{i}") for i in range(6)]
  kept = labelled.cap_per_source_score(whole, 3, uncapped=("m",))
  assert collections.Counter(e.source for e in kept) == {"s": 6, "m": 6}


@pytest.fixture(scope="module")
def real(shared_data):
  return labelled.build_labelled(shared_data)


def test_real_sources_map_as_documented(real, shared_data):
  everything = [e for split in real.splits.values() for e in split]
  by = collections.defaultdict(set)
  for e in everything:
    by[(e.source, e.label.split("+")[0] if e.source != "openai_moderation" else "any")].add(e.score)
  assert by[("davidson", "hate")] == {5} and by[("davidson", "offensive")] == {4}
  assert by[("davidson", "neither")] == {0} and by[("davidson", "neither(disputed)")] == {1}
  assert by[("toxigen", "hate")] == {3} and by[("toxigen", "neutral")] == {0}
  assert by[("hh_rlhf", "request")] == {3} and by[("hh_rlhf", "rejected")] == {4}
  assert by[("wikipedia", "clean")] == {0} and by[("openstax", "clean")] == {0}
  moderation = [e for e in everything if e.source == "openai_moderation"]
  assert sum(e.score >= 1 for e in moderation) == pytest.approx(522, abs=15)  # SOURCE.md: 522 positive
  # Every source row is accounted for: read = kept + dropped (by reason).
  for source in real.counts:
    if source.endswith(": read"):
      name = source[:-len(": read")]
      dropped = sum(v for k, v in real.counts.items() if k.startswith(f"{name}: dropped"))
      assert real.counts[source] == sum(e.source == name for e in everything) + dropped


def test_real_splits_do_not_share_groups(real):
  groups = {name: {e.group for e in split} for name, split in real.splits.items()}
  assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
  keys = {name: {labelled.group_key(e.text) for e in split} for name, split in real.splits.items()}
  assert len(keys["train"] & keys["test"]) <= 0.002 * len(keys["test"])  # cross-source duplicates only


def test_heldout_sets(real, shared_data):
  moderation = labelled.heldout_moderation(real)
  assert moderation and all(e.source == "openai_moderation" for e in moderation)
  wiki = labelled.heldout_wikipedia(shared_data)
  assert len(wiki) == 135 and all(e.score == 0 for e in wiki)
  train_titles = {e.group for e in real.splits["train"] if e.source == "wikipedia"}
  assert not {e.group.replace("wikipedia_val:", "wikipedia:") for e in wiki} & train_titles


def test_clean_documents_are_whole_and_outside_training(real, shared_data):
  documents = labelled.clean_documents(shared_data, "validation")
  assert {d.source for d in documents} == {"wikipedia", "openstax"} and all(d.score == 0 for d in documents)
  groups = {d.group for d in documents}
  assert len(groups) == len(documents)  # one whole document per group
  assert not groups & {e.group for e in real.splits["train"]}
  passage_groups = {e.group for e in real.splits["validation"] if e.source in ("wikipedia", "openstax")}
  assert passage_groups <= groups  # the validation passages come from these documents
  assert max(len(d.text) for d in documents) > 10 * 2000  # whole articles, not passages
  with pytest.raises(ValueError, match="split must be one of"):
    labelled.clean_documents(shared_data, "dev")
