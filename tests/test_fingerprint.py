"""Model and training-data fingerprints, and checked model files (every tampered case is a
clear error naming the field)."""
import json
import warnings

import numpy as np
import pytest

from cmhash import evaluate_hasher
from cmhash.base import get_method, load, make_hasher
from cmhash.data import load_dataset
from cmhash.fingerprint import DATA_VALUES_HASHED, sample_rows, training_data_fingerprint
from conftest import HAS_TORCH, make_structured, quick_hasher, quick_methods

#: every registered method this installation can run, with the fast settings shared with
#: test_base (conftest.QUICK; a method without an entry fails there and here)
METHODS = quick_methods()


def _fit(name, seed=0, data=None, **kw):
    X, T, Y = data if data is not None else make_structured(80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quick_hasher(name, random_state=seed, **kw).fit(X, T, Y)


@pytest.mark.parametrize("name", METHODS)
def test_model_fingerprint_is_stable_and_content_sensitive(name, tmp_path):
    """Same data + params + seed -> same fingerprint; save/load keeps it; another seed, an
    edited learned array or parameter changes it; timings and verbose do not count."""
    m = _fit(name)
    fp = m.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert _fit(name).fingerprint == fp
    loaded = load(m.save(tmp_path / "m.npz"))
    assert loaded.fingerprint == fp
    assert _fit(name, seed=1).fingerprint != fp
    m.train_seconds_ += 5.0
    m.verbose = True
    assert m.fingerprint == fp
    B = m.codes_ if not isinstance(m.codes_, list) else m.codes_[0]
    B[0, 0] = -B[0, 0]
    assert m.fingerprint != fp


@pytest.mark.parametrize("name", METHODS)
def test_state_shapes_declare_every_learned_array(name):
    """The generic load checks cover each method: every learned array (outside codes_ and
    the deep networks, which torch checks against their architecture) is declared in the
    class's state_shapes, so a shape that does not fit is caught by the same code."""
    m = _fit(name)
    cls = get_method(name)
    declared = {k.split("[")[0].rstrip("?") for k in m._state_shapes()} | {"codes_"}
    exempt = {"network_states_"} | set(cls.diagnostic_state)
    for key, value in vars(m).items():
        if not key.endswith("_") or key.startswith("_") or key in exempt:
            continue
        holds_array = (isinstance(value, np.ndarray) or hasattr(value, "get_state")
                       or (isinstance(value, (list, tuple)) and any(
                           isinstance(v, np.ndarray) or hasattr(v, "get_state") for v in value)))
        if holds_array:
            assert key in declared, f"{name}: {key} has no declared shape"


def _rewrite(path, out, edit):
    """Copy the model file ``path`` to ``out`` after ``edit(arrays, header)``."""
    with np.load(path) as f:
        arrays = dict(f)
    original = arrays["__header__"]
    header = json.loads(bytes(original).decode())
    edit(arrays, header)
    if arrays["__header__"] is original:           # else the edit wrote its own bytes
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(out, **arrays)
    return out


def _set(key, where, value):
    """An edit writing ``value`` at ``where`` of the array ``key``."""
    def edit(a, h):
        x = a[key].copy()
        x[where] = value
        a[key] = x
    return edit


_nan_projection = _set("projections_/1", (3, 2), np.nan)
_inf_anchor = _set("kernels_/0/anchors", (0, 0), np.inf)
_codes_values = _set("codes_", (2, 1), 0)


def _cut_columns(a, h):
    a["projections_/0"] = a["projections_/0"][:, :8]


def _negative_sigma(a, h):
    a["kernels_/0/sigma"] = -a["kernels_/0/sigma"]


def _edit_bits(a, h):
    h["params"]["n_bits"] = 32


def _drop_codes(a, h):
    del a["codes_"]


def _drop_codes_entry(a, h):
    del a["codes_"]
    del h["state"]["codes_"]


def _garbage_header(a, h):
    a["__header__"] = np.frombuffer(b"\x00garbage{", dtype=np.uint8)


def _bad_bits_type(a, h):
    h["params"]["n_bits"] = "sixteen"


def _anchors_columns(a, h):
    a["kernels_/1/anchors"] = a["kernels_/1/anchors"][:, :5]


def _latent_rows(a, h):
    a["latent_"] = a["latent_"][:50]


def _edited_value(a, h):
    a["latent_"] = a["latent_"] * 1.001


def _state_not_a_dict(a, h):
    h["state"] = []


@pytest.mark.parametrize("edit, message", [
    (_cut_columns, r"projections_\[0\] has shape \(20, 8\) but \(20, 16\) is expected: its "
                   r"dimension 1 must be r = 16 \(n_bits = 16"),
    (_nan_projection,
     r"projections_\[1\] holds 1 NaN or infinite value\(s\) \(first at \(3, 2\)\)"),
    (_negative_sigma, r"kernels_\[0\]: sigma must be a positive finite number"),
    (_edit_bits, r"codes_ has shape \(80, 16\) but \(80, 32\) is expected: its dimension 1 "
                 r"must be r = 32 \(n_bits = 32"),
    (_drop_codes, r"the array 'codes_' of the learned state codes_ is missing"),
    (_drop_codes_entry, r"the learned state codes_ is missing"),
    (_garbage_header, r"its header is not JSON text \(.*\); the file is damaged or was edited"),
    (_bad_bits_type, r"parameter n_bits: n_bits must be"),
    (_anchors_columns, r"kernels_\[1\]: anchors has shape \(20, 5\) but \(q >= 1, "
                       r"n_features_in = 15\) is expected"),
    (_inf_anchor, r"kernels_\[0\]\.anchors holds 1 NaN or infinite value"),
    (_codes_values, r"codes_ must hold only -1 and \+1, found 0 at \[2, 1\]"),
    (_latent_rows, r"latent_ has shape \(50, 16\) but \(80, 16\) is expected: its dimension 0 "
                   r"must be n = 80 \(dimension 0 of codes_\)"),
    (_edited_value, r"its content does not match the fingerprint in its header .*: the file was "
                    r"modified after it was saved"),
    (_state_not_a_dict, r"its header's 'state' must be a dict"),
])
def test_tampered_model_files_are_clear_errors(tmp_path, edit, message):
    X, T, Y = make_structured(80)
    m = make_hasher("batch", n_bits=16, n_anchors=20, n_iter=1, random_state=0).fit(X, T, Y)
    path = m.save(tmp_path / "m.npz")
    bad = _rewrite(path, tmp_path / "bad.npz", edit)
    with pytest.raises(ValueError, match=r"bad\.npz is not a valid cmhash model file: " + message):
        load(bad)
    assert load(path).fingerprint == m.fingerprint      # the original still loads


def test_deep_network_states_that_do_not_fit_are_named(tmp_path):
    if not HAS_TORCH:
        pytest.skip("needs torch")
    m = _fit("sdch")
    path = m.save(tmp_path / "m.npz")

    def cut(a, h):
        a["network_states_/h.net.0.weight"] = a["network_states_/h.net.0.weight"][:4]
    with pytest.raises(ValueError, match=r"(?s)saved networks \(network_states_\) do not load: "
                                         r".*size mismatch"):
        load(_rewrite(path, tmp_path / "bad.npz", cut))

    def nan(a, h):
        w = a["network_states_/f.net.0.weight"].copy()
        w[1, 1] = np.nan
        a["network_states_/f.net.0.weight"] = w
    with pytest.raises(ValueError, match=r"network_states_\['f\.net\.0\.weight'\] holds 1 NaN"):
        load(_rewrite(path, tmp_path / "bad.npz", nan))


def test_save_refuses_a_model_that_would_not_load(tmp_path):
    """n_bits changed after fit: the file would hold 16-bit arrays under n_bits=32."""
    X, T, Y = make_structured(80)
    m = make_hasher("batch", n_bits=16, n_anchors=20, n_iter=1, random_state=0).fit(X, T, Y)
    m.set_params(n_bits=32)
    with pytest.raises(ValueError, match=r"cannot save this BATCH: codes_ has shape \(80, 16\) "
                                         r"but \(80, 32\) is expected"):
        m.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_training_data_fingerprint_sampling_and_parts():
    X, T, Y = make_structured(80)
    X = X.astype(np.float32)               # the same values in float32 and float64: one digest
    fp = training_data_fingerprint([X, T], Y)
    assert fp == training_data_fingerprint([X.astype(np.float64), T], Y)
    X2 = X.copy()
    X2[40, 3] += 1.0
    fp2 = training_data_fingerprint([X2, T], Y)
    assert fp2["digest"] != fp["digest"] and fp2["views"][0] != fp["views"][0]
    assert fp2["views"][1] == fp["views"][1] and fp2["labels"] == fp["labels"]
    # large inputs: evenly spaced rows (first and last included) up to the value budget
    rows = sample_rows(10**6, 512)
    assert rows[0] == 0 and rows[-1] == 10**6 - 1 and rows.size * 512 <= DATA_VALUES_HASHED
    assert sample_rows(1000, 512) is None


def test_learned_database_evaluation_refuses_a_model_fitted_on_other_data():
    """A model fitted on other data gave chance mAP without a warning; now a ValueError
    naming what differs. The model's own data evaluates as before."""
    ds = load_dataset("synthetic:n=300,query=60", random_state=0)
    other = load_dataset("synthetic:n=300,query=60,seed=5", random_state=0)
    m = make_hasher("batch", n_bits=16, n_anchors=30, n_iter=2, random_state=0)
    m.fit_views(ds.views("train"), ds.labels_of("train"), names=ds.modality_names)
    res = evaluate_hasher(m, ds, timing=False)
    assert res["tasks"]["i2t"]["map"] > 0.5
    with pytest.raises(ValueError, match=r"the model was fitted on other data than this "
                                         r"dataset's train split \(the 'image' features and the "
                                         r"'text' features and the labels differ"):
        evaluate_hasher(m, other, timing=False)
    # a different split of the same pool: other training items
    resplit = load_dataset("synthetic:n=300,query=60", random_state=1)
    with pytest.raises(ValueError, match="fitted on other data"):
        evaluate_hasher(m, resplit, timing=False)
    assert evaluate_hasher(m, other, database="hashed", timing=False)["tasks"]["i2t"]["map"] > 0
    del m.training_data_fingerprint_                    # a model saved by an older cmhash
    with pytest.warns(UserWarning, match="no training-data fingerprint"):
        evaluate_hasher(m, ds, timing=False)


def test_unpaired_learned_evaluation_checks_the_labels():
    from cmhash.protocol import run_evaluation
    ds = load_dataset("synthetic:n=300,query=60", random_state=0)
    doc = run_evaluation("amsh", ds, bits=[8], seeds=1, unpaired=True, verbose=False,
                         params=dict(n_anchors=20, n_iter=1))
    assert doc["runs"][0]["map_i2t"] > 0
    views, labels = ds.unpaired(random_state=0)
    m = make_hasher("amsh", n_bits=8, n_anchors=20, n_iter=1, random_state=0)
    m.fit_unpaired(views, labels, names=ds.modality_names)
    _, other_labels = ds.unpaired(random_state=3)
    with pytest.raises(ValueError, match="the labels differ"):
        evaluate_hasher(m, ds, unpaired_labels=other_labels, timing=False)


def test_shape_dimensions_may_list_the_sizes_allowed():
    """Image standardisation arrays broadcast over (C, H, W): (C, 1, 1) or (C, H, W)."""
    from cmhash._state_check import _Dims
    want = (3, (1, 16), (1, 16))
    _Dims().check("input_means_[0]", (3, 1, 1), want)
    _Dims().check("input_means_[0]", (3, 16, 16), want)
    with pytest.raises(ValueError, match=r"input_means_\[0\] has shape \(3, 8, 8\) but "
                                         r"\(3, \(1, 16\), \(1, 16\)\) is expected"):
        _Dims().check("input_means_[0]", (3, 8, 8), want)
