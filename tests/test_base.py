"""Estimator API: parameters, validation errors, determinism, save/load, registry."""
import numpy as np
import pytest

import cmhash
from cmhash.base import available_methods, get_method, load, make_hasher
from cmhash.methods.batch import BATCH
from conftest import QUICK, make_structured, quick_hasher, quick_methods


def _small(**kw):
    return BATCH(8, n_anchors=(30, 30), random_state=0, **kw)


def test_get_set_params_round_trip():
    m = BATCH(16, omega=0.5)
    p = m.get_params()
    assert p["n_bits"] == 16 and p["omega"] == 0.5 and "random_state" in p
    m.set_params(omega=0.1)
    assert m.omega == 0.1
    with pytest.raises(ValueError, match="invalid parameter 'omgea'"):
        m.set_params(omgea=1)
    assert BATCH(**p).get_params() == p


@pytest.mark.parametrize("bits", [0, -3])
def test_bad_bits(bits):
    X, T, Y = make_structured(100)
    with pytest.raises(ValueError, match="n_bits must be a positive integer"):
        BATCH(bits).fit(X, T, Y)


def test_input_errors_name_the_problem():
    X, T, Y = make_structured(100)
    with pytest.raises(ValueError, match="same number of samples"):
        _small().fit(X, T[:90], Y)
    with pytest.raises(ValueError, match="labels has 90 rows"):
        _small().fit(X, T, Y[:90])
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _small().fit(Xn, T, Y)
    Ye = np.hstack([Y, np.zeros((100, 1))])
    with pytest.raises(ValueError, match="empty class"):
        _small().fit(X, T, Ye)
    with pytest.raises(ValueError, match="omega must be >= 0"):
        BATCH(8, omega=-1).fit(X, T, Y)
    m = _small().fit(X, T, Y)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        m.encode(X, "audio")
    with pytest.raises(ValueError, match="have shape"):
        m.encode(T, "image")
    with pytest.raises(ValueError, match="needs paired training data"):
        _small().fit_unpaired([X, T], [Y, Y])
    with pytest.raises(RuntimeError, match="not fitted"):
        BATCH(8).encode(X, "image")


def test_class_index_labels_are_accepted():
    X, T, Y = make_structured(120, multilabel=0)
    idx = Y.argmax(axis=1) + 1  # MATLAB-style 1-based class index
    a = _small().fit(X, T, Y).learned_codes("text")
    b = _small().fit(X, T, idx).learned_codes("text")
    assert np.array_equal(a, b)


def test_same_seed_same_codes_different_seed_different_codes():
    X, T, Y = make_structured(150)
    a = _small().fit(X, T, Y)
    b = _small().fit(X, T, Y)
    c = BATCH(8, n_anchors=(30, 30), random_state=1).fit(X, T, Y)
    assert np.array_equal(a.learned_codes("image"), b.learned_codes("image"))
    assert np.array_equal(a.encode(X, "image"), b.encode(X, "image"))
    assert not np.array_equal(a.learned_codes("image"), c.learned_codes("image"))


def test_save_load_round_trip_without_pickle(tmp_path):
    X, T, Y = make_structured(150)
    m = _small().fit(X, T, Y)
    path = m.save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as f:  # loads without pickle
        assert "__header__" in f.files
    m2 = load(path)
    assert type(m2) is BATCH and m2.get_params() == m.get_params()
    for mod, F in (("image", X), ("text", T)):
        assert np.array_equal(m.encode(F, mod), m2.encode(F, mod))
    assert np.array_equal(m.learned_codes("text"), m2.learned_codes("text"))
    assert m2.objective_ == m.objective_
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a cmhash model"):
        load(tmp_path / "other.npz")


def test_registry():
    assert get_method("batch") is BATCH
    assert "batch" in available_methods()
    assert isinstance(make_hasher("batch", n_bits=8), BATCH)
    with pytest.raises(ValueError, match="unknown method"):
        get_method("nope")


def test_importing_cmhash_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, cmhash, cmhash.base, cmhash.methods.batch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert cmhash.__version__


