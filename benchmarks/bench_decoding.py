"""Decoding speed, side by side: KV cache vs full recompute, beam search vs SafeBeam, vs transformers.

  python benchmarks/bench_decoding.py [--model gin/models/demo.gin] [--vocab_size 4096] [--dtype float32]
      [--prompt_length 32] [--new_tokens 128] [--beam_size 4] [--num_expand 2,4] [--rounds 5] [--parts a,b]

Same architecture and shapes, random weights: safejax's jitted decoders (`safejax.decoding`, the
whole loop in one XLA program) and transformers' `LlamaForCausalLM.generate` (torch eager). EOS
and the harm tag are suppressed everywhere, so every run makes exactly --new_tokens tokens per
prompt; tokens/s = prompts x new tokens / seconds, prefill included.

Timing: every part is built and warmed up (compiled) in one process, then timed round-robin,
--rounds times, keeping each part's best: other work on the machine then weighs on all parts
alike, which keeps the ratios honest on a shared machine. transformers runs with the faster of 1
thread and all cores (under load torch's thread pool can lose 30x), chosen on its warm-up.
Memory: each part once more in a fresh process of its own; "peak MB" is that process's peak
resident set, "runtime MB" the resident set after imports, before the model exists.

Goals: cached greedy decoding >= 3x transformers' generate at batch 1 and at batch 8; SafeBeam
with N=4 >= 0.85x the tokens/s of beam search of the same width, N=2 >= 0.9x. Beam search and
SafeBeam are also timed at batch 16, the batch of the demo's evaluation. The header names the CPU and the
1-minute load average before and after the timing rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS, TAG = 1, 4  # as in every safejax vocabulary


@dataclasses.dataclass(frozen=True)
class Part:
  label: str
  framework: str  # safejax | transformers
  method: str  # greedy | beam | safebeam
  batch: int = 1
  use_cache: bool = True
  num_expand: int = 0


def parts(args) -> dict[str, Part]:
  table = {
      "greedy": Part("safejax greedy, KV cache", "safejax", "greedy"),
      "greedy_recompute": Part("safejax greedy, full recompute", "safejax", "greedy", use_cache=False),
      "hf_greedy": Part("transformers greedy", "transformers", "greedy"),
      "greedy_b8": Part("safejax greedy, KV cache", "safejax", "greedy", batch=8),
      "hf_greedy_b8": Part("transformers greedy", "transformers", "greedy", batch=8),
      "beam": Part(f"safejax beam search k={args.beam_size}", "safejax", "beam"),
      "hf_beam": Part(f"transformers beam search k={args.beam_size}", "transformers", "beam"),
  }
  for n in args.num_expand:
    table[f"safebeam_n{n}"] = Part(f"safejax SafeBeam k={args.beam_size} N={n}", "safejax", "safebeam", num_expand=n)
  # The demo's evaluation decodes 16 prompts a call: beam search and SafeBeam at that batch too.
  table["beam_b16"] = Part(f"safejax beam search k={args.beam_size}", "safejax", "beam", batch=16)
  table["safebeam_n4_b16"] = Part(f"safejax SafeBeam k={args.beam_size} N=4", "safejax", "safebeam", batch=16,
                                  num_expand=4)
  return table


def ratios(args) -> list[tuple[str, str, str]]:
  """(numerator, denominator, what the ratio of their tokens/s says)."""
  return [
      ("greedy", "greedy_recompute", "KV cache / full recompute, greedy batch 1"),
      ("greedy", "hf_greedy", "safejax / transformers, greedy batch 1 (goal >= 3)"),
      ("greedy_b8", "hf_greedy_b8", "safejax / transformers, greedy batch 8 (goal >= 3)"),
      ("beam", "hf_beam", "safejax / transformers, beam search batch 1"),
  ] + [(f"safebeam_n{n}", "beam", f"SafeBeam N={n} / beam search" + (" (goal >= 0.85)" if n == 4 else " (goal >= 0.9)"))
       for n in args.num_expand] + [("safebeam_n4_b16", "beam_b16", "SafeBeam N=4 / beam search, batch 16 (the demo's)")]


def cpu_model() -> str:
  """The CPU's model name (as lscpu gives it) and the number of logical CPUs."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return f"{names[0]}, {len(names)} logical CPUs" if names else f"{os.cpu_count()} CPUs"


