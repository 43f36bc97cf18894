"""Why the hash functions' Gram matrices stay float64: float32 blocks against float64 at scale.

    python benchmarks/gram_precision.py [--n 184577] [--block 4096] [--json out.json]

On the ``nuswide-like`` kernel features (image q = 500 and 1,200, text q = 1,000 random
anchors, as BATCH / ASCMH and ASFOH use them), compares ``G = phi^T phi`` from
``solvers.gram`` (float64 blocks) with the float32 alternative: float32 products of
``--block``-row blocks accumulated in float64. Reported per feature map: the error
``||E||_2`` of the float32 Gram matrix, the smallest eigenvalues, and for the ridges 0.01 and
1e-3 whether ``G + xi I`` stays definite, the relative change of the hash functions
``W = (G + xi I)^{-1} phi^T B`` (B random +-1, 32 bits) and the fraction of the training
codes ``sign(phi W)`` that flip. docs/architecture.md ("dtypes") quotes the result.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.linalg as sla


def compare(phi, B, block: int) -> dict:
    from cmhash.solvers import gram
    n, q = phi.shape
    G = gram(phi)
    G32 = np.zeros((q, q))
    for start in range(0, n, block):
        a = phi[start:start + block]
        G32 += (a.T @ a).astype(np.float64)
    rhs = gram(phi, B)
    out = {"q": q, "n": n, "eig_min": float(np.linalg.eigvalsh(G)[0]),
           "E_norm2": float(np.linalg.norm(G32 - G, 2))}
    for xi in (0.01, 1e-3):
        ridge = xi * np.eye(q)
        W = sla.solve(G + ridge, rhs, assume_a="pos")
        try:
            W32 = sla.solve(G32 + ridge, rhs, assume_a="pos")
            definite = True
        except np.linalg.LinAlgError:
            W32, definite = np.linalg.lstsq(G32 + ridge, rhs, rcond=None)[0], False
        flips = np.mean(np.sign(phi @ W.astype(np.float32)) != np.sign(phi @ W32.astype(np.float32)))
        out[f"xi={xi:g}"] = {"float32_definite": definite,
                             "float32_eig_min": float(np.linalg.eigvalsh(G32 + ridge)[0]),
                             "W_relative_change": float(np.linalg.norm(W32 - W) / np.linalg.norm(W)),
                             "code_flips": float(flips)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=184577)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from cmhash.data import load_dataset
    from cmhash.kernel import RBFAnchorFeatures
    from cmhash.solvers import sign
    ds = load_dataset("synthetic:nuswide-like", random_state=0, n_train=args.n)
    views = ds.views("train")
    B = sign(np.random.default_rng(0).standard_normal((args.n, 32))).astype(np.float32)
    rows = []
    print("| modality | q | lambda_min(G) | float32 ||E||_2 | xi | definite | W change | code flips |")
    print("|---|---|---|---|---|---|---|---|")
    for v, q in ((0, 500), (1, 1000), (0, 1200)):
        t = time.perf_counter()
        phi = RBFAnchorFeatures(q, random_state=0).fit_transform(views[v])
        row = {"modality": ds.modality_names[v], **compare(phi, B, args.block),
               "seconds": time.perf_counter() - t}
        rows.append(row)
        for xi in ("0.01", "0.001"):
            c = row[f"xi={xi}"]
            print(f"| {row['modality']} | {q} | {row['eig_min']:.2g} | {row['E_norm2']:.2g} | {xi} | "
                  f"{c['float32_definite']} | {c['W_relative_change']:.1%} | {c['code_flips']:.2%} |",
                  flush=True)
    if args.json:
        from cmhash._io import atomic_write
        with atomic_write(args.json, mode="w") as fh:
            json.dump({"format": "cmhash-gram-precision", "n": args.n, "block": args.block,
                       "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
