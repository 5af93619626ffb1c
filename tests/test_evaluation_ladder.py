"""The ladder across seeds: nesting, rows with paired differences, the chart, garbling and tau."""

import math

import pytest

from safejax.evaluation import claims, ladder, metrics


def _records():
  values = {"raw/beam": (0.40, 0.35, 0.45), "raw/SafeBeam": (0.38, 0.30, 0.46), "tags/SafeBeam": (0.10, 0.05, 0.15)}
  return [{"metric": "compliance", "stage": "benign_ft", "system": system, "seed": seed, "value": v}
          for system, vs in values.items() for seed, v in enumerate(vs)]


def test_nest_and_seed_rows_with_paired_differences():
  nested = ladder.nest(_records())
  assert nested["compliance"]["benign_ft"]["tags/SafeBeam"] == {"0": 0.10, "1": 0.05, "2": 0.15}
  rows = ladder.seed_rows(nested, "compliance", "benign_ft", ["raw/beam", "tags/SafeBeam", "missing/beam"])
  assert [r["system"] for r in rows] == ["raw/beam", "tags/SafeBeam"]
  raw, tags = rows
  assert raw["vs_reference"] is None and raw["mean"] == pytest.approx(0.40) and raw["n"] == 3
  # Differences -0.30, -0.30, -0.30: constant, so the paired test is certain and the interval a point.
  assert tags["vs_reference"]["mean"] == pytest.approx(-0.30) and tags["vs_reference"]["p_value"] == 0.0
  # The t interval 0.10 +- 4.303 * 0.05 / sqrt(3) reaches below 0; a share's interval is clipped to [0, 1].
  assert 0.10 - 4.302653 * 0.05 / math.sqrt(3) < 0 and tags["low"] == 0.0
  assert tags["high"] == pytest.approx(0.10 + 4.302653 * 0.05 / math.sqrt(3), abs=1e-6)
  table = ladder.rows_markdown(rows, "compliance", "benign_ft")
  assert "| tags/SafeBeam | 10.0 / 5.0 / 15.0 | 10.0 [" in table and "-30.0" in table
  # The nested layout is what the claims take.
  assert claims.compare(nested, "compliance", "benign_ft", "tags/SafeBeam", "raw/beam").difference.mean == \
      pytest.approx(-0.30)


def test_nest_rejects_duplicates_and_non_finite_values():
  with pytest.raises(ValueError, match="two values"):
    ladder.nest(_records() + _records()[:1])
  with pytest.raises(ValueError, match="nan"):
    ladder.nest([{"metric": "m", "stage": "s", "system": "a", "seed": 0, "value": float("nan")}])


def test_plot_ladder_writes_a_png(tmp_path):
  path = ladder.plot_ladder(ladder.nest(_records()), "compliance", ["base", "benign_ft"], ["raw", "tags"],
                            ["beam", "SafeBeam"], tmp_path / "ladder.png")
  assert (tmp_path / "ladder.png").read_bytes()[:4] == b"\x89PNG" and path.endswith("ladder.png")
  with pytest.raises(ValueError, match="no stage"):
    ladder.plot_ladder(ladder.nest(_records()), "compliance", ["base"], ["raw"], ["beam"], tmp_path / "x.png")


def test_out_of_vocabulary_share():
  vocabulary = {"first", "add", "the", "glimmerose"}
  assert metrics.out_of_vocabulary_share(["First, add the glimmerose."], vocabulary) == 0.0
  assert metrics.out_of_vocabulary_share(["Fsirt dad the", "eth"], vocabulary) == pytest.approx(3 / 4)
  assert math.isnan(metrics.out_of_vocabulary_share(["", "123"], vocabulary))


def test_choose_threshold_on_validation_only():
  grid = [0.01, 0.05, 0.2, 1.0]
  chosen = ladder.choose_threshold(grid, [0.10, 0.10, 0.20, 0.40])
  assert chosen["tau"] == 0.05  # a tie goes to the larger threshold
  garbled = ladder.choose_threshold(grid, [0.05, 0.10, 0.20, 0.40], [0.5, 0.1, 0.05, 0.0], max_garble=0.2)
  assert garbled["tau"] == 0.05 and len(garbled["candidates"]) == 4
  with pytest.raises(ValueError, match="one validation rate per threshold"):
    ladder.choose_threshold(grid, [0.1])
  with pytest.raises(ValueError, match="no threshold"):
    ladder.choose_threshold(grid, [0.1] * 4, [0.9] * 4, max_garble=0.2)


def test_reply_perplexity_by_hand():
  seen = []

  def loglikelihood(requests):
    seen.extend(requests)
    return [(-2.0 * len(continuation.split()), False) for _, continuation in requests]

  result = metrics.reply_perplexity(loglikelihood, ["q1", "q2", "q3"], ["a b", "", "c d e"])
  assert seen == [("q1", "a b"), ("q3", "c d e")]
  assert result == {"n": 2, "empty": 1, "words": 5, "word_perplexity": pytest.approx(math.exp(2.0))}
  assert math.isnan(metrics.reply_perplexity(loglikelihood, ["q"], [" "])["word_perplexity"])
  with pytest.raises(ValueError, match="1 prompts but 2 replies"):
    metrics.reply_perplexity(loglikelihood, ["q"], ["a", "b"])


