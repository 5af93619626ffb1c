"""Decoding speed, side by side: KV cache vs full recompute, beam search vs SafeBeam, vs transformers.

  python benchmarks/bench_decoding.py [--model gin/models/demo.gin] [--vocab_size 4096] [--dtype float32]
      [--prompt_length 32] [--new_tokens 128] [--beam_size 4] [--num_expand 2,4] [--repeats 5] [--parts a,b]

Every measurement runs in its own process (so its peak memory is its own) on the same random
weights' shapes: safejax's jitted decoders (`safejax.decoding`, the whole loop in one program) and
transformers' `LlamaForCausalLM.generate` (torch eager, same architecture and shapes, at its best
of 1 thread and all cores: on a loaded machine torch's thread pool can lose 30x). EOS is
(and the harm tag) suppressed everywhere so each run produces exactly --new_tokens tokens per prompt. tokens/s =
prompts x new tokens / seconds, the best of --repeats runs after a warm-up (compilation) run;
prefill included. Peak memory is the process's peak resident set; "runtime" is the resident set
after imports, before the model exists.

Goals: cached greedy decoding >= 3x transformers' generate at batch 1; SafeBeam >= 0.5x the
tokens/s of beam search of the same width.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS, TAG = 1, 4  # as in every safejax vocabulary


def parts(args) -> dict[str, tuple[str, str, str, int, bool, int]]:
  """key -> (label, framework, method, batch, uses the KV cache, SafeBeam's N)."""
  table = {
      "greedy": ("safejax greedy, KV cache", "safejax", "greedy", 1, True, 0),
      "greedy_recompute": ("safejax greedy, full recompute", "safejax", "greedy", 1, False, 0),
      "hf_greedy": ("transformers greedy", "torch", "greedy", 1, True, 0),
      "greedy_b8": ("safejax greedy, KV cache", "safejax", "greedy", 8, True, 0),
      "hf_greedy_b8": ("transformers greedy", "torch", "greedy", 8, True, 0),
      "beam": (f"safejax beam search k={args.beam_size}", "safejax", "beam", 1, True, 0),
      "hf_beam": (f"transformers beam search k={args.beam_size}", "torch", "beam", 1, True, 0),
  }
  for n in args.num_expand:
    table[f"safebeam_n{n}"] = (f"safejax SafeBeam k={args.beam_size} N={n}", "safejax", "safebeam", 1, True, n)
  return table


def ratios(args) -> list[tuple[str, str, str]]:
  """(numerator, denominator, what the ratio says) of tokens/s."""
  return [
      ("greedy", "greedy_recompute", "KV cache / full recompute, greedy batch 1"),
      ("greedy", "hf_greedy", "safejax / transformers, greedy batch 1 (goal >= 3)"),
      ("greedy_b8", "hf_greedy_b8", "safejax / transformers, greedy batch 8"),
      ("beam", "hf_beam", "safejax / transformers, beam search batch 1"),
  ] + [(f"safebeam_n{n}", "beam", f"SafeBeam N={n} / beam search (goal >= 0.5)") for n in args.num_expand]


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_config(args):
  import gin

  from safejax.model import ModelConfig

  gin.parse_config_files_and_bindings([os.path.join(REPO, args.model)], [], skip_unknown=True)
  config = ModelConfig()
  gin.clear_config()
  # One dtype for both frameworks (the SmolLM2 gin files compute in bfloat16, slow on most CPUs).
  return dataclasses.replace(config, dtype=args.dtype, param_dtype=args.dtype).with_vocab_size(args.vocab_size)


def prompts(args, batch: int):
  import numpy as np

  return np.random.default_rng(0).integers(16, args.vocab_size, (batch, args.prompt_length)).astype(np.int32)


def best_seconds(run, repeats: int) -> tuple[float, float]:
  """(seconds of the warm-up call, best seconds of `repeats` calls)."""
  start = time.perf_counter()
  run()
  first = time.perf_counter() - start
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return first, best


def run_safejax(args, method: str, batch: int, use_cache: bool, num_expand: int) -> dict:
  import jax
  import numpy as np
  from flax import nnx

  from safejax import decoding
  from safejax.model import KVCache, build_model

  runtime_mb = peak_rss_mb()
  config = model_config(args)
  graphdef, state = nnx.split(build_model(config))
  tokens = prompts(args, batch)
  mask = np.ones_like(tokens, bool)
  # Neither EOS nor a tag stop may end a search early (SafeBeam still computes every tag risk).
  never_stop = decoding.chain(decoding.suppress_token(EOS), decoding.suppress_token(TAG))
  common = dict(max_new_tokens=args.new_tokens, eos_id=EOS, logits_processor=never_stop)
  algorithm = {
      "greedy": functools.partial(decoding.sample, temperature=0.0, **common),
      "beam": functools.partial(decoding.beam_search, beam_size=args.beam_size, **common),
      "safebeam": functools.partial(decoding.safebeam, beam_size=args.beam_size, num_expand=num_expand, tag_id=TAG,
                                    **common),
  }[method]
  if use_cache:
    make, init_cache = decoding.cached_tokens_to_logits, functools.partial(KVCache.init, config)
  else:
    make, init_cache = decoding.full_recompute_tokens_to_logits, decoding.TokenHistory.init
  decode = jax.jit(lambda state, tokens, mask: algorithm(make(graphdef, state), init_cache, tokens, mask))
  result = {}

  def run():
    result["out"] = jax.block_until_ready(decode(state, tokens, mask))

  first, best = best_seconds(run, args.repeats)
  if int(np.asarray(result["out"].lengths)[:, 0].min()) != args.new_tokens:
    raise RuntimeError("a generation ended early: the timing would not be comparable")
  return {"seconds": best, "warmup_seconds": first, "runtime_mb": runtime_mb, "params": config.num_params(),
          "note": f"jax {jax.__version__}"}


def run_torch(args, method: str, batch: int) -> dict:
  """transformers' generate at its best thread count: on a loaded machine one thread can beat all."""
  import torch
  import transformers

  runtime_mb = peak_rss_mb()
  config = model_config(args)
  hf_config = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.embed_dim, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, rope_theta=config.rope_theta,
      rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
      max_position_embeddings=args.prompt_length + args.new_tokens, pad_token_id=0, eos_token_id=EOS)
  model = transformers.LlamaForCausalLM(hf_config).to(getattr(torch, args.dtype)).eval()
  tokens = torch.from_numpy(prompts(args, batch)).long()
  generate = functools.partial(model.generate, tokens, attention_mask=torch.ones_like(tokens),
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                               num_beams=args.beam_size if method == "beam" else 1, pad_token_id=0, eos_token_id=EOS)
  result = {}

  def run():
    with torch.inference_mode():
      result["out"] = generate()

  measured = {}
  for threads in sorted({1, os.cpu_count()}):
    torch.set_num_threads(threads)
    measured[threads] = best_seconds(run, args.repeats)
  threads = min(measured, key=lambda t: measured[t][1])
  if result["out"].shape[1] != args.prompt_length + args.new_tokens:
    raise RuntimeError("a generation ended early: the timing would not be comparable")
  return {"seconds": measured[threads][1], "warmup_seconds": measured[threads][0], "runtime_mb": runtime_mb,
          "note": f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} thread(s)"}


