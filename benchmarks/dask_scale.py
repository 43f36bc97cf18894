"""Dask at scale (issue 15): out-of-core BATCH / ASFOH fits from zarr and sharded search.

    python benchmarks/dask_scale.py                     # the acceptance run (long)
    python benchmarks/dask_scale.py --n 200000 --codes 10000000 --reference-n 20000  # dry run
    python benchmarks/dask_scale.py --skip-fit --json out.json                      # search only

Three parts, each on a fresh ``LocalCluster(n_workers=2, threads_per_worker=1,
memory_limit="4GiB")`` (``--workers``, ``--worker-memory``), so that each part's peak memory
per worker (``ru_maxrss`` of the worker processes, read with ``client.run``) is its own:

1. **Data.** The nuswide-like synthetic preset (``cmhash.data.synthetic``: 10 labels, two
   bag-of-words modalities of 500 and 1,000 words) at ``--n`` items, generated block by block
   on the workers and written straight into a zarr group under ``--scratch`` (``image``
   (n, 500) float32, ``text`` (n, 1000) float32, ``labels`` (n, 10) uint8; row chunks of
   ``--chunk-rows``). The topic tables come from ``default_rng(seed)``; block ``[s, e)`` draws
   its labels and tokens from ``default_rng([seed, 1, s])``: the same seed and chunk size give
   the same data, and the whole set is never in one process. The data are dense float32 (what
   the Dask fit reads; the in-memory reference reads the preset's CSR matrices).
2. **Fits.** For each method (``--methods``, default BATCH and ASFOH at ``--bits`` 64):
   ``hasher.fit(da.from_zarr(image), da.from_zarr(text), da.from_zarr(labels))`` under the
   cluster's client (cmhash.distributed.fit; the kernel features are persisted or recomputed
   per pass as ``decide_persist`` chooses from the memory limit, ``--persist`` overrides).
   Reported: fit seconds, seconds per iteration (from the fit's per-iteration log lines),
   peak RSS per worker, the cluster's peak process memory and spilled bytes (distributed's
   ``MemorySampler``), bytes sent between workers (``transfer_outgoing_bytes_total``), and,
   from the task stream, the tasks and output bytes of each kind per iteration (zarr chunk
   reads, kernel-feature blocks, reductions). The in-memory fit of the same method on the
   preset at its own size (``--reference-n`` = 184,577 training items, CSR input, all cores)
   runs in a separate process in the same run; the cost per 1,000 items of both is reported.
   BATCH uses its defaults (anchors (500, 1,000), 6 iterations); ASFOH the ``nuswide`` preset
   with 1,200 anchors per modality and 10 iterations (as benchmarks/asfoh_scale.py);
   ``--n-iter`` overrides them (one value, or one per method); the reference fit runs the
   same number of iterations.
3. **Search.** ``--codes`` random 64-bit codes (packed, 8 bytes each), generated per block on
   the workers from ``default_rng([seed, 2, start])``; a ``ShardedHammingIndex`` (one shard
   per worker) answers ``--queries`` random queries' top-``--k``. Reported: build seconds,
   queries/s, peak RSS per worker. Then the cluster is closed and one in-process
   ``HammingIndex`` (NumPy scan, ``knn="scan"``) over the same codes (regenerated in a child
   process, which also gives its peak RSS) answers the same queries; results must be
   identical (distances and positions). Fewer than 150 queries per shard keep the shards'
   ``knn="auto"`` on the scan too (MIH tables are built from the 150th query on).

Time: on a 2-core machine the default run (2M items, 6 / 10 iterations with the features
recomputed per pass) takes hours; docs/scale.md "Measured at scale" has the runs made, their
commands and the cost model.

The data under ``--scratch`` (default /work/scratch_dask) are deleted at the end unless
``--keep-data``. ``--json PATH`` writes every number. ``--scheduler ADDRESS`` runs the three
parts on a running cluster instead (its workers restarted before each part; ``--scratch``
must then be storage that every worker reads).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

PRESET = "nuswide-like"
REFERENCE_N = 184_577
CODE_BLOCK_ROWS = 1 << 22          # 4M codes (32 MiB) per generated block
PERSIST = {"auto": None, "yes": True, "no": False}      # --persist -> persist_features
log = logging.getLogger("dask_scale")


# ------------------------------------------------------------------ helpers
def peak_rss() -> int:
    """Peak resident memory of this process (bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gib(x) -> float:
    return round(float(x) / 2**30, 3)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@contextlib.contextmanager
def cluster(args):
    """A fresh LocalCluster client (cmhash's ``--cluster local:N --worker-memory``)."""
    import dask
    from cmhash.distributed.cluster import make_client

    if args.scheduler:                     # a running cluster: fresh worker processes
        client = make_client(scheduler=args.scheduler)
        client.restart()
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set({"temporary-directory": str(args.scratch / "dask-worker-space")}):
        client = make_client(f"local:{args.workers}", worker_memory=args.worker_memory,
                             dashboard=False)
    try:
        yield client
    finally:
        cl = client.cluster
        client.close()
        cl.close()


def worker_peaks(client) -> list[int]:
    """Peak RSS (bytes) of each worker process, in worker-address order."""
    peaks = client.run(peak_rss)
    return [peaks[w] for w in sorted(peaks)]


def _transfer_out(dask_worker):
    return dask_worker.transfer_outgoing_bytes_total


def transfers(client) -> int:
    return int(sum(client.run(_transfer_out).values()))


class CountedReads:
    """A zarr array whose block reads are counted on the worker that reads them (attribute
    ``cmhash_zarr_reads`` of the distributed Worker: name -> [reads, decoded bytes])."""

    def __init__(self, z, name: str):
        self.z, self.name = z, name
        self.shape, self.dtype, self.ndim = z.shape, z.dtype, len(z.shape)

    def __getitem__(self, index):
        block = self.z[index]
        try:
            from distributed import get_worker
            counts = get_worker().__dict__.setdefault("cmhash_zarr_reads", {})
        except ValueError:          # not in a worker (e.g. the client's local scheduler)
            return block
        c = counts.setdefault(self.name, [0, 0])
        c[0] += 1
        c[1] += block.nbytes
        return block


def open_counted(path: Path, name: str):
    """``da.from_zarr`` of ``path / name`` with counted block reads."""
    import dask.array as da
    import zarr

    z = zarr.open_array(str(path / name), mode="r")
    return da.from_array(CountedReads(z, name), chunks=z.chunks, name=f"zarr-{name}-{path.name}",
                         lock=False, asarray=False)


def _reads(dask_worker):
    return getattr(dask_worker, "cmhash_zarr_reads", {})


def zarr_reads(client) -> dict:
    """name -> [block reads, decoded bytes] summed over the workers."""
    out = defaultdict(lambda: [0, 0])
    for counts in client.run(_reads).values():
        for name, (k, b) in counts.items():
            out[name][0] += k
            out[name][1] += b
    return {k: list(v) for k, v in out.items()}


# ------------------------------------------------------------------ 1. data
class BlockGenerator:
    """The nuswide-like preset drawn block by block (see the module doc): shared topic
    tables from ``default_rng(seed)``, block ``[s, e)`` from ``default_rng([seed, 1, s])``."""

    def __init__(self, seed: int, preset: str = PRESET):
        from cmhash.data.synthetic import SYNTHETIC_PRESETS, _topic_tables

        p = SYNTHETIC_PRESETS[preset]
        if not (p["sparse_image"] and p["sparse_text"]):
            raise ValueError(f"{preset}: the block generator draws bag-of-words modalities")
        self.seed, self.c, self.rate = int(seed), int(p["n_classes"]), float(p["multilabel_rate"])
        self.dims = tuple(int(d) for d in p["dims"])
        self.densities = (float(p["image_density"]), float(p["text_density"]))
        self.bow_noise = float(p["bow_noise"])
        rng = np.random.default_rng(self.seed)
        self.tables = [_topic_tables(rng, self.c, d) for d in self.dims]

    def block(self, start: int, stop: int):
        """(image, text) dense float32 and labels uint8 of rows ``start .. stop - 1``."""
        from cmhash.data.synthetic import _bow_counts, _labels

        rng = np.random.default_rng([self.seed, 1, int(start)])
        Y = _labels(rng, stop - start, self.c, self.rate)
        views = [_bow_counts(rng, Y, t, dens, self.bow_noise).toarray()
                 for t, dens in zip(self.tables, self.densities)]
        return views[0], views[1], Y.astype(np.uint8)


def _write_block(gen: BlockGenerator, path: str, start: int, stop: int) -> int:
    import zarr

    group = zarr.open_group(path, mode="r+")
    image, text, labels = gen.block(start, stop)
    group["image"][start:stop] = image
    group["text"][start:stop] = text
    group["labels"][start:stop] = labels
    return int(np.count_nonzero(image) + np.count_nonzero(text))


def write_dataset(client, path: Path, n: int, chunk_rows: int, seed: int) -> dict:
    """Write the data set (module doc) to the zarr group ``path``; reuses a complete one with
    the same parameters. Returns its description."""
    import zarr

    params = {"preset": PRESET, "n": n, "chunk_rows": chunk_rows, "seed": seed}
    if path.exists():
        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception:       # noqa: BLE001 - an unreadable leftover: rewrite it
            attrs = {}
        if attrs.get("complete") and attrs.get("params") == params:
            log.info("reusing %s", path)
            return dict(attrs["summary"], reused=True)
        shutil.rmtree(path)
    gen = BlockGenerator(seed)
    group = zarr.open_group(str(path), mode="w")
    group.attrs["params"] = params
    for name, d, dtype in (("image", gen.dims[0], np.float32), ("text", gen.dims[1], np.float32),
                           ("labels", gen.c, np.uint8)):
        group.create_array(name, shape=(n, d), chunks=(chunk_rows, d), dtype=dtype)
    t0 = time.perf_counter()
    starts = list(range(0, n, chunk_rows))
    futures = client.map(_write_block, [gen] * len(starts), [str(path)] * len(starts), starts,
                         [min(n, s + chunk_rows) for s in starts], pure=False)
    nnz = sum(client.gather(futures))
    seconds = time.perf_counter() - t0
    summary = {"n": n, "chunk_rows": chunk_rows, "blocks": len(starts), "dims": list(gen.dims),
               "classes": gen.c, "seconds": round(seconds, 2), "nonzeros": nnz,
               "dense_bytes": n * sum(gen.dims) * 4 + n * gen.c,
               "stored_bytes": dir_bytes(path), "worker_peak_rss_gib":
               [gib(x) for x in worker_peaks(client)]}
    group.attrs.update({"complete": True, "summary": summary})
    log.info("data: %d rows in %d blocks written in %.1f s (%.2f GiB stored, %.1f GiB dense)",
             n, len(starts), seconds, summary["stored_bytes"] / 2**30,
             summary["dense_bytes"] / 2**30)
    return summary


# ------------------------------------------------------------------ 2. fits
def make_hasher(method: str, bits: int, seed: int, n_iter: int | None):
    if method == "batch":
        from cmhash.methods.batch import BATCH
        kw = {} if n_iter is None else {"n_iter": n_iter}
        return BATCH(bits, random_state=seed, **kw)
    if method == "asfoh":
        from cmhash.methods.asfoh import ASFOH
        params = {k: v for k, v in ASFOH.PRESETS["nuswide"].items() if k != "n_anchors"}
        return ASFOH(bits, n_anchors=1200, random_state=seed,
                     n_iter=10 if n_iter is None else n_iter, **params)
    raise ValueError(f"no benchmark set-up for method {method!r} (batch, asfoh)")


class IterationRecorder(logging.Handler):
    """Records the time and the workers' outgoing transfer bytes at each "iteration" line the
    Dask fit logs."""

    def __init__(self, client):
        super().__init__(logging.INFO)
        self.client, self.marks, self.kernel_done = client, [], None

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("dask ") and " iteration " in msg:
            self.marks.append((time.time(), transfers(self.client), zarr_reads(self.client)))
        elif msg.startswith("dask ") and "kernel features" in msg and self.kernel_done is None:
            self.kernel_done = time.time()        # the kernels are fitted (anchors, sigma, mean)
            self.kernel_reads = zarr_reads(self.client)


def _prefix(key) -> str:
    from dask.utils import key_split
    return key_split(key)


def task_summary(records, t0: float, t1: float) -> dict:
    """Tasks finished in ``[t0, t1)`` (worker clock = client clock on one machine): count and
    output bytes per key prefix, and the seconds spent in transfers / compute."""
    out = defaultdict(lambda: [0, 0])
    secs = defaultdict(float)
    for r in records:
        stop = max(s["stop"] for s in r["startstops"])
        if not t0 <= stop < t1:
            continue
        p = out[_prefix(r["key"])]
        p[0] += 1
        p[1] += int(r.get("nbytes") or 0)
        for s in r["startstops"]:
            secs[s["action"]] += s["stop"] - s["start"]
    return {"tasks": {k: {"count": v[0], "out_bytes": v[1]}
                      for k, v in sorted(out.items(), key=lambda kv: -kv[1][1])},
            "seconds_by_action": {k: round(v, 2) for k, v in secs.items()}}


def dask_fit(args, method: str, data_path: Path) -> dict:
    import dask.array as da
    from distributed import get_task_stream
    from distributed.diagnostics import MemorySampler

    with cluster(args) as client:
        X, T, L = (open_counted(data_path, name) for name in ("image", "text", "labels"))
        hasher = make_hasher(method, args.bits, args.seed, args.n_iter[method])
        persist = PERSIST[args.persist]
        rec = IterationRecorder(client)
        cm_log = logging.getLogger("cmhash")
        cm_log.addHandler(rec)
        ms = MemorySampler()
        sent0 = transfers(client)
        try:
            with ms.sample("process", client=client, measure="process", interval=1.0), \
                    ms.sample("spilled", client=client, measure="spilled",
                              interval=1.0), \
                    get_task_stream(client) as ts:
                t_start = time.time()
                t0 = time.perf_counter()
                if persist is None:
                    hasher.fit(X, T, L)
                else:
                    from cmhash.distributed.fit import fit_on_dask
                    fit_on_dask(hasher, [X, T], L, persist_features=persist)
                seconds = time.perf_counter() - t0
                t_end = time.time()
                balance = float(abs(hasher.codes_.astype(np.float32).mean(axis=0)).mean()
                                .compute())
        finally:
            cm_log.removeHandler(rec)
        peaks = worker_peaks(client)
        sent = transfers(client) - sent0
        reads = zarr_reads(client)
        records = ts.data
        q = sum(k.anchors_.shape[0] for k in hasher.kernels_)
        persisted = _persisted(client, X.shape[0], q, args)
    n, d = X.shape[0], X.shape[1] + T.shape[1]
    times = [t_start] + [t for t, _, _ in rec.marks]
    iters = np.diff(times).tolist()
    sent_marks = [sent0] + [b for _, b, _ in rec.marks]
    read_marks = [{}] + [r for _, _, r in rec.marks]
    per_iter = []
    for i in range(1, len(rec.marks)):          # the first window also holds the set-up
        w = task_summary(records, times[i], times[i + 1])
        w["seconds"] = round(times[i + 1] - times[i], 2)
        w["bytes_between_workers"] = int(sent_marks[i + 1] - sent_marks[i])
        w["zarr_reads"] = _diff_reads(read_marks[i + 1], read_marks[i])
        per_iter.append(w)
    res = {
        "method": method, "n": int(n), "bits": args.bits, "anchors": int(q),
        "n_iter": int(hasher.n_iter), "input_dims": int(d), "blocks": len(X.chunks[0]),
        "seconds": round(seconds, 2), "seconds_per_1000": round(1000 * seconds / n, 4),
        "kernel_fit_seconds": (round(rec.kernel_done - t_start, 2) if rec.kernel_done
                               else None),
        "setup_and_first_iteration_seconds": round(iters[0], 2) if iters else None,
        "iteration_seconds": [round(x, 2) for x in iters[1:]],
        "after_last_iteration_seconds": round(t_end - times[-1], 2),
        "feature_bytes": int(n * q * 4), "features_persisted": persisted,
        "worker_peak_rss_gib": [gib(x) for x in peaks],
        "cluster_peak_process_gib": gib(max((v for _, v in ms.samples["process"]), default=0)),
        "cluster_peak_spilled_gib": gib(max((v for _, v in ms.samples["spilled"]), default=0)),
        "bytes_between_workers": int(sent),
        "zarr_reads": reads, "zarr_passes": {k: round(v[0] / len(X.chunks[0]), 2)
                                             for k, v in reads.items()},
        "zarr_reads_kernel_fit": getattr(rec, "kernel_reads", None),
        "tasks_total": len(records),
        "whole_fit": task_summary(records, t_start - 1, t_end + 1),
        "kernel_fit": (task_summary(records, t_start - 1, rec.kernel_done)
                       if rec.kernel_done else None),
        "after_last_iteration": task_summary(records, times[-1], t_end + 1),
        "per_iteration": per_iter,
        "objective": [float(x) for x in hasher.objective_],
        "mean_abs_bit_balance": round(balance, 4),
    }
    log.info("%s dask fit n=%d: %.1f s (%.4f s per 1,000), worker peaks %s GiB", method, n,
             seconds, res["seconds_per_1000"], res["worker_peak_rss_gib"])
    return res


def _diff_reads(after: dict, before: dict) -> dict:
    return {k: [v[0] - before.get(k, [0, 0])[0], v[1] - before.get(k, [0, 0])[1]]
            for k, v in after.items()}


def _persisted(client, n, q, args) -> bool:
    from cmhash.distributed.fit import decide_persist
    return decide_persist(n * q * 4, client, PERSIST[args.persist])


def reference_fit(method: str, n: int, bits: int, seed: int, n_iter: int | None) -> dict:
    """The in-memory fit on the preset (CSR input) at ``n`` training items; run in a child
    process so that its peak RSS is its own."""
    from cmhash.data.synthetic import make_synthetic

    p_n = None if n >= REFERENCE_N else n
    ds = make_synthetic(preset=PRESET, random_state=seed, n_train=p_n)
    views, Y = ds.views("train"), ds.labels_of("train")
    rss0 = peak_rss()
    hasher = make_hasher(method, bits, seed, n_iter)
    hasher.fit(views[0], views[1], Y)
    return {"method": method, "n": int(Y.shape[0]), "seconds": round(hasher.train_seconds_, 2),
            "seconds_per_1000": round(1000 * hasher.train_seconds_ / Y.shape[0], 4),
            "peak_rss_gib": gib(peak_rss()), "peak_rss_before_fit_gib": gib(rss0),
            "n_iter": int(hasher.n_iter), "threads": os.cpu_count()}


def in_child(fn, *args):
    """``fn(*args)`` in a fresh (spawned) process."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


# ------------------------------------------------------------------ 3. search
def random_codes(seed: int, start: int, stop: int) -> np.ndarray:
    """Packed random 64-bit codes of rows ``start .. stop - 1`` (8 random bytes each)."""
    rng = np.random.default_rng([seed, 2, int(start)])
    return rng.integers(0, 256, size=(stop - start, 8), dtype=np.uint8)


def code_blocks(n: int):
    return [(s, min(n, s + CODE_BLOCK_ROWS)) for s in range(0, n, CODE_BLOCK_ROWS)]


def codes_array(n: int, seed: int):
    """The ``n`` codes as a dask array of generated blocks (nothing in the client)."""
    import dask
    import dask.array as da

    gen = dask.delayed(random_codes, pure=True)
    return da.concatenate([da.from_delayed(gen(seed, s, e), (e - s, 8), dtype=np.uint8)
                           for s, e in code_blocks(n)], axis=0)


def query_codes(m: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 3]).integers(0, 256, size=(m, 8), dtype=np.uint8)


def sharded_search(args) -> tuple[dict, np.ndarray, np.ndarray]:
    from cmhash.distributed.search import ShardedHammingIndex

    q = query_codes(args.queries, args.seed)
    with cluster(args) as client:
        t0 = time.perf_counter()
        index = ShardedHammingIndex(codes_array(args.codes, args.seed), 64, client=client)
        build = time.perf_counter() - t0
        after_build = worker_peaks(client)
        index.search(q[:2], args.k, packed=True)                 # warm-up (2 queries)
        t0 = time.perf_counter()
        D, I = index.search(q[2:], args.k, packed=True)
        seconds = time.perf_counter() - t0
        peaks = worker_peaks(client)
    m = len(q) - 2
    res = {"codes": args.codes, "shards": len(index.shards), "queries": m, "k": args.k,
           "build_seconds": round(build, 2), "search_seconds": round(seconds, 3),
           "queries_per_second": round(m / seconds, 2),
           "worker_peak_rss_after_build_gib": [gib(x) for x in after_build],
           "worker_peak_rss_gib": [gib(x) for x in peaks],
           "shard_code_bytes": [int(args.codes // len(index.shards) * 8)]}
    log.info("sharded search over %d codes: %.2f queries/s, worker peaks %s GiB", args.codes,
             res["queries_per_second"], res["worker_peak_rss_gib"])
    return res, D, I


def in_process_search(n: int, seed: int, m: int, k: int):
    """One HammingIndex (NumPy scan, all cores) over the same codes, in this process."""
    from cmhash.index import HammingIndex

    t0 = time.perf_counter()
    index = HammingIndex(64, backend="numpy", knn="scan")
    for s, e in code_blocks(n):
        index.add(random_codes(seed, s, e), packed=True)
    build = time.perf_counter() - t0
    q = query_codes(m, seed)
    index.search(q[:2], k, packed=True)
    t0 = time.perf_counter()
    D, I = index.search(q[2:], k, packed=True)
    seconds = time.perf_counter() - t0
    return ({"codes": n, "queries": m - 2, "build_seconds": round(build, 2),
             "search_seconds": round(seconds, 3),
             "queries_per_second": round((m - 2) / seconds, 2),
             "peak_rss_gib": gib(peak_rss()), "threads": index._threads()}, D, I)


# ------------------------------------------------------------------ driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2_000_000, help="training items written to zarr")
    p.add_argument("--chunk-rows", type=int, default=32_768, help="zarr / Dask row block")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--methods", nargs="+", default=["batch", "asfoh"],
                   choices=["batch", "asfoh"])
    p.add_argument("--n-iter", type=int, nargs="+", default=None,
                   help="iterations: one value for every method or one per --methods entry "
                        "(default: 6 for BATCH, 10 for ASFOH)")
    p.add_argument("--persist", choices=["auto", "yes", "no"], default="auto",
                   help="kernel features persisted / recomputed (default: decide_persist)")
    p.add_argument("--reference-n", type=int, default=REFERENCE_N,
                   help="training items of the in-memory reference fit")
    p.add_argument("--codes", type=int, default=100_000_000, help="codes of the search part")
    p.add_argument("--queries", type=int, default=102,
                   help="queries (2 warm up, the rest are timed; < 150 keeps the scan)")
    p.add_argument("-k", "--k", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-memory", default="4GiB")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on this running cluster instead of LocalClusters (its workers "
                        "are restarted before each part; --scratch must be on storage every "
                        "worker reads; --workers / --worker-memory are then ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scratch", type=Path, default=Path("/work/scratch_dask"))
    p.add_argument("--keep-data", action="store_true", help="do not delete the zarr data")
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-in-process", action="store_true",
                   help="no in-process index beside the sharded one")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    for name in ("n", "chunk_rows", "bits", "codes", "k", "workers", "reference_n"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.queries < 3:
        raise SystemExit("--queries must be >= 3 (2 warm up)")
    iters = args.n_iter or [None]
    if len(iters) not in (1, len(args.methods)) or any(i is not None and i < 1 for i in iters):
        raise SystemExit("--n-iter takes one value >= 1, or one per --methods entry")
    args.n_iter = dict(zip(args.methods, iters * len(args.methods) if len(iters) == 1
                           else iters))
    return args


def main(argv=None):
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")   # also in the workers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    import distributed  # noqa: F401 - configures its loggers on import
    logging.getLogger("distributed").setLevel(logging.WARNING)
    args = parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
           "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_avg_start": os.getloadavg()},
           "cluster": ({"scheduler": args.scheduler} if args.scheduler else
                       {"workers": args.workers, "threads_per_worker": 1,
                        "memory_limit": args.worker_memory})}

    def save():
        if args.json:
            from cmhash._io import atomic_write
            with atomic_write(args.json, "w") as f:
                json.dump(out, f, indent=1, default=float)

    data_path = args.scratch / f"nuswide-like-n{args.n}-s{args.seed}.zarr"
    try:
        if not args.skip_fit:
            with cluster(args) as client:
                out["data"] = write_dataset(client, data_path, args.n, args.chunk_rows,
                                            args.seed)
            save()
            out["fits"] = {}
            for method in args.methods:
                entry = {"dask": dask_fit(args, method, data_path)}
                out["fits"][method] = entry
                save()
                if not args.skip_reference:
                    ref = in_child(reference_fit, method, args.reference_n, args.bits,
                                   args.seed, args.n_iter[method])
                    entry["in_memory"] = ref
                    entry["cost_ratio_per_1000"] = round(
                        entry["dask"]["seconds_per_1000"] / ref["seconds_per_1000"], 3)
                    log.info("%s in-memory n=%d: %.1f s (%.4f s per 1,000); Dask / in-memory "
                             "per 1,000 items: %.2f", method, ref["n"], ref["seconds"],
                             ref["seconds_per_1000"], entry["cost_ratio_per_1000"])
                    save()
        if not args.skip_search:
            res, D, I = sharded_search(args)
            out["search"] = {"sharded": res}
            save()
            if not args.skip_in_process:
                ref, D1, I1 = in_child(in_process_search, args.codes, args.seed,
                                       args.queries, args.k)
                ref["identical_to_sharded"] = bool(np.array_equal(D, D1)
                                                   and np.array_equal(I, I1))
                out["search"]["in_process"] = ref
                log.info("in-process search over %d codes: %.2f queries/s, peak %.2f GiB, "
                         "identical: %s", args.codes, ref["queries_per_second"],
                         ref["peak_rss_gib"], ref["identical_to_sharded"])
                if not ref["identical_to_sharded"]:
                    raise SystemExit("sharded and in-process search results differ")
                save()
    finally:
        if not args.keep_data and data_path.exists():
            shutil.rmtree(data_path, ignore_errors=True)
        shutil.rmtree(args.scratch / "dask-worker-space", ignore_errors=True)
        out["machine"]["load_avg_end"] = os.getloadavg()
        save()
    print(json.dumps(out, indent=1, default=str)[:20000] if not args.json else
          f"results in {args.json}")
    return out


if __name__ == "__main__":
    main()
