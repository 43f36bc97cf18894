"""How many code bits a Dask fit shares with the in-process fit (issue 15, docs/scale.md).

Fits one method on one dataset twice with the same seed -- in this process (``fit_views``)
and on a Dask cluster (``fit_on_dask``) -- and prints one JSON line: the share of identical
training and query bits, the rows with a flipped bit, the largest relative difference of the
objectives, and the seconds of each fit.

    python benchmarks/dask_same_codes.py --method batch --data synthetic:nuswide-like --bits 64 --cluster local:2
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cmhash.base import make_hasher
from cmhash.data import load_dataset
from cmhash.distributed.cluster import make_client
from cmhash.distributed.fit import fit_on_dask


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="batch")
    p.add_argument("--data", default="synthetic:nuswide-like")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cluster", default="local:2")
    p.add_argument("--scheduler")
    args = p.parse_args(argv)
    ds = load_dataset(args.data, random_state=args.seed)
    views, labels, names = ds.views("train"), ds.labels_of("train"), ds.modality_names
    queries = ds.views("query")

    def hasher():
        return make_hasher(args.method, n_bits=args.bits, random_state=args.seed)

    start = time.perf_counter()
    ref = hasher().fit_views(views, labels, names=names)
    seconds_memory = time.perf_counter() - start
    client = make_client(None if args.scheduler else args.cluster, args.scheduler)
    try:
        start = time.perf_counter()
        got = fit_on_dask(hasher(), views, labels, names, client=client, materialize=True)
        seconds_dask = time.perf_counter() - start
    finally:
        cluster = None if args.scheduler else client.cluster
        client.close()
        if cluster is not None:
            cluster.close()
    codes = got.codes_ if isinstance(got.codes_, list) else [got.codes_]
    refs = ref.codes_ if isinstance(ref.codes_, list) else [ref.codes_]
    print(json.dumps({
        "method": args.method, "data": args.data, "bits": args.bits, "n": int(labels.shape[0]),
        "train_bits_identical": [float(np.mean(a == b)) for a, b in zip(codes, refs)],
        "rows_with_a_flipped_bit": [int(np.any(a != b, axis=1).sum()) for a, b in zip(codes, refs)],
        "query_bits_identical": {m: float(np.mean(got.encode(q, m) == ref.encode(q, m)))
                                 for m, q in zip(names, queries)},
        "objective_max_relative_difference": float(np.max(np.abs(
            np.asarray(got.objective_) / np.asarray(ref.objective_) - 1))),
        "seconds_in_process": seconds_memory, "seconds_dask": seconds_dask}))


if __name__ == "__main__":
    main()
