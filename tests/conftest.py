"""Shared test fixtures: small structured data and the location of ../shared."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CMHASH_SHARED") or REPO.parent / "shared")  # "" = unset, as the loader
WIKI = SHARED / "datasets" / "wiki" / "wiki_data.mat"


def local_dask_client():
    """A 2-worker LocalCluster client (generator for module-scoped fixtures); closed after."""
    from cmhash.distributed import make_client
    c = make_client("local:2", dashboard=False)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


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


#: fast settings of every registered method, shared by the tests that run each method (a new
#: method is added here once; test_base fails while a registered method has no entry). n_bits
#: is 8 unless an entry sets it (SCM-orth: at most as many bits as non-zero semantic
#: correlations, c - 1 = 1 for two single-label classes); TA-ADCMH kernelises its image input
#: so that the learned input_kernels_ are exercised too
QUICK = {
    "batch": dict(n_anchors=20, n_iter=1), "ascmh": dict(n_anchors=20, n_iter=1),
    "asfoh": dict(n_anchors=20, n_iter=1), "amsh": dict(n_anchors=20, n_iter=1),
    "scratch": dict(n_anchors=20, n_iter=1), "dch": dict(kernel=True, n_anchors=20, n_iter=1),
    "cmfh": dict(n_iter=1), "dlfh": dict(n_iter=1), "kdlfh": dict(n_anchors=20, n_iter=1),
    "smfh": dict(n_iter=1), "scm-orth": dict(n_bits=1), "scm-seq": {},
    "gsph": dict(n_anchors=20, n_iter=1, klr_max_iter=5),
    "fsh": dict(n_anchor_pairs=20, n_neighbors=3, n_iter=1),
    "seph-km": dict(n_anchors=20, n_iter=2, klr_max_iter=5),
    "seph-rnd": dict(n_anchors=20, n_iter=2, klr_max_iter=5),
    "lssh": dict(n_atoms=16, n_iter=1), "lcmfh": dict(n_iter=1),
    "ta-adcmh": dict(n_epochs=1, image_hidden=(16,), text_hidden=16, device="cpu",
                     input_kernel="image", n_anchors=12),
    "sdch": dict(n_epochs=1, batch_size=32, image_hidden=(16,), text_hidden=(16,),
                 feature_dim=8, device="cpu"),
    "dcmh": dict(n_epochs=1, image_hidden=(16,), text_hidden=16, device="cpu"),
}
#: the methods that need PyTorch (the [deep] extra)
DEEP_METHODS = {"ta-adcmh", "sdch", "dcmh"}
HAS_TORCH = importlib.util.find_spec("torch") is not None


def quick_methods() -> list:
    """The registered methods this installation can run (the deep ones only with torch)."""
    from cmhash.base import available_methods
    return [m for m in available_methods() if m not in DEEP_METHODS or HAS_TORCH]


def quick_hasher(name, **params):
    """An unfitted ``name`` estimator with its QUICK settings (n_bits 8, seed 0 by default);
    ``params`` override them."""
    from cmhash.base import make_hasher
    return make_hasher(name, **{"n_bits": 8, "random_state": 0, **QUICK[name], **params})


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


def held_out_maps(model_factory, n=600, n_train=450, noise=1.0, seed=2):
    """``(i2t, t2i, chance)``: a model from ``model_factory()`` fitted on the first ``n_train``
    of ``make_structured(n)`` samples, its held-out mAPs against the learned training codes
    (the learned-database protocol) and the chance level (the share of relevant pairs)."""
    from cmhash.metrics import mean_average_precision
    X, T, Y = make_structured(n, seed=seed, noise=noise)
    tr, te = np.arange(n_train), np.arange(n_train, n)
    m = model_factory().fit(X[tr], T[tr], Y[tr])
    i2t = mean_average_precision(m.encode(X[te], "image"), m.learned_codes("text"), Y[te], Y[tr])
    t2i = mean_average_precision(m.encode(T[te], "text"), m.learned_codes("image"), Y[te], Y[tr])
    return i2t, t2i, float(np.mean((Y[te] @ Y[tr].T) > 0))
