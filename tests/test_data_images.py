"""Image-text data from files: transforms, lazy image sources, manifests, the text vocabulary."""
import json
import tracemalloc
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

PIL = pytest.importorskip("PIL")
pytest.importorskip("sklearn")

from PIL import Image  # noqa: E402

from cmhash.data import (ArrayImageSource, CrossModalDataset, DataWarning,  # noqa: E402
                         H5ImageSource, ImageFileSource, ImageTransform, TextVocabulary,
                         is_image_source, load_dataset, load_image_text_dataset, save_dataset)
from cmhash.data.image_folder import write_synthetic_image_folder  # noqa: E402
from cmhash.data.images import detect_image_layout  # noqa: E402


def _image(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(3, h, w), dtype=np.uint8)


# ------------------------------------------------------------------------------ transform
def test_eval_geometry_is_the_centre_crop_of_the_resized_image():
    img = _image(40, 60)
    t = ImageTransform(size=20)
    np.testing.assert_array_equal(t.apply(img), img[:, 10:30, 20:40])
    # shorter side to 30: 40 x 60 -> 30 x 45 (Pillow, bilinear), then the centre 20 x 20
    t = ImageTransform(size=20, resize=30)
    pil = Image.fromarray(img.transpose(1, 2, 0)).resize((45, 30), Image.Resampling.BILINEAR)
    ref = np.asarray(pil).transpose(2, 0, 1)
    out = t.apply(img)
    assert out.dtype == np.uint8 and out.shape == (3, 20, 20)
    np.testing.assert_allclose(out, ref[:, 5:25, 12:32], atol=1)   # per-plane vs RGB resize
    assert ImageTransform(resize=30).output_shape((3, 40, 60)) == (3, 30, 45)
    assert ImageTransform(resize=30, resize_mode="square").output_shape((3, 40, 60)) == (3, 30, 30)
    assert ImageTransform.for_backbone("alexnet").output_shape(None) == (3, 227, 227)
    assert ImageTransform.for_backbone("cnnf").resize == 256


def test_training_geometry_is_a_seeded_random_crop_and_flip():
    img = _image(30, 30)
    t = ImageTransform(size=24)
    crops = {}
    for seed in range(40):
        a = t.apply(img, train=True, rng=np.random.default_rng(seed))
        b = t.apply(img, train=True, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)                 # same seed, same crop and flip
        flipped = False
        for top in range(7):
            for left in range(7):
                win = img[:, top:top + 24, left:left + 24]
                if np.array_equal(a, win):
                    crops[(top, left, False)] = True
                elif np.array_equal(a, win[:, :, ::-1]):
                    crops[(top, left, True)] = flipped = True
        assert crops, "the output is a crop (maybe flipped) of the image"
    assert len({k[:2] for k in crops}) > 10                 # crops at many places
    assert {k[2] for k in crops} == {False, True}           # flipped and not flipped
    assert len(crops) > 1 and (3, 3, False) in crops     # the evaluation crop is the centre
    off = ImageTransform(size=24, random_crop=False, random_flip=False)
    np.testing.assert_array_equal(off.apply(img, train=True, rng=np.random.default_rng(0)),
                                  off.apply(img))


def test_normalisation_and_its_checks():
    x = _image(8, 8)[None].astype(np.float32)
    t = ImageTransform(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), scale=1.0)
    ref = (x / 255.0 - np.array([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1)) \
        / np.array([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(t.normalize(x), ref, rtol=1e-5, atol=1e-6)
    mean_img = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32) * 255
    np.testing.assert_allclose(ImageTransform(size=8, mean=mean_img).normalize(x), x - mean_img)
    np.testing.assert_array_equal(ImageTransform().normalize(x), x)       # raw 0..255
    assert t.normalization_given and not ImageTransform(size=8).normalization_given
    with pytest.raises(ValueError, match="std must be positive"):
        ImageTransform(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"mean image must be \(C, 8, 8\)"):
        ImageTransform(size=8, mean=np.zeros((3, 9, 9)))
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform(resize=8, resize_mode="long")
    with pytest.raises(ValueError, match="scale must be a positive number"):
        ImageTransform(scale=0)
    with pytest.raises(ValueError, match="smaller than the crop size"):
        ImageTransform(size=50).apply(_image(40, 60))
    # persistence through plain params + arrays
    back = ImageTransform.from_state(t.get_params(), t.get_state())
    assert back == t and back != ImageTransform()


# ------------------------------------------------------------------------------ h5 sources
def _write_h5(path, key, arr, matlab=False):
    kw = {"userblock_size": 512} if matlab else {}
    with h5py.File(path, "w", **kw) as f:
        d = f.create_dataset(key, data=arr)
        if matlab:
            d.attrs["MATLAB_class"] = np.bytes_("uint8")
    if matlab:
        with open(path, "r+b") as f:
            f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "matlab-hwcn"])
