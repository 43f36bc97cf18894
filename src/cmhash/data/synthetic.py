"""Seeded synthetic cross-modal data whose features depend on the labels.

Generative model (all vectorised; the same seed gives the same data):

* **labels** -- every item draws a primary class uniformly, and every other class
  independently with probability ``multilabel_rate`` (so ``1 + Binomial(c - 1, rate)``
  labels). After the split, a class without a training positive gets one (random training
  item), so no training class is empty.
* **dense modality** (the image features by default) -- each class has a Gaussian prototype
  ``p_k ~ N(0, I_d)``; an item is the mean of its labels' prototypes plus ``noise * N(0, I_d)``.
* **bag-of-words modality** (text; also the image modality when ``sparse_image=True``) --
  each class has a topic: a random set of vocabulary words with Gamma(1) weights; a
  background distribution is Zipf-like over a random word order. An item draws
  ``1 + Poisson(density * d - 1)`` tokens; each token comes from the background with
  probability ``bow_noise``, else from the topic of one of its labels (uniformly). Counts are
  built directly as CSR (float32, non-negative). ``sparse_text=False`` returns them dense
  (optionally L1-normalised: topic-proportion-like features, as in Wiki).

:func:`make_synthetic_image_text` builds small label-dependent colour images ``(n, 3, H, W)``
plus bag-of-words text, for the deep methods.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import check_random_state
from .dataset import CrossModalDataset, DataWarning, _check_count

__all__ = [
    "make_synthetic",
    "make_synthetic_image_text",
    "SYNTHETIC_PRESETS",
    "parse_synthetic_spec",
    "from_spec",
]

#: Synthetic presets: parameters of :func:`make_synthetic` (``"image-text"`` ->
#: :func:`make_synthetic_image_text`).
SYNTHETIC_PRESETS: dict[str, dict[str, Any]] = {
    # the demo default: fast, 2 modalities (dense 128-d, sparse 300-d BoW), 10 labels
    "small": dict(
        n=3000, n_classes=10, multilabel_rate=0.1, dims=(128, 300), sparse_image=False,
        sparse_text=True, image_density=0.05, text_density=0.05, noise=1.5, bow_noise=0.3,
        normalize_text=False, n_query=500, n_train=None,
    ),
    # Wiki-shaped: 2,866 items (693 query), 128-d dense + 10-d dense topic proportions,
    # single-label
    "wiki-like": dict(
        n=2866, n_classes=10, multilabel_rate=0.0, dims=(128, 10), sparse_image=False,
        sparse_text=False, image_density=0.05, text_density=3.0, noise=1.5, bow_noise=0.3,
        normalize_text=True, n_query=693, n_train=None,
    ),
    # MIRFlickr-shaped: 20,015 items (2,000 query), 512-d dense + 1,386-d sparse, 24 labels
    "mirflickr-like": dict(
        n=20015, n_classes=24, multilabel_rate=0.12, dims=(512, 1386), sparse_image=False,
        sparse_text=True, image_density=0.05, text_density=0.005, noise=1.5, bow_noise=0.3,
        normalize_text=False, n_query=2000, n_train=None,
    ),
    # NUS-WIDE-shaped: 186,577 items (2,000 query), 500-d and 1,000-d sparse, 10 labels
    "nuswide-like": dict(
        n=186577, n_classes=10, multilabel_rate=0.1, dims=(500, 1000), sparse_image=True,
        sparse_text=True, image_density=0.05, text_density=0.01, noise=1.5, bow_noise=0.3,
        normalize_text=False, n_query=2000, n_train=None,
    ),
    # IAPR-TC12-shaped: 20,000 items (2,000 query), 512-d dense + 2,912-d sparse, 255 labels
    "iapr-like": dict(
        n=20000, n_classes=255, multilabel_rate=0.01, dims=(512, 2912), sparse_image=False,
        sparse_text=True, image_density=0.05, text_density=0.01, noise=1.5, bow_noise=0.3,
        normalize_text=False, n_query=2000, n_train=None,
    ),
}
_IMAGE_TEXT_DEFAULTS: dict[str, Any] = dict(
    n=2000, image_size=32, n_classes=10, multilabel_rate=0.1, text_dim=300, text_density=0.05,
    noise=0.3, bow_noise=0.3, n_query=200, n_train=None,
)


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def _labels(rng: np.random.Generator, n: int, c: int, rate: float) -> np.ndarray:
    if c < 1:
        raise ValueError(f"n_classes must be >= 1, got {c}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"multilabel_rate must be in [0, 1], got {rate}")
    if rate > 0 and c > 1:
        Y = rng.random((n, c)) < rate
    else:
        Y = np.zeros((n, c), dtype=bool)
    Y[np.arange(n), rng.integers(0, c, size=n)] = True
    return Y


def _splits(rng: np.random.Generator, n: int, n_query: int, n_train: int | None,
            where: str = "the synthetic data") -> dict[str, np.ndarray]:
    n_query = _check_count(n_query, "n_query", minimum=0)
    if n_query >= n:
        raise ValueError(f"n_query={n_query} exceeds the {n - 1} items available for queries in "
                         f"{where} (n={n}; at least one must remain for retrieval)")
    n_ret = n - n_query
    ret = np.arange(n_ret)
    train = ret
    if n_train is not None:
        n_train = _check_count(n_train, "n_train")
        if n_train > n_ret:
            raise ValueError(f"n_train={n_train} exceeds the {n_ret} items available in split "
                             f"'retrieval' of {where} (n={n} minus {n_query} queries; the "
                             "training subset is drawn from it)")
        if n_train < n_ret:
            train = np.sort(rng.choice(n_ret, size=int(n_train), replace=False))
    # items are i.i.d., so contiguous blocks are a random split (and zero-copy views)
    return {"train": train, "query": np.arange(n_ret, n), "retrieval": ret}


def _fill_empty(rng: np.random.Generator, Y: np.ndarray, train: np.ndarray) -> None:
    empty = np.flatnonzero(~Y[train].any(axis=0))
    if empty.size:
        who = rng.choice(train, size=empty.size, replace=empty.size > train.size)
        Y[who, empty] = True


def _dense_features(rng: np.random.Generator, Y: np.ndarray, d: int, noise: float) -> np.ndarray:
    c = Y.shape[1]
    P = rng.standard_normal((c, d), dtype=np.float32)
    W = Y.astype(np.float32)
    W /= W.sum(axis=1, keepdims=True)
    X = W @ P
    X += np.float32(noise) * rng.standard_normal(X.shape, dtype=np.float32)
    return X


def _bow_features(
    rng: np.random.Generator, Y: np.ndarray, d: int, density: float, bow_noise: float
) -> sp.csr_matrix:
    """Label-dependent bag-of-words counts, built directly as CSR (float32)."""
    return _bow_counts(rng, Y, _topic_tables(rng, Y.shape[1], d), density, bow_noise)


def _topic_tables(rng: np.random.Generator, c: int, d: int) -> np.ndarray:
    """The ``c`` class topics and the background of a bag-of-words modality over ``d`` words:
    cumulative word distributions, flattened with offsets ``0 .. c`` (shared by every item;
    :func:`_bow_counts` draws items from them, e.g. block by block)."""
    if d < 2:
        raise ValueError(f"a bag-of-words modality needs d >= 2, got {d}")
    # topic tables: c class topics + 1 background, cumulative, flattened with offsets
    k = int(min(d, max(3, round(2.0 * d / max(c, 1)))))
    tables = np.zeros((c + 1, d), dtype=np.float64)
    for j in range(c):
        words = rng.choice(d, size=k, replace=False)
        tables[j, words] = rng.gamma(1.0, size=k) + 0.05
    order = rng.permutation(d)
    tables[c, order] = 1.0 / (np.arange(d) + 10.0)
    cum = np.cumsum(tables, axis=1)
    cum /= cum[:, -1:]
    return (cum + np.arange(c + 1)[:, None]).ravel()


def _bow_counts(rng: np.random.Generator, Y: np.ndarray, flat: np.ndarray, density: float,
                bow_noise: float) -> sp.csr_matrix:
    """Counts of the items with labels ``Y`` drawn from the topic tables ``flat``
    (:func:`_topic_tables`), as CSR float32."""
    n, c = Y.shape
    d = flat.size // (c + 1)
    mean_len = max(1.0, float(density) * d)
    lens = 1 + rng.poisson(mean_len - 1.0, size=n)
    total = int(lens.sum())
    doc = np.repeat(np.arange(n, dtype=np.int64), lens)
    # which table each token uses: background or one of the doc's labels
    Yc = sp.csr_matrix(Y)
    cnt = np.diff(Yc.indptr)
    pick = (rng.random(total) * cnt[doc]).astype(np.int64)
    table = Yc.indices[Yc.indptr[doc] + pick].astype(np.int64)
    if bow_noise > 0:
        table[rng.random(total) < bow_noise] = c
    u = rng.random(total)
    pos = np.searchsorted(flat, table + u, side="right")
    word = np.clip(pos - table * d, 0, d - 1)
    X = sp.csr_matrix(
        (np.ones(total, dtype=np.float32), (doc, word)), shape=(n, d), dtype=np.float32
    )
    X.sum_duplicates()
    return X


# --------------------------------------------------------------------------------------------
# public generators
# --------------------------------------------------------------------------------------------
def make_synthetic(
    n: int | None = None,
    n_classes: int | None = None,
    *,
    multilabel_rate: float | None = None,
    dims: tuple[int, ...] | None = None,
    sparse_text: bool | None = None,
    sparse_image: bool | None = None,
    text_density: float | None = None,
    image_density: float | None = None,
    noise: float | None = None,
    bow_noise: float | None = None,
    normalize_text: bool | None = None,
    n_query: int | None = None,
    n_train: int | None = None,
    random_state: Any = 0,
    name: str | None = None,
    modality_names: tuple[str, ...] | None = None,
    preset: str = "small",
) -> CrossModalDataset:
    """Seeded synthetic dataset with label-dependent features (see the module docstring).

    Every parameter left at None takes the value of ``preset`` (default ``"small"``:
    n=3000, 10 classes, multilabel_rate=0.1, dims=(128, 300), dense image, sparse text with
    density 0.05, noise=1.5, bow_noise=0.3, n_query=500, train = retrieval).

    Parameters
    ----------
    n : total items (queries included)
    n_classes : label columns
    multilabel_rate : probability of each extra label (0 -> single-label)
    dims : feature dim per modality; the first is the "image" modality, the others are
        bag-of-words "text" modalities (more than two entries -> more modalities)
    sparse_text : text modalities as CSR (else dense arrays)
    sparse_image : the first modality as sparse bag-of-visual-words instead of dense Gaussian
    text_density, image_density : approximate fraction of non-zeros of BoW rows
    noise : std of the Gaussian noise of the dense modality (prototypes have unit variance)
    bow_noise : fraction of background tokens in BoW modalities
    normalize_text : L1-normalise dense text rows (topic proportions)
    n_query : queries (the last ``n_query`` items); retrieval = the rest
    n_train : random training subset of the retrieval set (None -> train = retrieval; more
        than the retrieval set holds is a ValueError)
    random_state : seed
    modality_names : default ("image", "text", "view2", ...)
    preset : name in :data:`SYNTHETIC_PRESETS` supplying the unset parameters
    """
    if preset not in SYNTHETIC_PRESETS:
        hint = " (use make_synthetic_image_text)" if preset == "image-text" else ""
        raise ValueError(f"unknown synthetic preset {preset!r}; valid: {sorted(SYNTHETIC_PRESETS)}{hint}")
    p = dict(SYNTHETIC_PRESETS[preset])
    given = dict(
        n=n, n_classes=n_classes, multilabel_rate=multilabel_rate, dims=dims,
        sparse_text=sparse_text, sparse_image=sparse_image, text_density=text_density,
        image_density=image_density, noise=noise, bow_noise=bow_noise,
        normalize_text=normalize_text, n_query=n_query, n_train=n_train,
    )
    p.update({k: v for k, v in given.items() if v is not None})
    if n is not None and n_query is None:
        # scale the preset's query count with a custom n
        p["n_query"] = min(p["n_query"], max(1, int(n) // 10))
    n_, c = int(p["n"]), int(p["n_classes"])
    dims_ = tuple(int(d) for d in p["dims"])
    if len(dims_) < 1 or any(d < 1 for d in dims_):
        raise ValueError(f"dims must be positive feature sizes, got {dims_}")
    names = modality_names or (("image", "text") + tuple(f"view{i}" for i in range(2, len(dims_))))[: len(dims_)]
    if len(names) != len(dims_):
        raise ValueError(f"modality_names {names} do not match dims {dims_}")

    name = name or f"synthetic-{preset}"
    rng = check_random_state(random_state)
    Y = _labels(rng, n_, c, float(p["multilabel_rate"]))
    splits = _splits(rng, n_, p["n_query"], p["n_train"], where=name)
    _fill_empty(rng, Y, splits["train"])

    mods: dict[str, Any] = {}
    for i, (nm, d) in enumerate(zip(names, dims_)):
        if i == 0 and not p["sparse_image"]:
            mods[nm] = _dense_features(rng, Y, d, float(p["noise"]))
            continue
        dens = p["image_density"] if i == 0 else p["text_density"]
        X = _bow_features(rng, Y, d, float(dens), float(p["bow_noise"]))
        if i > 0 and not p["sparse_text"]:
            X = X.toarray()
            if p["normalize_text"]:
                X /= X.sum(axis=1, keepdims=True)
        mods[nm] = X
    ds = CrossModalDataset(mods, Y, splits, name=name)
    ds.meta.update(generator="make_synthetic", preset=preset, params=p,
                   random_state=random_state if isinstance(random_state, (int, type(None))) else "generator")
    return ds


def _class_templates(rng: np.random.Generator, c: int, s: int) -> np.ndarray:
    """(c, 3, s, s) templates: a coloured oriented grating times a class-placed blob."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    T = np.empty((c, 3, s, s), dtype=np.float32)
    for j in range(c):
        colour = rng.uniform(0.15, 1.0, size=3).astype(np.float32)
        theta = np.pi * j / max(c, 1) + rng.uniform(0, np.pi / (4 * max(c, 1)))
        freq = rng.choice([2.0, 3.0, 4.0])
        phase = rng.uniform(0, 2 * np.pi)
        grating = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        cy, cx = rng.uniform(0.25, 0.75, size=2)
        r = rng.uniform(0.15, 0.3)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)
        pattern = 0.5 * grating + 0.5 * blob
        T[j] = colour[:, None, None] * pattern[None]
    return T


