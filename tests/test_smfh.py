"""SMFH: graph pieces, the Sylvester V-step, every block minimised, no n x n matrix."""
import numpy as np
import pytest
import scipy.sparse as sp

import cmhash.methods.smfh as smfh_module
from cmhash.methods.smfh import (SMFH, GraphLaplacian, knn_adjacency, knn_indices,
                                 solve_graph_sylvester)
from cmhash.metrics import mean_average_precision
from cmhash.solvers import sign
from conftest import make_structured, peak_fit_bytes

HP = dict(image_weight=0.3, beta=3.0, gamma=0.7, lam=0.2)


def test_knn_graph_is_the_symmetrised_k_nearest_neighbour_graph():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    # duplicated points (a twin, and six copies of one point): the copies are neighbours and
    # the k-d tree need not return the point itself first
    for data in (X, np.vstack([X, X[:2]]), np.vstack([X, np.repeat(X[:1], 5, axis=0)])):
        n = data.shape[0]
        D = ((data[:, None] - data[None]) ** 2).sum(-1)
        np.fill_diagonal(D, np.inf)
        idx = knn_indices(data, 3)
        assert idx.shape == (n, 3) and not np.any(idx == np.arange(n)[:, None])
        assert all(len(set(row)) == 3 for row in idx)
        # the k smallest distances to other points (ties may pick either point)
        assert np.allclose(np.sort(np.take_along_axis(D, idx, 1), 1), np.sort(D, 1)[:, :3])
        expect = np.zeros((n, n))
        expect[np.repeat(np.arange(n), 3), idx.ravel()] = 1
        assert np.array_equal(knn_adjacency(data, 3).toarray(), np.maximum(expect, expect.T))


def test_graph_laplacian_products_match_the_dense_laplacian():
    rng = np.random.default_rng(1)
    A = sp.random(25, 25, density=0.2, random_state=1)
    A = ((A + A.T) > 0).astype(float)
    Y = (rng.random((25, 4)) < 0.4).astype(float)
    W = A.toarray() + Y @ Y.T
    dense = np.diag(W.sum(1)) - W
    g = GraphLaplacian(A, Y)
    V = rng.standard_normal((25, 3))
    assert np.allclose(g.matmul(V), dense @ V) and np.allclose(g.matmul(V[:, 0]), dense @ V[:, 0])
    assert g.quadratic(V) == pytest.approx(np.trace(V.T @ dense @ V))


def test_sylvester_solution():
    rng = np.random.default_rng(2)
    A = sp.random(40, 40, density=0.1, random_state=2)
    A = ((A + A.T) > 0).astype(float)
    g = GraphLaplacian(A, (rng.random((40, 3)) < 0.3).astype(float))
    M = rng.standard_normal((5, 5))
    Ar = M @ M.T + 5 * np.eye(5)
    N = rng.standard_normal((40, 5))
    V = solve_graph_sylvester(g, 0.8, Ar, N)
    assert np.abs(2 * 0.8 * g.matmul(V) + V @ Ar - N).max() < 1e-8 * np.abs(N).max()


@pytest.fixture(scope="module")
def recorded():
    calls = []
    real = smfh_module.smfh_objective

    def rec(*a, **k):
        calls.append((a, k))
        return real(*a, **k)

    smfh_module.smfh_objective = rec
    try:
        X, T, Y = make_structured(120, seed=4)
        m = SMFH(6, n_neighbors=4, n_iter=4, random_state=0, **HP).fit(X, T, Y)
    finally:
        smfh_module.smfh_objective = real
    Xs = [k.transform(Z).astype(np.float64) for k, Z in zip(m.kernels_, (X, T))]
    G = calls[0][0][3]
    return m, Xs, Y, G, calls


