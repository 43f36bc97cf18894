"""The deep methods from image files: DataLoader batches, fit / encode on image sources."""
import json
import os
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")
pytest.importorskip("sklearn")

import cmhash.base  # noqa: E402
from cmhash import DegenerateCodesWarning, evaluate_hasher, make_hasher  # noqa: E402
from cmhash.data import (ArrayImageSource, ImageTransform, TextVocabulary,  # noqa: E402
                         load_dataset, load_image_text_dataset)
from cmhash.data.image_folder import write_synthetic_image_folder  # noqa: E402
from cmhash.deep._images import (_BatchDataset, image_batches, iterate_image_batches,  # noqa: E402
                                 normalize_batch)
from cmhash.deep.ta_adcmh import TAADCMH  # noqa: E402

pytestmark = pytest.mark.deep
REPO = Path(__file__).resolve().parents[1]

#: small pixels in [0, 1], centred per channel: what pretrained weights would ask for
NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale=1.0)
#: small networks on 16 x 16 images (flattened: 768-d) for the default suite
FAST = {"sdch": dict(image_backbone="mlp", image_hidden=(64,), text_hidden=(64,),
                     feature_dim=32, n_epochs=6, batch_size=32, feature_bound="tanh"),
        "ta-adcmh": dict(image_backbone="mlp", image_hidden=(64,), text_hidden=64,
                         n_epochs=5, batch_size=32)}


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """240 generated JPEG files (16 x 16; colour, shape and place depend on the labels) with
    captions of label words, read through the manifest."""
    root = tmp_path_factory.mktemp("images")
    manifest = write_synthetic_image_folder(root, 240, image_size=16, n_classes=4, n_query=40,
                                            random_state=0)
    tf = ImageTransform(size=16, resize=18, **NORM)
    return manifest, load_image_text_dataset(manifest, transform=tf)


def _chance(ds):
    """Expected precision of a random ranking: the share of relevant (query, database) pairs."""
    return float(np.mean((ds.labels_of("query") @ ds.labels_of("train").T) > 0))