def make_synthetic_image_text(
    n: int = 2000,
    image_size: int = 32,
    n_classes: int = 10,
    *,
    multilabel_rate: float = 0.1,
    text_dim: int = 300,
    text_density: float = 0.05,
    noise: float = 0.3,
    bow_noise: float = 0.3,
    n_query: int | None = None,
    n_train: int | None = None,
    random_state: Any = 0,
    name: str = "synthetic-image-text",
) -> CrossModalDataset:
    """Small label-dependent images plus BoW text, for the deep methods.

    The "image" modality is ``(n, 3, image_size, image_size)`` float32: each class has a
    coloured oriented grating and a blob at a class-specific place; an item is the mean of its
    labels' templates times a random brightness in [0.8, 1.2], plus ``noise * N(0, 1)``
    pixel noise. The "text" modality is CSR bag-of-words (``text_dim`` words) drawn as in
    :func:`make_synthetic`. ``n_query`` defaults to ``n // 10``.
    """
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    rng = check_random_state(random_state)
    nq = max(1, n // 10) if n_query is None else n_query
    Y = _labels(rng, int(n), int(n_classes), float(multilabel_rate))
    splits = _splits(rng, int(n), nq, n_train, where=name)
    _fill_empty(rng, Y, splits["train"])
    T = _class_templates(rng, int(n_classes), int(image_size))
    W = Y.astype(np.float32)
    W /= W.sum(axis=1, keepdims=True)
    imgs = (W @ T.reshape(n_classes, -1)).reshape(n, 3, image_size, image_size)
    imgs *= rng.uniform(0.8, 1.2, size=(n, 1, 1, 1)).astype(np.float32)
    imgs += np.float32(noise) * rng.standard_normal(imgs.shape, dtype=np.float32)
    text = _bow_features(rng, Y, int(text_dim), float(text_density), float(bow_noise))
    ds = CrossModalDataset({"image": imgs, "text": text}, Y, splits, name=name)
    ds.meta.update(generator="make_synthetic_image_text", image_size=image_size)
    return ds


# --------------------------------------------------------------------------------------------
# "synthetic:..." strings
# --------------------------------------------------------------------------------------------
_KEY_ALIASES = {
    "n": "n", "size": "n", "items": "n",
    "classes": "n_classes", "n_classes": "n_classes", "c": "n_classes",
    "seed": "random_state", "random_state": "random_state",
    "rate": "multilabel_rate", "multilabel": "multilabel_rate", "multilabel_rate": "multilabel_rate",
    "ml": "multilabel_rate",
    "dims": "dims", "dim": "dims",
    "sparse_text": "sparse_text", "sparse_image": "sparse_image",
    "density": "text_density", "text_density": "text_density", "image_density": "image_density",
    "noise": "noise", "bow_noise": "bow_noise", "normalize_text": "normalize_text",
    "query": "n_query", "n_query": "n_query", "queries": "n_query",
    "train": "n_train", "n_train": "n_train",
    "name": "name",
    "image_size": "image_size", "text_dim": "text_dim",
}
_INT_KEYS = {"n", "n_classes", "random_state", "n_query", "n_train", "image_size", "text_dim"}
_FLOAT_KEYS = {"multilabel_rate", "text_density", "image_density", "noise", "bow_noise"}
_BOOL_KEYS = {"sparse_text", "sparse_image", "normalize_text"}


def _parse_bool(key: str, v: str) -> bool:
    t = v.strip().lower()
    if t in ("1", "true", "yes", "y", "on"):
        return True
    if t in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"synthetic spec: {key}={v!r} is not a boolean (true/false)")