def test_encode_works_in_bounded_chunks_with_identical_codes(monkeypatch):
    import tracemalloc
    import scipy.sparse as sp
    import cmhash.base as base

    X, T, Y = make_structured(300)
    h = BATCH(16, n_anchors=(200, 200), random_state=0).fit(X, T, Y)
    whole = h.encode(X, "image")
    assert base.encode_chunk_rows(X.shape[1:]) >= X.shape[0]  # default: one chunk here
    monkeypatch.setattr(base, "ENCODE_CHUNK_ROWS", 7)   # 300 rows -> 43 chunks, last one short
    assert base.encode_chunk_rows(X.shape[1:]) == 7
    assert np.array_equal(h.encode(X, "image"), whole)
    assert np.array_equal(h.encode(sp.csr_matrix(X), "image"), whole)
    # elements bound: wide samples get fewer rows per chunk
    monkeypatch.setattr(base, "ENCODE_CHUNK_ELEMENTS", 5 * X.shape[1])
    assert base.encode_chunk_rows(X.shape[1:]) == 5
    assert np.array_equal(h.encode(X, "image"), whole)

    # memory: 20,000 items through 200 anchors make 16 MB of float32 kernel features at once
    # (the kernel's float64 distances are computed in cache-sized blocks; 22.6 MB traced peak
    # measured); in chunks of 1,000 rows one chunk's features (a few MB) remain
    big = np.repeat(X, 67, axis=0)[:20000]
    monkeypatch.setattr(base, "ENCODE_CHUNK_ELEMENTS", 1 << 24)
    monkeypatch.setattr(base, "ENCODE_CHUNK_ROWS", 1000)
    tracemalloc.start()
    codes = h.encode(big, "image")
    chunked_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    monkeypatch.setattr(base, "ENCODE_CHUNK_ROWS", 10 ** 9)
    tracemalloc.start()
    assert np.array_equal(h.encode(big, "image"), codes)
    whole_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert chunked_peak < 8e6 and whole_peak > 16e6


def test_degenerate_learned_codes_warn_and_healthy_ones_do_not():
    import warnings
    from cmhash import DegenerateCodesWarning
    from cmhash._validation import warn_if_degenerate_codes

    rng = np.random.default_rng(0)
    healthy = np.where(rng.standard_normal((50, 16)) > 0, 1, -1).astype(np.int8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateCodesWarning)
        warn_if_degenerate_codes(healthy, "healthy")            # no constant bit
        half_minus = healthy.copy()
        half_minus[:, :7] = 1                                   # 7 of 16 constant: below half
        warn_if_degenerate_codes(half_minus, "seven constant")
        X, T, Y = make_structured(200)
        _small().fit(X, T, Y)                                   # a normal fit stays silent
    half = healthy.copy()
    half[:, :8] = -1
    with pytest.warns(DegenerateCodesWarning, match="8 of 16 bits .* only 8 bits carry information"):
        warn_if_degenerate_codes(half, "half")
    with pytest.warns(DegenerateCodesWarning, match="all training items share one code"):
        warn_if_degenerate_codes(np.ones((50, 16), np.int8), "collapsed")

    # the fit path: a hasher whose learned codes collapsed names the method and the modality
    h = _small().fit(X, T, Y)
    h.codes_ = [np.ones((200, 8), np.int8), h.codes_[1] if isinstance(h.codes_, list) else h.codes_]
    with pytest.warns(DegenerateCodesWarning, match=r"BATCH learned codes \[image\]"):
        h._check_learned_codes()


def test_fit_reports_a_collapsed_training_run():
    from cmhash import DegenerateCodesWarning

    class CollapsingBATCH(BATCH):
        def _fit(self, views, Y, rng):
            super()._fit(views, Y, rng)
            codes = self.codes_
            self.codes_ = ([np.ones_like(B) for B in codes] if isinstance(codes, list)
                           else np.ones_like(codes))

    X, T, Y = make_structured(200)
    with pytest.warns(DegenerateCodesWarning, match="CollapsingBATCH learned codes") as rec:
        CollapsingBATCH(8, n_anchors=(30, 30), random_state=0).fit(X, T, Y)
    # the warning points at the caller's fit line, not at cmhash internals
    assert {w.filename for w in rec if w.category is DegenerateCodesWarning} == {__file__}


