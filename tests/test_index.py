import sys

import numpy as np
import pytest

from cmhash import index as index_mod
from cmhash.codes import pack_codes
from cmhash.index import HammingIndex, faiss_available

@pytest.fixture(autouse=True)
def _faiss_single_thread():
    """One OpenMP thread in tests: tiny searches, and faiss's spin-waiting threads make
    each call take tens of ms on a busy (oversubscribed) machine."""
    if not faiss_available():
        yield
        return
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


BACKENDS = ["numpy", pytest.param("faiss", marks=pytest.mark.skipif(
    not faiss_available(), reason="faiss not installed"))]


# --------------------------------------------------------------------------- reference
def ref_distances(Q, B):
    r = B.shape[1]
    # d = (r - q.b) / 2; einsum on int32 (exact, and no BLAS threads to contend for)
    return (r - np.einsum("ij,kj->ik", Q.astype(np.int32), B.astype(np.int32))) // 2


def ref_search(Q, B, k):
    """Brute force: full stable sort of every row by (distance, id)."""
    d = ref_distances(Q, B)
    order = np.argsort(d, axis=1, kind="stable")[:, :min(k, B.shape[0])]
    return np.take_along_axis(d, order, axis=1), order


def ref_range(Q, B, radius):
    d = ref_distances(Q, B)
    lims, D, ids = [0], [], []
    for row in d:
        hit = np.flatnonzero(row <= radius)
        o = np.lexsort((hit, row[hit]))
        ids.append(hit[o])
        D.append(row[hit][o])
        lims.append(lims[-1] + len(hit))
    return np.array(lims), np.concatenate(D), np.concatenate(ids)


def tie_heavy_codes(rng, n, r, n_distinct=40):
    """Codes drawn from a few distinct patterns (exact duplicates -> large tie groups),
    mixed with fully random ones."""
    base = np.where(rng.random((n_distinct, r)) < 0.5, -1, 1).astype(np.int8)
    B = base[rng.integers(0, n_distinct, n)]
    rand = rng.random(n) < 0.3
    B[rand] = np.where(rng.random((int(rand.sum()), r)) < 0.5, -1, 1)
    return B


def assert_search_matches(index, Q, B, k):
    D, I = index.search(Q, k)
    Dr, Ir = ref_search(Q, B, k)
    assert D.dtype == np.int32 and I.dtype == np.int64
    np.testing.assert_array_equal(D, Dr)
    np.testing.assert_array_equal(I, Ir)


