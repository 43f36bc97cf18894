"""The search-service commands of ``cmhash``: ``index build``, ``query`` and ``serve``.

    cmhash index build --model M --modality image --features db.npy [--ids ids.txt] --out IDX
    cmhash query --index IDX --model M --modality text --features q.npy -k 10 [--format F]
    cmhash serve --index IDX --model M [--host 127.0.0.1] [--port 8000]

An index bundle (``index build``) is one ``.npz`` file written atomically: a
:class:`cmhash.HammingIndex` file (``HammingIndex.load`` and ``cmhash search --database``
read it) holding the packed database codes, their ids, the index parameters, the fingerprint
of the model that encoded them and, as metadata, the database modality and the model's method
and bits. ``query`` and ``serve`` refuse a model whose fingerprint is not the bundle's.
Registered in :func:`cmhash.cli.build_parser` by :func:`add_service_commands`.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

BUNDLE_KIND = "cmhash-index-bundle"
FORMATS = ("text", "csv", "json")
_INT_ID = re.compile(r"^-?(0|[1-9][0-9]*)$")


# ----------------------------------------------------------------------------- inputs
def read_features(path, key=None) -> np.ndarray:
    """Feature vectors from ``.npy`` (one 2-D array) or ``.npz`` (the array ``key``, or its
    only array): a ValueError naming the file and, for ``.npz``, the arrays it holds."""
    from ._validation import open_npz

    name = str(path)
    if not Path(name).exists():
        raise FileNotFoundError(f"features file not found: {path}")
    if name.endswith(".npz"):
        with open_npz(path, "an .npz archive of feature vectors") as z:
            keys = list(z.files)
            if key is None:
                if len(keys) != 1:
                    raise ValueError(f"{path} holds several arrays {keys}: name one with "
                                     f"--features-key")
                key = keys[0]
            if key not in keys:
                raise ValueError(f"{path} has no array {key!r}; it holds {keys}")
            X = z[key]
    else:
        if key is not None:
            raise ValueError(f"--features-key is for .npz files; {path} is read as .npy")
        try:
            X = np.load(name, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a readable .npy array ({exc})") from None
        if not isinstance(X, np.ndarray):   # an .npz under another name
            X.close()
            raise ValueError(f"{path} is an .npz archive, not an .npy array: name it *.npz")
    if X.ndim == 1:
        X = X[None, :]                     # one vector is one query / item
    return X


def read_ids(path, n: int) -> np.ndarray:
    """Ids of ``n`` items from a text file (one id per line) or an ``.npy`` array.

    Text: every line (without its line break and surrounding spaces) is an id; when every id
    is an integer written canonically (``42``, ``-7``; not ``007`` or ``+3``) the ids are
    int64, otherwise strings. Empty lines, a count other than ``n`` and duplicates are errors
    naming the line."""
    from .index import check_ids

    name = str(path)
    if not Path(name).exists():
        raise FileNotFoundError(f"ids file not found: {path}")
    if name.endswith(".npy"):
        ids = np.load(name, allow_pickle=False)
    else:
        with open(name, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh.read().splitlines()]
        while lines and lines[-1] == "":   # trailing blank lines at the end of the file
            lines.pop()
        empty = [i + 1 for i, s in enumerate(lines) if s == ""]
        if empty:
            raise ValueError(f"{path}: line {empty[0]} is empty (one id per line)")
        if lines and all(_INT_ID.match(s) for s in lines):
            try:
                ids = np.array([int(s) for s in lines], dtype=np.int64)
            except OverflowError:
                ids = np.array(lines, dtype=str)
        else:
            ids = np.array(lines, dtype=str)
    if ids.shape != (n,):
        raise ValueError(f"{path} has {ids.shape[0] if ids.ndim else 0} ids but the features "
                         f"have {n} rows: one id per row, in the same order")
    try:
        return check_ids(ids, n, name=f"ids in {path}")
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def query_task(hasher, query_modality, database_modality):
    """The ``(query, database)`` task of a two-modality model (task-specific hash functions,
    TA-ADCMH), None for a same-modality search or more modalities."""
    names = hasher.modality_names_
    if len(names) == 2 and query_modality != database_modality:
        return (query_modality, database_modality)
    return None


def database_modality_of(hasher, modality) -> str:
    """The modality name of a bundle's codes (``modality`` may be a name or an index)."""
    return hasher.modality_names_[hasher.modality_index(modality)]