def test_finite_check_in_blocks_finds_every_bad_value(monkeypatch):
    import cmhash._validation as v

    X = np.zeros((50, 4))
    X[49, 3], X[0, 0], X[20, 1] = np.inf, np.nan, -np.inf
    monkeypatch.setattr(v, "FINITE_CHECK_ELEMENTS", 12)     # blocks of 3 rows
    with pytest.raises(ValueError, match=r"X contains 3 NaN or infinite value\(s\)"):
        v.check_features(X, "X")
    X[0, 0], X[20, 1] = 0, 0                                # only the last row's inf is left
    with pytest.raises(ValueError, match=r"contains 1 NaN"):
        v.check_features(X, "X")
    X[49, 3] = 1.0
    assert v.check_features(X, "X") is not None


def test_negative_random_state_is_named():
    # was: "expected non-negative integer" raised from inside numpy's SeedSequence
    X, T, Y = make_structured(100)
    with pytest.raises(ValueError, match="random_state must be a non-negative integer, got -1"):
        BATCH(8, n_anchors=(30, 30), random_state=-1).fit(X, T, Y)
    from cmhash.metrics import mean_average_precision
    B = np.where(X[:, :8] > 0, 1, -1)
    with pytest.raises(ValueError, match="random_state must be a non-negative integer"):
        mean_average_precision(B, B, Y, Y, ties="random", random_state=-1)


@pytest.mark.parametrize("name", ["batch", "ascmh", "asfoh", "amsh"])
def test_complex_inputs_and_zero_class_labels_are_refused(name):
    # complex features were cast to float with the imaginary part silently dropped; labels
    # with no class column crashed inside the methods (IndexError in ASCMH, a numpy reduction
    # error in ASFOH) or fitted silently (BATCH, AMSH)
    import scipy.sparse as sp
    X, T, Y = make_structured(60)
    m = make_hasher(name, n_bits=8, n_anchors=20, n_iter=1, random_state=0)
    with pytest.raises(TypeError, match="features of modality 'image' must be real-valued"):
        m.fit(X + 1j, T, Y)
    with pytest.raises(TypeError, match="must be real-valued"):
        m.fit(sp.csr_matrix(X + 1j), T, Y)
    with pytest.raises(TypeError, match="labels must be real-valued"):
        m.fit(X, T, Y + 0j)
    with pytest.raises(ValueError, match="labels has no class columns"):
        m.fit(X, T, np.zeros((60, 0)))
    m.fit(X, T, Y)
    with pytest.raises(TypeError, match="must be real-valued"):
        m.encode(X + 1j, "image")


# ----------------------------------------------------------- shared estimator-layer contract
_METHODS = quick_methods()
_ANCHOR_METHODS = [m for m in _METHODS if "n_anchors" in get_method(m)._param_names()]


def test_every_registered_method_is_covered():
    """Every registered method has fast settings in conftest.QUICK (the table the
    per-method tests of test_base and test_fingerprint share)."""
    assert set(available_methods()) <= set(QUICK)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
@pytest.mark.parametrize("name", _METHODS)
def test_unlabelled_training_items_are_refused(name):
    """All-zero label rows (items with no class) were silently fitted by every method: unit-norm
    label normalisation is undefined for them and S = 2 Y~ Y~^T - 1 made them dissimilar to
    everything. fit / fit_unpaired now refuse them, naming how many and which rows."""
    X, T, Y = make_structured(80)
    Y0 = Y.copy()
    Y0[[3, 7, 11, 20, 30, 41, 50]] = 0
    with pytest.raises(ValueError, match=r"labels: 7 of 80 training items have no label "
                                         r"\(all-zero rows, e\.g\. rows 3, 7, 11, 20, 30, \.\.\.\); "
                                         r".*remove the unlabelled items"):
        quick_hasher(name).fit(X, T, Y0)
    with pytest.raises(ValueError, match="1 of 80 training items have no label"):
        quick_hasher(name).fit_views([X, T], sp_rows_zeroed(Y, [5]))
    m = quick_hasher(name).fit(X, T, Y)
    if m.supports_unpaired:
        with pytest.raises(ValueError, match=r"labels\['text'\]: 1 of 60 training items have no "
                                             r"label \(all-zero rows, e\.g\. rows 5\)"):
            quick_hasher(name).fit_unpaired([X, T[:60]], [Y, sp_rows_zeroed(Y[:60], [5])])
    # query / evaluation labels with unlabelled items are still fine (such a query has AP 0)
    from cmhash.metrics import mean_average_precision
    Bq, Bd = m.encode(X[:10], "image"), m.learned_codes("text")
    q_labels = Y[:10].copy()
    q_labels[0] = 0
    with_empty = mean_average_precision(Bq, Bd, q_labels, Y)
    rest = mean_average_precision(Bq[1:], Bd, q_labels[1:], Y)
    assert rest > 0 and with_empty == pytest.approx(rest * 9 / 10)


