"""A prepared accelerator check: training and decoding throughput on one GPU or TPU host.

  python benchmarks/accelerator_check.py                     # SmolLM2-135M and -360M shapes, bf16
  python benchmarks/accelerator_check.py --out /tmp/accelerator_check.json
  python benchmarks/accelerator_check.py --tiny              # the same code at the tiny shape (CPU dry run)

Runs unchanged with jax[cuda] or jax[tpu] (nothing here names a platform except the choice of
attention kernel: cuDNN on GPUs, falling back to XLA's if it does not compile). Random weights and
tokens; everything is timed after compilation. Stays within --budget_s (8 minutes by default): a
section that would start after the budget is reported as skipped, never silently dropped.

Training: safejax.train.train_step (chunked loss, AdamW, bf16 compute with float32 parameters,
the layer scan) on a data-parallel mesh of every local device, packed batches of --length tokens
(one segment per row). The batch per device is the largest of --batch_per_device that the
compiled step's memory analysis says fits in 85 % of the device memory (estimated from one
compilation, then compiled once more at the chosen size). Reported: tokens/s, step time, MFU
(6N + attention FLOPs per token, `ModelConfig.flops_per_token`, against the chip's spec-sheet
bf16 peak, `safejax.train.PEAK_FLOPS`).

Decoding (one device, the --decode_model shape): cached greedy decoding and SafeBeam (k=4, N=4)
at batch 1 and 32, --prompt_length prompt tokens and exactly --new_tokens new ones (EOS and the
harm tag suppressed), tokens/s = prompts x new tokens / seconds, prefill included; plain beam
search of the same k beside SafeBeam for their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS, TAG = 1, 4  # as in every safejax vocabulary
MEMORY_FRACTION = 0.85


def model_config(gin_file: str, vocab_size: int, dtype: str):
  import gin

  from safejax.model import ModelConfig

  gin.parse_config_files_and_bindings([os.path.join(REPO, gin_file)], [], skip_unknown=True)
  config = ModelConfig()
  gin.clear_config()
  return dataclasses.replace(config, dtype=dtype, param_dtype="float32").with_vocab_size(vocab_size)


def attention_kernel() -> str:
  import jax

  return "cudnn" if jax.devices()[0].platform == "gpu" else "xla"


class Deadline:
  """The time budget of the whole check; sections ask before they start."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def left(self) -> float:
    return self.end - time.perf_counter()


# --------------------------------------------------------------------------------------------
# Training


def _train_program(config, batch_per_device: int, length: int):
  """(compiled step, state, batch, memory analysis) of train_step on a data-parallel mesh."""
  import jax
  import numpy as np
  from flax import nnx

  from safejax import partitioning
  from safejax.model import build_model
  from safejax.train import OptimizerConfig, train_step

  rules = partitioning.logical_rules()
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
  tx = OptimizerConfig(warmup_steps=1).make(10_000)
  build = lambda: (lambda m: (m, nnx.Optimizer(m, tx, wrt=nnx.Param)))(build_model(config))
  with jax.set_mesh(mesh):
    model, optimizer = partitioning.create_sharded(build, mesh, rules)
  graphdef, state = nnx.split((model, optimizer))
  del model, optimizer
  state_sharding = partitioning.state_shardings(state, mesh, rules)
  data_sharding = partitioning.batch_sharding(mesh, rules)
  batch_size = batch_per_device * jax.device_count()
  tokens = np.random.default_rng(0).integers(16, config.vocab_size, (batch_size, length + 1)).astype(np.int32)
  local = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
           "decoder_loss_weights": np.ones((batch_size, length), np.int32),
           "decoder_segment_ids": np.ones((batch_size, length), np.int32),
           "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length)).copy()}
  batch = partitioning.global_batch(local, data_sharding)
  step = jax.jit(functools.partial(train_step, graphdef, rules=rules, z_loss=1e-4),
                 in_shardings=(state_sharding, data_sharding), out_shardings=(state_sharding, None),
                 donate_argnums=0)
  compiled = step.lower(state, batch).compile()
  return compiled, state, batch, compiled.memory_analysis()


def _peak_bytes(memory) -> float:
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
          + memory.temp_size_in_bytes)


def _device_memory() -> float | None:
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def choose_batch(config, candidates: list[int], length: int) -> tuple[int, str]:
  """The largest per-device batch whose step fits in MEMORY_FRACTION of device memory.

  One compilation at the smallest candidate measures the fixed part (parameters, optimizer
  state) and the per-row temporaries; the rest is extrapolated linearly in the batch.
  """
  limit = _device_memory()
  if limit is None:
    return max(candidates), "no device memory limit reported: the largest candidate"
  smallest = min(candidates)
  _, _, _, memory = _train_program(config, smallest, length)
  fixed = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
  per_row = memory.temp_size_in_bytes / smallest
  fitting = [b for b in sorted(candidates) if fixed + per_row * b <= MEMORY_FRACTION * limit]
  chosen = max(fitting) if fitting else smallest
  return chosen, (f"{(fixed + per_row * chosen) / 2**30:.1f} of {limit / 2**30:.1f} GiB estimated "
                  f"(fixed {fixed / 2**30:.1f} GiB + {per_row / 2**30:.2f} GiB per row)")


