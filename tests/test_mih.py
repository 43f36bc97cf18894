"""Multi-index hashing k-NN (cmhash.mih): identical to the linear scan, stable ties included."""
import math

import numpy as np
import pytest

from cmhash import mih
from cmhash.codes import pack_codes, unpack_codes
from cmhash.index import HammingIndex


# --------------------------------------------------------------------------- data
def random_codes(rng, n, r):
    return np.where(rng.random((n, r)) < 0.5, -1, 1).astype(np.int8)


def learned_like_codes(rng, class_codes, n, flip_bits=1.0):
    """Class codes with each bit flipped with probability flip_bits / r: few distinct codes,
    many exact duplicates, hence huge tie groups."""
    r = class_codes.shape[1]
    B = class_codes[rng.integers(0, len(class_codes), n)]
    return (B * np.where(rng.random((n, r)) < flip_bits / r, -1, 1)).astype(np.int8)


def scan_search(B, Q, k):
    """Reference: the index's linear scan (itself checked against brute force in
    test_index.py)."""
    index = HammingIndex(B.shape[1], backend="numpy", knn="scan")
    index.add(B)
    return index.search(Q, k)


def brute_force(B, Q, k):
    r = B.shape[1]
    d = (r - Q.astype(np.int32) @ B.astype(np.int32).T) // 2
    order = np.argsort(d, axis=1, kind="stable")[:, :min(k, len(B))]
    return np.take_along_axis(d, order, axis=1), order


@pytest.fixture
def mih_only(monkeypatch):
    """No query is handed back to the scan (the MIH path answers everything), and any hand
    back fails the test."""
    monkeypatch.setattr(mih, "MIH_MAX_WORK", math.inf)
    search = mih.MIHTables.search

    def search_all(self, *args):
        rest = search(self, *args)
        assert len(rest) == 0, "MIH handed queries back to the scan"
        return rest

    monkeypatch.setattr(mih.MIHTables, "search", search_all)


def mih_index(B, **kw):
    index = HammingIndex(B.shape[1], backend="numpy", knn="mih", **kw)
    index.add(B)
    return index


def assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].dtype == np.int32 and a[1].dtype == np.int64


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("r", [16, 32, 64, 128, 12, 100])
@pytest.mark.parametrize("kind", ["random", "learned"])
def test_mih_knn_identical_to_scan(mih_only, r, kind):
    rng = np.random.default_rng(r)
    n = 2000
    if kind == "random":
        B, Q = random_codes(rng, n, r), random_codes(rng, 12, r)
    else:
        classes = random_codes(rng, 24, r)
        B, Q = learned_like_codes(rng, classes, n), learned_like_codes(rng, classes, 12)
    Q = np.concatenate([Q, B[[0, 7, n - 1]]])          # queries equal to database items
    index = mih_index(B)
    for k in (1, 10, 100, n + 5):                      # k > n is clamped to n
        out = index.search(Q, k)
        assert out[0].shape == (len(Q), min(k, n))
        assert_same(out, scan_search(B, Q, k))
    assert_same(index.search(Q[:4], 10), brute_force(B, Q[:4], 10))


