"""A generated image-text data set written to disk: JPEG files, captions, labels, a manifest.

:func:`write_synthetic_image_folder` draws ``n`` items with multi-hot labels; each class has a
colour, a shape and a place in the image, and an item's image shows the shapes of its labels
(jittered in place and size, on a noisy background); its caption mixes words of its labels'
classes with common filler words. The files and a manifest (``manifest.csv`` or
``manifest.jsonl``, the format of :mod:`cmhash.data.manifest`) are written under a folder, so
the whole file pipeline (manifest -> Pillow decoding -> DataLoader -> fit) can be exercised
without any download. Seeded: the same ``random_state`` writes the same files.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write
from .._validation import check_random_state

__all__ = ["write_synthetic_image_folder"]

_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220),
            "yellow": (230, 210, 40), "magenta": (200, 50, 200), "cyan": (40, 200, 210),
            "orange": (240, 140, 30), "white": (245, 245, 245)}
_SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar", "diamond", "frame")
_FILLER = ("photo", "picture", "image", "view", "scene", "shot", "day", "light", "nice",
           "old", "new", "my", "the", "with", "and", "some")


def _draw_shape(draw, shape: str, box, colour):
    x0, y0, x1, y1 = box
    w = max(x1 - x0, 2)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "cross":
        t = max(w // 4, 1)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((x0, cy - t, x1, cy + t), fill=colour)
        draw.rectangle((cx - t, y0, cx + t, y1), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(w // 5, 1))
    elif shape == "bar":
        t = max(w // 5, 1)
        draw.rectangle((x0, y0, x1, y0 + 2 * t), fill=colour)
        draw.rectangle((x0, y1 - 2 * t, x1, y1), fill=colour)
    elif shape == "diamond":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    else:  # frame
        draw.rectangle(box, outline=colour, width=max(w // 6, 1))


def _render_items(root: str, start: int, Y: np.ndarray, seeds: np.ndarray, cells, names,
                  image_size: int, quality: int, noise: float) -> list[tuple[str, str]]:
    """Draw, encode and write the items ``start .. start + len(Y) - 1`` (item ``i`` from
    ``default_rng(seeds[i - start])``); returns each item's (relative path, caption)."""
    from PIL import Image, ImageDraw

    colours = list(_COLOURS)
    words = [[colours[k], _SHAPES[k], f"tag{k}"] for k in range(len(names))]
    s = image_size
    cell = s / 3.0
    out = []
    for j, (labels, seed) in enumerate(zip(Y, seeds)):
        rng = np.random.default_rng(int(seed))
        base = rng.normal(128, noise, size=(s, s, 3))
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        caption = []
        for k in np.flatnonzero(labels):
            r, c = divmod(int(cells[k]), 3)
            half = cell * rng.uniform(0.35, 0.5)
            cx = (c + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
            cy = (r + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
            box = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
            _draw_shape(draw, _SHAPES[k], box, _COLOURS[colours[k]])
            caption += list(rng.choice(words[k], size=2, replace=False))
        caption += list(rng.choice(_FILLER, size=int(rng.integers(1, 4))))
        caption = [str(w) for w in rng.permutation(caption)]
        rel = f"images/{start + j:06d}.jpg"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(quality))
        with atomic_write(Path(root) / rel) as fh:
            fh.write(buf.getvalue())
        out.append((rel, " ".join(caption)))
    return out


def write_synthetic_image_folder(
    directory,
    n: int = 300,
    *,
    image_size: int = 32,
    n_classes: int = 4,
    multilabel_rate: float = 0.1,
    n_query: int | None = None,
    manifest: str = "manifest.csv",
    with_split: bool = True,
    quality: int = 90,
    noise: float = 12.0,
    n_jobs: int = 1,
    random_state: Any = 0,
) -> Path:
    """Write ``n`` JPEG images + captions + labels and a manifest under ``directory``.

    Labels: one uniform class per item, plus each other class with probability
    ``multilabel_rate``; class ``k`` is named ``"<colour>-<shape>"`` (``n_classes <= 8``).
    Image: a ``image_size`` square, background grey + Gaussian noise (``noise``), one shape per
    label in its class's colour, at its class's place (jittered). Caption: two of the three
    words of each label's class plus one to three filler words. ``n_query`` (default
    ``n // 10``) items get split ``query``, the rest ``train`` (no ``split`` column when
    ``with_split`` is False). ``manifest``: its file name; ``.jsonl`` writes JSON lines, else
    CSV. ``n_jobs``: processes that draw and encode the images (-1: one per CPU); each item
    draws from its own generator seeded from ``random_state``, so the files do not depend on
    ``n_jobs``. Returns the manifest's path.
    """
    if not 2 <= n_classes <= len(_SHAPES):
        raise ValueError(f"n_classes must be in [2, {len(_SHAPES)}], got {n_classes}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 \
            or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive integer or -1, got {n_jobs!r}")
    rng = check_random_state(random_state)
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    colours = list(_COLOURS)
    names = [f"{colours[k]}-{_SHAPES[k]}" for k in range(n_classes)]
    # each class's place: cells of a 3 x 3 grid
    cells = rng.permutation(9)[:n_classes]
    Y = np.zeros((n, n_classes), dtype=bool)
    Y[np.arange(n), rng.integers(0, n_classes, n)] = True
    Y |= rng.random((n, n_classes)) < multilabel_rate
    nq = max(1, n // 10) if n_query is None else int(n_query)
    is_query = np.zeros(n, dtype=bool)
    is_query[rng.choice(n, size=nq, replace=False)] = True
    seeds = rng.integers(0, 2 ** 63 - 1, size=n)
    jobs = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    args = (int(image_size), int(quality), float(noise))
    if jobs == 1 or n < 2:
        items = _render_items(str(root), 0, Y, seeds, cells, names, *args)
    else:
        from concurrent.futures import ProcessPoolExecutor

        bounds = np.linspace(0, n, min(jobs * 4, n) + 1).astype(int)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            parts = [pool.submit(_render_items, str(root), int(a), Y[a:b], seeds[a:b], cells,
                                 names, *args) for a, b in zip(bounds[:-1], bounds[1:])]
            items = [item for part in parts for item in part.result()]
    records = []
    for i, (rel, caption) in enumerate(items):
        rec = {"image": rel, "text": caption,
               "labels": ";".join(names[k] for k in np.flatnonzero(Y[i]))}
        if with_split:
            rec["split"] = "query" if is_query[i] else "train"
        records.append(rec)
    path = root / manifest
    with atomic_write(path, "w") as fh:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
        else:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
    return path
