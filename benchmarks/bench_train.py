"""Training throughput: safejax's train step against PyTorch (transformers' LlamaForCausalLM).

  python benchmarks/bench_train.py                          # d=256/4 layers and d=512/8 layers
  python benchmarks/bench_train.py --shapes 256x4 --steps 20

Same architecture and shapes on both sides (RMSNorm, RoPE, SwiGLU, GQA, tied embeddings), AdamW,
float32, one batch of B x T tokens reused (input cost excluded). Each contender runs in its own
subprocess so its peak memory (max RSS) is its own; the JAX step is safejax.train.train_step under
jax.jit exactly as the trainer runs it. Reported: tokens/s (median step time after warm-up), MFU
against a measured f32 matmul peak of this machine, peak RSS, and ratios against PyTorch eager.
Needs the `reference` extra (torch 2.13 CPU, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def shapes(spec: str) -> dict:
  d, layers = (int(x) for x in spec.split("x"))
  return dict(embed_dim=d, num_layers=layers, num_heads=d // 64, num_kv_heads=max(1, d // 128), head_dim=64,
              mlp_dim=int(d * 8 / 3) // 64 * 64)


def run_jax(spec: str, batch: int, length: int, vocab: int, steps: int) -> dict:
  import functools

  import jax
  import numpy as np
  from flax import nnx

  from safejax import partitioning
  from safejax.model import ModelConfig, build_model
  from safejax.train import OptimizerConfig, peak_flops_per_device, train_step

  cfg = ModelConfig(vocab_size=vocab, **shapes(spec))
  model = build_model(cfg)
  optimizer = nnx.Optimizer(model, OptimizerConfig(warmup_steps=1).make(10_000), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  step = jax.jit(functools.partial(train_step, graphdef, rules=partitioning.DEFAULT_RULES, z_loss=0.0),
                 donate_argnums=0)
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
          "peak_source": source}


def run_torch(spec: str, batch: int, length: int, vocab: int, steps: int, compiled: bool) -> dict:
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

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
          "threads": torch.get_num_threads()}


def child(args) -> None:
  if args.contender == "jax":
    result = run_jax(args.shape, args.batch, args.length, args.vocab, args.steps)
  else:
    result = run_torch(args.shape, args.batch, args.length, args.vocab, args.steps, args.contender == "torch_compile")
  result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print("RESULT " + json.dumps(result))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", default="256x4,512x8", help="comma-separated DxLAYERS")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--contenders", default="jax,torch_eager,torch_compile")
  parser.add_argument("--contender", help=argparse.SUPPRESS)
  parser.add_argument("--shape", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.contender:
    return child(args)

  rows = []
  for spec in args.shapes.split(","):
    results = {}
    for contender in args.contenders.split(","):
      command = [sys.executable, __file__, "--contender", contender, "--shape", spec, "--batch", str(args.batch),
                 "--length", str(args.length), "--vocab", str(args.vocab), "--steps", str(args.steps)]
      out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
      if out.returncode != 0:
        print(f"{contender} {spec} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        continue
      results[contender] = json.loads(out.stdout.split("RESULT ", 1)[1])
    tokens = args.batch * args.length
    jax_result = results.get("jax", {})
    for contender, r in results.items():
      tok_s = tokens / r["step_s"]
      mfu = tok_s * jax_result.get("flops_per_token", float("nan")) / jax_result.get("peak_flops", float("nan"))
      eager = results.get("torch_eager")
      ratio = (eager["step_s"] / r["step_s"]) if eager else float("nan")
      rows.append((spec, contender, tok_s, mfu, ratio, r["compile_s"], r["peak_rss_mb"]))
    if jax_result:
      print(f"# {spec}: {jax_result['params']:,} parameters; MFU against {jax_result['peak_flops']:.3g} FLOP/s "
            f"({jax_result['peak_source']})")
  print(f"\nbatch {args.batch} x {args.length} tokens, vocab {args.vocab}, float32, AdamW, median of {args.steps} steps\n")
  print("| shape | contender | tokens/s | MFU | x torch eager | first step (compile) s | peak RSS MB |")
  print("|---|---|---|---|---|---|---|")
  for spec, contender, tok_s, mfu, ratio, compile_s, rss in rows:
    print(f"| {spec} | {contender} | {tok_s:,.0f} | {mfu:.1%} | {ratio:.2f} | {compile_s:.1f} | {rss:,.0f} |")


if __name__ == "__main__":
  main()