# ------------------------------------------------------------------------------ batches
def test_batches_stay_uint8_until_formed_and_are_normalised_on_the_device(image_set):
    _, ds = image_set
    src = ds.get("train", "image")
    data = _BatchDataset(src, [np.array([4, 0, 9])], train=False, seed=0)
    raw = data[0]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(raw.numpy(), src.items([4, 0, 9]))
    (idx, xb), = list(iterate_image_batches(src, [np.array([4, 0, 9])]))
    assert xb.dtype == torch.float32 and idx.tolist() == [4, 0, 9]
    ref = src.transform.normalize(raw.numpy())
    np.testing.assert_allclose(xb.numpy(), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(normalize_batch(raw, src.transform).numpy(), ref, atol=1e-6)
    # the caller's float tensor is not changed by normalize_batch
    f = raw.float()
    normalize_batch(f, src.transform)
    assert torch.equal(f, raw.float())


def test_training_batches_are_seeded_and_do_not_depend_on_the_workers(image_set):
    _, ds = image_set
    src = ds.get("train", "image")
    order = np.random.default_rng(0).permutation(len(src))[:90]

    def run(seed, workers, train=True):
        return [(i, x) for i, x in image_batches(src, order, 32, train=train, seed=seed,
                                                  num_workers=workers)]

    a, b, c, w = run(5, 0), run(5, 0), run(6, 0), run(5, 2)
    assert [i.tolist() for i, _ in a] == [order[s:s + 32].tolist() for s in (0, 32, 64)]
    for (_, x), (_, y), (_, z) in zip(a, b, w):
        assert torch.equal(x, y) and torch.equal(x, z)      # same seed: same crops and flips
    assert any(not torch.equal(x, y) for (_, x), (_, y) in zip(a, c))   # another seed
    ev = run(5, 0, train=False)
    assert any(not torch.equal(x, y) for (_, x), (_, y) in zip(a, ev))  # train != eval crops
    np.testing.assert_allclose(ev[0][1].numpy(),
                               src.transform.normalize(src.items(order[:32])), atol=1e-6)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        list(image_batches(src, order, 8, num_workers=-1))


# ------------------------------------------------------------------------------ wiring
def test_arrays_and_array_sources_give_the_same_codes_and_streamed_statistics():
    """A uint8 array and the same images as a source go through the same batches: same
    standardisation (per channel, streamed), same codes; the statistics equal NumPy's."""
    rng = np.random.default_rng(0)
    n = 120
    Y = np.eye(3)[np.arange(n) % 3]
    imgs = (rng.integers(0, 120, size=(n, 3, 12, 12)) + 40 * Y.argmax(1)[:, None, None, None]
            * np.array([1, 0, 2])[None, :, None, None]).astype(np.uint8)
    T = Y @ rng.standard_normal((3, 10)) + 0.3 * rng.standard_normal((n, 10))
    kw = dict(image_backbone="mlp", image_hidden=(16,), text_hidden=16, n_epochs=2,
              batch_size=40, device="cpu")
    a = TAADCMH(8, random_state=0, **kw).fit(imgs, T, Y)
    src = ArrayImageSource(imgs, transform=ImageTransform(random_crop=False, random_flip=False))
    b = TAADCMH(8, random_state=0, **kw).fit(src, T, Y)
    x64 = imgs.astype(np.float64)
    np.testing.assert_allclose(a.input_means_[0].ravel(), x64.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(a.input_scales_[0].ravel(), x64.std(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(a.input_means_[0], b.input_means_[0])
    for m in ("image", "text"):
        np.testing.assert_array_equal(a.learned_codes(m), b.learned_codes(m))
    np.testing.assert_array_equal(a.encode(imgs, "image"), b.encode(src, "image"))
    np.testing.assert_array_equal(a.encode(src, "image"), a.encode(imgs, "image"))


def test_standardising_images_does_not_copy_them_as_floats():
    """TA-ADCMH's per-channel statistics of uint8 images are streamed: no float copy of the
    image array (the former float64 temporaries took 8 times the images' bytes)."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 100, size=(3000, 3, 24, 24), dtype=np.uint8)
    imgs[1500:] += np.uint8(150)            # batches of very different means (12 batches)
    h = TAADCMH(8, device="cpu")
    tracemalloc.start()
    h._fit_standardization([imgs, np.zeros((3000, 2))])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert h.input_means_[0].shape == (3, 1, 1)
    assert peak < imgs.nbytes / 4, (peak, imgs.nbytes)
    x64 = imgs.astype(np.float64)           # the streamed statistics are the exact ones
    np.testing.assert_allclose(h.input_means_[0].ravel(), x64.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(h.input_scales_[0].ravel(), x64.std(axis=(0, 2, 3)), rtol=1e-6)
    # a given normalisation replaces the standardisation: nothing is computed
    src = ArrayImageSource(imgs, transform=ImageTransform(**NORM))
    h._fit_standardization([src, np.zeros((3000, 2))])
    assert h.input_means_[0] is None and h.image_transforms_[0] == src.transform
    # ... and so does the normalisation of loaded weights (in 0-255 pixel units), also for
    # arrays; a source keeps its geometry
    from cmhash.deep.normalization import TORCHVISION_IMAGENET
    h._weights_normalization = lambda X: TORCHVISION_IMAGENET
    for X in (imgs[:10], ArrayImageSource(imgs[:10], transform=ImageTransform(size=20))):
        h._fit_standardization([X, np.zeros((10, 2))])
        mean, std = TORCHVISION_IMAGENET.pixel_stats(X.shape[1:])
        np.testing.assert_array_equal(h.input_means_[0], mean)
        got = h._prepare(X, 0)
        (_, xb), = list(iterate_image_batches(got, [np.arange(4)]))
        ref = TORCHVISION_IMAGENET.apply(got.with_transform(ImageTransform(size=got.shape[-1]))
                                         .items(np.arange(4)))
        np.testing.assert_allclose(xb.numpy(), ref, atol=1e-4)
    t = ImageTransform.from_input_normalization(TORCHVISION_IMAGENET)
    assert (t.size, t.resize, t.resize_mode, t.scale) == (224, 256, "shorter", 1.0)
    x = imgs[:3, :, :20, :20].astype(np.float32)
    np.testing.assert_allclose(t.normalize(x), TORCHVISION_IMAGENET.apply(x), atol=1e-5)


@pytest.fixture(scope="module")
def fitted(image_set):
    """SDCH and TA-ADCMH fitted on the JPEG files (once for the tests below)."""
    _, ds = image_set
    models = {}
    for method in ("sdch", "ta-adcmh"):
        h = make_hasher(method, n_bits=16, random_state=0, device="cpu", **FAST[method])
        models[method] = h.fit(*ds.views("train"), ds.labels_of("train"))
    return models


@pytest.mark.parametrize("method", ["sdch", "ta-adcmh"])
def test_files_to_codes_retrieve_above_chance(image_set, fitted, method, tmp_path):
    """manifest -> lazy JPEG files -> DataLoader -> fit -> encode -> evaluate."""
    _, ds = image_set
    h = fitted[method]
    assert h.image_transforms_[0] == ds.modalities["image"].transform
    chance = _chance(ds)
    for database in ("hashed", "learned"):
        res = evaluate_hasher(h, ds, database=database)
        for task in ("i2t", "t2i"):
            assert res["tasks"][task]["map"] > chance + 0.25, (database, task, res, chance)
    # the saved model keeps the transform and encodes the same files identically
    q = ds.get("query", "image")
    loaded = cmhash.base.load(h.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(loaded.encode(q, "image"), h.encode(q, "image"))
    # a query source with another geometry gets the model's transform
    other = q.with_transform(ImageTransform(size=12))
    np.testing.assert_array_equal(h.encode(other, "image"), h.encode(q, "image"))


def test_fit_on_files_is_seeded_and_worker_independent(image_set):
    _, ds = image_set
    small = ds.subset_train(96, random_state=0)
    kw = dict(FAST["sdch"], n_epochs=2)
    codes = []
    for seed, workers in ((3, 0), (3, 2), (4, 0)):
        h = make_hasher("sdch", n_bits=16, random_state=seed, device="cpu", num_workers=workers,
                        **kw)
        h.fit(*small.views("train"), small.labels_of("train"))
        codes.append((h.learned_codes("image"), h.encode(ds.get("query", "image"), "image")))
    np.testing.assert_array_equal(codes[1][0], codes[0][0])     # same seed: same codes,
    np.testing.assert_array_equal(codes[1][1], codes[0][1])     # whatever the workers
    assert not np.array_equal(codes[2][0], codes[0][0])         # another seed


def test_vocabulary_saved_with_the_model_encodes_raw_captions(image_set, fitted, tmp_path):
    manifest, ds = image_set
    h = fitted["sdch"]
    with pytest.raises(TypeError, match="no text vocabulary"):
        h.encode(["red disc"], "text")
    h.set_text_vocabulary(ds.text_vocabulary)
    loaded = cmhash.base.load(h.save(tmp_path / "m.npz"))
    assert loaded.text_vocabulary_.words_ == ds.text_vocabulary.words_
    rows = [ln.split(",")[1] for ln in manifest.read_text().splitlines()[1:]]
    captions = [rows[i] for i in ds.indices("query")]
    np.testing.assert_array_equal(loaded.encode(captions, "text"),
                                  h.encode(ds.get("query", "text"), "text"))
    # the model's vocabulary rebuilds the same text modality from the manifest
    again = load_dataset(manifest, text_vocabulary=loaded.text_vocabulary_, image_size=16)
    assert (again.modalities["text"] != ds.modalities["text"]).nnz == 0
    with pytest.raises(ValueError, match="the vocabulary has 3 words"):
        h.set_text_vocabulary(TextVocabulary().fit(["aa bb cc"]))


@pytest.mark.filterwarnings("ignore::cmhash._validation.DegenerateCodesWarning")
def test_cli_fits_and_encodes_an_image_manifest(image_set, tmp_path):
    from cmhash.cli import main
    manifest, ds = image_set
    model, out = tmp_path / "m.npz", tmp_path / "q.npz"
    params = ["image_backbone=mlp", "image_hidden=16,", "text_hidden=16,", "feature_dim=16",
              "n_epochs=1", "batch_size=64", "device=cpu"]
    assert main(["fit", "--method", "sdch", "--data", str(manifest), "--bits", "8",
                 "--image-size", "16", "--out", str(model), "--quiet"]
                + [a for p in params for a in ("--param", p)]) == 0
    h = cmhash.base.load(model)
    assert h.text_vocabulary_.words_ == ds.text_vocabulary.words_
    assert h.image_transforms_[0] == ImageTransform(size=16, resize=18)
    for modality in ("image", "text"):
        assert main(["encode", "--model", str(model), "--data", str(manifest), "--split",
                     "query", "--modality", modality, "--out", str(out), "--quiet"]) == 0
        with np.load(out) as z:
            assert int(z["n_bits"]) == 8 and z["ids"].size == 40


# ------------------------------------------------------------------------------ slow checks
#: 224 x 224 images, the papers' backbones trained from scratch (no weights are downloaded) for
#: 6 epochs on 100 items: SDCH as in the paper but without the warm-up (every network trains
#: in every epoch), TA-ADCMH-II (one couple of networks) with per-row likelihood weights
PAPER_SIZE = {
    "sdch": dict(image_backbone="alexnet", fc_dim=256, text_hidden=(64,), feature_dim=32,
                 feature_bound="tanh", batch_size=16, n_epochs=6, warmup=False),
    "ta-adcmh": dict(image_backbone="cnnf", fc_dim=256, text_hidden=64, batch_size=16,
                     n_epochs=6, regression="none", normalize_likelihood=True,
                     refresh_buffers=True, lr=1e-3, lambda1=0.01, beta1=0.01, mu1=0.01,
                     nu1=1e-3)}


@pytest.mark.slow
@pytest.mark.parametrize("method,backbone", [("sdch", "alexnet"), ("ta-adcmh", "cnnf")])
def test_paper_size_images_with_cnn_backbones(tmp_path, method, backbone):
    """The file pipeline at the papers' input sizes: 224 x 224 JPEG files, resized to 256 and
    cropped to 227 (AlexNet) / 224 (CNN-F), through the DataLoader with 2 workers.

    Measured (2 shared cores, 12 and 8 minutes): SDCH I->T 0.359, T->I 0.498; TA-ADCMH-II
    I->T 0.357, T->I 0.405; chance 0.318 (single-label, 3 classes). Networks trained from
    scratch for 6 epochs learn little from the images; the test checks the wiring at this
    size and that retrieval is above chance."""
    manifest = write_synthetic_image_folder(tmp_path / "big", 130, image_size=224, n_classes=3,
                                            n_query=30, multilabel_rate=0.0, random_state=1)
    tf = ImageTransform.for_backbone(backbone, **NORM)
    ds = load_image_text_dataset(manifest, transform=tf)
    h = make_hasher(method, n_bits=16, random_state=0, device="cpu", num_workers=2,
                    **PAPER_SIZE[method])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateCodesWarning)
        h.fit(*ds.views("train"), ds.labels_of("train"))
    assert tuple(h.n_features_[0]) == (3, tf.size, tf.size)
    assert h.architectures_[next(iter(h.architectures_))]["kind"] == backbone
    res = evaluate_hasher(h, ds, database="hashed")
    maps = [res["tasks"][t]["map"] for t in ("i2t", "t2i")]
    chance = _chance(ds)
    assert min(maps) > chance and np.mean(maps) > chance + 0.03, (maps, chance)


@pytest.mark.slow
def test_fitting_sdch_on_2000_images_keeps_peak_memory_bounded(tmp_path):
    """Peak RSS of fitting SDCH (AlexNet) on 2,000 generated 224 x 224 JPEG files stays below
    1.5 x the images' uint8 bytes plus the model, the model's footprint measured as the peak of
    the same fit on one batch (parameters, gradients, Adam moments, one batch's activations and
    the interpreter: what does not grow with the number of images)."""
    script = REPO / "benchmarks" / "image_memory.py"
    out = tmp_path / "mem.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(script), "--n", "2000", "--dir", str(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["peak_rss_bytes"] < doc["bound_bytes"], doc
