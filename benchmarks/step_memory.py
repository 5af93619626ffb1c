"""Compiled memory and compile time of a train step: plain vs chunked loss, scanned vs looped layers.

  python benchmarks/step_memory.py                        # SmolLM2-360M shapes, vocab 49,152, batch 4 x 1024
  python benchmarks/step_memory.py --model gin/models/smollm2_135m.gin --batch 8 --length 512 --remat full
  python benchmarks/step_memory.py --model gin/models/demo.gin --vocab_size 4096 --layers 4,16,32 \
      --scan true,false --chunks 2048                      # compile time against depth

XLA's own accounting of the jitted safejax.train.train_step (`compiled.memory_analysis()`), built
from abstract shapes (nothing is allocated, so it fits any machine): the arguments (parameters,
optimizer state, batch), the temporaries the step needs on top of them, and the peak of both
(arguments + outputs - donated aliases + temporaries). Also prints the compile time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(args):
  import gin

  from safejax.model import ModelConfig

  gin.parse_config_files_and_bindings([os.path.join(REPO, args.model)], [], skip_unknown=True)
  config = ModelConfig()
  gin.clear_config()
  overrides = {k: v for k, v in (("dtype", args.dtype), ("remat", args.remat)) if v}
  return dataclasses.replace(config, **overrides).with_vocab_size(args.vocab_size)


def compiled_step(config, batch: int, length: int, loss_chunk_tokens: int):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from safejax import partitioning
  from safejax.model import build_model
  from safejax.train import OptimizerConfig, train_step

  tx = OptimizerConfig().make(1000)
  build = lambda: (lambda m: (m, nnx.Optimizer(m, tx, wrt=nnx.Param)))(build_model(config))
  graphdef, state = nnx.split(nnx.eval_shape(build))
  data = {k: jax.ShapeDtypeStruct((batch, length), jnp.int32) for k in (
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
      "decoder_positions")}
  step = jax.jit(functools.partial(train_step, graphdef, rules=partitioning.DEFAULT_RULES, z_loss=1e-4,
                                   loss_chunk_tokens=loss_chunk_tokens), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, data).compile()
  return compiled, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="gin/models/smollm2_360m.gin")
  parser.add_argument("--vocab_size", type=int, default=49152, help="used when the gin file sets none")
  parser.add_argument("--layers", default="", help="comma-separated layer counts ('' keeps the gin file's)")
  parser.add_argument("--scan", default="true", help="comma-separated scan_layers values (true,false)")
  parser.add_argument("--dtype", default="float32", help="compute dtype ('' keeps the gin file's)")
  parser.add_argument("--remat", default="", help="none | full | dots ('' keeps the gin file's)")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--chunks", default="0,2048", help="loss_chunk_tokens values; 0 is the plain loss")
  args = parser.parse_args()

  import jax

  base = model_config(args)
  gib = 2.0**30
  print(f"{args.model}: d={base.embed_dim}, vocab {base.vocab_size}, compute {base.dtype}, remat {base.remat}; "
        f"batch {args.batch} x {args.length}; jax {jax.__version__} on {jax.devices()[0].device_kind}\n")
  print("| layers | parameters | layers run by | loss | arguments GiB | temporaries GiB | peak GiB | compile s |")
  print("|---:|---:|---|---|---:|---:|---:|---:|")
  layer_counts = [int(n) for n in args.layers.split(",")] if args.layers else [base.num_layers]
  compiled_step(dataclasses.replace(base, num_layers=1), 1, 8, 0)  # one-time start-up costs stay out of the table
  for num_layers in layer_counts:
    for scan in (v.strip().lower() == "true" for v in args.scan.split(",")):
      config = dataclasses.replace(base, num_layers=num_layers, scan_layers=scan)
      for chunk in (int(c) for c in args.chunks.split(",")):
        compiled, seconds = compiled_step(config, args.batch, args.length, chunk)
        m = compiled.memory_analysis()
        peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        loss = "plain (full logits)" if chunk == 0 else f"chunked, {chunk} tokens per chunk"
        print(f"| {num_layers} | {config.num_params():,} | {'scan' if scan else 'Python loop'} | {loss} | "
              f"{m.argument_size_in_bytes / gib:.2f} | {m.temp_size_in_bytes / gib:.2f} | {peak / gib:.2f} | "
              f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
  main()
