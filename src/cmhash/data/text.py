"""Raw captions / tags -> bag-of-words vectors through a vocabulary fitted on training text.

:class:`TextVocabulary` wraps scikit-learn's ``CountVectorizer`` (``binary=True`` by default:
a word present or not, the BoW of the field's text modalities). It is fitted on the training
split only and then applied to every split (words unseen in training are dropped). Its state is
plain data -- the ordered list of words and the options -- so it is saved without pickle: in a
model file (``hasher.set_text_vocabulary(v)``; :data:`cmhash.base._STATE_CLASSES`) or on its
own as JSON (:meth:`TextVocabulary.save` / :meth:`TextVocabulary.load`).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._io import atomic_write
from .._validation import check_bool, check_int

__all__ = ["TextVocabulary", "DEFAULT_TOKEN_PATTERN", "as_text_list"]

#: scikit-learn's default: words of two or more alphanumeric characters
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_FORMAT = "cmhash-text-vocabulary"


def as_text_list(texts: Any, name: str = "texts") -> list[str] | None:
    """``texts`` as a list of str when it is a sequence (list, tuple, 1-D array) of strings,
    else None (numeric input)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings (one per item), got one string")
    if isinstance(texts, np.ndarray):
        if texts.dtype.kind not in "USO" or texts.ndim != 1:
            return None
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)) or not texts:
        return None
    if not all(isinstance(t, str) for t in texts):
        if any(isinstance(t, str) for t in texts):
            bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
            raise TypeError(f"{name}: item {bad} is {type(texts[bad]).__name__}, not a string")
        return None
    return list(texts)


def _sklearn_vectorizer(**kw):
    try:
        from sklearn.feature_extraction.text import CountVectorizer
    except ModuleNotFoundError as exc:  # pragma: no cover - scikit-learn is in cmhash[deep]
        raise ImportError("bag-of-words text needs scikit-learn: pip install 'cmhash[deep]'") \
            from exc
    return CountVectorizer(**kw)


class TextVocabulary:
    """Bag-of-words vocabulary (scikit-learn's ``CountVectorizer``), fitted on training text.

    Parameters
    ----------
    min_df : int >= 1 or float in (0, 1]
        Keep words occurring in at least this many (or this fraction of) training texts.
    max_features : int or None
        Keep only the most frequent words (by training corpus count).
    binary : bool
        1 if a word occurs, else 0 (True, the default); False: word counts.
    lowercase : bool
    token_pattern : str
        Regular expression of a token (default: words of two or more alphanumeric characters;
        ``r"\\S+"`` keeps every space-separated tag whole, ``#tags`` and one-letter tags
        included).

    Attributes
    ----------
    words_ : list of str   the vocabulary, in column order
    """

    def __init__(self, *, min_df=1, max_features=None, binary: bool = True,
                 lowercase: bool = True, token_pattern: str = DEFAULT_TOKEN_PATTERN):
        self.min_df = min_df
        self.max_features = max_features
        self.binary = binary
        self.lowercase = lowercase
        self.token_pattern = token_pattern

    def _check_params(self):
        m = self.min_df
        ok = (isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 1) or \
            (isinstance(m, (float, np.floating)) and 0 < m <= 1)
        if not ok:
            raise ValueError(f"min_df must be an integer >= 1 or a fraction in (0, 1], got {m!r}")
        if self.max_features is not None:
            check_int(self.max_features, "max_features")
        for p in ("binary", "lowercase"):
            check_bool(getattr(self, p), p, error=ValueError)
        if not isinstance(self.token_pattern, str) or not self.token_pattern:
            raise ValueError(f"token_pattern must be a regular expression, got "
                             f"{self.token_pattern!r}")

    def _options(self) -> dict:
        return {"binary": bool(self.binary), "lowercase": bool(self.lowercase),
                "token_pattern": self.token_pattern, "dtype": np.float32}

    def fit(self, texts) -> TextVocabulary:
        """Learn the vocabulary from the training ``texts`` (a sequence of strings)."""
        self._check_params()
        texts = self._texts(texts)
        vec = _sklearn_vectorizer(min_df=self.min_df, max_features=self.max_features,
                                  **self._options())
        try:
            vec.fit(texts)
        except ValueError as exc:   # "empty vocabulary; perhaps the documents only contain..."
            raise ValueError(f"no word of the training texts passes min_df={self.min_df!r} / "
                             f"the token pattern {self.token_pattern!r} ({exc})") from None
        self.words_ = [str(w) for w in vec.get_feature_names_out()]
        self._vectorizer = None
        return self

    def _texts(self, texts) -> list[str]:
        out = as_text_list(texts)
        if out is None:
            if isinstance(texts, (list, tuple)) and not texts:
                return []
            raise TypeError(f"texts must be a sequence of strings, got "
                            f"{type(texts).__name__}")
        return out

    def _fitted_vectorizer(self):
        if not hasattr(self, "words_"):
            raise RuntimeError("TextVocabulary is not fitted; call fit(training_texts) first")
        vec = getattr(self, "_vectorizer", None)
        if vec is None:
            vec = _sklearn_vectorizer(vocabulary={w: i for i, w in enumerate(self.words_)},
                                      **self._options())
            self._vectorizer = vec
        return vec

    def transform(self, texts) -> sp.csr_matrix:
        """``(len(texts), len(words_))`` float32 CSR bag-of-words (unseen words dropped)."""
        texts = self._texts(texts)
        if not texts:
            return sp.csr_matrix((0, len(self.words_)), dtype=np.float32)
        X = self._fitted_vectorizer().transform(texts)
        return sp.csr_matrix(X, dtype=np.float32)

    def fit_transform(self, texts) -> sp.csr_matrix:
        return self.fit(texts).transform(texts)

    def __len__(self) -> int:
        return len(getattr(self, "words_", []))

    # -------------------------------------------------------------------- persistence
    def get_params(self) -> dict:
        return {"min_df": self.min_df, "max_features": self.max_features,
                "binary": bool(self.binary), "lowercase": bool(self.lowercase),
                "token_pattern": self.token_pattern}

    def get_state(self) -> dict:
        """The vocabulary as an array of strings (NumPy unicode, no pickle)."""
        self._fitted_vectorizer()
        return {"words": np.array(self.words_, dtype=str)}

    @classmethod
    def from_state(cls, params: dict, state: dict) -> TextVocabulary:
        obj = cls(**params)
        obj.words_ = [str(w) for w in np.asarray(state["words"]).reshape(-1)]
        obj._vectorizer = None
        return obj

    def save(self, path) -> str:
        """Write the vocabulary as JSON (atomically)."""
        self._fitted_vectorizer()
        doc = {"format": _FORMAT, "version": 1, "params": self.get_params(), "words": self.words_}
        with atomic_write(path, "w") as fh:
            json.dump(doc, fh)
        return os.fspath(path)

    @classmethod
    def load(cls, path) -> TextVocabulary:
        """Read a vocabulary written by :meth:`save` (checked)."""
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a vocabulary file ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT \
                or not isinstance(doc.get("words"), list) or not isinstance(doc.get("params"), dict):
            raise ValueError(f"{path} is not a cmhash text vocabulary file")
        return cls.from_state(doc["params"], {"words": np.array(doc["words"], dtype=str)})

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        fitted = f", {len(self)} words" if hasattr(self, "words_") else ""
        return f"TextVocabulary({params}{fitted})"
