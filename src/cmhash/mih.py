"""Multi-index hashing (MIH): exact Hamming k-nearest-neighbour search without a full scan.

Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index hashing", CVPR 2012;
"Fast exact search in Hamming space with multi-index hashing", TPAMI 36(6), 2014.

Each ``n_bits``-bit code is cut into ``m`` disjoint contiguous substrings of ``b_j`` bits
(``sum b_j = n_bits``, ``b_j`` about ``log2`` of the number of codes), and substring ``j`` gets
a hash table from its value to the codes having that value. A table is a compact CSR layout:
``ids_j`` (``uint32``, code numbers sorted by substring value, ascending inside a bucket) and
``offsets_j`` (``2**b_j + 1`` bucket starts): bucket ``v`` is
``ids_j[offsets_j[v]:offsets_j[v + 1]]``.

k-NN search (TPAMI section 5): for ``s = 0, 1, 2, ...`` and, inside each ``s``, for substrings
``i = 0 .. m-1``, probe every bucket of table ``i`` whose value is at Hamming distance exactly
``s`` from the query's substring ``i`` and compute the full distance of each new candidate.
After step ``(s, i)`` every code within distance ``R = s*m + i`` of the query has been found
(pigeonhole: a code at distance ``<= s*m + i`` has ``d_j <= s`` in one of the substrings
``0..i`` or ``d_j <= s - 1`` in one of ``i+1..m-1``; otherwise its distance would be at least
``(i+1)(s+1) + (m-i-1)s = s*m + i + 1``). The search of a query stops at the first step where
at least ``k`` items found are within ``R``; their ``k`` smallest ``(distance, id)`` pairs are
then the first ``k`` of the whole database in ``(distance, id)`` order, the tie group at the
k-th distance included, because every item with ``d <= R`` has been found.

Differences from the paper (none changes a result):

* **Distinct codes.** When the database has many duplicate codes (learned codes collapse onto
  a few patterns per class) the tables index the *distinct* codes, numbered in the order of
  their first item, each with the ascending list of its items (``item_ids``/``item_offsets``).
  A search then ranks distinct codes by ``(distance, number)`` = ``(distance, first item)``:
  the first ``k`` items of the database lie in the first ``k`` codes of that order (each code
  before a code ``c`` contributes an item that precedes every item of ``c``), so keeping the
  ``k`` best codes and expanding the one of rank ``j`` into its first ``k - j`` items gives
  the exact answer, and a bucket of 100,000 copies of one code costs one distance. Counts
  (the stopping rule) weigh every code by its number of items. Without many duplicates each
  item is its own code.
* **No visited set.** A candidate with substring distances ``d_j`` is first reached at step
  ``min_j (d_j, j)`` (``s`` first), so it is kept only at that step; its full distance is
  ``sum_j d_j`` (the substrings cover every bit).
* **Batches.** Queries are processed in batches, each step vectorised over the batch's
  unfinished queries; between steps only the ``k`` best codes of each query are kept, and
  candidates farther than the current ``k``-th found distance are dropped.
* **Bounded cost.** A query whose work (bucket probes and candidate distances, in units of one
  code of a linear scan: :data:`PROBE_COST`, :data:`CANDIDATE_COST`) would exceed
  :data:`MIH_MAX_WORK` times the number of codes is handed back to the linear scan (its work
  so far is lost), so MIH costs at most about ``1 + MIH_MAX_WORK`` scans where it cannot win
  (large ``k``, long random codes, a query far from every code).
"""
from __future__ import annotations

import logging
import math
import time
from functools import lru_cache

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["MIHTables", "plan_substrings", "flip_masks", "mih_eligible", "KNN_MODES"]