def train_figures(name: str, config, args) -> dict:
  import jax

  from safejax.train import peak_flops_per_device

  per_device, memory_note = choose_batch(config, args.batch_per_device, args.length)
  start = time.perf_counter()
  compiled, state, batch, memory = _train_program(config, per_device, args.length)
  compile_s = time.perf_counter() - start
  for _ in range(2):  # warm-up
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  if not all(math.isfinite(float(v)) for v in jax.device_get(metrics).values()):
    raise FloatingPointError(f"{name}: non-finite training metrics {jax.device_get(metrics)}")
  step_s = sorted(times)[len(times) // 2]
  tokens = per_device * jax.device_count() * args.length
  peak, peak_source = peak_flops_per_device()
  tokens_per_s = tokens / step_s
  return {"model": name, "parameters": config.num_params(), "devices": jax.device_count(),
          "batch_per_device": per_device, "length": args.length, "attention": config.attention,
          "step_s": step_s, "tokens_per_s": tokens_per_s,
          "mfu": tokens_per_s * config.flops_per_token(args.length) / (peak * jax.device_count()),
          "peak_flops_per_device": peak, "peak_source": peak_source, "compile_s": compile_s,
          "peak_memory_gib": _peak_bytes(memory) / 2**30, "memory": memory_note, "loss": float(metrics["loss"])}


# --------------------------------------------------------------------------------------------
# Decoding


def decode_figures(config, method: str, batch: int, args) -> dict:
  import jax
  import numpy as np
  from flax import nnx

  from safejax import decoding
  from safejax.model import KVCache, build_model

  graphdef, state = nnx.split(build_model(config))
  state = jax.device_put(state, jax.devices()[0])
  prompts = np.random.default_rng(0).integers(16, config.vocab_size, (batch, args.prompt_length)).astype(np.int32)
  mask = np.ones_like(prompts, bool)
  never_stop = decoding.chain(decoding.SuppressToken(EOS), decoding.SuppressToken(TAG))
  common = dict(max_new_tokens=args.new_tokens, eos_id=EOS, logits_processor=never_stop)
  algorithm = {
      "greedy": functools.partial(decoding.sample, temperature=0.0, **common),
      "beam": functools.partial(decoding.beam_search, beam_size=args.beam_size, **common),
      "safebeam": functools.partial(decoding.safebeam, beam_size=args.beam_size, num_expand=args.num_expand,
                                    drop_fraction=decoding.DecodingConfig().drop_fraction, tag_id=TAG, **common),
  }[method]
  init_cache = functools.partial(KVCache.init, config)
  run = jax.jit(lambda state, prompts, mask: algorithm(decoding.cached_tokens_to_logits(graphdef, state),
                                                       init_cache, prompts, mask))
  start = time.perf_counter()
  compiled = run.lower(state, prompts, mask).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(state, prompts, mask))  # warm-up
  times = []
  for _ in range(args.decode_rounds):
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(state, prompts, mask))
    times.append(time.perf_counter() - start)
  if int(np.asarray(result.lengths)[:, 0].min()) != args.new_tokens:
    raise RuntimeError(f"{method} batch {batch}: a generation ended early; the timing would not be comparable")
  seconds = min(times)
  label = {"greedy": "greedy, KV cache", "beam": f"beam search k={args.beam_size}",
           "safebeam": f"SafeBeam k={args.beam_size} N={args.num_expand}"}[method]
  return {"decoding": label, "batch": batch, "tokens_per_s": batch * args.new_tokens / seconds,
          "ms_per_token_step": 1000 * seconds / args.new_tokens, "compile_s": compile_s}


# --------------------------------------------------------------------------------------------


def run_sections(sections: list[tuple[str, Callable[[], dict]]], deadline: Deadline, budget_each: float) -> list[dict]:
  """Runs each section unless the budget is spent; a failure or a skip is reported with its reason."""
  from tqdm.auto import tqdm

  results = []
  for label, section in tqdm(sections, desc="accelerator check", unit="section"):
    if deadline.left() < budget_each:
      results.append({"section": label, "skipped": f"time budget: {deadline.left():.0f} s left"})
      continue
    start = time.perf_counter()
    try:
      result = section()
    except Exception as e:  # noqa: BLE001  reported, and the remaining sections still run
      result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    results.append({"section": label, "seconds": time.perf_counter() - start, **result})
    print(json.dumps(results[-1]), flush=True)
  return results