def measure(args, name: str) -> dict:
  _, framework, method, batch, use_cache, num_expand = parts(args)[name]
  if framework == "safejax":
    measured = run_safejax(args, method, batch, use_cache, num_expand)
  else:
    measured = run_torch(args, method, batch)
  measured.update(tokens_per_s=batch * args.new_tokens / measured["seconds"], peak_mb=peak_rss_mb())
  return measured


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
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--parts", help="comma-separated keys of the measurements (default: all)")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one part in this process
  args = parser.parse_args()
  table = parts(args)
  if args.one:
    print(json.dumps(measure(args, args.one)))
    return

  from tqdm.auto import tqdm

  names = args.parts.split(",") if args.parts else list(table)
  unknown = [n for n in names if n not in table]
  if unknown:
    raise SystemExit(f"unknown parts {unknown}; known: {', '.join(table)}")
  flags = [f"--{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
           for key, value in vars(args).items() if key not in ("parts", "one")]
  results = {}
  for name in tqdm(names, desc="measurements", unit="run"):
    out = subprocess.run([sys.executable, __file__, *flags, "--one", name], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    results[name] = json.loads(out.strip().splitlines()[-1])

  params = next((r["params"] for r in results.values() if "params" in r), None)
  print(f"\nmodel {args.model}, {args.dtype}" + (f", {params:,} parameters" if params else "") +
        f"; prompt {args.prompt_length} tokens, {args.new_tokens} new tokens per prompt; {os.cpu_count()} CPU cores;"
        f" best of {args.repeats}\n")
  print(f"| {'measurement':<36} | batch | tokens/s | ms/step | warm-up s | runtime MB | peak MB | notes")
  print(f"|{'-' * 38}|------:|---------:|--------:|----------:|-----------:|--------:|------")
  for name, r in results.items():
    label, batch = table[name][0], table[name][3]
    print(f"| {label:<36} | {batch:5d} | {r['tokens_per_s']:8.1f} | {1000 * r['seconds'] / args.new_tokens:7.2f} | "
          f"{r['warmup_seconds']:9.2f} | {r['runtime_mb']:10.0f} | {r['peak_mb']:7.0f} | {r['note']}")
  print(f"\n| {'ratio of tokens/s':<58} | value |")
  print(f"|{'-' * 60}|------:|")
  for numerator, denominator, label in ratios(args):
    if numerator in results and denominator in results:
      print(f"| {label:<58} | {results[numerator]['tokens_per_s'] / results[denominator]['tokens_per_s']:5.2f} |")


if __name__ == "__main__":
  main()