#: Values of :class:`~cmhash.index.HammingIndex`'s ``knn`` option.
KNN_MODES = ("auto", "mih", "scan")
#: knn="auto" uses MIH from this many codes on ...
AUTO_MIH_MIN_CODES = 1_000_000
#: ... for k up to this ...
AUTO_MIH_MAX_K = 100
#: ... and codes of at most this many bits (see docs/search.md for the measurements).
AUTO_MIH_MAX_BITS = 64
#: knn="auto" builds the tables once this many eligible queries have been scanned (a
#: ski-rental rule: building took the CPU time of 60-155 scanned queries at 1M and 10M
#: 64-bit codes; see docs/search.md).
AUTO_MIH_BUILD_QUERIES = 150
#: Queries per MIH batch (one vectorised search; batches run on the index's threads) ...
QUERY_BATCH = 256
#: ... and at most this many kept (query, candidate) pairs per batch (``batch x k``).
KEPT_BLOCK = 2**20
#: MIH answers k <= MIH_MAX_K only (it keeps k candidates per query and, with distinct
#: codes, expands up to k (k + 1) / 2 items per query); larger k are scanned.
MIH_MAX_K = 1024
#: Items expanded at a time when writing out queries over distinct codes.
EXPAND_BLOCK = 2**20

#: Longest substring (bits): a table has ``2**b + 1`` offsets, so this bounds its size.
MAX_SUBSTRING_BITS = 24
#: Shortest target substring (bits): a few distinct codes need no tiny tables.
MIN_SUBSTRING_BITS = 8
#: The tables index distinct codes when there are at most this share of the number of items
#: ...
DISTINCT_MAX_SHARE = 0.5
#: ... and a sample of DISTINCT_SAMPLE evenly spaced codes has at most this share of distinct
#: codes (heavy duplication; checked first, because counting all distinct codes costs a sort).
DISTINCT_SAMPLE = 2**16
DISTINCT_SAMPLE_MAX_SHARE = 0.9
#: CPU time of one bucket probe and of one candidate, in units of one code of the NumPy
#: scan (measured on the 2-core benchmark machine: about 17 ns, 50 ns and 1.25 ns for 1M
#: 64-bit codes; see docs/search.md).
PROBE_COST = 14.0
CANDIDATE_COST = 40.0
#: A query falls back to the linear scan once its MIH work would exceed this many times the
#: work of scanning the database once.
MIH_MAX_WORK = 1.0
#: Bucket probes (query x flip mask) handled in one vectorised block (cache-sized temporaries).
PROBE_BLOCK = 2**16
#: Candidates whose distances are computed in one vectorised block (one query's candidates of
#: one step are never split).
CANDIDATE_BLOCK = 2**16


def check_knn(knn) -> str:
    """Validate the ``knn`` option."""
    if not isinstance(knn, str) or knn not in KNN_MODES:
        raise ValueError(f"knn must be one of {list(KNN_MODES)}, got {knn!r}")
    return knn


def mih_eligible(n: int, k: int, n_bits: int) -> bool:
    """``knn="auto"``'s rule: MIH k-NN for at least :data:`AUTO_MIH_MIN_CODES` codes of at
    most :data:`AUTO_MIH_MAX_BITS` bits and ``k <= AUTO_MIH_MAX_K``."""
    return n >= AUTO_MIH_MIN_CODES and k <= AUTO_MIH_MAX_K and n_bits <= AUTO_MIH_MAX_BITS


class KnnState:
    """The MIH k-NN state of one :class:`~cmhash.index.HammingIndex` (replaced by a fresh one
    whenever codes are added or removed)."""

    def __init__(self):
        self.tables: MIHTables | None = None   # built at the first MIH search
        self.scanned = 0          # knn="auto": eligible queries scanned before building
        self.hopeless_k = None    # knn="auto": smallest k at which MIH handed back most queries


def choose_mih(index, m: int, k: int) -> bool:
    """Whether ``index.search`` answers ``m`` queries' top-``k`` by MIH (``index.knn``).

    ``"mih"``: always (for fewer than 2**31 codes and ``k <= MIH_MAX_K``). ``"auto"``: when
    :func:`mih_eligible`, ``k`` is below any ``k`` at which a previous MIH search of this
    index handed more than half of its queries back to the scan (:data:`MIH_MAX_WORK`), and
    the tables exist or the eligible queries scanned so far (this call's included) reach
    :data:`AUTO_MIH_BUILD_QUERIES`.
    """
    state = index._mih
    if index.knn == "scan" or index.ntotal >= 2**31 or k > MIH_MAX_K:
        return False
    if index.knn == "mih":
        return True
    if not mih_eligible(index.ntotal, k, index.n_bits):
        return False
    if state.hopeless_k is not None and k >= state.hopeless_k:
        return False
    if state.tables is not None:
        return True
    state.scanned += m
    return state.scanned >= AUTO_MIH_BUILD_QUERIES


