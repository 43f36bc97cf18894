"""Published numbers from the papers' tables (src/cmhash/published/*.json).

Each JSON file is ``{"source": str, "tables": [{"table", "dataset", "metric", "task",
"bits": [...], "rows": {"METHOD": [values per bit length]}}]}``; this module merges them so the
benchmark harness can print our numbers beside the papers'.
"""
from __future__ import annotations

import json
from importlib import resources


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


def published_map(dataset: str, task: str, bits: int) -> list[tuple[str, float, str]]:
    """``[(method, mAP, "paper table"), ...]`` for one dataset, task and bit length.

    ``"paper table"`` is the file's stem and the table (``"amsh Table II"``), followed by the
    table's ``setting`` when it is not ``"paired"`` (``"amsh Table III, unpaired"``).

    Every paper's number is kept: the same baseline often appears in several papers' tables
    (with different splits or features), so each row names its source table.
    """
    out = []
    for t in load_published():
        if t.get("dataset") != dataset or t.get("task") != task or t.get("metric", "map") != "map":
            continue
        if bits not in t["bits"]:
            continue
        j = t["bits"].index(bits)
        where = f"{t['file'].removesuffix('.json')} {t.get('table', '')}".strip()
        if t.get("setting", "paired") != "paired":  # e.g. AMSH Table III: unpaired training
            where += f", {t['setting']}"
        for method, values in t["rows"].items():
            if j < len(values) and values[j] is not None:
                out.append((method, float(values[j]), where))
    return out
