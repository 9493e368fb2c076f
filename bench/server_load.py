"""Load test of `condiff serve` (localhost only, bounded in requests and time).

Starts the real server as a child process on a free 127.0.0.1 port, then N concurrent clients send M
``txt2img`` requests each (every request its own seed) and record status and latency. Reports
throughput, p50/p95 latency of the answered requests, the 429 count, whether every request got
exactly one answer and that answer was its own (the seed in ``info`` matches), the server's queue
counters (``/condiff/v1/queue``: submitted = done + refused accounted), and the server's RSS over
the run (sampled from /proc every 0.25 s; at each quarter of the run; "flat" = the second half's peak
within 5% of the first's).

    python bench/server_load.py --clients 4 --requests 6 --out bench/results/server_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from condiff.server.local import local_server  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def client(cid: int, args, base: str, deadline: float, records: list, lock: threading.Lock) -> None:
    session = requests.Session()
    for i in range(args.requests):
        if time.time() > deadline:
            break
        seed = 1000 * cid + i
        body = {"prompt": "a red circle", "steps": args.steps, "width": args.size, "height": args.size, "seed": seed,
                "sampler_name": "Euler"}
        t0 = time.perf_counter()
        try:
            r = session.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=args.timeout)
            status, text = r.status_code, r.text
            retry = r.headers.get("Retry-After")
        except requests.RequestException as err:
            status, text, retry = None, str(err), None
        dt = time.perf_counter() - t0
        own = None
        if status == 200:
            own = json.loads(json.loads(text)["info"])["all_seeds"] == [seed]
        with lock:
            records.append({"client": cid, "request": i, "seed": seed, "status": status, "latency_s": dt, "own": own,
                            "retry_after": retry})
        if status == 429 and args.honour_retry:
            time.sleep(min(float(retry or 1), 2.0))


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return round(xs[k], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-queue", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the server")
    ap.add_argument("--max-seconds", type=float, default=240, help="no new request after this")
    ap.add_argument("--timeout", type=float, default=120, help="per-request HTTP timeout")
    ap.add_argument("--honour-retry", action="store_true", help="sleep Retry-After (≤ 2 s) after a 429")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.clients * args.requests > 500:
        raise SystemExit("bounded load test: at most 500 requests in all")
    with local_server(["--device", args.device, "--max-queue", str(args.max_queue)], threads=args.threads) as (base, proc):
        records, wall, before, after, rss = run(args, base, proc)
    report(args, records, wall, before, after, rss)


def run(args, base: str, proc) -> tuple[list, float, dict, dict, list[float]]:
    """Warm up, then the clients; returns (records, wall seconds, queue counters before/after, RSS samples)."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            v = rss_mb(proc.pid)
            if v is not None:
                samples.append((time.time(), v))
            time.sleep(0.25)

    requests.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "warm-up", "steps": args.steps, "width": args.size,
                                                     "height": args.size, "seed": 0}, timeout=args.timeout)
    before = requests.get(f"{base}/condiff/v1/queue").json()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    records: list = []
    lock = threading.Lock()
    deadline = time.time() + args.max_seconds
    threads = [threading.Thread(target=client, args=(c, args, base, deadline, records, lock)) for c in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = requests.get(f"{base}/condiff/v1/queue").json()
    stop.set()
    sampler.join()
    return records, wall, before, after, [v for _, v in samples]


def report(args, records: list, wall: float, before: dict, after: dict, rss: list[float]) -> None:
    ok = [r for r in records if r["status"] == 200]
    rejected = [r for r in records if r["status"] == 429]
    other = [r for r in records if r["status"] not in (200, 429)]
    keys = [(r["client"], r["request"]) for r in records]
    delta = {k: after[k] - before[k] for k in ("submitted", "rejected", "done", "failed", "cancelled")}
    half = len(rss) // 2
    result = {
        "command": "python bench/server_load.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "requests_sent": len(records),
        "answered_200": len(ok), "rejected_429": len(rejected), "other": [(r["status"]) for r in other],
        "every_request_answered_once": len(keys) == len(set(keys)) == args.clients * args.requests,
        "every_answer_its_own": all(r["own"] for r in ok),
        "server_queue_delta": delta,
        "server_counts_match": delta["done"] == len(ok) and delta["rejected"] == len(rejected)
                               and delta["submitted"] == len(ok) + len(other),
        "wall_s": round(wall, 2),
        "throughput_images_per_s": round(len(ok) / wall, 3) if wall else None,
        "latency_s": {"p50": percentile([r["latency_s"] for r in ok], 0.5),
                      "p95": percentile([r["latency_s"] for r in ok], 0.95),
                      "mean": round(statistics.mean(r["latency_s"] for r in ok), 3) if ok else None,
                      "p50_429": percentile([r["latency_s"] for r in rejected], 0.5)},
        "rss_mb": {"start": round(rss[0], 1) if rss else None, "end": round(rss[-1], 1) if rss else None,
                   "max": round(max(rss), 1) if rss else None,
                   "first_half_max": round(max(rss[:half]), 1) if half else None,
                   "second_half_max": round(max(rss[half:]), 1) if half else None,
                   "at_quarters": [round(rss[min(len(rss) - 1, k * len(rss) // 4)], 1) for k in (1, 2, 3)] + [round(rss[-1], 1)]
                   if rss else None,
                   "samples": len(rss)},
    }
    if half:
        result["rss_flat"] = max(rss[half:]) <= 1.05 * max(rss[:half])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
