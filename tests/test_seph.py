"""SePH: P, the KL objective and its gradient, the kept iterate, KLR wiring, the memory limit."""
import tracemalloc

import numpy as np
import pytest

import cmhash.methods.seph as seph_module
from cmhash import base
from cmhash.labels import normalize_rows
from cmhash.methods.seph import (SePH, SePHKM, SePHRnd, pair_bytes, seph_gradient,
                                 seph_objective, seph_probabilities)
from cmhash.solvers import sign
from conftest import held_out_maps, make_structured

FAST = dict(n_iter=120, n_anchors=20, klr_max_iter=100)


@pytest.fixture(scope="module")
def fitted():
    X, T, Y = make_structured(150, seed=9)
    return SePHKM(8, random_state=0, **FAST).fit(X, T, Y), X, T, Y


def test_probabilities_are_normalised_label_cosines():
    _, _, Y = make_structured(40, seed=1)
    P = seph_probabilities(Y)
    cos = normalize_rows(Y) @ normalize_rows(Y).T
    off = ~np.eye(40, dtype=bool)
    assert P.sum() == pytest.approx(1.0) and np.allclose(P, P.T)
    assert np.allclose(P[off], cos[off] / cos[off].sum())
    assert np.all(np.diag(P) == np.finfo(np.float64).tiny)
    with pytest.raises(ValueError, match="at least one pair of training samples sharing"):
        seph_probabilities(np.eye(5))


@pytest.mark.parametrize("precision, rtol", [("float64", 1e-6), ("float32", 2e-3)])
def test_gradient_and_value_match_the_objective(precision, rtol):
    """seph_gradient's value is Psi(H) and its gradient matches central finite differences of
    the reference objective (KL of the label distribution to the Hamming Student distribution
    plus the quantization loss)."""
    _, _, Y = make_structured(25, seed=2)
    P64 = seph_probabilities(Y)
    P = P64.astype(precision)
    rng = np.random.default_rng(0)
    H = rng.standard_normal((25, 4))
    weight = 0.3
    num, work = np.empty_like(P), np.empty_like(P)
    grad, cross = seph_gradient(H, P, weight, num, work)
    value = float(np.sum(P64 * np.log(P64))) + cross + weight * np.sum((np.abs(H) - 1) ** 2)
    assert value == pytest.approx(seph_objective(H, P64, weight), rel=rtol)
    h = 1e-5
    for i, j in [(0, 0), (3, 2), (24, 3), (11, 1)]:
        E = np.zeros_like(H)
        E[i, j] = h
        fd = (seph_objective(H + E, P64, weight) - seph_objective(H - E, P64, weight)) / (2 * h)
        assert grad[i, j] == pytest.approx(fd, rel=rtol, abs=1e-7)


def test_descent_keeps_the_best_iterate_and_codes_are_its_signs(fitted):
    m, X, T, Y = fitted
    obj = np.array(m.objective_)
    assert len(obj) == m.n_iter + 1 and m.best_iter_ == int(np.argmin(obj))
    assert obj.min() < 0.5 * obj[0]                       # the descent made progress
    P = seph_probabilities(Y)
    weight = m.alpha / (m.n_bits * X.shape[0])
    assert seph_objective(m.latent_, P, weight) == pytest.approx(obj.min(), rel=2e-3)
    assert np.array_equal(m.codes_, sign(m.latent_))
    assert np.allclose(m.latent_.mean(axis=0), 0, atol=1e-8)   # re-centred every iteration
    # objective_ holds the true Psi even while P is exaggerated: the start H0 = 1e-4 randn
    H0 = 1e-4 * np.random.default_rng(0).standard_normal(m.latent_.shape)
    assert obj[0] == pytest.approx(seph_objective(H0, P, weight), rel=1e-4)


def test_an_overshooting_descent_still_returns_its_best_iterate():
    """With a step far too large the objective rises again after its minimum: the codes come
    from the best iterate, not the last (as minKLD.m keeps minTrainCode)."""
    X, T, Y = make_structured(150, seed=9)
    m = SePHRnd(8, random_state=0, n_iter=150, n_anchors=10, klr_max_iter=5,
                learning_rate=1e4).fit(X, T, Y)
    obj = np.array(m.objective_)
    assert m.best_iter_ == int(np.argmin(obj)) < m.n_iter and obj[-1] > obj.min()
    weight = m.alpha / (m.n_bits * X.shape[0])
    assert seph_objective(m.latent_, seph_probabilities(Y), weight) == pytest.approx(
        obj.min(), rel=2e-3)


