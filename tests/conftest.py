"""Shared test fixtures: small structured data and the location of ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CMHASH_SHARED") or REPO.parent / "shared")  # "" = unset, as the loader
WIKI = SHARED / "datasets" / "wiki" / "wiki_data.mat"


def make_structured(n=400, n_classes=5, d_image=20, d_text=15, noise=0.5, seed=0,
                    multilabel=0.2):
    """Paired two-modality data whose features depend on multi-hot labels."""
    rng = np.random.default_rng(seed)
    Y = np.zeros((n, n_classes))
    Y[np.arange(n), rng.integers(0, n_classes, n)] = 1
    Y[rng.random((n, n_classes)) < multilabel / n_classes] = 1
    Px = rng.standard_normal((n_classes, d_image))
    Py = rng.standard_normal((n_classes, d_text))
    X = Y @ Px + noise * rng.standard_normal((n, d_image))
    T = Y @ Py + noise * rng.standard_normal((n, d_text))
    return X, T, Y


@pytest.fixture
def structured():
    return make_structured()


@pytest.fixture
def wiki():
    if not WIKI.exists():
        pytest.skip(f"real Wiki data not found at {WIKI}")
    import scipy.io as sio
    d = sio.loadmat(WIKI)
    return {k: d[k] for k in ("I_tr", "I_te", "T_tr", "T_te", "L_train", "L_test")}


def peak_fit_bytes(make_model, n, seed=3):
    """Peak traced memory (bytes) of ``make_model().fit`` on ``make_structured(n)`` data: the
    memory tests of the shallow methods compare it with one n x n float64 matrix."""
    import tracemalloc
    X, T, Y = make_structured(n, seed=seed)
    tracemalloc.start()
    try:
        make_model().fit(X, T, Y)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
