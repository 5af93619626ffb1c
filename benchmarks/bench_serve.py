"""`safejax serve` under concurrent clients: batched vs one request per model call, and greedy
requests beside sampling requests that each bring new settings.

  python benchmarks/bench_serve.py [--model gin/models/demo.gin] [--clients 16] [--requests 4]
      [--max_tokens 32] [--max_batch_size 16] [--batch_window_ms 5] [--repeats 3]
  python benchmarks/bench_serve.py --mode mixed [--distinct 10] [--greedy_clients 2]

Writes a model directory with random weights (the shapes of --model) and a SentencePiece vocabulary
trained on synthetic sentences, then starts `safejax serve` twice as a subprocess: batched
(--max_batch_size, --batch_window_ms) and unbatched (max_batch_size 1, no window). Against each,
--clients threads send --requests requests each, all at once, for two workloads:
  generate: greedy completions of --max_tokens tokens from distinct prompts;
  score:    lm-eval-style log-likelihood requests (echo, max_tokens 0, logprobs 1).
Warm-up rounds at 1, 2, 4, ... clients compile the programs first; of --repeats timed rounds the
fastest is reported. requests/s and tokens/s (completion tokens for generate, scored prompt tokens
for score) are over that round's wall time; the model calls come from the server's /stats.

--mode mixed: the server runs in this process (so JAX's own compile events can be counted) with
the same batching settings. After a warm-up (greedy at 1, 2, ... --greedy_clients concurrent
clients, one sampling request), --distinct sampling requests, each with its own temperature
(0.3 + i * 0.0137), top_p and seed, are sent at once while --greedy_clients clients send greedy
requests back to back until every sampling request is answered and --greedy_requests greedy ones
were sent. Printed: the XLA compilations during that round (JAX's backend-compile events), the
server's compiled programs where it reports them, the greedy requests' p50 / p99 latency, and the
resident set's growth. A greedy request that waits behind other requests' compilations shows it
in its p99.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
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


def cpu_model() -> str:
  """The CPU's model name (as lscpu gives it) and the number of logical CPUs."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return f"{names[0]}, {len(names)} logical CPUs" if names else f"{os.cpu_count()} CPUs"


def rss_mb() -> float:
  """This process's current resident set (not the peak: growth is what a leak shows)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(values: list[float], q: float) -> float:
  """The q-th percentile (nearest rank) of `values`."""
  ordered = sorted(values)
  return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def mixed(args, model_dir: str) -> None:
  """Greedy requests beside sampling requests with distinct settings (see the module docstring)."""
  import jax

  from safejax.checkpoints import load_for_inference
  from safejax.serve.app import SafejaxServer, ServerConfig, running

  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **kw: compiles.append(seconds) if event == "/jax/core/compile/backend_compile_duration"
      else None)
  model, vocab = load_for_inference(model_dir)
  config = ServerConfig(max_batch_size=args.max_batch_size, batch_window_ms=args.batch_window_ms, max_n=1)
  server = SafejaxServer(model, vocab, "bench", config)
  prompts = sentences(4 * args.distinct + 64, 2)
  greedy = lambda i: {"model": "bench", "prompt": prompts[i % 64], "max_tokens": args.max_tokens, "temperature": 0}
  sampled = [{"model": "bench", "prompt": prompts[64 + i], "max_tokens": args.max_tokens,
              "temperature": round(0.3 + i * 0.0137, 4), "top_p": round(0.95 - i * 0.01, 4), "seed": 1000 + i}
             for i in range(args.distinct)]
  with running(server) as url, httpx.Client(timeout=600) as client:
    def send(body):
      start = time.perf_counter()
      client.post(f"{url}/completions", json=body).raise_for_status()
      return time.perf_counter() - start

    for warm_clients in sorted({min(2**i, args.greedy_clients) for i in range(args.greedy_clients.bit_length() + 1)}):
      load(url.removesuffix("/v1"), [greedy(i) for i in range(4 * warm_clients)], warm_clients)
    send({**sampled[0], "temperature": 0.9, "top_p": 1.0, "seed": 1})
    compiles.clear()
    rss_before = rss_mb()
    done = threading.Event()
    latencies: list[float] = []

    def greedy_client(offset):
      i = offset
      while not done.is_set() or i < args.greedy_requests:
        latencies.append(send(greedy(i)))
        i += args.greedy_clients

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.greedy_clients + args.distinct) as pool:
      greedy_futures = [pool.submit(greedy_client, c) for c in range(args.greedy_clients)]
      sample_latencies = list(pool.map(send, sampled))
      done.set()
      for future in greedy_futures:
        future.result()
    seconds = time.perf_counter() - start
    engine = httpx.get(f"{url.removesuffix('/v1')}/stats").json()["engine"]
  programs = engine.get("compiled_programs", "not reported")
  print(f"\nmixed: {args.distinct} sampling requests with distinct temperature / top_p / seed, beside "
        f"{args.greedy_clients} greedy clients; {args.max_tokens} tokens each; max_batch_size {args.max_batch_size}, "
        f"window {args.batch_window_ms} ms; {cpu_model()}\n")
  print("| round s | XLA compilations | compile s | server's compiled programs | greedy requests | greedy p50 ms | "
        "greedy p99 ms | sampling p50 ms | RSS growth MB |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  print(f"| {seconds:.1f} | {len(compiles)} | {sum(compiles):.1f} | {programs} | {len(latencies)} | "
        f"{1000 * statistics.median(latencies):.0f} | {1000 * percentile(latencies, 99):.0f} | "
        f"{1000 * statistics.median(sample_latencies):.0f} | {rss_mb() - rss_before:.0f} |")


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
  parser.add_argument("--mode", choices=("throughput", "mixed"), default="throughput")
  parser.add_argument("--distinct", type=int, default=10, help="mixed: sampling requests, each its own settings")
  parser.add_argument("--greedy_clients", type=int, default=2, help="mixed: clients sending greedy requests")
  parser.add_argument("--greedy_requests", type=int, default=20, help="mixed: at least this many greedy requests")
  args = parser.parse_args()

  sys.path.insert(0, REPO)
  results: dict[tuple[str, str], dict] = {}
  with tempfile.TemporaryDirectory() as model_dir:
    write_model(model_dir, args.model, args.vocab_size)
    if args.mode == "mixed":
      mixed(args, model_dir)
      return
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
