"""`safejax serve` under concurrent clients, side by side: batched vs one request per model call.

  python benchmarks/bench_serve.py [--model gin/models/demo.gin] [--clients 16] [--requests 4]
      [--max_tokens 32] [--max_batch_size 16] [--batch_window_ms 5] [--repeats 3]

Writes a model directory with random weights (the shapes of --model) and a SentencePiece vocabulary
trained on synthetic sentences, then starts `safejax serve` twice as a subprocess: batched
(--max_batch_size, --batch_window_ms) and unbatched (max_batch_size 1, no window). Against each,
--clients threads send --requests requests each, all at once, for two workloads:
  generate: greedy completions of --max_tokens tokens from distinct prompts;
  score:    lm-eval-style log-likelihood requests (echo, max_tokens 0, logprobs 1).
Warm-up rounds at 1, 2, 4, ... clients compile the programs first; of --repeats timed rounds the
fastest is reported. requests/s and tokens/s (completion tokens for generate, scored prompt tokens
for score) are over that round's wall time; the model calls come from the server's /stats.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import subprocess
import sys
import tempfile
import time

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("river bird library teacher council farmer club neighbour orchestra engineer watched described repaired "
         "painted measured celebrated explained visited morning light wooden bridge autumn harvest ancient map "
         "school garden bright comet village market long letter sunset care town rain spring").split()


def sentences(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "." for _ in range(n)]


def write_model(model_dir: str, model_gin: str, vocab_size: int) -> None:
  """A checkpoint directory as `safejax train` leaves it, with random parameters."""
  import gin
  import orbax.checkpoint as ocp
  from flax import nnx

  from safejax import checkpoints
  from safejax.model import ModelConfig, build_model
  from safejax.vocab import train_sentencepiece

  vocab = train_sentencepiece(sentences(5000, 0), os.path.join(model_dir, "bench_vocab.model"), vocab_size=vocab_size)
  gin.parse_config_files_and_bindings([os.path.join(REPO, model_gin)], [], skip_unknown=True)
  config = ModelConfig().with_vocab_size(vocab.vocab_size)
  gin.clear_config()
  checkpoints.write_model_files(model_dir, config, vocab)
  manager = checkpoints.checkpoint_manager(model_dir, async_save=False)
  manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(nnx.state(build_model(config)))))
  manager.close()
  print(f"model {model_gin}: {config.num_params():,} parameters, vocabulary {vocab.vocab_size}", flush=True)


class Server:
  """`safejax serve` in a subprocess, for the duration of a with block."""

  def __init__(self, model_dir: str, port: int, max_batch_size: int, batch_window_ms: float):
    self.url = f"http://127.0.0.1:{port}"
    self.command = [sys.executable, "-m", "safejax.cli", "serve", f"--gin.serve.checkpoint_dir='{model_dir}'",
                    f"--gin.serve.port={port}", "--gin.serve.model_name='bench'",
                    f"--gin.ServerConfig.max_batch_size={max_batch_size}",
                    f"--gin.ServerConfig.batch_window_ms={batch_window_ms}", "--gin.ServerConfig.max_n=1"]

  def __enter__(self) -> "Server":
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"safejax serve exited: {self.process.stderr.read()[-2000:]}")
      try:
        if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
          return self
      except httpx.TransportError:
        time.sleep(0.5)
    raise TimeoutError("safejax serve did not answer /health within 300 s")

  def __exit__(self, *exc) -> None:
    self.process.terminate()
    self.process.wait(timeout=60)

  def stats(self) -> dict:
    return httpx.get(f"{self.url}/stats").json()["engine"]


def load(url: str, bodies: list[dict], clients: int) -> tuple[float, list[dict]]:
  """Sends every body, `clients` at a time; returns (wall seconds, responses)."""
  with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
    def send(body):
      response = client.post(f"{url}/v1/completions", json=body)
      response.raise_for_status()
      return response.json()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      responses = list(pool.map(send, bodies))
    return time.perf_counter() - start, responses


def workloads(args) -> dict[str, list[dict]]:
  prompts = sentences(args.clients * args.requests, 1)
  return {
      "generate": [{"model": "bench", "prompt": p, "max_tokens": args.max_tokens, "temperature": 0} for p in prompts],
      "score": [{"model": "bench", "prompt": p, "max_tokens": 0, "echo": True, "logprobs": 1} for p in prompts],
  }


def measure(server: Server, bodies: list[dict], clients: int, workload: str, repeats: int) -> dict:
  """The best of `repeats` timed rounds, after warm-up rounds at 1, 2, 4, ... clients (which
  compile the programs of each batch size; a round that still compiles one is not the best)."""
  for warm_clients in sorted({min(2**i, clients) for i in range(clients.bit_length() + 1)}):
    load(server.url, bodies[:4 * warm_clients], warm_clients)
  best = None
  for _ in range(repeats):
    before = server.stats()
    seconds, responses = load(server.url, bodies, clients)
    after = server.stats()
    if best is None or seconds < best[0]:
      best = seconds, responses, before, after
  seconds, responses, before, after = best
  usage = "completion_tokens" if workload == "generate" else "prompt_tokens"
  tokens = sum(r["usage"][usage] for r in responses)
  kind = "generate" if workload == "generate" else "score"
  batches = after[f"{kind}_batches"] - before[f"{kind}_batches"]
  return {"requests_per_s": len(bodies) / seconds, "tokens_per_s": tokens / seconds, "seconds": seconds,
          "batches": batches, "items_per_batch": (after[f"{kind}_items"] - before[f"{kind}_items"]) / max(batches, 1),
          "texts": [c["text"] for r in responses for c in r["choices"]]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="gin/models/demo.gin", help="a gin file binding ModelConfig")
  parser.add_argument("--vocab_size", type=int, default=1024)
  parser.add_argument("--clients", type=int, default=16)
  parser.add_argument("--requests", type=int, default=4, help="per client")
  parser.add_argument("--max_tokens", type=int, default=32)
  parser.add_argument("--max_batch_size", type=int, default=16)
  parser.add_argument("--batch_window_ms", type=float, default=5.0)
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is reported")
  parser.add_argument("--port", type=int, default=18731)
  args = parser.parse_args()

  sys.path.insert(0, REPO)
  results: dict[tuple[str, str], dict] = {}
  with tempfile.TemporaryDirectory() as model_dir:
    write_model(model_dir, args.model, args.vocab_size)
    settings = {"batched": (args.max_batch_size, args.batch_window_ms), "unbatched": (1, 0.0)}
    for name, (batch_size, window) in settings.items():
      with Server(model_dir, args.port, batch_size, window) as server:
        for workload, bodies in workloads(args).items():
          results[name, workload] = measure(server, bodies, args.clients, workload, args.repeats)
          print(f"{name:9} {workload:8} {results[name, workload]['requests_per_s']:8.1f} requests/s", flush=True)

  print(f"\n{args.clients} concurrent clients x {args.requests} requests; generate: greedy, {args.max_tokens} tokens; "
        f"score: echo + logprobs; {os.cpu_count()} CPU cores; batched = max_batch_size {args.max_batch_size}, "
        f"window {args.batch_window_ms} ms\n")
  print("| workload | server    | requests/s | tokens/s | model calls | requests per call |")
  print("|----------|-----------|-----------:|---------:|------------:|------------------:|")
  for (name, workload), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"| {workload:8} | {name:9} | {r['requests_per_s']:10.1f} | {r['tokens_per_s']:8.0f} | {r['batches']:11d} | "
          f"{r['items_per_batch']:17.1f} |")
  print()
  for workload in ("generate", "score"):
    batched, unbatched = results["batched", workload], results["unbatched", workload]
    same = "identical" if batched["texts"] == unbatched["texts"] else "DIFFERENT"
    print(f"{workload}: batched / unbatched = {batched['requests_per_s'] / unbatched['requests_per_s']:.2f}x "
          f"requests/s; texts {same}")


if __name__ == "__main__":
  main()