@pytest.mark.parametrize("distinct", [True, False])
def test_tie_group_straddling_k_is_cut_by_id(mih_only, distinct):
    # 40 copies of code a and 40 of code b (at distance 1 from a) interleaved with far codes:
    # for the query a and k = 50 the answer is every copy of a, then the 10 smallest ids of b
    rng = np.random.default_rng(0)
    r = 32
    a = random_codes(rng, 1, r)[0]
    b = a.copy()
    b[5] *= -1
    far = random_codes(rng, 120, r)
    far[:, :r // 2] = -a[:r // 2]                      # >= 16 bits from a and from b
    B = far.copy()
    where = rng.permutation(len(B))
    B[where[:40]] = a
    B[where[40:80]] = b
    index = HammingIndex(r, backend="numpy", knn="mih")
    index.add(B)
    index._mih.tables = mih.MIHTables(index._buf[:index.ntotal], r, distinct=distinct)
    D, I = index.search(a, 50)
    ids_a, ids_b = np.sort(where[:40]), np.sort(where[40:80])
    np.testing.assert_array_equal(I[0], np.r_[ids_a, ids_b[:10]])
    np.testing.assert_array_equal(D[0], np.r_[np.zeros(40), np.ones(10)])
    assert_same((D, I), scan_search(B, a[None], 50))


@pytest.mark.parametrize("distinct", [True, False, None])
def test_distinct_code_option_and_massive_ties(mih_only, distinct):
    rng = np.random.default_rng(1)
    classes = random_codes(rng, 3, 64)
    B = classes[rng.integers(0, 3, 3000)]                # 3 distinct codes: ties everywhere
    Q = np.concatenate([classes, learned_like_codes(rng, classes, 5, flip_bits=3)])
    index = mih_index(B)
    index._mih.tables = mih.MIHTables(index._buf[:index.ntotal], 64, distinct=distinct)
    for k in (1, 10, 100, 1500, 3000):
        assert_same(index.search(Q, k), scan_search(B, Q, k))
    assert index._mih.tables.u == (3000 if distinct is False else 3)


def test_small_blocks_and_large_k(mih_only, monkeypatch):
    # write-out of distinct codes in blocks of a few items, a few queries per batch
    monkeypatch.setattr(mih, "EXPAND_BLOCK", 3)
    monkeypatch.setattr(mih, "KEPT_BLOCK", 150)
    rng = np.random.default_rng(11)
    classes = random_codes(rng, 5, 24)
    B = learned_like_codes(rng, classes, 1500, flip_bits=0.5)
    Q = np.concatenate([classes, learned_like_codes(rng, classes, 6, flip_bits=2)])
    index = mih_index(B)
    index._mih.tables = mih.MIHTables(index._buf[:1500], 24, distinct=True)
    batches = []
    search = mih.MIHTables.search          # (the fixture's wrapper)
    monkeypatch.setattr(mih.MIHTables, "search",
                        lambda self, q, *a: (batches.append(len(q)), search(self, q, *a))[1])
    for k in (1, 7, 60, 700):
        batches.clear()
        assert_same(index.search(Q, k), scan_search(B, Q, k))
        assert max(batches) == max(1, min(150 // k, 6))  # batch x k <= KEPT_BLOCK
    # k above MIH_MAX_K is scanned, whatever knn says
    monkeypatch.setattr(mih, "MIH_MAX_K", 50)
    calls = []
    monkeypatch.setattr(mih, "index_search", lambda *a: calls.append(1))
    assert_same(index.search(Q, 51), scan_search(B, Q, 51))
    assert not calls


def test_fallback_to_the_scan_gives_the_same_results(monkeypatch):
    # a tiny work budget hands most random-code queries back to the scan
    monkeypatch.setattr(mih, "MIH_MAX_WORK", 0.05)
    rng = np.random.default_rng(2)
    B, Q = random_codes(rng, 3000, 64), random_codes(rng, 30, 64)
    Q[:10] = B[:10]                                    # these finish at once in MIH (k=1)
    index = mih_index(B)
    scanned = []
    scan = index._scan_search
    index._scan_search = lambda q, *a: (scanned.append(len(q)), scan(q, *a))
    assert_same(index.search(Q, 1), scan_search(B, Q, 1))
    assert scanned == [20]
    assert_same(index.search(Q, 10), scan_search(B, Q, 10))


def test_threads_and_batches_agree(mih_only, monkeypatch):
    monkeypatch.setattr(mih, "QUERY_BATCH", 7)
    monkeypatch.setattr(mih, "PROBE_BLOCK", 50)          # many probe and candidate blocks
    monkeypatch.setattr(mih, "CANDIDATE_BLOCK", 40)
    rng = np.random.default_rng(3)
    classes = random_codes(rng, 24, 48)
    B = learned_like_codes(rng, classes, 2500, flip_bits=4)
    Q = learned_like_codes(rng, classes, 40, flip_bits=4)
    ref = scan_search(B, Q, 25)
    for threads in (1, 3):
        assert_same(mih_index(B, n_threads=threads).search(Q, 25), ref)


# --------------------------------------------------------------------------- index wiring
def test_tables_are_lazy_and_dropped_by_add_and_reset(mih_only):
    rng = np.random.default_rng(4)
    B = random_codes(rng, 1500, 32)
    index = mih_index(B[:1000])
    assert index._mih.tables is None                     # built at the first search
    assert_same(index.search(B[:5], 10), scan_search(B[:1000], B[:5], 10))
    assert index._mih.tables.n == 1000
    index.add(B[1000:])
    assert index._mih.tables is None
    assert_same(index.search(B[:5], 10), scan_search(B, B[:5], 10))
    assert index._mih.tables.n == 1500
    index.reset()
    assert index._mih.tables is None
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(B[:2], 3)


def test_saved_and_loaded_index_searches_by_mih(mih_only, tmp_path):
    rng = np.random.default_rng(5)
    classes = random_codes(rng, 24, 40)
    B = learned_like_codes(rng, classes, 1200)
    index = mih_index(B)
    before = index.search(B[:6], 30)
    index.save(tmp_path / "db.index")
    loaded = HammingIndex.load(tmp_path / "db.index")
    loaded.knn = "mih"
    assert_same(loaded.search(B[:6], 30), before)
    assert loaded._mih.tables is not None


def test_knn_option_is_validated():
    with pytest.raises(ValueError, match="knn must be one of"):
        HammingIndex(16, knn="fast")
    with pytest.raises(ValueError, match="knn must be one of"):
        HammingIndex(16, knn=None)


def test_auto_rule_builds_after_enough_scans_and_backs_off(monkeypatch):
    monkeypatch.setattr(mih, "MIH_MAX_WORK", math.inf)
    monkeypatch.setattr(mih, "AUTO_MIH_MIN_CODES", 1000)
    monkeypatch.setattr(mih, "AUTO_MIH_BUILD_QUERIES", 20)
    rng = np.random.default_rng(6)
    B = random_codes(rng, 2000, 64)
    index = HammingIndex(64, backend="numpy")            # knn="auto"
    index.add(B)
    calls = []
    search = mih.MIHTables.search
    monkeypatch.setattr(mih.MIHTables, "search",
                        lambda self, q, *a: (calls.append(len(q)), search(self, q, *a))[1])
    index.search(B[:15], 5)
    assert index._mih.tables is None and not calls       # scanned: 15 < 20 queries
    assert_same(index.search(B[:15], 5), scan_search(B, B[:15], 5))
    assert index._mih.tables is not None and calls       # 30 >= 20: built and used
    n_calls = len(calls)
    index.search(B[:3], mih.AUTO_MIH_MAX_K + 1)          # k beyond the rule: scan
    assert len(calls) == n_calls
    # a search that hands most queries back marks that k (and larger) as hopeless
    monkeypatch.setattr(mih, "MIH_MAX_WORK", 0.0)
    Q = random_codes(rng, 8, 64)
    assert_same(index.search(Q, 7), scan_search(B, Q, 7))
    assert index._mih.hopeless_k == 7
    n_calls = len(calls)
    index.search(Q, 9)
    assert len(calls) == n_calls                         # auto now scans for k >= 7
    index.search(Q, 3)
    assert len(calls) > n_calls                          # ... but still tries k < 7
    assert mih.mih_eligible(10**6, 100, 64) and not mih.mih_eligible(10**6, 101, 64)
    assert not mih.mih_eligible(10**6, 10, 128)


def test_knn_scan_never_builds_tables():
    rng = np.random.default_rng(7)
    B = random_codes(rng, 500, 16)
    index = HammingIndex(16, knn="scan")
    index.add(B)
    assert_same(index.search(B[:4], 5), brute_force(B, B[:4], 5))
    assert index._mih.tables is None


# --------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("b", [1, 5, 12, 21])
def test_flip_masks_are_all_values_with_s_bits_set(b):
    for s in range(b + 1):
        masks = mih.flip_masks(b, s)
        assert len(masks) == math.comb(b, s)
        assert np.all(np.diff(masks) > 0)                # ascending, so all different
        assert np.all(np.bitwise_count(masks) == s) and np.all(masks < 2**b)
    assert len(mih.flip_masks(b, b + 1)) == 0


@pytest.mark.parametrize("r, n", [(64, 10**6), (64, 10**7), (128, 10**6), (12, 3000),
                                  (16, 5), (256, 10**6), (30, 2**40)])
def test_substring_plan(r, n):
    plan = mih.plan_substrings(r, n)
    lengths = [b for _, b in plan]
    assert [a for a, _ in plan] == list(np.cumsum([0] + lengths[:-1]))   # contiguous
    assert sum(lengths) == r and max(lengths) - min(lengths) <= 1
    assert max(lengths) <= mih.MAX_SUBSTRING_BITS
    if n >= 2**mih.MIN_SUBSTRING_BITS:                   # Norouzi: about log2(n) bits each
        assert (abs(len(plan) - r / math.log2(n)) <= 0.5
                or len(plan) == math.ceil(r / mih.MAX_SUBSTRING_BITS))


def test_substring_keys_read_the_packed_bits():
    rng = np.random.default_rng(8)
    r = 100
    B = random_codes(rng, 50, r)
    P = np.zeros((50, 16), np.uint8)
    P[:, :13] = pack_codes(B)
    bits = (unpack_codes(pack_codes(B), r) > 0).astype(np.int64)
    for start, length in [(0, 1), (3, 21), (60, 10), (77, 23), (99, 1)]:
        want = bits[:, start:start + length] @ (1 << np.arange(length - 1, -1, -1))
        np.testing.assert_array_equal(mih._substring_keys(P, start, length), want)
        # the native-word mask covers exactly those bits
        x = np.zeros(16, np.uint8)
        x[:13] = pack_codes(np.ones((1, r), np.int8))[0]
        words = x.view(np.uint64)
        assert sum(int(np.bitwise_count(words[w] & mk)) for w, mk in
                   mih._word_masks(start, length, 2)) == length


def test_distinct_codes_and_row_sort():
    rng = np.random.default_rng(9)
    classes = rng.integers(0, 2**63, (6, 2), dtype=np.uint64)
    words = classes[rng.integers(0, 6, 500)]
    order = mih._argsort_rows(words)                     # any order of distinct rows
    assert sorted(order.tolist()) == list(range(500))
    srt = words[order]
    same = np.all(srt[1:] == srt[:-1], axis=1)
    assert np.all(order[1:][same] > order[:-1][same])    # stable: ids ascending in a group
    assert len(np.unique(srt[~np.r_[False, same]], axis=0)) == (~np.r_[False, same]).sum()
    first, item_ids, item_offsets = mih._distinct_codes(words)
    assert np.all(np.diff(first) > 0)                    # codes numbered by first item
    for c, f in enumerate(first):
        items = item_ids[item_offsets[c]:item_offsets[c + 1]]
        want = np.flatnonzero(np.all(words == words[f], axis=1))
        np.testing.assert_array_equal(items, want)       # every item, ascending
    assert item_offsets[-1] == 500 and len(first) == 6


def test_tables_are_compact_csr():
    rng = np.random.default_rng(10)
    B = random_codes(rng, 4000, 64)
    index = mih_index(B)
    tables = mih.MIHTables(index._buf[:4000], 64)
    assert tables.codes is None                          # random codes: no distinct layer
    for (start, length), ids, offsets in zip(tables.substrings, tables.ids, tables.offsets):
        assert ids.dtype == offsets.dtype == np.uint32
        assert len(ids) == 4000 and len(offsets) == 2**length + 1
        keys = mih._substring_keys(index._buf[:4000], start, length)
        assert np.all(np.diff(keys[ids]) >= 0)           # sorted by substring value
        v = keys[17]
        bucket = ids[offsets[v]:offsets[v + 1]]
        np.testing.assert_array_equal(bucket, np.flatnonzero(keys == v))
    assert tables.nbytes == sum(4 * 4000 + 4 * (2**b + 1) for _, b in tables.substrings)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "learned"])
def test_mih_knn_identical_to_scan_at_scale(kind):
    # the default work budget and table plan at a size where MIH pays on learned codes
    rng = np.random.default_rng(12)
    n, r = 400_000, 64
    if kind == "random":
        B, Q = random_codes(rng, n, r), random_codes(rng, 60, r)
    else:
        classes = random_codes(rng, 24, r)
        B = learned_like_codes(rng, classes, n, flip_bits=2)
        Q = learned_like_codes(rng, classes, 60, flip_bits=2)
    Q[:5] = B[:5]
    index = mih_index(B)
    for k in (1, 10, 100):
        assert_same(index.search(Q, k), scan_search(B, Q, k))
    assert (index._mih.tables.codes is not None) == (kind == "learned")
