"""Queries/s of HammingIndex: top-k and radius search, NumPy vs faiss backends.

    python benchmarks/search_speed.py [--n 1000000 --queries 1000 --bits 64 --k 100
                                       --radius 2 --seed 0 --repeat 3 --json out.json]

Database: ``n`` random codes (seeded, each bit +-1 with probability 1/2). Queries: database
codes picked at random with 0-3 random bits flipped, so radius search has hits (a random
64-bit query has essentially no code within radius 2 of 1M random codes). Each timing is
the best of ``--repeat`` runs over all queries. The NumPy path is timed with 1 thread and
with the default thread count; faiss uses its OpenMP threads (all cores). Every backend's
results are checked to be identical to the NumPy ones.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from cmhash.codes import pack_codes
from cmhash.index import HammingIndex, faiss_available


def make_data(n, m, bits, seed):
    rng = np.random.default_rng(seed)
    db = np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)
    q = db[rng.integers(0, n, m)].copy()
    flips = rng.integers(0, 4, m)
    for i in range(m):
        cols = rng.choice(bits, flips[i], replace=False)
        q[i, cols] *= -1
    return db, q


def best_time(fn, repeat):
    """Best wall time and best process CPU time (all threads) over ``repeat`` runs."""
    best, best_cpu, out = np.inf, np.inf, None
    for _ in range(repeat):
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, out


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--radius", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-multihash", action="store_true",
                    help="skip the IndexBinaryMultiHash build (slow for large n)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    m = args.queries
    db, q = make_data(args.n, m, args.bits, args.seed)
    packed_db, packed_q = pack_codes(db), pack_codes(q)
    cpus = os.cpu_count()
    res = {"n": args.n, "queries": m, "bits": args.bits, "k": args.k, "radius": args.radius,
           "cpu_count": cpus, "machine": platform.processor() or platform.machine(),
           "numpy": np.__version__, "loadavg_start": os.getloadavg(), "results": {}}
    print(f"n={args.n} queries={m} bits={args.bits} k={args.k} radius={args.radius} "
          f"cpus={cpus} numpy={np.__version__} loadavg={os.getloadavg()[0]:.2f}")
    print(f"  {'':<46s} {'wall q/s':>10s} {'q/CPU-s':>10s}")

    def report(name, wall, cpu, extra=""):
        res["results"][name] = {"seconds": wall, "qps": m / wall, "cpu_seconds": cpu,
                                "qps_per_cpu_second": m / cpu if cpu > 0 else None}
        print(f"  {name:<46s} {m / wall:>10.0f} {m / max(cpu, 1e-9):>10.0f}{extra}")

    def run_both(ix, label):
        t, c, top = best_time(lambda: ix.search(packed_q, args.k, packed=True), args.repeat)
        report(f"top-{args.k}  {label}", t, c)
        t, c, rad = best_time(lambda: ix.range_search(packed_q, args.radius, packed=True),
                              args.repeat)
        report(f"radius-{args.radius} {label}", t, c, f"   [{len(rad[2])} hits]")
        return top, rad

    ref = None
    for threads in (1, cpus):
        ix = HammingIndex(args.bits, "numpy", n_threads=threads)
        ix.add(packed_db, packed=True)
        out = run_both(ix, f"numpy, {threads} thread(s)")
        if ref is None:
            ref = out
        assert same(out[0], ref[0]) and same(out[1], ref[1]), "numpy threads disagree"

    if faiss_available():
        import faiss
        res["faiss"] = faiss.__version__
        default_threads = faiss.omp_get_max_threads()
        ix = HammingIndex(args.bits, "faiss", multihash=False)
        ix.add(packed_db, packed=True)
        ix._faiss_index()
        for threads in (1, default_threads):
            faiss.omp_set_num_threads(threads)
            out = run_both(ix, f"faiss flat, {threads} thread(s)")
            assert same(out[0], ref[0]), "faiss top-k differs from numpy"
            assert same(out[1], ref[1]), "faiss range_search differs from numpy"
            raw = ix._faiss_flat
            raw_q = ix._prepare_queries(packed_q, packed=True)  # padded to whole 64-bit words
            t, c, _ = best_time(lambda: raw.search(raw_q, args.k), args.repeat)
            report(f"top-{args.k}  raw faiss search, {threads} thread(s)", t, c,
                   "   (no tie fix-up)")
        faiss.omp_set_num_threads(default_threads)

        ixh = HammingIndex(args.bits, "faiss", multihash=True)
        ixh.add(packed_db, packed=True)
        plan = ixh._multihash_plan(args.radius)
        if plan is not None and not args.no_multihash:
            nhash, b, nflip = plan
            t0, c0 = time.perf_counter(), time.process_time()
            ixh.range_search(packed_q[:1], args.radius, packed=True)       # builds it
            build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
            res["multihash"] = {"nhash": nhash, "b": b, "nflip": nflip,
                                "build_seconds": build, "build_cpu_seconds": build_cpu}
            t, c, rad = best_time(lambda: ixh.range_search(packed_q, args.radius,
                                                           packed=True), args.repeat)
            report(f"radius-{args.radius} faiss multi-hash", t, c,
                   f"   (nhash={nhash} b={b} nflip={nflip}; build {build:.1f} s wall, "
                   f"{build_cpu:.1f} s CPU)")
            assert same(rad, ref[1]), "faiss multi-hash range_search differs from numpy"
    else:
        print("  faiss not installed: pip install cmhash[faiss]")
    res["loadavg_end"] = os.getloadavg()
    print(f"  all backends returned identical results; loadavg at end "
          f"{os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
