"""Capability scoring with a fake loglikelihood of known answers, and the real task files."""

import json
import math

import pytest

from safejax.evaluation import capability


def table_loglikelihood(table):
  """A fake lm-eval loglikelihood: (context, continuation) -> (logprob, greedy) from a table."""
  calls = []

  def loglikelihood(requests):
    calls.append(list(requests))
    return [table[r] for r in requests]

  loglikelihood.calls = calls
  return loglikelihood


def write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_multiple_choice_acc_and_acc_norm(tmp_path):
  write_jsonl(tmp_path / "capability/mc_evals/arc_easy.jsonl", [
      {"query": "Question: Which is longer?", "choices": ["a", "bbbb"], "gold": 1},
      {"query": "Question: Is water wet? ", "choices": ["yes", "no"], "gold": 0}])
  items = capability.load_task("arc_easy", tmp_path)
  assert items[0].contexts == ("Question: Which is longer?\nAnswer:",) * 2
  assert items[0].continuations == (" a", " bbbb")
  ll = table_loglikelihood({
      ("Question: Which is longer?\nAnswer:", " a"): (-2.0, False),     # raw: "a" wins (wrong) ...
      ("Question: Which is longer?\nAnswer:", " bbbb"): (-3.0, False),  # ... per character "bbbb" (right)
      ("Question: Is water wet?\nAnswer:", " yes"): (-1.0, True),
      ("Question: Is water wet?\nAnswer:", " no"): (-5.0, False)})
  scores = capability.score_choices(ll, items, acc_norm=True)
  assert scores == {"n": 2, "acc": 0.5, "acc_norm": 1.0, "chance": 0.5}
  assert len(ll.calls) == 1  # every choice of every item in one batched call


def test_copa_uses_a_plain_space_and_no_acc_norm(tmp_path):
  write_jsonl(tmp_path / "capability/mc_evals/copa.jsonl", [
      {"query": "The man turned on the faucet, therefore", "choices": ["water flowed.", "it snowed.", "x."], "gold": 0}])
  assert len(capability.load_task("copa", tmp_path)) == 1
  ll = table_loglikelihood({("The man turned on the faucet, therefore", " water flowed."): (-4.0, False),
                            ("The man turned on the faucet, therefore", " it snowed."): (-9.0, False),
                            ("The man turned on the faucet, therefore", " x."): (-8.0, False)})
  result = capability.evaluate_capability(ll, tmp_path, ["copa"])
  assert result["copa"] == {"n": 1, "acc": 1.0, "chance": pytest.approx(1 / 3)}
  assert result["average"] == {"acc": 1.0, "chance": pytest.approx(1 / 3)}


def test_winogrande_scores_the_shared_continuation_under_each_context(tmp_path):
  write_jsonl(tmp_path / "capability/mc_evals/winogrande.jsonl", [
      {"context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"],
       "continuation": "got the easier cases.", "gold": 1}])
  items = capability.load_task("winogrande", tmp_path)
  ll = table_loglikelihood({("Sarah beat Maria so Sarah", " got the easier cases."): (-7.0, False),
                            ("Sarah beat Maria so Maria", " got the easier cases."): (-6.0, False)})
  assert capability.score_choices(ll, items, acc_norm=False) == {"n": 1, "acc": 1.0, "chance": 0.5}


def test_lambada_accuracy_is_greedy_match_and_perplexity(tmp_path):
  write_jsonl(tmp_path / "capability/mc_evals/lambada_openai.jsonl", [
      {"context": "He opened the", "continuation": "door"}, {"context": "She read the", "continuation": "book"}])
  items = capability.load_task("lambada_openai", tmp_path)
  assert items == [("He opened the", " door"), ("She read the", " book")]
  ll = table_loglikelihood({items[0]: (-1.0, True), items[1]: (-3.0, False)})
  result = capability.score_last_word(ll, items)
  assert result == {"n": 2, "acc": 0.5, "perplexity": pytest.approx(math.exp(2.0)), "chance": 0.0}


def test_perplexity_per_word_and_byte():
  ll = table_loglikelihood({("", "a b c"): (-6.0, False), ("", "dé"): (-3.0, False)})
  result = capability.perplexity(ll, ["a b c", "dé"])
  words, n_bytes = 4, 5 + 3  # "é" is two bytes
  assert result["words"] == words and result["bytes"] == n_bytes
  assert result["word_perplexity"] == pytest.approx(math.exp(9 / words))
  assert result["byte_perplexity"] == pytest.approx(math.exp(9 / n_bytes))
  assert result["bits_per_byte"] == pytest.approx(9 / n_bytes / math.log(2))


def test_bad_gold_is_a_clear_error(tmp_path):
  write_jsonl(tmp_path / "capability/mc_evals/boolq.jsonl", [{"query": "Q", "choices": ["no", "yes"], "gold": 2}])
  with pytest.raises(ValueError, match="gold 2 is not an index into 2 choices"):
    capability.load_task("boolq", tmp_path)
  with pytest.raises(KeyError, match="unknown capability task"):
    capability.load_task("mmlu", tmp_path)


@pytest.mark.parametrize("task,n,chance", [
    ("hellaswag", 10042, 0.25), ("arc_easy", 2376, 0.25), ("arc_challenge", 1172, 0.25), ("piqa", 1838, 0.5),
    ("openbook_qa", 500, 0.25), ("copa", 100, 0.5), ("boolq", 3270, 0.5), ("winogrande", 1267, 0.5),
    ("lambada_openai", 5153, 0.0)])
def test_real_task_files(shared_data, task, n, chance):
  items = capability.load_task(task, shared_data)
  assert len(items) == n
  if task == "lambada_openai":
    # The word after the context's last space (as lm-eval splits); 6 of them span a line break.
    assert all(x.startswith(" ") and " " not in x[1:] for _, x in items)
  else:
    assert sum(1 / len(i.continuations) for i in items) / n == pytest.approx(chance)
    assert all(x.startswith(" ") and not c.endswith(" ") for i in items for c, x in zip(i.contexts, i.continuations))


def test_evaluate_capability_subsamples_every_task(shared_data):
  ll = lambda requests: [(-float(len(x)), False) for _, x in requests]  # noqa: E731  shortest answer wins
  result = capability.evaluate_capability(ll, shared_data, ["copa", "piqa", "lambada_openai"], n_per_task=7, seed=3)
  assert [result[t]["n"] for t in ("copa", "piqa", "lambada_openai")] == [7, 7, 7]
  assert result["average"]["acc"] == pytest.approx((result["copa"]["acc"] + result["piqa"]["acc"]) / 3)
