"""Binary codes: {-1,+1} <-> packed bits, and exact Hamming distances by popcount.

Formats
-------
* **Codes** are ``(n, r)`` integer arrays with values in {-1, +1} (``int8`` by convention).
* **Packed codes** are ``(n, ceil(r / 8))`` ``uint8`` arrays in :func:`numpy.packbits` order
  with big-endian bit order: bit ``j`` of a code is bit ``7 - j % 8`` (the most significant
  bit first) of byte ``j // 8``; ``+1`` is stored as bit 1 and ``-1`` as bit 0. When ``r`` is
  not a multiple of 8 the trailing bits of the last byte are zero padding.

The Hamming distance between two codes is the number of positions where they differ; for
{-1,+1} codes ``b``, ``q`` of length ``r`` it equals ``(r - q . b) / 2``. On packed codes it is
``popcount(q XOR b)``, computed here with :func:`numpy.bitwise_count` on 64-bit words (the
rows are zero-padded to a multiple of 8 bytes first, which does not change any distance).
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "pack_codes",
    "unpack_codes",
    "as_uint64",
    "to_words",
    "hamming_distances",
    "n_bytes",
    "n_words",
    "DISTANCE_BATCH_BYTES",
]

#: Working-memory budget (bytes) of one block of :func:`hamming_distances`: the XOR
#: temporary of ``n_queries_block * n_db_block`` 64-bit words (plus the small per-block
#: popcount buffer). 8 MiB keeps the block cache-friendly; the output matrix is separate.
DISTANCE_BATCH_BYTES = 8 * 2**20


def n_bytes(n_bits: int) -> int:
    """Bytes per packed code: ``ceil(n_bits / 8)``."""
    return (int(n_bits) + 7) // 8


def n_words(n_bits: int) -> int:
    """64-bit words per code: ``ceil(n_bits / 64)``."""
    return (int(n_bits) + 63) // 64


def _check_n_bits(n_bits) -> int:
    if isinstance(n_bits, bool) or not isinstance(n_bits, (numbers.Integral, np.integer)):
        raise TypeError(f"n_bits must be a positive integer, got {n_bits!r}")
    if n_bits <= 0:
        raise ValueError(f"n_bits must be a positive integer, got {n_bits}")
    return int(n_bits)


#: Rows of ±1 codes validated and packed at a time (about this many bytes of boolean
#: temporaries), so packing n codes needs O(1) working memory besides the packed output.
PACK_CHUNK_BYTES = 4 * 2**20


def _check_pm1_shape(B, name: str) -> np.ndarray:
    """Dtype and shape checks of a 2-D array of {-1, +1} values (not the values)."""
    B = np.asarray(B)
    if B.dtype == object or not (np.issubdtype(B.dtype, np.number) or B.dtype == bool):
        raise TypeError(f"{name} must be a numeric array of -1/+1 values, got dtype {B.dtype}")
    if B.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, n_bits) array of -1/+1 values, "
                         f"got shape {B.shape}")
    if B.shape[1] == 0:
        raise ValueError(f"{name} has no bits: shape {B.shape}")
    return B


def _check_pm1(B, name: str) -> np.ndarray:
    """Validate a 2-D array of {-1, +1} values (any integer, float or bool dtype)."""
    B = _check_pm1_shape(B, name)
    if B.dtype == bool:
        bad = ~B if B.size else np.zeros(0, bool)
    else:
        bad = (B != 1) & (B != -1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        value = B[i, j].item()
        hint = (" (0 is not a valid code value: map it with cmhash.solvers.sign, "
                "which sends 0 to -1)" if value == 0 else "")
        raise ValueError(f"{name} must contain only -1 and +1; found {value!r} at "
                         f"[{i}, {j}] ({int(np.count_nonzero(bad))} invalid value(s)){hint}")
    return B


def pack_codes(B) -> np.ndarray:
    """Pack ``(n, r)`` {-1,+1} codes into ``(n, ceil(r/8))`` ``uint8`` (+1 -> bit 1).

    Raises ``ValueError`` if ``B`` is not 2-D or holds anything other than -1 and +1
    (0 included).
    """
    return _pack_checked(B, "codes")


def _pack_checked(B, name: str) -> np.ndarray:
    """:func:`pack_codes` with errors naming ``name``; validates and packs blocks of rows
    (:data:`PACK_CHUNK_BYTES`), so the boolean temporaries stay small for millions of codes."""
    B = _check_pm1_shape(B, name)
    n, r = B.shape
    out = np.empty((n, n_bytes(r)), dtype=np.uint8)
    rows = max(1, PACK_CHUNK_BYTES // r)
    for i0 in range(0, n, rows):
        chunk = B[i0:i0 + rows]
        if chunk.dtype == bool:
            ok = chunk.all()
        else:
            ok = not ((chunk != 1) & (chunk != -1)).any()
        if not ok:
            _check_pm1(B, name)          # the error, with its position in the whole array
        out[i0:i0 + rows] = np.packbits(chunk > 0, axis=1, bitorder="big")
    return out


def _check_packed(packed, name: str, n_bits: int | None = None) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"{name} must be packed codes of dtype uint8 (see pack_codes), "
                        f"got dtype {packed.dtype}")
    if packed.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, n_bytes) uint8 array, got shape "
                         f"{packed.shape}")
    if packed.shape[1] == 0:
        raise ValueError(f"{name} has no bytes per code: shape {packed.shape}")
    if n_bits is not None:
        want = n_bytes(n_bits)
        if packed.shape[1] != want:
            raise ValueError(f"{name} has {packed.shape[1]} bytes per code but {n_bits} bits "
                             f"need ceil({n_bits}/8) = {want}")
        pad = 8 * want - n_bits
        if pad and packed.shape[0]:
            mask = np.uint8((1 << pad) - 1)
            if np.any(packed[:, -1] & mask):
                raise ValueError(f"{name}: the {pad} padding bit(s) after bit {n_bits} of the "
                                 "last byte must be zero")
    return packed


def unpack_codes(packed, n_bits) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(n, ceil(n_bits/8))`` ``uint8`` -> ``(n, n_bits)`` int8 ±1.

    ``n_bits`` must be positive and match the byte width; padding bits must be zero.
    """
    n_bits = _check_n_bits(n_bits)
    packed = _check_packed(packed, "packed", n_bits)
    bits = np.unpackbits(packed, axis=1, count=n_bits, bitorder="big")
    out = bits.view(np.int8)
    out *= 2
    out -= 1
    return out


