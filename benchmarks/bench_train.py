"""Training throughput: safejax's train step against PyTorch (transformers' LlamaForCausalLM).

  python benchmarks/bench_train.py                          # d=256/4 layers and d=512/8 layers
  python benchmarks/bench_train.py --shapes 256x4 --steps 10 --repeats 5
  python benchmarks/bench_train.py --contenders jax,jax_loop,jax_plain_loss,jax_bf16 --shapes 256x4

Same architecture and shapes on both sides (RMSNorm, RoPE, SwiGLU, GQA, tied embeddings), AdamW,
float32, one batch of B x T tokens reused (input cost excluded). Each run of a contender is a
subprocess of its own, so its peak memory (max RSS) is its own; the JAX step is
safejax.train.train_step under jax.jit exactly as the trainer runs it (chunked loss, scanned
layers: ModelConfig and train defaults). Contenders:

  jax             the defaults            jax_loop        scan_layers=False
  jax_plain_loss  loss_chunk_tokens=0     jax_bf16        bf16 compute (float32 parameters)
  jax_xla_default XLA:CPU's default YNNPACK fusions, not safejax.CPU_XLA_FLAGS
  torch_eager     transformers, eager     torch_compile   the same step under torch.compile

On a shared machine run-to-run spread is large: --repeats runs every contender that many times,
round-robin (so load weighs on all alike), and the table gives the median over runs of each run's
median step time, with the range of the runs, and the 1-minute load average (`uptime`) around
them. Reported: tokens/s, MFU against a measured f32 matmul peak of this machine, peak RSS and the
resident set after imports (the runtime), ratios against PyTorch eager and torch.compile, and the
CPU model. Needs the `reference` extra (torch 2.13 CPU, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# contender: (ModelConfig options, train_step options, XLA_FLAGS added to its process)
JAX_VARIANTS = {
    "jax": ({}, {}, ""),
    "jax_loop": ({"scan_layers": False}, {}, ""),
    "jax_plain_loss": ({}, {"loss_chunk_tokens": 0}, ""),
    "jax_bf16": ({"dtype": "bfloat16"}, {}, ""),
    # XLA:CPU's own YNNPACK fusion list, without the `dot` fusions safejax turns on (safejax.CPU_XLA_FLAGS)
    "jax_xla_default": ({}, {}, "--xla_cpu_experimental_ynn_fusion_type=-dot"),
}


def shapes(spec: str) -> dict:
  d, layers = (int(x) for x in spec.split("x"))
  return dict(embed_dim=d, num_layers=layers, num_heads=d // 64, num_kv_heads=max(1, d // 128), head_dim=64,
              mlp_dim=int(d * 8 / 3) // 64 * 64)


def cpu_model() -> str:
  """The CPU's model name (lscpu's), which the ratios depend on."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0]}, {len(names)} logical CPUs" if names else platform.processor()
  except OSError:
    return platform.processor() or platform.machine()


def load_average() -> float:
  return os.getloadavg()[0]


def rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_jax(spec: str, batch: int, length: int, vocab: int, steps: int, variant: str = "jax") -> dict:
  import functools

  import jax
  import numpy as np
  from flax import nnx

  from safejax import partitioning
  from safejax.model import ModelConfig, build_model
  from safejax.train import OptimizerConfig, peak_flops_per_device, train_step

  runtime_mb = rss_mb()
  model_options, step_options, _ = JAX_VARIANTS[variant]
  cfg = ModelConfig(vocab_size=vocab, **shapes(spec), **model_options)
  model = build_model(cfg)
  optimizer = nnx.Optimizer(model, OptimizerConfig(warmup_steps=1).make(10_000), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  step = jax.jit(functools.partial(train_step, graphdef, rules=partitioning.DEFAULT_RULES, z_loss=0.0,
                                   **step_options), donate_argnums=0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (batch, length + 1)).astype(np.int32)
  data = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": np.ones((batch, length), np.int32),
          "decoder_segment_ids": np.ones((batch, length), np.int32),
          "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()}
  data = jax.device_put(data)
  start = time.perf_counter()
  state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  peak, source = peak_flops_per_device()
  return {"step_s": sorted(times)[len(times) // 2], "compile_s": compile_s, "loss": float(metrics["loss"]),
          "params": cfg.num_params(), "flops_per_token": cfg.flops_per_token(length), "peak_flops": peak,
          "peak_source": source, "runtime_mb": runtime_mb}


def run_torch(spec: str, batch: int, length: int, vocab: int, steps: int, compiled: bool) -> dict:
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  runtime_mb = rss_mb()
  torch.manual_seed(0)
  s = shapes(spec)
  config = LlamaConfig(vocab_size=vocab, hidden_size=s["embed_dim"], intermediate_size=s["mlp_dim"],
                       num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
                       num_key_value_heads=s["num_kv_heads"], head_dim=s["head_dim"], tie_word_embeddings=True,
                       max_position_embeddings=length, rms_norm_eps=1e-5, attn_implementation="sdpa")
  model = LlamaForCausalLM(config)
  optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.95))
  tokens = torch.randint(0, vocab, (batch, length + 1))
  inputs, labels = tokens[:, :-1], tokens[:, 1:]

  def step():
    optimizer.zero_grad(set_to_none=True)
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  if compiled:
    step = torch.compile(step)
  start = time.perf_counter()
  step()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  return {"step_s": sorted(times)[len(times) // 2], "compile_s": compile_s, "loss": float(loss),
          "threads": torch.get_num_threads(), "runtime_mb": runtime_mb}


def child(args) -> None:
  if args.contender in JAX_VARIANTS:
    result = run_jax(args.shape, args.batch, args.length, args.vocab, args.steps, args.contender)
  else:
    result = run_torch(args.shape, args.batch, args.length, args.vocab, args.steps, args.contender == "torch_compile")
  result["peak_rss_mb"] = rss_mb()
  print("RESULT " + json.dumps(result))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", default="256x4,512x8", help="comma-separated DxLAYERS")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3, help="runs of every contender, round-robin")
  parser.add_argument("--contenders", default="jax,torch_eager,torch_compile",
                      help=f"comma-separated, of {', '.join([*JAX_VARIANTS, 'torch_eager', 'torch_compile'])}")
  parser.add_argument("--contender", help=argparse.SUPPRESS)
  parser.add_argument("--shape", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.contender:
    return child(args)

  from tqdm.auto import tqdm

  contenders = args.contenders.split(",")
  runs = {(spec, c): [] for spec in args.shapes.split(",") for c in contenders}
  loads = {key: [] for key in runs}
  failures = []
  with tqdm(total=len(runs) * args.repeats, desc="runs", unit="run") as bar:
    for _ in range(args.repeats):
      for spec, contender in runs:
        command = [sys.executable, __file__, "--contender", contender, "--shape", spec, "--batch", str(args.batch),
                   "--length", str(args.length), "--vocab", str(args.vocab), "--steps", str(args.steps)]
        load_before = load_average()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if contender in JAX_VARIANTS and JAX_VARIANTS[contender][2]:
          env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {JAX_VARIANTS[contender][2]}".strip()
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        loads[spec, contender] += [load_before, load_average()]
        bar.update(1)
        if out.returncode != 0:
          failures.append(f"{contender} {spec} failed:\n{out.stderr[-2000:]}")
          continue
        runs[spec, contender].append(json.loads(out.stdout.split("RESULT ", 1)[1]))
  for failure in failures:
    print(failure, file=sys.stderr)

  def median_run(key) -> dict | None:
    """The contender's figures with step_s the median over runs (and its range kept)."""
    results = runs.get(key) or []
    if not results:
      return None
    steps = [r["step_s"] for r in results]
    return {**results[0], "step_s": statistics.median(steps), "step_range": (min(steps), max(steps)),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "runtime_mb": statistics.median(r["runtime_mb"] for r in results),
            "compile_s": statistics.median(r["compile_s"] for r in results), "runs": len(results)}

  tokens = args.batch * args.length
  print(f"\nCPU: {cpu_model()}; batch {args.batch} x {args.length} tokens, vocab {args.vocab}, float32 "
        f"(jax_bf16: bf16 compute), AdamW; per run the median of {args.steps} steps, then the median over "
        f"{args.repeats} runs (range in brackets); load: 1-minute load average before/after the runs\n")
  print("| shape | contender | tokens/s | MFU | x torch eager | x torch.compile | step s [range] | "
        "first step (compile) s | peak RSS MB | runtime MB | load |")
  print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
  for spec in args.shapes.split(","):
    jax_result = median_run((spec, "jax")) or {}
    eager, compiled = median_run((spec, "torch_eager")), median_run((spec, "torch_compile"))
    for contender in contenders:
      r = median_run((spec, contender))
      if r is None:
        continue
      tok_s = tokens / r["step_s"]
      mfu = tok_s * jax_result.get("flops_per_token", float("nan")) / jax_result.get("peak_flops", float("nan"))
      x_eager = eager["step_s"] / r["step_s"] if eager else float("nan")
      x_compiled = compiled["step_s"] / r["step_s"] if compiled else float("nan")
      low, high = r["step_range"]
      load = loads[spec, contender]
      print(f"| {spec} | {contender} | {tok_s:,.0f} | {mfu:.1%} | {x_eager:.2f} | {x_compiled:.2f} | "
            f"{r['step_s']:.3f} [{low:.3f}-{high:.3f}] | {r['compile_s']:.1f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['runtime_mb']:,.0f} | {min(load):.1f}-{max(load):.1f} |")
    if jax_result:
      print(f"\n# {spec}: {jax_result['params']:,} parameters; MFU against {jax_result['peak_flops']:.3g} FLOP/s "
            f"({jax_result['peak_source']})\n")


if __name__ == "__main__":
  main()