def index_search(index, q: np.ndarray, k: int, D_out: np.ndarray, I_out: np.ndarray) -> None:
    """Top-``k`` of a :class:`~cmhash.index.HammingIndex`'s padded queries ``q`` by MIH
    (building its tables if needed); queries MIH hands back are scanned."""
    state = index._mih
    if state.tables is None:
        t0 = time.perf_counter()
        state.tables = MIHTables(index._buf[:index.ntotal], index.n_bits)
        logger.info("multi-index hashing: %d tables (%s bits) over %d %scodes built in "
                    "%.1f s, %.0f MiB", state.tables.m,
                    "/".join(str(b) for _, b in state.tables.substrings), state.tables.u,
                    "distinct " if state.tables.codes is not None else "",
                    time.perf_counter() - t0, state.tables.nbytes / 2**20)
    tables, words, m = state.tables, index._words, len(q)
    size = max(1, min(QUERY_BATCH, KEPT_BLOCK // k, -(-m // index._threads())))
    batches = [(i, min(m, i + size)) for i in range(0, m, size)]

    def work(batch):
        i0, i1 = batch
        return tables.search(q[i0:i1], words, k, D_out[i0:i1], I_out[i0:i1]) + i0

    rest = np.concatenate(index._run_batches(work, batches))
    if 2 * len(rest) > m and (state.hopeless_k is None or k < state.hopeless_k):
        state.hopeless_k = k
    if len(rest):
        Dr = np.empty((len(rest), k), dtype=D_out.dtype)
        Ir = np.empty((len(rest), k), dtype=I_out.dtype)
        index._scan_search(np.ascontiguousarray(q[rest]), k, Dr, Ir)
        D_out[rest] = Dr
        I_out[rest] = Ir


def plan_substrings(n_bits: int, n: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the ``m`` substrings for ``n`` codes of ``n_bits`` bits.

    Norouzi et al.'s rule ``m = n_bits / log2(n)`` (buckets of about one code for random
    codes), rounded, with substrings of at most :data:`MAX_SUBSTRING_BITS` bits and (for
    fewer than 256 codes) about :data:`MIN_SUBSTRING_BITS`; lengths differ by at most one,
    longer ones first.
    """
    n_bits = int(n_bits)
    target = max(MIN_SUBSTRING_BITS, math.log2(max(2, n)))
    m = max(1, round(n_bits / target), math.ceil(n_bits / MAX_SUBSTRING_BITS))
    m = min(m, n_bits)
    base, extra = divmod(n_bits, m)
    out, start = [], 0
    for j in range(m):
        length = base + (1 if j < extra else 0)
        out.append((start, length))
        start += length
    return out


@lru_cache(maxsize=1024)
def flip_masks(b: int, s: int) -> np.ndarray:
    """All ``b``-bit integers with exactly ``s`` bits set (``comb(b, s)`` of them), int64.

    Built by ``masks(b, s) = masks(b-1, s) + (masks(b-1, s-1) | 1 << (b-1))``. Cached and
    read-only.
    """
    if s < 0 or s > b:
        out = np.zeros(0, dtype=np.int64)
    elif s == 0:
        out = np.zeros(1, dtype=np.int64)
    elif s == b:
        out = np.array([(1 << b) - 1], dtype=np.int64)
    else:
        out = np.concatenate([flip_masks(b - 1, s), flip_masks(b - 1, s - 1) | (1 << (b - 1))])
    out.setflags(write=False)
    return out


def _substring_keys(code_bytes: np.ndarray, start: int, length: int) -> np.ndarray:
    """Value of bits ``[start, start + length)`` of each packed code (big-endian bit order,
    as :func:`cmhash.codes.pack_codes` writes them), int64."""
    j0, j1 = start // 8, (start + length - 1) // 8
    v = np.zeros(code_bytes.shape[0], dtype=np.int64)
    for j in range(j0, j1 + 1):
        v <<= 8
        v |= code_bytes[:, j]
    v >>= 8 * (j1 + 1) - (start + length)
    v &= (1 << length) - 1
    return v


def _word_masks(start: int, length: int, n_words: int) -> list[tuple[int, np.uint64]]:
    """The substring's bits as ``(word, mask)`` pairs of the native uint64 view of a code."""
    bits = np.zeros(64 * n_words, dtype=bool)
    bits[start:start + length] = True
    words = np.packbits(bits, bitorder="big").view(np.uint64)
    return [(int(w), words[w]) for w in np.flatnonzero(words)]


def _sort_pairs(keys: np.ndarray) -> np.ndarray:
    """Ids ``0..n-1`` (uint32) sorted by ``(keys, id)``, for integer ``0 <= keys < 2**31``:
    one sort of ``key << 32 | id`` (NumPy's int64 sort is several times faster than an
    argsort)."""
    packed = keys.astype(np.int64)
    packed <<= 32
    packed |= np.arange(len(keys), dtype=np.int64)
    packed.sort()
    return packed.astype(np.uint32)              # the low 32 bits


def _argsort_rows(words: np.ndarray) -> np.ndarray:
    """Stable argsort (uint32) of the rows of ``(n, w)`` uint64 ``words`` (any fixed order of
    equal rows' values, ids ascending among equal rows): LSD radix sort on 32-bit digits."""
    order = np.arange(words.shape[0], dtype=np.uint32)
    for w in range(words.shape[1] - 1, -1, -1):
        for shift in (0, 32):
            digit = ((words[order, w] >> np.uint64(shift)) & np.uint64(0xFFFFFFFF))
            # key < 2**32 does not fit _sort_pairs: digit << 32 would overflow int64; use the
            # unsigned layout instead (digit << 32 | position, as uint64)
            packed = digit << np.uint64(32)
            packed |= np.arange(len(order), dtype=np.uint64)
            packed.sort()
            order = order[packed.astype(np.uint32)]
    return order


def _heavily_duplicated(words: np.ndarray) -> bool:
    """Whether :data:`DISTINCT_SAMPLE` evenly spaced codes hold at most
    :data:`DISTINCT_SAMPLE_MAX_SHARE` distinct ones."""
    sample = np.ascontiguousarray(words[::max(1, len(words) // DISTINCT_SAMPLE)])
    rows = sample.view(np.dtype((np.void, 8 * sample.shape[1]))).ravel()
    return len(np.unique(rows)) <= DISTINCT_SAMPLE_MAX_SHARE * len(sample)


def _distinct_codes(words: np.ndarray):
    """``(first, item_ids, item_offsets)``: the first item of each distinct code in item order
    (so code numbers follow first items) and, per code, its ascending items (CSR)."""
    n = words.shape[0]
    order = _argsort_rows(words)                          # by (code, id)
    srt = words[order]
    starts = np.flatnonzero(np.r_[True, np.any(srt[1:] != srt[:-1], axis=1)])
    del srt
    first = order[starts].astype(np.int64)                # smallest item of each code
    group = np.zeros(n, dtype=np.int32)
    group[starts[1:]] = 1
    np.cumsum(group, out=group)                           # code (sorted-value number) per row
    rank = np.empty(len(first), dtype=np.int32)
    by_first = _sort_pairs(first)                         # code numbers by first item
    rank[by_first] = np.arange(len(first))
    code_of_item = np.empty(n, dtype=np.int32)
    code_of_item[order] = rank[group]
    item_ids = _sort_pairs(code_of_item)                  # items by (code number, id)
    counts = np.bincount(code_of_item, minlength=len(first))
    item_offsets = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(counts, out=item_offsets[1:])
    return first[by_first], item_ids, item_offsets


class MIHTables:
    """The ``m`` substring hash tables of a set of packed codes, and exact k-NN search.

    Parameters
    ----------
    code_bytes : (n, 8 * n_words) uint8
        Packed codes zero padded to whole 64-bit words (a :class:`~cmhash.index.HammingIndex`
        buffer), ``n < 2**32``; read while building only.
    n_bits : int
        Code length.
    distinct : bool or None
        Index distinct codes (see the module docstring); None: when a sample of the codes is
        heavily duplicated (:data:`DISTINCT_SAMPLE_MAX_SHARE`) and there are at most
        :data:`DISTINCT_MAX_SHARE` x ``n`` distinct codes.

    Memory: ``m * (4 u + 4 * 2**b)`` bytes for ``u`` indexed codes and ``b``-bit substrings
    (``uint32`` ids and offsets), plus, with distinct codes, ``u`` codes (``8 * n_words``
    bytes each), ``4 n`` bytes of item ids and ``8 u`` of item offsets.
    """

    def __init__(self, code_bytes: np.ndarray, n_bits: int, *, distinct: bool | None = None):
        n = code_bytes.shape[0]
        if n >= 2**31:
            raise ValueError(f"multi-index hashing supports fewer than 2**31 codes, got {n}")
        self.n = n
        self.n_bits = int(n_bits)
        self.n_words = code_bytes.shape[1] // 8
        words = code_bytes.view(np.uint64)
        self.codes = None                    # distinct codes (u, n_words), or None: the items
        self.item_ids = self.item_offsets = self.code_counts = None
        self.u = n
        if distinct is None and not _heavily_duplicated(words):
            distinct = False
        if distinct is not False:
            first, item_ids, item_offsets = _distinct_codes(words)
            if distinct or len(first) <= DISTINCT_MAX_SHARE * n:
                self.codes = np.ascontiguousarray(words[first])
                self.item_ids, self.item_offsets = item_ids, item_offsets
                self.code_counts = np.diff(item_offsets).astype(np.uint32)   # items per code
                self.u = len(first)
                code_bytes = self.codes.view(np.uint8)
            del first, item_ids, item_offsets
        self.substrings = plan_substrings(self.n_bits, self.u)
        self.m = len(self.substrings)
        self.word_masks = [_word_masks(a, b, self.n_words) for a, b in self.substrings]
        self.ids, self.offsets = [], []
        for start, length in self.substrings:
            keys = _substring_keys(code_bytes, start, length)
            self.ids.append(_sort_pairs(keys))
            counts = np.bincount(keys, minlength=1 << length)
            offsets = np.zeros((1 << length) + 1, dtype=np.uint32)
            np.cumsum(counts, out=offsets[1:])
            self.offsets.append(offsets)
            del keys, counts

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (and the distinct codes and their item lists)."""
        arrays = self.ids + self.offsets + [self.codes, self.item_ids, self.item_offsets,
                                            self.code_counts]
        return sum(a.nbytes for a in arrays if a is not None)

    # ---------------------------------------------------------------------------- search
    def search(self, q_bytes: np.ndarray, db_words: np.ndarray, k: int, D_out: np.ndarray,
               I_out: np.ndarray) -> np.ndarray:
        """Exact k-NN of a batch of queries; returns the rows left to the linear scan.

        ``q_bytes`` is ``(B, 8 * n_words)`` uint8 (zero padded like the database),
        ``db_words`` the ``(n, n_words)`` uint64 database the tables were built from and
        ``1 <= k <= n``. Rows of ``D_out`` / ``I_out`` (``(B, k)``) are filled for every query
        answered here; the returned int64 array lists the others, ascending (see
        :data:`MIH_MAX_WORK`).
        """
        B = q_bytes.shape[0]
        m, r, u = self.m, self.n_bits, self.u
        codes = db_words if self.codes is None else self.codes
        cols = [codes[:, w] for w in range(self.n_words)]
        qcols = [q_bytes.view(np.uint64)[:, w] for w in range(self.n_words)]
        qkeys = [_substring_keys(q_bytes, a, b) for a, b in self.substrings]
        lengths = [b for _, b in self.substrings]
        state = _BatchState(B, r, u, k, MIH_MAX_WORK * self.n)
        for s in range(max(lengths) + 1):
            for i in range(m):
                if s <= lengths[i]:
                    self._step(i, s, qkeys[i], qcols, cols, state)
                self._finish(state, radius=s * m + i, D_out=D_out, I_out=I_out)
                if not len(state.active):
                    return np.asarray(sorted(state.fallback), dtype=np.int64)
        raise AssertionError("multi-index hashing ended with unfinished queries")

    def _step(self, i, s, qkey, qcols, cols, st):
        """Probe table ``i`` at substring distance exactly ``s`` for the active queries and
        add the candidates reached for the first time to the batch state."""
        b = self.substrings[i][1]
        C = math.comb(b, s)
        # queries that cannot afford this step (probes + candidates of buckets of the mean
        # size) go to the scan before the masks are built
        predicted = C * (PROBE_COST + CANDIDATE_COST * self.u / 2**b)
        over = st.work[st.active] + predicted > st.budget
        if over.any():
            st.drop(st.active[over])
            st.active = st.active[~over]
        if not len(st.active):
            return
        masks = flip_masks(b, s)
        offsets = self.offsets[i]
        ends = offsets[1:]
        rows_per_block = max(1, PROBE_BLOCK // C)
        survivors, new = [], []
        for a0 in range(0, len(st.active), rows_per_block):
            a = st.active[a0:a0 + rows_per_block]
            keys = qkey[a][:, None] ^ masks[None, :]
            lo = offsets[keys]
            cnt = ends[keys]
            cnt -= lo
            ncand = cnt.sum(axis=1, dtype=np.int64)
            cost = st.work[a] + PROBE_COST * C + CANDIDATE_COST * ncand
            st.work[a] = cost
            ok = cost <= st.budget
            if not ok.all():
                st.drop(a[~ok])
                a, lo, cnt, ncand = a[ok], lo[ok], cnt[ok], ncand[ok]
            survivors.append(a)
            # blocks of consecutive queries holding about CANDIDATE_BLOCK candidates
            block = (np.cumsum(ncand) - ncand) // CANDIDATE_BLOCK
            cuts = np.r_[0, np.flatnonzero(np.diff(block)) + 1, len(a)]
            for c0, c1 in zip(cuts[:-1], cuts[1:]):
                if c1 > c0:
                    new.append(self._candidates(i, s, a[c0:c1], lo[c0:c1], cnt[c0:c1],
                                                ncand[c0:c1], qcols, cols, st))
        st.active = np.concatenate(survivors)
        st.merge(new)

    def _candidates(self, i, s, rows, lo, cnt, ncand, qcols, cols, st):
        """Distances of the candidates in the probed buckets of ``rows`` (``lo`` / ``cnt``:
        ``(len(rows), C)`` bucket starts and sizes); returns the keys ``(row, d, code)`` of
        those first reached at this step, and counts them."""
        total = int(ncand.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        C = cnt.shape[1]
        cnt = cnt.ravel()
        hit = np.nonzero(cnt != 0)[0]                # non-empty buckets (bool: 5x faster)
        lo = lo.ravel()[hit].astype(np.int64)
        cnt = cnt[hit].astype(np.int64)
        # ragged expansion: positions lo[b] .. lo[b] + cnt[b] - 1 of each non-empty bucket b
        ends = np.cumsum(cnt)
        pos = np.arange(total, dtype=np.int64)
        pos += np.repeat(lo - (ends - cnt), cnt)
        cand = self.ids[i][pos]
        del pos
        x = [c[cand] ^ np.repeat(q[rows], ncand) for c, q in zip(cols, qcols)]
        d = np.full(total, s, dtype=np.uint8 if self.n_bits < 256 else np.uint16)
        new = None
        for j, wm in enumerate(self.word_masks):
            if j == i:                               # d_i == s: probed at exactly s
                continue
            dj = np.bitwise_count(x[wm[0][0]] & wm[0][1])
            for w, mask in wm[1:]:
                dj += np.bitwise_count(x[w] & mask)
            d += dj
            # reached earlier, at step (d_j, j), if (d_j, j) < (s, i)
            later = (dj > s) if j < i else (dj >= s)
            new = later if new is None else (new & later)
        row = np.repeat(rows[hit // C], cnt)
        if new is not None and not new.all():
            row, d, cand = row[new], d[new], cand[new]
        d = d.astype(np.int64)
        cand = cand.astype(np.int64)
        weight = None if self.code_counts is None else self.code_counts[cand]
        st.count(row, d, weight)
        return st.pack(row, d, cand)

    def _finish(self, st, radius, D_out, I_out):
        """Write out the queries with at least ``k`` items found within ``radius``."""
        if not len(st.active):
            return
        within = st.hist[st.active, :min(radius, self.n_bits) + 1].sum(axis=1)
        done = within >= st.k
        if not done.any():
            return
        rows = st.active[done]
        st.active = st.active[~done]
        keys = st.take(rows)                     # sorted (row, d, code), <= k per row
        row, d, code = st.unpack(keys)
        k = st.k
        if self.item_offsets is None:
            D_out[rows] = d.reshape(-1, k)
            I_out[rows] = code.reshape(-1, k)
            return
        # Expand the code of rank j (in (d, first item) order) into its first k - j items:
        # the first items of the j codes before it precede all of its items. Then keep each
        # row's k best (d, item); rows are expanded in blocks of about EXPAND_BLOCK items.
        start = self.item_offsets[code]
        cnt = np.minimum(self.item_offsets[code + 1] - start, k - _ranks(row))
        per_row = np.bincount(row, weights=cnt, minlength=st.hist.shape[0])[rows]
        block = (np.cumsum(per_row) - per_row) // EXPAND_BLOCK
        cuts = np.searchsorted(row, rows[np.r_[0, np.flatnonzero(np.diff(block)) + 1]])
        for c0, c1 in zip(cuts, np.r_[cuts[1:], len(row)]):
            c = cnt[c0:c1]
            ends = np.cumsum(c)
            pos = np.arange(int(ends[-1]), dtype=np.int64)
            pos += np.repeat(start[c0:c1] - (ends - c), c)
            items = self.item_ids[pos].astype(np.int64)
            best = _keep_k_smallest(st.pack(np.repeat(row[c0:c1], c), np.repeat(d[c0:c1], c),
                                            items, ids=self.n), st.group_of(self.n), k)
            brow, bd, bitems = st.unpack(best, ids=self.n)
            done_rows = brow[::k]
            D_out[done_rows] = bd.reshape(-1, k)
            I_out[done_rows] = bitems.reshape(-1, k)


class _BatchState:
    """Per-batch search state: active queries, work, found counts per distance, the best
    codes of each query as sorted int64 keys ``row * (r+1) * u + d * u + code``."""

    def __init__(self, B, r, u, k, budget):
        self.r, self.u, self.k, self.budget = r, u, k, budget
        self.active = np.arange(B)
        self.work = np.zeros(B)
        self.fallback = []
        self.hist = np.zeros((B, r + 1), dtype=np.int64)   # items found, per distance
        self.kept = np.zeros(0, dtype=np.int64)

    def group_of(self, ids):
        return np.int64((self.r + 1) * ids)

    def pack(self, row, d, code, ids=None):
        ids = self.u if ids is None else ids
        return (row * (self.r + 1) + d) * ids + code

    def unpack(self, keys, ids=None):
        ids = self.u if ids is None else ids
        rd, code = np.divmod(keys, ids)
        row, d = np.divmod(rd, self.r + 1)
        return row, d, code

    def drop(self, rows):
        """Hand ``rows`` to the linear scan (the caller removes them from ``active``)."""
        self.fallback.extend(rows.tolist())
        self.take(rows)

    def count(self, row, d, weight):
        self.hist += np.bincount(row * (self.r + 1) + d, weights=weight,
                                 minlength=self.hist.size).reshape(self.hist.shape
                                                                   ).astype(np.int64)

    def merge(self, new):
        """Add new candidate keys: drop those beyond each query's current k-th found
        distance (at least k items are found at or below it), keep the k best per query."""
        new = [a for a in new if len(a)]
        if not new:
            return
        new = np.concatenate(new)
        kth = (np.cumsum(self.hist, axis=1) < self.k).sum(axis=1)
        row, d, _ = self.unpack(new)
        new = new[d <= kth[row]]
        self.kept = _keep_k_smallest(np.concatenate([self.kept, new]), self.group_of(self.u),
                                     self.k)

    def take(self, rows):
        """Remove and return the kept keys of ``rows``."""
        B = self.hist.shape[0]
        sel = np.zeros(B, dtype=bool)
        sel[rows] = True
        mine = sel[self.kept // self.group_of(self.u)]
        out = self.kept[mine]
        self.kept = self.kept[~mine]
        return out


def _ranks(rows: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal values of the sorted ``rows``."""
    start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    return np.arange(len(rows)) - np.repeat(start, np.diff(np.r_[start, len(rows)]))


def _keep_k_smallest(keys: np.ndarray, group: np.int64, k: int) -> np.ndarray:
    """``keys`` (``row * group + ...``) sorted and cut to the ``k`` smallest of each row."""
    keys = np.sort(keys)
    if len(keys) <= k:
        return keys
    return keys[_ranks(keys // group) < k]
