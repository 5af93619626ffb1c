"""Judges: the keyword lists' matching rules, the classifier and LLM judges on fakes."""

import json

import numpy as np
import pytest

from safejax.generation import Generation
from safejax.evaluation import judges
from safejax.evaluation.judges import JudgeVerdict, KeywordRefusalJudge, MatchRule


def refused(judge, responses):
  return [v.refused for v in judge(["a request"] * len(responses), responses)]


def test_case_sensitive_substring_anywhere():
  judge = KeywordRefusalJudge(("I cannot", "Sorry"), MatchRule("substring", case_sensitive=True))
  assert refused(judge, ["Here it is. I cannot say more.", "i cannot", "sorry, no", "Sorry, no", "Fine."]) == [
      True, False, False, True, False]


def test_lowercased_stripped_prefix():
  judge = KeywordRefusalJudge(("i'm sorry", "no,"), MatchRule("prefix", case_sensitive=False, strip=True))
  assert refused(judge, ["  I'm SORRY, I can't", "No, that is wrong", "Well, I'm sorry", "Nothing to add"]) == [
      True, True, False, False]


def test_case_insensitive_substring_in_first_characters():
  judge = KeywordRefusalJudge(("however",), MatchRule("substring", case_sensitive=False, max_chars=150))
  early, late = "HOWEVER, this is fine." , "x" * 150 + " however"
  assert refused(judge, [early, late]) == [True, False]


def test_verdicts_rate_refusal_only_and_give_reasons():
  judge = KeywordRefusalJudge(("I cannot",), MatchRule("substring", case_sensitive=True))
  v_refused, v_complied = judge(["q", "q"], ["I cannot help.", "Here you go."])
  assert v_refused == JudgeVerdict(harmful=None, refused=True, reason="matched refusal string 'I cannot'")
  assert v_complied.attack_success is True and v_refused.attack_success is False
  with pytest.raises(ValueError, match="2 prompts but 1 responses"):
    judge(["q", "q"], ["x"])


def test_rule_table_agrees_with_the_lists_descriptions(shared_data):
  path = shared_data / "safety_prompts/refusal_prefixes/refusal_prefix_lists.json"
  lists = json.loads(path.read_text())
  assert set(lists) == set(judges.REFUSAL_LIST_RULES)
  for name, entry in lists.items():
    rule, text = judges.REFUSAL_LIST_RULES[name], entry["matching"]
    assert (rule.mode == "prefix") == ("startswith" in text), name
    assert rule.case_sensitive == ("lower()" not in text and "case-insensitive" not in text), name
    assert (rule.max_chars is not None) == ("[:150]" in text), name
    judge = judges.load_keyword_judge(path, name)
    assert judge.strings == tuple(entry["strings"]) and judge.name == f"keyword:{name}"
  assert len(judges.load_keyword_judge(path, "llm_attacks_eval_test_prefixes").strings) == 29
  with pytest.raises(KeyError, match="no list 'nope'"):
    judges.load_keyword_judge(path, "nope")


def test_the_canonical_advbench_list_flags_ethics_words_anywhere(shared_data):
  judge = judges.load_keyword_judge(shared_data / "safety_prompts/refusal_prefixes/refusal_prefix_lists.json",
                                    "llm_attacks_eval_test_prefixes")
  # Case-sensitive substring: "illegal" anywhere counts, "Illegal" at the start does not.
  assert refused(judge, ["Here is the plan, though it is illegal.", "Illegal parking fines rose.",
                         "Sure, the recipe uses flour."]) == [True, False, False]


class FakeScorer:
  def __init__(self, scores):
    self.scores = scores

  def score(self, texts):
    return np.array([self.scores[t] for t in texts])


def test_classifier_judge_thresholds_the_response_score():
  judge = judges.ClassifierJudge(FakeScorer({"calm": 0, "edgy": 3, "bad": 5}), threshold=3)
  verdicts = judge(["p"] * 3, ["calm", "edgy", "bad"])
  assert [v.harmful for v in verdicts] == [False, True, True]
  assert all(v.refused is None for v in verdicts)
  assert verdicts[1].reason == "safety score 3 (threshold 3)"
  assert judge([], []) == []


class FakeBackend:
  name = "fake"
  model = "fake-judge"

  def __init__(self, answers):
    self.answers = answers
    self.requests = []

  def generate(self, requests):
    self.requests += requests
    return [a if isinstance(a, Generation) else Generation(a, {}) for a in self.answers]


def test_llm_judge_parses_yes_no_and_sets_aside_the_rest():
  backend = FakeBackend(["Yes", " no.", "**YES** it does", "I think so", Generation("", {}, error="HTTP 500")])
  judge = judges.build_judge("llm", backend=backend)
  verdicts = judge(["Describe how to pick a lock"] * 5, ["r1", "r2", "r3", "r4", "r5"])
  assert [v.harmful for v in verdicts] == [True, False, True, None, None]
  assert "unparseable" in verdicts[3].reason and "HTTP 500" in verdicts[4].reason
  question = backend.requests[0].messages[0]["content"]
  assert "Describe how to pick a lock" in question and "r1" in question and question.rstrip().endswith("Answer:")
  assert backend.requests[0].temperature == 0.0 and judge.name == "llm:fake-judge"


def test_build_judge_errors_name_what_is_missing():
  with pytest.raises(ValueError, match="refusal_lists_path"):
    judges.build_judge("keyword:llm_attacks_eval_test_prefixes")
  with pytest.raises(ValueError, match="safety scorer"):
    judges.build_judge("classifier")
  with pytest.raises(ValueError, match="text backend"):
    judges.build_judge("llm")
  with pytest.raises(ValueError, match="unknown judge"):
    judges.build_judge("oracle")
