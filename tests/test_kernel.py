"""RBF anchor features: definition, chunking, sparse input, persistence."""
import numpy as np
import scipy.sparse as sp
import pytest

import cmhash.kernel as kernel_module
from cmhash.kernel import CenteredFeatures, RBFAnchorFeatures


def _reference(X, A):
    D = ((X[:, None, :] - A[None, :, :]) ** 2).sum(-1)
    sigma = D.mean()
    phi = np.exp(-D / (2 * sigma))
    return phi, sigma


def test_matches_definition_and_is_centred():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 7))
    k = RBFAnchorFeatures(40, dtype=np.float64, chunk_size=33, random_state=1).fit(X)
    phi_ref, sigma_ref = _reference(X, k.anchors_)
    assert np.isclose(k.sigma_, sigma_ref)
    phi = k.transform(X)
    assert np.allclose(phi, phi_ref - phi_ref.mean(axis=0), atol=1e-10)
    assert np.allclose(phi.mean(axis=0), 0, atol=1e-10)
    # anchors are training samples
    assert all(any(np.allclose(a, x) for x in X) for a in k.anchors_[:5])


def test_sparse_input_equals_dense_and_float32_default():
    rng = np.random.default_rng(1)
    Xd = (rng.random((200, 50)) < 0.05) * rng.random((200, 50))
    Xs = sp.csr_matrix(Xd)
    kd = RBFAnchorFeatures(30, random_state=3).fit(Xd)
    ks = RBFAnchorFeatures(30, random_state=3).fit(Xs)
    assert ks.transform(Xs).dtype == np.float32
    assert np.allclose(kd.transform(Xd), ks.transform(Xs), atol=1e-6)


def test_same_seed_same_anchors_and_kmeans_option():
    X = np.random.default_rng(2).standard_normal((500, 4))
    a = RBFAnchorFeatures(20, random_state=5).fit(X).anchors_
    b = RBFAnchorFeatures(20, random_state=5).fit(X).anchors_
    c = RBFAnchorFeatures(20, random_state=6).fit(X).anchors_
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    km = RBFAnchorFeatures(20, anchors="kmeans", random_state=5).fit(X)
    # k-means centres quantise the data better than random anchors
    def qerr(A):
        return ((X[:, None] - A[None]) ** 2).sum(-1).min(1).mean()
    assert qerr(km.anchors_) < qerr(a)


def test_validation_errors():
    X = np.random.default_rng(3).standard_normal((50, 4))
    k = RBFAnchorFeatures(10).fit(X)
    with pytest.raises(ValueError, match="features"):
        k.transform(np.ones((3, 5)))
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RBFAnchorFeatures(10).fit(bad)
    with pytest.raises(RuntimeError, match="not fitted"):
        RBFAnchorFeatures(10).transform(X)
    with pytest.raises(ValueError, match="anchors"):
        RBFAnchorFeatures(10, anchors="grid").fit(X)


def test_state_round_trip():
    X = np.random.default_rng(4).standard_normal((60, 3))
    k = RBFAnchorFeatures(10, random_state=0).fit(X)
    k2 = RBFAnchorFeatures.from_state(k.get_params(), k.get_state())
    assert np.array_equal(k.transform(X), k2.transform(X))
    c = CenteredFeatures().fit(X)
    c2 = CenteredFeatures.from_state(c.get_params(), c.get_state())
    assert np.allclose(c2.transform(X).mean(0), 0, atol=1e-6)


