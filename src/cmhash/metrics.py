"""Retrieval metrics for Hamming ranking and Hamming-radius lookup.

Conventions (see ``docs/evaluation.md`` for the formulas):

* codes are ``(n, r)`` arrays with entries in {-1, +1} (int8 by convention; any numeric
  dtype holding exactly -1/+1 is accepted); query codes ``(m, r)``, database codes ``(n, r)``;
* labels are ``(n, c)`` multi-hot arrays (dense or scipy sparse); a database item is
  relevant to a query when ``query_labels @ db_labels.T > 0`` (they share a label; for
  non-negative labels this is evaluated exactly on packed label bits). Single-label data
  may instead give both sides as class indices, ``(n,)`` or one ``(n, 1)`` column (the same
  rule as the estimators' ``check_labels``): relevant = same class;
* Hamming distances are exact: ``d = (r - Bq @ Bdb.T) / 2``, evaluated in integers as the
  popcount of the XOR of the packed code bits (64 bits per word), so every differing bit
  counts -- unlike the MATLAB ``hammingDist.m`` byte table that undercounts full bytes;
* everything is processed in query batches, so memory is ``O(batch_size * n)``, never
  ``O(m * n)``.

Tie policies (``ties=``) for rank-based metrics:

``"stable"``
    items at equal Hamming distance keep database order (``np.argsort(kind="stable")``,
    the behaviour of MATLAB's ``sort`` used by the reference code). Default.
``"random"``
    items at equal distance are put in a uniformly random order: the database is shuffled
    once per call by ``default_rng(random_state).permutation(n)`` and then ranked stably
    ("sort by distance, then by a random permutation key"). Every query sees a uniformly
    random tie order (the orders of different queries come from the same permutation).
    Reproducible for a fixed seed and independent of ``batch_size``.
``"expected"``
    the exact expectation of the metric over all orders of the items within each tie group
    (McSherry & Najork, ECIR 2008) -- computed in closed form, no sampling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ._validation import check_random_state, class_indices

__all__ = [
    "hamming_distances",
    "hamming_ranking",
    "relevance",
    "average_precision_per_query",
    "mean_average_precision",
    "precision_at_k",
    "pr_curve_ranking",
    "pr_curve_radius",
    "precision_recall_within_radius",
]

_TIES = ("stable", "random", "expected")
_ZERO_RELEVANT = ("zero", "skip")
_DENOMINATORS = ("hits", "min_relevant")
_AVERAGES = ("per_query", "pooled")

#: target number of (query, database item) pairs held in memory per batch
_TARGET_PAIRS = 1 << 22
#: database size from which rankings are processed query by query (see _ranked_relevant)
_ROW_LOOP_MIN_N = 20_000
#: tolerance used when comparing a recall with a recall-grid point
_RECALL_TOL = 1e-12


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _check_option(value, name, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}"
        )
    return value


def _check_codes(codes, name):
    if codes is None:
        raise ValueError(f"{name} must be an (n, r) array of -1/+1 codes; got None")
    if hasattr(codes, "toarray"):  # scipy sparse: not a meaningful format for +-1 codes
        codes = codes.toarray()
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, r) array of -1/+1 codes; got shape {arr.shape}")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold -1/+1 values (numeric dtype); got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one bit; got shape {arr.shape}")
    if arr.size and not np.all((arr == 1) | (arr == -1)):
        bad = arr[(arr != 1) & (arr != -1)].ravel()[0]
        raise ValueError(f"{name} must contain only -1 and +1 (found {bad!r})")
    return arr


def _check_label_pair(query_labels, db_labels):
    """Both label arrays, checked; class indices on both sides become one-hot columns
    over the union of their classes (so that equal indices share a column)."""
    lq = _labels_or_class_indices(query_labels, "query_labels")
    ldb = _labels_or_class_indices(db_labels, "db_labels")
    q_idx, db_idx = lq.ndim == 1, ldb.ndim == 1
    if q_idx != db_idx:
        which = "query_labels" if q_idx else "db_labels"
        raise ValueError(
            f"{which} are class indices (one value per item) but the other side is an "
            f"(n, c) multi-hot matrix; give both in the same form")
    if q_idx:
        classes = np.union1d(lq, ldb)
        lq, ldb = lq[:, None] == classes, ldb[:, None] == classes
    if lq.shape[1] != ldb.shape[1]:
        raise ValueError(
            "query_labels and db_labels must have the same number of label columns; "
            f"got {lq.shape[1]} and {ldb.shape[1]}"
        )
    return lq, ldb


def _labels_or_class_indices(labels, name):
    """Class indices ((n,) or one (n, 1) column, read as the estimators' ``check_labels``
    reads them: :func:`cmhash._validation.class_indices`) as an int vector, else the checked
    (n, c) multi-hot matrix."""
    if hasattr(labels, "toarray"):
        labels = labels.toarray()
    shape = np.shape(labels) if labels is not None else ()
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        indices = class_indices(labels)
        if indices is None:
            raise ValueError(f"{name}: class indices must be integers (finite, real); got "
                             f"dtype {np.asarray(labels).dtype}")
        return indices
    return _check_labels(labels, name)


def _check_labels(labels, name):
    if labels is None:
        raise ValueError(f"{name} must be an (n, c) multi-hot label array; got None")
    if hasattr(labels, "toarray"):
        labels = labels.toarray()
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (n, c) multi-hot label array; got shape {arr.shape}"
        )
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)) or np.issubdtype(
            arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numeric or boolean; got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one label column; got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
        what = "NaN" if np.isnan(arr).any() else "infinite values"
        raise ValueError(f"{name} contains {what}")
    return arr


def _non_negative(arr):
    return arr.dtype == bool or arr.size == 0 or arr.min() >= 0


def _check_int(value, name, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {rng}; got {value}")
    return value


def _pack_words(bits):
    """Pack a boolean (n, k) array into (n, ceil(k/64)) uint64 words (zero padded)."""
    packed = np.packbits(bits, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


@dataclass
class _Problem:
    qw: np.ndarray  # (m, W) uint64: query code bits (+1 -> 1)
    dw: np.ndarray  # (W, n) uint64: database code bits, one contiguous row per word
    lq: np.ndarray | None  # (m, Wl) uint64 label bits, or (m, c) float for signed labels
    ldb: np.ndarray | None  # (Wl, n) uint64 label bits, or (n, c) float
    labels_packed: bool
    n_bits: int
    batch_size: int
    perm: np.ndarray | None = None  # database permutation applied for ties="random"

    @property
    def m(self):
        return self.qw.shape[0]

    @property
    def n(self):
        return self.dw.shape[1]


def _prepare(query_codes, db_codes, query_labels=None, db_labels=None, batch_size=None,
             need_labels=True, ties="stable", random_state=None):
    q = _check_codes(query_codes, "query_codes")
    d = _check_codes(db_codes, "db_codes")
    if q.shape[0] == 0:
        raise ValueError("query_codes is empty: the query set must contain at least one query")
    if d.shape[0] == 0:
        raise ValueError("db_codes is empty: the database must contain at least one item")
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            "query_codes and db_codes must have the same number of bits; "
            f"got {q.shape[1]} and {d.shape[1]}"
        )
    r = q.shape[1]
    lq = ldb = None
    packed = False
    if need_labels:
        lq, ldb = _check_label_pair(query_labels, db_labels)
        if lq.shape[0] != q.shape[0]:
            raise ValueError(
                "query_labels must have one row per query code; "
                f"got {lq.shape[0]} label rows for {q.shape[0]} query codes"
            )
        if ldb.shape[0] != d.shape[0]:
            raise ValueError(
                "db_labels must have one row per database code; "
                f"got {ldb.shape[0]} label rows for {d.shape[0]} database codes"
            )
        if _non_negative(lq) and _non_negative(ldb):
            # non-negative labels: Lq @ Ldb.T > 0  <=>  some label is positive in both
            packed = True
            lq, ldb = _pack_words(lq > 0), _pack_words(ldb > 0)
        else:  # signed label weights: the literal dot-product rule
            lq = np.ascontiguousarray(lq, dtype=np.float64)
            ldb = np.ascontiguousarray(ldb, dtype=np.float64)
    n = d.shape[0]
    if batch_size is None:
        batch_size = max(1, _TARGET_PAIRS // n)
    else:
        batch_size = _check_int(batch_size, "batch_size", 1)
    batch_size = min(batch_size, q.shape[0])
    perm = None
    if ties == "random":
        # Random tie order = stable order over a uniformly shuffled database: every query
        # sees its tie groups in a uniformly random order (one permutation per call).
        perm = check_random_state(random_state).permutation(n)
        d = d[perm]
        if ldb is not None:
            ldb = ldb[perm]
    if packed:
        ldb = np.ascontiguousarray(ldb.T)
    return _Problem(
        qw=_pack_words(q > 0),
        dw=np.ascontiguousarray(_pack_words(d > 0).T),
        lq=lq,
        ldb=ldb,
        labels_packed=packed,
        n_bits=r,
        batch_size=batch_size,
        perm=perm,
    )


def _dist_dtype(r):
    if r <= np.iinfo(np.uint8).max:
        return np.uint8
    if r <= np.iinfo(np.uint16).max:
        return np.uint16
    return np.uint32


def _batch_distances(p: _Problem, sl: slice) -> np.ndarray:
    """Exact Hamming distances of queries ``sl`` to the whole database, (b, n) unsigned int.

    ``popcount(bits(q) XOR bits(x))`` on 64-bit words, which equals ``(r - q . x) / 2`` for
    +-1 codes; integer arithmetic throughout, so every differing bit counts (no 8-bit
    lookup-table overflow). The small unsigned dtype makes ``argsort(kind="stable")`` a
    linear-time radix sort.
    """
    qw = p.qw[sl]
    dt = _dist_dtype(p.n_bits)
    dist = np.bitwise_count(qw[:, 0, None] ^ p.dw[0][None, :])  # uint8, <= 64
    if p.dw.shape[0] > 1:
        if dist.dtype != dt:
            dist = dist.astype(dt)
        for w in range(1, p.dw.shape[0]):
            dist += np.bitwise_count(qw[:, w, None] ^ p.dw[w][None, :])
    return dist


def _batch_relevance(p: _Problem, sl: slice) -> np.ndarray:
    """(b, n) bool: query and item share a label, i.e. ``(Lq @ Ldb.T) > 0``."""
    if not p.labels_packed:
        return (p.lq[sl] @ p.ldb.T) > 0
    lq = p.lq[sl]
    rel = (lq[:, 0, None] & p.ldb[0][None, :]) != 0
    for w in range(1, p.ldb.shape[0]):
        rel |= (lq[:, w, None] & p.ldb[w][None, :]) != 0
    return rel


def _batches(p: _Problem) -> Iterator[slice]:
    for start in range(0, p.m, p.batch_size):
        yield slice(start, min(start + p.batch_size, p.m))


def _order(dist):
    """Ranking of each row of ``dist`` by ascending distance, ties in (possibly shuffled)
    database order. Small unsigned dtypes make this a linear-time radix sort."""
    return np.argsort(dist, axis=1, kind="stable")


def _ranked_relevant(dist, rel, limit=None):
    """Positions of the relevant items in each query's stable ranking.

    Returns ``(rows, cols)`` like ``np.nonzero`` of the ranked relevance matrix restricted to
    the first ``limit`` positions: row-major, ``cols`` (0-based ranks) increasing per row.
    """
    order = _order(dist)
    if limit is not None:
        order = order[:, :limit]
    if dist.shape[1] < _ROW_LOOP_MIN_N:
        return np.nonzero(np.take_along_axis(rel, order, axis=1))
    # large databases: per query gathers are cache friendly and skip a (b, n) pass
    cols = [np.flatnonzero(rel[i][order[i]]) for i in range(dist.shape[0])]
    rows = np.repeat(np.arange(len(cols)), [c.size for c in cols])
    return rows, np.concatenate(cols)


def _row_starts(rows, b):
    counts = np.bincount(rows, minlength=b)
    return counts, np.cumsum(counts) - counts


def _histograms(dist, rel, n_bits):
    """Per query counts of items and of relevant items at each distance 0..r: (b, r+1)."""
    b = dist.shape[0]
    w = n_bits + 1
    key_t = np.uint8 if 2 * w <= 256 else (np.uint16 if 2 * w <= 65536 else np.int64)
    key = dist.astype(key_t)
    key <<= 1
    key |= rel  # key = 2 d + rel
    cnt = np.empty((b, w), dtype=np.int64)
    rcnt = np.empty((b, w), dtype=np.int64)
    for i in range(b):  # one short bincount per query: cache friendly, no (b, n) intp
        h = np.bincount(key[i], minlength=2 * w).reshape(w, 2)
        rcnt[i] = h[:, 1]
        cnt[i] = h[:, 0] + h[:, 1]
    return cnt, rcnt


# --------------------------------------------------------------------------------------
# public helpers
# --------------------------------------------------------------------------------------


def hamming_distances(query_codes, db_codes) -> np.ndarray:
    """Exact Hamming distances, ``(m, n)`` int32: ``d = (r - Bq @ Bdb.T) / 2``, computed as
    the popcount of the XOR of the packed bits (integer arithmetic, exact).

    This forms the full ``m x n`` matrix; the metrics below never do (they batch the
    queries). Every byte counts fully (no lookup-table overflow: 8 differing bits count 8).
    """
    p = _prepare(query_codes, db_codes, need_labels=False)
    return _batch_distances(p, slice(0, p.m)).astype(np.int32)


def relevance(query_labels, db_labels) -> np.ndarray:
    """Boolean ``(m, n)`` relevance: ``(query_labels @ db_labels.T) > 0`` (full matrix)."""
    lq, ldb = _check_label_pair(query_labels, db_labels)
    if _non_negative(lq) and _non_negative(ldb):
        lq, ldb = lq > 0, ldb > 0  # non-negative labels: "share a positive label"
    return (lq.astype(np.float64) @ ldb.astype(np.float64).T) > 0


def hamming_ranking(query_codes, db_codes, *, top_k=None, ties="stable", random_state=None,
                    batch_size=None):
    """Rank the database for every query by ascending Hamming distance, batch by batch.

    Parameters
    ----------
    query_codes : (m, r) array of -1/+1
    db_codes : (n, r) array of -1/+1
    top_k : int or None
        Keep only the first ``top_k`` positions of each ranking (None: all ``n``).
    ties : {"stable", "random"}
        ``"stable"``: equal distances keep database order; ``"random"``: ties ordered by
        a random permutation key of the database, reproducible through ``random_state``.
        ``"expected"`` is a metric-level policy (an expectation over orders, not an order)
        and is refused here.
    random_state : None, int or numpy.random.Generator
    batch_size : int or None
        Queries per batch (None: about 4M query-item pairs per batch).

    Yields
    ------
    (query_slice, order, distances) : slice, (b, k) intp, (b, k) int32
        ``order[i, j]`` is the database index at rank ``j`` for query ``query_slice.start + i``
        and ``distances`` the corresponding (sorted) Hamming distances.
    """
    _check_option(ties, "ties", _TIES)
    if ties == "expected":
        raise ValueError(
            "ties='expected' defines an expectation over tie orders, not a single ranking; "
            "use 'stable' or 'random' with hamming_ranking (the metric functions accept "
            "'expected')"
        )
    p = _prepare(query_codes, db_codes, need_labels=False, batch_size=batch_size, ties=ties,
                 random_state=random_state)
    k = p.n if top_k is None else _check_int(top_k, "top_k", 1, p.n)

    def gen():
        for sl in _batches(p):
            dist = _batch_distances(p, sl)
            order = _order(dist)[:, :k]
            sorted_dist = np.take_along_axis(dist, order, axis=1).astype(np.int32)
            if p.perm is not None:
                order = p.perm[order]
            yield sl, order, sorted_dist

    return gen()


# --------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------


def _harmonic(n):
    """H[i] = sum_{j=1}^{i} 1/j for i = 0..n (float64)."""
    h = np.zeros(n + 1)
    np.cumsum(1.0 / np.arange(1, n + 1), out=h[1:])
    return h


def _ap_sorted(rows, cols, b, denom_all, denominator, top_k):
    """AP from the ranks ``cols`` of the relevant items of each row (see _ranked_relevant).

    Returns (sum of P@k over relevant positions, hits in the list, denominator).
    """
    hits, starts = _row_starts(rows, b)
    j = np.arange(rows.size) - starts[rows]  # 0-based index among the relevant items
    s = np.bincount(rows, weights=(j + 1.0) / (cols + 1.0), minlength=b)
    if top_k is None or denominator == "hits":
        den = hits.astype(np.float64)
    else:
        den = np.minimum(top_k, denom_all).astype(np.float64)
    return s, hits, den


def _group_sums(nb, rb, nt, rt, mt, harm):
    """Expected sum of P@k over the relevant items among the first ``mt`` positions of a tie
    group of ``nt`` items (``rt`` relevant) preceded by ``nb`` items (``rb`` relevant).

    E = (rt/nt) * sum_{j=1}^{mt} [rb + 1 + (j-1)(rt-1)/(nt-1)] / (nb + j)   (McSherry-Najork)
      = (rt/nt) * [ (rb+1) * dH + (rt-1)/(nt-1) * (mt - (nb+1) * dH) ],
    with dH = H(nb+mt) - H(nb). Works elementwise on arrays; 0 where rt == 0 or mt == 0.
    """
    nt_f = nt.astype(np.float64)
    dh = harm[nb + mt] - harm[nb]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(nt > 1, (rt - 1.0) / (nt_f - 1.0), 0.0)
        val = (rt / np.maximum(nt_f, 1.0)) * ((rb + 1.0) * dh + frac * (mt - (nb + 1.0) * dh))
    return np.where((rt > 0) & (mt > 0), val, 0.0)


def _hypergeom_pmf(x, N, K, n, logfact):
    """P(X = x) for X ~ Hypergeometric(population N, successes K, draws n); broadcasts.

    ``logfact[i] = log(i!)`` must cover ``N``.
    """
    x = np.asarray(x, dtype=np.int64)
    valid = (x >= np.maximum(0, n - (N - K))) & (x <= np.minimum(n, K))
    xs = np.where(valid, x, 0)
    nx = np.where(valid, n - xs, 0)

    def lchoose(a, b):
        return logfact[a] - logfact[b] - logfact[a - b]

    logp = lchoose(K, xs) + lchoose(np.where(valid, N - K, 0), nx) - lchoose(N, n)
    return np.where(valid, np.exp(logp), 0.0)


def _ap_expected(cnt, rcnt, top_k, denominator, harm):
    """Exact expected AP over random orders within tie groups, from the per-distance
    histograms ``cnt`` / ``rcnt`` (b, r+1).

    Returns (expected AP, can_hit) where ``can_hit`` says whether some relevant item can
    appear in the considered list at all.
    """
    b = cnt.shape[0]
    nb = np.cumsum(cnt, axis=1) - cnt  # items strictly closer
    rb = np.cumsum(rcnt, axis=1) - rcnt  # relevant items strictly closer
    total_rel = rcnt.sum(axis=1)
    n = int(cnt[0].sum())
    k = n if top_k is None else top_k
    mt = np.clip(k - nb, 0, cnt)  # positions of each group inside the list
    can_hit = ((rcnt > 0) & (mt > 0)).any(axis=1)
    if top_k is None or denominator == "min_relevant":
        num = _group_sums(nb, rb, cnt, rcnt, mt, harm).sum(axis=1)
        den = total_rel if top_k is None else np.minimum(top_k, total_rel)
        with np.errstate(divide="ignore", invalid="ignore"):
            ap = np.where(den > 0, num / np.maximum(den, 1), 0.0)
        return ap, can_hit

    # "hits" denominator with a cut-off: hits = (relevant in fully kept groups) + X, with
    # X ~ hypergeometric for the one group cut by the cut-off. Groups before the cut are
    # ordered independently of X, so E[num/hits] = E[num_full] * E[1/hits] + E[T/hits].
    full = mt == cnt
    num_full = _group_sums(nb, rb, cnt, rcnt, np.where(full, cnt, 0), harm).sum(axis=1)
    cut = (mt > 0) & (mt < cnt)  # at most one group per query
    has_cut = cut.any(axis=1)
    g = np.argmax(cut, axis=1)
    ar = np.arange(b)
    Nc, Rc, Mc = cnt[ar, g], rcnt[ar, g], mt[ar, g]
    Nb, Rb = nb[ar, g], rb[ar, g]
    R_full = np.where(full, rcnt, 0).sum(axis=1)
    ap = np.zeros(b)

    simple = ~has_cut | (Rc == 0)  # hits is deterministic
    with np.errstate(divide="ignore", invalid="ignore"):
        ap[simple] = np.where(R_full[simple] > 0, num_full[simple] / np.maximum(R_full[simple], 1),
                              0.0)
    idx = np.flatnonzero(~simple)
    if idx.size:
        xmax = int(np.minimum(Mc[idx], Rc[idx]).max())
        xi = np.arange(xmax + 1, dtype=np.int64)[None, :]  # (1, X)
        x = xi.astype(np.float64)
        Nc_, Rc_, Mc_ = Nc[idx, None], Rc[idx, None], Mc[idx, None]
        Nb_, Rb_ = Nb[idx, None], Rb[idx, None]
        logfact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1)))))
        pmf = _hypergeom_pmf(xi, Nc_, Rc_, Mc_, logfact)  # (q, X)
        hits = Rb_ + x  # Rb == R_full for the cut group
        dh = (harm[Nb[idx] + Mc[idx]] - harm[Nb[idx]])[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(Mc_ > 1, (x - 1.0) / (Mc_ - 1.0), 0.0)
            t_given_x = (x / Mc_) * ((Rb_ + 1.0) * dh + frac * (Mc_ - (Nb_ + 1.0) * dh))
            inv = np.where(hits > 0, 1.0 / hits, 0.0)
        ap[idx] = (pmf * inv * (num_full[idx, None] + t_given_x)).sum(axis=1)
    return ap, can_hit


def average_precision_per_query(query_codes, db_codes, query_labels, db_labels, *,
                                top_k=None, ties="stable", denominator="hits",
                                zero_relevant="zero", random_state=None, batch_size=None):
    """Average precision of every query under Hamming ranking, shape ``(m,)``.

    ``AP = (1/D) * sum_{k <= K, rel_k} P@k``, with ``P@k`` the precision of the first ``k``
    positions and ``K = top_k`` (``n``, the whole database, when ``top_k`` is None).

    Denominators ``D`` (only matter when ``top_k`` is given; for the full ranking both equal
    the number of relevant items in the database):

    * ``"hits"`` -- number of relevant items within the top ``K`` ("mAP@R, hits within top
      R", the field's common definition);
    * ``"min_relevant"`` -- ``min(K, number of relevant items in the whole database)``.

    ``zero_relevant`` decides queries without any relevant item in the considered list (the
    top ``K``; the whole database for the full ranking): ``"zero"`` gives them AP 0 (the
    reference ``mAP.m``), ``"skip"`` gives them NaN so that they drop out of a ``nanmean``.
    With ``ties="expected"`` a query is "without relevant item" when no tie order can bring
    a relevant item into the list; orders with no hit otherwise count as AP 0.

    See :func:`mean_average_precision` for the other parameters.
    """
    _check_option(ties, "ties", _TIES)
    _check_option(zero_relevant, "zero_relevant", _ZERO_RELEVANT)
    _check_option(denominator, "denominator", _DENOMINATORS)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, batch_size, ties=ties,
                 random_state=random_state)
    if top_k is not None:
        top_k = _check_int(top_k, "top_k", 1, p.n)
    harm = _harmonic(p.n) if ties == "expected" else None
    out = np.empty(p.m)
    for sl in _batches(p):
        dist = _batch_distances(p, sl)
        rel = _batch_relevance(p, sl)
        if ties == "expected":
            cnt, rcnt = _histograms(dist, rel, p.n_bits)
            ap, can_hit = _ap_expected(cnt, rcnt, top_k, denominator, harm)
        else:
            rows, cols = _ranked_relevant(dist, rel, top_k)
            total = rel.sum(axis=1) if denominator == "min_relevant" else None
            s, hits, den = _ap_sorted(rows, cols, dist.shape[0], total, denominator, top_k)
            with np.errstate(divide="ignore", invalid="ignore"):
                ap = np.where(den > 0, s / np.maximum(den, 1.0), 0.0)
            can_hit = hits > 0
        if zero_relevant == "skip":
            ap = np.where(can_hit, ap, np.nan)
        else:
            ap = np.where(can_hit, ap, 0.0)
        out[sl] = ap
    return out


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, *, top_k=None,
                           ties="stable", denominator="hits", zero_relevant="zero",
                           random_state=None, batch_size=None) -> float:
    """Mean average precision (mAP, or mAP@R with ``top_k=R``) of Hamming ranking.

    Parameters
    ----------
    query_codes : (m, r) array of -1/+1
        Query codes (e.g. images encoded by the hash functions).
    db_codes : (n, r) array of -1/+1
        Database codes (learned training codes or hashed retrieval set -- say which).
    query_labels : (m, c) multi-hot array
    db_labels : (n, c) multi-hot array
        An item is relevant to a query when they share at least one label.
    top_k : int or None
        ``None``: full ranking (mAP). ``R``: only the first ``R`` positions (mAP@R).
    ties : {"stable", "random", "expected"}
        Order of items at equal Hamming distance: database order (default, as MATLAB's
        stable ``sort``), a seeded uniformly random order (see the module docstring), or
        the exact expectation over random orders (McSherry & Najork 2008).
    denominator : {"hits", "min_relevant"}
        AP@R normaliser when ``top_k`` is given: ``"hits"`` = number of relevant items in the
        top ``R`` (the common mAP@R definition; default), ``"min_relevant"`` =
        ``min(R, number of relevant items in the database)``.
    zero_relevant : {"zero", "skip"}
        Queries with no relevant item in the considered list: AP 0 and kept in the mean
        (``"zero"``, reference ``mAP.m``; default) or excluded from the mean (``"skip"``).
    random_state : None, int or numpy.random.Generator
        Seed for ``ties="random"``.
    batch_size : int or None
        Queries processed at once (memory ``O(batch_size * n)``); None picks about 4M
        query-item pairs per batch.

    Returns
    -------
    float
        The mean over queries; NaN (with a warning) when ``"skip"`` leaves no query.
    """
    ap = average_precision_per_query(
        query_codes, db_codes, query_labels, db_labels, top_k=top_k, ties=ties,
        denominator=denominator, zero_relevant=zero_relevant, random_state=random_state,
        batch_size=batch_size,
    )
    keep = ~np.isnan(ap)
    if not keep.any():
        warnings.warn("no query has a relevant item in the considered list; mAP is NaN",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(ap[keep].mean())


# --------------------------------------------------------------------------------------
# precision@K
# --------------------------------------------------------------------------------------


def _check_ks(ks, n):
    arr = np.atleast_1d(np.asarray(ks))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"ks must be a non-empty 1-D sequence of integers; got {ks!r}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"ks must contain integers; got {ks!r}")
    if arr.min() < 1 or arr.max() > n:
        raise ValueError(f"ks must be in [1, {n}] (the database size); got {arr.tolist()}")
    return arr.astype(np.int64)


def precision_at_k(query_codes, db_codes, query_labels, db_labels, ks, *, ties="stable",
                   random_state=None, batch_size=None) -> np.ndarray:
    """Mean over queries of the precision of the first ``K`` ranked items, for each ``K``.

    ``P@K = (number of relevant items among the first K) / K``, averaged over all ``m``
    queries (a query without relevant items contributes 0). With ``ties="expected"`` this is
    the exact expected precision over random tie orders:
    ``E[P@K] = (1/K) * sum_g r_g * m_g / n_g`` where group ``g`` (items at one distance) has
    ``n_g`` items, ``r_g`` relevant, and ``m_g`` of its positions fall within the first ``K``.

    Returns an array of shape ``(len(ks),)``.
    """
    _check_option(ties, "ties", _TIES)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, batch_size, ties=ties,
                 random_state=random_state)
    ks = _check_ks(ks, p.n)
    kmax = int(ks.max())
    acc = np.zeros(ks.size)
    for sl in _batches(p):
        dist = _batch_distances(p, sl)
        rel = _batch_relevance(p, sl)
        if ties == "expected":
            cnt, rcnt = _histograms(dist, rel, p.n_bits)
            nb = np.cumsum(cnt, axis=1) - cnt
            for i, k in enumerate(ks):
                mt = np.clip(k - nb, 0, cnt)
                with np.errstate(divide="ignore", invalid="ignore"):
                    eh = np.where(cnt > 0, rcnt * mt / np.maximum(cnt, 1), 0.0).sum(axis=1)
                acc[i] += (eh / k).sum()
        else:
            rows, cols = _ranked_relevant(dist, rel, kmax)
            # hits within the first K = number of relevant ranks < K (rows, then ranks sorted)
            # (total over the batch = number of (row, rank) pairs with rank < K)
            for i, k in enumerate(ks):
                acc[i] += np.count_nonzero(cols < k) / k
    return acc / p.m


# --------------------------------------------------------------------------------------
# precision-recall curves
# --------------------------------------------------------------------------------------


def pr_curve_ranking(query_codes, db_codes, query_labels, db_labels, *, recall_grid=None,
                     ties="stable", zero_relevant="zero", random_state=None,
                     batch_size=None):
    """Rank-based precision-recall curve: interpolated precision on a recall grid.

    For each query, along its full Hamming ranking, ``P_k = hits_k / k`` and
    ``R_k = hits_k / R`` (``R`` relevant items in the database). The interpolated precision
    at grid point ``t`` is ``max {P_k : R_k >= t}`` (recall compared with a 1e-12 tolerance,
    so that 3/10 reaches ``np.linspace(0, 1, 11)[3]``); the curve is its mean over queries.

    Parameters
    ----------
    recall_grid : array-like in [0, 1] or None
        Default ``np.linspace(0, 1, 11)``.
    ties : {"stable", "random"}
        ``"expected"`` is not supported for this curve (the expectation of a maximum has no
        simple closed form) and raises ``ValueError``.
    zero_relevant : {"zero", "skip"}
        Queries with no relevant item in the database: precision 0 at every grid point and
        kept in the mean (``"zero"``) or excluded (``"skip"``).

    Returns
    -------
    (recall, precision) : two ``(len(recall_grid),)`` float arrays.
    """
    _check_option(ties, "ties", _TIES)
    if ties == "expected":
        raise ValueError("ties='expected' is not supported by pr_curve_ranking; "
                         "use 'stable' or 'random'")
    _check_option(zero_relevant, "zero_relevant", _ZERO_RELEVANT)
    if recall_grid is None:
        grid = np.linspace(0.0, 1.0, 11)
    else:
        grid = np.atleast_1d(np.asarray(recall_grid, dtype=np.float64))
        if grid.ndim != 1 or grid.size == 0:
            raise ValueError("recall_grid must be a non-empty 1-D array")
        if not np.all(np.isfinite(grid)) or grid.min() < 0 or grid.max() > 1:
            raise ValueError("recall_grid values must lie in [0, 1]")
    p = _prepare(query_codes, db_codes, query_labels, db_labels, batch_size, ties=ties,
                 random_state=random_state)
    acc = np.zeros(grid.size)
    used = 0
    for sl in _batches(p):
        dist = _batch_distances(p, sl)
        rel = _batch_relevance(p, sl)
        b = dist.shape[0]
        # Precision can only rise at a relevant position, so max{P_k : k >= k0} is attained
        # at a relevant position: work with the precisions P_j = (j+1)/(pos_j+1) at the
        # relevant positions pos_0 < pos_1 < ... of each query.
        rows, cols = _ranked_relevant(dist, rel)
        total, starts = _row_starts(rows, b)
        j = np.arange(rows.size) - starts[rows]
        prec = (j + 1.0) / (cols + 1.0)
        has = total > 0
        hs, ht = starts[has], total[has]
        padded = np.append(prec, 0.0)  # lets a segment end at len(prec)
        for gi, t in enumerate(grid):
            # recall >= t  <=>  hits >= need; first reached at the need-th relevant position
            need = np.ceil((t - _RECALL_TOL) * ht).astype(np.int64)
            first = hs + np.clip(need - 1, 0, ht - 1)
            # max of P_j over [first, end of the query's segment): reduceat over index pairs
            pairs = np.stack([first, hs + ht], axis=1).ravel()
            val = np.maximum.reduceat(padded, pairs)[::2] if pairs.size else np.zeros(0)
            acc[gi] += val.sum()
        used += b if zero_relevant == "zero" else int(has.sum())
    if used == 0:
        warnings.warn("no query has a relevant item; the PR curve is NaN", RuntimeWarning,
                      stacklevel=2)
        return grid.copy(), np.full(grid.size, np.nan)
    return grid.copy(), acc / used


def _radius_counts(p, zero_relevant, radius=None):
    """Per query cumulative counts at radius 0..r (or only at ``radius``): retrieved
    (m, r+1 or 1), hits (same shape), relevant totals (m,)."""
    cols = slice(None) if radius is None else slice(radius, radius + 1)
    w = p.n_bits + 1 if radius is None else 1
    retrieved = np.empty((p.m, w), dtype=np.int64)
    hits = np.empty((p.m, w), dtype=np.int64)
    total = np.empty(p.m, dtype=np.int64)
    for sl in _batches(p):
        dist = _batch_distances(p, sl)
        rel = _batch_relevance(p, sl)
        cnt, rcnt = _histograms(dist, rel, p.n_bits)
        retrieved[sl] = np.cumsum(cnt, axis=1)[:, cols]
        h = np.cumsum(rcnt, axis=1)
        hits[sl] = h[:, cols]
        total[sl] = h[:, -1]
    if zero_relevant == "skip":
        keep = total > 0
        retrieved, hits, total = retrieved[keep], hits[keep], total[keep]
    return retrieved, hits, total


def _radius_pr(retrieved, hits, total, average):
    if retrieved.shape[0] == 0:
        warnings.warn("no query has a relevant item; precision and recall are NaN",
                      RuntimeWarning, stacklevel=3)
        nan = np.full(retrieved.shape[1], np.nan)
        return nan, nan.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        if average == "per_query":
            prec = np.where(retrieved > 0, hits / np.maximum(retrieved, 1), 0.0).mean(axis=0)
            rec = np.where(total[:, None] > 0, hits / np.maximum(total[:, None], 1),
                           0.0).mean(axis=0)
        else:
            sr, sh, st = retrieved.sum(axis=0), hits.sum(axis=0), total.sum()
            prec = np.where(sr > 0, sh / np.maximum(sr, 1), 0.0)
            rec = sh / st if st > 0 else np.zeros(sh.shape)
    return prec, rec


def pr_curve_radius(query_codes, db_codes, query_labels, db_labels, *, average="per_query",
                    zero_relevant="zero", batch_size=None) -> dict:
    """Radius-based precision-recall curve: one point per Hamming radius ``0..r``.

    The retrieved set of a query at radius ``rho`` is ``{j : d(q, j) <= rho}`` (independent of
    any tie order). With ``h`` relevant retrieved, ``s`` retrieved and ``R`` relevant overall:

    * ``average="per_query"`` (default): precision = mean over queries of ``h/s`` (a query
      retrieving nothing has precision 0, as in the usual code), recall = mean of ``h/R``;
    * ``average="pooled"``: precision = ``sum h / sum s`` and recall = ``sum h / sum R``, sums
      over queries (all query-item pairs pooled).

    ``zero_relevant``: queries with no relevant item in the database count with recall 0
    (and their precision, 0) (``"zero"``) or are excluded from both averages (``"skip"``).

    Returns ``dict(radius=(r+1,) int array, precision=(r+1,), recall=(r+1,))``.
    """
    _check_option(average, "average", _AVERAGES)
    _check_option(zero_relevant, "zero_relevant", _ZERO_RELEVANT)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, batch_size)
    retrieved, hits, total = _radius_counts(p, zero_relevant)
    prec, rec = _radius_pr(retrieved, hits, total, average)
    return {"radius": np.arange(p.n_bits + 1), "precision": prec, "recall": rec}


def precision_recall_within_radius(query_codes, db_codes, query_labels, db_labels, *,
                                   radius=2, average="per_query", zero_relevant="zero",
                                   batch_size=None):
    """Precision and recall of the Hamming ball ``{j : d(q, j) <= radius}`` (default 2).

    ``average="per_query"``: means over queries of the per-query precision (0 for a query
    whose ball is empty) and recall; ``average="pooled"``: total relevant retrieved / total
    retrieved and total relevant retrieved / total relevant, over all queries. See
    :func:`pr_curve_radius` for ``zero_relevant``.

    Returns ``(precision, recall)`` as floats.
    """
    _check_option(average, "average", _AVERAGES)
    _check_option(zero_relevant, "zero_relevant", _ZERO_RELEVANT)
    radius = _check_int(radius, "radius", 0)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, batch_size)
    rho = min(radius, p.n_bits)
    retrieved, hits, total = _radius_counts(p, zero_relevant, rho)
    prec, rec = _radius_pr(retrieved, hits, total, average)
    return float(prec[0]), float(rec[0])