def explicit_objective(V, Us, Ps, Xs, G):
    a = (HP["image_weight"], 1 - HP["image_weight"])
    val = HP["gamma"] * G.quadratic(V) + HP["lam"] * np.sum(V * V)
    for w, X, U, P in zip(a, Xs, Us, Ps):
        val += w * np.sum((X - V @ U) ** 2) + HP["beta"] * np.sum((V - X @ P) ** 2)
        val += HP["lam"] * (np.sum(U * U) + np.sum(P * P))
    return val


def test_every_block_is_minimised_and_the_objective_never_increases(recorded):
    m, Xs, Y, G, calls = recorded
    a = (HP["image_weight"], 1 - HP["image_weight"])
    obj = np.array(m.objective_)
    assert len(obj) == 4 and np.all(np.diff(obj) <= 1e-9 * obj[:-1]) and obj[-1] < obj[0]
    (V0, _, P0s, *_), _ = calls[1]
    (V, Us, Ps, *_), _ = calls[2]
    assert obj[2] == pytest.approx(explicit_objective(V, Us, Ps, Xs, G), rel=1e-8)
    lam, beta, gamma = HP["lam"], HP["beta"], HP["gamma"]
    for w, X, U in zip(a, Xs, Us):              # U-step at the previous V
        grad = w * V0.T @ (V0 @ U - X) + lam * U
        assert np.abs(grad).max() < 1e-8 * np.abs(V0.T @ X).max()
    terms = [w * (V @ U - X) @ U.T for w, X, U in zip(a, Xs, Us)]       # V-step
    terms += [beta * (V - X @ P) for X, P in zip(Xs, P0s)] + [gamma * G.matmul(V), lam * V]
    scale = max(np.abs(t).max() for t in terms)
    assert np.abs(sum(terms)).max() < 1e-5 * scale
    for X, P in zip(Xs, Ps):                    # P-step at the new V
        grad = beta * X.T @ (X @ P - V) + lam * P
        assert np.abs(grad).max() < 1e-6 * beta * np.abs(X.T @ V).max()


def test_codes_and_hash_functions(recorded):
    m, Xs, Y, G, calls = recorded
    # the graph: k-NN graphs of both modalities plus the label graph Y Y^T
    A = knn_adjacency(Xs[0], 4) + knn_adjacency(Xs[1], 4)
    W = A.toarray() + Y @ Y.T
    V = np.random.default_rng(0).standard_normal((120, 3))
    assert np.allclose(G.matmul(V), (np.diag(W.sum(1)) - W) @ V)
    assert np.array_equal(m.codes_, sign(m.latent_))
    assert np.abs(m.latent_.mean(axis=0)).max() < 1e-6 * np.abs(m.latent_).max()
    X, T, _ = make_structured(120, seed=4)
    assert np.array_equal(m.encode(T, "text"), sign(Xs[1] @ m.projections_[1]))


def test_retrieval_beats_chance():
    X, T, Y = make_structured(600, seed=2, noise=1.0)
    tr, te = np.arange(480), np.arange(480, 600)
    m = SMFH(16, random_state=0).fit(X[tr], T[tr], Y[tr])
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    for q, Q, db in (("image", X[te], "text"), ("text", T[te], "image")):
        ap = mean_average_precision(m.encode(Q, q), m.learned_codes(db), Y[te], Y[tr])
        assert ap > chance + 0.2


def test_memory_has_no_n_by_n_matrix():
    n = 3000
    peak = peak_fit_bytes(lambda: SMFH(8, n_iter=1, random_state=0), n)
    assert peak < 0.05 * n * n * 8


@pytest.mark.parametrize("param, value, exc, match", [
    ("image_weight", 1.0, ValueError, r"image_weight must be in \(0, 1\)"),
    ("lam", 0.0, ValueError, "lam must be > 0, got 0.0"),
    ("n_neighbors", 0, ValueError, "n_neighbors must be >= 1, got 0"),
])
def test_parameters_are_validated(param, value, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        SMFH(8, **{param: value}).fit(X, T, Y)