def as_uint64(packed) -> np.ndarray:
    """View packed codes with ``r % 64 == 0`` as ``(n, r/64)`` ``uint64`` words (no copy).

    The byte order of the words is the machine's; it does not matter for popcounts of XORs.
    A copy is made only if ``packed`` is not C-contiguous. For other widths use
    :func:`to_words`, which zero-pads.
    """
    packed = _check_packed(packed, "packed")
    if packed.shape[1] % 8:
        raise ValueError(f"as_uint64 needs a multiple of 8 bytes (64 bits) per code, got "
                         f"{packed.shape[1]} bytes; use to_words() to zero-pad")
    return np.ascontiguousarray(packed).view(np.uint64)


def to_words(packed) -> np.ndarray:
    """Packed codes as ``(n, ceil(n_bytes/8))`` ``uint64`` words, zero-padded when needed.

    A view when the width is already a multiple of 8 bytes (and the array is contiguous),
    otherwise a padded copy. Zero padding leaves every Hamming distance unchanged.
    """
    packed = _check_packed(packed, "packed")
    nb = packed.shape[1]
    nb8 = -(-nb // 8) * 8
    if nb8 == nb:
        return np.ascontiguousarray(packed).view(np.uint64)
    out = np.zeros((packed.shape[0], nb8), dtype=np.uint8)
    out[:, :nb] = packed
    return out.view(np.uint64)


def _distance_dtype(n_words_: int):
    """Smallest unsigned dtype that holds a distance of up to ``64 * n_words_``."""
    r = 64 * n_words_
    return np.uint8 if r <= 255 else np.uint16 if r <= 65535 else np.uint32


def _distances_into(out, q_words, db_words, tmp=None, cnt=None):
    """Write ``popcount(q XOR db)`` for all pairs into ``out`` (shape (mq, nd)).

    ``q_words`` is ``(mq, w)``, ``db_words`` ``(nd, w)`` uint64; ``out`` must have an
    unsigned/integer dtype large enough for ``64 * w``. ``tmp`` (uint64) and ``cnt``
    (uint8) are optional scratch buffers of shape ``(mq, nd)``.
    """
    mq, w = q_words.shape
    nd = db_words.shape[0]
    if tmp is None:
        tmp = np.empty((mq, nd), dtype=np.uint64)
    if w == 1 and out.dtype == np.uint8:
        np.bitwise_xor(q_words[:, :1], db_words[None, :, 0], out=tmp)
        np.bitwise_count(tmp, out=out)
        return out
    if cnt is None:
        cnt = np.empty((mq, nd), dtype=np.uint8)
    for j in range(w):
        np.bitwise_xor(q_words[:, j:j + 1], db_words[None, :, j], out=tmp)
        np.bitwise_count(tmp, out=cnt)
        if j == 0:
            out[...] = cnt
        else:
            out += cnt
    return out


def _block_sizes(m: int, n: int, budget: int = DISTANCE_BATCH_BYTES) -> tuple[int, int]:
    """Query/database block sizes so that an ``mb x nb`` uint64 block fits ``budget``."""
    cells = max(1, budget // 8)
    nb = min(n, max(1, cells // max(1, min(m, 32))))
    mb = min(m, max(1, cells // max(1, nb)))
    return mb, nb


def hamming_distances(query_packed, db_packed, *, batch_bytes: int = DISTANCE_BATCH_BYTES
                      ) -> np.ndarray:
    """Exact Hamming distances between packed codes: ``(m, n)`` ``int32``.

    ``query_packed`` is ``(m, n_bytes)`` and ``db_packed`` ``(n, n_bytes)`` uint8 packed
    codes (:func:`pack_codes`) of the same width. Both are viewed as 64-bit words (zero
    padded to a multiple of 8 bytes if needed) and the distance is the sum over words of
    ``np.bitwise_count(q ^ b)``.

    Memory: the work is done in blocks of queries x database codes whose XOR temporary holds
    at most ``batch_bytes`` (default 8 MiB) of uint64 words (many queries at once for a small
    database, down to 32 queries x a slice of the codes for a large one), so the working
    memory besides the ``(m, n)`` int32 output is ~``1.2 * batch_bytes`` whatever ``m`` and
    ``n`` are.
    """
    if (isinstance(batch_bytes, bool)
            or not isinstance(batch_bytes, (numbers.Integral, np.integer))):
        raise TypeError(f"batch_bytes must be a positive integer (bytes), got {batch_bytes!r}")
    if batch_bytes < 1:
        raise ValueError(f"batch_bytes must be a positive integer (bytes), got {batch_bytes}")
    q = _check_packed(query_packed, "query_packed")
    db = _check_packed(db_packed, "db_packed")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query_packed has {q.shape[1]} bytes per code but db_packed has "
                         f"{db.shape[1]}; both must be packed with the same number of bits")
    m, n = q.shape[0], db.shape[0]
    out = np.empty((m, n), dtype=np.int32)
    if m == 0 or n == 0:
        return out
    qw, dw = to_words(q), to_words(db)
    w = qw.shape[1]
    dt = _distance_dtype(w)
    mb, nb = _block_sizes(m, n, batch_bytes)
    tmp = np.empty((mb, nb), dtype=np.uint64)
    cnt = np.empty((mb, nb), dtype=np.uint8)
    acc = np.empty((mb, nb), dtype=dt)
    for i0 in range(0, m, mb):
        i1 = min(m, i0 + mb)
        for j0 in range(0, n, nb):
            j1 = min(n, j0 + nb)
            a = acc[:i1 - i0, :j1 - j0]
            _distances_into(a, qw[i0:i1], dw[j0:j1], tmp[:i1 - i0, :j1 - j0],
                            cnt[:i1 - i0, :j1 - j0])
            out[i0:i1, j0:j1] = a
    return out
