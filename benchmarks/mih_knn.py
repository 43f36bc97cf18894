"""Queries/s of exact k-NN by multi-index hashing (HammingIndex knn="mih") beside the scans.

    python benchmarks/mih_knn.py [--n 1000000 10000000 --bits 64 --k 1 10 100
                                  --data random clustered --queries 200 --seed 0
                                  --repeat 2 --json out.json]

Databases (seeded, generated packed in blocks, so 10M codes need no (n, bits) array):

* ``random``: every bit +-1 with probability 1/2; queries are independent random codes.
* ``clustered`` ("learned-like"): each code is one of ``--classes`` (24) random class codes
  with every bit flipped with probability ``--flip-bits / bits`` (2 bits on average); queries
  are fresh draws from the same process (held out, not database items).

For each database: the NumPy scan (``n_threads`` = all cores), the faiss scan (when faiss is
installed; its OpenMP threads) and MIH (``knn="mih"``, NumPy, all cores) for each ``k``. The
MIH tables are built once (build time reported) and every result is checked identical (ids
and distances) to the NumPy scan's. Each timing is the best of ``--repeat`` runs over all
queries.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

from cmhash import mih
from cmhash.index import HammingIndex, faiss_available
from search_speed import best_time            # (benchmarks/ is on the path of a script)

BLOCK = 1 << 16                 # rows generated at a time (float temporaries)


def make_codes(rng, n, bits, kind, class_codes, flip_bits):
    """``n`` packed codes (uint8, ``(n, ceil(bits/8))``), generated in blocks."""
    out = np.empty((n, (bits + 7) // 8), dtype=np.uint8)
    for i0 in range(0, n, BLOCK):
        i1 = min(n, i0 + BLOCK)
        if kind == "random":
            bitsb = rng.random((i1 - i0, bits)) < 0.5
        else:
            cls = class_codes[rng.integers(0, len(class_codes), i1 - i0)]
            bitsb = cls ^ (rng.random((i1 - i0, bits)) < flip_bits / bits)
        out[i0:i1] = np.packbits(bitsb, axis=1, bitorder="big")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--data", nargs="+", default=["random", "clustered"],
                    choices=["random", "clustered"])
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--flip-bits", type=float, default=2.0)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-faiss", action="store_true", help="skip the faiss scan")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    cpus = os.cpu_count()
    res = {"bits": args.bits, "queries": args.queries, "k": args.k, "cpu_count": cpus,
           "machine": platform.processor() or platform.machine(), "numpy": np.__version__,
           "loadavg_start": os.getloadavg(), "runs": []}
    use_faiss = faiss_available() and not args.no_faiss
    if use_faiss:
        import faiss
        res["faiss"] = faiss.__version__
    print(f"bits={args.bits} queries={args.queries} cpus={cpus} numpy={np.__version__} "
          f"loadavg={os.getloadavg()[0]:.2f}")
    print("queries/s (wall clock), and in brackets queries per CPU-second (all threads)")
    print(f"{'data':<10s} {'n':>9s} {'k':>4s} {'numpy scan':>18s} {'faiss scan':>18s} "
          f"{'MIH':>18s} {'MIH/numpy':>9s} {'scanned':>8s}")
    for kind in args.data:
        for n in args.n:
            rng = np.random.default_rng(args.seed)
            class_codes = rng.random((args.classes, args.bits)) < 0.5
            db = make_codes(rng, n, args.bits, kind, class_codes, args.flip_bits)
            q = make_codes(rng, args.queries, args.bits, kind, class_codes, args.flip_bits)
            scan = HammingIndex(args.bits, "numpy", knn="scan")
            scan.add(db, packed=True)
            fast = HammingIndex(args.bits, "numpy", knn="mih")
            fast.add(db, packed=True)
            t0, c0 = time.perf_counter(), time.process_time()
            tracemalloc.start()
            fast._mih.tables = mih.MIHTables(fast._buf[:n], args.bits)
            build_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
            tables = fast._mih.tables
            run = {"data": kind, "n": n, "build_seconds": build, "build_cpu_seconds": build_cpu,
                   "build_peak_mib": build_peak / 2**20,
                   "tables_mib": tables.nbytes / 2**20, "distinct_codes": tables.u,
                   "indexed_distinct": tables.codes is not None,
                   "substrings": tables.substrings, "k": {}}
            print(f"  {kind} n={n}: MIH tables built in {build:.1f} s ({build_cpu:.1f} s CPU, "
                  f"peak {build_peak / 2**20:.0f} MiB), "
                  f"{tables.nbytes / 2**20:.0f} MiB, {len(tables.substrings)} substrings of "
                  f"{[b for _, b in tables.substrings]} bits over {tables.u} "
                  f"{'distinct codes' if tables.codes is not None else 'codes'}")
            fx = None
            if use_faiss:
                fx = HammingIndex(args.bits, "faiss", knn="scan")
                fx.add(db, packed=True)
            del db
            m = args.queries
            for k in args.k:
                t, c, ref = best_time(lambda: scan.search(q, k, packed=True), args.repeat)
                rec = {"numpy_scan_qps": m / t, "numpy_scan_qps_cpu": m / c}
                if fx is not None:
                    t, c, out = best_time(lambda: fx.search(q, k, packed=True), args.repeat)
                    assert all(np.array_equal(a, b) for a, b in zip(out, ref)), \
                        "faiss scan differs from the numpy scan"
                    rec["faiss_scan_qps"], rec["faiss_scan_qps_cpu"] = m / t, m / c
                scanned = []
                orig = fast._scan_search

                def counting(qq, *a):
                    scanned.append(len(qq))
                    return orig(qq, *a)

                fast._scan_search = counting
                t, c, out = best_time(lambda: (scanned.clear(),
                                               fast.search(q, k, packed=True))[1], args.repeat)
                del fast._scan_search
                assert all(np.array_equal(a, b) for a, b in zip(out, ref)), \
                    "MIH k-NN differs from the numpy scan"
                rec["mih_qps"], rec["mih_qps_cpu"] = m / t, m / c
                rec["mih_scanned_share"] = sum(scanned) / m
                run["k"][k] = rec

                def cell(name):
                    if name + "_qps" not in rec:
                        return f"{'-':>18s}"
                    return f"{rec[name + '_qps']:>8.0f} ({rec[name + '_qps_cpu']:>7.0f})"

                print(f"{kind:<10s} {n:>9d} {k:>4d} {cell('numpy_scan')} {cell('faiss_scan')} "
                      f"{cell('mih')} {rec['mih_qps'] / rec['numpy_scan_qps']:>8.1f}x "
                      f"{100 * rec['mih_scanned_share']:>7.0f}%", flush=True)
            res["runs"].append(run)
            del scan, fast, fx, tables
    res["loadavg_end"] = os.getloadavg()
    print(f"all MIH results identical to the scan; loadavg at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
