"""RBF anchor kernel features, the shared non-linear front end of the shallow methods.

``phi(x) = exp(-||x - a_j||^2 / (2 sigma)) - mean_train``, j = 1..q anchors, with
``sigma`` the mean squared distance between training samples and anchors (NOTES.md,
"Kernel features"; BATCH/AMSH/ASCMH/ASFOH reference practice).

Centring the raw features by the training mean does not change any distance ``||x - a||``,
so it is implicit here: sparse bag-of-words input is never densified as a whole. Every
transform runs in row chunks, so memory is O(chunk x q) beyond the output.

Distances are computed as ``||x||^2 + ||a||^2 - 2 x.a``, which loses the digits of ``||x||^2``
that the distances do not have: dense features with a large common offset (mean far from 0
relative to their spread, e.g. 1e8 + N(0, 1)) gave distances of pure rounding noise. When the
training mean's squared norm exceeds ``SHIFT_RATIO`` times the features' spread, the features
and anchors are shifted by that mean (``shift_``) before the distances (the same distances in
exact arithmetic); below that ratio nothing is shifted and the features are as before.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._validation import check_choice, check_features, check_int, check_random_state

DEFAULT_CHUNK = 8192
#: dense features are shifted by their training mean when its squared norm exceeds this times
#: their spread (mean squared distance to the mean, estimated on the first ``SHIFT_SAMPLE``
#: rows): the distances then keep at least ~8 of float64's 16 digits without the shift
SHIFT_RATIO = 1e8
SHIFT_SAMPLE = 1000
#: fit_transform reuses the train-to-anchor distances when they take at most this many bytes
CACHE_BYTES = 256 * 2 ** 20


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
        return self._fit_stats(self._fit_anchors(X))

    def _fit_stats(self, X):
        """sigma and the training mean for already chosen anchors (validated ``X``)."""
        self._stats_from_distances(lambda: self._distance_chunks(X), X.shape[0])
        return self

    def _distance_chunks(self, X):
        """``(start, D)`` for each row chunk of ``X``, D its squared distances to the anchors."""
        for start in range(0, X.shape[0], self.chunk_size):
            yield start, self._sq_dist(X[start:start + self.chunk_size])

    def _stats_from_distances(self, distance_chunks, n: int, *, keep_raw: bool = False):
        """Set ``sigma_`` (mean squared distance) and ``mean_`` from two passes over
        ``distance_chunks()``; with ``keep_raw`` also return the ``(start, exp(-D / 2 sigma))``
        chunks (the uncentred features) so that ``fit_transform`` need not recompute them."""
        q = self.anchors_.shape[0]
        total = 0.0
        for _, D in distance_chunks():
            total += float(D.sum())
        self._set_sigma(total / (n * q))
        raws, acc = [], np.zeros(q)
        if self.center or keep_raw:
            for start, D in distance_chunks():   # D is not used again: exp in place
                raw = self._phi_in_place(D)
                if self.center:
                    acc += raw.sum(axis=0, dtype=np.float64)
                if keep_raw:
                    raws.append((start, raw))
        self.mean_ = acc / n if self.center else np.zeros(q)
        return raws

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
        """``anchors_``, ``shift_`` and the anchors as the distances use them (shifted)."""
        self.anchors_ = anchors
        self.shift_ = None if shift is None else np.asarray(shift, dtype=np.float64)
        self._anchors_eff = anchors if shift is None else anchors - self.shift_
        self._anchor_sqnorm = _squared_norms(self._anchors_eff)

    def _set_sigma(self, sigma):
        if np.isinf(sigma):
            raise ValueError(_OVERFLOW)
        if not sigma > 0:
            raise ValueError("all training samples coincide with the anchors (sigma = 0); "
                             "the RBF kernel is undefined (with distinct samples: the feature "
                             "values are so small that squared distances underflow to 0; "
                             "rescale the features)")
        self.sigma_ = float(sigma)

    def _sq_dist(self, Xc) -> np.ndarray:
        if self.shift_ is not None:   # a chunk of rows, densified if a query is sparse
            Xc = (Xc.toarray() if sp.issparse(Xc) else np.asarray(Xc, dtype=np.float64)) \
                - self.shift_
        with np.errstate(over="ignore", invalid="ignore"):
            cross = Xc @ self._anchors_eff.T
            cross = np.asarray(cross, dtype=np.float64)
            # ||x||^2 + ||a||^2 - 2 x.a, in place (the same operations and rounding as the
            # expression, without two more chunk-sized temporaries)
            D = np.add.outer(_squared_norms(Xc), self._anchor_sqnorm)
            cross *= 2.0                     # a fresh product: safe to overwrite
            D -= cross
            np.maximum(D, 0.0, out=D)        # NaN (inf - inf) propagates through maximum
        if np.isnan(D).any():   # inf - inf: a squared norm or product overflowed float64
            raise ValueError(_OVERFLOW)
        return D

    def _phi_in_place(self, D) -> np.ndarray:
        """``exp(-D / (2 sigma))`` written over the squared distances ``D``."""
        np.negative(D, out=D)
        np.divide(D, 2.0 * self.sigma_, out=D)
        return np.exp(D, out=D)

    def _raw_phi(self, Xc) -> np.ndarray:
        return self._phi_in_place(self._sq_dist(Xc))

    # ---------------------------------------------------------------- transform
    def transform(self, X) -> np.ndarray:
        self._check_fitted()
        X = check_features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but the kernel was fitted on "
                             f"{self.n_features_in_}")
        out = np.empty((X.shape[0], self.anchors_.shape[0]), dtype=self.dtype)
        for start in range(0, X.shape[0], self.chunk_size):
            stop = start + self.chunk_size
            out[start:stop] = self._raw_phi(X[start:stop]) - self.mean_
        return out

    def fit_transform(self, X, y=None) -> np.ndarray:
        """``fit(X).transform(X)``, bit-identical to it.

        When the n x q float64 distance matrix fits in ``CACHE_BYTES`` the distances are
        computed once and reused for sigma, the training mean and the features (the same
        chunks and the same operations as the three passes of ``fit`` + ``transform``, so the
        result is bit-identical); otherwise it runs the three chunked passes.
        """
        X = self._fit_anchors(X)
        n, q = X.shape[0], self.anchors_.shape[0]
        if n * q * 8 > CACHE_BYTES:
            return self._fit_stats(X).transform(X)
        chunks = list(self._distance_chunks(X))
        raws = self._stats_from_distances(lambda: chunks, n, keep_raw=True)
        del chunks
        out = np.empty((n, q), dtype=self.dtype)
        for start, raw in raws:
            out[start:start + self.chunk_size] = raw - self.mean_
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
    (see :func:`_offset_shift`) is subtracted for the distances and added back to the centres."""
    n = X.shape[0]
    sub = np.sort(rng.choice(n, size=min(n, max_samples), replace=False))
    S = X[sub]
    S = S.toarray() if sp.issparse(S) else np.asarray(S, dtype=np.float64)
    if shift is not None:
        S = S - shift
    C = S[rng.choice(S.shape[0], size=q, replace=False)].copy()
    s_norm = np.einsum("ij,ij->i", S, S)
    for _ in range(n_iter):
        D = s_norm[:, None] + np.einsum("ij,ij->i", C, C)[None, :] - 2.0 * S @ C.T
        assign = np.argmin(D, axis=1)
        counts = np.bincount(assign, minlength=q)
        sums = np.zeros_like(C)
        np.add.at(sums, assign, S)
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
