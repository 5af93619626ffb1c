"""`safejax eval` wiring: checkpoints become systems, one per decoding, and a report comes out."""

import json

import gin

from safejax import decoding
from safejax.evaluation import prompt_sets, checkpoints


def test_checkpoint_systems_share_one_scorer(tiny_checkpoint):
  systems = checkpoints.checkpoint_systems(tiny_checkpoint, "tiny", stage="base")
  assert [s.label for s in systems] == ["tiny/beam", "tiny/SafeBeam"]
  assert systems[0].loglikelihood is systems[1].loglikelihood  # capability scored once
  assert systems[0].tag_probability is systems[1].tag_probability
  replies = systems[1].generate(["The river watched"])
  assert len(replies) == 1 and "<potentially_unsafe_content>" not in replies[0]


def test_eval_checkpoints_writes_the_report(tiny_checkpoint, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about the river {i}.",
                                           "category": "test"}) for i in range(3)))
  prompt_sets.register_benchmark("ckpt_test", lambda _: prompt_sets.load_table(prompts, name="ckpt_test",
                                                                             prompt_column="prompt", id_column="id"))
  quick = decoding.DecodingConfig(method="greedy", max_new_tokens=3)
  with gin.unlock_config():
    gin.bind_parameter("evaluate.out_dir", str(tmp_path / "report"))
    gin.bind_parameter("evaluate.data_dir", None)
    gin.bind_parameter("evaluate.safety_benchmarks", ("ckpt_test",))
    gin.bind_parameter("evaluate.over_refusal_benchmarks", ())
    gin.bind_parameter("evaluate.capability_tasks", ())
    gin.bind_parameter("evaluate.judges", ("keyword:builtin",))
    gin.bind_parameter("evaluate.refusal_judge", "keyword:builtin")
    gin.bind_parameter("evaluate.perplexity_file", None)
    gin.bind_parameter("evaluate.validate_judges", False)
  try:
    assert checkpoints.eval_checkpoints({"a": tiny_checkpoint}, decodings={"greedy": quick}) == 0
  finally:
    gin.clear_config()
  results = json.loads((tmp_path / "report" / "results.json").read_text())
  assert list(results["systems"]) == ["a/greedy"]
  assert results["systems"]["a/greedy"]["safety"]["pooled"]["n"] == 3
