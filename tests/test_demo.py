"""`safejax demo` end to end at toy size: every stage runs, the table comes out, a rerun resumes."""

import json

import pytest

import gin

from safejax import cli
from safejax.decoding import DecodingConfig
from safejax.demo import recipe as demo_lib

TOY = demo_lib.DemoConfig(
    num_docs=300, classifier_docs=300, heldout_docs=20, tag_detector_docs=40, n_harmful=8, n_benign=8,
    vocab_size=600, rungs=("raw", "tags"), seeds=(0,), train_steps=3, posttrain=False,
    decoding=DecodingConfig(beam_size=2, num_expand=2, max_new_tokens=4))
# What `safejax demo --gin.X=...` would bind on top of gin/runs/demo.gin.
TOY_BINDINGS = ["ModelConfig.num_layers = 1", "ModelConfig.embed_dim = 32", "ModelConfig.num_heads = 2",
                "ModelConfig.num_kv_heads = 1", "ModelConfig.head_dim = 16", "ModelConfig.mlp_dim = 64",
                "train.batch_size = 8", "train.sequence_length = 64", "OptimizerConfig.warmup_steps = 1"]


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
    assert (toy_run / stage / demo_lib.DONE).is_file(), stage
  manifest = json.loads((toy_run / "pipeline" / "streams" / "manifest.json").read_text())
  assert manifest["documents"]["in"] == TOY.num_docs
  for label in ("raw-s0", "tags-s0"):
    assert (toy_run / "pretrain" / label / "checkpoints" / "3").is_dir()
    assert (toy_run / "evaluate" / label / "results.json").is_file()
  assert (toy_run / "classifier" / "confusion.png").is_file()
  pipeline = json.loads((toy_run / "pipeline" / demo_lib.DONE).read_text())["summary"]
  assert set(pipeline["near_duplicates"]) == {"rephrase", "refuseweb", "moral_education"}
  assert all(0 <= share < 0.05 for share in pipeline["near_duplicates"].values())  # issue 12: under 5 % a stream


def test_ladder_table_has_every_rung_and_decoding(toy_run):
  table = json.loads((toy_run / "report" / "ladder.json").read_text())
  assert table["primary"] == "compliance" and table["judges"] == ["compliance", "leak"]
  assert table["stages"] == ["base"]
  rows = table["tables"]["compliance"]["base"]
  assert [r["system"] for r in rows] == ["raw/beam", "raw/SafeBeam", "raw/placebo",
                                         "tags/beam", "tags/SafeBeam", "tags/placebo", "tags/threshold"]
  for row in rows:
    assert len(row["values"]) == 1 and 0 <= row["mean"] <= 1  # one seed: per-seed value, no interval
  assert set(table["tables"]) >= {"compliance", "leak", "over_refusal", "tag_auroc"}  # toy replies hold no word
  assert table["judge_standing"] == {"primary": "compliance", "validated": ["compliance", "leak"], "unvalidated": {}}
  assert {c["status"] for c in table["claims"]} <= {"holds", "does not hold", "inconclusive", "not run"}
  assert (toy_run / "report" / "ladder.png").stat().st_size > 5_000
  assert "| claim | verdict |" in (toy_run / "report" / "claims.md").read_text()


def test_garbling_is_the_share_of_unknown_words_and_the_perplexity_under_raw(toy_run, tmp_path):
  import shutil

  evaluate = tmp_path / "evaluate"
  shutil.copytree(toy_run / "evaluate" / "raw-s0" / "generations", evaluate / "raw-s0" / "generations")
  for path, response in (("raw-s0_beam", "the harbour festival"), ("raw-s0_SafeBeam", "the qqzx harbour")):
    file = evaluate / "raw-s0" / "generations" / path / "demo_harmful.jsonl"
    rows = [{**json.loads(line), "response": response} for line in file.read_text().splitlines()]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
  models = json.loads((toy_run / "pretrain" / demo_lib.DONE).read_text())["summary"]["models"]
  records = demo_lib.garbling_records(evaluate, {"raw-s0": models["raw-s0"]}, frozenset({"the", "harbour", "festival"}))
  by = {(r["metric"], r["system"]): r["value"] for r in records}
  assert by[("oov_share", "raw/beam")] == 0.0 and by[("oov_share", "raw/SafeBeam")] == pytest.approx(1 / 3)
  assert by[("reply_perplexity", "raw/beam")] > 1 and by[("reply_perplexity", "raw/SafeBeam")] > 1
  assert ("oov_share", "raw/placebo") not in by  # its replies are empty: nothing to rate
  assert by[("empty_share", "raw/placebo")] == 1.0 and by[("empty_share", "raw/beam")] == 0.0
  assert by[("harmful_refused", "raw/placebo")] == 0.0  # the judge's verdicts as written: an empty reply is no refusal


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
  evaluated = json.loads((toy_run / "evaluate" / demo_lib.DONE).read_text())["summary"]
  validation = evaluated["judge_validation"]
  assert validation["compliance"]["kappa"] > 0.9 and validation["leak"]["kappa"] == 1.0
  assert 0 < validation["refusal (over-refusal's judge)"]["kappa"] < 1