def test_hash_functions_fit_the_shared_codes_with_kmeans_or_random_samples(fitted):
    m, X, T, Y = fitted
    for v, Z in enumerate((X, T)):
        K = m.kernels_[v].transform(Z).astype(np.float64)
        assert np.array_equal(m.encode(Z, v), sign(K @ m.projections_[v]))
        assert np.mean(m.encode(Z, v) == m.codes_) > 0.8
        assert m.kernels_[v].anchors == "kmeans" and not m.kernels_[v].center
    rnd = SePHRnd(8, random_state=0, **FAST).fit(X, T, Y)
    assert rnd.kernels_[0].anchors == "random"
    # rows of the random kernel samples are training samples, k-means centres are not
    def is_training_row(a):
        return bool(np.isclose(X, a).all(axis=1).any())
    assert all(is_training_row(a) for a in rnd.kernels_[0].anchors_)
    assert not all(is_training_row(a) for a in m.kernels_[0].anchors_)
    # both variants share step 1 for the same seed
    assert np.array_equal(rnd.codes_, m.codes_)


def test_unified_codes_combine_both_modalities(fitted):
    from scipy.special import expit
    m, X, T, Y = fitted
    p = [expit(m.kernels_[v].transform(Z).astype(np.float64) @ m.projections_[v])
         for v, Z in enumerate((X, T))]
    expect = sign(p[0] * p[1] - (1 - p[0]) * (1 - p[1]))
    assert np.array_equal(m.encode_unified(X, T), expect)


def test_determinism_and_seeds():
    X, T, Y = make_structured(80, seed=3)
    a = SePHRnd(8, random_state=1, **FAST).fit(X, T, Y)
    b = SePHRnd(8, random_state=1, **FAST).fit(X, T, Y)
    c = SePHRnd(8, random_state=2, **FAST).fit(X, T, Y)
    assert np.array_equal(a.latent_, b.latent_) and np.array_equal(a.encode(T, 1), b.encode(T, 1))
    assert not np.array_equal(a.codes_, c.codes_)


def test_retrieval_beats_chance():
    i2t, t2i, chance = held_out_maps(lambda: SePHKM(16, random_state=0, n_iter=200, n_anchors=40,
                                                    klr_max_iter=150), n=400, n_train=300)
    assert i2t > chance + 0.3 and t2i > chance + 0.3


def test_pairwise_matrices_beyond_the_memory_limit_are_refused_before_allocation(monkeypatch):
    called = []
    monkeypatch.setattr(seph_module, "seph_probabilities", lambda *a, **k: called.append(1))
    X, T, Y = make_structured(300, seed=1)
    need = pair_bytes(300, "float32")
    assert need == 3 * 4 * 300 * 300 and pair_bytes(300, "float64") == 2 * need
    with pytest.raises(MemoryError, match=r"n x n: n=300 needs .* GiB \(3 dense n x n float32 "
                                          r"matrices\), above memory_limit=.*at most n=299"):
        SePHKM(8, memory_limit=need - 1).fit(X, T, Y)
    assert not called
    monkeypatch.undo()
    SePHKM(8, memory_limit=need, n_iter=2, n_anchors=10, klr_max_iter=2).fit(X, T, Y)


def test_measured_memory_is_the_pairwise_matrices():
    """Traced peak of step 1 at n = 1,500 is the 3 n x n matrices plus O(n r) (within 15 %)."""
    X, T, Y = make_structured(1500, seed=4)
    m = SePHRnd(8, random_state=0, n_iter=2, n_anchors=10, klr_max_iter=2)
    tracemalloc.start()
    try:
        m.fit(X, T, Y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pair_bytes(1500) <= peak < 1.15 * pair_bytes(1500)


@pytest.mark.parametrize("params, exc, match", [
    ({"anchor_method": "grid"}, ValueError, "anchor_method must be one of"),
    ({"precision": "float16"}, ValueError, "precision must be one of"),
    ({"alpha": -1}, ValueError, "alpha must be >= 0"),
    ({"learning_rate": 0}, ValueError, "learning_rate must be > 0"),
    ({"n_iter": 0}, ValueError, "n_iter must be >= 1"),
    ({"memory_limit": "4GB"}, TypeError, "memory_limit must be a real number"),
])
def test_bad_parameters(params, exc, match):
    X, T, Y = make_structured(40)
    with pytest.raises(exc, match=match):
        SePHKM(8, **params).fit(X, T, Y)


def test_registered_and_round_trips(tmp_path, fitted):
    m, X, T, Y = fitted
    assert base.get_method("seph-km") is SePHKM and base.get_method("seph-rnd") is SePHRnd
    assert SePHRnd().anchor_method == "random" and SePHKM().anchor_method == "kmeans"
    assert issubclass(SePHKM, SePH)
    loaded = base.load(m.save(tmp_path / "seph.npz"))
    assert type(loaded) is SePHKM
    assert np.array_equal(loaded.encode(T, "text"), m.encode(T, "text"))
