"""Input validation with messages that name the argument and the problem."""
from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp


class DegenerateCodesWarning(UserWarning):
    """The learned training codes carry (almost) no information: most bits take one value for
    every training item, so retrieval against them is at chance level."""


class NumericalFallbackWarning(RuntimeWarning):
    """A closed-form step could not be solved the usual way and a fallback was used (a least-
    squares or pseudo-inverse solve of a singular system, a random completion of a rank-
    deficient latent matrix): the result is valid but not unique, and the input is probably
    degenerate (duplicated or constant features, too few classes for the code length)."""


class OutOfDistributionWarning(UserWarning):
    """Inputs to ``encode`` lie far outside the training distribution: their kernel features
    underflow to 0 or they all get the same code, so their codes carry no information."""


def warn_numerical_fallback(message: str) -> None:
    """Warn (:class:`NumericalFallbackWarning`) from the user's call site. Python shows one
    warning per message and call site (the default filter), so a fallback taken at every
    iteration of a fit is reported once."""
    import warnings

    warnings.warn(message, NumericalFallbackWarning, stacklevel=_caller_stacklevel())


#: share of constant bits from which the learned codes count as degenerate
DEGENERATE_CONSTANT_BITS = 0.5


def _caller_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called from this package that points at the first
    frame outside cmhash (the user's ``fit`` call), however deep inside cmhash the call is."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2   # 1 = the frame calling warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_degenerate_codes(codes, name: str) -> None:
    """Warn (:class:`DegenerateCodesWarning`) when at least half of the bits of ``codes``
    (n, r) are constant over all n >= 2 rows, e.g. a training run that collapsed to one code."""
    import warnings

    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] == 0:
        return
    constant = int(np.count_nonzero(np.all(codes == codes[:1], axis=0)))
    if constant >= DEGENERATE_CONSTANT_BITS * codes.shape[1]:
        distinct = len(np.unique(codes, axis=0))
        what = ("all training items share one code: the training collapsed and retrieval "
                "against these codes is at chance level" if distinct == 1 else
                f"{distinct} distinct codes; only {codes.shape[1] - constant} bits carry "
                f"information")
        warnings.warn(f"{name}: {constant} of {codes.shape[1]} bits are the same for all "
                      f"{codes.shape[0]} training items ({what}). Check the inputs' scaling, "
                      f"the number of epochs / iterations and the method's weights.",
                      DegenerateCodesWarning, stacklevel=_caller_stacklevel())


#: encode flags a call whose codes are all the same only from this many (distinct) inputs on
SAME_CODE_MIN_ROWS = 16


def warn_if_far_from_training(codes, far, X, name: str) -> None:
    """Warn once (:class:`OutOfDistributionWarning`) when inputs of ``encode`` are far outside
    the training distribution: the rows flagged in ``far`` (kernel features that underflow;
    None: not tested), or -- whatever the method -- at least ``SAME_CODE_MIN_ROWS`` inputs, not
    all identical, that all got one code. The message gives the fraction of rows affected."""
    import warnings

    m = int(codes.shape[0])
    n_far = int(np.count_nonzero(far)) if far is not None else 0
    one_code = m >= 2 and bool(np.all(codes == codes[:1]))
    if n_far:
        first = int(np.flatnonzero(far)[0])
        also = (f" All {m} rows got one and the same code." if one_code and n_far < m else "")
        warnings.warn(
            f"{name}: {n_far} of {m} input rows ({n_far / m:.1%}; first: row {first}) are far "
            f"outside the training distribution: their kernel features underflow (the distance "
            f"to every anchor is many times the training distances), so they all get the same "
            f"code and their search results are arbitrary.{also} Check that the inputs are "
            f"scaled / preprocessed like the training features.",
            OutOfDistributionWarning, stacklevel=_caller_stacklevel())
        return
    if m < SAME_CODE_MIN_ROWS or not one_code:
        return
    if sp.issparse(X):
        diff = X - sp.csr_matrix(np.ones((m, 1), dtype=X.dtype)) @ X[:1]
        same_inputs = diff.count_nonzero() == 0
    else:
        same_inputs = bool(np.all(X == X[:1]))
    if not same_inputs:
        warnings.warn(
            f"{name}: all {m} input rows (100%) got the same code although the inputs differ: "
            f"they are far outside the training distribution (e.g. scaled or preprocessed "
            f"differently from the training features), or the hash functions collapsed (too "
            f"little training); their search results are arbitrary.",
            OutOfDistributionWarning, stacklevel=_caller_stacklevel())


