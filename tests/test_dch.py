"""DCH: DCC bit updates are exact, every block is minimised, the objective never increases."""
import itertools

import numpy as np
import pytest

import cmhash.methods.dch as dch_module
from cmhash.metrics import mean_average_precision
from cmhash.methods.dch import DCH
from cmhash.solvers import sign
from cmhash.solvers_discrete import dcc, dcc_objective
from conftest import make_structured, peak_fit_bytes


def _problem(n=9, r=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return (sign(rng.standard_normal((n, r))).astype(float), rng.standard_normal((n, r)),
            rng.standard_normal((r, c)))


def test_dcc_sweep_is_exact_column_by_column_minimisation():
    """One sweep equals minimising the objective over each column in turn, by brute force over
    all 2^n values of that column with the others fixed (ties go to -1, as sign does)."""
    B, Q, W = _problem(n=8, r=3)
    expect = B.copy()
    columns = [np.array(c) for c in itertools.product((-1.0, 1.0), repeat=8)]
    for k in range(3):
        def value(col):
            Bc = expect.copy()
            Bc[:, k] = col
            return dcc_objective(Bc, Q, W)
        expect[:, k] = min(columns, key=value)
    got, sweeps = dcc(B, Q, W, n_sweeps=1)
    assert sweeps == 1 and np.array_equal(got, expect)


def test_dcc_never_increases_and_stops_at_a_fixed_point():
    B, Q, W = _problem(n=60, r=6, c=4, seed=1)
    values = [dcc_objective(B, Q, W)]
    Bt = B
    for _ in range(6):
        Bt, _ = dcc(Bt, Q, W, n_sweeps=1)
        values.append(dcc_objective(Bt, Q, W))
    assert np.all(np.diff(values) <= 1e-12 * abs(values[0])) and values[-1] < values[0]
    Bf, sweeps = dcc(B, Q, W, n_sweeps=50)
    assert sweeps < 50                              # reached a fixed point
    base = dcc_objective(Bf, Q, W)
    for i, j in itertools.product(range(60), range(6)):
        Bp = Bf.copy()
        Bp[i, j] *= -1
        assert dcc_objective(Bp, Q, W) >= base - 1e-12 * abs(base)
    assert np.array_equal(dcc(Bf, Q, W, 5)[0], Bf) and dcc(Bf, Q, W, 5)[1] == 1


def test_dcc_checks_shapes():
    B, Q, W = _problem()
    with pytest.raises(ValueError, match="dcc: B"):
        dcc(B, Q[:, :2], W)


@pytest.fixture(scope="module")
def recorded():
    calls = []
    real = dch_module.dcc

    def recording(B, Q, W, n_sweeps):
        out = real(B, Q, W, n_sweeps)
        calls.append((np.array(B), Q, W, out[0]))
        return out

    dch_module.dcc = recording
    try:
        X, T, Y = make_structured(150, seed=4)
        hp = dict(lambda_w=2.0, nu=0.7, xi=0.3, kernel=True, n_anchors=(20, 25))
        m = DCH(8, n_iter=4, n_sweeps=30, random_state=0, **hp).fit(X, T, Y)
    finally:
        dch_module.dcc = real
    phis = [k.transform(Z).astype(np.float64) for k, Z in zip(m.kernels_, (X, T))]
    return m, hp, phis, Y, calls


def explicit_objective(B, W, Ps, phis, L, hp):
    val = np.sum((L - B @ W) ** 2) + hp["lambda_w"] * np.sum(W * W)
    for p, P in zip(phis, Ps):
        val += hp["nu"] * (np.sum((B - p @ P) ** 2) + hp["xi"] * np.sum(P * P))
    return val


def test_every_block_is_minimised_and_the_objective_never_increases(recorded):
    m, hp, phis, L, calls = recorded
    obj = np.array(m.objective_)
    assert len(obj) == 4 and np.all(np.diff(obj) <= 1e-9 * obj[:-1]) and obj[-1] < obj[0]
    B, W, Ps = m.codes_.astype(float), m.classifier_, m.projections_
    assert obj[-1] == pytest.approx(explicit_objective(B, W, Ps, phis, L, hp), rel=1e-8)
    # W-step and F-step: zero gradient at the final B
    assert np.abs(B.T @ (B @ W - L) + hp["lambda_w"] * W).max() < 1e-9 * np.abs(B.T @ L).max()
    for p, P in zip(phis, Ps):
        grad = p.T @ (p @ P - B) + hp["xi"] * P
        assert np.abs(grad).max() < 1e-5 * np.abs(p.T @ B).max()
    # B-step: Q = L W^T + nu sum phi P at the previous W, P; no single flip of the result helps
    B_old, Q, W_old, B_new = calls[-1]
    full = lambda Bc: explicit_objective(Bc, W_old, m_prev_Ps, phis, L, hp)   # noqa: E731
    Q_expected = L @ W_old.T
    m_prev_Ps = [np.linalg.solve(p.T @ p + hp["xi"] * np.eye(p.shape[1]), p.T @ calls[-2][3])
                 for p in phis]
    for p, P in zip(phis, m_prev_Ps):
        Q_expected = Q_expected + hp["nu"] * p @ P
    assert np.allclose(Q, Q_expected, atol=1e-5 * np.abs(Q).max())
    assert np.array_equal(B_new, B)
    for _, Qt, Wt, Bt in calls:                                  # every B-step ends at a
        assert np.array_equal(dcc(Bt, Qt, Wt, 1)[0], Bt)          # DCC fixed point
    base = full(B_new)
    rng = np.random.default_rng(0)
    for i, j in zip(rng.integers(0, 150, 300), rng.integers(0, 8, 300)):
        Bp = B_new.copy()
        Bp[i, j] *= -1
        assert full(Bp) >= base - 1e-9 * base
    assert full(B_new) <= full(B_old) + 1e-9 * base


def test_encode_uses_the_hash_functions(recorded):
    m, hp, phis, L, calls = recorded
    X, T, _ = make_structured(150, seed=4)
    assert np.array_equal(m.encode(T, "text"), sign(phis[1] @ m.projections_[1]))
    assert m.codes_.dtype == np.int8 and set(np.unique(m.codes_)) <= {-1, 1}


@pytest.mark.parametrize("kernel", [False, True])
def test_retrieval_beats_chance(kernel):
    X, T, Y = make_structured(700, seed=2, noise=1.0)
    tr, te = np.arange(550), np.arange(550, 700)
    m = DCH(16, kernel=kernel, n_anchors=80, random_state=0).fit(X[tr], T[tr], Y[tr])
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    for q, Q in (("image", X[te]), ("text", T[te])):
        ap = mean_average_precision(m.encode(Q, q), m.learned_codes("text"), Y[te], Y[tr])
        assert ap > chance + 0.3


def test_same_seed_same_codes():
    X, T, Y = make_structured(120)
    a, b = (DCH(8, random_state=3).fit(X, T, Y) for _ in range(2))
    assert np.array_equal(a.codes_, b.codes_)


def test_memory_has_no_n_by_n_matrix():
    n = 6000
    peak = peak_fit_bytes(lambda: DCH(16, nu=0.1, n_iter=2, random_state=0), n)
    assert peak < 0.05 * n * n * 8


@pytest.mark.parametrize("param, value, exc, match", [
    ("lambda_w", 0.0, ValueError, "lambda_w must be > 0, got 0.0"),
    ("nu", -1.0, ValueError, "nu must be >= 0"),
    ("kernel", 1, TypeError, "kernel must be True or False, got 1"),
    ("n_sweeps", 0, ValueError, "n_sweeps must be >= 1, got 0"),
])
def test_parameters_are_validated(param, value, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        DCH(8, **{param: value}).fit(X, T, Y)