def test_rerun_resumes_finished_stages(toy_run, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("a finished stage ran again")

  for stage in ("build_corpus", "build_classifier", "run_pipeline", "train_vocab", "pretrain_ladder", "evaluate_models"):
    monkeypatch.setattr(demo_lib, stage, fail)
  before = (toy_run / "report" / "ladder.json").read_text()
  assert demo_lib.demo(output_dir=str(toy_run), config=TOY) == 0
  assert (toy_run / "report" / "ladder.json").read_text() == before


def test_changed_settings_redo_the_stages_they_touch(toy_run):
  import dataclasses

  stage = demo_lib._Stage(toy_run, "evaluate", "a-different-key")
  assert stage.done() is None  # a new key is not mistaken for the finished one
  assert demo_lib._fingerprint(TOY) != demo_lib._fingerprint(dataclasses.replace(TOY, tag_p=0.1))


def test_cloze_items_are_well_formed():
  docs = [{"text": "One two three four. Five six seven eight. Nine ten eleven twelve. Alpha beta gamma delta."},
          {"text": "Red green blue white. Cats dogs birds fish. Sun moon stars sky. Rain snow hail wind."}]
  from safejax.demo import world

  items = world.cloze_items(docs, seed=0, num_choices=2)
  assert len(items) == 2
  for item, doc in zip(items, docs):
    assert item["choices"][item["gold"]] in doc["text"]
    assert all(c not in doc["text"] for i, c in enumerate(item["choices"]) if i != item["gold"])


def test_degenerate_examples_garble_every_word_and_are_labelled_safe():
  docs = [{"text": f"document {i} describes the harbour festival and its lantern parade", "score": i % 6}
          for i in range(20)]
  garbled = demo_lib.degenerate_examples(docs, seed=0, fraction=0.5)
  assert len(garbled) == 10 and all(d["score"] == 0 for d in garbled)
  for example in garbled:
    words = example["text"].split()
    assert len(words) == 10
    assert "festival" not in words and "lantern" not in words  # shuffled (and stuttered) letters
    assert sorted(set(words[5])) == sorted(set("festival"))  # the same letters, nothing else
  assert garbled == demo_lib.degenerate_examples(docs, seed=0, fraction=0.5)
  assert garbled != demo_lib.degenerate_examples(docs, seed=1, fraction=0.5)


def test_toy_classifier_reports_garbled_text_flagged(toy_run):
  """The summary's share is the saved scorer's verdict on the garbled held-out split."""
  import numpy as np

  from safejax.safety import load_scorer

  summary = json.loads((toy_run / "classifier" / "DONE.json").read_text())["summary"]
  test = demo_lib._read_jsonl(toy_run / "corpus" / "classifier_test.jsonl")
  garbled = demo_lib.degenerate_examples(test, seed=TOY.data_seed + 1, fraction=1.0)
  scores = load_scorer(summary["scorer"]).score([d["text"] for d in garbled])
  assert summary["heldout_garbled_flagged_at_1"] == pytest.approx(float(np.mean(np.asarray(scores) >= 1)))


def test_posttraining_stages_add_tuned_columns(tmp_path):
  import dataclasses

  config = dataclasses.replace(TOY, rungs=("tags",), posttrain=True, instruct_steps=2, benign_steps=2)
  assert demo_lib.demo(output_dir=str(tmp_path), config=config) == 0
  for suffix in ("+it", "+it+bft"):
    assert (tmp_path / "posttrain" / f"tags-s0{suffix}" / "checkpoints" / "2").is_dir()
    results = json.loads((tmp_path / "evaluate" / f"tags-s0{suffix}" / "results.json").read_text())
    assert results["systems"][f"tags-s0{suffix}/SafeBeam"]["prompt_style"] == "chat"
  instruct = demo_lib._read_jsonl(tmp_path / "sft_data" / "instruct.jsonl")
  tagged = [r for r in instruct if r.get("harm_tagged")]
  assert len(tagged) == round(0.1 * len(instruct)) > 0  # the paper's 10 %, in refused requests only
  assert all(any("<potentially_unsafe_content>" in m["content"] for m in r["messages"] if m["role"] == "user")
             and not any("<potentially_unsafe_content>" in m["content"] for m in r["messages"] if m["role"] != "user")
             for r in tagged)
  table = json.loads((tmp_path / "report" / "ladder.json").read_text())
  assert table["stages"] == ["base", "instruct", "benign_ft"]
  for stage in table["stages"]:
    systems = ["tags/beam", "tags/SafeBeam", "tags/placebo"] + (["tags/threshold"] if stage == "benign_ft" else [])
    assert [r["system"] for r in table["tables"]["compliance"][stage]] == systems
  assert "compliance at benign_ft" in (tmp_path / "report" / "ladder.md").read_text()


def test_the_pipelines_sentence_rater_pickles_as_a_path(toy_run):
  import pickle

  from safejax.safety import load_scorer

  scorer_dir = json.loads((toy_run / "classifier" / demo_lib.DONE).read_text())["summary"]["scorer"]
  rater = demo_lib.ScorerFromPath(scorer_dir)
  assert len(pickle.dumps(rater)) < 1_000  # Beam ships it with every bundle
  texts = ["A calm walk by the river.", "Another sentence about the festival."]
  assert list(pickle.loads(pickle.dumps(rater)).score(texts)) == list(load_scorer(scorer_dir).score(texts))
