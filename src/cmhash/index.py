"""HammingIndex: exact Hamming top-k and radius search over binary codes.

A small faiss-like index. Codes are stored packed (see :mod:`cmhash.codes`), zero padded to
whole 64-bit words so distances are popcounts of XORed words. Two backends:

* ``"numpy"`` -- pure NumPy, always available. Distances are computed for a batch of
  queries against the whole database, block by block (:data:`DISTANCE_BLOCK_BYTES` of uint64
  scratch), into a ``(batch, ntotal)`` uint8/uint16 (uint32 beyond 65535 bits) distance block
  (:data:`QUERY_BLOCK_BYTES`, at least one row). Top-k uses a counting rule per query: the
  k-th smallest distance ``t`` is found by counting ``d <= v`` for a few integer values
  ``v`` (distances are small integers 0..r), then every item with ``d <= t`` is taken in
  id order and stably sorted by distance (a radix sort for uint8/uint16) and cut to ``k``.
  Radius search keeps ``d <= radius`` and sorts each query's hits by (distance, id).
  Query batches can run on several threads (``n_threads``); NumPy releases the GIL in the
  array kernels.
* ``"faiss"`` -- ``faiss.IndexBinaryFlat`` (multi-threaded scan) for top-k and radius
  search, plus ``faiss.IndexBinaryMultiHash`` (multi-index hashing, exact by the pigeonhole
  principle) for small radii once enough radius queries have been asked to pay for building
  it. faiss is optional (``pip install cmhash[faiss]``) and imported lazily.

Whatever the backend, results are exact and **ties are stable**: equal distances are
returned smallest id first, the k-th boundary tie group included (faiss is asked for more
than ``k`` neighbours and any query whose boundary tie group might extend past what faiss
returned is completed exactly by the NumPy counting path, whose memory is bounded).

Top-k search over large databases can go through exact multi-index hashing k-NN
(:mod:`cmhash.mih`, Norouzi et al.) instead of a scan: the ``knn`` option.

See ``docs/search.md`` for the measured speeds behind the ``backend="auto"`` and
``knn="auto"`` rules.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import mih
from ._io import atomic_write
from ._validation import check_bool, open_npz
from .codes import (
    _check_packed,
    _distance_dtype,
    _distances_into,
    _pack_checked,
    n_bytes,
    n_words,
)

__all__ = ["HammingIndex", "faiss_available", "check_ids"]

#: Version of the ``.npz`` layout written by :meth:`HammingIndex.save`: 1 for codes only, 2
#: when the index also holds external ids, a model fingerprint or metadata (a reader of
#: version 1 would drop them silently).
FORMAT_VERSION = 2
#: uint64 XOR scratch per block of the NumPy distance kernel (per worker thread).
DISTANCE_BLOCK_BYTES = 4 * 2**20
#: Size of one query batch's ``(batch, ntotal)`` distance block (per worker thread; a batch
#: is never smaller than one query, so the block is at least one row of ``ntotal`` distances).
QUERY_BLOCK_BYTES = 32 * 2**20
#: Up to this many codes the NumPy top-k fully sorts each row (vectorised over the batch)
#: instead of the per-query counting rule.
SMALL_DB_FULL_SORT = 4096
#: Queries per faiss call (bounds the ``(batch, k')`` result buffers).
FAISS_QUERY_BATCH = 4096
#: ... and at most about this many bytes of faiss top-k results (int32 + int64) per call.
FAISS_RESULT_BYTES = 32 * 2**20
#: Extra neighbours asked from faiss beyond ``k`` to see the whole boundary tie group.
FAISS_EXTRA_K = 64
#: Multi-index hashing is used for a radius search only if the number of hash-table probes
#: per query is at most this many.
MULTIHASH_MAX_PROBES = 256
#: Build the multi-hash index once this many radius queries *per hash table* have been
#: answered by a full scan (ski-rental rule: on the benchmark machine, 2 cores, building the
#: 3 tables for 1M 64-bit codes took 2.3 s, the time of ~7000 scanned radius queries).
MULTIHASH_BUILD_QUERIES_PER_TABLE = 2000

#: backend="auto": the fewest 64-bit words per code at which an operation goes to faiss
#: (when it is installed) -- set from benchmarks/search_speed.py, see docs/search.md: NumPy's
#: one-word popcount path wins top-k up to 64 bits, faiss wins it above and wins radius scans.
AUTO_FAISS_MIN_WORDS = {"search": 2, "range": 1}
#: backend="auto" uses NumPy below this many (query, code) pairs per call: small calls are
#: dominated by faiss's per-call OpenMP start-up (milliseconds, far more on a busy machine).
AUTO_FAISS_MIN_PAIRS = 2**22

_BACKENDS = ("auto", "numpy", "faiss")
_FAISS_MISSING = ("the faiss backend needs faiss, which is not installed: "
                  "pip install cmhash[faiss]  (or: pip install faiss-cpu)")


def _import_faiss():
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as exc:
        raise ImportError(_FAISS_MISSING) from exc
    return faiss


def faiss_available() -> bool:
    """True if ``faiss`` can be imported."""
    try:
        _import_faiss()
    except ImportError:
        return False
    return True


def _check_radius(radius) -> int:
    """``radius`` (a real number >= 0) as the integer ``floor(radius)``."""
    if (isinstance(radius, (bool, np.bool_))
            or not isinstance(radius, (numbers.Real, np.integer, np.floating))):
        raise TypeError(f"radius must be a number >= 0, got {radius!r}")
    if isinstance(radius, (numbers.Integral, np.integer)):
        R = int(radius)                          # exact, whatever its size
    else:
        value = float(radius)
        if not math.isfinite(value):
            raise ValueError(f"radius must be a finite number >= 0, got {radius}")
        R = math.floor(value)
    if R < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return R


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class HammingIndex:
    """Exact Hamming-distance index over ``n_bits``-bit binary codes.

    Parameters
    ----------
    n_bits : int
        Code length ``r``.
    backend : {"auto", "numpy", "faiss"}
        ``"numpy"`` is pure NumPy; ``"faiss"`` needs faiss (``ImportError`` naming
        ``pip install cmhash[faiss]`` otherwise); ``"auto"`` uses faiss when it is installed,
        the call compares at least :data:`AUTO_FAISS_MIN_PAIRS` (query, code) pairs and the
        codes are wide enough (:data:`AUTO_FAISS_MIN_WORDS`: radius search at any width,
        top-k above 64 bits), and NumPy otherwise (``benchmarks/search_speed.py`` on 2 cores:
        NumPy's top-k is ~1.3-2.3x faiss's at 16-64 bits, faiss's ~1.8x NumPy's at 128 bits;
        faiss's radius scan is 1.8-3x NumPy's except with millions of hits; see
        ``docs/search.md``).
    n_threads : int or None
        Worker threads of the NumPy backend (None: ``min(os.cpu_count(), 8)``). faiss uses
        its own OpenMP threads.
    multihash : bool or None
        faiss backend only: whether small-radius :meth:`range_search` may use a
        ``faiss.IndexBinaryMultiHash`` (exact multi-index hashing). None (default): build it
        lazily once enough radius queries have been scanned to pay for it (see
        :data:`MULTIHASH_BUILD_QUERIES_PER_TABLE`); True: build it at the first eligible
        radius search; False: always scan.
    knn : {"auto", "mih", "scan"}
        How :meth:`search` finds the k nearest codes (same results whichever): ``"scan"``
        compares the queries with every code (on ``backend``); ``"mih"`` uses exact
        multi-index hashing k-NN (:mod:`cmhash.mih`; its tables are built at the first search
        and dropped by :meth:`add` / :meth:`reset`; a query it cannot answer cheaply is
        scanned); ``"auto"`` uses MIH when the database, ``k`` and the code length are in the
        range where it was measured faster (:func:`cmhash.mih.mih_eligible`) and enough such
        queries have been scanned to pay for building the tables (see ``docs/search.md``).
    model_fingerprint : str or None
        Fingerprint of the model whose codes the index holds (``hasher.fingerprint``): saved
        with the index; :meth:`check_model` compares query codes' model with it.
    metadata : dict or None
        JSON-serialisable facts saved with the index (e.g. the database modality).

    Items are at positions ``0 .. ntotal-1`` in insertion order. ``add(codes, ids=...)`` gives
    them external ids (int64 or strings, unique); searches then return those ids
    (``positions=True``: the positions). Without ids the ids are the positions. All searches
    are exact; equal distances are ordered by position (insertion order) on every backend.
    """

    def __init__(self, n_bits, backend: str = "auto", *, n_threads: int | None = None,
                 multihash: bool | None = None, knn: str = "auto",
                 model_fingerprint: str | None = None, metadata: dict | None = None):
        if isinstance(n_bits, bool) or not isinstance(n_bits, (numbers.Integral, np.integer)):
            raise TypeError(f"n_bits must be a positive integer, got {n_bits!r}")
        if n_bits <= 0:
            raise ValueError(f"n_bits must be a positive integer, got {n_bits}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {list(_BACKENDS)}, got {backend!r}")
        if backend == "faiss":
            _import_faiss()
        if n_threads is not None:
            n_threads = _check_int(n_threads, "n_threads", 1)
        self.n_bits = int(n_bits)
        self.backend = backend
        self.n_threads = n_threads
        # (1 == True: an `in (None, True, False)` test let 1 through, and `is True` then never
        # built the tables)
        self.multihash = check_bool(multihash, "multihash", allow_none=True)
        self.knn = mih.check_knn(knn)
        self.code_size = n_bytes(self.n_bits)          # bytes per packed code
        self._w = n_words(self.n_bits)                 # uint64 words per stored code
        self._buf = np.zeros((0, 8 * self._w), dtype=np.uint8)
        self._n = 0
        self._ids = None                               # external ids, or None: positions
        self.model_fingerprint = _check_fingerprint(model_fingerprint)
        self.metadata = _check_metadata(metadata)
        self._reset_faiss()
        self._reset_mih()

    # ------------------------------------------------------------------ storage
    def _reset_faiss(self):
        self._faiss_flat = None
        self._faiss_mh = None
        self._faiss_mh_nhash = 0
        self._faiss_mh_b = 0
        self._radius_scans = 0

    def _reset_mih(self):
        """Drop the multi-index hashing k-NN tables (rebuilt when needed, see ``knn``)."""
        self._mih = mih.KnnState()

    @property
    def ntotal(self) -> int:
        """Number of codes in the index."""
        return self._n

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"HammingIndex(n_bits={self.n_bits}, backend={self.backend!r}, "
                f"ntotal={self._n})")

    @property
    def _words(self) -> np.ndarray:
        return self._buf[:self._n].view(np.uint64)

    def _as_packed(self, codes, packed: bool, name: str) -> np.ndarray:
        """Validate codes (±1 or packed) and return ``(n, code_size)`` packed uint8."""
        if check_bool(packed, "packed"):
            arr = np.asarray(codes)
            if arr.ndim == 1:
                arr = arr[None, :]
            return _check_packed(arr, name, self.n_bits)
        arr = np.asarray(codes)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim == 2 and arr.shape[1] != self.n_bits:
            raise ValueError(f"{name} have {arr.shape[1]} bits per code but the index holds "
                             f"{self.n_bits}-bit codes")
        return _pack_checked(arr, name)

    def add(self, codes, *, packed: bool = False, ids=None) -> None:
        """Append codes at positions ``ntotal .. ntotal + n - 1``.

        ``codes`` is an ``(n, n_bits)`` array of -1/+1 values, or, with ``packed=True``, an
        ``(n, ceil(n_bits/8))`` uint8 array from :func:`cmhash.codes.pack_codes` (padding
        bits zero). A single 1-D code is accepted as one row.

        ``ids``: the codes' external ids, ``n`` integers (kept as int64) or strings, unique
        within the index (:func:`check_ids`); None: the ids are the positions. Give ids to
        every ``add`` of an index or to none.
        """
        p = self._as_packed(codes, packed, "codes")
        n = p.shape[0]
        new_ids = self._checked_new_ids(ids, n)
        if n == 0:
            return
        need = self._n + n
        if need > self._buf.shape[0]:
            cap = max(need, int(self._buf.shape[0] * 1.5), 1024)
            buf = np.zeros((cap, 8 * self._w), dtype=np.uint8)
            buf[:self._n] = self._buf[:self._n]
            self._buf = buf
        self._buf[self._n:need, :self.code_size] = p
        self._buf[self._n:need, self.code_size:] = 0
        old = self._n
        self._n = need
        if new_ids is not None:
            self._ids = new_ids if self._ids is None else np.concatenate([self._ids, new_ids])
        # keep already-built faiss indexes in sync (they append in the same order)
        new_rows = self._buf[old:need]
        if self._faiss_flat is not None:
            self._faiss_flat.add(new_rows)
        if self._faiss_mh is not None:
            self._faiss_mh.add(new_rows)
        self._reset_mih()

    def reset(self) -> None:
        """Remove every code (``ntotal`` becomes 0); ``n_bits`` and the backend are kept."""
        self._buf = np.zeros((0, 8 * self._w), dtype=np.uint8)
        self._n = 0
        self._ids = None
        self._reset_faiss()
        self._reset_mih()

    remove_all = reset

    # ------------------------------------------------------------------ external ids
    @property
    def has_ids(self) -> bool:
        """Whether the codes were added with external ids."""
        return self._ids is not None

    @property
    def ids(self) -> np.ndarray:
        """The ids of the stored codes in position order (a copy): the external ids, or the
        positions ``0 .. ntotal-1`` (int64) when none were given."""
        return np.arange(self._n, dtype=np.int64) if self._ids is None else self._ids.copy()

    def _checked_new_ids(self, ids, n: int):
        if ids is None:
            if self._ids is not None:
                raise ValueError(f"this index holds {self._n} codes added with ids: give ids "
                                 f"to every add() (or to none)")
            return None
        if self._n and self._ids is None:
            raise ValueError(f"this index holds {self._n} codes added without ids: give ids "
                             f"to every add() (or to none)")
        return check_ids(ids, n, existing=self._ids)

    def _external(self, positions: np.ndarray, want_positions: bool) -> np.ndarray:
        """Search results as the user's ids (or the positions when asked or when none)."""
        if check_bool(want_positions, "positions") or self._ids is None:
            return positions
        return self._ids[positions]

    def check_model(self, fingerprint, what: str = "the query codes") -> None:
        """ValueError naming both fingerprints when ``fingerprint`` (of the model that made
        the codes to search with) is not the index's ``model_fingerprint``; not checked
        when either is unknown (None)."""
        from .fingerprint import check_same_model

        check_same_model(self.model_fingerprint, fingerprint,
                         expected_what="the index's codes", got_what=what)

    def get_codes(self, *, packed: bool = False) -> np.ndarray:
        """A copy of the stored codes: ``(ntotal, n_bits)`` int8 ±1, or packed uint8."""
        p = np.ascontiguousarray(self._buf[:self._n, :self.code_size])
        if packed:
            return p
        bits = np.unpackbits(p, axis=1, count=self.n_bits, bitorder="big").view(np.int8)
        bits *= 2
        bits -= 1
        return bits

    # ------------------------------------------------------------------ save / load
    def save(self, path) -> None:
        """Write the index to ``path`` as an ``.npz`` archive (no pickled objects).

        Stored arrays: ``format_version``, ``n_bits``, ``backend`` (a unicode string) and
        ``codes`` (the packed ``(ntotal, ceil(n_bits/8))`` uint8 codes); when present also
        ``ids`` (int64 or unicode, one per code), ``model_fingerprint`` (a unicode string) and
        ``metadata`` (JSON text), and then ``format_version`` is 2. The file is written
        atomically to exactly ``path`` (no ``.npz`` suffix is appended).
        """
        arrays = dict(format_version=np.int64(1), n_bits=np.int64(self.n_bits),
                      backend=np.str_(self.backend),
                      codes=np.ascontiguousarray(self._buf[:self._n, :self.code_size]))
        if self._ids is not None:
            arrays["ids"] = self._ids
        if self.model_fingerprint is not None:
            arrays["model_fingerprint"] = np.str_(self.model_fingerprint)
        if self.metadata:
            arrays["metadata"] = np.str_(json.dumps(self.metadata))
        if len(arrays) > 4:
            arrays["format_version"] = np.int64(FORMAT_VERSION)
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path, *, backend: str | None = None, n_threads: int | None = None
             ) -> "HammingIndex":
        """Read an index written by :meth:`save` (loaded with ``allow_pickle=False``).

        ``backend`` overrides the saved backend (``None``: use the saved one). A malformed
        file is a ``ValueError`` naming the file and the field (ids that are not one per code,
        not unique or neither integers nor strings, a fingerprint or metadata that is not a
        string, metadata that is not a JSON object).
        """
        def bad(why):
            return ValueError(f"{path} is not a valid saved HammingIndex: {why}")

        def int_field(z, key):
            a = z[key]
            if a.ndim != 0 or not np.issubdtype(a.dtype, np.integer):
                raise bad(f"{key!r} must be an integer scalar, got an array of dtype "
                          f"{a.dtype} and shape {a.shape}")
            return int(a)

        with open_npz(path, "a saved HammingIndex") as z:
            missing = {"format_version", "n_bits", "codes"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a saved HammingIndex: missing "
                                 f"{sorted(missing)}")
            version = int_field(z, "format_version")
            if version > FORMAT_VERSION:
                raise ValueError(f"{path} has HammingIndex format version {version}; this "
                                 f"cmhash reads versions <= {FORMAT_VERSION}")
            if version < 1:
                raise bad(f"unknown format version {version}")
            n_bits = int_field(z, "n_bits")
            saved_backend = "auto"
            if "backend" in z.files:
                b = z["backend"]
                if b.ndim != 0 or b.dtype.kind != "U":
                    raise bad(f"'backend' must be a string, got an array of dtype {b.dtype} "
                              f"and shape {b.shape}")
                saved_backend = str(b)
                if saved_backend not in _BACKENDS:
                    raise bad(f"saved backend {saved_backend!r} is not one of "
                              f"{list(_BACKENDS)}")
            codes = z["codes"]
            ids = z["ids"] if "ids" in z.files else None
            fingerprint = _str_field(z, "model_fingerprint", bad)
            metadata = _str_field(z, "metadata", bad)
        if metadata is not None:
            try:
                metadata = json.loads(metadata)
            except json.JSONDecodeError as exc:
                raise bad(f"'metadata' is not JSON text ({exc})") from None
            if not isinstance(metadata, dict):
                raise bad(f"'metadata' must be a JSON object, got {metadata!r}")
        if codes.ndim != 2 or codes.dtype != np.uint8:
            raise bad(f"'codes' must be a 2-D (ntotal, ceil(n_bits/8)) uint8 array, got an "
                      f"array of dtype {codes.dtype} and shape {codes.shape}")
        try:
            index = cls(n_bits, backend=saved_backend if backend is None else backend,
                        n_threads=n_threads, model_fingerprint=fingerprint, metadata=metadata)
        except ImportError as exc:
            if backend is None:
                raise ImportError(f"{path} was saved with backend={saved_backend!r}: {exc}; "
                                  "or load it with backend='numpy' (or 'auto')") from exc
            raise
        except ValueError as exc:
            if backend is None or "n_bits" in str(exc):
                raise bad(exc) from exc
            raise
        if ids is not None and ids.shape != (codes.shape[0],):
            raise bad(f"'ids' must have one id per code ({codes.shape[0]} codes), got an "
                      f"array of shape {ids.shape}")
        try:
            index.add(codes, packed=True, ids=ids)
        except (ValueError, TypeError) as exc:
            raise bad(exc) from exc
        return index

    # ------------------------------------------------------------------ dispatch
    def _use_faiss(self, op: str, m: int) -> bool:
        """Backend for operation ``op`` ("search" or "range") on ``m`` queries."""
        if self.backend == "faiss":
            return True
        if self.backend == "numpy":
            return False
        if m * self._n < AUTO_FAISS_MIN_PAIRS or self._w < AUTO_FAISS_MIN_WORDS[op]:
            return False
        return faiss_available()

    def _threads(self) -> int:
        if self.n_threads is not None:
            return self.n_threads
        return max(1, min(os.cpu_count() or 1, 8))

    def _prepare_queries(self, query_codes, packed: bool) -> np.ndarray:
        if self._n == 0:
            raise ValueError("the index is empty: add codes before searching")
        p = self._as_packed(query_codes, packed, "query_codes")
        q = np.zeros((p.shape[0], 8 * self._w), dtype=np.uint8)
        q[:, :self.code_size] = p
        return q

    # ------------------------------------------------------------------ top-k
    def search(self, query_codes, k, *, packed: bool = False, positions: bool = False):
        """The ``k`` nearest codes of each query by Hamming distance.

        Parameters
        ----------
        query_codes : (m, n_bits) -1/+1 array (or (m, ceil(n_bits/8)) uint8 with
            ``packed=True``; a 1-D code is one query).
        k : int >= 1. ``k > ntotal`` is clamped to ``ntotal``.

        positions : bool. Return the positions of the hits (insertion order) instead of the
            external ids given to :meth:`add`.

        Returns
        -------
        distances : (m, min(k, ntotal)) int32, ascending along each row.
        ids : (m, min(k, ntotal)): the external ids of the hits (int64 or strings), or their
            positions (int64) when the index has no external ids or ``positions=True``; equal
            distances are ordered by position (smallest first), including the tie group at the
            k-th distance.
        """
        k = _check_int(k, "k", 1)
        q = self._prepare_queries(query_codes, packed)
        k = min(k, self._n)
        m = q.shape[0]
        D = np.empty((m, k), dtype=np.int32)
        ids = np.empty((m, k), dtype=np.int64)
        if m == 0:
            return D, self._external(ids, positions)
        if mih.choose_mih(self, m, k):
            mih.index_search(self, q, k, D, ids)
        else:
            self._scan_search(q, k, D, ids)
        return D, self._external(ids, positions)

    def _scan_search(self, q, k, D_out, I_out):
        """Top-k of padded queries ``q`` by a scan of every code (NumPy or faiss)."""
        if self._use_faiss("search", q.shape[0]):
            self._faiss_search(q, k, D_out, I_out)
        else:
            self._numpy_search(q.view(np.uint64), k, D_out, I_out)

    def _query_batches(self, m: int):
        itemsize = np.dtype(_distance_dtype(self._w)).itemsize
        mb = max(1, min(256, QUERY_BLOCK_BYTES // max(1, self._n * itemsize)))
        return [(i, min(m, i + mb)) for i in range(0, m, mb)]

    def _run_batches(self, fn, batches):
        threads = min(self._threads(), len(batches))
        if threads <= 1:
            return [fn(b) for b in batches]
        with ThreadPoolExecutor(max_workers=threads) as ex:
            return list(ex.map(fn, batches))

    def _distance_block(self, qw: np.ndarray) -> np.ndarray:
        """``(len(qw), ntotal)`` distances (uint8, uint16 or uint32), computed in db chunks."""
        db = self._words
        n, mq = self._n, qw.shape[0]
        out = np.empty((mq, n), dtype=_distance_dtype(self._w))
        nb = max(1, min(n, DISTANCE_BLOCK_BYTES // (8 * mq)))
        tmp = np.empty((mq, nb), dtype=np.uint64)
        cnt = None if (self._w == 1 and out.dtype == np.uint8) else np.empty((mq, nb), np.uint8)
        for j0 in range(0, n, nb):
            j1 = min(n, j0 + nb)
            _distances_into(out[:, j0:j1], qw, db[j0:j1], tmp[:, :j1 - j0],
                            None if cnt is None else cnt[:, :j1 - j0])
        return out

    def _numpy_search(self, qw, k, D_out, I_out):
        """Exact top-k of every query (counting rule, or a full sort for small databases)."""
        m = qw.shape[0]
        rmax = 64 * self._w
        n = self._n

        def work(batch):
            i0, i1 = batch
            Db = self._distance_block(qw[i0:i1])
            if n <= SMALL_DB_FULL_SORT:
                # small database: one stable (radix) sort per row = (distance, id) order
                order = np.argsort(Db, axis=1, kind="stable")[:, :k]
                D_out[i0:i1] = np.take_along_axis(Db, order, axis=1)
                I_out[i0:i1] = order
                return
            mask = np.empty(n, dtype=bool)
            guess = None
            for r in range(i1 - i0):
                d = Db[r]
                t = _kth_smallest_value(d, k, rmax, guess, mask)
                guess = t
                np.less_equal(d, t, out=mask)
                cand = np.flatnonzero(mask)                 # ids ascending
                dc = d[cand]
                order = np.argsort(dc, kind="stable")[:k]   # -> (distance, id) order
                D_out[i0 + r] = dc[order]
                I_out[i0 + r] = cand[order]

        self._run_batches(work, self._query_batches(m))

    def _faiss_index(self):
        if self._faiss_flat is None:
            faiss = _import_faiss()
            idx = faiss.IndexBinaryFlat(64 * self._w)
            idx.add(self._buf[:self._n])
            self._faiss_flat = idx
        return self._faiss_flat

    def _faiss_search(self, q, k, D_out, I_out):
        idx = self._faiss_index()
        n = self._n
        k2 = min(n, k + max(k, FAISS_EXTRA_K))
        m = q.shape[0]
        redo = []
        qb = max(1, min(FAISS_QUERY_BATCH, FAISS_RESULT_BYTES // (12 * k2)))
        for i0 in range(0, m, qb):
            i1 = min(m, i0 + qb)
            D2, I2 = idx.search(q[i0:i1], k2)
            # sort each row by (distance, id): faiss does not promise an order among ties
            key = D2.astype(np.int64) * n + I2
            order = np.argsort(key, axis=1)
            D2 = np.take_along_axis(D2, order, axis=1)
            I2 = np.take_along_axis(I2, order, axis=1)
            D_out[i0:i1] = D2[:, :k]
            I_out[i0:i1] = I2[:, :k]
            if k2 < n:
                # the boundary tie group is complete only if faiss's last (k2-th)
                # neighbour is strictly farther than the k-th one
                incomplete = D2[:, k2 - 1] <= D2[:, k - 1]
                redo.extend((np.flatnonzero(incomplete) + i0).tolist())
        if redo:
            # Exact completion of the rows whose boundary tie group may run past the k'
            # results: the NumPy counting path (exact (distance, id) order, memory bounded
            # by QUERY_BLOCK_BYTES per thread). A faiss radius scan at the k-th distance
            # would return the whole tie group of every row at once: with learned codes
            # (a few class codes shared by many items) that is up to rows x ntotal results.
            rows = np.asarray(redo, dtype=np.int64)
            Dr = np.empty((len(rows), k), dtype=np.int32)
            Ir = np.empty((len(rows), k), dtype=np.int64)
            self._numpy_search(np.ascontiguousarray(q[rows]).view(np.uint64), k, Dr, Ir)
            D_out[rows] = Dr
            I_out[rows] = Ir

    # ------------------------------------------------------------------ radius
    def range_search(self, query_codes, radius, *, packed: bool = False, positions: bool = False):
        """All codes within Hamming distance ``radius`` (inclusive: ``d <= radius``).

        Returns ``(lims, distances, ids)`` in the faiss convention: the results of query
        ``i`` are ``distances[lims[i]:lims[i+1]]`` / ``ids[lims[i]:lims[i+1]]``, sorted by
        (distance, id). ``lims`` is ``(m + 1,)`` int64, distances int32, ids the external
        ids given to :meth:`add` (positions, int64, without them or with ``positions=True``).
        ``radius`` is a number >= 0 (distances are integers, so 2.5 acts as 2).
        """
        R = _check_radius(radius)
        q = self._prepare_queries(query_codes, packed)
        m = q.shape[0]
        if m == 0:
            lims, D, I = np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        else:
            R = min(R, self.n_bits)
            if self._use_faiss("range", m):
                lims, D, I = self._faiss_range(q, R)
            else:
                lims, D, I = self._numpy_range(q.view(np.uint64), R)
        return lims, D, self._external(I, positions)

    def _numpy_range(self, qw, R):
        m = qw.shape[0]
        rmax = 64 * self._w

        def work(batch):
            i0, i1 = batch
            Db = self._distance_block(qw[i0:i1])
            flat = np.flatnonzero(Db <= R)      # row-major: ids ascending within a row
            rows, cols = np.divmod(flat, self._n)   # (2-D np.nonzero is ~10x slower)
            d = Db.ravel()[flat]
            order = np.argsort(rows * (rmax + 1) + d, kind="stable")
            counts = np.bincount(rows, minlength=i1 - i0)
            return counts, d[order].astype(np.int32), cols[order].astype(np.int64)

        parts = self._run_batches(work, self._query_batches(m))
        return _assemble(parts)

    def _multihash_plan(self, R):
        """(nhash, b, nflip) for an exact multi-hash radius-R search, or None."""
        r_eff = 8 * (self.n_bits // 8)          # whole bytes only: padding bits never hash
        if r_eff < 8:
            return None
        b = int(min(r_eff, max(8, round(math.log2(max(2, self._n))))))
        nhash = max(1, r_eff // b)
        nflip = R // nhash                      # pigeonhole: some substring has <= nflip
        if nflip > b:
            return None
        if _n_probes(nhash, b, nflip) > MULTIHASH_MAX_PROBES:
            return None
        return nhash, b, nflip

    def _faiss_range(self, q, R):
        m = q.shape[0]
        idx = None
        if self._faiss_mh is not None:
            nhash, b = self._faiss_mh_nhash, self._faiss_mh_b
            nflip = R // nhash
            if _n_probes(nhash, b, nflip) <= MULTIHASH_MAX_PROBES:
                idx = self._faiss_mh
                idx.nflip = nflip
        else:
            plan = self._multihash_plan(R)
            if plan is not None:
                nhash, b, nflip = plan
                if (self.multihash is True or (self.multihash is None and self._radius_scans + m
                                               >= MULTIHASH_BUILD_QUERIES_PER_TABLE * nhash)):
                    faiss = _import_faiss()
                    mh = faiss.IndexBinaryMultiHash(64 * self._w, nhash, b)
                    mh.add(self._buf[:self._n])
                    self._faiss_mh, self._faiss_mh_nhash, self._faiss_mh_b = mh, nhash, b
                    idx = mh
                    idx.nflip = nflip
                else:
                    self._radius_scans += m
        if idx is None:
            idx = self._faiss_index()
        parts = []
        for i0 in range(0, m, FAISS_QUERY_BATCH):
            i1 = min(m, i0 + FAISS_QUERY_BATCH)
            lims, D, I = idx.range_search(q[i0:i1], R + 1)    # faiss keeps d < radius
            lims = lims.astype(np.int64)
            D = D.astype(np.int32)
            I = I.astype(np.int64)
            counts = np.diff(lims)
            rows = np.repeat(np.arange(i1 - i0, dtype=np.int64), counts)
            order = np.lexsort((I, D, rows))
            parts.append((counts, D[order], I[order]))
        return _assemble(parts)


def check_ids(ids, n: int, *, existing=None, name: str = "ids") -> np.ndarray:
    """External ids of ``n`` codes as a 1-D int64 or unicode array: integers (any integer
    dtype within int64) or strings (not empty), unique, and not among ``existing`` (the ids
    already in an index, whose kind -- integer or string -- they must share). A TypeError for
    another dtype, a ValueError naming the first duplicate."""
    # a list goes through object dtype: np.asarray([1, "a"]) would make both strings
    a = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids) if not np.isscalar(ids)
                                                           else ids, dtype=object)
    if a.dtype == object:
        values = a.ravel().tolist()
        if all(isinstance(x, str) for x in values):
            a = np.array(values, dtype=str).reshape(a.shape)
        elif all(isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, bool)
                 for x in values):
            try:
                a = np.array(values, dtype=np.int64).reshape(a.shape)
            except OverflowError:
                raise ValueError(f"{name} must fit in int64") from None
        else:
            raise TypeError(f"{name} must be integers or strings, got values of type(s) "
                            f"{sorted({type(x).__name__ for x in values})}")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array with one id per code ({n} codes), got "
                         f"shape {a.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64 if existing is None else existing.dtype)
    kind = a.dtype.kind
    if kind not in "iuU":
        raise TypeError(f"{name} must be integers or strings, got dtype {a.dtype}")
    if kind == "u" and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64, got {a.max()}")
    a = a.astype(np.int64) if kind in "iu" else a.copy()
    if kind == "U" and (a == "").any():
        raise ValueError(f"{name} must not be empty strings (position "
                         f"{int(np.flatnonzero(a == '')[0])})")
    if existing is not None and (existing.dtype.kind == "U") != (kind == "U"):
        raise TypeError(f"{name} are {'strings' if kind == 'U' else 'integers'} but the index's "
                        f"ids are {'strings' if existing.dtype.kind == 'U' else 'integers'}")
    values, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1][0]
        raise ValueError(f"{name} must be unique: {dup.item()!r} appears "
                         f"{int(counts[counts > 1][0])} times")
    if existing is not None and existing.size:
        clash = np.isin(a, existing)
        if clash.any():
            raise ValueError(f"{name} must be unique: {a[clash][0].item()!r} is already in the "
                             f"index")
    return a


def _check_fingerprint(fingerprint):
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(f"model_fingerprint must be a string or None, got {fingerprint!r}")
    if fingerprint == "":
        raise ValueError("model_fingerprint must not be empty (None: unknown)")
    return fingerprint


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of JSON values, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be a dict of JSON values: {exc}") from None


def _str_field(z, key: str, bad):
    """An optional 0-d unicode string of an open index file (None when absent)."""
    if key not in z.files:
        return None
    a = z[key]
    if a.ndim != 0 or a.dtype.kind != "U":
        raise bad(f"{key!r} must be a string, got an array of dtype {a.dtype} and shape "
                  f"{a.shape}")
    return str(a)


def _n_probes(nhash: int, b: int, nflip: int) -> int:
    """Hash-table probes per query of a multi-hash search."""
    if nflip > b:
        return 1 << 62
    return nhash * sum(math.comb(b, i) for i in range(nflip + 1))


def _assemble(parts):
    counts = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    lims = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=lims[1:])
    D = np.concatenate([p[1] for p in parts]).astype(np.int32, copy=False)
    ids = np.concatenate([p[2] for p in parts]).astype(np.int64, copy=False)
    return lims, D, ids


def _kth_smallest_value(d, k, rmax, guess, mask):
    """Smallest integer ``t`` with ``count(d <= t) >= k`` (needs ``len(d) >= k``).

    Tries ``guess`` and its neighbour first (consecutive queries usually share ``t``), then
    bisects; each probe is one pass of ``d <= v`` over the row.
    """
    lo, hi = 0, rmax                     # invariant: answer in [lo, hi]

    def enough(v):
        np.less_equal(d, v, out=mask)
        return np.count_nonzero(mask) >= k

    if guess is not None and lo <= guess <= hi:
        if enough(guess):
            hi = guess
            if guess - 1 >= lo and not enough(guess - 1):
                return guess
            hi = guess - 1 if guess - 1 >= lo else guess
        else:
            lo = guess + 1
            if lo <= hi and enough(lo):
                return lo
            lo = lo + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