def assert_range_matches(index, Q, B, radius):
    lims, D, I = index.range_search(Q, radius)
    lr, Dr, Ir = ref_range(Q, B, radius)
    assert lims.dtype == np.int64 and D.dtype == np.int32 and I.dtype == np.int64
    np.testing.assert_array_equal(lims, lr)
    np.testing.assert_array_equal(D, Dr)
    np.testing.assert_array_equal(I, Ir)


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("r", [8, 12, 16, 64, 128])
def test_search_and_range_match_bruteforce_with_ties(backend, r):
    rng = np.random.default_rng(r)
    # 600 codes: small-database path; 5000: per-query counting path (numpy backend)
    for n in (600, 5000):
        B = tie_heavy_codes(rng, n, r)
        Q = np.concatenate([B[:5], tie_heavy_codes(rng, 15, r)])
        index = HammingIndex(r, backend=backend)
        index.add(B[: n // 3])
        index.add(B[n // 3:])                 # appends: ids continue in insertion order
        assert index.ntotal == n
        for k in (1, 7, 100, n - 1, n):
            assert_search_matches(index, Q, B, k)
        for radius in (0, 1, 2, r // 4, r):
            assert_range_matches(index, Q, B, radius)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_codes_use_uint16_distances(backend):
    rng = np.random.default_rng(3)
    r = 300
    B, Q = tie_heavy_codes(rng, 700, r), tie_heavy_codes(rng, 9, r)
    index = HammingIndex(r, backend=backend)
    index.add(B)
    assert_search_matches(index, Q, B, 50)
    assert_range_matches(index, Q, B, 140)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_ntotal_is_clamped(backend):
    rng = np.random.default_rng(0)
    B = tie_heavy_codes(rng, 30, 16)
    index = HammingIndex(16, backend=backend)
    index.add(B)
    D, I = index.search(B[:4], 1000)
    assert D.shape == I.shape == (4, 30)
    assert_search_matches(index, B[:4], B, 1000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_input_and_single_query(backend):
    rng = np.random.default_rng(1)
    B = tie_heavy_codes(rng, 200, 12)
    index = HammingIndex(12, backend=backend)
    index.add(pack_codes(B), packed=True)
    D1, I1 = index.search(pack_codes(B[:3]), 10, packed=True)
    D2, I2 = index.search(B[:3], 10)
    np.testing.assert_array_equal(D1, D2)
    np.testing.assert_array_equal(I1, I2)
    D3, I3 = index.search(B[0], 10)                    # 1-D: one query
    np.testing.assert_array_equal(I3, I2[:1])
    np.testing.assert_array_equal(index.get_codes(), B)
    np.testing.assert_array_equal(index.get_codes(packed=True), pack_codes(B))


def test_numpy_threads_agree():
    rng = np.random.default_rng(2)
    B = tie_heavy_codes(rng, 5000, 64)
    Q = tie_heavy_codes(rng, 40, 64)
    out = []
    for threads in (1, 3):
        index = HammingIndex(64, backend="numpy", n_threads=threads)
        index.add(B)
        out.append(index.search(Q, 20) + index.range_search(Q, 20))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_search_batches_small_blocks(monkeypatch):
    """Tiny memory budgets: many query batches and database chunks, same results."""
    monkeypatch.setattr(index_mod, "QUERY_BLOCK_BYTES", 1)
    monkeypatch.setattr(index_mod, "DISTANCE_BLOCK_BYTES", 64)
    monkeypatch.setattr(index_mod, "SMALL_DB_FULL_SORT", 0)
    rng = np.random.default_rng(5)
    B, Q = tie_heavy_codes(rng, 300, 64), tie_heavy_codes(rng, 11, 64)
    index = HammingIndex(64, backend="numpy", n_threads=2)
    index.add(B)
    assert_search_matches(index, Q, B, 17)
    assert_range_matches(index, Q, B, 25)


class AdversarialFlat:
    """Stands in for faiss.IndexBinaryFlat: correct k nearest *distances*, but within a
    tie group it returns the largest ids, in descending order (anything faiss might do)."""

    def __init__(self, words):
        self.words = words
        self.range_calls = 0

    def search(self, q, k):
        qw = np.ascontiguousarray(q).view(np.uint64)
        d = np.zeros((qw.shape[0], self.words.shape[0]), np.int64)
        for j in range(qw.shape[1]):
            d += np.bitwise_count(qw[:, j:j + 1] ^ self.words[None, :, j])
        n = d.shape[1]
        key = d * n + (n - 1 - np.arange(n))          # ties: largest id first
        order = np.argsort(key, axis=1)[:, :k]
        return np.take_along_axis(d, order, 1).astype(np.int32), order.astype(np.int64)

    def range_search(self, q, radius):
        """faiss convention (d < radius), hits of each query in descending id order."""
        self.range_calls += 1
        qw = np.ascontiguousarray(q).view(np.uint64)
        lims, D, I = [0], [], []
        for row in qw:
            d = np.zeros(self.words.shape[0], np.int64)
            for j in range(qw.shape[1]):
                d += np.bitwise_count(row[j] ^ self.words[:, j])
            hit = np.flatnonzero(d < radius)[::-1]
            lims.append(lims[-1] + len(hit))
            D.append(d[hit].astype(np.float32))
            I.append(hit)
        return np.array(lims, np.uint64), np.concatenate(D), np.concatenate(I)


@pytest.mark.parametrize("k", [1, 5, 30, 64, 65, 200])
def test_faiss_tie_fixup_is_exact_for_any_tie_order(k):
    rng = np.random.default_rng(k)
    B = tie_heavy_codes(rng, 400, 16, n_distinct=8)      # tie groups of ~35 codes
    Q = tie_heavy_codes(rng, 25, 16, n_distinct=8)
    index = HammingIndex(16, backend="numpy")
    index.add(B)
    index._faiss_flat = fake = AdversarialFlat(index._words)
    D = np.empty((25, k), np.int32)
    I = np.empty((25, k), np.int64)
    completed = []
    numpy_search = index._numpy_search
    index._numpy_search = lambda qw, *a: (completed.append(len(qw)), numpy_search(qw, *a))
    index._faiss_search(index._prepare_queries(Q, False), k, D, I)
    Dr, Ir = ref_search(Q, B, k)
    np.testing.assert_array_equal(D, Dr)
    np.testing.assert_array_equal(I, Ir)
    # (seeded data) for these k some boundary tie groups run past the k + max(k, 64)
    # results asked from faiss, so the exact completion is exercised; for k=200 faiss is
    # asked for all 400 codes
    assert bool(completed) == (k in (5, 30, 64, 65))
    assert fake.range_calls == 0


def test_faiss_tie_fixup_memory_does_not_grow_with_tie_groups():
    # The completion of rows whose boundary tie group ran past faiss's k' results was a faiss
    # radius scan at the k-th distance for batches of 256 queries: its output is 256 x the
    # tie group, up to 256 x ntotal results (learned codes collapse onto a few class codes:
    # 200k codes of 2 patterns, k=10, took 846 MiB and ran 28x slower than NumPy). Now those
    # rows go through the NumPy counting path, whose memory is bounded by QUERY_BLOCK_BYTES.
    rng = np.random.default_rng(0)
    base = np.where(rng.random((2, 16)) < 0.5, -1, 1).astype(np.int8)
    B = base[rng.integers(0, 2, 3000)]
    Q = base[rng.integers(0, 2, 40)]
    index = HammingIndex(16, backend="numpy")
    index.add(B)
    index._faiss_flat = fake = AdversarialFlat(index._words)
    D = np.empty((40, 3), np.int32)
    I = np.empty((40, 3), np.int64)
    index._faiss_search(index._prepare_queries(Q, False), 3, D, I)
    Dr, Ir = ref_search(Q, B, 3)
    np.testing.assert_array_equal(D, Dr)
    np.testing.assert_array_equal(I, Ir)
    assert fake.range_calls == 0          # no (queries x tie group) radius-scan output


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("multihash", [False, True])
def test_faiss_radius_scan_and_multihash(multihash):
    rng = np.random.default_rng(9)
    r = 64
    B = tie_heavy_codes(rng, 3000, r)
    Q = B[rng.integers(0, 3000, 30)].copy()
    Q[::2, :2] *= -1
    index = HammingIndex(r, backend="faiss", multihash=multihash)
    index.add(B[:1000])
    for radius in (0, 1, 2, 3, 5):
        assert_range_matches(index, Q, B[:1000], radius)
    assert (index._faiss_mh is not None) == multihash
    index.add(B[1000:])                         # built indexes are kept in sync
    for radius in (0, 2, 3, 40):
        assert_range_matches(index, Q, B, radius)
    assert_search_matches(index, Q, B, 10)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_multihash_built_after_enough_scans(monkeypatch):
    monkeypatch.setattr(index_mod, "MULTIHASH_BUILD_QUERIES_PER_TABLE", 10)
    rng = np.random.default_rng(4)
    B = tie_heavy_codes(rng, 1000, 32)
    index = HammingIndex(32, backend="faiss")
    index.add(B)
    index.range_search(B[:5], 1)
    assert index._faiss_mh is None
    for _ in range(6):
        index.range_search(B[:5], 1)
    assert index._faiss_mh is not None
    assert_range_matches(index, B[:20], B, 1)


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip(tmp_path, backend):
    rng = np.random.default_rng(7)
    B = tie_heavy_codes(rng, 500, 12)
    index = HammingIndex(12, backend=backend)
    index.add(B)
    path = tmp_path / "index.bin"              # written to exactly this path
    index.save(path)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"format_version", "n_bits", "backend", "codes"}
        assert int(z["n_bits"]) == 12 and int(z["format_version"]) == 1
        np.testing.assert_array_equal(z["codes"], pack_codes(B))
    loaded = HammingIndex.load(path)
    assert loaded.n_bits == 12 and loaded.ntotal == 500 and loaded.backend == backend
    for a, b in zip(index.search(B[:9], 33), loaded.search(B[:9], 33)):
        np.testing.assert_array_equal(a, b)
    other = HammingIndex.load(path, backend="numpy")
    assert other.backend == "numpy"
    assert_search_matches(other, B[:9], B, 33)


def test_save_load_empty_and_bad_files(tmp_path):
    index = HammingIndex(20, backend="numpy")
    index.save(tmp_path / "empty.npz")
    loaded = HammingIndex.load(tmp_path / "empty.npz")
    assert loaded.ntotal == 0 and loaded.n_bits == 20
    np.savez(tmp_path / "bad.npz", codes=np.zeros((1, 1), np.uint8))
    with pytest.raises(ValueError, match="not a saved HammingIndex"):
        HammingIndex.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "future.npz", format_version=99, n_bits=8,
             codes=np.zeros((1, 1), np.uint8))
    with pytest.raises(ValueError, match="format version 99"):
        HammingIndex.load(tmp_path / "future.npz")


# --------------------------------------------------------------------------- errors / misc
def test_reset_and_errors():
    index = HammingIndex(16, backend="numpy")
    with pytest.raises(ValueError, match="index is empty"):
        index.search(np.ones((1, 16)), 3)
    with pytest.raises(ValueError, match="index is empty"):
        index.range_search(np.ones((1, 16)), 3)
    index.add(np.ones((4, 16)))
    with pytest.raises(ValueError, match="have 12 bits per code but the index holds 16-bit"):
        index.search(np.ones((2, 12)), 3)
    with pytest.raises(ValueError, match="have 8 bits per code"):
        index.add(np.ones((2, 8)))
    with pytest.raises(ValueError, match=r"has 1 bytes per code but 16 bits need ceil\(16/8\) = 2"):
        index.search(np.zeros((1, 1), np.uint8), 1, packed=True)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        index.search(np.ones((1, 16)), 0)
    with pytest.raises(ValueError, match="k must be >= 1, got -2"):
        index.search(np.ones((1, 16)), -2)
    with pytest.raises(TypeError, match="k must be an integer"):
        index.search(np.ones((1, 16)), 2.5)
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        index.range_search(np.ones((1, 16)), -1)
    with pytest.raises(ValueError, match="only -1 and \\+1; found 0"):
        index.search(np.zeros((1, 16)), 1)
    with pytest.raises(ValueError, match="n_bits must be a positive integer"):
        HammingIndex(0)
    with pytest.raises(ValueError, match="backend must be one of"):
        HammingIndex(8, backend="gpu")
    index.reset()
    assert index.ntotal == 0 and len(index) == 0
    with pytest.raises(ValueError, match="index is empty"):
        index.search(np.ones((1, 16)), 1)
    index.add(-np.ones((2, 16)))
    D, I = index.search(np.ones((1, 16)), 5)
    np.testing.assert_array_equal(D, [[16, 16]])     # complements: all bits differ
    np.testing.assert_array_equal(I, [[0, 1]])
    assert index.remove_all == index.reset or True
    index.remove_all()
    assert index.ntotal == 0


def test_fractional_radius_and_no_hits():
    index = HammingIndex(8, backend="numpy")
    index.add(np.ones((3, 8)))
    q = np.ones((2, 8))
    q[1, :3] = -1
    lims, D, I = index.range_search(q, 2.5)
    np.testing.assert_array_equal(lims, [0, 3, 3])
    np.testing.assert_array_equal(I, [0, 1, 2])
    lims, D, I = index.range_search(np.ones((0, 8)), 1)
    np.testing.assert_array_equal(lims, [0])


def test_faiss_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)      # makes `import faiss` fail
    assert not faiss_available()
    with pytest.raises(ImportError, match=r"pip install cmhash\[faiss\]"):
        HammingIndex(8, backend="faiss")
    index = HammingIndex(8)                              # auto -> numpy
    index.add(np.ones((3, 8)))
    D, I = index.search(np.ones((1, 8)), 2)
    np.testing.assert_array_equal(I, [[0, 1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_beyond_int64_fractions_and_infinity(backend):
    # a Python int radius beyond int64 (10**30) and a Fraction raised numpy's "ufunc
    # 'isfinite' not supported"; 1e30 already worked (clamped to n_bits)
    from fractions import Fraction
    rng = np.random.default_rng(0)
    B = tie_heavy_codes(rng, 50, 16)
    index = HammingIndex(16, backend=backend)
    index.add(B)
    for radius in (10**30, 1e30, 2**64, np.uint64(2**63)):
        assert_range_matches(index, B[:3], B, 16)
        lims, _, _ = index.range_search(B[:3], radius)
        np.testing.assert_array_equal(lims, [0, 50, 100, 150])
    for a, b in zip(index.range_search(B[:3], Fraction(5, 2)), index.range_search(B[:3], 2)):
        np.testing.assert_array_equal(a, b)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="radius must be a finite number >= 0"):
            index.range_search(B[:3], bad)
    with pytest.raises(ValueError, match="radius must be >= 0, got -1000000000000000000000000000000"):
        index.range_search(B[:3], -(10**30))
    for bad in (True, np.True_, "2", None, np.array(2)):
        with pytest.raises(TypeError, match="radius must be a number >= 0"):
            index.range_search(B[:3], bad)


def test_multihash_and_packed_flags_are_booleans():
    # multihash=1 passed the `in (None, True, False)` check but `is True` was False: it
    # silently never built the multi-hash index; np.True_ likewise. packed="no" was truthy
    with pytest.raises(TypeError, match="multihash must be None, True or False, got 1"):
        HammingIndex(8, multihash=1)
    with pytest.raises(TypeError, match="multihash must be None, True or False"):
        HammingIndex(8, multihash="yes")
    assert HammingIndex(8, multihash=np.True_).multihash is True
    assert HammingIndex(8, multihash=np.False_).multihash is False
    index = HammingIndex(8, backend="numpy")
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="packed must be True or False"):
            index.add(np.ones((2, 8)), packed=bad)
    index.add(np.ones((2, 8)), packed=np.False_)
    for bad in ("no", 0):
        with pytest.raises(TypeError, match="packed must be True or False"):
            index.search(np.ones((1, 8)), 1, packed=bad)
        with pytest.raises(TypeError, match="packed must be True or False"):
            index.range_search(np.ones((1, 8)), 1, packed=bad)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_multihash_numpy_true_builds_the_tables():
    rng = np.random.default_rng(1)
    B = tie_heavy_codes(rng, 500, 32)
    index = HammingIndex(32, backend="faiss", multihash=np.True_)
    index.add(B)
    assert_range_matches(index, B[:5], B, 1)
    assert index._faiss_mh is not None


GOOD_FILE = dict(format_version=np.int64(1), n_bits=np.int64(16), backend=np.str_("numpy"),
                 codes=np.zeros((3, 2), np.uint8))


@pytest.mark.parametrize("field, value, message", [
    ("n_bits", np.array([16, 8]), "'n_bits' must be an integer scalar"),       # was TypeError
    ("n_bits", np.float64(16.7), "'n_bits' must be an integer scalar"),        # was 16
    ("n_bits", np.str_("16"), "'n_bits' must be an integer scalar"),
    ("n_bits", np.int64(-4), "n_bits must be a positive integer"),
    ("format_version", np.array([1, 2]), "'format_version' must be an integer scalar"),
    ("format_version", np.int64(0), "format version 0"),                      # was loaded
    ("format_version", np.float64(1.5), "'format_version' must be an integer scalar"),
    ("backend", np.str_("gpu"), "saved backend 'gpu'"),
    ("backend", np.int64(3), "'backend' must be a string"),
    ("codes", np.zeros(2, np.uint8), "'codes' must be a 2-D"),                # was 1 code
    ("codes", np.zeros((3, 2), np.int8), "'codes' must be a 2-D"),            # was TypeError
    ("codes", np.zeros((3, 3), np.uint8), "3 bytes per code but 16 bits"),
])
def test_load_rejects_malformed_files(tmp_path, field, value, message):
    path = tmp_path / "bad.index"
    with path.open("wb") as f:
        np.savez(f, **{**GOOD_FILE, field: value})
    with pytest.raises(ValueError, match=message) as err:
        HammingIndex.load(path)
    assert str(path) in str(err.value)


def test_load_backend_override_and_faiss_file_without_faiss(tmp_path, monkeypatch):
    path = tmp_path / "f.index"
    with path.open("wb") as f:
        np.savez(f, **{**GOOD_FILE, "backend": np.str_("faiss")})
    with pytest.raises(ValueError, match="backend must be one of"):
        HammingIndex.load(path, backend="")       # was silently the saved backend
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"saved with backend='faiss'.*backend='numpy'"):
        HammingIndex.load(path)
    assert HammingIndex.load(path, backend="numpy").ntotal == 3


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_auto_backend_rule_depends_on_operation_call_size_and_code_width(monkeypatch):
    # large calls: radius search goes to faiss at any width, top-k only above one 64-bit word
    # (NumPy's one-word popcount path out-ran faiss's top-k at 16-64 bits, docs/search.md)
    monkeypatch.setattr(index_mod, "AUTO_FAISS_MIN_PAIRS", 4)
    rng = np.random.default_rng(0)
    for bits, search_faiss in ((16, False), (64, False), (65, True), (128, True)):
        index = HammingIndex(bits)
        index.add(np.where(rng.random((10, bits)) < 0.5, -1, 1))
        assert index._use_faiss("search", 1) is search_faiss, bits
        assert index._use_faiss("range", 1) is True, bits
        assert index._use_faiss("range", 0) is False  # 0 x 10 pairs: below the threshold
    assert HammingIndex(128, backend="numpy")._use_faiss("search", 10**6) is False
