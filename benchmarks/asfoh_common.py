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