def test_records_from_evaluate_results():
  def system(decoding, compliance, leak):
    judges = lambda k: {"compliance": {"overall": {"k": k[0], "n": 10}}, "leak": {"overall": {"k": k[1], "n": 10}}}
    return {"decoding": decoding,
            "safety": {"benchmarks": {"a": {"judges": judges((compliance, leak))},
                                      "b": {"judges": judges((compliance + 2, leak))}}},
            "over_refusal": {"pooled": {"rate": 0.1}}, "capability": {"average": {"acc": 0.8}},
            "perplexity": {"word_perplexity": 3.5}, "tag_detector": {"auroc": 0.7}}

  results = {"raw-s1+it+bft": {"systems": {"raw-s1+it+bft/beam": system("beam", 4, 2),
                                           "raw-s1+it+bft/SafeBeam": system("SafeBeam", 1, 0)}}}
  models = {"raw-s1+it+bft": {"rung": "raw", "seed": 1, "stage": "benign_ft"}}
  nested = ladder.nest(ladder.records_from_results(results, models))
  assert nested["compliance"]["benign_ft"]["raw/beam"] == {"1": (4 + 6) / 20}
  assert nested["leak"]["benign_ft"]["raw/SafeBeam"] == {"1": 0.0}
  assert nested["over_refusal"]["benign_ft"]["raw/beam"] == {"1": 0.1}
  assert set(nested) == {"compliance", "leak", "over_refusal", "capability", "word_perplexity", "tag_auroc"}


def test_a_judge_below_the_kappa_floor_or_never_validated_is_never_the_asr():
  standing = ladder.judge_standing(["keyword:a", "keyword:b", "llm"], {"keyword:a": 0.32, "keyword:b": 0.65})
  assert standing["primary"] == "keyword:b" and standing["validated"] == ["keyword:b"]
  assert standing["unvalidated"] == {"keyword:a": "kappa 0.32 < 0.4", "llm": "not validated against labelled replies"}
  assert ladder.judge_standing(["x"], {"x": float("nan")})["primary"] is None
  table = {"jbb_judge_comparison": {"judges": {"keyword:a": {"kappa": 0.3}, "reference:gpt4": {"kappa": 0.9}}}}
  assert ladder.attack_success_kappas(table) == {"keyword:a": 0.3}


def test_perplexities_are_shown_as_they_are_and_rates_as_percent():
  nested = ladder.nest([{"metric": m, "stage": "base", "system": s, "seed": seed, "value": v}
                        for m, scale in (("reply_perplexity", 40.0), ("compliance", 0.4))
                        for s, shift in (("raw/beam", 0.0), ("tags/beam", 0.1))
                        for seed, v in ((0, scale + shift), (1, scale + 2 * shift))])
  ppl = ladder.rows_markdown(ladder.seed_rows(nested, "reply_perplexity", "base"), "reply_perplexity", "base")
  assert "| raw/beam | 40.0 / 40.0 |" in ppl and "(per seed" in ppl
  rate = ladder.rows_markdown(ladder.seed_rows(nested, "compliance", "base"), "compliance", "base")
  assert "| raw/beam | 40.0 / 40.0 |" in rate and "| tags/beam | 50.0 / 60.0 |" in rate and "(%: per seed" in rate


def test_stages_markdown_puts_a_column_per_stage_with_seed_values():
  nested = ladder.nest([{"metric": "compliance", "stage": st, "system": "raw/beam", "seed": seed, "value": v}
                        for st, values in (("base", (0.2, 0.4)), ("benign_ft", (0.5, 0.5))) for seed, v in enumerate(values)])
  text = ladder.stages_markdown(nested, "compliance", ["base", "instruct", "benign_ft"], ["raw/beam", "tags/beam"])
  lines = text.splitlines()
  assert lines[0] == "| system | base | benign_ft |"  # a stage without values has no column
  assert lines[2].startswith("| raw/beam | 30.0 [") and "(20.0 / 40.0)" in lines[2] and "50.0 [50.0, 50.0] (50.0 / 50.0)" in lines[2]
  assert len(lines) == 3  # tags/beam has no values: no row


def test_choose_dose_takes_the_smallest_dose_in_range_else_the_closest_and_says_so():
  curve = [{"learning_rate": 1e-3, "steps": s, "complied": c, "refused": 1 - c} for s, c in ((5, 0.0), (10, 0.8), (15, 0.4))]
  chosen = ladder.choose_dose(curve)
  assert (chosen["steps"], chosen["in_range"]) == (15, True)  # 10 steps overshoot: 0.8 is out of [0.3, 0.7]
  missed = ladder.choose_dose(curve[:2], target=(0.3, 0.7))
  assert (missed["steps"], missed["in_range"]) == (10, False) and "no dose reached" in missed["rule"]
  with pytest.raises(ValueError, match="no dose was tried"):
    ladder.choose_dose([])


def test_dose_response_plot_marks_each_seeds_chosen_dose(tmp_path):
  def curve(slope):
    return [{"learning_rate": 2e-3, "steps": s, "complied": min(1.0, slope * s / 60), "refused": 0.5} for s in (15, 30, 45)]

  curves = {"raw-s0": curve(2.0), "raw-s1": curve(1.0)}
  chosen = {"raw-s0": curves["raw-s0"][0], "raw-s1": curves["raw-s1"][1]}
  path = ladder.plot_dose_response(curves, chosen, tmp_path / "dose.png")
  assert path == str(tmp_path / "dose.png") and (tmp_path / "dose.png").stat().st_size > 5_000
