"""RBF anchor kernel features, the shared non-linear front end of the shallow methods.

``phi(x) = exp(-||x - a_j||^2 / (2 sigma)) - mean_train``, j = 1..q anchors, with
``sigma`` the mean squared distance between training samples and anchors (NOTES.md,
"Kernel features"; BATCH/AMSH/ASCMH/ASFOH reference practice).

Centring the raw features by the training mean does not change any distance ``||x - a||``,
so it is implicit here: sparse bag-of-words input is never densified as a whole. Every
transform runs in row chunks, so memory is O(chunk x q) beyond the output.

Distances are expanded as ``||x||^2 + ||a||^2 - 2 x.a``, which loses the digits of ``||x||^2``
that the distances do not have: dense features with a large common offset (mean far from 0
relative to their spread, e.g. 1e8 + N(0, 1)) gave distances of pure rounding noise. When the
training mean's squared norm exceeds ``SHIFT_RATIO`` times the features' spread, the features
and anchors are shifted by that mean (``shift_``) before the distances (the same distances in
exact arithmetic); below that ratio nothing is shifted and the features are as before.

Work per fit (docs/architecture.md, "Kernel features"): ``sigma`` (the mean squared
train-to-anchor distance) is computed in closed form from the norms and means of the samples
and anchors (``mean ||x||^2 + mean ||a||^2 - 2 mean(x).mean(a)``, no distance pass); one pass
over row blocks then writes the uncentred features straight into the output and sums their
columns; a last in-place pass subtracts the mean. Per block of ``CACHE_BLOCK_ELEMENTS`` (row,
anchor) pairs (1 MiB of float64, in cache, so the elementwise work does not run at memory
speed) the scale ``-1 / (2 sigma)`` is folded into the operands: one product with the anchors
pre-scaled by ``1 / sigma`` gives ``x.a / sigma``, and the exponent
``min(0, x.a / sigma - ||x||^2 / (2 sigma) - ||a||^2 / (2 sigma))`` takes three elementwise
passes (row norms, anchor norms, clamp), then ``exp`` in place, the cast into the output and
the column sum (whose NaN, from ``inf - inf``, reports an overflow) -- six passes over the
block, where the expanded distance (outer sum, scale, subtract, clamp), a NaN check, the
negation, the division, ``exp``, the cast and the sum took ten. The product is chosen per block by
the block's density against crossovers measured on the project's machine
(``DENSIFY_DENSITY``, ``DENSIFY_DENSITY_Q``, ``SPARSIFY_DENSITY_Q``; about 10 % nonzeros for
q >= 500): scipy's sparse-dense product for sparser blocks (CSR input, and dense input
converted to CSR per block), one float64 GEMM for denser ones (dense input, and CSR blocks
densified into a reused buffer of at most ``DENSIFY_MAX_ELEMENTS`` values, so very
high-dimensional bag-of-words input always keeps the sparse product). NUS-WIDE-like features
(4.6 % and 1 % nonzeros) take the sparse product in either form.

Precision: the exponent is computed in float64; its rounding error is a few u64 times
``(||x||^2 + ||a||^2) / sigma`` -- ~1e-16 for ordinary features, at most ~1e-8 (below
float32's rounding unit) where the offset shift's ratio bound (``SHIFT_RATIO``) is reached.
Stored features are ``fl(fl(raw) - fl(mean))`` in the output dtype (float32: absolute error
<= 3 u32 ~ 1.8e-7 against the float64 definition for raw, mean in [0, 1]; tested on every
product path; ``transform`` does the same operations on the same blocks, so training
features equal the encoded ones bit for bit). A float32 product (a 2x faster GEMM) is not
used: the error of ``x.(a / sigma)`` in float32 is up to ~d u32 ``|x| |a| / sigma`` and does
not shrink near the anchors, where the features are largest; measured on NUS-WIDE-like
features (``|x| |a| / sigma`` up to 1.3) it reached 1.3e-7 in a feature, which would nearly
double the stated bound.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._validation import check_choice, check_features, check_int, check_random_state
from ._threads import parallel_map
from .solvers import row_blocks as _row_blocks

DEFAULT_CHUNK = 8192
#: the distance / exp work runs on blocks of at most this many (row, anchor) pairs (1 MiB of
#: float64, in cache) and never more rows than ``chunk_size``
CACHE_BLOCK_ELEMENTS = 1 << 17
#: dense features are shifted by their training mean when its squared norm exceeds this times
#: their spread (mean squared distance to the mean, estimated on the first ``SHIFT_SAMPLE``
#: rows): the distances then keep at least ~8 of float64's 16 digits without the shift
SHIFT_RATIO = 1e8
SHIFT_SAMPLE = 1000
#: a block of CSR rows is densified (into a reused float64 buffer) and multiplied by one GEMM
#: instead of scipy's sparse-dense product when its density nnz / (rows d) exceeds
#: ``DENSIFY_DENSITY + DENSIFY_DENSITY_Q / q``. Measured on the project's machine (Xeon,
#: AVX-512, OpenBLAS 0.3.31, one BLAS thread as in the threaded pass; blocks of
#: CACHE_BLOCK_ELEMENTS pairs, interleaved repeats, benchmarks/kernel_crossover.py): the
#: sparse product runs at 0.24-0.49 ns per (nonzero, anchor), densify + dgemm at 0.03 ns per
#: (row, feature, anchor) plus ~0.4 ns per (row, feature) to fill the buffer; the time ratio
#: sparse / dense crossed 1 at density ~0.13 (d = 500, q = 500), ~0.08 (d = 1000, q = 1000),
#: ~0.10 (q = 1500), ~0.23 (d = 200, q = 64): 0.09 + 9 / q fits these. NUS-WIDE-like
#: features (4.6 % and 1 % nonzeros) stay on the sparse product.
DENSIFY_DENSITY = 0.09
DENSIFY_DENSITY_Q = 9.0
#: conversely a block of dense rows is converted to CSR (a != 0 mask, its flat indices) and
#: multiplied by the sparse product when its density is below ``DENSIFY_DENSITY -
#: SPARSIFY_DENSITY_Q / q`` (the conversion costs ~0.4 ns per value, so the crossover is a
#: little lower). Measured as above against copy + dgemm (float32 input): the GEMM / convert +
#: sparse time ratio crossed 1 at density ~0.11 (d = 500, q = 500), ~0.095 (d = 1000,
#: q = 1000), ~0.105 (q = 1500), ~0.07 (d = 4000, q = 500), ~0.06 (d = 200, q = 64); at 1 %
#: (NUS-WIDE-like text held dense, e.g. in the Dask fit's zarr blocks) the sparse path was
#: 5.6x faster. Checking costs one ``!= 0`` pass and a count (~1 % of the GEMM).
SPARSIFY_DENSITY_Q = 2.0
#: never densify a block of more than this many (row, feature) values (8 MiB of float64 per
#: thread): very high-dimensional bag-of-words blocks keep the sparse product whatever the
#: density (d = 100,000 at 0.01 % is far below the crossover anyway)
DENSIFY_MAX_ELEMENTS = 1 << 20


_OVERFLOW = ("X: squared distances to the kernel anchors overflow float64 (feature values "
             "too large in magnitude, |x| of order 1e150 or more); rescale the features")


def _offset_shift(X):
    """The training mean of dense ``X`` (float64) when it is large against the spread of ``X``
    (``SHIFT_RATIO``), else None (sparse input is never shifted: that would densify it)."""
    if sp.issparse(X):
        return None
    with np.errstate(over="ignore", invalid="ignore"):   # |x| ~ 1e160: the distances say so
        mu = np.asarray(X.mean(axis=0, dtype=np.float64), dtype=np.float64)
        sample = np.asarray(X[:SHIFT_SAMPLE], dtype=np.float64) - mu
        spread = float(np.einsum("ij,ij->", sample, sample)) / sample.shape[0]
        return mu if float(mu @ mu) > SHIFT_RATIO * spread else None


def _squared_norms(X) -> np.ndarray:
    if sp.issparse(X):
        return np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).ravel()
    X = np.asarray(X, dtype=np.float64)
    return np.einsum("ij,ij->i", X, X)


def _densify(Xb, q: int) -> bool:
    """Whether a CSR block is multiplied by ``q`` anchors densely (module constants
    ``DENSIFY_*``): its density exceeds the measured crossover for ``q`` and the dense copy
    is at most ``DENSIFY_MAX_ELEMENTS`` values."""
    rows, d = Xb.shape
    return (rows * d <= DENSIFY_MAX_ELEMENTS
            and Xb.nnz > (DENSIFY_DENSITY + DENSIFY_DENSITY_Q / max(q, 1)) * rows * d)


def _sparse_if_cheaper(Xb, q: int, buffers: "_BlockBuffers"):
    """A block of dense rows for the product with ``q`` anchors and the rows' squared norms:
    as CSR (float64; the norms from its values) when its density is below the sparsify
    crossover (``SPARSIFY_DENSITY_Q``), else as float64 (copied into the reused buffer when it
    is not float64 already; norms None: the caller computes them)."""
    rows, d = Xb.shape
    mask = np.not_equal(Xb, 0, out=buffers.mask(rows))
    if np.count_nonzero(mask) < (DENSIFY_DENSITY - SPARSIFY_DENSITY_Q / max(q, 1)) * rows * d:
        idx = np.flatnonzero(mask)
        row, col = np.divmod(idx, d)
        values = np.asarray(Xb).reshape(-1)[idx].astype(np.float64)
        index = np.int32 if rows * d < np.iinfo(np.int32).max else np.int64
        indptr = np.searchsorted(row, np.arange(rows + 1)).astype(index)
        sq = np.bincount(row, weights=values * values, minlength=rows)
        return sp.csr_matrix((values, col.astype(index), indptr), shape=(rows, d)), sq
    if Xb.dtype != np.float64:
        return buffers.dense(rows, copy_of=Xb), None
    return np.asarray(Xb), None


class _BlockBuffers:
    """The work arrays of one chunk's blocks, allocated on first use and reused by every
    block: the float64 dense rows (a densified CSR block or a converted dense one; at most
    ``rows x d``), the nonzero mask of dense rows (bool, ``rows x d``) and the float64 exponent
    written by a GEMM (``rows x q``)."""

    def __init__(self, rows: int, d: int, q: int):
        self.rows, self.d, self.q = rows, d, q
        self._dense = self._exponent = self._mask = None

    def mask(self, rows: int) -> np.ndarray:
        if self._mask is None:
            self._mask = np.empty((self.rows, self.d), dtype=bool)
        return self._mask[:rows]

    def dense(self, rows: int, copy_of=None) -> np.ndarray:
        if self._dense is None:
            self._dense = np.empty((self.rows, self.d))
        buf = self._dense[:rows]
        if copy_of is not None:
            buf[...] = copy_of
        return buf

    def exponent(self, rows: int) -> np.ndarray:
        if self._exponent is None:
            self._exponent = np.empty((self.rows, self.q))
        return self._exponent[:rows]


class RBFAnchorFeatures:
    """Anchor-based RBF kernel features (fit on training data, transform anything).

    Parameters
    ----------
    n_anchors : int
        Number of anchors ``q`` (the field uses 500 image / 1,000 text for BATCH and ASCMH,
        1,500 for AMSH, 1,200 for ASFOH). Capped at the number of training samples.
    anchors : {"random", "kmeans"}
        Random training samples (the reference practice) or k-means centres (Lloyd's
        algorithm, 10 iterations, on at most 20,000 random training samples).
    center : bool
        Subtract the training mean of the kernel features (default True).
    dtype : numpy dtype
        Output dtype; float32 by default since ``phi`` (n x q) dominates memory.
    chunk_size : int
        Rows per chunk.
    random_state : None, int or Generator

    Attributes
    ----------
    anchors_ : (q, d) float64 array
    sigma_ : float   mean squared train-to-anchor distance
    mean_ : (q,) float64 array   training mean of the kernel features
    shift_ : (d,) float64 array or None   the offset subtracted before distances (None unless
        the dense training features have a mean far larger than their spread, SHIFT_RATIO)
    """

    def __init__(self, n_anchors: int = 500, *, anchors: str = "random", center: bool = True,
                 dtype=np.float32, chunk_size: int = DEFAULT_CHUNK, random_state=None):
        self.n_anchors = n_anchors
        self.anchors = anchors
        self.center = center
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        X = self._fit_anchors(X)
        self._set_sigma(self._mean_sq_distance(X))
        n, q = X.shape[0], self.anchors_.shape[0]
        self.mean_ = self._raw_pass(X) / n if self.center else np.zeros(q)
        return self

    def _mean_sq_distance(self, X) -> float:
        """``sigma``: the mean of ``||x_i - a_j||^2`` over training rows and anchors, in closed
        form: ``mean_i ||x_i||^2 + mean_j ||a_j||^2 - 2 mean_i(x_i) . mean_j(a_j)`` (shifted
        coordinates when ``shift_`` is set; float64). Equal to the mean of the distance matrix
        up to rounding (relative ~1e-16 times ``||mean||^2 / spread`` <= 1e8, ``SHIFT_RATIO``)."""
        n = X.shape[0]
        x_sq, x_mean = 0.0, np.zeros(X.shape[1])
        with np.errstate(over="ignore", invalid="ignore"):
            for rows in _row_blocks(n, self.chunk_size):   # float64 blocks, no n x d copy
                Xc = X[rows]
                if sp.issparse(Xc):                        # never shifted
                    Xc = sp.csr_matrix(Xc, dtype=np.float64)
                    x_sq += float(Xc.multiply(Xc).sum())
                    x_mean += np.asarray(Xc.sum(axis=0)).ravel()
                else:
                    Xc = (self._shifted(Xc) if self.shift_ is not None
                          else np.asarray(Xc, dtype=np.float64))
                    x_sq += float(np.einsum("ij,ij->", Xc, Xc))
                    x_mean += Xc.sum(axis=0)
        return self._sigma_from_moments(x_sq / n, x_mean / n)

    def _sigma_from_moments(self, x_sq: float, x_mean) -> float:
        """``sigma`` from the training rows' mean squared norm and mean (shifted coordinates
        when ``shift_`` is set): the closed form of :meth:`_mean_sq_distance`, shared with the
        Dask fit (cmhash.distributed.fit), which gets the two moments by a reduction."""
        A = self._anchors_eff
        with np.errstate(over="ignore", invalid="ignore"):
            sigma = x_sq + float(self._anchor_sqnorm.mean()) - 2.0 * float(x_mean @ A.mean(axis=0))
        if np.isnan(sigma):
            raise ValueError(_OVERFLOW)
        return max(sigma, 0.0)

    def _chunk_raw(self, Xc, out=None, far=None) -> np.ndarray:
        """Uncentred features ``exp(-D / 2 sigma)`` of the rows ``Xc`` (one chunk), written into
        ``out`` (the chunk's rows of the output, its dtype) when given; returns their float64
        column sums. Works on cache blocks of at most ``CACHE_BLOCK_ELEMENTS`` (row, anchor)
        pairs (:meth:`_block_exponent`, then ``exp`` in place, the cast into ``out`` and the
        column sum); the sums add the blocks' sums in row order. ``far`` (the chunk's rows of a
        boolean mask): set where every raw value is at most :meth:`far_tolerance`."""
        tol = None if far is None else self.far_tolerance()
        q = self.anchors_.shape[0]
        half_sq = None
        if sp.issparse(Xc):
            Xc = sp.csr_matrix(Xc, dtype=np.float64)   # once per chunk, not per product
            if self.shift_ is None:
                half_sq = self._half_scaled_norms(_squared_norms(Xc))
        block = max(1, min(self.chunk_size, CACHE_BLOCK_ELEMENTS // max(q, 1)))
        buffers = _BlockBuffers(block, Xc.shape[1], q)
        acc = np.zeros(q)
        for rows in _row_blocks(Xc.shape[0], block):
            raw = self._block_exponent(Xc[rows], None if half_sq is None else half_sq[rows],
                                       buffers)
            np.exp(raw, out=raw)
            if out is not None:
                out[rows] = raw
            if far is not None:
                far[rows] = raw.max(axis=1) <= tol if q else True
            if self.center:
                sums = raw.sum(axis=0)
                if np.isnan(sums).any():        # NaN propagates through min, exp and the sum
                    raise ValueError(_OVERFLOW)
                acc += sums
            elif np.isnan(raw).any():
                raise ValueError(_OVERFLOW)
        return acc

    def _raw_pass(self, X, out=None, far=None) -> np.ndarray:
        """:meth:`_chunk_raw` over the chunks of ``chunk_size`` rows of ``X``, on all cores
        (:func:`cmhash._threads.parallel_map`: scipy's sparse product and numpy's ufuncs
        release the GIL); returns the float64 column sums (the chunks' sums added in order,
        so the result does not depend on the number of threads)."""
        chunks = _row_blocks(X.shape[0], self.chunk_size)
        sums = parallel_map(lambda rows: self._chunk_raw(
            X[rows], None if out is None else out[rows], None if far is None else far[rows]),
            chunks)
        acc = np.zeros(self.anchors_.shape[0])
        for part in sums:
            acc += part
        return acc

    def _center_in_place(self, out) -> None:
        """``out -= mean_`` in the output dtype (one pass over row chunks, no temporary)."""
        if self.center:
            mean = self.mean_.astype(out.dtype)
            parallel_map(lambda rows: np.subtract(out[rows], mean, out=out[rows]),
                         _row_blocks(out.shape[0], self.chunk_size))

    def _fit_anchors(self, X):
        """Validate, pick the anchors; returns the validated X."""
        check_int(self.n_anchors, "n_anchors")
        check_int(self.chunk_size, "chunk_size")
        check_choice(self.anchors, "anchors", {"random", "kmeans"})
        X = check_features(X, "X")
        rng = check_random_state(self.random_state)
        n = X.shape[0]
        q = min(self.n_anchors, n)
        shift = _offset_shift(X)
        if self.anchors == "random":
            idx = np.sort(rng.choice(n, size=q, replace=False))
            A = X[idx]
            A = A.toarray() if sp.issparse(A) else A
        else:
            A = _kmeans_anchors(X, q, rng, shift=shift)
        self._set_anchors(np.asarray(A, dtype=np.float64), shift)
        self.n_features_in_ = X.shape[1]
        return X

    def _set_anchors(self, anchors, shift) -> None:
        """``anchors_``, ``shift_`` and the anchors as the distances use them (shifted; their
        squared norms; the operands scaled by ``sigma`` follow in :meth:`_scaled_anchors`)."""
        self.anchors_ = anchors
        self.shift_ = None if shift is None else np.asarray(shift, dtype=np.float64)
        self._anchors_eff = anchors if shift is None else anchors - self.shift_
        self._anchor_sqnorm = _squared_norms(self._anchors_eff)
        self._scaled = None   # (sigma, A^T / sigma, ||a||^2 / (2 sigma)): _scaled_anchors

    def _set_sigma(self, sigma):
        if np.isinf(sigma):
            raise ValueError(_OVERFLOW)
        if not sigma > 0:
            raise ValueError("all training samples coincide with the anchors (sigma = 0); "
                             "the RBF kernel is undefined (with distinct samples: the feature "
                             "values are so small that squared distances underflow to 0; "
                             "rescale the features)")
        self.sigma_ = float(sigma)

    def _shifted(self, Xc) -> np.ndarray:
        """A block of rows minus ``shift_`` (float64; densified if a query is sparse)."""
        return (Xc.toarray() if sp.issparse(Xc) else np.asarray(Xc, dtype=np.float64)) \
            - self.shift_

    def _scaled_anchors(self) -> tuple[np.ndarray, np.ndarray]:
        """The anchors as the exponent uses them: ``(A^T / sigma`` (d, q) C-contiguous, the
        right operand of the per-block products), ``||a||^2 / (2 sigma)`` (q,)) in shifted
        coordinates. Cached per ``sigma_`` (also set directly by cmhash.logistic); worker
        threads may compute it concurrently, which only repeats the same arithmetic."""
        cached = getattr(self, "_scaled", None)
        if cached is None or cached[0] != self.sigma_:
            with np.errstate(over="ignore", invalid="ignore"):
                cached = (self.sigma_, np.ascontiguousarray(self._anchors_eff.T) / self.sigma_,
                          self._half_scaled_norms(self._anchor_sqnorm))
            self._scaled = cached
        return cached[1], cached[2]

    def _half_scaled_norms(self, sq: np.ndarray) -> np.ndarray:
        """``||.||^2 / (2 sigma)`` of squared norms ``sq`` (one rounding)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return sq / (2.0 * self.sigma_)

    def _block_exponent(self, Xb, half_sq, buffers: "_BlockBuffers") -> np.ndarray:
        """The exponent ``-||x - a||^2 / (2 sigma)`` of a block of rows, (rows, q) float64:
        ``min(0, x.(a / sigma) - ||x||^2 / (2 sigma) - ||a||^2 / (2 sigma))`` -- the scale is
        folded into the operands, so one product and three elementwise passes give it. The
        product is scipy's sparse-dense one for CSR blocks and for dense blocks sparser than
        the crossover (:func:`_sparse_if_cheaper`), a float64 GEMM for other dense blocks and
        for CSR blocks denser than the crossover (:func:`_densify`). ``half_sq``: the rows'
        ``||x||^2 / (2 sigma)`` when known. NaN (``inf - inf``: a squared norm or product
        overflowed float64) propagates."""
        At_scaled, half_sa = self._scaled_anchors()
        if self.shift_ is not None:
            Xb = self._shifted(Xb)
        elif sp.issparse(Xb):
            if _densify(Xb, At_scaled.shape[1]):
                Xb = Xb.toarray(out=buffers.dense(Xb.shape[0]))
        else:
            Xb, sq = _sparse_if_cheaper(Xb, At_scaled.shape[1], buffers)
            if sq is not None:
                half_sq = self._half_scaled_norms(sq)
        with np.errstate(over="ignore", invalid="ignore"):
            if sp.issparse(Xb):
                E = np.asarray(Xb @ At_scaled)            # a fresh array: safe to overwrite
            else:
                E = np.matmul(Xb, At_scaled, out=buffers.exponent(Xb.shape[0]))
            if half_sq is None:
                half_sq = self._half_scaled_norms(_squared_norms(Xb))
            E -= half_sq[:, None]
            E -= half_sa
            np.minimum(E, 0.0, out=E)        # NaN propagates through minimum
        return E

    # ---------------------------------------------------------------- transform
    def transform(self, X, *, return_far: bool = False):
        """Kernel features ``(m, q)`` of ``X``; with ``return_far`` also a boolean mask of the
        rows that are far from every anchor (:meth:`far_tolerance`): their features are the
        far-away limit ``-mean_`` to the precision of ``dtype``, so they carry no information
        and every such row gets the same code."""
        self._check_fitted()
        X = check_features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but the kernel was fitted on "
                             f"{self.n_features_in_}")
        out = np.empty((X.shape[0], self.anchors_.shape[0]), dtype=self.dtype)
        far = np.zeros(X.shape[0], dtype=bool) if return_far else None
        self._raw_pass(X, out, far=far)
        self._center_in_place(out)
        return (out, far) if return_far else out

    def far_tolerance(self) -> float:
        """A row is far from the training data when all its raw kernel values
        ``exp(-||x - a_j||^2 / (2 sigma))`` are at most this: the rounding unit of ``dtype``
        times the largest training mean (below it ``raw - mean_`` rounds to ``-mean_``), or
        the smallest normal number of ``dtype`` when the features are not centred. For
        float32 and Wiki-like data a row is far when its squared distance to the nearest
        anchor exceeds ~35 sigma (sigma: the mean squared train-to-anchor distance)."""
        self._check_fitted()
        info = np.finfo(self.dtype)
        top = float(np.abs(self.mean_).max()) if self.mean_.size else 0.0
        return max(float(info.eps) * top, float(info.tiny))

    def fit_transform(self, X, y=None) -> np.ndarray:
        """``fit(X).transform(X)``, bit-identical to it, with one pass over the distances:
        sigma in closed form, then the uncentred features written into the output while their
        column sums accumulate (the same blocks and operations as ``fit`` and ``transform``),
        then the mean subtracted in place."""
        X = self._fit_anchors(X)
        self._set_sigma(self._mean_sq_distance(X))
        n, q = X.shape[0], self.anchors_.shape[0]
        out = np.empty((n, q), dtype=self.dtype)
        acc = self._raw_pass(X, out)
        self.mean_ = acc / n if self.center else np.zeros(q)
        self._center_in_place(out)
        return out

    def _check_fitted(self):
        if not hasattr(self, "anchors_"):
            raise RuntimeError("RBFAnchorFeatures is not fitted; call fit(X) first")

    # ------------------------------------------------------------ persistence
    def get_params(self):
        return {"n_anchors": self.n_anchors, "anchors": self.anchors, "center": self.center,
                "dtype": np.dtype(self.dtype).name, "chunk_size": self.chunk_size}

    def get_state(self) -> dict:
        self._check_fitted()
        state = {"anchors": self.anchors_, "sigma": np.array(self.sigma_), "mean": self.mean_,
                 "n_features_in": np.array(self.n_features_in_)}
        if self.shift_ is not None:   # only then: files of unshifted maps are as before
            state["shift"] = self.shift_
        return state

    def feature_dims(self) -> tuple[int, int]:
        """``(n_features_in, n_features_out)``: input features and kernel features (anchors)."""
        return (self.n_features_in_, self.anchors_.shape[0])

    @classmethod
    def from_state(cls, params: dict, state: dict) -> "RBFAnchorFeatures":
        """Rebuild from :meth:`get_state`; a state whose arrays do not fit together (anchors not
        ``(q, d)``, ``mean`` not ``(q,)``, ``shift`` not ``(d,)``, a ``sigma`` that is not a
        positive finite number) is a ValueError naming the entry."""
        params = dict(params)
        params["dtype"] = np.dtype(params.get("dtype", "float32"))
        obj = cls(**params)
        d = _state_int(state, "n_features_in")
        anchors = _state_array(state, "anchors", 2)
        if anchors.shape[1] != d or anchors.shape[0] < 1:
            raise ValueError(f"anchors has shape {anchors.shape} but (q >= 1, n_features_in = "
                             f"{d}) is expected")
        mean = _state_array(state, "mean", 1)
        if mean.shape != (anchors.shape[0],):
            raise ValueError(f"mean has shape {mean.shape} but ({anchors.shape[0]},) (one per "
                             f"anchor) is expected")
        shift = state.get("shift")
        if shift is not None:
            shift = _state_array(state, "shift", 1)
            if shift.shape != (d,):
                raise ValueError(f"shift has shape {shift.shape} but ({d},) is expected")
        sigma = _state_array(state, "sigma", 0)
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite number (the kernel width), got "
                             f"{float(sigma)}")
        obj._set_anchors(anchors, shift)
        obj.sigma_ = float(sigma)
        obj.mean_ = mean
        obj.n_features_in_ = d
        return obj


