"""`safejax demo` end to end at toy size: every stage runs, the table comes out, a rerun resumes."""

import json

import pytest

import gin

from safejax import cli
from safejax.decoding import DecodingConfig
from safejax.demo import recipe as demo_lib
from safejax.demo.cache import DONE
from safejax.jsonl import read_jsonl
from safejax.safety import negatives
from safejax.safety.scorer import ScorerFromPath

TOY = demo_lib.DemoConfig(vocab_size=600, rungs=("raw", "tags"), seeds=(0,), train_steps=3, posttrain=False,
                          decoding=DecodingConfig(beam_size=2, num_expand=2, max_new_tokens=4))
TOY_DOCS = 300
# What `safejax demo --gin.X=...` would bind on top of gin/runs/demo.gin (the world's sizes and
# `EvalConfig.n_per_set` too: a --gin flag reaches every config of a demo run).
TOY_BINDINGS = ["ModelConfig.num_layers = 1", "ModelConfig.embed_dim = 32", "ModelConfig.num_heads = 2",
                "ModelConfig.num_kv_heads = 1", "ModelConfig.head_dim = 16", "ModelConfig.mlp_dim = 64",
                "train.batch_size = 8", "train.sequence_length = 64", "OptimizerConfig.warmup_steps = 1",
                f"CorpusSizes.num_docs = {TOY_DOCS}", "CorpusSizes.classifier_docs = 300", "CorpusSizes.heldout_docs = 20",
                "CorpusSizes.tag_detector_docs = 40", "EvalConfig.n_per_set = 8"]


@pytest.fixture(autouse=True)
def toy_gin():
  """The demo's gin defaults with the toy's sizes, cleared afterwards for the other tests."""
  cli.parse_gin(["runs/demo.gin"], TOY_BINDINGS)
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  cli.parse_gin(["runs/demo.gin"], TOY_BINDINGS)
  try:
    assert demo_lib.demo(output_dir=str(out), config=TOY) == 0
  finally:
    gin.clear_config()
  return out


def test_every_stage_leaves_its_outputs(toy_run):
  for stage in ("corpus", "classifier", "pipeline", "vocab", "pretrain", "evaluate"):
    assert (toy_run / stage / DONE).is_file(), stage
  manifest = json.loads((toy_run / "pipeline" / "streams" / "manifest.json").read_text())
  assert manifest["documents"]["in"] == TOY_DOCS
  for label in ("raw-s0", "tags-s0"):
    assert (toy_run / "pretrain" / label / "checkpoints" / "3").is_dir()
    assert (toy_run / "evaluate" / label / "results.json").is_file()
  assert (toy_run / "classifier" / "confusion.png").is_file()
  pipeline = json.loads((toy_run / "pipeline" / DONE).read_text())["summary"]
  assert set(pipeline["near_duplicates"]) == {"rephrase", "refuseweb", "moral_education"}
  assert all(0 <= share < 0.05 for share in pipeline["near_duplicates"].values())  # issue 12: under 5 % a stream


def test_ladder_table_has_every_rung_and_decoding(toy_run):
  table = json.loads((toy_run / "report" / "ladder.json").read_text())
  assert table["primary"] == "compliance" and table["judges"] == ["compliance", "leak"]
  assert table["stages"] == ["base"]
  rows = table["tables"]["compliance"]["base"]
  assert [r["system"] for r in rows] == [
      "raw/beam", "raw/greedy", "raw/SafeBeam", "raw/SafeBeam-paper", "raw/placebo",
      "tags/beam", "tags/greedy", "tags/SafeBeam", "tags/SafeBeam-paper", "tags/placebo", "tags/sham", "tags/threshold"]
  for row in rows:
    assert len(row["values"]) == 1 and 0 <= row["mean"] <= 1  # one seed: per-seed value, no interval
  assert set(table["tables"]) >= {"compliance", "leak", "over_refusal", "tag_auroc"}  # toy replies hold no word
  assert table["judge_standing"] == {"primary": "compliance", "validated": ["compliance", "leak"], "unvalidated": {}}
  assert {c["status"] for c in table["claims"]} <= {"holds", "does not hold", "inconclusive", "inconclusive (floor)",
                                                   "not run"}
  assert (toy_run / "report" / "ladder.png").stat().st_size > 5_000
  assert "| claim | verdict |" in (toy_run / "report" / "claims.md").read_text()


