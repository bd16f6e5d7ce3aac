"""`dist-s2s serve` under load: 1, 8 and 32 concurrent clients sending test2016's sentences, one a request.

    .venv/bin/python benchmarks/serve_load.py --config configs/multi30k.yaml \\
        --checkpoint runs/multi30k/checkpoints/step-00002724.pt --output benchmarks/results/serve-load.json
    .venv/bin/python benchmarks/serve_load.py ... --clients 8 --sentences-per-request 8 \\
        --output benchmarks/results/serve-load-documents.json

Each client sends its share of the split's sentences one request at a time (the way an application calling
the server would; one sentence a request, or `--sentences-per-request` N of them, a document at once) and
waits for each answer; sentences/s is the whole set over the wall time, latency is
each request's. The server is the real command, a process of its own on 127.0.0.1; its memory (RSS) is read
before and after each load. The baseline is `translate`'s decoding of the same sentences in one process, at
the same beam and length penalty, measured before and after the loads in the same run (nothing else running
beside it; the ratios use the mean of the two, both are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil

from dist_s2s.config import load_config
from dist_s2s.decode.translator import Translator
from dist_s2s.evaluate.evaluate import split_rows


@contextmanager
def serving(config: str, checkpoint: str, port: int, overrides: list[str], *, wait_s: float = 300
            ) -> Iterator[tuple[subprocess.Popen, str]]:
    """The real `dist-s2s serve` in a process of its own on 127.0.0.1:`port`, once `/health` answers (or after
    `wait_s`): the process and its URL; stopped on leaving."""
    server_log = tempfile.TemporaryFile("w+")  # read by no one while it runs: a pipe would fill and stall it
    server = subprocess.Popen([sys.executable, "-m", "dist_s2s", "serve", "--config", config, "--checkpoint",
                               checkpoint, "--port", str(port), *overrides], stdout=server_log,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=60)


def post(url: str, sentences: list[str], beam: int) -> tuple[float, bool]:
    body = json.dumps({"sentences": sentences, "beam": beam}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            ok = response.status == 200 and len(json.loads(response.read())["translations"]) == len(sentences)
    except OSError:
        ok = False
    return time.perf_counter() - started, ok


def load(url: str, sentences: list[str], clients: int, beam: int, *, per_request: int = 1) -> dict:
    shares = [sentences[i::clients] for i in range(clients)]

    def client(share: list[str]) -> list[tuple[float, bool]]:
        return [post(url, share[start:start + per_request], beam) for start in range(0, len(share), per_request)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for found in pool.map(client, shares) for r in found]
    seconds = time.perf_counter() - started
    latencies = sorted(latency for latency, _ in results)
    return {"clients": clients, "sentences": len(sentences), "seconds": round(seconds, 2),
            "sentences_per_sec": round(len(sentences) / seconds, 2),
            "p50_ms": round(1000 * statistics.median(latencies)),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]),
            "errors": sum(not ok for _, ok in results)}


def batches_of_clients_rate(translator: Translator, sentences: list[str], beam: int, batch: int) -> float:
    """The most a server can do when its clients hold `batch` sentences in flight together: `translate`'s
    search in one process on batches of `batch` sentences in the split's order (not sorted by length: the
    server batches what arrives together), each decoded alone."""
    sources = [translator.source_ids(s) for s in sentences]
    started = time.perf_counter()
    for start in range(0, len(sources), batch):
        translator.translate_ids(sources[start:start + batch], beam)
    rate = len(sources) / (time.perf_counter() - started)
    print(f"the same search on batches of {batch} in arrival order: {rate:.1f} sentences/s", flush=True)
    return rate


def batching(url: str) -> dict:
    """The server's batching counters so far (GET /health)."""
    with urllib.request.urlopen(url + "/health") as response:
        return json.loads(response.read())["batching"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test2016")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 32, 32],
                        help="one load per number, in this order (32 three times: is the memory flat?)")
    parser.add_argument("--warmup-clients", type=int, default=32,
                        help="one unrecorded load first: the server's kernels for each batch shape are made once "
                             "(its memory grows while they are, then stays); 0: none")
    parser.add_argument("--sentences-per-request", type=int, default=1,
                        help="each client sends this many consecutive sentences of its share in one request "
                             "(an application translating a document at once)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output")
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, overrides)
    beam = config.eval.beam_size
    sentences = split_rows(Path(config.data.out_dir), args.split).column("src_text").to_pylist()

    translator = Translator(config, [Path(args.checkpoint)])  # one copy of the model for every baseline

    def translate_rate() -> float:
        started = time.perf_counter()
        translator.translate(sentences, beam)
        rate = len(sentences) / (time.perf_counter() - started)
        print(f"translate (one process, batches of {config.eval.batch_size}): {rate:.1f} sentences/s", flush=True)
        return rate

    translate_before = translate_rate()
    ceiling = batches_of_clients_rate(translator, sentences, beam, max(args.clients) * args.sentences_per_request)

    with serving(args.config, args.checkpoint, args.port, overrides) as (server, url):
        process = psutil.Process(server.pid)
        warmup = None
        if args.warmup_clients:
            started_mb = round(process.memory_info().rss / 2**20)
            load(url + "/translate", sentences, args.warmup_clients, beam, per_request=args.sentences_per_request)
            warmup = {"clients": args.warmup_clients, "rss_before_mb": started_mb,
                      "rss_after_mb": round(process.memory_info().rss / 2**20)}
            print(f"warm-up, {args.warmup_clients} clients: server RSS {warmup['rss_before_mb']} → "
                  f"{warmup['rss_after_mb']} MB", flush=True)
        rows = []
        for clients in args.clients:
            before, batched = process.memory_info().rss, batching(url)
            row = load(url + "/translate", sentences, clients, beam, per_request=args.sentences_per_request)
            after = batching(url)
            batches = after["batches"] - batched["batches"]
            row.update(rss_before_mb=round(before / 2**20), rss_after_mb=round(process.memory_info().rss / 2**20),
                       vs_translate=round(row["sentences_per_sec"] / translate_before, 2), batches=batches,
                       mean_batch=round((after["sentences"] - batched["sentences"]) / max(1, batches), 2))
            rows.append(row)
            print(f"{clients:>3} clients: {row['sentences_per_sec']:6.1f} sentences/s ({row['vs_translate']:.2f} × "
                  f"translate), p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['errors']} errors, "
                  f"{batches} batches (mean {row['mean_batch']}), server RSS {row['rss_before_mb']} → "
                  f"{row['rss_after_mb']} MB", flush=True)
        totals = batching(url)
    translate_after = translate_rate()  # the machine's speed drifts: the baseline before and after the loads
    translate_mean = (translate_before + translate_after) / 2
    for row in rows:
        row["vs_translate"] = round(row["sentences_per_sec"] / translate_mean, 2)
    result = {"config": args.config, "checkpoint": args.checkpoint, "split": args.split, "beam": beam,
              "length_penalty": config.eval.length_penalty, "serve": vars(config.serve),
              "sentences_per_request": args.sentences_per_request,
              "translate_sentences_per_sec": round(translate_mean, 2),
              "translate_before_after": [round(translate_before, 2), round(translate_after, 2)],
              "batches_of_clients": {"clients": max(args.clients),
                                     "batch": max(args.clients) * args.sentences_per_request,
                                     "sentences_per_sec": round(ceiling, 2)},
              "warmup": warmup, "loads": rows,
              "batching": totals, "overrides": overrides,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch_threads": __import__("torch").get_num_threads()},
              "date": time.strftime("%Y-%m-%d")}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