def sp_rows_zeroed(Y, rows):
    """``Y`` as a CSR matrix with ``rows`` set to zero (sparse labels are checked the same)."""
    import scipy.sparse as sp
    Y = Y.copy()
    Y[rows] = 0
    return sp.csr_matrix(Y)


def test_check_labels_unlabelled_rows_only_when_asked():
    from cmhash._validation import check_labels
    Y = np.array([[1, 0], [0, 0], [0, 1]])
    assert np.array_equal(check_labels(Y), Y)       # default: not a training check
    with pytest.raises(ValueError, match=r"1 of 3 training items have no label .*rows 1\)"):
        check_labels(Y, require_labelled_rows=True)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
@pytest.mark.parametrize("name", _METHODS)
def test_encode_zero_rows_and_one_dimensional_input(name):
    """encode of (0, d) was a ValueError "is empty"; now the (0, r) int8 codes, as for any other
    number of rows (CSR too). A 1-D input stays a ValueError, now naming the reshape."""
    import scipy.sparse as sp
    X, T, Y = make_structured(80)
    m = quick_hasher(name).fit(X, T, Y)
    for mod, F in (("image", X), ("text", T)):
        for empty in (F[:0], sp.csr_matrix(F[:0])):
            codes = m.encode(empty, mod)
            full = m.encode(F[:3], mod)
            assert codes.shape == (0, m.n_bits) and codes.dtype == full.dtype == np.int8
        with pytest.raises(ValueError, match=r"must be a 2-D .*array of shape \(n_samples, "
                                             r"n_features\), got a 1-D array of shape "
                                             rf"\({F.shape[1]},\); a single sample .* is "
                                             r"X\.reshape\(1, -1\)"):
            m.encode(F[0], mod)
        assert np.array_equal(m.encode(F[0].reshape(1, -1), mod), m.encode(F[:1], mod))
    fitted_bits = m.n_bits
    m.set_params(n_bits=16)          # the code length is that of the fitted model
    assert m.encode(X[:0], "image").shape == (0, fitted_bits)


_ROUND_TRIP_PARAMS = {          # list / tuple / nested values that JSON does not tell apart
    "batch": [dict(n_anchors=(30, 40)), dict(n_anchors=[30, 40]),
              dict(n_anchors=(np.int64(30), 40))],
    "ascmh": [dict(n_anchors=[30, 40], lambda_h=(0.3, 1e-5)), dict(n_anchors=(500, 1000))],
    "asfoh": [dict(n_anchors=(30, 40)), dict(n_anchors=[30, 40])],
    "amsh": [dict(n_anchors=(30, 40)), dict(n_anchors=[30, 40])],
    "scratch": [dict(n_anchors=(30, 40)), dict(n_anchors=[30, 40])],
    "dch": [dict(n_anchors=(30, 40)), dict(n_anchors=[30, 40])],
    "cmfh": [dict(image_weight=0.25)],
    "dlfh": [dict(n_samples=20)],
    "kdlfh": [dict(n_anchors=(30, 40)), dict(n_anchors=[30, 40])],
    "smfh": [dict(n_neighbors=3)], "scm-orth": [dict(ridge=1e-3)], "scm-seq": [dict(ridge=1e-3)],
    "gsph": [dict(n_anchors=(30, 40)), dict(n_anchors=[30, 40])],
    "fsh": [dict(eta=0.25, memory_limit=1e8)],
    "seph-km": [dict(n_anchors=(30, 40), precision="float64")],
    "seph-rnd": [dict(n_anchors=[30, 40])],
    "lssh": [dict(n_pca=None)], "lcmfh": [dict(image_weight=0.25)],
    "ta-adcmh": [dict(image_hidden=[16], n_anchors=(10, 20)), dict(image_hidden=(16, 8))],
    "sdch": [dict(image_hidden=[16], text_hidden=(16,)), dict(image_hidden=(16,), text_hidden=[16])],
    "dcmh": [dict(image_hidden=[16]), dict(image_hidden=(16, 8), text_hidden=[16])],
}


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
@pytest.mark.parametrize("name", _METHODS)
def test_save_load_get_params_round_trip_is_exact(name, tmp_path):
    """Tuples / lists in the parameters came back from JSON as lists, turned into tuples only
    where the default was one: SDCH image_hidden=(16,) came back [16], ASCMH n_anchors=[30, 40]
    came back (30, 40). get_params() after load now equals get_params() before save."""
    X, T, Y = make_structured(80)
    for extra in [{}] + _ROUND_TRIP_PARAMS[name]:
        m = quick_hasher(name, **extra).fit(X, T, Y)
        before = m.get_params()
        after = load(m.save(tmp_path / "m.npz")).get_params()
        assert after == before, extra
        for k in before:      # == says (1, 2) != [1, 2]; also compare the container types
            assert type(after[k]) is type(before[k]) or isinstance(before[k], np.generic), k
    # a default-constructed model's parameters too (e.g. BATCH/ASCMH n_anchors=(500, 1000))
    m = get_method(name)()
    assert m.get_params() == type(m)(**m.get_params()).get_params()