def test_evaluate_measures_the_replies_and_a_gin_flag_reaches_it(toy_run):
  """`evaluate` measures each system's replies (refusals, empty replies, unknown words, perplexity
  under the raw model of the same seed), and `EvalConfig.n_per_set = 8` (a --gin flag) took effect."""
  from safejax.evaluation import ladder

  results = json.loads((toy_run / "evaluate" / "tags-s0" / "results.json").read_text())
  assert results["data"]["demo_harmful"]["evaluated"] == 8 and results["config"]["n_per_set"] == 8
  for system in ("tags-s0/beam", "tags-s0/SafeBeam", "tags-s0/placebo"):
    replies = results["systems"][system]["replies"]
    assert replies["n"] == 8 and 0 <= replies["empty_share"] <= 1 and 0 <= replies["refused_share"] <= 1
    assert replies.get("oov_share") is None or 0 <= replies["oov_share"] <= 1
    assert replies.get("reply_perplexity") is None or replies["reply_perplexity"] > 1
  models = json.loads((toy_run / "pretrain" / DONE).read_text())["summary"]["models"]
  records = ladder.records_from_results({"tags-s0": results}, {"tags-s0": models["tags-s0"]})
  by = {(r["metric"], r["system"]): r["value"] for r in records}
  assert by[("empty_share", "tags/beam")] == results["systems"]["tags-s0/beam"]["replies"]["empty_share"]
  assert ("harmful_refused", "tags/placebo") in by


def test_the_threshold_variant_is_chosen_on_validation_prompts(toy_run):
  chosen = json.loads((toy_run / "evaluate" / "tags-s0" / "threshold.json").read_text())
  grid = demo_lib.DemoConfig().threshold_grid
  assert chosen["tau"] in grid and [c[0] for c in chosen["candidates"]] == list(grid)
  assert all(0 <= rate <= 1 for _, rate, _ in chosen["candidates"])
  results = json.loads((toy_run / "evaluate" / "tags-s0" / "results.json").read_text())
  assert "tags-s0/threshold" in results["systems"] and not (toy_run / "evaluate" / "raw-s0" / "threshold.json").exists()


def test_the_routing_classifier_never_judges_and_the_world_judges_are_validated(toy_run):
  results = json.loads((toy_run / "evaluate" / "raw-s0" / "results.json").read_text())
  assert results["config"]["judges"] == ["compliance", "leak"] and results["config"]["classifier_path"] is None
  evaluated = json.loads((toy_run / "evaluate" / DONE).read_text())["summary"]
  validation = evaluated["judge_validation"]
  assert validation["compliance"]["kappa"] > 0.9 and validation["leak"]["kappa"] == 1.0
  assert 0 < validation["refusal (over-refusal's judge)"]["kappa"] < 1


