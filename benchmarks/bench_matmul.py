"""f32 matmul throughput, XLA:CPU (jax.jit) against torch, on the shapes of a train step.

  python benchmarks/bench_matmul.py

Explains most of bench_train.py's gap on CPU: the matmuls of a 512-wide, 8192-vocab Llama at
batch 16 x 256 tokens. Each contender gets both cores (torch.set_num_threads(2)); median of 20.
"""

from __future__ import annotations

import time

SHAPES = [(4096, 512, 1536), (4096, 1536, 512), (4096, 512, 8192), (4096, 256, 8192)]  # (M, K, N)


def median_seconds(run, repeats: int = 20) -> float:
  run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def main() -> None:
  import jax
  import numpy as np
  import torch

  torch.set_num_threads(2)
  matmul = jax.jit(lambda x, y: x @ y)
  print("| M x K x N | jax GFLOP/s | torch GFLOP/s | jax / torch |\n|---|---:|---:|---:|")
  for m, k, n in SHAPES:
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    ja, jb = jax.device_put(a), jax.device_put(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    jax_s = median_seconds(lambda: matmul(ja, jb).block_until_ready())
    torch_s = median_seconds(lambda: ta @ tb)
    flops = 2 * m * k * n
    print(f"| {m}x{k}x{n} | {flops / jax_s / 1e9:.0f} | {flops / torch_s / 1e9:.0f} | {torch_s / jax_s:.2f} |")


if __name__ == "__main__":
  main()