def test_path_parameters_are_written_as_strings_for_every_method(tmp_path):
    """A pathlib.Path parameter made save fail with a JSON TypeError except for the deep
    methods' own workaround; the base class now writes any os.PathLike as a string and load
    gives the Path back."""
    import json
    X, T, Y = make_structured(80)
    m = _small().fit(X, T, Y)
    m.some_path = tmp_path / "x.txt"            # a parameter of a subclass, emulated
    names = BATCH._param_names
    try:
        BATCH._param_names = classmethod(lambda cls: names() + ["some_path"])
        with np.load(m.save(tmp_path / "m.npz")) as f:
            header = json.loads(bytes(f["__header__"]).decode())
        assert header["params"]["some_path"] == str(tmp_path / "x.txt")
        from cmhash.base import _restore_param
        assert _restore_param(header["params"]["some_path"],
                              header["param_types"]["some_path"]) == tmp_path / "x.txt"
    finally:
        BATCH._param_names = names
    m.some_path = object()
    BATCH._param_names = classmethod(lambda cls: names() + ["some_path"])
    try:
        with pytest.raises(TypeError, match="cannot save parameter some_path="):
            m.save(tmp_path / "m2.npz")
    finally:
        BATCH._param_names = names


def test_models_saved_without_param_types_still_load(tmp_path):
    """Files written before the param_types header: lists become tuples where the default is."""
    import json
    X, T, Y = make_structured(80)
    m = _small().fit(X, T, Y)
    path = m.save(tmp_path / "m.npz")
    with np.load(path) as f:
        arrays = dict(f)
    header = json.loads(bytes(arrays["__header__"]).decode())
    del header["param_types"]
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    assert load(tmp_path / "old.npz").get_params() == m.get_params()


@pytest.mark.parametrize("name", _ANCHOR_METHODS)
def test_n_anchors_errors_are_the_same_in_every_method(name):
    """ASFOH raised ValueError for every bad n_anchors ('a', None included) while the others
    raised TypeError for a non-integer; TA-ADCMH accepted a 1-tuple (then an IndexError with
    input_kernel='both'). Every method now goes through _validation.check_n_anchors: TypeError
    when it is not an integer, ValueError for an integer below 1 or a wrong-length list."""
    X, T, Y = make_structured(60)
    for bad in ("a", None, 2.5, True, [10, "a"], np.array([10, 10])):
        with pytest.raises(TypeError, match="n_anchors must be an integer, got"):
            quick_hasher(name, n_anchors=bad).fit(X, T, Y)
    for bad, msg in ((0, "n_anchors must be >= 1, got 0"), (-3, "n_anchors must be >= 1, got -3"),
                     ((10, 0), "n_anchors must be >= 1, got 0"),
                     ((10,), r"n_anchors must be an int or one value per modality \(2\)"),
                     ((10, 10, 10), r"n_anchors must be an int or one value per modality \(2\)")):
        with pytest.raises(ValueError, match=msg):
            quick_hasher(name, n_anchors=bad).fit(X, T, Y)