def test_h5_images_are_read_lazily_in_every_layout(tmp_path, layout):
    rng = np.random.default_rng(0)
    eager = rng.integers(0, 256, size=(50, 3, 12, 10), dtype=np.uint8)      # (n, C, H, W)
    if layout == "nchw":
        stored, matlab = eager, False
    elif layout == "nhwc":
        stored, matlab = eager.transpose(0, 2, 3, 1), False
    else:   # MATLAB H x W x 3 x N written column-major: h5py sees N x 3 x W x H
        stored, matlab = np.ascontiguousarray(eager.transpose(0, 1, 3, 2)), True
    p = tmp_path / ("x.mat" if matlab else "x.h5")
    _write_h5(p, "IAll", stored, matlab)
    src = H5ImageSource(p, "IAll")
    assert src.layout == {"nchw": "nchw", "nhwc": "nhwc", "matlab-hwcn": "hwcn"}[layout]
    assert src.matlab == matlab and src.shape == (50, 3, 12, 10) and src.dtype == np.uint8
    idx = np.array([7, 3, 3, 49, 0, 20, 21, 22])                       # unsorted, repeated
    batch = src.items(idx)
    assert batch.dtype == np.uint8
    np.testing.assert_array_equal(batch, eager[idx])
    np.testing.assert_array_equal(src.read(5), eager[5])
    np.testing.assert_array_equal(src[10:20].items(np.arange(10)), eager[10:20])
    np.testing.assert_array_equal(src[[4, 2]].to_array(), eager[[4, 2]])


