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
def test_in_place_exponent_rounds_exactly_like_the_expression(block_elements, monkeypatch):
    # _block_exponent works in place on cache-sized blocks with the scale folded into the
    # operands; the float64 features must stay bit-identical to the plain expression
    # exp(min(0, X (A^T / sigma) - ||x||^2 / (2 sigma) - ||a||^2 / (2 sigma))) on the same rows
    # (the blocks change which rows share a product, not the operations), and the stored
    # float32 features are fl32(fl32(raw) - fl32(mean)) (kernel module docstring)
    if block_elements is not None:
        monkeypatch.setattr(kernel_module, "CACHE_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((257, 9)) * 3.0 + 1.0
    k64 = RBFAnchorFeatures(31, dtype=np.float64, chunk_size=64, random_state=0).fit(X)
    k = RBFAnchorFeatures(31, dtype=np.float32, chunk_size=64, random_state=0).fit(X)
    A, sq, s = k.anchors_, kernel_module._squared_norms, k.sigma_
    block = min(64, kernel_module.CACHE_BLOCK_ELEMENTS // 31)   # the GEMM's rows per call
    cross = np.vstack([X[i:min(i + block, c + 64)] @ (np.ascontiguousarray(A.T) / s)
                       for c in range(0, len(X), 64) for i in range(c, c + 64, block)
                       if i < len(X)])
    E = cross - (sq(X) / (2.0 * s))[:, None] - sq(A) / (2.0 * s)
    raw = np.exp(np.minimum(E, 0.0))
    np.testing.assert_array_equal(k64.transform(X), raw - k64.mean_)
    expected = raw.astype(np.float32) - k.mean_.astype(np.float32)
    np.testing.assert_array_equal(k.transform(X), expected)
    np.testing.assert_allclose(k.mean_, raw.mean(axis=0), rtol=1e-13)


def test_raw_features_of_the_anchors_are_clamped_at_one():
    """At an anchor the exponent x.a / sigma - ||x||^2 / (2 sigma) - ||a||^2 / (2 sigma) is 0
    in exact arithmetic and rounds above 0 for many anchors of these features; the clamp keeps
    every raw feature in [0, 1] (the stated rounding bound assumes it)."""
    X = np.random.default_rng(4).standard_normal((2000, 30)) * 3.0 + 5.0
    k = RBFAnchorFeatures(200, dtype=np.float64, center=False, random_state=0).fit(X)
    raw = k.transform(k.anchors_)
    assert raw.max() <= 1.0 and np.abs(np.diag(raw) - 1.0).max() < 1e-13


def _stated_rounding_cases(rng):
    """(name, X, whether the sparse product is expected): dense (GEMM), dense with a large
    common offset (shift_ set; GEMM), dense with 3 % nonzeros (converted to CSR: sparse
    product), CSR below the crossover (sparse product) and above it (densified blocks, GEMM)."""
    dense = rng.standard_normal((400, 12)) + 2.0
    few = (rng.random((400, 60)) < 0.03) * rng.standard_normal((400, 60))   # signed
    return [("dense", dense, False), ("dense shifted", dense + 1e8, False),
            ("dense sparsified", few, True), ("sparse", sp.csr_matrix(few), True),
            ("sparse densified",
             sp.csr_matrix((rng.random((400, 60)) < 0.6) * rng.random((400, 60))), False)]


def _record_products(monkeypatch) -> list:
    """Record, per block, whether the distances take scipy's sparse product (True) or a GEMM
    (False) -- the cost model's choices (_densify for CSR blocks, _sparse_if_cheaper for dense
    unshifted ones)."""
    sparse_product = []
    densify, sparsify = kernel_module._densify, kernel_module._sparse_if_cheaper

    def spy_densify(Xb, q):
        sparse_product.append(not densify(Xb, q))
        return not sparse_product[-1]

    def spy_sparsify(Xb, q, buffers):
        out = sparsify(Xb, q, buffers)
        sparse_product.append(sp.issparse(out[0]))
        return out
    monkeypatch.setattr(kernel_module, "_densify", spy_densify)
    monkeypatch.setattr(kernel_module, "_sparse_if_cheaper", spy_sparsify)
    return sparse_product


@pytest.mark.parametrize("center", [True, False])
def test_features_equal_the_float64_definition_to_the_stated_rounding(center, monkeypatch):
    """sigma in closed form and fl32(fl32(raw) - fl32(mean)) against the float64 definition
    exp(-||x - a||^2 / (2 sigma)) (explicit differences; sigma = mean of the explicit distance
    matrix, phi = raw - mean rounded once): sigma to ~1e-15 relative, every feature within
    3 u32 (raw, mean and phi are all in [-1, 1]); on every path of the distances (sparse and
    dense input on both sides of the crossovers, dense input with a large common offset)."""
    u32 = np.finfo(np.float32).eps / 2
    rng = np.random.default_rng(9)
    sparse_product = _record_products(monkeypatch)
    for name, X, expect_sparse_product in _stated_rounding_cases(rng):
        sparse_product.clear()
        k = RBFAnchorFeatures(37, center=center, random_state=3)
        phi = k.fit_transform(X)
        Xd = X.toarray() if sp.issparse(X) else X
        ref, sigma = _reference(Xd, k.anchors_)
        assert abs(k.sigma_ - sigma) <= 1e-14 * sigma, name
        exact = ref - ref.mean(axis=0) if center else ref
        assert np.abs(phi - exact).max() <= 3 * u32 + 1e-12, name
        assert (k.shift_ is not None) == (name == "dense shifted")
        # the path the case is meant to take (the cost model's choice per block)
        expected = [] if name == "dense shifted" else [expect_sparse_product]
        assert sorted(set(sparse_product)) == expected, name


def test_sparse_and_dense_products_agree_and_fit_equals_transform(monkeypatch):
    """The cost model decides per block: a matrix whose blocks fall on both sides of the
    crossover, given as CSR and as a dense array, takes both products in both forms; the
    float64 features agree with each other and the definition to rounding, and fit_transform
    still equals fit + transform bit for bit (same blocks, same decisions)."""
    rng = np.random.default_rng(12)
    dens = np.repeat([0.02, 0.9], 150)[:, None]        # sparse rows, then dense-ish rows
    X = (rng.random((300, 40)) < dens) * rng.random((300, 40))
    monkeypatch.setattr(kernel_module, "CACHE_BLOCK_ELEMENTS", 100 * 30)   # 30-row blocks
    sparse_product = _record_products(monkeypatch)
    phis = []
    for Xin in (sp.csr_matrix(X), X):              # CSR input, then the same rows dense
        sparse_product.clear()
        a = RBFAnchorFeatures(100, dtype=np.float64, random_state=0)
        phi_a = a.fit_transform(Xin)
        assert True in sparse_product and False in sparse_product
        phi_b = RBFAnchorFeatures(100, dtype=np.float64, random_state=0).fit(Xin).transform(Xin)
        np.testing.assert_array_equal(phi_a, phi_b)
        phis.append(phi_a)
    np.testing.assert_allclose(phis[0], phis[1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(phis[0], _reference(X, a.anchors_)[0] - a.mean_, rtol=0,
                               atol=1e-14)


def test_high_dimensional_sparse_input_is_never_densified(monkeypatch):
    """A 100,000-d bag of words at 0.01 % stays on the sparse product (no (rows, d) buffer);
    so does a block above the density crossover whose dense copy would exceed
    DENSIFY_MAX_ELEMENTS."""
    def no_buffer(self, rows, copy_of=None):
        raise AssertionError("a (rows, d) dense buffer was allocated")
    monkeypatch.setattr(kernel_module._BlockBuffers, "dense", no_buffer)
    X = sp.random(500, 100_000, density=1e-4, format="csr", random_state=0)
    X = X + sp.csr_matrix((np.ones(500), (np.arange(500), np.arange(500))), shape=X.shape)
    phi = RBFAnchorFeatures(50, random_state=0).fit_transform(X)
    assert np.isfinite(phi).all()
    wide = sp.csr_matrix(np.ones((4, kernel_module.DENSIFY_MAX_ELEMENTS // 2)))
    assert not kernel_module._densify(wide, 500)
    assert kernel_module._densify(sp.csr_matrix(np.ones((4, 100))), 500)


def test_overflow_inside_the_distance_pass_is_reported():
    """sigma is finite (ordinary training data) but a query's squared norm and product overflow
    float64 (inf - inf): a ValueError naming the overflow, not NaN features."""
    X = np.random.default_rng(0).standard_normal((60, 4)) * 1e-100   # sigma ~ 1e-200
    for center in (True, False):
        k = RBFAnchorFeatures(10, center=center, random_state=0).fit(X)
        query = np.sign(k.anchors_[:1]) * 1e250     # x.a / sigma = +inf, ||x||^2 = inf
        with pytest.raises(ValueError, match="overflow float64"):
            k.transform(query)


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
