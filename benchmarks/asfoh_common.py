"""Shared helpers of the ASFOH benchmark scripts: Wiki loading and the learned-database mAP.

``map_learned`` is the field's protocol (NOTES.md): Hamming ranking with stable ties
(database order), relevance = at least one shared label, AP over the full ranking, queries
with no relevant item count 0. It uses cmhash.metrics when that module works and falls back
to an equivalent direct implementation otherwise (the metrics module is written concurrently).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

WIKI = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "wiki" / "wiki_data.mat"


def load_wiki():
    import scipy.io as sio
    d = sio.loadmat(WIKI)
    return {k: d[k] for k in ("I_tr", "T_tr", "L_train", "I_te", "T_te", "L_test")}


def _map_direct(qB, dB, qL, dL):
    qB = qB.astype(np.float32)
    dB = dB.astype(np.float32)
    r = qB.shape[1]
    aps = []
    for s in range(0, qB.shape[0], 256):
        dist = (r - qB[s:s + 256] @ dB.T) / 2
        rel = (qL[s:s + 256] @ dL.T) > 0
        order = np.argsort(dist, axis=1, kind="stable")
        relo = np.take_along_axis(rel, order, axis=1)
        hits = np.cumsum(relo, axis=1)
        ranks = np.arange(1, dB.shape[0] + 1)
        tot = relo.sum(axis=1)
        ap = np.where(tot > 0, (relo * hits / ranks).sum(axis=1) / np.maximum(tot, 1), 0.0)
        aps.append(ap)
    return float(np.concatenate(aps).mean())


def mean_ap(qB, dB, qL, dL):
    try:
        from cmhash.metrics import mean_average_precision
        return float(mean_average_precision(qB, dB, qL, dL, ties="stable", zero_relevant="zero"))
    except Exception:
        return _map_direct(qB, dB, qL, dL)


def map_learned(model, I_q, T_q, L_q, L_db):
    """(I->T, T->I) mAP with the learned training codes as the database."""
    i2t = mean_ap(model.encode(I_q, "image"), model.learned_codes("text"), L_q, L_db)
    t2i = mean_ap(model.encode(T_q, "text"), model.learned_codes("image"), L_q, L_db)
    return i2t, t2i


# ------------------------------------------------------------------ validation grid search
def _capture_training_features(h) -> list:
    """Make ``h.fit`` store the training kernel features it uses in the returned list, so that
    refitting the hash functions with another ridge reproduces exactly what ``fit`` with that
    ridge would give (``transform`` of the training data can differ from the features of
    ``fit_transform`` in the last float32 bit, which matters for tiny ridges)."""
    store: list = []
    fit_features = h._kernelize

    def kernelize(*args, **kwargs):
        phis = fit_features(*args, **kwargs)
        store[:] = phis
        return phis

    h._kernelize = kernelize
    return store


def validation_grid(cls, base: dict, grid: dict, ridge: str, ridges, *, bits=(16, 32, 64, 128),
                    val_seeds=(0, 1), seeds=(0,), data=None, log=print):
    """Hyper-parameter search on validation splits of the Wiki TRAINING set only.

    For every point of ``grid`` (merged into ``base``) the method is fitted on the training
    part of ``validation_split(0.2, random_state=s)`` for each ``s`` in ``val_seeds``, each
    code length and each model seed; the 20 % held-out training pairs are the queries and the
    learned codes of the rest the database. The hash-function ridge (``ridge``) is refitted on
    the same codes for every value in ``ridges`` (step 2 does not change B). Because I->T uses
    only the image hash function and T->I only the text one, the image ridge is chosen by the
    I->T score and the text ridge by the T->I score; a configuration scores the mean of the
    two. Returns the list of rows sorted by score (best first).
    """
    import itertools

    from cmhash.data import load_dataset
    from cmhash.metrics import mean_average_precision
    ds = load_dataset(str(data or WIKI))
    vals = {s: ds.validation_split(0.2, random_state=s) for s in val_seeds}
    rows = []
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo))
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in {**base, **point}.items()
                  if k != ridge}
        per = {r: {"i2t": [], "t2i": []} for r in ridges}
        for s, b, seed in itertools.product(val_seeds, bits, seeds):
            v = vals[s]
            views = v.views("train")
            h = cls(b, random_state=seed, **params, **{ridge: ridges[0]})
            phis = _capture_training_features(h)
            h.fit(*views, v.labels_of("train"))
            qL, dL = v.labels_of("query"), v.labels_of("train")
            for r in ridges:
                h._fit_hash_functions(phis, h.codes_, r)
                per[r]["i2t"].append(float(mean_average_precision(
                    h.encode(v.get("query", "image"), "image"), h.learned_codes("text"), qL, dL)))
                per[r]["t2i"].append(float(mean_average_precision(
                    h.encode(v.get("query", "text"), "text"), h.learned_codes("image"), qL, dL)))
        mean = {r: {t: float(np.mean(x)) for t, x in d.items()} for r, d in per.items()}
        r_img = max(ridges, key=lambda r: mean[r]["i2t"])
        r_txt = max(ridges, key=lambda r: mean[r]["t2i"])
        row = {"point": point, "ridge_image": r_img, "ridge_text": r_txt,
               "i2t": mean[r_img]["i2t"], "t2i": mean[r_txt]["t2i"], "by_ridge": mean}
        row["score"] = (row["i2t"] + row["t2i"]) / 2
        rows.append(row)
        log(f"{point} {ridge}=({r_img:g}, {r_txt:g}): val I->T {row['i2t']:.4f} "
            f"T->I {row['t2i']:.4f} score {row['score']:.4f}")
    return sorted(rows, key=lambda r: -r["score"])
