"""Load test of ``lorakit serve``: throughput and latency at 1, 8 and 32 concurrent clients.

Starts ``lorakit serve`` for a run directory on 127.0.0.1 (a free port; loopback only), then
sends chat completions from N client threads at once, for each N, bounded in requests and in
seconds. Reports requests/s, completion tokens/s and p50/p95 latency per concurrency, and checks
that no request is lost or answered twice:

* every request sent gets exactly one HTTP 200 answer (a failure or timeout counts as lost);
* every reply id is unique across the whole test;
* each request carries a unique id in its prompt and ``user`` field, and a filler of ``i``
  words, so its prompt is longer than request ``i - 1``'s; the server reports the prompt
  length of the job it answered (``usage.prompt_tokens``), which must grow strictly with
  ``i``: a reply given to the wrong request would break the order.

    python benchmarks/serve_load.py                       # trains a tiny run first (CPU)
    python benchmarks/serve_load.py --run-dir runs/X --out results.json

Prints one Markdown table and writes JSON (``--out``; the table beside it as ``.md``).
Uses only ``httpx`` (no client-side retries that could hide a lost request).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

QUESTIONS = (
    "What is asthma?",
    "How is high blood pressure treated?",
    "What causes anaemia?",
    "What are the symptoms of diabetes?",
)
SHORT = {
    "training.max_steps": 2,
    "training.eval_steps": 2,
    "training.save_steps": 2,
    "training.logging_steps": 1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_tiny_run(folder: Path) -> Path:
    """A finished tiny run (the default 4-bit tiny preset, 2 steps)."""
    from lorakit.presets import medqa_phi3_tiny

    run_dir = folder / "tiny-run"
    medqa_phi3_tiny.with_overrides(SHORT).run(run_dir, show_progress=False)
    return run_dir


class Server:
    """``lorakit serve`` in a subprocess on 127.0.0.1."""

    def __init__(self, run_dir: Path, *, max_tokens: int, max_batch: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        command = [
            sys.executable,
            "-c",
            "from lorakit.cli import main; main()",
            "serve",
            str(run_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-tokens",
            str(max_tokens),
            "--max-batch",
            str(max_batch),
        ]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                reply = httpx.get(f"{self.url}/health", timeout=2)
                if reply.status_code == 200:
                    return dict(reply.json())
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not start in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_level(
    url: str,
    model: str,
    concurrency: int,
    *,
    requests: int,
    max_seconds: float,
    max_tokens: int,
    timeout_s: float,
    seen_ids: set[str],
) -> dict[str, Any]:
    """Send up to ``requests`` chat completions from ``concurrency`` threads, stopping new
    ones after ``max_seconds``; check that each got exactly one answer of its own."""
    lock = threading.Lock()
    next_index = [0]
    results: dict[int, dict[str, Any]] = {}
    lost: list[str] = []
    stop_at = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def worker(client: httpx.Client) -> None:
        while True:
            with lock:
                i = next_index[0]
                if i >= requests or time.monotonic() >= stop_at:
                    return
                next_index[0] += 1
            ident = f"c{concurrency}-r{i:04d}"
            question = QUESTIONS[i % len(QUESTIONS)]
            content = f"[{ident}] {question} " + " ".join(["please"] * i)
            body = {
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "user": ident,
            }
            begun = time.perf_counter()
            try:
                reply = client.post(f"{url}/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                with lock:
                    lost.append(f"{ident}: {type(exc).__name__}")
                continue
            latency = time.perf_counter() - begun
            if reply.status_code != 200:
                with lock:
                    lost.append(f"{ident}: HTTP {reply.status_code}")
                continue
            data = reply.json()
            with lock:
                if i in results:
                    lost.append(f"{ident}: answered twice")
                results[i] = {
                    "latency_s": latency,
                    "id": data["id"],
                    "prompt_tokens": data["usage"]["prompt_tokens"],
                    "completion_tokens": data["usage"]["completion_tokens"],
                }

    begun = time.perf_counter()
    with (
        httpx.Client(timeout=timeout_s, limits=limits) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        for future in [pool.submit(worker, client) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - begun
    sent = next_index[0]
    ids = [r["id"] for r in results.values()]
    duplicate_ids = len(ids) - len(set(ids)) + len(set(ids) & seen_ids)
    seen_ids.update(ids)
    order = [results[i]["prompt_tokens"] for i in sorted(results)]
    misrouted = sum(1 for a, b in itertools.pairwise(order) if b <= a)
    latencies = [r["latency_s"] for r in results.values()]
    completion = sum(r["completion_tokens"] for r in results.values())
    return {
        "concurrency": concurrency,
        "sent": sent,
        "answered": len(results),
        "lost": len(lost),
        "lost_detail": lost[:10],
        "duplicate_ids": duplicate_ids,
        "misrouted": misrouted,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3),
        "completion_tokens": completion,
        "completion_tokens_per_s": round(completion / wall, 1),
        "p50_latency_s": round(percentile(latencies, 0.5), 3),
        "p95_latency_s": round(percentile(latencies, 0.95), 3),
        "ok": len(results) == sent and not lost and duplicate_ids == 0 and misrouted == 0,
    }


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"`lorakit serve` load test, {record['device']}, model {record['model']}, "
        f"max_tokens {record['max_tokens']}, --max-batch {record['max_batch']}, greedy",
        "",
        "| clients | sent | answered | lost | duplicate / misrouted | requests/s | "
        "completion tokens/s | p50 latency (s) | p95 latency (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in record["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['sent']} | {level['answered']} | "
            f"{level['lost']} | {level['duplicate_ids']} / {level['misrouted']} | "
            f"{level['requests_per_s']:.2f} | {level['completion_tokens_per_s']:.1f} | "
            f"{level['p50_latency_s']:.3f} | {level['p95_latency_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="A finished run (default: train a tiny one).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=int, default=64, help="Most requests per concurrency level."
    )
    parser.add_argument(
        "--max-seconds", type=float, default=40.0, help="Stop sending new requests after this."
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8, help="The server's --max-batch.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds per request.")
    parser.add_argument("--out", type=Path, help="JSON results (the table beside it as .md).")
    args = parser.parse_args(argv)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")

    with tempfile.TemporaryDirectory(prefix="lorakit-serve-load-") as tmp:
        run_dir = args.run_dir or train_tiny_run(Path(tmp))
        server = Server(
            run_dir, max_tokens=args.max_tokens, max_batch=args.max_batch, log=Path(tmp) / "log"
        )
        try:
            health = server.wait_ready()
            model = health["models"][0]
            # One warm-up request (not counted): first-call overheads stay out of the figures.
            httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
                timeout=args.timeout,
            ).raise_for_status()
            seen: set[str] = set()
            levels = []
            for concurrency in args.concurrency:
                level = run_level(
                    server.url,
                    model,
                    concurrency,
                    requests=args.requests,
                    max_seconds=args.max_seconds,
                    max_tokens=args.max_tokens,
                    timeout_s=args.timeout,
                    seen_ids=seen,
                )
                levels.append(level)
                print(json.dumps(level), file=sys.stderr, flush=True)
            after = httpx.get(f"{server.url}/health", timeout=5).json()
        finally:
            server.stop()
    import torch

    record = {
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "model": model,
        "run_dir": str(args.run_dir) if args.run_dir else "tiny run trained by the benchmark",
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
        "requests_per_level": args.requests,
        "max_seconds_per_level": args.max_seconds,
        "server_batches": after.get("batches"),
        "server_rows": after.get("rows"),
        "levels": levels,
        "ok": all(level["ok"] for level in levels),
    }
    table = markdown(record)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