def _synthetic_names() -> list[str]:
    return sorted(SYNTHETIC_PRESETS) + ["image-text"]


def _spec_int(v: str) -> int:
    """``"5000"``, ``"5e3"`` -> 5000; a non-integral or non-finite number is a ValueError
    (``n=2.5`` was truncated to 2, ``n=inf`` an OverflowError)."""
    f = float(v)
    if not np.isfinite(f) or f != int(f):
        raise ValueError(v)
    return int(f)


def parse_synthetic_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"synthetic:<preset>,key=value,..."`` -> (preset name, keyword arguments).

    The preset part is optional (default ``"small"``); ``image-text`` selects
    :func:`make_synthetic_image_text`. Keys (aliases in brackets): n, classes [c, n_classes],
    seed [random_state], multilabel_rate [rate, ml], dims (``128x300`` or ``128/300``),
    sparse_text, sparse_image, text_density [density], image_density, noise, bow_noise,
    normalize_text, n_query [query], n_train [train], name, image_size, text_dim.
    A malformed spec -- not ``synthetic`` / ``synthetic:...``, an unknown preset or key, two
    presets, a key given twice (also through an alias), a non-integral count -- is a
    ValueError naming the valid presets or keys.
    """
    s = spec.strip()
    head, sep, body = s.partition(":")
    if head.strip().lower() != "synthetic":
        raise ValueError(
            f"not a synthetic spec: {spec!r}; expected 'synthetic' or "
            f"'synthetic:<preset>[,key=value...]' with a preset in {_synthetic_names()}"
        )
    preset: str | None = None
    kwargs: dict[str, Any] = {}
    given: dict[str, str] = {}  # canonical key -> item as written, for "given twice" errors
    for item in (t.strip() for t in body.split(",")):
        if not item:
            continue
        if "=" not in item:
            key = item.lower()
            if key not in SYNTHETIC_PRESETS and key != "image-text":
                raise ValueError(
                    f"synthetic spec: unknown preset {item!r} (nor a key=value item); "
                    f"presets: {_synthetic_names()}"
                )
            if preset is not None:
                raise ValueError(f"synthetic spec {spec!r}: several presets ({preset!r}, {key!r}); "
                                 f"give at most one of {_synthetic_names()}")
            preset = key
            continue
        k, _, v = item.partition("=")
        k = k.strip().lower().replace("-", "_")
        if k not in _KEY_ALIASES:
            raise ValueError(f"synthetic spec: unknown key {k!r}; valid keys: {sorted(set(_KEY_ALIASES))}")
        key = _KEY_ALIASES[k]
        if key in given:
            raise ValueError(f"synthetic spec {spec!r}: {key} given twice ({given[key]!r} and {item!r})")
        given[key] = item
        v = v.strip()
        try:
            if key in _INT_KEYS:
                kwargs[key] = None if v.lower() == "none" else _spec_int(v)
            elif key in _FLOAT_KEYS:
                kwargs[key] = float(v)
            elif key in _BOOL_KEYS:
                kwargs[key] = _parse_bool(k, v)
            elif key == "dims":
                kwargs[key] = tuple(int(x) for x in re.split(r"[x/;: ]+", v) if x)
            else:
                kwargs[key] = v
        except ValueError as e:
            if "synthetic spec" in str(e):
                raise
            what = "an integer" if key in _INT_KEYS else "a number" if key in _FLOAT_KEYS else None
            raise ValueError(f"synthetic spec: bad value {k}={v!r}"
                             + (f" ({k} must be {what})" if what else "")) from None
    return preset or "small", kwargs


def from_spec(spec: str, random_state: Any = 0, n_query: int | None = None, n_train: int | None = None) -> CrossModalDataset:
    """Build the dataset a ``"synthetic:..."`` string describes. Values in the string win
    over the ``random_state`` / ``n_query`` / ``n_train`` arguments (an ``n_query`` /
    ``n_train`` argument differing from the string's is ignored with a DataWarning)."""
    preset, kw = parse_synthetic_spec(spec)
    kw.setdefault("random_state", random_state)
    for key, value in (("n_query", n_query), ("n_train", n_train)):
        if value is None:
            continue
        if key in kw and kw[key] != value:
            warnings.warn(f"{key}={value} ignored: the spec {spec.strip()!r} sets {key}={kw[key]}",
                          DataWarning, stacklevel=3)
        kw.setdefault(key, value)
    if preset == "image-text":
        bad = set(kw) - set(_IMAGE_TEXT_DEFAULTS) - {"random_state", "name"}
        if bad:
            raise ValueError(f"synthetic spec: keys {sorted(bad)} do not apply to the image-text preset")
        return make_synthetic_image_text(**kw)
    if "image_size" in kw or "text_dim" in kw:
        raise ValueError("synthetic spec: image_size / text_dim only apply to the image-text preset")
    return make_synthetic(preset=preset, **kw)

