"""Saving is atomic: a failed save leaves the previous file (and no temporary) behind."""
import os

import numpy as np
import pytest

import cmhash
from cmhash._io import atomic_write
from cmhash.index import HammingIndex


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "model.npz"
    with atomic_write(path) as fh:
        fh.write(b"first")
    assert path.read_bytes() == b"first"
    reference = tmp_path / "plain"
    reference.write_bytes(b"")           # the permissions a new file gets under this umask
    assert (path.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as fh:
            fh.write(b"half of the sec")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "plain"]   # no .part left over
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "missing-dir" / "x.npz"):
            pass


def test_a_failed_model_or_index_save_leaves_the_previous_file_loadable(tmp_path, monkeypatch):
    ds = cmhash.load_dataset("synthetic:small", random_state=0)
    h = cmhash.make_hasher("batch", n_bits=8, random_state=0, n_anchors=40)
    h.fit(*ds.views("train"), ds.labels_of("train"))
    model, index_file = tmp_path / "m.npz", tmp_path / "i.npz"
    h.save(model)
    index = HammingIndex(8, backend="numpy")
    index.add(h.codes_ if not isinstance(h.codes_, list) else h.codes_[0])
    index.save(index_file)

    def disk_full(fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 truncated")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        h.save(model)
    with pytest.raises(OSError, match="No space left"):
        index.save(index_file)
    monkeypatch.undo()
    np.testing.assert_array_equal(cmhash.load(model).encode(ds.get("query", "image"), "image"),
                                  h.encode(ds.get("query", "image"), "image"))
    assert HammingIndex.load(index_file).ntotal == index.ntotal
    assert sorted(os.listdir(tmp_path)) == ["i.npz", "m.npz"]


def test_write_json_is_atomic_and_round_trips(tmp_path):
    import json

    from cmhash._io import write_json
    path = tmp_path / "r.json"
    write_json(path, {"a": [1, 2.5]})
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})         # not serialisable: the old file stays
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
