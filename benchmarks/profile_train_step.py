"""Where a safejax train step spends its time: XLA op times from a jax.profiler trace.

  python benchmarks/profile_train_step.py [--shape 256x4] [--batch 16] [--length 256] [--vocab 8192]
      [--loss_chunk_tokens 2048 (0: the plain loss)] [--scan true] [--dtype float32]

Builds the same step as benchmarks/bench_train.py (safejax.train.train_step under jax.jit), runs
three warm-up steps, traces three more, and prints the XLA ops (fusions) grouped by kind with
their time per step and share, then the step's wall time against its matmul time (the ops that
run dots: XLA:CPU's `dot`s and the YNNPACK/oneDNN fusions that hold them). Op times are summed
over the threads that ran them, so with 2 cores they can add up to more than the wall time. The
trace itself stays under --trace_dir for TensorBoard/Perfetto.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import shapes  # noqa: E402  the same shapes as the throughput benchmark

STEPS = 3
MATMUL = re.compile(r"dot|ynn|onednn|matmul|gemm|convolution", re.I)
COPY = re.compile(r"copy|transpose", re.I)
# Loops (the layer scan, the chunked loss) span the ops they run: counting them would count twice.
CONTROL_FLOW = re.compile(r"(while|conditional|call)(\.\d+)?$")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", default="256x4", help="DxLAYERS")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--trace_dir", default="/tmp/safejax_profile")
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--loss_chunk_tokens", type=int, default=2048, help="0: the plain loss over full logits")
  parser.add_argument("--scan", default="true", help="scan_layers (true/false)")
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()

  import jax
  import numpy as np
  from flax import nnx

  from safejax import partitioning
  from safejax.model import ModelConfig, build_model
  from safejax.train import OptimizerConfig, train_step

  import time

  config = ModelConfig(vocab_size=args.vocab, scan_layers=args.scan.lower() == "true", dtype=args.dtype,
                       **shapes(args.shape))
  model = build_model(config)
  optimizer = nnx.Optimizer(model, OptimizerConfig(warmup_steps=1).make(10_000), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  step = jax.jit(functools.partial(train_step, graphdef, rules=partitioning.DEFAULT_RULES, z_loss=0.0,
                                   loss_chunk_tokens=args.loss_chunk_tokens), donate_argnums=0)
  b, t = args.batch, args.length
  tokens = np.random.default_rng(0).integers(0, args.vocab, (b, t + 1)).astype(np.int32)
  data = jax.device_put({
      "decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
      "decoder_loss_weights": np.ones((b, t), np.int32), "decoder_segment_ids": np.ones((b, t), np.int32),
      "decoder_positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()})
  for _ in range(STEPS):  # compile and warm up
    state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  wall = []
  for _ in range(STEPS):  # untraced: the tracer's own cost stays out of the wall time
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    wall.append(time.perf_counter() - start)
  jax.profiler.start_trace(args.trace_dir)
  for _ in range(STEPS):
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
  jax.profiler.stop_trace()

  trace = max(Path(args.trace_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
  per_kind: collections.Counter = collections.Counter()
  for event in json.load(gzip.open(trace))["traceEvents"]:
    name = event.get("name", "")
    # Complete events of XLA ops only: not the executor, the Python API, the jit wrapper or loops.
    wrapper = name.startswith(("ThunkExecutor", "CommonPjRt", "$", "jit_", "Pjit")) or CONTROL_FLOW.match(name)
    if event.get("ph") != "X" or "dur" not in event or wrapper:
      continue
    per_kind[re.sub(r"\.\d+$", "", name)] += event["dur"] / 1e3 / STEPS  # us -> ms per step
  total = sum(per_kind.values())
  loss = f"chunked loss ({args.loss_chunk_tokens} tokens per chunk)" if args.loss_chunk_tokens else "plain loss"
  print(f"{args.shape}, batch {b} x {t}, vocab {args.vocab}, {args.dtype}, {loss}, "
        f"{'scanned' if config.scan_layers else 'looped'} layers: XLA op time {total:.0f} ms per step ({trace})")
  print("| op kind | ms/step | share |\n|---|---:|---:|")
  for kind, ms in per_kind.most_common(args.top):
    print(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f}% |")
  matmul = sum(ms for kind, ms in per_kind.items() if MATMUL.search(kind))
  copies = sum(ms for kind, ms in per_kind.items() if COPY.search(kind))
  step_ms = 1000 * sorted(wall)[len(wall) // 2]
  print(f"\nstep {step_ms:.0f} ms (median wall, untraced); op time: matmuls {matmul:.0f} ms ({100 * matmul / total:.0f}%), "
        f"copies/transposes {copies:.0f} ms ({100 * copies / total:.0f}%); op time / matmul time = {total / matmul:.2f}")


if __name__ == "__main__":
  main()