def _kmeans_anchors(X, q: int, rng: np.random.Generator, n_iter: int = 10,
                    max_samples: int = 20000, shift=None) -> np.ndarray:
    """Lloyd's k-means on a random subsample; initial centres are random samples. ``shift``
    (see :func:`_offset_shift`) is subtracted for the distances and added back to the centres.

    The subsample stays sparse when ``X`` is; each iteration assigns blocks of
    ``CACHE_BLOCK_ELEMENTS`` (sample, centre) pairs (one product per block, the same
    elementwise expression as the full distance matrix), so no (samples, q) matrix is formed,
    and sums the members of each cluster by one sparse (q, samples) x (samples, d) product (in
    sample order, as ``np.add.at`` did)."""
    n = X.shape[0]
    sub = np.sort(rng.choice(n, size=min(n, max_samples), replace=False))
    S = X[sub]
    if sp.issparse(S) and shift is None:
        S = sp.csr_matrix(S, dtype=np.float64)
    else:
        S = S.toarray() if sp.issparse(S) else np.asarray(S, dtype=np.float64)
        if shift is not None:
            S = S - shift
    m = S.shape[0]
    first = rng.choice(m, size=q, replace=False)
    C = S[first].toarray() if sp.issparse(S) else S[first].copy()
    s_norm = _squared_norms(S)
    block = max(1, CACHE_BLOCK_ELEMENTS // q)
    assign = np.empty(m, dtype=np.intp)
    for _ in range(n_iter):
        c_norm = np.einsum("ij,ij->i", C, C)
        Ct = np.ascontiguousarray(C.T)
        for rows in _row_blocks(m, block):
            D = s_norm[rows, None] + c_norm[None, :] - 2.0 * np.asarray(S[rows] @ Ct)
            assign[rows] = np.argmin(D, axis=1)
        counts = np.bincount(assign, minlength=q)
        members = sp.csr_matrix((np.ones(m), (assign, np.arange(m))), shape=(q, m))
        sums = members @ S
        sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
        nonempty = counts > 0
        C[nonempty] = sums[nonempty] / counts[nonempty, None]
        # empty clusters keep their previous centre
    return C if shift is None else C + shift


class CenteredFeatures:
    """Raw features centred by the training mean: the "no kernel" ablations (ASFOH-K, AMSH-k).

    Same interface as :class:`RBFAnchorFeatures`; sparse input is densified chunk by chunk.
    """

    def __init__(self, *, dtype=np.float32, chunk_size: int = DEFAULT_CHUNK):
        self.dtype = dtype
        self.chunk_size = chunk_size

    def fit(self, X, y=None):
        X = check_features(X, "X")
        self.mean_ = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        if not hasattr(self, "mean_"):
            raise RuntimeError("CenteredFeatures is not fitted; call fit(X) first")
        X = check_features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but {self.n_features_in_} were fitted")
        out = np.empty(X.shape, dtype=self.dtype)
        for start in range(0, X.shape[0], self.chunk_size):
            c = X[start:start + self.chunk_size]
            c = c.toarray() if sp.issparse(c) else c
            out[start:start + self.chunk_size] = c - self.mean_
        return out

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).transform(X)

    def get_params(self):
        return {"dtype": np.dtype(self.dtype).name, "chunk_size": self.chunk_size}

    def get_state(self) -> dict:
        return {"mean": self.mean_, "n_features_in": np.array(self.n_features_in_)}

    def feature_dims(self) -> tuple[int, int]:
        """``(n_features_in, n_features_out)``: both the number of input features."""
        return (self.n_features_in_, self.n_features_in_)

    @classmethod
    def from_state(cls, params: dict, state: dict) -> "CenteredFeatures":
        params = dict(params)
        params["dtype"] = np.dtype(params.get("dtype", "float32"))
        obj = cls(**params)
        d = _state_int(state, "n_features_in")
        mean = _state_array(state, "mean", 1)
        if mean.shape != (d,):
            raise ValueError(f"mean has shape {mean.shape} but ({d},) is expected")
        obj.mean_ = mean
        obj.n_features_in_ = d
        return obj


def _state_array(state: dict, key: str, ndim: int) -> np.ndarray:
    """``state[key]`` as a float64 array of ``ndim`` dimensions, or a ValueError naming it."""
    if key not in state:
        raise ValueError(f"{key} is missing")
    a = np.asarray(state[key])
    if a.ndim != ndim or not (np.issubdtype(a.dtype, np.floating)
                              or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{key} must be a {ndim}-D real array, got dtype {a.dtype} and shape "
                         f"{a.shape}")
    return a.astype(np.float64)


def _state_int(state: dict, key: str) -> int:
    if key not in state:
        raise ValueError(f"{key} is missing")
    a = np.asarray(state[key])
    if a.ndim != 0 or not np.issubdtype(a.dtype, np.integer) or int(a) < 1:
        raise ValueError(f"{key} must be a positive integer, got {a!r}")
    return int(a)
