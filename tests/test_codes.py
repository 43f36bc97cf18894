import numpy as np
import pytest

from cmhash.codes import (
    as_uint64,
    hamming_distances,
    n_bytes,
    pack_codes,
    to_words,
    unpack_codes,
)


def random_codes(rng, n, r):
    return np.where(rng.random((n, r)) < 0.5, -1, 1).astype(np.int8)


def reference_distances(Q, B):
    r = Q.shape[1]
    dot = np.einsum("ij,kj->ik", Q.astype(np.int32), B.astype(np.int32))
    return ((r - dot) // 2).astype(np.int32)


@pytest.mark.parametrize("r", [1, 7, 8, 12, 16, 63, 64, 65, 100, 128])
def test_pack_unpack_round_trip(r):
    rng = np.random.default_rng(r)
    B = random_codes(rng, 37, r)
    P = pack_codes(B)
    assert P.dtype == np.uint8 and P.shape == (37, n_bytes(r))
    U = unpack_codes(P, r)
    assert U.dtype == np.int8
    np.testing.assert_array_equal(U, B)
    # padding bits of the last byte are zero
    pad = 8 * n_bytes(r) - r
    if pad:
        assert not np.any(P[:, -1] & ((1 << pad) - 1))


def test_pack_bit_order_is_big_endian_plus_one_is_bit_one():
    B = np.array([[1, -1, -1, -1, -1, -1, -1, -1, -1, 1, 1, -1],
                  [-1] * 12])
    P = pack_codes(B)
    np.testing.assert_array_equal(P, [[0b10000000, 0b01100000], [0, 0]])
    np.testing.assert_array_equal(P, np.packbits(B > 0, axis=1))


def test_pack_accepts_other_numeric_dtypes():
    B = np.array([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])
    np.testing.assert_array_equal(unpack_codes(pack_codes(B), 3), B.astype(np.int8))


@pytest.mark.parametrize("bad", [0, 2, -2])
def test_pack_rejects_values_other_than_pm1(bad):
    B = np.ones((3, 8), dtype=np.int8)
    B[1, 4] = bad
    with pytest.raises(ValueError, match=rf"only -1 and \+1; found {bad} at \[1, 4\]"):
        pack_codes(B)


def test_pack_rejects_zero_with_hint_and_bad_shapes():
    with pytest.raises(ValueError, match="0 is not a valid code value"):
        pack_codes(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        pack_codes(np.ones(8))
    with pytest.raises(ValueError, match="NaN|only -1"):
        pack_codes(np.array([[1.0, np.nan]]))
    with pytest.raises(TypeError, match="numeric"):
        pack_codes(np.array([["a", "b"]]))


def test_unpack_validation():
    P = pack_codes(np.ones((2, 12)))
    with pytest.raises(ValueError, match="n_bits must be a positive integer"):
        unpack_codes(P, 0)
    with pytest.raises(ValueError, match="n_bits must be a positive integer"):
        unpack_codes(P, -3)
    with pytest.raises(ValueError, match=r"need ceil\(24/8\) = 3"):
        unpack_codes(P, 24)
    with pytest.raises(ValueError, match="padding bit"):
        unpack_codes(P, 10)          # bits 10, 11 are set but would be padding
    with pytest.raises(TypeError, match="uint8"):
        unpack_codes(P.astype(np.int16), 12)


def test_as_uint64_and_to_words():
    rng = np.random.default_rng(0)
    P = pack_codes(random_codes(rng, 5, 128))
    W = as_uint64(P)
    assert W.dtype == np.uint64 and W.shape == (5, 2)
    assert np.shares_memory(W, P)
    np.testing.assert_array_equal(W.view(np.uint8), P)
    with pytest.raises(ValueError, match="multiple of 8 bytes"):
        as_uint64(pack_codes(random_codes(rng, 5, 48)))
    P12 = pack_codes(random_codes(rng, 5, 12))
    W12 = to_words(P12)
    assert W12.shape == (5, 1)
    np.testing.assert_array_equal(W12.view(np.uint8)[:, :2], P12)
    assert not W12.view(np.uint8)[:, 2:].any()


@pytest.mark.parametrize("r", [8, 12, 16, 64, 100, 128, 300])
def test_hamming_distances_match_reference(r):
    rng = np.random.default_rng(r)
    Q, B = random_codes(rng, 23, r), random_codes(rng, 301, r)
    B[:50] = Q[0]                       # exact matches (distance 0)
    B[50:60] = -Q[1]                    # complements (distance r)
    ref = reference_distances(Q, B)
    for batch_bytes in (64, 4096, 8 * 2**20):     # tiny batches exercise the blocking
        D = hamming_distances(pack_codes(Q), pack_codes(B), batch_bytes=batch_bytes)
        assert D.dtype == np.int32 and D.shape == (23, 301)
        np.testing.assert_array_equal(D, ref)
    assert (ref[0, :50] == 0).all() and (ref[1, 50:60] == r).all()


def test_all_bits_differ_counted_exactly():
    for r in (8, 64, 128, 256, 1024):
        a = np.ones((1, r), dtype=np.int8)
        Pa, Pb = pack_codes(a), pack_codes(-a)
        assert (Pa == 0xFF).all() and (Pb == 0).all()
        assert hamming_distances(Pa, Pb)[0, 0] == r
        assert hamming_distances(Pb, Pa)[0, 0] == r
        assert hamming_distances(Pa, Pa)[0, 0] == 0


def test_hamming_distances_validation():
    P8, P16 = pack_codes(np.ones((2, 8))), pack_codes(np.ones((2, 16)))
    with pytest.raises(ValueError, match="same number of bits"):
        hamming_distances(P8, P16)
    with pytest.raises(TypeError, match="uint8"):
        hamming_distances(np.ones((2, 1)), P8)
    assert hamming_distances(P8[:0], P8).shape == (0, 2)


def test_distances_beyond_65535_bits_do_not_wrap():
    # the uint16 accumulator wrapped: two opposite 70000-bit codes were 4464 apart
    from cmhash.index import HammingIndex
    r = 70_000
    q = np.ones((1, r), np.int8)
    db = np.vstack([-q, q])
    db[1, :5] = -1
    assert hamming_distances(pack_codes(q), pack_codes(db)).tolist() == [[r, 5]]
    index = HammingIndex(r, backend="numpy")
    index.add(db)
    D, ids = index.search(q, 2)
    assert D.tolist() == [[5, r]] and ids.tolist() == [[1, 0]]
    lims, D, ids = index.range_search(q, r - 1)
    assert lims.tolist() == [0, 1] and D.tolist() == [5]


def test_zero_width_packed_codes_are_refused():
    # (n, 0) packed codes gave (m, n) distances read from an uninitialised buffer (e.g. 255)
    empty = np.zeros((1, 0), np.uint8)
    with pytest.raises(ValueError, match="no bytes per code"):
        hamming_distances(empty, empty)
    with pytest.raises(ValueError, match="no bytes per code"):
        to_words(empty)
    with pytest.raises(ValueError, match="no bytes per code"):
        as_uint64(empty)


@pytest.mark.parametrize("bad, exc", [(None, TypeError), (1.5, TypeError), (True, TypeError),
                                      (0, ValueError), (-8, ValueError)])
def test_hamming_distances_batch_bytes_is_checked(bad, exc):
    # None was "unsupported operand type(s) for //"; 0 and negative budgets were accepted
    P = pack_codes(np.ones((2, 8)))
    with pytest.raises(exc, match="batch_bytes must be"):
        hamming_distances(P, P, batch_bytes=bad)


def test_pack_codes_works_in_row_blocks(monkeypatch):
    # pack_codes built boolean temporaries of the whole (n, r) input (~2x its size as bool:
    # 122 MiB for 1M 64-bit codes, and index.add validated twice); now blocks of
    # PACK_CHUNK_BYTES rows, and an error still reports its position in the whole array
    import tracemalloc

    from cmhash import codes as codes_mod
    rng = np.random.default_rng(0)
    B = random_codes(rng, 1_000_000, 64)
    tracemalloc.start()
    P = pack_codes(B)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < P.nbytes + 3 * codes_mod.PACK_CHUNK_BYTES + 2**20, peak / 2**20
    np.testing.assert_array_equal(P, np.packbits(B > 0, axis=1))
    monkeypatch.setattr(codes_mod, "PACK_CHUNK_BYTES", 40)       # 3 rows of 12 bits
    B = random_codes(rng, 50, 12)
    np.testing.assert_array_equal(pack_codes(B), np.packbits(B > 0, axis=1))
    np.testing.assert_array_equal(pack_codes(np.ones((50, 12), bool)), np.tile([255, 240], (50, 1)))
    B[37, 3] = 0
    B[45, 1] = 5
    with pytest.raises(ValueError, match=r"found 0 at \[37, 3\] \(2 invalid value\(s\)\)"):
        pack_codes(B)