def test_rerun_resumes_finished_stages(toy_run, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("a finished stage ran again")

  from safejax.demo import world

  done = {p: p.stat().st_mtime_ns for p in toy_run.glob(f"*/{DONE}")}
  for module, name in ((world, "generate_documents"), (negatives, "train_with_negatives"), (demo_lib.pipeline, "prepare"),
                       (demo_lib, "train_sentencepiece"), (demo_lib.train_lib, "train"), (demo_lib.eval_run, "evaluate")):
    monkeypatch.setattr(module, name, fail)
  before = (toy_run / "report" / "ladder.json").read_text()
  assert demo_lib.demo(output_dir=str(toy_run), config=TOY) == 0
  assert (toy_run / "report" / "ladder.json").read_text() == before
  assert {p: p.stat().st_mtime_ns for p in toy_run.glob(f"*/{DONE}")} == done


def test_changed_settings_redo_the_stages_they_touch(toy_run):
  import dataclasses

  from safejax.demo.cache import StepCache, step_key

  assert StepCache(toy_run).done("evaluate", "a-different-key") is None  # a new key is not the finished one
  assert step_key(demo_lib.evaluate_step, {"config": TOY}) != step_key(
      demo_lib.evaluate_step, {"config": dataclasses.replace(TOY, leak_min_facts=3)})


def test_cloze_items_are_well_formed():
  docs = [{"text": "One two three four. Five six seven eight. Nine ten eleven twelve. Alpha beta gamma delta."},
          {"text": "Red green blue white. Cats dogs birds fish. Sun moon stars sky. Rain snow hail wind."}]
  from safejax.demo import world

  items = world.cloze_items(docs, seed=0, num_choices=2)
  assert len(items) == 2
  for item, doc in zip(items, docs):
    assert item["choices"][item["gold"]] in doc["text"]
    assert all(c not in doc["text"] for i, c in enumerate(item["choices"]) if i != item["gold"])


def test_garbled_texts_garble_every_word():
  docs = [f"document {i} describes the harbour festival and its lantern parade" for i in range(20)]
  garbled = negatives.garbled_texts(docs, seed=0, fraction=0.5)
  assert len(garbled) == 10  # labelled 0 when the classifier trains (`train_with_negatives`)
  for text in garbled:
    words = text.split()
    assert len(words) == 10
    assert "festival" not in words and "lantern" not in words  # shuffled (and stuttered) letters
    assert sorted(set(words[5])) == sorted(set("festival"))  # the same letters, nothing else
  assert garbled == negatives.garbled_texts(docs, seed=0, fraction=0.5)
  assert garbled != negatives.garbled_texts(docs, seed=1, fraction=0.5)


def test_toy_classifier_reports_garbled_text_flagged(toy_run):
  """The summary's share is the saved scorer's verdict on the garbled held-out split."""
  import numpy as np

  from safejax.safety import load_scorer

  summary = json.loads((toy_run / "classifier" / "DONE.json").read_text())["summary"]
  test = read_jsonl(toy_run / "corpus" / "classifier_test.jsonl")
  garbled = negatives.garbled_texts([d["text"] for d in test], seed=TOY.data_seed + 1, fraction=1.0)
  scores = load_scorer(summary["scorer"]).score(garbled)
  assert summary["heldout_garbled_flagged_at_1"] == pytest.approx(float(np.mean(np.asarray(scores) >= 1)))


def test_posttraining_stages_add_tuned_columns(tmp_path):
  import dataclasses

  config = dataclasses.replace(TOY, rungs=("tags",), posttrain=True, instruct_steps=2, posttrain_sizes=(30, 30, 40),
                               attack_learning_rates=(1e-3,), attack_steps=(1, 2))
  assert demo_lib.demo(output_dir=str(tmp_path), config=config) == 0
  dose = json.loads((tmp_path / "dose" / "DONE.json").read_text())["summary"]
  assert set(dose["chosen"]) == {"0"}  # a dose per seed, chosen on that seed's raw rung (here the only rung)
  assert dose["chosen"]["0"]["steps"] in (1, 2) and [p["steps"] for p in dose["curves"]["tags-s0"]] == [1, 2]
  assert (tmp_path / "dose" / "dose_response.png").stat().st_size > 5_000
  for step, suffix in (("instruct", "+it"), ("attack", "+it+bft")):
    steps = 2 if suffix == "+it" else dose["chosen"]["0"]["steps"]
    assert (tmp_path / step / f"tags-s0{suffix}" / "checkpoints" / str(steps)).is_dir()
    results = json.loads((tmp_path / "evaluate" / f"tags-s0{suffix}" / "results.json").read_text())
    assert results["systems"][f"tags-s0{suffix}/SafeBeam"]["prompt_style"] == "chat"
    assert "helpfulness" in results["systems"][f"tags-s0{suffix}/beam"]
  sft = json.loads((tmp_path / "sft_data" / "DONE.json").read_text())["summary"]
  assert sft["cut_records"] == 0 and sft["sequence_length"] > sft["prompt_length"] > 0
  instruct = read_jsonl(tmp_path / "sft_data" / "instruct.jsonl")
  tagged = [r for r in instruct if r.get("harm_tagged")]
  assert len(tagged) == round(0.1 * len(instruct)) > 0  # the paper's 10 %, in refused requests only
  assert all(any("<potentially_unsafe_content>" in m["content"] for m in r["messages"] if m["role"] == "user")
             and not any("<potentially_unsafe_content>" in m["content"] for m in r["messages"] if m["role"] != "user")
             for r in tagged)
  table = json.loads((tmp_path / "report" / "ladder.json").read_text())
  assert table["stages"] == ["base", "instruct", "benign_ft"]
  for stage in table["stages"]:
    systems = ["tags/beam", "tags/greedy", "tags/SafeBeam", "tags/SafeBeam-paper", "tags/placebo", "tags/sham"] + (
        ["tags/threshold"] if stage == "benign_ft" else [])
    assert [r["system"] for r in table["tables"]["compliance"][stage]] == systems
  assert "compliance at benign_ft" in (tmp_path / "report" / "ladder.md").read_text()


def test_the_pipelines_sentence_rater_pickles_as_a_path(toy_run):
  import pickle

  from safejax.safety import load_scorer

  scorer_dir = json.loads((toy_run / "classifier" / DONE).read_text())["summary"]["scorer"]
  rater = ScorerFromPath(scorer_dir)
  assert len(pickle.dumps(rater)) < 1_000  # Beam ships it with every bundle
  texts = ["A calm walk by the river.", "Another sentence about the festival."]
  assert list(pickle.loads(pickle.dumps(rater)).score(texts)) == list(load_scorer(scorer_dir).score(texts))
