"""Throughput and latency of `cmhash serve` over a 1M-code index, under concurrent requests.

    python benchmarks/serve_load.py [--n 1000000 --bits 64 --requests 2000 --concurrency 8
                                     --k 10 --batch 1 --query vectors --seed 0
                                     --index IDX --model M --workdir DIR --json out.json]

Setup (skipped with ``--index`` and ``--model``): BATCH is fitted (``--bits``, seeded) on 2,000
synthetic CLIP-like pairs (128-d unit vectors around 10 class centres, image and text), and
``--n`` database image vectors of the same kind are generated and encoded in chunks of
100,000 into an index bundle with integer ids (``cmhash.cli_service.empty_bundle``, what
``cmhash index build`` writes). Then `cmhash serve` is started on a free port of 127.0.0.1
(a subprocess; the script waits for its "listening" line, at most 120 s) and
``--requests`` POST /query requests (each ``--batch`` text vectors, or their packed codes with
``--query codes``, at ``--k``) are sent from ``--concurrency`` threads, each with its own
keep-alive connection (http.client), after 20 warm-up requests that are not counted.
Reported: requests/s (requests / wall time), p50 / p99 / max latency, the number of failed
requests (non-200 or a connection error; must be 0) and the load average (the machine may be
shared). Only loopback traffic; the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
DIM, N_CLASSES, N_TRAIN, CHUNK = 128, 10, 2000, 100_000


def clip_like(rng, centres, n):
    classes = rng.integers(0, len(centres), n)
    X = centres[classes] + 1.0 * rng.standard_normal((n, centres.shape[1]))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


def build(workdir: Path, n: int, bits: int, seed: int):
    """Fit the model and build the n-item bundle; returns (index path, model path, queries)."""
    from cmhash import make_hasher
    from cmhash.cli_service import database_task, empty_bundle

    rng = np.random.default_rng(seed)
    c_img = rng.standard_normal((N_CLASSES, DIM))
    c_txt = rng.standard_normal((N_CLASSES, DIM))
    classes = rng.integers(0, N_CLASSES, N_TRAIN)
    noise = lambda: rng.standard_normal((N_TRAIN, DIM))  # noqa: E731
    img = c_img[classes] + noise()
    txt = c_txt[classes] + noise()
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    t0 = time.perf_counter()
    hasher = make_hasher("batch", n_bits=bits, n_anchors=300, random_state=seed)
    hasher.fit(img, txt, np.eye(N_CLASSES)[classes])
    model = workdir / "model.npz"
    hasher.save(model)
    t1 = time.perf_counter()
    index = empty_bundle(hasher, "image", bits)
    task = database_task(hasher, "image")
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        codes = hasher.encode(clip_like(rng, c_img, m), "image", task=task)
        index.add(codes, ids=np.arange(start, start + m, dtype=np.int64) + 10**9)
    path = workdir / "db.idx"
    index.save(path)
    t2 = time.perf_counter()
    queries = clip_like(rng, c_txt, 1000)
    print(f"setup: fit {t1 - t0:.1f} s, encode + index {n} items {t2 - t1:.1f} s",
          file=sys.stderr)
    return path, model, queries


def start_server(index, model, timeout=120.0):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    proc = subprocess.Popen([sys.executable, "-m", "cmhash.cli", "serve", "--index", str(index),
                             "--model", str(model), "--host", "127.0.0.1", "--port", "0",
                             "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines = queue.Queue()

    def read():
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            raise RuntimeError(f"cmhash serve exited: {''.join(seen)}")
        seen.append(line)
        if "listening on http://127.0.0.1:" in line:
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
            return proc, port
    proc.kill()
    raise RuntimeError(f"cmhash serve not ready in {timeout} s: {''.join(seen)}")


def stop_server(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def run_load(port, bodies, concurrency):
    """Send every body (bytes) from ``concurrency`` threads; latencies (s) and failures."""
    local = threading.local()

    def one(body):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t = time.perf_counter()
        try:
            conn.request("POST", "/query", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            ok = resp.status == 200 and b'"results"' in data
        except (OSError, http.client.HTTPException):
            local.conn = None
            ok = False
        return time.perf_counter() - t, ok

    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        start = time.perf_counter()
        results = list(ex.map(one, bodies))
        wall = time.perf_counter() - start
    lat = np.array([r[0] for r in results])
    failed = sum(not r[1] for r in results)
    return wall, lat, failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1, help="query vectors per request")
    ap.add_argument("--query", choices=["vectors", "codes"], default="vectors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", help="an existing bundle (with --model): skip the setup")
    ap.add_argument("--model")
    ap.add_argument("--workdir", help="where to write the model and bundle (default: a "
                                      "temporary directory, removed at the end)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.batch < 1:
        ap.error("--requests, --concurrency and --batch must be >= 1")
    if (args.index is None) != (args.model is None):
        ap.error("--index and --model go together")
    tmp = None
    if args.index:
        index, model = Path(args.index), Path(args.model)
        rng = np.random.default_rng(args.seed)
        from cmhash.base import load
        d = load(model).n_features_[1][0]
        queries = rng.standard_normal((1000, d)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)   # unit vectors, as CLIP
    else:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="cmhash-serve-load-")
            workdir = Path(tmp.name)
        index, model, queries = build(workdir, args.n, args.bits, args.seed)
    from cmhash.base import load
    from cmhash.cli_service import query_task
    from cmhash.codes import pack_codes
    hasher = load(model)
    rng = np.random.default_rng(args.seed + 1)

    def body():
        X = queries[rng.integers(0, len(queries), args.batch)]
        if args.query == "codes":
            codes = pack_codes(hasher.encode(X, "text", task=query_task(hasher, "text",
                                                                        "image")))
            doc = {"codes": [bytes(c).hex() for c in codes], "k": args.k}
        else:
            doc = {"modality": "text", "vectors": X.tolist(), "k": args.k}
        return json.dumps(doc).encode()

    bodies = [body() for _ in range(args.requests)]
    warm = [body() for _ in range(20)]
    proc, port = start_server(index, model)
    try:
        run_load(port, warm, args.concurrency)
        load_before = os.getloadavg()
        wall, lat, failed = run_load(port, bodies, args.concurrency)
        load_after = os.getloadavg()
    finally:
        stop_server(proc)
        if tmp is not None:
            tmp.cleanup()
    ms = lat * 1000
    out = {
        "n": args.n if not args.index else None, "bits": hasher.n_bits, "k": args.k,
        "requests": args.requests, "concurrency": args.concurrency, "batch": args.batch,
        "query": args.query, "requests_per_s": args.requests / wall,
        "queries_per_s": args.requests * args.batch / wall,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                       "max": float(ms.max())},
        "failed": int(failed), "wall_s": wall,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