# ----------------------------------------------------------------------------- bundles
def database_task(hasher, modality):
    """The task a database of ``modality`` is encoded for: (the other modality, it) for a
    two-modality model (task-specific hash functions), else None."""
    db_mod = database_modality_of(hasher, modality)
    other = [m for m in hasher.modality_names_ if m != db_mod]
    return query_task(hasher, other[0], db_mod) if len(other) == 1 else None


def empty_bundle(hasher, modality, n_bits: int, *, backend="auto"):
    """An empty bundle index for codes of ``modality`` made by ``hasher`` (add codes encoded
    with ``task=database_task(hasher, modality)``)."""
    from .index import HammingIndex

    db_mod = database_modality_of(hasher, modality)
    return HammingIndex(n_bits, backend=backend, model_fingerprint=hasher.fingerprint,
                        metadata={"kind": BUNDLE_KIND, "modality": db_mod,
                                  "method": hasher.name, "n_bits": int(n_bits)})


def build_bundle(hasher, features, modality, *, ids=None, backend="auto"):
    """A :class:`HammingIndex` of ``features`` (of ``modality``) encoded by ``hasher``, with
    ``ids`` (None: positions), the model's fingerprint and the bundle metadata."""
    codes = hasher.encode(features, database_modality_of(hasher, modality),
                          task=database_task(hasher, modality))
    index = empty_bundle(hasher, modality, codes.shape[1], backend=backend)
    index.add(codes, ids=ids)
    return index


def load_bundle(index_path, hasher, model_path, *, backend=None, n_threads=None):
    """The bundle at ``index_path``, checked against the model ``hasher`` (loaded from
    ``model_path``): a ValueError naming both fingerprints when the model is not the one that
    encoded the bundle's codes."""
    from .index import HammingIndex

    index = HammingIndex.load(index_path, backend=backend, n_threads=n_threads)
    if index.metadata.get("kind") != BUNDLE_KIND or index.model_fingerprint is None:
        raise ValueError(f"{index_path} is not an index bundle from `cmhash index build` (it "
                         f"carries no model fingerprint and database modality)")
    fp = hasher.fingerprint
    if fp != index.model_fingerprint:
        raise ValueError(f"the model {model_path} (fingerprint {fp}) is not the model that "
                         f"encoded the index {index_path} (fingerprint "
                         f"{index.model_fingerprint}): codes of different models cannot be "
                         f"compared; use that model or rebuild the index with this one")
    db_mod = index.metadata.get("modality")
    if db_mod not in hasher.modality_names_:
        raise ValueError(f"{index_path}: its database modality {db_mod!r} is not one of the "
                         f"model's {hasher.modality_names_}")
    return index


def search_bundle(index, hasher, features, modality, k):
    """``(distances, ids)`` of the ``k`` nearest database items of each query vector."""
    q_mod = database_modality_of(hasher, modality)
    task = query_task(hasher, q_mod, index.metadata["modality"])
    codes = hasher.encode(features, q_mod, task=task)
    return index.search(codes, k)


