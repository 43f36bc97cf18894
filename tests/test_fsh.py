"""FSH: the fused graph is the diffusion formula, each step solves its block, memory is bounded."""
import itertools
import tracemalloc

import numpy as np
import pytest

import cmhash.methods.fsh as fsh_module
from cmhash import base
from cmhash.methods.fsh import FSH, best_eta, fsh_objective, fusion_graphs, graph_bytes, relaxed_b
from cmhash.solvers import sign
from conftest import held_out_maps, make_structured


@pytest.fixture(scope="module")
def fitted():
    X, T, Y = make_structured(200, seed=7)
    m = FSH(8, n_anchor_pairs=20, n_neighbors=4, n_iter=6, eta=0.3, random_state=0).fit(X, T, Y)
    return m, X, T, Y


def test_fusion_graphs_are_the_neighbourhood_averages():
    """A1[i, a] = mean over p in Nx(i), q in Ny(a) of W_x[p, q] (and A2 with the roles
    swapped), checked by brute force against explicit neighbour sets."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((15, 3)), rng.standard_normal((15, 4))
    ax, ay = X[:6], Y[:6]
    k, sigma = 3, 0.8
    A1, A2 = fusion_graphs([X, Y], [ax, ay], k, sigma)

    def knn(F, A):
        d = ((F[:, None, :] - A[None, :, :]) ** 2).sum(-1)
        return [set(np.argsort(row)[:k]) for row in d]

    def aff(A):
        return np.exp(-np.sqrt(((A[:, None] - A[None]) ** 2).sum(-1)) / (2 * sigma ** 2))

    Wx, Wy = aff(ax), aff(ay)
    nx, ny, anx, any_ = knn(X, ax), knn(Y, ay), knn(ax, ax), knn(ay, ay)
    for i, a in itertools.product(range(15), range(6)):
        assert A1[i, a] == pytest.approx(np.mean([Wx[p, q] for p in nx[i] for q in any_[a]]))
        assert A2[i, a] == pytest.approx(np.mean([Wy[p, q] for p in ny[i] for q in anx[a]]))


def test_relaxed_b_step_zeroes_the_gradient():
    rng = np.random.default_rng(1)
    D, Bs = rng.random((30, 8)), sign(rng.standard_normal((8, 4))).astype(float)
    P = [rng.standard_normal((30, 4)), rng.standard_normal((30, 4))]
    lam = 2.5
    B = relaxed_b(D, Bs, P, lam, data_weight=1.0)
    grad = -(D - B @ Bs.T) @ Bs + lam * (B - P[0]) + lam * (B - P[1])
    assert np.abs(grad).max() < 1e-10 * np.abs(D @ Bs).max()
    # the released right-hand side doubles the projections' pull
    B2 = relaxed_b(D, Bs, P, lam, data_weight=2.0)
    assert np.allclose(B2 @ (Bs.T @ Bs + 2 * lam * np.eye(4)), D @ Bs + 2 * lam * (P[0] + P[1]))


def test_eta_step_is_the_exact_minimiser_on_the_interval():
    rng = np.random.default_rng(2)
    A1, A2 = 3 * rng.random((20, 5)), 3 * rng.random((20, 5))
    B, Bs = (sign(rng.standard_normal(s)).astype(float) for s in ((20, 3), (5, 3)))
    eta = best_eta(A2, A1 - A2, B, Bs)
    assert 0 < eta < 1
    grid = np.linspace(0, 1, 2001)
    values = [np.sum((e * A1 + (1 - e) * A2 - B @ Bs.T) ** 2) for e in grid]
    assert np.sum((eta * A1 + (1 - eta) * A2 - B @ Bs.T) ** 2) <= min(values) + 1e-12
    assert best_eta(A2, A1 - A2, B, Bs) == best_eta(A2 + 0, A1 - A2, B, Bs)
    assert best_eta(A2 - 50, A1 - A2 + 0 * A1, B, Bs) in (0.0, 1.0)    # far target: clipped


def test_anchor_code_step_is_exact_for_orthogonal_codes():
    """With B^T B = n I the term ||B Bs^T||^2 = n ||Bs||^2 is constant on the binary set, so
    Bs = sign(D^T B) minimises ||D - B Bs^T||^2 exactly: no single flip improves it."""
    H = np.array([[1.0]])
    for _ in range(3):
        H = np.block([[H, H], [H, -H]])                 # 8 x 8 Hadamard
    B = np.vstack([H, H])[:, :5]                        # n = 16, B^T B = 16 I
    D = np.random.default_rng(3).random((16, 7))
    Bs = sign(D.T @ B).astype(float)
    base_value = np.sum((D - B @ Bs.T) ** 2)
    for i, j in itertools.product(range(7), range(5)):
        P = Bs.copy()
        P[i, j] *= -1
        assert np.sum((D - B @ P.T) ** 2) >= base_value - 1e-12


def test_fit_steps_and_recorded_objective(fitted):
    m, X, T, Y = fitted
    Xs = [m.kernels_[v].transform(fsh_module._unit_rows(Z, copy=True)).astype(float)
          for v, Z in enumerate((X, T))]
    B = m.codes_.astype(float)
    for Xm, W in zip(Xs, m.projections_):             # W-step: ridge regression onto B
        grad = Xm.T @ (Xm @ W - B) + m.xi * W
        assert np.abs(grad).max() < 1e-7 * np.abs(Xm.T @ B).max()
    assert set(np.unique(m.codes_)) <= {-1, 1} and m.anchor_codes_.shape == (20, 8)
    assert len(m.objective_) == 6 and m.eta_trace_ == [0.3] * 6
    assert m.graph_bytes_ == graph_bytes(200, 20)
    # objective_ is J at the final (B, Bs, W, eta), written out with the n x m matrices
    A1, A2 = fusion_graphs(Xs, m.anchors_, m.n_neighbors, m.sigma)
    D = m.eta_ * A1 + (1 - m.eta_) * A2
    J = np.sum((D - B @ m.anchor_codes_.T) ** 2) + m.lam * sum(
        np.sum((B - Xm @ W) ** 2) + m.xi * np.sum(W * W) for Xm, W in zip(Xs, m.projections_))
    assert m.objective_[-1] == pytest.approx(J, rel=1e-9)
    # the last Bs-step used the graph weighted by the previous eta
    eta_used = m.eta_trace_[-2]
    D_used = eta_used * A1 + (1 - eta_used) * A2
    assert np.array_equal(m.anchor_codes_, sign(D_used.T @ B))
    assert fsh_objective(D, B, m.anchor_codes_, Xs, m.projections_, m.lam, m.xi) == \
        pytest.approx(J, rel=1e-9)


def test_unsupervised_labels_do_not_change_the_codes():
    X, T, Y = make_structured(120, seed=8)
    Y2 = np.roll(Y, 1, axis=1)
    kw = dict(n_anchor_pairs=15, n_neighbors=3, n_iter=4, random_state=5)
    a, b = FSH(8, **kw).fit(X, T, Y), FSH(8, **kw).fit(X, T, Y2)
    assert np.array_equal(a.codes_, b.codes_)
    c = FSH(8, **{**kw, "random_state": 6}).fit(X, T, Y)
    assert not np.array_equal(a.codes_, c.codes_)


def test_retrieval_beats_chance():
    i2t, t2i, chance = held_out_maps(lambda: FSH(16, n_anchor_pairs=40, n_neighbors=5, n_iter=20,
                                                 random_state=0), noise=0.5)
    assert i2t > chance + 0.2 and t2i > chance + 0.2


def test_graph_beyond_the_memory_limit_is_refused_before_any_work(monkeypatch):
    called = []
    monkeypatch.setattr(fsh_module, "fusion_graphs", lambda *a, **k: called.append(1))
    X, T, Y = make_structured(300, seed=1)
    need = graph_bytes(300, 100)
    with pytest.raises(MemoryError, match=r"n=300 samples x m=100 anchors need .* GiB, above "
                                          r"memory_limit"):
        FSH(8, n_anchor_pairs=100, memory_limit=need - 1).fit(X, T, Y)
    assert not called


def test_graph_memory_is_what_graph_bytes_says():
    """Peak traced memory of a fit is dominated by the graph once n x m is large: at least
    the graph's bytes and not more than ~2x of them plus the O(n (d + r)) rest."""
    X, T, Y = make_structured(4000, seed=3)
    tracemalloc.start()
    try:
        FSH(8, n_anchor_pairs=400, n_neighbors=3, n_iter=1, random_state=0).fit(X, T, Y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    need = graph_bytes(4000, 400)
    assert need <= peak < 1.25 * need


@pytest.mark.parametrize("params, exc, match", [
    ({"n_neighbors": 30, "n_anchor_pairs": 20}, ValueError, "n_neighbors=30 must be at most"),
    ({"eta": 1.5}, ValueError, r"eta must be None \(learned\) or in \[0, 1\]"),
    ({"lam": 0.0}, ValueError, "lam must be > 0"),
    ({"anchor_method": "grid"}, ValueError, "anchor_method must be one of"),
    ({"released_b_step": 1}, TypeError, "released_b_step must be True or False"),
    ({"memory_limit": -1}, ValueError, "memory_limit must be > 0"),
])
def test_bad_parameters(params, exc, match):
    X, T, Y = make_structured(40)
    with pytest.raises(exc, match=match):
        FSH(8, **params).fit(X, T, Y)


def test_registered_and_round_trips(tmp_path, fitted):
    m, X, T, Y = fitted
    assert base.get_method("fsh") is FSH
    loaded = base.load(m.save(tmp_path / "fsh.npz"))
    assert np.array_equal(loaded.encode(X, "image"), m.encode(X, "image"))
    # encode is sign(X_m W_m) of the unit-norm, centred rows
    Xm = m.kernels_[1].transform(fsh_module._unit_rows(T, copy=True))
    assert np.array_equal(m.encode(T, "text"), sign(Xm @ m.projections_[1].astype(np.float32)))