@pytest.mark.parametrize("block_elements", [None, 100])  # default cache blocks / 4-row blocks
@pytest.mark.parametrize("sparse_input", [False, True])
def test_fit_transform_equals_fit_then_transform(sparse_input, block_elements, monkeypatch):
    if block_elements is not None:
        monkeypatch.setattr(kernel_module, "CACHE_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(7)
    X = (rng.random((400, 30)) < 0.2) * rng.random((400, 30))
    X = sp.csr_matrix(X) if sparse_input else X
    a = RBFAnchorFeatures(25, chunk_size=64, random_state=2)
    b = RBFAnchorFeatures(25, chunk_size=64, random_state=2)
    phi_a = a.fit_transform(X)
    phi_b = b.fit(X).transform(X)
    # bit-identical: training features must equal what encode() computes for the same rows
    assert a.sigma_ == b.sigma_
    assert np.array_equal(a.mean_, b.mean_)
    assert np.array_equal(phi_a, phi_b)


def test_overflowing_distances_are_reported_as_such():
    # features of magnitude ~1e160 overflowed the squared distances (inf - inf = NaN) and fit
    # failed with "all training samples coincide with the anchors (sigma = 0)" after numpy
    # overflow RuntimeWarnings; the error now names the overflow, without numpy warnings
    import warnings
    from cmhash.base import make_hasher
    X = np.random.default_rng(0).standard_normal((50, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for big in (X * 1e160, sp.csr_matrix(X * 1e160)):
            with pytest.raises(ValueError, match="overflow float64"):
                RBFAnchorFeatures(10, random_state=0).fit(big)
        with pytest.raises(ValueError, match="overflow float64"):
            make_hasher("batch", n_bits=4, n_anchors=10, random_state=0).fit(
                X * 1e160, X, np.arange(50) % 3)
    with pytest.raises(ValueError, match="underflow to 0"):
        RBFAnchorFeatures(10, random_state=0).fit(X * 1e-200)


@pytest.mark.parametrize("anchors", ["random", "kmeans"])
def test_large_common_offset_does_not_destroy_the_distances(anchors, tmp_path):
    """||x||^2 + ||a||^2 - 2 x.a lost every digit of the distances for features 1e8 + N(0, 1):
    BATCH / ASCMH / ASFOH mAP fell from 0.97 to ~0.8 and half of AMSH's codes changed. Features
    whose mean is that large against their spread are now shifted by it first (shift_); the
    kernel features equal those of the unshifted data. Ordinary features are not shifted."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((300, 6))
    ref = RBFAnchorFeatures(25, anchors=anchors, random_state=1)
    phi_ref = ref.fit_transform(X)
    assert ref.shift_ is None and ref._anchors_eff is ref.anchors_   # untouched path
    for offset in (1e8, -3e10):
        k = RBFAnchorFeatures(25, anchors=anchors, random_state=1)
        phi = k.fit_transform(X + offset)
        assert k.shift_ is not None
        assert np.allclose(k.sigma_, ref.sigma_, rtol=1e-5)
        assert np.abs(phi - phi_ref).max() < 1e-4
        # a sparse query of the shifted model, and the model saved and loaded
        assert np.allclose(k.transform(sp.csr_matrix(X[:7] + offset)), phi[:7], atol=1e-6)
        k2 = RBFAnchorFeatures.from_state(k.get_params(), k.get_state())
        assert np.array_equal(k2.transform(X + offset), phi)
    assert "shift" not in ref.get_state()   # files of ordinary models are as before


def test_large_offset_fit_gives_the_same_codes():
    from cmhash.base import load, make_hasher
    from conftest import make_structured
    import tempfile, os
    X, T, Y = make_structured(200)
    for name in ("batch", "amsh"):
        kw = dict(n_bits=16, n_anchors=40, random_state=0)
        a = make_hasher(name, **kw).fit(X, T, Y)
        b = make_hasher(name, **kw).fit(X + 1e8, T + 1e8, Y)
        assert np.mean(a.encode(X, "image") != b.encode(X + 1e8, "image")) < 0.01
        with tempfile.TemporaryDirectory() as d:
            b2 = load(b.save(os.path.join(d, "m.npz")))
        assert np.array_equal(b2.encode(T + 1e8, "text"), b.encode(T + 1e8, "text"))


@pytest.mark.parametrize("block_elements", [None, 31 * 5])   # default / 5-row cache blocks
def test_in_place_distances_round_exactly_like_the_expression(block_elements, monkeypatch):
    # _sq_dist / _phi_in_place work in place on cache-sized blocks to save temporaries; the
    # features must stay bit-identical to the plain expression on the same rows (the blocks
    # change which rows share a product, not the operations), and the stored features are
    # fl32(fl32(raw) - fl32(mean)) (kernel module docstring)
    if block_elements is not None:
        monkeypatch.setattr(kernel_module, "CACHE_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((257, 9)) * 3.0 + 1.0
    k = RBFAnchorFeatures(31, dtype=np.float32, chunk_size=64, random_state=0).fit(X)
    A, sq = k.anchors_, kernel_module._squared_norms
    D = np.maximum(sq(X)[:, None] + sq(A)[None, :] - 2.0 * (X @ A.T), 0.0)
    raw = np.exp(-D / (2.0 * k.sigma_))
    expected = raw.astype(np.float32) - k.mean_.astype(np.float32)
    np.testing.assert_array_equal(k.transform(X), expected)
    np.testing.assert_allclose(k.mean_, raw.mean(axis=0), rtol=1e-13)


def test_features_equal_the_float64_definition_to_the_stated_rounding():
    """sigma in closed form and fl32(fl32(raw) - fl32(mean)) against the float64 definition
    (sigma = mean of the explicit distance matrix, phi = raw - mean rounded once): sigma to
    ~1e-15 relative, every feature within 3 u32 (raw, mean and phi are all in [-1, 1])."""
    u32 = np.finfo(np.float32).eps / 2
    rng = np.random.default_rng(9)
    for X in (rng.standard_normal((400, 12)) + 2.0,
              sp.csr_matrix((rng.random((400, 60)) < 0.1) * rng.random((400, 60)))):
        k = RBFAnchorFeatures(37, random_state=3)
        phi = k.fit_transform(X)
        Xd = X.toarray() if sp.issparse(X) else X
        ref, sigma = _reference(Xd, k.anchors_)
        assert abs(k.sigma_ - sigma) <= 1e-14 * sigma
        exact = ref - ref.mean(axis=0)
        assert np.abs(phi - exact).max() <= 3 * u32 + 1e-12


@pytest.mark.parametrize("sparse_input", [False, True])
def test_threaded_pass_equals_the_serial_loop(sparse_input, monkeypatch):
    """The chunks run on all cores (_threads.parallel_map); features, mean and sigma are
    bit-identical to a serial loop over the same chunks (the chunks' sums are added in order)."""
    rng = np.random.default_rng(10)
    X = (rng.random((700, 40)) < 0.2) * rng.random((700, 40))
    X = sp.csr_matrix(X) if sparse_input else X
    threaded = RBFAnchorFeatures(33, chunk_size=64, random_state=1)
    phi_t = threaded.fit_transform(X)
    monkeypatch.setattr(kernel_module, "parallel_map", lambda f, items: [f(x) for x in items])
    serial = RBFAnchorFeatures(33, chunk_size=64, random_state=1)
    phi_s = serial.fit_transform(X)
    np.testing.assert_array_equal(phi_t, phi_s)
    np.testing.assert_array_equal(threaded.mean_, serial.mean_)
    assert threaded.sigma_ == serial.sigma_


@pytest.mark.parametrize("sparse_input", [False, True])
def test_kmeans_in_blocks_equals_lloyd_on_the_full_distance_matrix(sparse_input):
    """The blockwise k-means (no (samples, q) matrix, member sums by one sparse product) equals
    Lloyd's algorithm written with the full distance matrix and np.add.at: the same centres bit
    for bit on dense input (same products, same elementwise expression, sums in sample order);
    on sparse input the product's summation order may differ in the last bits."""
    rng = np.random.default_rng(3)
    X = (rng.random((900, 25)) < 0.3) * rng.standard_normal((900, 25)) + 0.1
    Xin = sp.csr_matrix(X) if sparse_input else X
    q = 40
    got = kernel_module._kmeans_anchors(Xin, q, np.random.default_rng(5), max_samples=600)
    # reference: the previous implementation
    r = np.random.default_rng(5)
    sub = np.sort(r.choice(900, size=600, replace=False))
    S = X[sub]
    C = S[r.choice(600, size=q, replace=False)].copy()
    s_norm = np.einsum("ij,ij->i", S, S)
    for _ in range(10):
        D = s_norm[:, None] + np.einsum("ij,ij->i", C, C)[None, :] - 2.0 * S @ C.T
        assign = np.argmin(D, axis=1)
        counts = np.bincount(assign, minlength=q)
        sums = np.zeros_like(C)
        np.add.at(sums, assign, S)
        C[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
    if sparse_input:
        np.testing.assert_allclose(got, C, rtol=0, atol=1e-12)
    else:
        np.testing.assert_array_equal(got, C)