# ----------------------------------------------------------------------------- output
def write_results(distances, ids, fmt: str, out, *, meta: dict) -> None:
    """Query results with a header: ``text`` (aligned columns), ``csv`` or ``json``."""
    rows = [(q, rank + 1, ids[q, rank].item(), int(distances[q, rank]))
            for q in range(ids.shape[0]) for rank in range(ids.shape[1])]
    if fmt == "json":
        doc = {**meta, "results": [{"query": q, "ids": ids[q].tolist(),
                                    "distances": distances[q].tolist()}
                                   for q in range(ids.shape[0])]}
        out.write(json.dumps(doc, indent=2) + "\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["query", "rank", "id", "distance"])
        w.writerows(rows)
    else:
        width = max([len("id")] + [len(str(r[2])) for r in rows])
        out.write(f"{'query':>5}  {'rank':>4}  {'id':<{width}}  distance\n")
        for q, rank, item, d in rows:
            out.write(f"{q:>5}  {rank:>4}  {str(item):<{width}}  {d:>8}\n")


# ----------------------------------------------------------------------------- commands
def cmd_index_build(args):
    from .base import load

    hasher = load(args.model)
    X = read_features(args.features, args.features_key)
    ids = read_ids(args.ids, X.shape[0]) if args.ids else None
    index = build_bundle(hasher, X, args.modality, ids=ids, backend=args.backend)
    index.save(args.out)
    if not args.quiet:
        print(f"indexed {index.ntotal} {index.metadata['modality']} items as {index.n_bits}-bit "
              f"codes of model {index.model_fingerprint} "
              f"({'ids from ' + str(args.ids) if ids is not None else 'ids = row numbers'}); "
              f"wrote {args.out}", file=sys.stderr)


def cmd_query(args):
    from .base import load

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    hasher = load(args.model)
    index = load_bundle(args.index, hasher, args.model)
    X = read_features(args.features, args.features_key)
    distances, ids = search_bundle(index, hasher, X, args.modality, args.k)
    meta = {"index": str(args.index), "model_fingerprint": index.model_fingerprint,
            "query_modality": database_modality_of(hasher, args.modality),
            "database_modality": index.metadata["modality"], "k": int(ids.shape[1])}
    write_results(distances, ids, args.format, sys.stdout, meta=meta)


def cmd_serve(args):
    from .serve import ServiceLimits, run_server

    limits = ServiceLimits(max_body_bytes=args.max_body_bytes, max_vectors=args.max_vectors,
                           max_k=args.max_k)
    run_server(args.index, args.model, host=args.host, port=args.port, limits=limits,
               log_level="warning" if args.quiet else args.log_level)


def check_search_models(database_path, index, queries_path) -> None:
    """``cmhash search``: the database (codes file or index) and the query codes file must
    come from the same model when both name theirs (files written before fingerprints are
    not checked)."""
    from .fingerprint import check_same_model

    db_fp = index.model_fingerprint if index is not None else _codes_file_fingerprint(
        database_path)
    check_same_model(db_fp, _codes_file_fingerprint(queries_path),
                     expected_what=f"the database {database_path}",
                     got_what=f"the query codes {queries_path}")


def _codes_file_fingerprint(path):
    from ._validation import open_npz

    with open_npz(path, "a codes file") as f:
        if "model_fingerprint" not in f.files:
            return None
        a = f["model_fingerprint"]
    if a.ndim != 0 or a.dtype.kind != "U":
        raise ValueError(f"{path}: 'model_fingerprint' must be a string, got an array of dtype "
                         f"{a.dtype} and shape {a.shape}")
    return str(a)


def add_service_commands(sub) -> None:
    """Add ``index build``, ``query`` and ``serve`` to the ``cmhash`` subcommands ``sub``."""
    from .serve import ServiceLimits

    p = sub.add_parser("index", help="index bundles: encoded database + ids + model fingerprint")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="encode database vectors into one index bundle file")
    b.add_argument("--model", required=True, help="model file from `cmhash fit`")
    b.add_argument("--modality", required=True, help="modality of the database vectors")
    b.add_argument("--features", required=True, help=".npy (n, d) array, or .npz")
    b.add_argument("--features-key", help="array name in an .npz features file")
    b.add_argument("--ids", help="ids of the rows: text file, one per line (integers or "
                                 "strings), or .npy; default: row numbers")
    b.add_argument("--backend", choices=["auto", "numpy", "faiss"], default="auto")
    b.add_argument("--out", required=True, help="the index bundle to write")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_index_build)

    p = sub.add_parser("query", help="k nearest database ids of query vectors in an index bundle")
    p.add_argument("--index", required=True, help="index bundle from `cmhash index build`")
    p.add_argument("--model", required=True, help="the model that built the index")
    p.add_argument("--modality", required=True, help="modality of the query vectors")
    p.add_argument("--features", required=True, help=".npy (m, d) array (or one (d,) vector)")
    p.add_argument("--features-key", help="array name in an .npz features file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--format", choices=FORMATS, default="text")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_query)

    d = ServiceLimits()
    p = sub.add_parser("serve", help="HTTP search service over an index bundle (FastAPI)")
    p.add_argument("--index", required=True, help="index bundle from `cmhash index build`")
    p.add_argument("--model", required=True, help="the model that built the index")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port; default 8000)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"largest request body (default {d.max_body_bytes})")
    p.add_argument("--max-vectors", type=int, default=d.max_vectors,
                   help=f"most query vectors or codes per request (default {d.max_vectors})")
    p.add_argument("--max-k", type=int, default=d.max_k,
                   help=f"largest k per request (default {d.max_k})")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.set_defaults(func=cmd_serve)
