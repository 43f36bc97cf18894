"""Tests of the data layer: dataset object, loaders and layouts, presets, synthetic data."""

from __future__ import annotations

import time
import warnings

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from cmhash.data import (
    CrossModalDataset,
    DataWarning,
    as_label_matrix,
    default_shared_dir,
    detect_preset,
    get_preset,
    labels_from_indices,
    load_dataset,
    make_synthetic,
    make_synthetic_image_text,
    parse_synthetic_spec,
    read_arrays,
    save_dataset,
    shared_path,
)

WIKI = ("datasets", "wiki", "wiki_data.mat")
MIR_DIR = ("datasets", "mirflickr25k-text")


def _need(*parts):
    p = shared_path(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


def _toy(n=60, c=4, seed=0, sparse_text=False):
    """Small paired data with every class present."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    T = rng.random((n, 7))
    T[T < 0.7] = 0
    idx = np.arange(n) % c
    Y = np.zeros((n, c), dtype=np.uint8)
    Y[np.arange(n), idx] = 1
    if sparse_text:
        T = sp.csr_matrix(T)
    return X, T, Y


def _nn_precision(Xq, Xr, Yq, Yr, k=20):
    """precision@k of Euclidean nearest neighbours (share >= 1 label), and the chance level."""
    Xq = np.asarray(Xq, dtype=np.float64).reshape(len(Xq), -1)
    Xr = np.asarray(Xr, dtype=np.float64).reshape(len(Xr), -1)
    D = (Xq**2).sum(1)[:, None] - 2 * Xq @ Xr.T + (Xr**2).sum(1)[None]
    top = np.argsort(D, axis=1, kind="stable")[:, :k]
    rel = (Yq @ Yr.T) > 0
    return float(np.take_along_axis(rel, top, 1).mean()), float(rel.mean())


# --------------------------------------------------------------------------------------------
# shared folder
# --------------------------------------------------------------------------------------------
def test_default_shared_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CMHASH_SHARED", str(tmp_path))
    assert default_shared_dir() == tmp_path
    assert shared_path("a", "b.mat") == tmp_path / "a" / "b.mat"
    monkeypatch.delenv("CMHASH_SHARED")
    assert default_shared_dir().name == "shared"


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------
def test_wiki_real():
    path = _need(*WIKI)
    ds = load_dataset(path)
    raw = scipy.io.loadmat(str(path))
    assert ds.name == "wiki" and ds.meta["preset"] == "wiki"
    assert ds.modality_names == ("image", "text")
    assert ds.n_items == 2866 and ds.n_classes == 10
    assert ds.split("train").n == 2173 and len(ds["query"]) == 693
    assert ds.train_is_retrieval
    np.testing.assert_array_equal(ds.indices("query"), np.arange(2173, 2866))
    assert ds.get("train", "image").shape == (2173, 128)
    assert ds.get("query", "text").shape == (693, 10)
    assert not ds.is_sparse("image") and not ds.is_sparse("text")
    np.testing.assert_array_equal(ds.get("train", "image"), raw["I_tr"])
    np.testing.assert_array_equal(ds.get("query", "text"), raw["T_te"])
    # one-hot labels equal the conversion of the 1-based class indices L_tr / L_te
    Ytr, Yte = ds.labels_of("train"), ds.labels_of("query")
    assert np.all(Ytr.sum(1) == 1) and np.all(Yte.sum(1) == 1)
    np.testing.assert_array_equal(Ytr, labels_from_indices(raw["L_tr"]))
    np.testing.assert_array_equal(Yte, labels_from_indices(raw["L_te"], classes=range(1, 11)))
    np.testing.assert_array_equal(Ytr.argmax(1) + 1, raw["L_tr"].ravel())
    s = ds.summary()
    assert s["label_cardinality"] == 1.0 and not s["single_modality"]


def test_mirflickr_text_real():
    d = _need(*MIR_DIR)
    files = [d / "mirflickr25k-yall.mat", d / "mirflickr25k-lall.mat"]
    a = load_dataset(files, random_state=0)
    assert a.modality_names == ("text",) and a.is_single_modality
    assert a.summary()["single_modality"] and "single modality" in str(a)
    X = a.get("retrieval", "text")
    assert sp.issparse(X) and X.format == "csr" and X.shape == (18015, 1386)
    assert a.n_items == 20015 and a.n_classes == 24
    assert a.split("query").n == 2000 and a.split("retrieval").n == 18015
    assert a.train_is_retrieval
    assert np.intersect1d(a.indices("query"), a.indices("retrieval")).size == 0
    raw = scipy.io.loadmat(str(files[0]))["YAll"]
    assert a.modalities["text"].nnz == np.count_nonzero(raw)
    np.testing.assert_array_equal(a.modalities["text"][-3000:].toarray(), raw[-3000:])
    # seeded split: same seed -> same split; different seed -> different split
    b = load_dataset(d, random_state=0)  # directory: all its files merged
    np.testing.assert_array_equal(a.indices("query"), b.indices("query"))
    np.testing.assert_array_equal(a.indices("train"), b.indices("train"))
    # the deep-method protocol: a 10,000-item training subset of the retrieval set (seed 1)
    e = load_dataset(files, preset="mirflickr25k-10k", random_state=1)
    assert not np.array_equal(a.indices("query"), e.indices("query"))
    assert e.split("query").n == 2000 and e.split("retrieval").n == 18015
    assert e.split("train").n == 10000 and not e.train_is_retrieval
    assert np.isin(e.indices("train"), e.indices("retrieval")).all()


# --------------------------------------------------------------------------------------------
# layouts and formats
# --------------------------------------------------------------------------------------------
def _wiki_layout(seed=0, n_tr=40, n_te=20, c=4):
    rng = np.random.default_rng(seed)
    ltr = rng.integers(1, c + 1, size=(n_tr, 1)).astype(np.uint8)
    lte = rng.integers(1, c + 1, size=(n_te, 1)).astype(np.uint8)
    ltr[:c, 0] = np.arange(1, c + 1)
    return {
        "I_tr": rng.standard_normal((n_tr, 6)),
        "I_te": rng.standard_normal((n_te, 6)),
        "T_tr": rng.random((n_tr, 3)),
        "T_te": rng.random((n_te, 3)),
        "L_tr": ltr,
        "L_te": lte,
        "L_train": labels_from_indices(ltr, range(1, c + 1)).astype(np.uint8),
        "L_test": labels_from_indices(lte, range(1, c + 1)).astype(np.uint8),
    }


def _check_wiki_layout(ds, arrs):
    n_tr = arrs["I_tr"].shape[0]
    assert ds.split("train").n == n_tr and ds.train_is_retrieval
    np.testing.assert_allclose(ds.get("train", "image"), arrs["I_tr"])
    np.testing.assert_allclose(ds.get("query", "image"), arrs["I_te"])
    np.testing.assert_allclose(ds.get("query", "text"), arrs["T_te"])
    np.testing.assert_array_equal(ds.labels_of("train"), arrs["L_train"])
    np.testing.assert_array_equal(ds.labels_of("query"), arrs["L_test"])


def test_roundtrip_npz(tmp_path):
    arrs = _wiki_layout()
    p = tmp_path / "toy.npz"
    np.savez(p, **arrs)
    _check_wiki_layout(load_dataset(p), arrs)


def test_roundtrip_h5(tmp_path):
    arrs = _wiki_layout(1)
    p = tmp_path / "toy.h5"
    with h5py.File(p, "w") as f:  # plain HDF5: arrays stored as (n, d)
        for k, v in arrs.items():
            f[k] = v
    _check_wiki_layout(load_dataset(p), arrs)


def test_roundtrip_mat_v73(tmp_path):
    """MATLAB v7.3 = HDF5 with a 512-byte 'MATLAB 7.3 MAT-file' user block; column-major, so
    h5py sees every matrix transposed; sparse matrices are groups with data/ir/jc."""
    arrs = _wiki_layout(2)
    Tsp = sp.random(60, 9, density=0.2, format="csc", random_state=0)
    p = tmp_path / "toy73.mat"
    with h5py.File(p, "w", userblock_size=512) as f:
        for k, v in arrs.items():
            d = f.create_dataset(k, data=np.ascontiguousarray(v.T))
            d.attrs["MATLAB_class"] = np.bytes_("double" if v.dtype.kind == "f" else "uint8")
    with open(p, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
    _check_wiki_layout(load_dataset(p), arrs)
    # a sparse text matrix stored the MATLAB way (CSC parts of the n x d matrix)
    q = tmp_path / "sparse73.mat"
    Y = labels_from_indices(np.arange(60) % 3)
    with h5py.File(q, "w", userblock_size=512) as f:
        f.create_dataset("XAll", data=np.arange(60 * 4, dtype=float).reshape(60, 4).T)
        g = f.create_group("YAll")
        g.attrs["MATLAB_sparse"] = np.uint64(60)
        g["data"], g["ir"], g["jc"] = Tsp.data, Tsp.indices.astype(np.uint64), Tsp.indptr.astype(np.uint64)
        f.create_dataset("LAll", data=Y.T)
    with open(q, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file")
    ds = load_dataset(q, n_query=10)
    assert ds.is_sparse("text")
    np.testing.assert_allclose(ds.modalities["text"].toarray(), Tsp.toarray())
    np.testing.assert_allclose(ds.modalities["image"], np.arange(240.0).reshape(60, 4))
    assert ds.split("query").n == 10 and ds.split("retrieval").n == 50


def test_xtrain_layout_mat_v5(tmp_path):
    X, T, Y = _toy(80, sparse_text=True)
    p = tmp_path / "xy.mat"
    scipy.io.savemat(p, {"XTrain": X[:60], "YTrain": T[:60], "LTrain": Y[:60],
                         "XTest": X[60:], "YTest": T[60:], "LTest": Y[60:]})
    ds = load_dataset(p)
    assert ds.modality_names == ("image", "text")
    assert ds.split("train").n == 60 and ds.split("query").n == 20 and ds.train_is_retrieval
    assert ds.is_sparse("text")  # stored sparse -> CSR
    np.testing.assert_allclose(ds.get("query", "image"), X[60:])
    np.testing.assert_allclose(ds.get("train", "text").toarray(), T[:60].toarray())
    np.testing.assert_array_equal(ds.labels_of("query"), Y[60:])


def test_database_layout_with_training_subset(tmp_path):
    X, T, Y = _toy(100)
    db, q = np.arange(80), np.arange(80, 100)
    tr = np.array([5, 1, 70, 33, 2, 3, 0, 9, 12, 40])  # a subset of the database
    p = tmp_path / "db.npz"
    np.savez(p, XDatabase=X[db], YDatabase=T[db], LDatabase=Y[db],
             XQuery=X[q], YQuery=T[q], LQuery=Y[q], XTrain=X[tr], YTrain=T[tr], LTrain=Y[tr])
    ds = load_dataset(p, preset=None)
    assert ds.split("retrieval").n == 80 and ds.split("query").n == 20
    assert not ds.train_is_retrieval
    np.testing.assert_array_equal(ds.get("train", "image"), X[tr])
    assert np.isin(ds.indices("train"), ds.indices("retrieval")).all()
    # a training set that is NOT part of the database is appended to the pool
    p2 = tmp_path / "db2.npz"
    np.savez(p2, I_db=X[:50], T_db=T[:50], L_db=Y[:50], I_te=X[50:70], T_te=T[50:70],
             L_te=Y[50:70], I_tr=X[70:], T_tr=T[70:], L_tr=Y[70:])
    ds2 = load_dataset(p2)
    assert ds2.n_items == 100 and ds2.split("train").n == 30 and ds2.split("retrieval").n == 50
    np.testing.assert_array_equal(ds2.get("retrieval", "image"), X[:50])


def test_database_subset_with_duplicate_rows(tmp_path):
    X, T, Y = _toy(50, sparse_text=True)
    X[7], Y[7] = X[3], Y[3]
    T = T.tolil()
    T[7] = T[3]
    T = T.tocsr()
    tr = np.array([3, 7, 0, 1, 2])
    p = tmp_path / "dup.mat"
    scipy.io.savemat(p, {"I_db": X[:40], "T_db": T[:40], "L_db": Y[:40], "I_te": X[40:],
                         "T_te": T[40:], "L_te": Y[40:], "I_tr": X[tr], "T_tr": T[tr], "L_tr": Y[tr]})
    ds = load_dataset(p)
    assert ds.n_items == 50 and sorted(ds.indices("train")) == [0, 1, 2, 3, 7]
    with pytest.warns(DataWarning, match="n_query=5 ignored"):
        load_dataset(p, n_query=5)


def test_stored_split_n_query_ignored_but_n_train_applies(tmp_path):
    # n_query is ignored (warning) on a stored split; n_train still draws the training subset
    X, T, Y = _toy(100)
    p = tmp_path / "xy.npz"
    np.savez(p, XTrain=X[:80], YTrain=T[:80], LTrain=Y[:80], XTest=X[80:], YTest=T[80:], LTest=Y[80:])
    with pytest.warns(DataWarning, match="n_query=5 ignored"):
        ds = load_dataset(p, preset=None, n_query=5, n_train=30, random_state=0)
    assert ds.split("query").n == 20 and ds.split("retrieval").n == 80
    assert ds.split("train").n == 30 and not ds.train_is_retrieval
    assert np.isin(ds.indices("train"), ds.indices("retrieval")).all()
    # same training subset as without n_query (n_query consumes no randomness)
    ref = load_dataset(p, preset=None, n_train=30, random_state=0)
    np.testing.assert_array_equal(ds.indices("train"), ref.indices("train"))


def test_transposed_layout(tmp_path):
    X, T, Y = _toy(50)
    p = tmp_path / "t.npz"
    # features stored d x n, labels c x n (column-sample convention)
    np.savez(p, I_tr=X[:40].T, T_tr=T[:40].T, L_tr=Y[:40].T, I_te=X[40:].T, T_te=T[40:].T, L_te=Y[40:].T)
    ds = load_dataset(p)
    assert ds.get("train", "image").shape == (40, 5)
    np.testing.assert_allclose(ds.get("query", "text"), T[40:])
    np.testing.assert_array_equal(ds.labels_of("train"), Y[:40])


def test_single_pool_layout_and_density(tmp_path):
    rng = np.random.default_rng(0)
    X, _, Y = _toy(300)
    Tb = (rng.random((300, 50)) < 0.05).astype(np.uint8)  # dense BoW with density < 0.1
    p = tmp_path / "pool.npz"
    np.savez(p, IAll=X, YAll=Tb, LAll=Y)
    ds = load_dataset(p, n_query=30, n_train=100, random_state=3)
    assert ds.is_sparse("text") and not ds.is_sparse("image")
    assert ds.modalities["text"].dtype == np.float32
    assert (ds.split("query").n, ds.split("retrieval").n, ds.split("train").n) == (30, 270, 100)
    assert load_dataset(p, sparse=False, n_query=30).is_sparse("text") is False
    # the default query count for an unknown pool: min(2000, n // 10)
    assert load_dataset(p).split("query").n == 30


def test_native_save_load(tmp_path):
    ds = make_synthetic(n=300, n_classes=5, random_state=1).subset_train(120, random_state=0)
    for ext in (".npz", ".h5"):
        p = save_dataset(ds, tmp_path / f"ds{ext}")
        back = load_dataset(p)
        assert back.modality_names == ds.modality_names and back.name == ds.name
        for s in ds.split_names:
            np.testing.assert_array_equal(back.indices(s), ds.indices(s))
        np.testing.assert_array_equal(back.modalities["image"], ds.modalities["image"])
        assert back.is_sparse("text")
        assert (back.modalities["text"] != ds.modalities["text"]).nnz == 0
        np.testing.assert_array_equal(back.labels, ds.labels)


def test_native_load_honours_options_and_warns_about_ignored_ones(tmp_path):
    ds = make_synthetic(n=300, n_classes=5, random_state=1).subset_train(120, random_state=0)
    p = save_dataset(ds, tmp_path / "ds.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults are silent
        load_dataset(p)
    with pytest.warns(DataWarning, match="n_query=10 ignored.*native"):
        back = load_dataset(p, n_query=10)
    assert back.split("query").n == ds.split("query").n
    with pytest.warns(DataWarning, match="preset='wiki' ignored"):
        load_dataset(p, preset="wiki")
    back = load_dataset(p, sparse=False, dtype=np.float64, name="renamed")
    assert back.name == "renamed" and not back.is_sparse("text")
    assert back.modalities["image"].dtype == np.float64
    np.testing.assert_allclose(back.modalities["text"], ds.modalities["text"].toarray())


def test_unknown_layout_lists_keys(tmp_path):
    p = tmp_path / "odd.npz"
    np.savez(p, foo=np.zeros((3, 3)), bar=np.ones(4))
    with pytest.raises(ValueError, match="no known layout.*bar.*foo"):
        load_dataset(p)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.mat")
    assert set(read_arrays(p)) == {"foo", "bar"}


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------
def test_class_index_conversion():
    Y = labels_from_indices(np.array([[1], [3], [2], [3]]))  # MATLAB 1-based, (n, 1)
    np.testing.assert_array_equal(Y, np.eye(3)[[0, 2, 1, 2]])
    Y0 = labels_from_indices(np.array([0, 2, 1, 2]))  # 0-based
    np.testing.assert_array_equal(Y0, Y)
    # arbitrary values: sorted unique values, one-hot in that order
    Yv = labels_from_indices([7, 3, 9, 3])
    np.testing.assert_array_equal(Yv, np.eye(3)[[1, 0, 2, 0]])
    # explicit classes keep absent classes; as_label_matrix uses the full range when told c
    np.testing.assert_array_equal(labels_from_indices([1, 3], classes=range(1, 5)), np.eye(4)[[0, 2]])
    np.testing.assert_array_equal(as_label_matrix(np.array([1, 3]), n_classes=4), np.eye(4)[[0, 2]])
    with pytest.raises(ValueError, match="not in classes"):
        labels_from_indices([1, 5], classes=range(1, 5))
    with pytest.raises(ValueError, match="integer-valued"):
        labels_from_indices([0.5, 1.0])
    # multi-hot passes through as float32; bad values are refused
    M = as_label_matrix(np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8))
    assert M.dtype == np.float32 and M.shape == (2, 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        as_label_matrix(np.array([[2, 0], [0, 1]]))
    ds = CrossModalDataset({"a": np.ones((4, 2)), "b": np.ones((4, 3))}, np.array([2, 1, 2, 1]))
    np.testing.assert_array_equal(ds.labels, np.eye(2)[[1, 0, 1, 0]])


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def test_validation_errors():
    X, T, Y = _toy(20)
    ok = {"train": np.arange(15), "query": np.arange(15, 20)}
    with pytest.raises(ValueError, match="different row counts.*'text' has 19"):
        CrossModalDataset({"image": X, "text": T[:19]}, Y, ok)
    with pytest.raises(ValueError, match="labels have 19 rows but the modalities have 20"):
        CrossModalDataset({"image": X, "text": T}, Y[:19], ok)
    Xn = X.copy()
    Xn[7, 2] = np.nan
    with pytest.raises(ValueError, match="'image' contains NaN or inf.*row 7"):
        CrossModalDataset({"image": Xn, "text": T}, Y, ok)
    Ts = sp.csr_matrix(T)
    Ts.data[0] = np.inf
    with pytest.raises(ValueError, match="'text' contains NaN or inf"):
        CrossModalDataset({"image": X, "text": Ts}, Y, ok)
    Ye = Y.copy()
    Ye[:15, 2] = 0  # class 2 only in the query split
    Ye[:15, 0] = 1
    with pytest.raises(ValueError, match=r"empty class: label column\(s\) 2 "):
        CrossModalDataset({"image": X, "text": T}, Ye, ok)
    ds = CrossModalDataset({"image": X, "text": T}, Ye, ok, allow_empty_classes=True)
    assert ds.summary()["empty_train_classes"] == [2]
    with pytest.raises(ValueError, match=r"split 'query': indices out of range \[0, 20\)"):
        CrossModalDataset({"image": X, "text": T}, Y, {"train": np.arange(15), "query": [3, 20]})
    with pytest.raises(ValueError, match="split 'train' contains duplicate indices"):
        CrossModalDataset({"image": X, "text": T}, Y, {"train": [0, 1, 2, 3, 1]})
    with pytest.warns(DataWarning, match="query item.*'retrieval'"):
        CrossModalDataset({"image": X, "text": T}, Y, {"train": np.arange(16), "query": np.arange(15, 20)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CrossModalDataset({"image": X, "text": T}, Y, {"train": np.arange(16), "query": np.arange(15, 20)},
                          allow_overlap=True)
    ds = CrossModalDataset({"image": X, "text": T}, Y, ok)
    with pytest.raises(ValueError, match=r"unknown split 'test'; valid splits: \['train', 'query', 'retrieval'\]"):
        ds.get("test", "image")
    with pytest.raises(ValueError, match=r"unknown modality 'audio'; valid modalities: \['image', 'text'\]"):
        ds.get("train", "audio")
    with pytest.raises(ValueError, match="must be \\(n, d\\)"):
        CrossModalDataset({"image": np.ones(20), "text": T}, Y, ok)
    with pytest.raises(ValueError, match="splits must contain 'train'"):
        CrossModalDataset({"image": X, "text": T}, Y, {"query": [1]})


def test_dataset_access_and_views():
    X, T, Y = _toy(30, sparse_text=True)
    ds = CrossModalDataset([X, T], Y, {"train": np.arange(20), "query": np.arange(20, 30)}, name="toy")
    assert ds.modality_names == ("image", "text") and ds.train_is_retrieval
    tr = ds.get("train", "image")
    assert np.shares_memory(tr, ds.modalities["image"])  # contiguous split: zero-copy
    with pytest.raises(ValueError, match="read-only"):
        tr[0, 0] = 1.0  # the shared pool is protected against in-place edits
    assert X[0, 0] != 1.0
    tr_idx = np.arange(20)
    CrossModalDataset([X, T], Y, {"train": tr_idx})
    assert X.flags.writeable and tr_idx.flags.writeable  # the caller's arrays are untouched
    sp_ = ds["query"]
    assert len(sp_) == 10 and sp_["text"].shape == (10, 7) and sp_[0].shape == (10, 5)
    assert [v.shape[0] for v in sp_.views] == [10, 10]
    np.testing.assert_array_equal(sp_.labels, Y[20:])
    assert ds.get("train", 1).format == "csr"
    assert ds.select_modalities(["text"]).is_single_modality
    # from separately stored split arrays (class indices pooled before conversion)
    d2 = CrossModalDataset.from_split_arrays(({"image": X[:20], "text": T[:20]}, Y[:20].argmax(1) + 1),
                                             ({"image": X[20:], "text": T[20:]}, Y[20:].argmax(1) + 1))
    np.testing.assert_array_equal(d2.labels, Y)
    assert d2.train_is_retrieval and d2.split("query").n == 10
    # images with more than two axes are accepted
    imgs = np.zeros((30, 3, 8, 8), dtype=np.float32)
    d3 = CrossModalDataset({"image": imgs, "text": T}, Y, {"train": np.arange(20)})
    assert d3.dims("image") == (3, 8, 8) and d3.split("query").n == 0


def test_subset_and_validation_split():
    ds = make_synthetic(n=600, n_classes=6, random_state=0)
    sub = ds.subset_train(200, random_state=5)
    assert sub.split("train").n == 200 and not sub.train_is_retrieval
    assert np.isin(sub.indices("train"), ds.indices("retrieval")).all()
    np.testing.assert_array_equal(sub.indices("train"), ds.subset_train(200, random_state=5).indices("train"))
    assert np.shares_memory(sub.modalities["image"], ds.modalities["image"])  # pool shared
    n_ret = ds.split("retrieval").n
    assert ds.subset_train(n_ret).train_is_retrieval  # exactly the retrieval size: all of it
    with pytest.raises(ValueError, match=rf"n={n_ret + 1} exceeds the {n_ret} items"):
        ds.subset_train(n_ret + 1)
    with pytest.raises(TypeError, match="integer"):
        ds.subset_train(2.5)
    with pytest.raises(ValueError, match="positive"):
        ds.subset_train(0)
    for base in (ds, sub):
        v = base.validation_split(0.25, random_state=1)
        q, tr = v.indices("query"), v.indices("train")
        assert v.train_is_retrieval
        assert np.intersect1d(q, base.indices("query")).size == 0  # never the real queries
        assert np.intersect1d(q, tr).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([q, tr])), np.sort(base.indices("train")))
        assert q.size == round(0.25 * base.split("train").n)
    assert ds.validation_split(50).split("query").n == 50
    with pytest.raises(ValueError, match="fraction must be in"):
        ds.validation_split(1.5)


def test_unpaired_shuffles_each_modality():
    ds = make_synthetic(n=400, n_classes=5, random_state=2)
    views, labs, inds = ds.unpaired(random_state=0, return_indices=True)
    tr = ds.indices("train")
    assert len(views) == 2 and len(labs) == 2
    assert not np.array_equal(inds[0], inds[1])  # different permutations per modality
    assert not np.array_equal(inds[0], tr)
    for v, (X, Yv, ix) in enumerate(zip(views, labs, inds)):
        np.testing.assert_array_equal(np.sort(ix), tr)  # a permutation of the training set
        np.testing.assert_array_equal(Yv, ds.labels[ix])  # labels travel with their samples
        pool = ds.modalities[ds.modality_names[v]]
        if sp.issparse(X):
            assert (X != pool[ix]).nnz == 0
        else:
            np.testing.assert_array_equal(X, pool[ix])
    # without the indices: find each shuffled image row in the pool, its label must follow
    v2, l2 = ds.unpaired(random_state=0)
    pos = {r.tobytes(): i for i, r in enumerate(np.asarray(ds.modalities["image"]))}
    back = np.array([pos[r.tobytes()] for r in v2[0]])
    np.testing.assert_array_equal(l2[0], ds.labels[back])


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------
def test_presets():
    assert detect_preset(2866, 10).name == "wiki"
    assert detect_preset(20015, 24).name == "mirflickr25k"
    assert detect_preset(186577, 10).name == "nuswide"
    assert detect_preset(20000, 255).name == "iapr-tc12"
    assert detect_preset(123, 4, "some/nus_wide_x.mat").name == "nuswide"
    assert detect_preset(123, 4, "x.mat") is None
    p = get_preset("MIRFlickr")
    assert (p.n_query, p.n_retrieval, p.n_train) == (2000, 18015, None)
    assert get_preset("nus-wide").n_retrieval == 184577
    assert get_preset("iapr").n_retrieval == 18000
    assert get_preset("mirflickr25k-10k").n_train == 10000
    assert get_preset("wiki").n_query == 693
    with pytest.raises(ValueError, match="unknown preset 'foo'; valid presets"):
        get_preset("foo")


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------
def test_synthetic_determinism_and_structure():
    a = make_synthetic(random_state=7)
    b = make_synthetic(random_state=7)
    c = make_synthetic(random_state=8)
    np.testing.assert_array_equal(a.modalities["image"], b.modalities["image"])
    assert (a.modalities["text"] != b.modalities["text"]).nnz == 0
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.modalities["image"], c.modalities["image"])
    assert a.n_items == 3000 and a.split("query").n == 500 and a.train_is_retrieval
    assert a.get("train", "text").format == "csr" and a.modalities["text"].min() >= 0
    assert a.modalities["image"].dtype == np.float32
    # labels: 1 + Binomial(c - 1, rate) per item, no empty training class
    card = a.labels.sum(1)
    assert card.min() >= 1 and abs(card.mean() - (1 + 9 * 0.1)) < 0.1
    assert a.labels_of("train").sum(0).min() > 0
    # label structure: nearest neighbours on the image features beat chance clearly
    p, chance = _nn_precision(a.get("query", "image")[:200], a.get("retrieval", "image"),
                              a.labels_of("query")[:200], a.labels_of("retrieval"))
    assert p > chance + 0.3, (p, chance)
    # ... and so do text neighbours (cosine on the BoW counts)
    Tq = a.get("query", "text")[:200].toarray()
    Tr = a.get("retrieval", "text").toarray()
    Tq /= np.linalg.norm(Tq, axis=1, keepdims=True)
    Tr /= np.linalg.norm(Tr, axis=1, keepdims=True)
    p_t, _ = _nn_precision(Tq, Tr, a.labels_of("query")[:200], a.labels_of("retrieval"))
    assert p_t > chance + 0.3, (p_t, chance)
    w = make_synthetic(preset="wiki-like")
    assert w.labels.sum(1).max() == 1 and not w.is_sparse("text")
    np.testing.assert_allclose(w.modalities["text"].sum(1), 1.0, rtol=1e-5)


def test_synthetic_nuswide_like_scaled():
    """The nuswide-like generator at 1/10 scale: float32, CSR for both modalities."""
    d = make_synthetic(preset="nuswide-like", n=18000, random_state=0)
    assert d.modality_names == ("image", "text")
    for m, dim, dens in (("image", 500, 0.05), ("text", 1000, 0.01)):
        X = d.modalities[m]
        assert sp.isspmatrix_csr(X) and X.dtype == np.float32 and X.shape == (18000, dim)
        assert 0.5 * dens < X.nnz / (18000 * dim) < 1.5 * dens
    assert d.n_classes == 10 and d.split("query").n == 1800


@pytest.mark.slow
def test_synthetic_nuswide_like_full():
    """The full nuswide-like preset (about 3-8 s here): sizes, float32 CSR, < 20 s."""
    t0 = time.perf_counter()
    d = make_synthetic(preset="nuswide-like")
    elapsed = time.perf_counter() - t0
    assert d.n_items == 186577 and d.split("query").n == 2000 and d.split("retrieval").n == 184577
    assert d.train_is_retrieval and d.n_classes == 10
    for m, dim in (("image", 500), ("text", 1000)):
        X = d.modalities[m]
        assert sp.isspmatrix_csr(X) and X.dtype == np.float32 and X.shape == (186577, dim)
    assert d.labels.dtype == np.float32
    assert elapsed < 20, elapsed


def test_synthetic_image_text():
    d = make_synthetic_image_text(n=600, image_size=16, random_state=0)
    imgs = d.modalities["image"]
    assert imgs.shape == (600, 3, 16, 16) and imgs.dtype == np.float32
    assert sp.isspmatrix_csr(d.modalities["text"]) and d.split("query").n == 60
    p, chance = _nn_precision(d.get("query", "image"), d.get("retrieval", "image"),
                              d.labels_of("query"), d.labels_of("retrieval"))
    assert p > chance + 0.3, (p, chance)
    e = make_synthetic_image_text(n=600, image_size=16, random_state=0)
    np.testing.assert_array_equal(imgs, e.modalities["image"])


def test_synthetic_spec_strings():
    assert parse_synthetic_spec("synthetic:n=5000,classes=10,seed=3") == (
        "small", {"n": 5000, "n_classes": 10, "random_state": 3})
    assert parse_synthetic_spec("synthetic:nuswide-like,dims=50x80")[1] == {"dims": (50, 80)}
    d = load_dataset("synthetic:n=500,classes=5,seed=3,query=50")
    assert d.n_items == 500 and d.n_classes == 5 and d.split("query").n == 50
    np.testing.assert_array_equal(d.labels, make_synthetic(n=500, n_classes=5, n_query=50,
                                                           random_state=3).labels)
    e = load_dataset("synthetic:nuswide-like,n=3000", random_state=1)
    assert e.is_sparse("image") and e.is_sparse("text") and e.dims("text") == (1000,)
    f = load_dataset("synthetic:image-text,n=100,image_size=8")
    assert f.modalities["image"].shape == (100, 3, 8, 8)
    assert load_dataset("synthetic").name == "synthetic-small"
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        load_dataset("synthetic:bogus=1")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_dataset("synthetic:huge")
    with pytest.raises(ValueError, match="bad value n='abc'"):
        load_dataset("synthetic:n=abc")


def test_n_train_and_n_query_beyond_the_available_items_are_errors(tmp_path):
    # n_train larger than the retrieval split it is drawn from silently trained on the whole
    # split (single pool, stored split, native file, synthetic data), n_query=2.5 was
    # truncated to 2 queries and n_train=-3 on a stored split was numpy's "negative dimensions"
    X, T, Y = _toy(100)
    pool, split = tmp_path / "pool.npz", tmp_path / "split.npz"
    np.savez(pool, IAll=X, YAll=T, LAll=Y)
    np.savez(split, I_tr=X[:80], T_tr=T[:80], L_tr=Y[:80], I_te=X[80:], T_te=T[80:], L_te=Y[80:])
    native = save_dataset(make_synthetic(n=300, n_classes=5, random_state=1), tmp_path / "ds.npz")
    for path, avail, where in ((pool, 90, "pool.npz"), (split, 80, "split.npz"),
                               (native, 270, "ds.npz"), ("synthetic:small", 2500, "synthetic-small"),
                               ("synthetic:image-text,n=200,image_size=8", 180, "synthetic-image-text")):
        with pytest.raises(ValueError, match=rf"n_train=5000 exceeds the {avail} items available in "
                                             rf"split 'retrieval' of .*{where}"):
            load_dataset(path, n_train=5000, n_query=10 if path == pool else None)
        # exactly the available number is fine: train = retrieval
        assert load_dataset(path, n_train=avail, n_query=10 if path == pool else None).train_is_retrieval
    with pytest.raises(ValueError, match="n_train=5000 exceeds the 2500 items"):
        load_dataset("synthetic:small,train=5000")
    with pytest.raises(ValueError, match="n_train=5000 exceeds the 2500 items"):
        make_synthetic(n_train=5000)
    with pytest.raises(ValueError, match=r"n_query=100 exceeds the 99 items available for queries in .*pool\.npz"):
        load_dataset(pool, n_query=100)
    with pytest.raises(ValueError, match=r"n_query=3000 exceeds the 2999 items available for queries"):
        load_dataset("synthetic:small", n_query=3000)
    # a number that came from the preset says so
    with pytest.raises(ValueError, match=r"n_query=2000 \(preset 'nuswide'\) exceeds the 99 items"):
        with pytest.warns(DataWarning):
            load_dataset(pool, preset="nuswide")
    for kw, exc, match in (({"n_train": -3}, ValueError, "n_train must be positive, got -3"),
                           ({"n_train": 0}, ValueError, "n_train must be positive, got 0"),
                           ({"n_query": -1}, ValueError, "n_query must be >= 0, got -1"),
                           ({"n_query": 2.5}, TypeError, "n_query must be an integer number of items, got 2.5"),
                           ({"n_train": True}, TypeError, "n_train must be an integer number of items, got True")):
        for path in (pool, split, "synthetic:small"):
            with pytest.raises(exc, match=match):
                load_dataset(path, **kw)


def test_preset_that_cannot_apply_warns_and_unknown_preset_is_an_error(tmp_path):
    # preset= was silently ignored for synthetic specs (a typo too) and for a
    # CrossModalDataset (like n_train / n_query there); the native-file precedent warns
    ref = load_dataset("synthetic:n=300")
    with pytest.warns(DataWarning, match=r"preset='wiki' ignored: 'synthetic:n=300' is synthetic data"):
        ds = load_dataset("synthetic:n=300", preset="wikipedia")
    np.testing.assert_array_equal(ds.labels, ref.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults stay silent
        for p in ("auto", None, "none"):
            load_dataset("synthetic:n=300", preset=p)
        load_dataset(ref)
        load_dataset("synthetic:n=300,train=100", n_train=100)
    for path in ("synthetic:n=300", save_dataset(ref, tmp_path / "ds.npz")):
        with pytest.raises(ValueError, match="unknown preset 'wkii'; valid presets: .*'wiki'"):
            load_dataset(path, preset="wkii")
    with pytest.raises(ValueError, match="'nuswide-like' is a synthetic data preset: pass the data "
                                         "as 'synthetic:nuswide-like'"):
        load_dataset("synthetic:n=300", preset="nuswide-like")
    with pytest.warns(DataWarning, match=r"preset='wiki', n_train=10 ignored: a CrossModalDataset "
                                         "is returned unchanged"):
        assert load_dataset(ref, preset="wiki", n_train=10) is ref
    # an n_train argument that the spec overrides is not silently dropped either
    with pytest.warns(DataWarning, match=r"n_train=50 ignored: the spec 'synthetic:n=300,train=100' "
                                         "sets n_train=100"):
        assert load_dataset("synthetic:n=300,train=100", n_train=50).split("train").n == 100


def test_malformed_synthetic_specs_are_clear_errors(tmp_path, monkeypatch):
    # typos were routed to the synthetic parser with "expected 'synthetic:...'" and no names
    # (also a real file named synthetic*.npz could not be loaded), a second preset or a key
    # given twice silently won, n=2.5 was truncated to 2 and n=inf was an OverflowError
    names = r"\['iapr-like', 'mirflickr-like', 'nuswide-like', 'small', 'wiki-like', 'image-text'\]"
    for spec in ("synthetic-small", "synthetics:small", "Synthetic_small"):
        with pytest.raises(ValueError, match=rf"not a synthetic spec: '{spec}'; expected 'synthetic' "
                                             rf"or 'synthetic:<preset>\[,key=value...\]' with a preset in {names}"):
            load_dataset(spec)
    with pytest.raises(ValueError, match=rf"unknown preset 'nuswide'.*presets: {names}"):
        load_dataset("synthetic:nuswide")
    with pytest.raises(ValueError, match=rf"several presets \('small', 'wiki-like'\); give at most one of {names}"):
        load_dataset("synthetic:small,wiki-like")
    with pytest.raises(ValueError, match=r"n given twice \('n=300' and 'size=400'\)"):
        load_dataset("synthetic:n=300,size=400")
    for bad in ("n=2.5", "n=inf", "train=99.5"):
        with pytest.raises(ValueError, match=rf"bad value {bad.split('=')[0]}='.*' \(.* must be an integer\)"):
            parse_synthetic_spec(f"synthetic:{bad}")
    assert parse_synthetic_spec("synthetic:Wiki-Like,n=3e3") == ("wiki-like", {"n": 3000})
    with pytest.raises(ValueError, match="unknown synthetic preset 'image-text'.*make_synthetic_image_text"):
        make_synthetic(preset="image-text")
    # a bare synthetic preset name says how to ask for it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="for the synthetic data preset write 'synthetic:nuswide-like'"):
        load_dataset("nuswide-like")
    # files whose name starts with "synthetic" are files
    X, T, Y = _toy(60)
    np.savez(tmp_path / "synthetic_pool.npz", IAll=X, YAll=T, LAll=Y)
    assert load_dataset("synthetic_pool.npz", n_query=10).n_items == 60
    with pytest.raises(FileNotFoundError, match="data file not found: synthetic_missing.npz"):
        load_dataset("synthetic_missing.npz")


def test_unreadable_data_files_are_value_errors(tmp_path):
    # a corrupt .h5 was h5py's OSError, a truncated .mat scipy's MatReadError or an
    # IndexError, a .npy saved as .npz "'numpy.ndarray' object does not support the context
    # manager protocol": tracebacks from `cmhash evaluate --data ...` (exit 1, not 2)
    (tmp_path / "a.h5").write_text("hello")
    (tmp_path / "b.mat").write_text("hello")
    (tmp_path / "c.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage")
    (tmp_path / "d.npz").write_bytes(b"")
    np.save(tmp_path / "e.npy", np.arange(3))
    (tmp_path / "e.npy").rename(tmp_path / "e.npz")
    for name in ("a.h5", "b.mat", "c.mat", "d.npz"):
        ext = name[1:]
        with pytest.raises(ValueError, match=rf"{name} is not a readable \{ext} data file \(\w+: "):
            load_dataset(tmp_path / name)
        with pytest.raises(ValueError, match=rf"{name} is not a readable \{ext} data file"):
            read_arrays(tmp_path / name)
    # the .npy renamed .npz was "not a readable .npz data file (TypeError: 'numpy.ndarray'
    # object does not support the context manager protocol)": now the message names it
    for read in (load_dataset, read_arrays):
        with pytest.raises(ValueError, match=r"e.npz is a NumPy .npy file \(a single array\), not "
                                             r"the .npz file its extension says: rename it to e.npy"):
            read(tmp_path / "e.npz")
