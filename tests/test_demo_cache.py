"""The demo's step cache: keys derived from a step's inputs and code, stale folders moved aside."""

import dataclasses
import json

import pytest

from safejax.demo import cache
from safejax.demo.cache import StepCache, StepResult, canonical, step_key


@dataclasses.dataclass(frozen=True)
class Sizes:
  docs: int = 10
  topics: tuple[int, ...] = (1, 2)


def count_words(out, text, sizes):
  (out / "words.txt").write_text(str(len(text.split()) * sizes.docs))
  return {"words": len(text.split())}


def test_keys_follow_the_inputs_and_nothing_else():
  key = step_key(count_words, {"text": "a b", "sizes": Sizes()})
  assert key == step_key(count_words, {"sizes": Sizes(), "text": "a b"})  # order does not matter
  assert key != step_key(count_words, {"text": "a b", "sizes": Sizes(docs=11)})  # a field deep inside does
  assert key != step_key(count_words, {"text": "a b c", "sizes": Sizes()})
  upstream = StepResult("corpus", None, "k1", {})
  assert step_key(count_words, {"corpus": upstream}) != step_key(
      count_words, {"corpus": dataclasses.replace(upstream, key="k2")})  # a changed upstream step reruns this one


def test_canonical_forms_are_stable_and_refuse_unknown_objects():
  assert canonical({"b": (1, 2), "a": Sizes()}) == {"a": {"type": "Sizes", "docs": 10, "topics": [1, 2]}, "b": [1, 2]}
  assert canonical(count_words) == {"function": f"{__name__}.count_words"}
  with pytest.raises(TypeError, match="no canonical form"):
    canonical(object())


def test_the_code_of_the_step_and_what_it_imports_is_in_the_key():
  fingerprint = cache.code_fingerprint("safejax.demo.world")
  assert fingerprint == cache.code_fingerprint("safejax.demo.world")
  source = open(cache.__file__).read()
  assert cache._project_imports("safejax.demo.cache", source, False) == set()  # it imports no project module
  world_source = open(cache.sys.modules["safejax.demo.world"].__file__).read()
  assert "safejax.safety.rubric" in cache._project_imports("safejax.demo.world", world_source, False)
  # The recipe imports the world (and everything else): its fingerprint covers more code than the world's.
  assert cache.code_fingerprint("safejax.demo.recipe") != fingerprint


def test_a_step_key_holds_the_code_the_step_reaches_and_nothing_else():
  from safejax.demo import recipe

  texts, modules = cache.work_code(recipe.pretrain_step)
  assert "safejax.train" in modules and "tasks.safety_mixtures" in modules  # what it runs
  assert "safejax.evaluation.claims" not in modules  # the report's claims: no step runs them
  assert any("pretrain_step" in t for t in texts) and not any("evaluate_step" in t for t in texts)
  # A config's methods run without the step naming its class: the inputs' classes count.
  texts, modules = cache.work_code(recipe.evaluate_step, {"config": recipe.DemoConfig()})
  assert any("DemoConfig" in t for t in texts) and "safejax.decoding.generate" in modules
  assert "safejax.evaluation.claims" not in cache.work_code(recipe.evaluate_step)[1]
  # Module constants a step reaches count too (the world's phrase banks).
  from safejax.demo import world
  assert any("_INSTRUCT_REFUSALS" in t for t in cache.work_code(world.write_world_corpus)[0])


def test_only_a_change_to_what_runs_changes_the_code_text():
  source = 'def f(x):\n  """Doubles."""\n  return 2 * x  # why\n'
  assert cache.code_text(source) == cache.code_text('def f(x):\n  """Twice x."""\n\n  return 2*x\n')
  assert cache.code_text(source) == cache.code_text("def f(x):\n  return 2 * x\n")
  assert cache.code_text(source) != cache.code_text('def f(x):\n  """Doubles."""\n  return 3 * x\n')
  assert cache.code_text('"""Module."""\nX = "text"\n') == cache.code_text('X = "text"\n') != cache.code_text('X = "t"\n')
  assert cache.code_text('class A:\n  """Only a docstring."""\n') == cache.code_text("class A:\n  pass\n")


def test_a_step_runs_once_per_key_and_moves_a_stale_folder_aside(tmp_path):
  steps = StepCache(tmp_path)
  first = steps.run("count", count_words, text="a b c", sizes=Sizes())
  assert first.summary["words"] == 3 and (tmp_path / "count" / "words.txt").read_text() == "30"
  calls = []
  again = steps.run("count", lambda out, **kw: calls.append(1) or {}, text="a b c", sizes=Sizes())
  assert calls == [1]  # another function is another key: it runs
  assert (tmp_path / "count.stale" / "words.txt").is_file()  # the old folder was moved aside, not deleted
  assert again.key != first.key
  rerun = steps.run("count", count_words, text="a b c", sizes=Sizes())
  assert json.loads((tmp_path / "count" / cache.DONE).read_text())["key"] == rerun.key == first.key
  skipped = steps.run("count", count_words, text="a b c", sizes=Sizes())
  assert skipped.summary == rerun.summary  # finished under this key: not run again


def test_an_interrupted_step_resumes_in_its_folder(tmp_path):
  steps = StepCache(tmp_path)

  def interrupted(out, n):
    (out / "partial").write_text("half")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    steps.run("train", interrupted, n=1)

  # The same step under the same key resumes in its folder (the trainer then restores its checkpoints).
  key = step_key(interrupted, {"n": 1})
  assert json.loads((tmp_path / "train" / cache.STARTED).read_text())["key"] == key
  with pytest.raises(KeyboardInterrupt):
    steps.run("train", interrupted, n=1)
  assert (tmp_path / "train" / "partial").read_text() == "half" and not (tmp_path / "train.stale").exists()
  assert steps.done("train", key) is None  # never finished