def test_h5_batches_read_only_their_rows(tmp_path):
    """No copy -- let alone a float one -- of the whole array is made to read a batch."""
    big = np.random.default_rng(0).integers(0, 256, size=(400, 3, 32, 32), dtype=np.uint8)
    p = tmp_path / "big.h5"
    _write_h5(p, "images", big)
    src = H5ImageSource(p, "images")
    src.items(np.arange(4))           # opens the file
    tracemalloc.start()
    out = src.items(np.array([5, 300, 17, 18, 19, 200]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(out, big[[5, 300, 17, 18, 19, 200]])
    assert peak < big.nbytes / 20, (peak, big.nbytes)


def test_load_dataset_keeps_field_image_arrays_lazy_and_uint8(tmp_path):
    """DCMH's FLICKR-25K.mat stores IAll as MATLAB 224 x 224 x 3 x N (v7.3): loaded lazily,
    channels first, and a v5 file's N x H x W x 3 array is kept as uint8 (a view)."""
    rng = np.random.default_rng(0)
    n = 60
    eager = rng.integers(0, 256, size=(n, 3, 16, 16), dtype=np.uint8)
    Y = np.eye(3)[np.arange(n) % 3]
    T = rng.random((n, 20))
    p = tmp_path / "flickr.mat"
    with h5py.File(p, "w", userblock_size=512) as f:
        f.create_dataset("IAll", data=np.ascontiguousarray(eager.transpose(0, 1, 3, 2)))
        for k, v in (("YAll", T), ("LAll", Y)):
            f.create_dataset(k, data=np.ascontiguousarray(v.T)).attrs["MATLAB_class"] = \
                np.bytes_("double")
    with open(p, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file")
    ds = load_dataset(p, n_query=10)
    X = ds.modalities["image"]
    assert isinstance(X, H5ImageSource) and X.shape == (n, 3, 16, 16)
    q = ds.indices("query")
    np.testing.assert_array_equal(ds.get("query", "image").to_array(), eager[q])
    np.testing.assert_allclose(ds.modalities["text"], T)
    # MATLAB v5: the same images as N x H x W x 3
    v5 = tmp_path / "v5.mat"
    scipy.io.savemat(v5, {"IAll": eager.transpose(0, 2, 3, 1), "YAll": T, "LAll": Y})
    ds5 = load_dataset(v5, n_query=10)
    X5 = ds5.modalities["image"]
    assert isinstance(X5, ArrayImageSource) and X5.dtype == np.uint8 and X5.layout == "nhwc"
    np.testing.assert_array_equal(X5.to_array(), eager)
    assert detect_image_layout((224, 224, 3, 100)) == "hwcn"
    with pytest.raises(ValueError, match="matches no layout"):
        detect_image_layout((10, 5, 5, 5))


def test_array_source_is_a_view_and_not_converted_implicitly():
    a = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    src = ArrayImageSource(a)
    assert src.layout == "nhwc" and np.shares_memory(src._array, a)
    np.testing.assert_array_equal(src.items([3, 1]), a[[3, 1]].transpose(0, 3, 1, 2))
    with pytest.raises(TypeError, match="not converted to an array implicitly"):
        np.asarray(src)
    assert is_image_source(src[2:5]) and len(src[2:5]) == 3


# ------------------------------------------------------------------------------ manifests
def _folder(tmp_path, **kw):
    kw.setdefault("image_size", 16)
    return write_synthetic_image_folder(tmp_path / "set", kw.pop("n", 60), **kw)


def test_generated_folder_does_not_depend_on_the_writer_processes(tmp_path):
    """Each item draws from its own seeded generator: 1 or 3 writer processes write the same
    bytes; another seed writes other images."""
    def digest(root):
        import hashlib
        files = sorted(p for p in Path(root).rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).digest()

    for jobs, name in ((1, "a"), (3, "b")):
        write_synthetic_image_folder(tmp_path / name, 30, image_size=16, n_jobs=jobs)
    write_synthetic_image_folder(tmp_path / "c", 30, image_size=16, random_state=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    assert len(list((tmp_path / "b" / "images").glob("*.jpg"))) == 30
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_jobs"):
            write_synthetic_image_folder(tmp_path / "d", 5, n_jobs=bad)


def _rewrite_csv(path, rows, header="image,text,labels,split"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_manifest_gives_lazy_images_bag_of_words_labels_and_splits(tmp_path):
    p = _folder(tmp_path, n=60, n_query=10)
    ds = load_dataset(p, image_size=16)
    X = ds.modalities["image"]
    assert isinstance(X, ImageFileSource) and X.shape == (60, 3, 16, 16)
    assert X.transform == ImageTransform(size=16, resize=18)
    rows = [ln.split(",") for ln in p.read_text().splitlines()[1:]]
    names = sorted({c for r in rows for c in r[2].split(";")})
    assert ds.class_names == names
    for i, r in enumerate(rows):   # multi-hot from the label names, row order kept
        assert [names[j] for j in np.flatnonzero(ds.labels[i])] == sorted(r[2].split(";"))
    q = ds.indices("query")
    assert q.size == 10 and all(rows[i][3] == "query" for i in q)
    assert np.array_equal(ds.indices("train"), ds.indices("retrieval")) and ds.train_is_retrieval
    # the images are the decoded files, uint8, nothing decoded for a summary
    np.testing.assert_array_equal(
        X.read(3), np.asarray(Image.open(p.parent / rows[3][0]).convert("RGB")).transpose(2, 0, 1))
    assert ds.summary()["modalities"]["image"]["density"] is None
    # bag of words from a vocabulary fitted on the training rows only
    T = ds.modalities["text"]
    assert sp.issparse(T) and ds.text_vocabulary is not None
    vocab_words = set(ds.text_vocabulary.words_)
    train_words = {w for i in ds.indices("train") for w in rows[i][1].lower().split() if len(w) > 1}
    assert vocab_words == train_words
    i = 5
    got = {ds.text_vocabulary.words_[j] for j in T[i].indices}
    assert got == {w for w in rows[i][1].lower().split() if w in vocab_words}
    # derived datasets keep the lazy images and the vocabulary
    val = ds.validation_split(0.2, random_state=0)
    assert is_image_source(val.get("train", "image")) and val.text_vocabulary is ds.text_vocabulary
    # JSON lines: the same dataset
    pj = write_synthetic_image_folder(tmp_path / "set", 60, image_size=16, n_query=10,
                                      manifest="manifest.jsonl")
    dj = load_image_text_dataset(pj, image_size=16)
    np.testing.assert_array_equal(dj.labels, ds.labels)
    assert (dj.modalities["text"] != T).nnz == 0 and dj.modalities["image"].paths == X.paths
    with pytest.raises(ValueError, match="lazy ImageFileSource"):
        save_dataset(ds, tmp_path / "copy.npz")


def test_split_column_retrieval_rows_and_query_vocabulary(tmp_path):
    p = _folder(tmp_path, n=12, with_split=False)
    img = [ln.split(",")[0] for ln in p.read_text().splitlines()[1:]]
    rows = [f"{img[0]},red disc,a;b,train", f"{img[1]},green ring,b,train",
            f"{img[2]},red unseenword,a,query", f"{img[3]},red ring,a,retrieval",
            f"{img[4]},green disc,b,TRAIN"]
    ds = load_image_text_dataset(_rewrite_csv(p, rows), image_size=16)
    assert ds.indices("train").tolist() == [0, 1, 4]
    assert ds.indices("retrieval").tolist() == [0, 1, 3, 4]
    assert ds.indices("query").tolist() == [2] and not ds.train_is_retrieval
    assert "unseenword" not in ds.text_vocabulary.words_       # fitted on training rows only
    assert ds.modalities["text"][2].nnz == 1                    # "red" only
    assert ds.class_names == ["a", "b"]
    np.testing.assert_array_equal(ds.labels, [[1, 1], [0, 1], [1, 0], [1, 0], [0, 1]])


def test_manifest_errors_name_the_problem_and_the_line(tmp_path):
    p = _folder(tmp_path, n=6, with_split=False)
    img = [ln.split(",")[0] for ln in p.read_text().splitlines()[1:]]
    bad = tmp_path / "set" / "bad.csv"
    _rewrite_csv(bad, [f"{img[0]},xx,a"], header="image,caption,labels")
    with pytest.raises(ValueError, match=r"no 'text' or 'text_row' column; found \['image', "
                                         r"'caption', 'labels'\]"):
        load_image_text_dataset(bad)
    _rewrite_csv(bad, [f"{img[0]},xx,a,train", "images/nope.jpg,yy,b,train"])
    with pytest.raises(FileNotFoundError, match=r"bad.csv line 3: image file 'images/nope.jpg' "
                                                r"not found"):
        load_image_text_dataset(bad)
    _rewrite_csv(bad, [f"{img[0]},xx,a,train", f"{img[1]},yy,b,test"])
    with pytest.raises(ValueError, match=r"line 3: unknown split 'test'; a split is one of "
                                         r"train, query, retrieval"):
        load_image_text_dataset(bad)
    _rewrite_csv(bad, [f"{img[0]},xx,a,train", f"{img[1]},yy, ;,train", f"{img[2]},zz,b,train"])
    with pytest.raises(ValueError, match=r"1 of 3 rows have no label \(lines 3\); pass "
                                         r"empty_labels='drop'"):
        load_image_text_dataset(bad)
    with pytest.warns(DataWarning, match="1 row\\(s\\) without labels left out"):
        ds = load_image_text_dataset(bad, empty_labels="drop", image_size=16)
    assert len(ds) == 2 and ds.modalities["image"].paths[1].endswith(img[2])
    kept = load_image_text_dataset(bad, empty_labels="keep", image_size=16)
    assert len(kept) == 3 and kept.labels[1].sum() == 0
    with pytest.raises(ValueError, match="empty_labels must be one of"):
        load_image_text_dataset(bad, empty_labels="ignore")
    # an unreadable image: found at reading time, named with its manifest line
    (tmp_path / "set" / "broken.jpg").write_bytes(b"not a jpeg at all")
    _rewrite_csv(bad, [f"{img[0]},xx,a,train", "broken.jpg,yy,b,train"])
    ds = load_image_text_dataset(bad, image_size=16)
    with pytest.raises(ValueError, match=r"cannot read image file .*broken.jpg' \(bad.csv line "
                                         r"3\): UnidentifiedImageError"):
        ds.modalities["image"].items([0, 1])
    # JSON lines: a record without a key names its line; bad JSON too
    j = tmp_path / "set" / "bad.jsonl"
    j.write_text(json.dumps({"image": img[0], "text": "x", "labels": "a"}) + "\n"
                 + json.dumps({"image": img[1], "labels": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl \(line 2\) has no 'text' column"):
        load_image_text_dataset(j)
    j.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl line 1: not valid JSON"):
        load_image_text_dataset(j)


def test_manifest_without_split_column_announces_the_default_split(tmp_path):
    p = _folder(tmp_path, n=40, with_split=False)
    with pytest.warns(DataWarning, match=r"no 'split' column: random: 4 queries"):
        ds = load_dataset(p, image_size=16, random_state=3)
    assert ds.indices("query").size == 4 and ds.train_is_retrieval
    with pytest.warns(DataWarning):
        again = load_dataset(p, image_size=16, random_state=3)
    np.testing.assert_array_equal(again.indices("query"), ds.indices("query"))


def test_text_row_column_reads_a_feature_file_beside_the_manifest(tmp_path):
    p = _folder(tmp_path, n=8, with_split=False)
    img = [ln.split(",")[0] for ln in p.read_text().splitlines()[1:]]
    feats = np.random.default_rng(0).random((10, 7)).astype(np.float32)
    m = tmp_path / "set" / "items.csv"
    _rewrite_csv(m, [f"{img[k]},{9 - k},c{k % 2},train" for k in range(4)],
                 header="image,text_row,labels,split")
    with pytest.raises(ValueError, match="give the text-feature file"):
        load_image_text_dataset(m, image_size=16)
    np.save(tmp_path / "set" / "items.npy", feats)
    ds = load_image_text_dataset(m, image_size=16)
    np.testing.assert_array_equal(ds.modalities["text"], feats[[9, 8, 7, 6]])
    assert ds.text_vocabulary is None
    scipy.io.savemat(tmp_path / "set" / "other.mat", {"YAll": sp.csr_matrix(feats), "LAll": 1})
    ds2 = load_image_text_dataset(m, image_size=16, text_features="other.mat")
    np.testing.assert_allclose(ds2.modalities["text"].toarray(), feats[[9, 8, 7, 6]])
    _rewrite_csv(m, [f"{img[0]},10,c0,train"], header="image,text_row,labels,split")
    with pytest.raises(ValueError, match="line 2: text_row 10 is outside the 10 rows of items.npy"):
        load_image_text_dataset(m)


def test_text_vocabulary_options_and_json_round_trip(tmp_path):
    train = ["a red disc", "red red ring #x", "blue disc"]
    v = TextVocabulary().fit(train)
    assert v.words_ == ["blue", "disc", "red", "ring"]          # 1-letter words dropped
    X = v.transform(["red disc red", "green"])
    np.testing.assert_array_equal(X.toarray(), [[0, 1, 1, 0], [0, 0, 0, 0]])   # binary
    assert TextVocabulary(binary=False).fit(train).transform(["red red"]).toarray().max() == 2
    assert TextVocabulary(min_df=2).fit(train).words_ == ["disc", "red"]
    assert TextVocabulary(max_features=1).fit(["red disc", "red ring", "red"]).words_ == ["red"]
    assert "#x" in TextVocabulary(token_pattern=r"\S+").fit(train).words_
    back = TextVocabulary.load(v.save(tmp_path / "vocab.json"))
    assert back.words_ == v.words_ and back.get_params() == v.get_params()
    assert (back.transform(train) != v.transform(train)).nnz == 0
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="not a cmhash text vocabulary file"):
        TextVocabulary.load(tmp_path / "junk.json")
    with pytest.raises(ValueError, match="min_df must be"):
        TextVocabulary(min_df=0).fit(train)


def test_shallow_methods_refuse_image_sources_with_a_clear_error(tmp_path):
    from cmhash import make_hasher
    ds = load_dataset(_folder(tmp_path, n=30), image_size=16)
    with pytest.raises(ValueError, match="lazy image source .* this method takes feature vectors"):
        make_hasher("batch", n_bits=8).fit(*ds.views("train"), ds.labels_of("train"))


def test_dataset_accepts_a_source_as_a_modality():
    a = np.random.default_rng(0).integers(0, 256, size=(12, 3, 4, 4), dtype=np.uint8)
    ds = CrossModalDataset({"image": ArrayImageSource(a), "text": np.eye(12)},
                           np.arange(12) % 2, {"train": np.arange(8), "query": np.arange(8, 12)})
    assert ds.dims("image") == (3, 4, 4) and "lazy" in ds.format_summary()
    np.testing.assert_array_equal(ds.get("query", "image").to_array(), a[8:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.summary()
