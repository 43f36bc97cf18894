"""Published numbers from the papers' tables (src/cmhash/published/*.json).

Each JSON file is ``{"source": str, "tables": [{"table", "dataset", "metric", "task",
"bits": [...], "rows": {"METHOD": [values per bit length]}}]}``; this module merges them so the
benchmark harness can print our numbers beside the papers'.

A table also states, where its paper does, the protocol its numbers were measured under:
``"setting"`` (paired / unpaired training; default paired), ``"features"`` (``{"image",
"text", "dims": [image dims, text dims]}``; ``"row_features"`` overrides it for some rows, e.g.
deep methods on raw pixels), ``"split"`` (``{"n_query", "n_retrieval", "n_train"}``),
``"database"`` (``"learned"`` or ``"not stated"``) and ``"n_classes"`` where it is not the
dataset's usual one. :func:`published_rows` compares these facts with a result document: a
row is *comparable* when nothing it states differs from the run and its split and features
are stated (an unstated database encoding is named in the row).
"""
from __future__ import annotations

import json
from importlib import resources
from typing import NamedTuple


def _files():
    folder = resources.files("cmhash") / "published"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)


def load_published() -> list[dict]:
    """All published tables, each with its ``source`` and ``file`` added."""
    tables = []
    for path in _files():
        doc = json.loads(path.read_text())
        for t in doc.get("tables", []):
            tables.append({**t, "source": doc.get("source", ""), "file": path.name})
    return tables


def _where(t: dict) -> str:
    where = f"{t['file'].removesuffix('.json')} {t.get('table', '')}".strip()
    if t.get("setting", "paired") != "paired":  # e.g. AMSH Table III: unpaired training
        where += f", {t['setting']}"
    return where


def _tables(dataset: str, task: str, bits: int):
    for t in load_published():
        if t.get("dataset") != dataset or t.get("task") != task or t.get("metric", "map") != "map":
            continue
        if bits in t["bits"]:
            yield t, t["bits"].index(bits)


def published_map(dataset: str, task: str, bits: int) -> list[tuple[str, float, str]]:
    """``[(method, mAP, "paper table"), ...]`` for one dataset, task and bit length.

    ``"paper table"`` is the file's stem and the table (``"amsh Table II"``), followed by the
    table's ``setting`` when it is not ``"paired"`` (``"amsh Table III, unpaired"``).

    Every paper's number is kept: the same baseline often appears in several papers' tables
    (with different splits or features), so each row names its source table.
    """
    out = []
    for t, j in _tables(dataset, task, bits):
        for method, values in t["rows"].items():
            if j < len(values) and values[j] is not None:
                out.append((method, float(values[j]), _where(t)))
    return out


#: facts a paper may leave unstated and its rows still count as comparable (named in the
#: row): the database encoding is rarely stated; the split and the features must be known
UNSTATED_COMPARABLE = ("database",)


class PublishedRow(NamedTuple):
    """One published number and how its protocol relates to a run's."""
    method: str
    value: float
    where: str
    differences: tuple[str, ...]   # stated facts that differ from the run
    unstated: tuple[str, ...]      # facts the paper (or the run's file) does not state

    @property
    def comparable(self) -> bool:
        """Nothing stated differs, and the split and features are known to be the run's."""
        return not self.differences and all(u in UNSTATED_COMPARABLE for u in self.unstated)


def published_rows(dataset: str, task: str, bits: int, result: dict | None = None
                   ) -> list[PublishedRow]:
    """The published mAP rows of one dataset, task and bit length, each with the protocol
    facts that differ from ``result`` (an evaluation document; None: nothing compared) and
    those its paper does not state (``row.comparable``: the row was measured under the run's
    protocol and split, on the same features)."""
    out = []
    for t, j in _tables(dataset, task, bits):
        for method, values in t["rows"].items():
            if j >= len(values) or values[j] is None:
                continue
            facts = {**t, "features": t.get("row_features", {}).get(method, t.get("features"))}
            diff, unstated = _compare(facts, result) if result is not None else ((), ())
            out.append(PublishedRow(method, float(values[j]), _where(t), diff, unstated))
    return out


def _compare(t: dict, result: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ds = result.get("dataset", {})
    proto = result.get("protocol", {})
    diff, unstated = [], []
    setting = t.get("setting", "paired")
    if proto.get("training") and setting != proto["training"]:
        diff.append(f"{setting} training")
    database = t.get("database", "not stated")
    if database == "not stated":
        unstated.append("database")
    elif proto.get("database") and database != proto["database"]:
        diff.append(f"{database} database")
    split = t.get("split")
    if not split:
        unstated.append("split")
    else:
        ours = [ds.get(k) for k in ("n_query", "n_retrieval", "n_train")]
        theirs = [split.get(k) for k in ("n_query", "n_retrieval", "n_train")]
        if any(a is not None and b is not None and a != b for a, b in zip(ours, theirs)):
            diff.append("split {:,} query / {:,} retrieval / {:,} training".format(*theirs))
    if t.get("n_classes") is not None and ds.get("n_classes") not in (None, t["n_classes"]):
        diff.append(f"{t['n_classes']} classes")
    feats = t.get("features")
    dims = _result_dims(ds)
    if not feats:
        unstated.append("features")
    else:
        stated = [(m, d) for m, d in zip(("image", "text"), feats.get("dims") or []) if d is not None]
        if dims is None:
            unstated.append("features (not recorded in this result)")
        elif any(dims.get(m) not in (None, [d]) for m, d in stated):
            diff.append("features " + ", ".join(f"{feats[m]}" for m in ("image", "text")
                                                 if feats.get(m)))
        missing = [m for m in ("image", "text") if not feats.get(m)]
        if missing:
            unstated.append(f"{' and '.join(missing)} features")
    return tuple(diff), tuple(unstated)


def _result_dims(ds: dict) -> dict | None:
    """``{"image": [d], "text": [d]}`` of a result's dataset (None: not recorded)."""
    dims = ds.get("dims")
    return dims if isinstance(dims, dict) else None
