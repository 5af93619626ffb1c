"""Where a decoding call's time goes, by XLA operation, and what compiling it costs.

  python benchmarks/profile_decoding.py [--method greedy|beam|safebeam] [--batch 8] [--new_tokens 128]
      [--model gin/models/demo.gin] [--vocab_size 4096] [--top 12] [--compile_layers 4,16,32]

The demo model with random weights decodes 32-token prompts (EOS suppressed, so every call makes
--new_tokens steps). One warm call runs under `jax.profiler`; the table sums the trace's events by
operation kind (an XLA fusion's name less its number: `ynn_fusion` is a matmul YNNPACK runs with
its neighbours, `transpose_copy_fusion` a layout copy, `wrapped_dynamic-slice` a slice copied out
of a stacked array) and lists the costliest single operations. --compile_layers times
`DecodeCall.compile` for models of those depths (greedy and beam search, batch --batch). The header
names the CPU and the load average.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--method", default="greedy", choices=["greedy", "beam", "safebeam"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--model", default="gin/models/demo.gin")
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--top", type=int, default=12, help="how many single operations to list")
  parser.add_argument("--compile_layers", type=lambda v: [int(n) for n in v.split(",")], default=[],
                      help="model depths whose decoder compile time to measure")
  args = parser.parse_args()

  import dataclasses

  import jax

  import safejax  # noqa: F401  (sets the CPU XLA flags before JAX starts its backend)
  from bench_decoding import cpu_model, model_config
  from safejax.decoding import runner
  from safejax.decoding.search import SuppressToken
  from safejax.model import build_model

  config = model_config(argparse.Namespace(model=args.model, dtype="float32", vocab_size=args.vocab_size))
  options = {"greedy": {}, "beam": {"beam_size": 4},
             "safebeam": {"beam_size": 4, "num_expand": 4, "drop_fraction": 0.5, "tag_id": 4}}
  prompts = [[3] + list(range(10, 41))] * args.batch

  def prepare(model, method):
    return runner.prepare(model, prompts, method=method, max_new_tokens=args.new_tokens, eos_id=1,
                          logits_processor=SuppressToken(1), **options[method])

  print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}")
  call = prepare(build_model(config), args.method)
  jax.block_until_ready(call.run())  # compile and warm up
  start = time.perf_counter()
  jax.block_until_ready(call.run())
  print(f"{args.method}, batch {args.batch}, {args.new_tokens} new tokens: warm call {1e3 * (time.perf_counter() - start):.0f} ms")
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      jax.block_until_ready(call.run())
    events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
  by_op, calls = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get("name", "")
    # Python frames, runtime wrappers and control flow (a while loop's event spans its body's) are
    # not operations of their own.
    wrapper = name.startswith(("$", "while", "conditional", "call")) or any(
        word in name for word in ("Thunk", "Slinky", "trace", "Pjit", "PjRt"))
    if event.get("ph") != "X" or wrapper:
      continue
    by_op[name] += event["dur"] / 1e3
    calls[name] += 1
  by_kind = collections.Counter()
  for name, ms in by_op.items():
    by_kind[re.sub(r"[._]\d+$", "", name)] += ms
  print("\n| operation kind | ms | share |\n|---|---:|---:|")
  total = sum(by_kind.values())
  for kind, ms in by_kind.most_common(10):
    print(f"| {kind} | {ms:.1f} | {100 * ms / total:.0f} % |")
  print(f"| all operations | {total:.1f} | |")
  print("\n| operation | ms | calls |\n|---|---:|---:|")
  for name, ms in by_op.most_common(args.top):
    print(f"| {name} | {ms:.1f} | {calls[name]} |")

  if args.compile_layers:
    print("\n| layers | greedy compile s | beam search compile s |\n|---:|---:|---:|")
    for layers in args.compile_layers:
      model = build_model(dataclasses.replace(config, num_layers=layers))
      seconds = []
      for method in ("greedy", "beam"):
        start = time.perf_counter()
        prepare(model, method).compile()
        seconds.append(time.perf_counter() - start)
      print(f"| {layers} | {seconds[0]:.1f} | {seconds[1]:.1f} |")


if __name__ == "__main__":
  main()