def rss_mb() -> float:
  """Peak resident set of this process so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_config(args):
  import gin

  from safejax.model import ModelConfig

  gin.parse_config_files_and_bindings([os.path.join(REPO, args.model)], [], skip_unknown=True)
  config = ModelConfig()
  gin.clear_config()
  # One dtype for both frameworks (the SmolLM2 gin files compute in bfloat16, slow on most CPUs).
  config = dataclasses.replace(config, dtype=args.dtype, param_dtype=args.dtype)
  return config.with_vocab_size(args.vocab_size)


def prompts(args, batch: int):
  import numpy as np

  return np.random.default_rng(0).integers(16, args.vocab_size, (batch, args.prompt_length)).astype(np.int32)


def seconds(run: Callable[[], None]) -> float:
  start = time.perf_counter()
  run()
  return time.perf_counter() - start


def build_safejax(args, part: Part) -> tuple[Callable[[], None], str]:
  """A call that decodes once (blocking until done), and a note."""
  import jax
  import numpy as np
  from flax import nnx

  from safejax import decoding
  from safejax.model import KVCache, build_model

  config = model_config(args)
  graphdef, state = nnx.split(build_model(config))
  tokens = prompts(args, part.batch)
  mask = np.ones_like(tokens, bool)
  # Neither EOS nor a tag stop may end a search early (SafeBeam still computes every tag risk).
  never_stop = decoding.chain(decoding.SuppressToken(EOS), decoding.SuppressToken(TAG))
  common = dict(max_new_tokens=args.new_tokens, eos_id=EOS, logits_processor=never_stop)
  algorithm = {
      "greedy": functools.partial(decoding.sample, temperature=0.0, **common),
      "beam": functools.partial(decoding.beam_search, beam_size=args.beam_size, **common),
      "safebeam": functools.partial(decoding.safebeam, beam_size=args.beam_size, num_expand=part.num_expand,
                                    drop_fraction=decoding.DecodingConfig().drop_fraction, tag_id=TAG, **common),
  }[part.method]
  if part.use_cache:
    make, init_cache = decoding.cached_tokens_to_logits, functools.partial(KVCache.init, config)
  else:
    make, init_cache = decoding.full_recompute_tokens_to_logits, decoding.TokenHistory.init
  decode = jax.jit(lambda state, tokens, mask: algorithm(make(graphdef, state), init_cache, tokens, mask))

  def run():
    result = jax.block_until_ready(decode(state, tokens, mask))
    if int(np.asarray(result.lengths)[:, 0].min()) != args.new_tokens:
      raise RuntimeError("a generation ended early: the timing would not be comparable")

  return run, f"{config.num_params():,} parameters; jax {jax.__version__}"


def build_transformers(args, part: Part) -> tuple[Callable[[], None], str]:
  import torch
  import transformers

  config = model_config(args)
  hf_config = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.embed_dim, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, rope_theta=config.rope_theta,
      rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
      max_position_embeddings=args.prompt_length + args.new_tokens, pad_token_id=0, eos_token_id=EOS)
  model = transformers.LlamaForCausalLM(hf_config).to(getattr(torch, args.dtype)).eval()
  tokens = torch.from_numpy(prompts(args, part.batch)).long()
  generate = functools.partial(
      model.generate, tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=args.new_tokens,
      min_new_tokens=args.new_tokens, do_sample=False, num_beams=args.beam_size if part.method == "beam" else 1,
      pad_token_id=0, eos_token_id=EOS)

  def run_with(threads: int):
    torch.set_num_threads(threads)
    with torch.inference_mode():
      out = generate()
    if out.shape[1] != args.prompt_length + args.new_tokens:
      raise RuntimeError("a generation ended early: the timing would not be comparable")

  run_with(1)  # warm-up
  threads = min(sorted({1, os.cpu_count()}), key=lambda t: seconds(lambda: run_with(t)))
  return (functools.partial(run_with, threads),
          f"{threads} thread(s); torch {torch.__version__}, transformers {transformers.__version__}")


def build(args, part: Part) -> tuple[Callable[[], None], str]:
  return (build_safejax if part.framework == "safejax" else build_transformers)(args, part)


def time_parts(args, names: list[str]) -> dict[str, dict]:
  """Builds and warms up every part, then times them round-robin; each part's best round."""
  from tqdm.auto import tqdm

  table = parts(args)
  runs, results = {}, {}
  for name in tqdm(names, desc="build and warm up", unit="part"):
    run, note = build(args, table[name])
    results[name] = {"warmup_seconds": seconds(run), "note": note, "seconds": float("inf")}
    runs[name] = run
  for _ in tqdm(range(args.rounds), desc="timing rounds", unit="round"):
    for name, run in runs.items():
      results[name]["seconds"] = min(results[name]["seconds"], seconds(run))
  return results


