"""Tests of the built-in demo corpus: labels, determinism, coverage, non-operational text, held-out eval."""

import collections
import json
import re

import pytest

from safejax.demo import corpus as dc
from safejax.safety import rubric

NUM_DOCS = 3000


@pytest.fixture(scope="module")
def corpus():
  return dc.generate_corpus(NUM_DOCS, seed=0)


@pytest.fixture(scope="module")
def training_text(corpus):
  return "\n".join(r["text"] for r in corpus).lower()


@pytest.fixture(scope="module")
def eval_prompts():
  return dc.generate_eval_prompts(n_harmful=600, n_benign=100, seed=0)


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z][a-z'\-]*", text.lower())


def _ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
  w = _words(text)
  return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def _bank_entries(goal_banks, key: str) -> set[str]:
  return {entry for groups in goal_banks for group in groups for entry in group[key]}


def test_same_seed_gives_identical_records_and_other_seeds_differ():
  a = dc.generate_corpus(300, seed=7)
  assert a == dc.generate_corpus(300, seed=7)
  assert [r["text"] for r in a] != [r["text"] for r in dc.generate_corpus(300, seed=8)]
  assert dc.generate_eval_prompts(50, 20, seed=3) == dc.generate_eval_prompts(50, 20, seed=3)


def test_records_have_valid_fields(corpus):
  assert len(corpus) == NUM_DOCS
  assert len({r["id"] for r in corpus}) == NUM_DOCS
  for r in corpus:
    assert set(r) == {"id", "text", "score", "category", "source"}
    assert r["source"] == "demo"
    assert r["score"] in range(6)
    if r["score"] == 0:
      assert r["category"] is None
    else:
      assert r["category"] in rubric.CATEGORY_NAMES


def test_level_counts_follow_default_distribution(corpus):
  counts = collections.Counter(r["score"] for r in corpus)
  # 40 % unsafe split 25/20/20/17.5/17.5 over levels 1..5, allocated exactly.
  assert counts == {0: 1800, 1: 300, 2: 240, 3: 240, 4: 210, 5: 210}


def test_every_level_category_cell_is_well_populated(corpus):
  cells = collections.Counter((r["score"], r["category"]) for r in corpus if r["score"])
  for level in dc.UNSAFE_LEVELS:
    sizes = [cells[(level, c)] for c in rubric.CATEGORY_NAMES]
    assert min(sizes) >= 15, (level, sizes)
    assert max(sizes) - min(sizes) <= 1  # categories are dealt round-robin within a level


def test_custom_unsafe_fraction_and_level_distribution():
  assert {r["score"] for r in dc.generate_corpus(50, seed=1, unsafe_fraction=0.0)} == {0}
  only5 = dc.generate_corpus(40, seed=1, unsafe_fraction=0.5, level_distribution={5: 1.0})
  assert collections.Counter(r["score"] for r in only5) == {0: 20, 5: 20}
  assert dc.generate_corpus(0, seed=1) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"num_docs": -1}, "num_docs"),
    ({"num_docs": 10, "unsafe_fraction": 1.5}, "unsafe_fraction"),
    ({"num_docs": 10, "level_distribution": {0: 1.0}}, "keys"),
    ({"num_docs": 10, "level_distribution": {4: 0.0}}, "positive sum"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    dc.generate_corpus(seed=0, **kwargs)


def test_texts_are_distinct_filled_and_within_length_bounds(corpus):
  assert len({r["text"] for r in corpus}) == NUM_DOCS
  for r in corpus:
    n = len(r["text"].split())
    assert dc.MIN_WORDS <= n <= dc.MAX_WORDS, (r["id"], n)
    assert "{" not in r["text"] and "}" not in r["text"], r["text"]
  # Length is drawn the same way for every score, so it does not give the label away.
  means = collections.defaultdict(list)
  for r in corpus:
    means[r["score"]].append(len(r["text"].split()))
  averages = [sum(v) / len(v) for v in means.values()]
  assert max(averages) - min(averages) < 25


def test_safe_documents_cover_the_topics_and_include_helpful_answers(corpus):
  safe = [r["text"] for r in corpus if r["score"] == 0]
  bank = dc.load_banks("safe")["topics"]
  for topic in dc.SAFE_TOPICS:
    assert sum(any(s in t for s in bank[topic]["subjects"]) for t in safe) >= 50, topic
  helpful = sum("Sure, here" in t for t in safe) / len(safe)
  assert 0.1 <= helpful <= 0.4


def test_compliance_pattern_appears_only_at_levels_4_and_5(corpus):
  share = collections.defaultdict(list)
  for r in corpus:
    if r["score"]:
      share[r["score"]].append("Sure, here" in r["text"])
  rate = {level: sum(v) / len(v) for level, v in share.items()}
  assert rate[1] == rate[2] == rate[3] == 0.0
  assert 0.35 <= rate[4] <= 0.65
  assert rate[5] >= 0.8


def _operational_signals(text: str) -> list[str]:
  """A heuristic for instruction-like content: URLs, code, numbered steps, digit-heavy text."""
  signals = []
  if re.search(r"https?://|www\.|\b\w+\.(com|org|net|io)\b", text):
    signals.append("url")
  if re.search(r"`|;\s*$|\bdef |\bimport |#include|<script|\w+\(.*\)|==|\bsudo\b|\$\w", text, re.M):
    signals.append("code")
  if re.search(r"^\s*(\d+|[a-z])[.)]\s", text, re.M):
    signals.append("numbered list")
  digits = sum(c.isdigit() for c in text)
  if digits / max(1, len(text)) > 0.005:
    signals.append("digits")
  if re.search(r"\b\d+\s*(g|kg|mg|ml|grams|litres|percent|%)\b", text):
    signals.append("quantities")
  return signals


def test_unsafe_texts_are_non_operational(corpus):
  for r in corpus:
    if r["score"]:
      assert not _operational_signals(r["text"]), (r["id"], _operational_signals(r["text"]), r["text"])


def test_operational_heuristic_flags_instruction_like_text():
  assert _operational_signals("see https://example.com") == ["url"]
  assert "numbered list" in _operational_signals("1. mix 20 g of this\n2. then that")
  assert "code" in _operational_signals("run(payload); import os")


def test_compliance_steps_are_short_and_vague():
  unsafe = dc.load_banks("unsafe")
  steps = list(unsafe["generic_steps"])
  for bank in unsafe["categories"].values():
    steps += bank["steps"]
  for step in steps:
    assert len(step.split()) <= 14 and not re.search(r"\d", step), step


def test_banks_cover_every_category_and_level():
  unsafe = dc.load_banks("unsafe")["categories"]
  held_out = dc.load_banks("eval")
  assert set(unsafe) == set(rubric.CATEGORY_NAMES) == set(held_out["harmful_goals"])
  assert {b["category"] for b in held_out["benign"]} == set(rubric.CATEGORY_NAMES)
  for category, bank in unsafe.items():
    assert set(bank["levels"]) == {str(level) for level in dc.UNSAFE_LEVELS}, category
    assert all(len(bank["levels"][str(level)]) >= 4 for level in dc.UNSAFE_LEVELS), category


def test_eval_prompt_fields_balance_and_uniqueness(eval_prompts):
  harmful = [p for p in eval_prompts if p["is_harmful"]]
  benign = [p for p in eval_prompts if not p["is_harmful"]]
  assert len(harmful) == 600 and len(benign) == 100
  assert len({p["id"] for p in eval_prompts}) == 700
  assert len({p["prompt"] for p in eval_prompts}) == 700
  for p in eval_prompts:
    assert set(p) == {"id", "prompt", "target", "category", "is_harmful"}
    assert p["category"] in rubric.CATEGORY_NAMES
    assert p["target"].startswith("Sure, here") and p["prompt"]
  first = collections.Counter(p["category"] for p in harmful[:120])
  assert set(first.values()) == {10}  # round-robin over the twelve categories
  # Within a category, every goal appears once before any goal gets a second frame.
  goals = {c: len(dc._goals(g)) for c, g in dc.load_banks("eval")["harmful_goals"].items()}
  targets = collections.defaultdict(list)
  for p in harmful:
    targets[p["category"]].append(p["target"])
  for category, ts in targets.items():
    head = ts[:goals[category]]
    assert len(head) == len(set(head))


def test_eval_pool_too_small_raises():
  with pytest.raises(ValueError, match="benign"):
    dc.generate_eval_prompts(1, 10_000, seed=0)


def test_eval_banks_are_disjoint_from_training_banks():
  safe, unsafe, held_out = dc.load_banks("safe"), dc.load_banks("unsafe"), dc.load_banks("eval")
  train_goals = [bank["goals"] for bank in unsafe["categories"].values()]
  eval_goals = list(held_out["harmful_goals"].values())
  assert not _bank_entries(train_goals, "verbs") & _bank_entries(eval_goals, "verbs")
  assert not _bank_entries(train_goals, "objects") & _bank_entries(eval_goals, "objects")
  train_frames = {frame for pair in safe["request_frames"] for frame in pair}
  assert not train_frames & {frame for pair in held_out["harmful_frames"] for frame in pair}
  train_howtos = {goal for topic in safe["topics"].values() for goal in topic["howto"]["goals"]}
  benign = {entry["prompt"].format(x=fill) for entry in held_out["benign"] for fill in entry["fills"]}
  assert not any(goal in prompt for goal in train_howtos for prompt in benign)


def test_eval_prompts_never_appear_in_training_text(eval_prompts, training_text):
  held_out = dc.load_banks("eval")
  for goal in {g for groups in held_out["harmful_goals"].values() for g in dc._goals(groups)}:
    assert goal.lower() not in training_text, goal
  for entry in held_out["benign"]:
    for fill in entry["fills"]:
      assert entry["prompt"].format(x=fill).lower() not in training_text
  for p in eval_prompts:
    assert p["prompt"].lower() not in training_text


def test_eval_prompts_share_few_word_4grams_with_training_text(eval_prompts, corpus):
  train = set()
  for r in corpus:
    train |= _ngrams(r["text"])
  overlap = {}
  for p in eval_prompts:
    grams = _ngrams(p["prompt"])
    overlap[p["prompt"]] = (p["is_harmful"], len(grams & train) / len(grams))
  assert sum(share for _, share in overlap.values()) / len(overlap) < 0.03
  # Short benign questions may share a generic opening such as "how do I make a" with the safe Q&A.
  assert max(share for harmful, share in overlap.values() if harmful) < 0.25
  assert max(share for harmful, share in overlap.values() if not harmful) <= 0.5


def test_harmful_eval_words_are_known_from_training_text(eval_prompts, corpus):
  """Held out at the phrase level, not the word level: the model has met the words elsewhere."""

  def stem(word):
    return (word[:-2] if word.endswith("'s") else word)[:5]

  known = {stem(w) for r in corpus for w in _words(r["text"])}
  words = [w for p in eval_prompts if p["is_harmful"] for w in _words(p["prompt"])]
  assert sum(stem(w) in known for w in words) / len(words) >= 0.99


def test_write_jsonl_round_trips(tmp_path):
  records = dc.generate_corpus(20, seed=2) + dc.generate_eval_prompts(5, 5, seed=2)
  path = tmp_path / "sub" / "demo.jsonl"
  assert dc.write_jsonl(records, path) == 30
  with open(path, encoding="utf-8") as f:
    assert [json.loads(line) for line in f] == records
