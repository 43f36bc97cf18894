"""SCM-orth / SCM-seq: the semantic cross-covariance, the generalised eigenproblems, refusals."""
import numpy as np
import pytest
import scipy.linalg as sla

from cmhash.labels import normalize_rows
from cmhash.metrics import mean_average_precision
from cmhash.methods.scm import SCMOrth, SCMSeq, semantic_cross_covariance
from cmhash.solvers import sign
from conftest import make_structured


def _centred(m, X, T):
    return [k.transform(Z).astype(np.float64) for k, Z in zip(m.kernels_, (X, T))]


def test_semantic_cross_covariance_is_r_X_S_Y():
    X, T, Y = make_structured(50, seed=1)
    Ln = normalize_rows(Y)
    S = 2 * Ln @ Ln.T - 1
    assert np.allclose(semantic_cross_covariance(T, X, Y, 7), 7 * T.T @ S @ X)


@pytest.fixture(scope="module")
def data():
    return make_structured(200, n_classes=8, d_image=12, d_text=10, seed=3)


def _covariances(m, X, T, ridge=1e-6):
    Yc, Xc = _centred(m, X, T)                  # the code's X = text, Y = image
    Cxx = Xc.T @ Xc + ridge * np.eye(Xc.shape[1])
    Cyy = Yc.T @ Yc + ridge * np.eye(Yc.shape[1])
    return Xc, Yc, Cxx, Cyy


def test_scm_orth_solves_the_generalised_eigenproblem(data):
    X, T, Y = data
    m = SCMOrth(5, random_state=0).fit(X, T, Y)
    Xc, Yc, Cxx, Cyy = _covariances(m, X, T)
    Ln = normalize_rows(Y)
    Cxy = 5 * Xc.T @ (2 * Ln @ Ln.T - 1) @ Yc
    Wy, Wx = m.projections_
    e = m.correlations_
    assert np.allclose(Wx.T @ Cxx @ Wx, np.eye(5), atol=1e-8)
    assert np.allclose(Wy.T @ Cyy @ Wy, np.eye(5), atol=1e-8)
    A = Cxy @ np.linalg.solve(Cyy, Cxy.T)
    assert np.allclose(A @ Wx, Cxx @ Wx * e, rtol=1e-6, atol=1e-6 * np.abs(A @ Wx).max())
    all_e = sla.eigh(0.5 * (A + A.T), Cxx, eigvals_only=True)[::-1]
    assert np.allclose(e, all_e[:5], rtol=1e-7)            # the leading ones
    assert np.allclose(Wx.T @ Cxy @ Wy, np.diag(np.sqrt(e)), atol=1e-6 * np.sqrt(e[0]))
    assert np.array_equal(m.codes_[1], sign(Xc @ Wx)) and np.array_equal(m.codes_[0], sign(Yc @ Wy))
    assert np.array_equal(m.encode(T, "text"), m.codes_[1])


def test_scm_orth_refuses_more_bits_than_correlations(data):
    X, T, Y = data
    with pytest.raises(ValueError, match=r"n_bits=11 exceeds the text feature dimension \(10\)"):
        SCMOrth(11).fit(X, T, Y)
    Y3 = np.eye(3)[np.arange(200) % 3]     # one of c = 3 labels, centred X: rank <= c - 1 = 2
    with pytest.raises(ValueError, match=r"only 2 non-zero semantic correlations .*n_bits=6"):
        SCMOrth(6).fit(X, T, Y3)


def test_scm_seq_each_bit_is_the_leading_pair_of_the_residual(data):
    X, T, Y = data
    r = 12
    m = SCMSeq(r, random_state=0).fit(X, T, Y)
    assert m.n_sequential_ == r                          # the paper: every bit sequential
    Xc, Yc, Cxx, Cyy = _covariances(m, X, T)
    Ln = normalize_rows(Y)
    residual = r * (2 * Ln @ Ln.T - 1)                     # n x n here only: a small test
    Wy, Wx = m.projections_
    assert 1 <= m.n_sequential_ <= r and len(m.correlations_) == m.n_sequential_
    for t in range(m.n_sequential_):
        Cxy = Xc.T @ residual @ Yc
        A = Cxy @ np.linalg.solve(Cyy, Cxy.T)
        top = sla.eigh(0.5 * (A + A.T), Cxx, eigvals_only=True)[-1]
        wx = Wx[:, t]
        assert wx @ Cxx @ wx == pytest.approx(1, rel=1e-8)
        assert wx @ A @ wx == pytest.approx(top, rel=1e-6)
        assert m.correlations_[t] == pytest.approx(top, rel=1e-6)
        bx, by = sign(Xc @ wx).astype(float), sign(Yc @ Wy[:, t]).astype(float)
        residual = residual - np.outer(bx, by)


def test_scm_seq_falls_back_to_cca_when_the_correlation_would_grow(data, monkeypatch):
    import cmhash.methods.scm as scm
    X, T, Y = data
    real = scm.leading_correlations
    calls = []

    def growing(Cxx, Cyy, Cxy, k):                       # the 4th sequential bit "grows"
        Wx, Wy, e = real(Cxx, Cyy, Cxy, k)
        calls.append(1)
        return (Wx, Wy, e * 10) if len(calls) == 5 else (Wx, Wy, e)

    monkeypatch.setattr(scm, "leading_correlations", growing)
    m = SCMSeq(8, cca_fallback=True).fit(X, T, Y)
    assert m.n_sequential_ == 3
    Xc, Yc, Cxx, Cyy = _covariances(m, X, T)
    Wx_cca, _, _ = real(Cxx, Cyy, Xc.T @ Yc, 8)
    assert np.allclose(np.abs(m.projections_[1][:, 3:]), np.abs(Wx_cca[:, ::-1][:, 3:]))
    calls.clear()
    assert SCMSeq(8).fit(X, T, Y).n_sequential_ == 8       # without the heuristic: no stop
    with pytest.raises(ValueError, match=r"cca_fallback=True: n_bits=11 exceeds the text"):
        SCMSeq(11, cca_fallback=True).fit(X, T, Y)


def test_retrieval_beats_chance(data):
    X, T, Y = make_structured(600, n_classes=5, d_image=12, d_text=10, seed=2)
    tr, te = np.arange(480), np.arange(480, 600)
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    for m in (SCMOrth(4).fit(X[tr], T[tr], Y[tr]), SCMSeq(16).fit(X[tr], T[tr], Y[tr])):
        ap = mean_average_precision(m.encode(X[te], "image"), m.learned_codes("text"), Y[te], Y[tr])
        assert ap > chance + 0.25