def memory(args, name: str) -> dict:
  """Peak memory of one part, run in this (fresh) process."""
  if parts(args)[name].framework == "safejax":
    import jax  # noqa: F401  the runtime counts as runtime, not as the model's
  else:
    import torch  # noqa: F401
  runtime_mb = rss_mb()
  run, _ = build(args, parts(args)[name])
  run()
  return {"runtime_mb": runtime_mb, "peak_mb": rss_mb()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="gin/models/demo.gin", help="a gin file binding ModelConfig")
  parser.add_argument("--vocab_size", type=int, default=4096, help="used when the gin file sets none")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--prompt_length", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--beam_size", type=int, default=4)
  parser.add_argument("--num_expand", type=lambda v: [int(n) for n in v.split(",")], default=[2, 4],
                      help="SafeBeam's N, one measurement each (comma-separated)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--parts", help="comma-separated keys of the measurements (default: all)")
  parser.add_argument("--memory_of", help=argparse.SUPPRESS)  # internal: measure one part's memory
  args = parser.parse_args()
  table = parts(args)
  if args.memory_of:
    print(json.dumps(memory(args, args.memory_of)))
    return

  from tqdm.auto import tqdm

  names = args.parts.split(",") if args.parts else list(table)
  unknown = [n for n in names if n not in table]
  if unknown:
    raise SystemExit(f"unknown parts {unknown}; known: {', '.join(table)}")
  flags = [f"--{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
           for key, value in vars(args).items() if key not in ("parts", "memory_of")]
  results = {}
  for name in tqdm(names, desc="memory, one process each", unit="part"):
    out = subprocess.run([sys.executable, __file__, *flags, "--memory_of", name], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    results[name] = json.loads(out.strip().splitlines()[-1])
  load_before = os.getloadavg()[0]
  for name, timing in time_parts(args, names).items():
    results[name].update(timing, tokens_per_s=table[name].batch * args.new_tokens / timing["seconds"])
  load_after = os.getloadavg()[0]

  print(f"\nmodel {args.model}, {args.dtype}, decoding unrolled over the layers; prompt "
        f"{args.prompt_length} tokens, {args.new_tokens} new tokens per prompt; best of {args.rounds} rounds\n"
        f"CPU: {cpu_model()}; load average {load_before:.1f} before, {load_after:.1f} after the timing rounds\n")
  print(f"| {'measurement':<36} | batch | tokens/s | ms/step | warm-up s | runtime MB | peak MB | notes")
  print(f"|{'-' * 38}|------:|---------:|--------:|----------:|-----------:|--------:|------")
  for name, r in results.items():
    part = table[name]
    print(f"| {part.label:<36} | {part.batch:5d} | {r['tokens_per_s']:8.1f} | "
          f"{1000 * r['seconds'] / args.new_tokens:7.2f} | {r['warmup_seconds']:9.2f} | {r['runtime_mb']:10.0f} | "
          f"{r['peak_mb']:7.0f} | {r['note']}")
  print(f"\n| {'ratio of tokens/s':<58} | value |")
  print(f"|{'-' * 60}|------:|")
  for numerator, denominator, label in ratios(args):
    if numerator in results and denominator in results:
      print(f"| {label:<58} | {results[numerator]['tokens_per_s'] / results[denominator]['tokens_per_s']:5.2f} |")


if __name__ == "__main__":
  main()
