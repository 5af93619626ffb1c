"""`safejax decode`: generations from a checkpoint for prompts on the command line or in a file.

  safejax decode --gin.decode.checkpoint_dir="'/tmp/demo'" "Once upon a time" "The river"
  safejax decode --gin.decode.checkpoint_dir="'/tmp/demo'" --gin.decode.prompts_file="'prompts.txt'" \\
      --gin.DecodingConfig.method="'safebeam'" --gin.decode.output_file="'out.jsonl'"

How to decode is `safejax.decoding.DecodingConfig` (bind its fields with --gin.DecodingConfig.X).
A prompts file holds one prompt per line (.txt) or JSON objects with a "prompt" field (.jsonl).
Each generation is printed; with `output_file` every generation is also written as a JSON line
(prompt, text, num_tokens, score, finished, tag_stopped).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import gin

from safejax.decoding import DecodingConfig, Generation, generate_texts

log = logging.getLogger(__name__)


def read_prompts(path: str) -> list[str]:
  """Prompts of a .txt file (one per non-empty line) or a .jsonl file (a "prompt" per object)."""
  prompts = []
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      if path.endswith(".jsonl"):
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{line_number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
          raise ValueError(f"{path}:{line_number}: needs a string field \"prompt\"")
        prompts.append(record["prompt"])
      else:
        prompts.append(line.rstrip("\n"))
  return prompts


@gin.configurable
def decode(
    checkpoint_dir: str = gin.REQUIRED,
    inputs: Sequence[str] = (),
    prompts_file: str | None = None,
    output_file: str | None = None,
    step: int | None = None,
    batch_size: int = 8,
    decoding: DecodingConfig | None = None,
) -> list[Generation]:
  """Loads the checkpoint (newest, or `step`) and its vocabulary, and decodes every prompt.

  Args:
    checkpoint_dir: a model directory written by `safejax train`.
    inputs: prompts given on the command line.
    prompts_file: more prompts (.txt, or .jsonl with a "prompt" field).
    output_file: where to write the generations as JSON lines.
    step: the checkpoint step (default: the newest).
    batch_size: prompts decoded together.
    decoding: how to decode; default `DecodingConfig()` with its gin bindings.
  Returns:
    One generation per prompt, command-line prompts first.
  """
  from safejax.train import load_for_inference  # the trainer's imports are heavy; only needed here

  prompts = list(inputs) + (read_prompts(prompts_file) if prompts_file else [])
  if not prompts:
    raise ValueError("no prompts: give them as arguments or set decode.prompts_file")
  decoding = DecodingConfig() if decoding is None else decoding
  model, vocab = load_for_inference(checkpoint_dir, step)
  log.info("decoding %d prompts with %s", len(prompts), decoding)
  generations = generate_texts(model, vocab, prompts, decoding, batch_size=batch_size)
  for generation in generations:
    flags = "".join([" [eos]" if generation.finished else "", " [tag-stopped]" if generation.tag_stopped else ""])
    print(f">>> {generation.prompt}\n{generation.text}{flags}\n")
  if output_file:
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w") as f:
      for generation in generations:
        f.write(json.dumps(dataclasses.asdict(generation)) + "\n")
    log.info("wrote %d generations to %s", len(generations), output_file)
  return generations
