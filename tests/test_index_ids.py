"""HammingIndex external ids (int64 or strings) through add, search, range_search, save and
load; model fingerprints and metadata saved with an index."""
import numpy as np
import pytest

from cmhash.codes import pack_codes
from cmhash.index import HammingIndex

BACKENDS = ["numpy"] + (["faiss"] if __import__("cmhash.index").index.faiss_available() else [])


def _codes(n, r=16, seed=0):
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, r)) < 0.5, -1, 1).astype(np.int8)


@pytest.mark.parametrize("backend, knn", [(b, "scan") for b in BACKENDS] + [("numpy", "mih")])
@pytest.mark.parametrize("kind", ["int", "str"])
def test_search_returns_the_users_ids(backend, knn, kind):
    db, q = _codes(300), _codes(7, seed=1)
    rng = np.random.default_rng(2)
    perm = rng.permutation(10_000)[:300]
    ids = perm.astype(np.int64) * 7 - 5000 if kind == "int" else np.array(
        [f"doc/{p}.txt" for p in perm])
    plain = HammingIndex(16, backend=backend, knn="scan")
    plain.add(db)
    index = HammingIndex(16, backend=backend, knn=knn)   # ids mapped after MIH k-NN too
    index.add(db[:100], ids=ids[:100])            # two adds: ids follow their codes
    index.add(pack_codes(db[100:]), packed=True, ids=ids[100:].tolist())
    D0, P0 = plain.search(q, 12)
    D, I = index.search(q, 12)
    assert np.array_equal(D, D0) and np.array_equal(I, ids[P0])
    assert I.dtype == (np.int64 if kind == "int" else ids.dtype)
    Dp, P = index.search(q, 12, positions=True)
    assert np.array_equal(P, P0) and np.array_equal(Dp, D0)
    lims0, Dr0, Pr0 = plain.range_search(q, 5)
    lims, Dr, Ir = index.range_search(q, 5)
    assert np.array_equal(lims, lims0) and np.array_equal(Dr, Dr0)
    assert np.array_equal(Ir, ids[Pr0]) and Pr0.size > 0
    assert np.array_equal(index.range_search(q, 5, positions=True)[2], Pr0)
    assert np.array_equal(index.ids, ids) and index.has_ids and not plain.has_ids
    assert np.array_equal(plain.ids, np.arange(300))


@pytest.mark.parametrize("kind", ["int", "str"])
def test_ids_survive_save_and_load(tmp_path, kind):
    db = _codes(50)
    ids = np.arange(1000, 1050) if kind == "int" else np.array([f"x{i}" for i in range(50)])
    index = HammingIndex(16, model_fingerprint="0123456789abcdef",
                         metadata={"modality": "image", "n": 50})
    index.add(db, ids=ids)
    index.save(tmp_path / "i.idx")
    back = HammingIndex.load(tmp_path / "i.idx")
    assert np.array_equal(back.ids, ids) and back.ids.dtype == index.ids.dtype
    assert back.model_fingerprint == "0123456789abcdef"
    assert back.metadata == {"modality": "image", "n": 50}
    assert np.array_equal(back.search(db[:3], 2)[1], index.search(db[:3], 2)[1])
    with np.load(tmp_path / "i.idx") as z:
        assert int(z["format_version"]) == 2
    plain = HammingIndex(16)
    plain.add(db)
    plain.save(tmp_path / "p.idx")
    with np.load(tmp_path / "p.idx") as z:                 # unchanged layout without ids
        assert int(z["format_version"]) == 1 and "ids" not in z.files


def test_bad_ids_are_clear_errors():
    db = _codes(4)
    with pytest.raises(ValueError, match=r"one id per code \(4 codes\), got shape \(3,\)"):
        HammingIndex(16).add(db, ids=[1, 2, 3])
    with pytest.raises(ValueError, match="ids must be unique: 2 appears 2 times"):
        HammingIndex(16).add(db, ids=[1, 2, 2, 3])
    with pytest.raises(TypeError, match="ids must be integers or strings, got dtype float64"):
        HammingIndex(16).add(db, ids=np.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(TypeError, match=r"got values of type\(s\) \['float'\]"):
        HammingIndex(16).add(db, ids=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(TypeError, match=r"got values of type\(s\) \['int', 'str'\]"):
        HammingIndex(16).add(db, ids=[1, "a", 2, 3])
    with pytest.raises(ValueError, match="must not be empty strings"):
        HammingIndex(16).add(db, ids=["a", "", "b", "c"])
    index = HammingIndex(16)
    index.add(db, ids=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="'c' is already in the index"):
        index.add(db[:1], ids=["c"])
    with pytest.raises(TypeError, match="ids are integers but the index's ids are strings"):
        index.add(db[:1], ids=[9])
    with pytest.raises(ValueError, match="codes added with ids: give ids to every add"):
        index.add(db[:1])
    assert index.ntotal == 4                          # the failed adds added nothing
    plain = HammingIndex(16)
    plain.add(db)
    with pytest.raises(ValueError, match="codes added without ids"):
        plain.add(db, ids=[5, 6, 7, 8])
    index.reset()
    index.add(db)                                      # an emptied index starts afresh
    assert not index.has_ids


@pytest.mark.parametrize("field, value, message", [
    ("ids", np.arange(3), r"'ids' must have one id per code \(4 codes\), got an array of "
                          r"shape \(3,\)"),
    ("ids", np.array([1, 1, 2, 3]), "ids must be unique: 1 appears 2 times"),
    ("ids", np.array([0.5, 1, 2, 3]), "ids must be integers or strings, got dtype float64"),
    ("model_fingerprint", np.array([1, 2]), "'model_fingerprint' must be a string"),
    ("metadata", np.str_("{not json"), "'metadata' is not JSON text"),
    ("metadata", np.str_("[1, 2]"), "'metadata' must be a JSON object"),
])
def test_malformed_index_files_name_the_field(tmp_path, field, value, message):
    arrays = dict(format_version=np.int64(2), n_bits=np.int64(16), backend=np.str_("numpy"),
                  codes=pack_codes(_codes(4)), ids=np.arange(4))
    arrays[field] = value
    with open(tmp_path / "bad.idx", "wb") as fh:    # (a path would get ".npz" appended)
        np.savez(fh, **arrays)
    with pytest.raises(ValueError, match=r"bad\.idx is not a valid saved HammingIndex: .*"
                                         + message):
        HammingIndex.load(tmp_path / "bad.idx")


def test_check_model_names_both_fingerprints():
    index = HammingIndex(8, model_fingerprint="aaaa")
    index.check_model("aaaa")
    index.check_model(None)                           # unknown: not checked
    with pytest.raises(ValueError, match=r"the query codes come from another model "
                                         r"\(fingerprint bbbb\) than the index's codes "
                                         r"\(fingerprint aaaa\)"):
        index.check_model("bbbb")