def test_check_n_anchors():
    from cmhash._validation import check_n_anchors
    assert check_n_anchors(5, 3) == [5, 5, 5]
    assert check_n_anchors((4, np.int32(6)), 2) == [4, 6]
    with pytest.raises(ValueError, match=r"one value per modality \(3\)"):
        check_n_anchors([4, 6], 3)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
def test_single_label_column_is_class_indices():
    """An (n, 1) column of 0/1 was read as a one-class multi-hot matrix (class-0 items got no
    label at all); any (n, 1) column is now class indices, exactly as the (n,) vector."""
    from cmhash._validation import check_labels, class_indices
    col = np.array([[0], [1], [1], [0]])
    expect = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], dtype=float)
    for c in (col, col.astype(float), col.astype(bool)):
        assert np.array_equal(check_labels(c), expect)
        assert np.array_equal(class_indices(c), [0, 1, 1, 0])
    assert np.array_equal(check_labels(np.array([[3], [1]])), [[0, 1], [1, 0]])
    X, T, Y = make_structured(80, n_classes=2, multilabel=0)
    y = Y.argmax(axis=1)
    a = _small().fit(X, T, y[:, None]).learned_codes("image")
    b = _small().fit(X, T, y).learned_codes("image")
    assert _small().fit(X, T, y[:, None]).n_classes_ == 2 and np.array_equal(a, b)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
@pytest.mark.parametrize("name", _METHODS)
def test_labels_with_one_label_set_are_refused(name):
    """Every training item with the same class (or the same set of classes): every pair is
    similar, so supervised hashing has nothing to learn. BATCH and AMSH returned codes without
    a word, ASCMH / ASFOH collapsed to one or two codes (only a DegenerateCodesWarning); fit,
    fit_views and fit_unpaired now refuse such labels with a ValueError saying why."""
    X, T, Y = make_structured(60)
    for labels in (np.zeros(60, int), np.full((60, 1), 7), np.ones((60, 1)), np.ones(60, bool)):
        with pytest.raises(ValueError, match=r"labels: every training item has the same single "
                                             r"class; supervised hashing needs at least two "
                                             r"different label sets"):
            quick_hasher(name).fit(X, T, labels)
    with pytest.raises(ValueError, match=r"the same 3 classes \(multi-hot columns \[0, 1, 2\]\)"):
        quick_hasher(name).fit_views([X, T], np.ones((60, 3)))
    quick_hasher(name).fit(X, T, np.arange(60) < 1)    # two label sets (59 / 1): accepted
    m = quick_hasher(name)
    if m.supports_unpaired:
        with pytest.raises(ValueError, match="every training item has the same single class"):
            m.fit_unpaired([X, T[:50]], [np.full(60, 2), np.full(50, 2)])
        # one class per modality, but different ones: two label sets in all, accepted
        m.fit_unpaired([X, T[:50]], [np.full(60, 2), np.full(50, 3)])


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
@pytest.mark.parametrize("name", _METHODS)
def test_constant_training_modality_is_refused_naming_it(name):
    """A modality whose training rows are all identical (an all-zero sparse bag of words, a
    constant image feature): with the RBF kernel it failed with 'all training samples coincide
    with the anchors (sigma = 0)', which named neither the modality nor the cause; without the
    kernel (AMSH kernel=False, ASFOH use_kernel=False) it was fitted silently and every query of
    that modality got the same code. Both are now a ValueError naming the modality; the deep
    methods (whose networks map a constant input to one code) are checked the same way."""
    import scipy.sparse as sp
    X, T, Y = make_structured(60)
    msg = r"features of modality 'text' are the same for every training sample"
    for const in (np.full_like(T, 0.3), sp.csr_matrix(T.shape), sp.csr_matrix(np.ones(T.shape))):
        with pytest.raises(ValueError, match=msg):
            quick_hasher(name).fit(X, const, Y)
    no_kernel = {"amsh": {"kernel": False}, "asfoh": {"use_kernel": False},
                 "dch": {"kernel": False}}.get(name)
    if no_kernel is not None:
        with pytest.raises(ValueError, match=msg):
            quick_hasher(name, **no_kernel).fit(X, np.full_like(T, 0.3), Y)
    # a constant column, duplicated rows or a few all-zero rows are fine
    T2 = T.copy()
    T2[:, 0], T2[:10] = 4.0, 0.0
    quick_hasher(name).fit(X, np.vstack([T2[:30], T2[:30]]), Y)
