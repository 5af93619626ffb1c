"""`safejax classify train|eval|score` end to end on a tiny gin config and jsonl files."""

import json
import shutil

import gin
import numpy as np
import pytest

from safejax import cli
from safejax.safety.scorer import ARGMAX, DecisionRule, load_scorer

CALM = ["the river runs past the old mill", "students measure the angle of the ramp",
        "the bakery opens early on sunday", "a gentle rain fell over the valley"]
RUDE = ["you are a worthless idiot", "shut up you pathetic loser", "everyone hates you, moron"]


def write_labelled(path, n, seed):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(n):
      rude = i % 2 == 0
      text = f"{rng.choice(CALM)} {'but ' + rng.choice(RUDE) if rude else 'and ' + rng.choice(CALM)}"
      f.write(json.dumps({"text": text, "score": 4 if rude else 0}) + "\n")
  return path


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("classify")
  train = write_labelled(tmp / "train.jsonl", 240, 0)
  out = tmp / "clf"
  assert cli.main(["classify", "train", "--gin_file=classify/tiny.gin",
                   f"--gin.CLASSIFIER_DIR='{out}'", f"--gin.train_classifier.train_file='{train}'"]) == 0
  assert (out / "scorer.json").is_file() and (out / "params.safetensors").is_file()
  return out


def test_eval_writes_report_table_and_plots(trained_dir, tmp_path, capsys):
  test_file = write_labelled(tmp_path / "test.jsonl", 40, 1)
  out = tmp_path / "eval"
  cli.main(["classify", "eval", "--gin_file=classify/tiny.gin", f"--gin.CLASSIFIER_DIR='{trained_dir}'",
            f"--gin.eval_classifier.eval_file='{test_file}'", f"--gin.eval_classifier.output_dir='{out}'",
            "--gin.eval_classifier.with_profanity_check=False"])
  report = json.loads((out / "report.json").read_text())
  ngram = report["sets"]["eval_file"]["ngram"]
  assert ngram["n"] == 40 and ngram["at_3"]["recall"] >= 0.9 and ngram["at_3"]["precision"] >= 0.9
  assert (out / "confusion_eval_file_ngram.png").read_bytes()[:4] == b"\x89PNG"
  assert "| ngram |" in capsys.readouterr().out and "paper: ensemble (max)" in (out / "table.md").read_text()


def test_score_files_marks_unreadable_lines(trained_dir, tmp_path):
  docs = tmp_path / "docs.jsonl"
  docs.write_text(json.dumps({"text": "the bakery opens early on sunday"}) + "\n"
                  + "{not json\n" + json.dumps({"body": "no text field"}) + "\n"
                  + json.dumps({"text": "shut up you pathetic loser"}) + "\n")
  note = tmp_path / "note.txt"
  note.write_text("a gentle rain fell over the valley")
  out = tmp_path / "scores.jsonl"
  cli.main(["classify", "score", "--gin_file=classify/tiny.gin", f"--gin.CLASSIFIER_DIR='{trained_dir}'",
            f"--gin.score_files.output_file='{out}'", str(docs), str(note)])
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == 5  # every input document has a line
  assert [r.get("score") for r in rows] == [0, None, None, 4, 0]
  assert "JSONDecodeError" in rows[1]["error"] and "KeyError" in rows[2]["error"]
  assert rows[0]["location"].endswith("docs.jsonl:1") and len(rows[0]["probs"]) == 6


def test_calibrate_saves_a_rule_that_later_commands_use(trained_dir, tmp_path, capsys):
  model = tmp_path / "clf"
  shutil.copytree(trained_dir, model)
  validation = write_labelled(tmp_path / "validation.jsonl", 60, 2)
  flags = ["--gin_file=classify/tiny.gin", f"--gin.CLASSIFIER_DIR='{model}'"]
  cli.main(["classify", "calibrate", *flags, f"--gin.calibrate_classifier.validation_file='{validation}'"])
  report = json.loads((model / "calibration" / "report.json").read_text())
  assert [level["level"] for level in report["levels"]] == [3, 1]
  assert report["levels"][0]["outcome"] == "targets met"
  assert (model / "calibration" / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert "decision thresholds" in capsys.readouterr().out
  rule = json.loads((model / "scorer.json").read_text())["decision_rule"]
  assert rule == report["rules"]["0:ngram"] and len(rule["thresholds"]) == 5
  loaded = load_scorer(model)
  assert loaded.decision_rule == DecisionRule.from_json(rule)
  docs = tmp_path / "docs.jsonl"
  texts = [json.loads(line)["text"] for line in validation.read_text().splitlines()]
  docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  out = tmp_path / "scores.jsonl"
  cli.main(["classify", "score", *flags, f"--gin.score_files.output_file='{out}'", str(docs)])
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["score"] for r in rows] == list(loaded.score(texts))


def test_train_with_a_validation_file_calibrates(tmp_path):
  train, validation = write_labelled(tmp_path / "train.jsonl", 120, 3), write_labelled(tmp_path / "val.jsonl", 40, 4)
  out = tmp_path / "clf"
  cli.main(["classify", "train", "--gin_file=classify/tiny.gin", f"--gin.CLASSIFIER_DIR='{out}'",
            f"--gin.train_classifier.train_file='{train}'", f"--gin.train_classifier.validation_file='{validation}'"])
  assert load_scorer(out).decision_rule != ARGMAX and (out / "calibration" / "table.md").is_file()


def test_train_needs_exactly_one_data_source(tmp_path):
  from safejax.safety import cli as classify_cli

  gin.clear_config()  # bindings of the commands run before
  with pytest.raises(ValueError, match="exactly one"):
    classify_cli.train_classifier(output_dir=str(tmp_path))
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "x", "score": 9}) + "\n")
  with pytest.raises(ValueError, match="not in 0..5"):
    classify_cli.read_labelled_jsonl(bad)


@pytest.mark.slow
def test_ngram_scorer_meets_its_goals_on_the_real_data(shared_data, tmp_path):
  """Trains and calibrates the reported n-gram configuration (a few minutes) and checks the goals
  it meets on held-out data: recall >= 0.80 and precision >= 0.60 of score >= 3 on the test split
  (measured 0.93 / 0.90), a false-positive rate (>= 3) under 2 % on held-out Wikipedia articles
  (measured 0), and, short of the 0.80 / 0.70 goal, recall >= 0.75 of score >= 1 on the held-out
  OpenAI moderation part (measured 0.82, precision 0.56)."""
  out = tmp_path / "ngram"
  flags = ["--gin_file=classify/ngram.gin", f"--gin.CLASSIFIER_DIR='{out}'", f"--gin.DATA_DIR='{shared_data}'"]
  assert cli.main(["classify", "train", *flags]) == 0
  calibration = json.loads((out / "calibration" / "report.json").read_text())
  assert calibration["levels"][0]["outcome"] == "targets met"  # >= 3, on validation
  assert load_scorer(out).decision_rule == DecisionRule.from_json(calibration["rules"]["0:ngram"])
  cli.main(["classify", "eval", *flags, "--gin.eval_classifier.with_profanity_check=False"])
  report = json.loads((out / "eval" / "report.json").read_text())["sets"]
  test = report["test"]["ngram"]["at_3"]
  assert test["recall"] >= 0.80 and test["precision"] >= 0.60
  assert report["heldout_wikipedia"]["ngram"]["at_3"]["false_positive_rate"] < 0.02
  assert report["heldout_moderation"]["ngram"]["at_1"]["recall"] >= 0.75
