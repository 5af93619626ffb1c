"""`safejax classify train|calibrate|eval|score`: the safety classifiers from the command line.

  safejax classify train     --gin_file=classify/ngram.gin --gin.CLASSIFIER_DIR="'/tmp/clf'"
  safejax classify calibrate --gin_file=classify/ngram.gin --gin.CLASSIFIER_DIR="'/tmp/clf'"
  safejax classify eval      --gin_file=classify/ngram.gin --gin.CLASSIFIER_DIR="'/tmp/clf'"
  safejax classify score --gin.score_files.model_dir="'/tmp/clf'" docs.jsonl notes.txt

Training, calibration and evaluation data come either from the real data sets (`data_dir`, built
by `safejax.safety.labelled`: train on the train split, choose the decision thresholds on the
validation split and its whole clean documents, evaluate on the test split and the held-out sets)
or from jsonl files of {"text": ..., "score": 0..5} records. `train` calibrates as it finishes
(`calibrate` redoes it for a saved scorer, e.g. with other targets); the rule is saved with the
scorer, so `load_scorer` and every later command decide the same way.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gin
import numpy as np

from safejax.safety import calibration, encoder, labelled, metrics, ngram  # registers their gin configurables
from safejax.safety.scorer import MaxEnsemble, Scorer, load_scorer, scores_and_probs
from safejax.safety.training import TrainConfig

log = logging.getLogger(__name__)


def _open_text(path: Path):
  return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_labelled_jsonl(path: str | Path) -> list[labelled.Example]:
  """Examples from a jsonl(.gz) file of {"text": str, "score": int 0..5}; raises on a bad line."""
  examples = []
  with _open_text(Path(path)) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        text, score = record["text"], int(record["score"])
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}:{n}: expected {{\"text\": str, \"score\": int}}: {e}") from None
      if not 0 <= score <= 5:
        raise ValueError(f"{path}:{n}: score {score} is not in 0..5")
      examples.append(labelled.Example(text, score, Path(path).name, str(score), f"{path}:{n}"))
  return examples


def _validation_sets(data_dir: str | None, validation_file: str | None,
                     labelled_config: labelled.LabelledConfig) -> tuple[list[labelled.Example], list[labelled.Example]]:
  """(labelled validation examples, whole clean validation documents) for calibration."""
  if (data_dir is None) == (validation_file is None):
    raise ValueError("give exactly one of data_dir (the real data sets) and validation_file (jsonl)")
  if validation_file is not None:
    return read_labelled_jsonl(validation_file), []
  data = labelled.build_labelled(data_dir, labelled_config)
  return data.splits["validation"], labelled.clean_documents(data_dir, "validation", labelled_config.fractions)


def _calibrate_and_save(scorer: Scorer, model_dir: str, examples: list[labelled.Example],
                        clean_documents: list[labelled.Example], config: calibration.CalibrationConfig) -> dict:
  """Calibrates `scorer`'s decision rules, saves it to model_dir and writes model_dir/calibration/
  report.json, table.md and curves.png."""
  report, curves = calibration.calibrate(scorer, examples, clean_documents, config)
  scorer.save(model_dir)
  out = Path(model_dir) / "calibration"
  metrics.write_json(report, out / "report.json")
  calibration.plot_calibration(report, curves, out / "curves.png")
  table = calibration.report_table(report)
  (out / "table.md").write_text(table + "\n")
  print(table)
  return report


@gin.configurable
def train_classifier(output_dir: str = gin.REQUIRED, kind: str = "ngram", data_dir: str | None = None,
                     train_file: str | None = None, validation_file: str | None = None,
                     labelled_config: labelled.LabelledConfig = labelled.LabelledConfig(),
                     ngram_config=None, ngram_train: TrainConfig | None = None,
                     encoder_config=None, encoder_train: TrainConfig | None = None,
                     encoder_max_per_source_score: int = 1500,
                     encoder_uncapped_sources: Sequence[str] = (),
                     embedding_cache_dir: str | None = None,
                     calibrate: bool = True,
                     calibration_config: calibration.CalibrationConfig = calibration.CalibrationConfig()) -> Scorer:
  """Trains a scorer, calibrates its decision rule and saves it to `output_dir` (any kind loads
  with `load_scorer`).

  Args:
    output_dir: where the scorer is saved.
    kind: "ngram", "encoder" or "ensemble" (both, combined with MaxEnsemble).
    data_dir: ../shared/data: train on the train split of `safejax.safety.labelled`, calibrate on
      its validation split and the clean validation documents.
    train_file: or a jsonl(.gz) of {"text", "score"} records (exactly one of the two).
    validation_file: with train_file, a jsonl(.gz) to calibrate on (without it: argmax).
    labelled_config: sources, caps and split fractions when training from data_dir.
    ngram_config, ngram_train: n-gram model shapes and optimisation (gin: ngram/TrainConfig).
    encoder_config, encoder_train: encoder head shapes and optimisation (gin: encoder/TrainConfig).
    encoder_max_per_source_score: the encoder trains on at most this many examples per (source,
      score) of the train split: each costs a MiniLM pass (per epoch when fine-tuning) on CPU.
    encoder_uncapped_sources: sources the encoder trains on whole.
    embedding_cache_dir: keeps frozen MiniLM embeddings between runs.
    calibrate: choose the decision thresholds on validation data (else argmax).
    calibration_config: the targets they are chosen for (`safejax.safety.calibration`).
  """
  if kind not in ("ngram", "encoder", "ensemble"):
    raise ValueError(f"kind must be ngram, encoder or ensemble, not {kind!r}")
  if (data_dir is None) == (train_file is None):
    raise ValueError("give exactly one of data_dir (the real data sets) and train_file (jsonl)")
  if data_dir is not None:
    data = labelled.build_labelled(data_dir, labelled_config)
    log.info("labelled data:\n%s", data.table())
    examples = data.splits["train"]
  else:
    examples = read_labelled_jsonl(train_file)
  scorers = []
  start = time.time()
  if kind in ("ngram", "ensemble"):
    texts, scores = labelled.texts_and_scores(examples)
    scorers.append(ngram.train_ngram_scorer(texts, scores, ngram_config or ngram.NgramConfig(),
                                            ngram_train or TrainConfig()))
  if kind in ("encoder", "ensemble"):
    subset = labelled.cap_per_source_score(examples, encoder_max_per_source_score,
                                           uncapped=encoder_uncapped_sources)
    texts, scores = labelled.texts_and_scores(subset)
    scorers.append(encoder.train_encoder_scorer(
        texts, scores, encoder_config or encoder.EncoderConfig(), encoder_train or TrainConfig(),
        embedding_cache_dir=Path(embedding_cache_dir).expanduser() if embedding_cache_dir else None))
  result = scorers[0] if len(scorers) == 1 else MaxEnsemble(scorers)
  log.info("trained %s on %d examples in %.0f s", result.name, len(examples), time.time() - start)
  if calibrate and (data_dir is not None or validation_file is not None):
    _calibrate_and_save(result, output_dir, *_validation_sets(data_dir, validation_file, labelled_config),
                        calibration_config)
  else:
    result.save(output_dir)
  log.info("saved %s to %s", result.name, output_dir)
  return result


@gin.configurable
def calibrate_classifier(model_dir: str = gin.REQUIRED, data_dir: str | None = None,
                         validation_file: str | None = None,
                         labelled_config: labelled.LabelledConfig = labelled.LabelledConfig(),
                         calibration_config: calibration.CalibrationConfig = calibration.CalibrationConfig(),
                         embedding_cache_dir: str | None = None) -> dict:
  """Chooses the decision thresholds of a saved scorer on validation data and saves them with it.

  With `data_dir`: the validation split of `safejax.safety.labelled` and the whole clean
  documents of that split; or a `validation_file` (jsonl of {"text", "score"}). Writes
  model_dir/calibration/{report.json, table.md, curves.png}; returns the report.
  """
  scorer = load_scorer(model_dir)
  if embedding_cache_dir:
    _attach_embedding_cache(scorer, str(Path(embedding_cache_dir).expanduser()))
  return _calibrate_and_save(scorer, model_dir, *_validation_sets(data_dir, validation_file, labelled_config),
                             calibration_config)


def _evaluation_sets(data_dir: str | None, eval_file: str | None,
                     labelled_config: labelled.LabelledConfig) -> dict[str, list[labelled.Example]]:
  if (data_dir is None) == (eval_file is None):
    raise ValueError("give exactly one of data_dir (the real data sets) and eval_file (jsonl)")
  if eval_file is not None:
    return {"eval_file": read_labelled_jsonl(eval_file)}
  data = labelled.build_labelled(data_dir, labelled_config)
  return {"test": data.splits["test"], "heldout_moderation": labelled.heldout_moderation(data),
          "heldout_wikipedia": labelled.heldout_wikipedia(data_dir)}


@gin.configurable
def eval_classifier(model_dir: str = gin.REQUIRED, output_dir: str | None = None, data_dir: str | None = None,
                    eval_file: str | None = None,
                    labelled_config: labelled.LabelledConfig = labelled.LabelledConfig(),
                    with_members: bool = True, with_profanity_check: bool = True,
                    embedding_cache_dir: str | None = None) -> dict:
  """Scores held-out sets and writes report.json, table.md and confusion-matrix PNGs.

  With `data_dir`: the test split (never used for training or tuning), the held-out OpenAI
  moderation part and the held-out Wikipedia shard (false-positive rates, whole articles).
  Ensemble members and alt-profanity-check are reported beside the model when asked. Results go
  to `output_dir` (default: model_dir/eval).
  """
  sets = _evaluation_sets(data_dir, eval_file, labelled_config)
  model = load_scorer(model_dir)
  if embedding_cache_dir:
    _attach_embedding_cache(model, str(Path(embedding_cache_dir).expanduser()))
  scorers: dict[str, Scorer] = {model.name: model}
  if with_members and isinstance(model, MaxEnsemble):
    scorers.update({s.name: s for s in model.scorers})
  if with_profanity_check:
    baseline = metrics.ProfanityCheckBaseline()
    scorers[baseline.name] = baseline
  out = Path(output_dir) if output_dir else Path(model_dir) / "eval"
  results: dict = {"model_dir": str(model_dir), "sets": {}}
  for set_name, examples in sets.items():
    truth = np.array([e.score for e in examples], np.int32)
    results["sets"][set_name] = {}
    for name, scorer in scorers.items():
      start = time.time()
      predicted = scorer.score([e.text for e in examples])
      r = metrics.report(truth, predicted)
      r["seconds"] = round(time.time() - start, 2)
      results["sets"][set_name][name] = r
      slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
      metrics.plot_confusion(np.array(r["confusion_matrix"]), out / f"confusion_{set_name}_{slug}.png",
                             f"{name} on {set_name} (n={len(examples)})")
  tables = []
  for set_name, by_scorer in results["sets"].items():
    tables.append(f"## {set_name}\n\n" + metrics.comparison_table(by_scorer))
  if "heldout_wikipedia" in results["sets"]:
    lines = ["## false-positive rate on held-out Wikipedia articles", "",
             "| scorer | FPR >=1 | FPR >=3 |", "|---|---|---|"]
    for name, r in results["sets"]["heldout_wikipedia"].items():
      lines.append(f"| {name} | {r['at_1']['false_positive_rate']:.3f} | {r['at_3']['false_positive_rate']:.3f} |")
    tables.append("\n".join(lines))
  table = "\n\n".join(tables)
  metrics.write_json(results, out / "report.json")
  (out / "table.md").write_text(table + "\n")
  print(table)
  return results


def _attach_embedding_cache(scorer: Scorer, embedding_cache_dir: str) -> None:
  """Gives every encoder scorer inside `scorer` an on-disk embedding cache."""
  for member in scorer.scorers if isinstance(scorer, MaxEnsemble) else [scorer]:
    if hasattr(member, "use_embedding_cache"):
      member.use_embedding_cache(embedding_cache_dir)


def _read_documents(path: Path, text_field: str, counts: dict) -> list[tuple[str, str | None, str | None]]:
  """[(location, text or None, error or None)] of a jsonl(.gz) file (one per line) or a text file."""
  documents = []
  if path.name.endswith((".jsonl", ".jsonl.gz")):
    with _open_text(path) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          text = json.loads(line)[text_field]
          if not isinstance(text, str):
            raise TypeError(f"{text_field!r} is not a string")
          documents.append((f"{path}:{n}", text, None))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          documents.append((f"{path}:{n}", None, f"{type(e).__name__}: {e}"))
  else:
    try:
      documents.append((str(path), path.read_text(encoding="utf-8"), None))
    except UnicodeDecodeError as e:
      documents.append((str(path), None, f"not UTF-8: {e}"))
  counts["read"] += len(documents)
  return documents


@gin.configurable
def score_files(inputs: Sequence[str] = (), model_dir: str = gin.REQUIRED, output_file: str | None = None,
                text_field: str = "text", batch_size: int = 512) -> dict:
  """Scores documents and writes one jsonl line per document: {"location", "score", "probs"}.

  Inputs are jsonl(.gz) files (a document per line, its text in `text_field`) or text files (one
  document each). A line that cannot be read gets {"location", "error"} instead: nothing is
  dropped silently. Writes to `output_file`, or stdout. Returns the counts.
  """
  from tqdm.auto import tqdm

  if not inputs:
    raise ValueError("score needs input files: safejax classify score [flags] FILE...")
  scorer = load_scorer(model_dir)
  counts = {"read": 0, "scored": 0, "errors": 0}
  documents = [d for path in inputs for d in _read_documents(Path(path), text_field, counts)]
  out = open(output_file, "w", encoding="utf-8") if output_file else sys.stdout
  try:
    for s in tqdm(range(0, len(documents), batch_size), desc="score", unit="batch", file=sys.stderr):
      batch = documents[s:s + batch_size]
      ok = [d for d in batch if d[2] is None]
      scores, probs = (scores_and_probs(scorer, [d[1] for d in ok]) if ok
                       else (np.zeros(0, np.int32), np.zeros((0, 6), np.float32)))
      rows = iter(zip(scores, probs))
      for location, _, error in batch:
        if error is not None:
          counts["errors"] += 1
          record = {"location": location, "error": error}
        else:
          score, p = next(rows)
          counts["scored"] += 1
          record = {"location": location, "score": int(score), "probs": [round(float(x), 5) for x in p]}
        out.write(json.dumps(record) + "\n")
  finally:
    if output_file:
      out.close()
  log.info("score: %s", counts)
  return counts