def with_attention_fallback(make: Callable[[str], dict]) -> Callable[[], dict]:
  """Runs make(kernel) with the platform's attention kernel, and with XLA's if that one fails."""

  def run():
    kernel = attention_kernel()
    try:
      return make(kernel)
    except Exception as e:  # noqa: BLE001  e.g. a cuDNN version without the fused kernel
      if kernel == "xla":
        raise
      return {**make("xla"), "attention_fallback": f"{kernel} failed: {type(e).__name__}: {str(e)[:200]}"}

  return run


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="gin/models/smollm2_135m.gin,gin/models/smollm2_360m.gin")
  parser.add_argument("--decode_model", default="gin/models/smollm2_360m.gin")
  parser.add_argument("--vocab_size", type=int, default=49152, help="used when a gin file sets none")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--length", type=int, default=2048)
  parser.add_argument("--batch_per_device", type=lambda v: [int(b) for b in v.split(",")], default=[4, 8, 16, 32])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--decode_batches", type=lambda v: [int(b) for b in v.split(",")], default=None,
                      help="comma-separated (default 1,32; --tiny: 1,2)")
  parser.add_argument("--prompt_length", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--beam_size", type=int, default=4)
  parser.add_argument("--num_expand", type=int, default=4)
  parser.add_argument("--decode_rounds", type=int, default=3)
  parser.add_argument("--budget_s", type=float, default=480.0, help="the whole check's time budget")
  parser.add_argument("--tiny", action="store_true",
                      help="tiny shape, short runs: the CPU dry run of the same code (tests)")
  parser.add_argument("--out", help="also write the results as JSON here")
  args = parser.parse_args(argv)
  if args.tiny:
    args.models = args.decode_model = "gin/models/tiny.gin"
    args.vocab_size, args.length, args.batch_per_device, args.steps = 512, 64, [1, 2], 2
    args.prompt_length, args.new_tokens, args.decode_rounds = 8, 4, 1
  args.decode_batches = args.decode_batches or ([1, 2] if args.tiny else [1, 32])

  import jax

  deadline = Deadline(args.budget_s)
  device = jax.devices()[0]
  header = {"platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
            "jax": jax.__version__, "host": platform.node(), "dtype": args.dtype}
  print(json.dumps(header), flush=True)

  sections = []
  for gin_file in args.models.split(","):
    name = os.path.basename(gin_file).removesuffix(".gin")
    base = model_config(gin_file, args.vocab_size, args.dtype)
    make = lambda kernel, base=base, name=name: train_figures(name, dataclasses.replace(base, attention=kernel), args)
    sections.append((f"train {name}", with_attention_fallback(make)))
  decode_config = model_config(args.decode_model, args.vocab_size, args.dtype)
  for method in ("greedy", "safebeam", "beam"):
    for batch in args.decode_batches:
      make = lambda kernel, method=method, batch=batch: decode_figures(
          dataclasses.replace(decode_config, attention=kernel), method, batch, args)
      sections.append((f"decode {method} batch {batch}", with_attention_fallback(make)))
  # Each section needs about this much time to be worth starting (compilation dominates).
  results = run_sections(sections, deadline, budget_each=0.0 if args.tiny else 30.0)

  print(f"\n{header['device_kind']} x {header['devices']} ({header['platform']}), jax {header['jax']}, "
        f"{args.dtype}\n")
  print("| training | parameters | batch/device x length | tokens/s | MFU | step s | peak GiB | compile s |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for r in results:
    if r["section"].startswith("train") and "tokens_per_s" in r:
      print(f"| {r['model']} ({r['attention']} attention) | {r['parameters']:,} | {r['batch_per_device']} x "
            f"{r['length']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['step_s']:.3f} | "
            f"{r['peak_memory_gib']:.1f} | {r['compile_s']:.0f} |")
  print(f"\n| decoding ({os.path.basename(args.decode_model)}) | batch | tokens/s | ms per step | compile s |")
  print("|---|---:|---:|---:|---:|")
  for r in results:
    if r["section"].startswith("decode") and "tokens_per_s" in r:
      print(f"| {r['decoding']} | {r['batch']} | {r['tokens_per_s']:,.1f} | {r['ms_per_token_step']:.2f} | "
            f"{r['compile_s']:.0f} |")
  by_section = {r["section"]: r for r in results}
  for batch in args.decode_batches:
    safebeam, beam = by_section.get(f"decode safebeam batch {batch}", {}), by_section.get(f"decode beam batch {batch}", {})
    if "tokens_per_s" in safebeam and "tokens_per_s" in beam:
      print(f"\nSafeBeam / beam search tokens/s at batch {batch}: {safebeam['tokens_per_s'] / beam['tokens_per_s']:.2f}")
  problems = [r for r in results if "error" in r or "skipped" in r]
  for r in problems:
    print(f"{r['section']}: {r.get('error') or r.get('skipped')}", file=sys.stderr)
  report = {**header, "results": results}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  report = main()
  sys.exit(1 if any("error" in r for r in report["results"]) else 0)
