"""The demo's post-training steps (PAPER.md section 5): the conversation data, instruction tuning
("+it"), the benign fine-tuning attack's dose, chosen on validation prompts, and the attack
("+it+bft"). Wiring only, like `demo.recipe`: the work is `safejax.train`'s, the data the world's
(`demo.world`) or real conversations (`safejax.posttrain`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tasks
from safejax import posttrain
from safejax import train as train_lib
from safejax.decoding.generate import DecodingConfig
from safejax.demo import world as demo_world
from safejax.demo.cache import StepResult
from safejax.evaluation import ladder, world_judges
from safejax.evaluation.checkpoints import judged_replies, reply_rates
from tasks import chat as chat_tasks


def sft_data_step(out: Path, vocab: StepResult, data_dir: str | None,
                  world: demo_world.WorldConfig, sizes: tuple[int, int, int], tagged_share: float, tag_p: float,
                  seed: int) -> dict:
  """instruct.jsonl and benign.jsonl, and the post-training sequence lengths that cut no record.

  On the world: instruction tuning refuses harmful requests and answers safe how-tos and fact
  questions, the attack is helpful chats only; both drawn apart from every document and from every
  benign evaluation prompt (`demo.world`). `sizes`: (refusals, helpful answers, attack chats)."""
  counts: collections.Counter = collections.Counter()
  if data_dir is None:
    built = demo_world.build_world(world)
    refusals, helpful_n, attack_n = sizes[0], sizes[1], sizes[2]
    refusals = demo_world.refusal_conversations(built, refusals, "instruct")
    helpful = demo_world.helpful_conversations(built, helpful_n, "instruct")
    benign = demo_world.helpful_conversations(built, attack_n, "benign_ft")
    counts.update({"instruct: world refusals": len(refusals), "instruct: world helpful answers": len(helpful),
                   "benign_ft: world helpful chats": len(benign)})
  else:
    data = Path(data_dir)
    refusals = list(posttrain.from_hh_rlhf(data / "classifier/hh_rlhf_harmless/harmless-base_test.jsonl.gz", counts))
    choice = list(posttrain.from_choice_task(data / "capability/mc_evals/commonsense_qa.jsonl", counts))
    helpful, benign = choice[: len(choice) // 2], choice[len(choice) // 2:]
  summary = posttrain.write_posttrain_data(out, refusals, helpful, benign, tagged_share=tagged_share, tag_p=tag_p,
                                           seed=seed, counts=counts)
  records = [json.loads(line) for name in ("instruct.jsonl", "benign.jsonl")
             for line in (out / name).read_text().splitlines() if line.strip()]
  # Post-training trains every record whole: the lengths fit the longest prompt and reply (issue 21).
  return {**summary, **chat_tasks.fitting_lengths(chat_tasks.token_lengths(records, vocab.summary["vocab"]))}


def _chat_settings(settings: dict[str, Any], sft_data: StepResult) -> dict[str, Any]:
  return {**settings, "sequence_length": sft_data.summary["sequence_length"],
          "prompt_length": sft_data.summary["prompt_length"]}


def instruct_step(out: Path, pretrained: StepResult, sft_data: StepResult, vocab: StepResult, steps: int,
                  settings: dict[str, Any]) -> dict:
  """"+it": every base model instruction-tuned on the same data."""
  tasks.register_chat_task("demo_instruct", str(sft_data.dir / "instruct.jsonl"), vocab.summary["vocab"])
  models = {}
  for label, base in pretrained.summary["models"].items():
    model_dir = str(out / f"{label}+it")
    train_lib.train(model_dir=model_dir, mixture_or_task_name="demo_instruct", mixture_or_task_module=None,
                    init_from=base["dir"], train_steps=steps, seed=base["seed"], log_every=25, checkpoint_every=steps,
                    keep_checkpoints=1, **_chat_settings(settings, sft_data))
    models[f"{label}+it"] = {**base, "dir": model_dir, "stage": "instruct", "prompt_style": "chat"}
  return {"models": models}


def _attack(model_dir: str, base: dict, sft_data: StepResult, steps: int, learning_rate: float,
            settings: dict[str, Any], checkpoint_every: int | None = None) -> None:
  settings = {**_chat_settings(settings, sft_data),
              "optimizer": dataclasses.replace(settings["optimizer"], learning_rate=learning_rate)}
  train_lib.train(model_dir=model_dir, mixture_or_task_name="demo_benign_ft", mixture_or_task_module=None,
                  init_from=base["dir"], train_steps=steps, seed=base["seed"], log_every=25,
                  checkpoint_every=checkpoint_every or steps, keep_checkpoints=1 if checkpoint_every is None else 100,
                  **settings)


def dose_step(out: Path, corpus: StepResult, instructed: StepResult, sft_data: StepResult, vocab: StepResult, *,
              rungs: Sequence[str], seeds: Sequence[int], learning_rates: Sequence[float], steps_grid: Sequence[int],
              target: tuple[float, float], decoding: DecodingConfig, leak_min_facts: int,
              settings: dict[str, Any]) -> dict:
  """The attack's dose (learning rate, steps) of each seed, chosen on that seed's raw rung's
  validation prompts so that its compliance under `decoding` lands in `target` (`ladder.choose_dose`):
  each learning rate in turn with every step count of `steps_grid`, the first in range taken, and
  applied to every rung of that seed (paired comparisons stay within a seed). Per seed because the
  window is narrow and seeds reach it at different doses: after the same instruction tuning, lr 2e-3
  brought one raw seed to 79 % validation compliance at 15 steps and another to 0 % (21 % at 30;
  measured: README). The dose-response of the raw rung (every seed) and of the full recipe (first
  seed) is dose_response.png. The attack's learning rate is constant after warm-up
  (`attack/OptimizerConfig`), so each checkpoint of one run is the model that dose makes."""
  tasks.register_chat_task("demo_benign_ft", str(sft_data.dir / "benign.jsonl"), vocab.summary["vocab"])
  compliance, _ = world_judges.world_judges(corpus.dir, leak_min_facts)
  validation = str(corpus.dir / "harmful_prompts_validation.jsonl")

  def curve(rung: str, seed: int, learning_rate: float) -> list[dict]:
    base = instructed.summary["models"][f"{rung}-s{seed}+it"]
    model_dir = str(out / f"{rung}-s{seed}-lr{learning_rate:g}")
    _attack(model_dir, base, sft_data, steps_grid[-1], learning_rate, settings, checkpoint_every=math.gcd(*steps_grid))
    points = []
    for steps in steps_grid:
      replies, verdicts = judged_replies(model_dir, validation, decoding, compliance, step=steps, prompt_style="chat")
      points.append({"learning_rate": learning_rate, "steps": steps, **reply_rates(replies, verdicts)})
    return points

  reference = "raw" if "raw" in rungs else rungs[0]  # the paper's reference: the raw rung
  curves: dict[str, list[dict]] = {}
  chosen: dict[int, dict] = {}
  for seed in seeds:
    label = f"{reference}-s{seed}"
    curves[label] = []
    for learning_rate in learning_rates:
      curves[label] += curve(reference, seed, learning_rate)
      chosen[seed] = {**ladder.choose_dose(curves[label], target), "rung": reference}
      if chosen[seed]["in_range"]:
        break
  if "tags" in rungs and reference != "tags":
    curves[f"tags-s{seeds[0]}"] = curve("tags", seeds[0], chosen[seeds[0]]["learning_rate"])
  png = ladder.plot_dose_response(curves, {f"{reference}-s{seed}": point for seed, point in chosen.items()},
                                  out / "dose_response.png")
  return {"chosen": {str(seed): point for seed, point in chosen.items()}, "curves": curves, "plot": png}


def attack_step(out: Path, instructed: StepResult, sft_data: StepResult, vocab: StepResult,
                dose: dict[str, dict], settings: dict[str, Any]) -> dict:
  """"+it+bft": every instruction-tuned model attacked by benign fine-tuning at its seed's dose
  (`dose`: {str(seed): {"learning_rate", "steps", ...}})."""
  tasks.register_chat_task("demo_benign_ft", str(sft_data.dir / "benign.jsonl"), vocab.summary["vocab"])
  models = {}
  for label, tuned in instructed.summary["models"].items():
    attacked = label.replace("+it", "+it+bft")
    model_dir = str(out / attacked)
    seed_dose = dose[str(tuned["seed"])]
    _attack(model_dir, tuned, sft_data, seed_dose["steps"], seed_dose["learning_rate"], settings)
    models[attacked] = {**tuned, "dir": model_dir, "stage": "benign_ft"}
  return {"models": models, "dose": dose}