def check_random_state(seed) -> np.random.Generator:
    """Turn ``None``, an int, a SeedSequence/BitGenerator, a legacy RandomState or a Generator
    into a :class:`numpy.random.Generator` (a Generator is returned as is, so its stream is
    shared with the caller)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (numbers.Integral, np.integer)) and not isinstance(seed, bool)):
        if seed is not None and seed < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {seed}")
        return np.random.default_rng(seed)
    if isinstance(seed, (np.random.SeedSequence, np.random.BitGenerator)):
        return np.random.default_rng(seed)
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(0, 2**31 - 1))
    raise TypeError(f"random_state must be None, an int or a numpy Generator, got {type(seed).__name__}")


#: values per block when checking features for NaN / inf (bounds the temporary boolean mask)
FINITE_CHECK_ELEMENTS = 1 << 24


def is_image_source(X) -> bool:
    """A lazy image source of :mod:`cmhash.data.images` (duck-typed: no import cycle)."""
    return bool(getattr(type(X), "_cmhash_image_source", False))


def check_features(X, name: str, *, allow_sparse: bool = True, dtype=None, min_ndim: int = 2,
                   max_ndim: int = 2, allow_empty: bool = False):
    """Validate a feature matrix: 2-D (or up to ``max_ndim``), numeric, finite, non-empty.

    Sparse input is returned as CSR (kept sparse); dense input as a C-contiguous array of
    ``dtype`` (float64 if None and the input is not already floating point). With
    ``allow_empty`` an input with no rows (shape (0, d)) is accepted (queries to encode); a
    sample with no features never is. A 1-D input is refused with a hint to reshape it.
    A lazy image source (:mod:`cmhash.data.images`) is returned as it is -- nothing is read
    -- where 4-D input is accepted (``max_ndim >= 4``: the deep methods).
    """
    if is_image_source(X):
        if max_ndim < 4:
            raise ValueError(f"{name}: a lazy image source {X.shape} is an image modality; "
                             f"this method takes feature vectors (n, d) (the deep methods take "
                             f"images)")
        if (X.shape[0] == 0 and not allow_empty) or int(np.prod(X.shape[1:])) == 0:
            raise ValueError(f"{name} is empty: shape {X.shape}")
        return X
    if X is None:
        raise ValueError(f"{name} is None; expected an array of shape (n_samples, n_features)")
    if sp.issparse(X):
        if not allow_sparse:
            raise TypeError(f"{name} is sparse but this operation needs a dense array")
        if np.issubdtype(X.dtype, np.complexfloating):
            raise TypeError(f"{name} must be real-valued, got complex dtype {X.dtype}")
        X = sp.csr_matrix(X)
        if dtype is not None:
            X = X.astype(dtype, copy=False)
        elif not np.issubdtype(X.dtype, np.floating):
            X = X.astype(np.float64)
        if (X.shape[0] == 0 and not allow_empty) or X.shape[1] == 0:
            raise ValueError(f"{name} is empty: shape {X.shape}")
        if not np.all(np.isfinite(X.data)):
            raise ValueError(f"{name} contains NaN or infinite values")
        return X
    try:
        arr = np.asarray(X)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} could not be converted to an array: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    if arr.ndim < min_ndim or arr.ndim > max_ndim:
        want = f"{min_ndim}-D" if min_ndim == max_ndim else f"{min_ndim}-D to {max_ndim}-D"
        hint = ("; a single sample of d features is X.reshape(1, -1), d samples of one "
                "feature X.reshape(-1, 1)" if arr.ndim == 1 and min_ndim == 2 else "")
        raise ValueError(f"{name} must be a {want} array of shape (n_samples, n_features), "
                         f"got a {arr.ndim}-D array of shape {arr.shape}{hint}")
    if (arr.shape[0] == 0 and not allow_empty) or int(np.prod(arr.shape[1:])) == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if dtype is None:
        # integer images (uint8 pixels, (n, C, H, W)) are kept as they are: the deep methods
        # convert them batch by batch; a float64 copy would take 8 times their memory
        keep = np.issubdtype(arr.dtype, np.floating) or (arr.ndim == 4 and arr.dtype.kind in "iu")
        dtype = arr.dtype if keep else np.float64
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.dtype.kind in "iub":
        return arr   # finite by construction
    # checked in row blocks: the boolean mask of a multi-GB feature matrix is not materialised
    rows = max(1, FINITE_CHECK_ELEMENTS // max(int(np.prod(arr.shape[1:])), 1))
    if not all(np.isfinite(arr[s:s + rows]).all() for s in range(0, arr.shape[0], rows)):
        bad = sum(int(np.count_nonzero(~np.isfinite(arr[s:s + rows])))
                  for s in range(0, arr.shape[0], rows))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return arr


def check_not_constant(X, name: str) -> None:
    """Refuse training features whose rows are all identical (a constant modality), e.g. an
    all-zero sparse bag of words: they carry nothing to hash, the RBF kernel is undefined on
    them (sigma = 0) and centred raw features are 0, so every query would get the same code.
    ``X`` is a validated dense array or CSR matrix with at least one row."""
    if X.shape[0] < 2:
        return
    if is_image_source(X):
        # decoded (as stored) one at a time until one differs from the first: almost always
        # the second, so this reads two images
        first = X.read(0)
        if any(not np.array_equal(X.read(i), first) for i in range(1, X.shape[0])):
            return
    elif sp.issparse(X):
        if bool((X.max(axis=0) != X.min(axis=0)).nnz):
            return
    else:
        if not np.array_equal(X[1], X[0]):   # the usual case, decided by two rows
            return
        first = X[:1]
        rows = max(1, FINITE_CHECK_ELEMENTS // max(int(np.prod(X.shape[1:])), 1))
        if any(not np.array_equal(X[s:s + rows], np.broadcast_to(first, X[s:s + rows].shape))
               for s in range(1, X.shape[0], rows)):
            return
    raise ValueError(f"{name} are the same for every training sample (a constant modality, "
                     f"e.g. all-zero rows): there is nothing to hash in it; check how its "
                     f"features were built, or leave the modality out")


def class_indices(labels):
    """``labels`` as an int64 vector if they are given as class indices ((n,) or (n, 1)
    finite integers), else None (multi-hot, or invalid: :func:`check_labels` says)."""
    if labels is None or sp.issparse(labels):
        return None
    Y = np.asarray(labels)
    if Y.dtype == object or not (np.issubdtype(Y.dtype, np.number) or Y.dtype == bool) \
            or np.issubdtype(Y.dtype, np.complexfloating):
        return None
    if Y.ndim == 2 and Y.shape[1] == 1:
        Y = Y[:, 0]
    if Y.ndim != 1 or not np.all(np.isfinite(Y)) or np.any(Y != np.round(Y)):
        return None
    return Y.astype(np.int64)


#: how many indices of unlabelled training rows :func:`check_labels` names
UNLABELLED_ROWS_SHOWN = 5


def check_labels(labels, n_samples: int | None = None, name: str = "labels", *,
                 require_nonempty_classes: bool = True, require_labelled_rows: bool = False,
                 classes=None) -> np.ndarray:
    """Return labels as a float64 multi-hot (n, c) matrix.

    Accepts a multi-hot (n, c) matrix of 0/1 (or booleans), or class indices given as a
    vector (n,) or a single column (n, 1), converted to one-hot over the sorted unique values
    (or over ``classes``, a sorted int array holding every index, so that label sets one-hot
    encoded separately share their columns).

    A single column is *always* read as class indices, also when it holds only 0 and 1: a
    0/1 column ``[[0], [1], [1]]`` is the two classes 0 and 1 (one-hot (n, 2)), exactly as the
    vector ``[0, 1, 1]``. (Read as a one-class multi-hot matrix it would make every class-0
    item an item with no label, which supervised hashing cannot use.) Pass a 0/1 (n, 2) matrix
    or a vector for the same labels without this ambiguity.

    ``require_nonempty_classes``: every class column must have a positive sample.
    ``require_labelled_rows``: every row (item) must have at least one class; training labels
    are checked so (an all-zero row has no unit-norm normalisation and is dissimilar to every
    item), query / evaluation labels are not (a query with no relevant item has AP 0).
    """
    if labels is None:
        raise ValueError(f"{name} is None; supervised hashing needs labels")
    if sp.issparse(labels):
        labels = labels.toarray()
    Y = np.asarray(labels)
    if Y.dtype == object or not (np.issubdtype(Y.dtype, np.number) or Y.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {Y.dtype}")
    if np.issubdtype(Y.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got complex dtype {Y.dtype}")
    if Y.ndim == 2 and Y.shape[1] == 1:   # a column of class indices, as a vector
        Y = Y[:, 0]
    if Y.ndim == 1:
        if Y.dtype == bool:
            Y = Y.astype(np.int64)
        if not np.all(np.isfinite(Y)) or np.any(Y != np.round(Y)):
            raise ValueError(f"{name}: class indices must be finite integers")
        Yi = Y.astype(np.int64)
        if classes is None:
            classes, idx = np.unique(Yi, return_inverse=True)
        else:
            classes = np.asarray(classes, dtype=np.int64)
            idx = np.minimum(np.searchsorted(classes, Yi), max(classes.size - 1, 0))
            if classes.size == 0 or np.any(classes[idx] != Yi):
                raise ValueError(f"{name}: class indices outside the classes {classes.tolist()}")
        Y = np.zeros((Y.shape[0], classes.size), dtype=np.float64)
        Y[np.arange(Y.shape[0]), idx] = 1.0
    elif Y.ndim != 2:
        raise ValueError(f"{name} must be (n, c) multi-hot or (n,) class indices, got shape {Y.shape}")
    Y = np.asarray(Y, dtype=np.float64)
    if not np.all(np.isfinite(Y)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if not _is_binary(Y):
        raise ValueError(f"{name} must be multi-hot with entries in {{0, 1}}")
    if Y.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if Y.shape[1] == 0:
        raise ValueError(f"{name} has no class columns: shape {Y.shape}")
    if n_samples is not None and Y.shape[0] != n_samples:
        raise ValueError(f"{name} has {Y.shape[0]} rows but the features have {n_samples} samples")
    if require_labelled_rows:
        unlabelled = np.flatnonzero(~Y.any(axis=1))
        if unlabelled.size:
            first = unlabelled[:UNLABELLED_ROWS_SHOWN].tolist()
            more = ", ..." if unlabelled.size > UNLABELLED_ROWS_SHOWN else ""
            raise ValueError(
                f"{name}: {unlabelled.size} of {Y.shape[0]} training items have no label "
                f"(all-zero rows, e.g. rows {str(first)[1:-1]}{more}); supervised hashing needs "
                f"at least one class per training item: remove the unlabelled items before "
                f"fitting (the standard MIRFlickr / NUS-WIDE protocols drop them)")
    if require_nonempty_classes:
        empty = np.flatnonzero(Y.sum(axis=0) == 0)
        if empty.size:
            raise ValueError(f"{name}: class column(s) {empty.tolist()} have no positive sample "
                             "(empty class); drop them or pass labels without them")
    return Y


def check_distinct_label_sets(Ys, name: str = "labels") -> None:
    """Refuse training labels in which every item (of every modality) has the same label set.

    Supervised hashing learns from which items share labels and which do not; with a single
    class (or every item carrying the same classes) every pair is similar, so the objective
    is met by any code that is the same for everything and the fitted codes carry no label
    information (some methods collapsed to one code, others returned codes that only encode
    the features, in both cases without any message). ``Ys``: a list of validated (n_v, c)
    multi-hot matrices (one for paired training).
    """
    first = Ys[0][0]
    if all(bool(np.all(Y == first)) for Y in Ys):
        classes = np.flatnonzero(first).tolist()
        what = ("the same single class" if len(classes) == 1 else
                f"the same {len(classes)} classes (multi-hot columns {classes})")
        raise ValueError(f"{name}: every training item has {what}; supervised hashing needs "
                         f"at least two different label sets (with one, every pair of items is "
                         f"similar and the codes cannot learn anything from the labels)")


def _is_binary(Y) -> bool:
    return bool(np.all((Y == 0) | (Y == 1)))


def check_n_bits(n_bits) -> int:
    if isinstance(n_bits, bool) or not isinstance(n_bits, (numbers.Integral, np.integer)):
        raise TypeError(f"n_bits must be a positive integer, got {n_bits!r}")
    if n_bits <= 0:
        raise ValueError(f"n_bits must be a positive integer, got {n_bits}")
    return int(n_bits)


def check_positive(value, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(value, name: str, *, allow_none: bool = False, error: type = TypeError):
    """``True`` / ``False`` (NumPy booleans included) as a Python bool (``None`` kept when
    ``allow_none``), else ``error`` naming ``name`` (1, "yes" are not booleans: ``1 == True``
    let such values through tests like ``in (True, False)``)."""
    if allow_none and value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    want = "None, True or False" if allow_none else "True or False"
    raise error(f"{name} must be {want}, got {value!r}")


def check_n_anchors(value, n_views: int, name: str = "n_anchors") -> list[int]:
    """``n_anchors`` (kernel anchors per modality) as a list of ``n_views`` ints.

    ``value`` is one positive int (every modality) or a list / tuple of one positive int per
    modality. Not an integer (a string, None, 2.5, True, an array) is a TypeError, as for every
    integer parameter (:func:`check_int`); an integer below 1 or a list of the wrong length a
    ValueError.
    """
    if isinstance(value, (list, tuple)):
        if len(value) != n_views:
            raise ValueError(f"{name} must be an int or one value per modality ({n_views}), "
                             f"got {value!r}")
        return [check_int(q, name) for q in value]
    return [check_int(value, name)] * n_views


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_codes(B, name: str = "codes") -> np.ndarray:
    B = np.asarray(B)
    if B.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, n_bits) array, got shape {B.shape}")
    if not np.all((B == 1) | (B == -1)):
        raise ValueError(f"{name} must contain only -1 and +1")
    return B.astype(np.int8, copy=False)


def open_npz(path, what: str):
    """``np.load(path, allow_pickle=False)`` of an ``.npz`` archive (use it as a context
    manager); a missing path is a FileNotFoundError, and a directory, a ``.npy`` array or a
    file that is not a readable ``.npz`` archive a ValueError, each naming ``what`` the file
    should have been (numpy raised EOFError, AttributeError or a misleading "pickled data")."""
    import os
    import zipfile

    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.isdir(name):
        raise ValueError(f"{path} is a directory, not {what}")
    try:
        data = np.load(name, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not {what}: it is not a readable .npz archive") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not {what}: it holds a single .npy array, not an .npz "
                         f"archive")
    return data


def check_modality_weight(value, name: str, *, open_interval: bool = False) -> float:
    """A weight a of the image terms whose text terms get ``1 - a`` (SCRATCH, CMFH, SMFH):
    a real number in [0, 1] (in (0, 1) with ``open_interval``, where a weight divides)."""
    a = check_positive(value, name, allow_zero=not open_interval)
    if a > 1 or (open_interval and a == 1):
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be in {interval} (the text weight is 1 - {name}), "
                         f"got {value}")
    return a
