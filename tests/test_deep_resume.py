"""Checkpoint / resume of the deep methods (TorchHasher._epochs): a fit interrupted after an
epoch and resumed from its checkpoint equals the uninterrupted fit bit for bit on the CPU."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.deep import training  # noqa: E402
from conftest import make_structured, quick_hasher  # noqa: E402

pytestmark = [pytest.mark.deep,
              pytest.mark.filterwarnings("ignore::cmhash._validation.DegenerateCodesWarning")]

#: per method: settings with every kind of per-epoch state (dropout draws torch's generator,
#: momentum / Adam buffers, SDCH's warm-up phases and ITQ, TA-ADCMH's two tasks and cosine lr)
RESUME_SETTINGS = {
    "dcmh": dict(n_epochs=4, batch_size=16, dropout=0.2, track_objective=True),
    "ta-adcmh": dict(n_epochs=4, batch_size=16, dropout=0.2, regression="query",
                     lr_schedule="cosine", track_objective=True),
    "sdch": dict(n_epochs=4, dropout=0.2, lr_decay=0.9),
}


class Interrupted(Exception):
    pass


def _fit(name, data, **params):
    X, T, Y = data
    return quick_hasher(name, **RESUME_SETTINGS[name], **params).fit(X, T, Y)


def _interrupt_after(monkeypatch, n_saves):
    """The fit stops (as if killed) right after its ``n_saves``-th checkpoint."""
    real, calls = training.save_checkpoint, []

    def save(*args, **kwargs):
        path = real(*args, **kwargs)
        calls.append(kwargs["epoch"])
        if len(calls) == n_saves:
            raise Interrupted
        return path
    monkeypatch.setattr(training, "save_checkpoint", save)
    return calls


@pytest.mark.parametrize("name", sorted(RESUME_SETTINGS))
def test_resumed_fit_equals_uninterrupted_fit(name, tmp_path, monkeypatch):
    data = make_structured(n=70, seed=3)
    ref = _fit(name, data)
    ck = tmp_path / "ck.pt"
    calls = _interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        _fit(name, data, checkpoint=str(ck))
    assert calls == [0, 1] and ck.is_file()
    monkeypatch.undo()
    got = _fit(name, data, resume=str(ck), checkpoint=str(ck))
    ref_codes = ref.codes_ if isinstance(ref.codes_, list) else [ref.codes_]
    got_codes = got.codes_ if isinstance(got.codes_, list) else [got.codes_]
    for a, b in zip(ref_codes, got_codes):
        np.testing.assert_array_equal(a, b)
    assert ref.network_states_.keys() == got.network_states_.keys()
    for k, v in ref.network_states_.items():
        np.testing.assert_array_equal(v, got.network_states_[k], err_msg=k)
    for k, v in ref.loss_terms_.items():
        np.testing.assert_array_equal(v, got.loss_terms_[k], err_msg=k)
    np.testing.assert_array_equal(ref.objective_, got.objective_)


@pytest.mark.parametrize("name", sorted(RESUME_SETTINGS))
def test_resume_with_other_parameters_is_refused(name, tmp_path):
    data = make_structured(n=40, seed=1)
    ck = tmp_path / "ck.pt"
    X, T, Y = data
    quick_hasher(name, n_epochs=1, checkpoint=ck).fit(X, T, Y)
    assert ck.is_file()
    with pytest.raises(ValueError, match="other parameters"):
        quick_hasher(name, n_epochs=1, n_bits=6, resume=ck).fit(X, T, Y)
    with pytest.raises(ValueError, match="checkpoint not found"):
        quick_hasher(name, n_epochs=1, resume=tmp_path / "missing.pt").fit(X, T, Y)
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        quick_hasher(name, n_epochs=1, checkpoint=3).fit(X, T, Y)


# ------------------------------------------------------------------ mixed precision
@pytest.mark.parametrize("name", sorted(RESUME_SETTINGS))
def test_amp_auto_is_float32_on_the_cpu_and_bf16_trains(name):
    """On the CPU amp="auto" is off: the codes and weights of amp="off"; a forced bf16 CPU fit
    runs its forward passes in bfloat16 and still gives finite outputs and +-1 codes."""
    data = make_structured(n=50, seed=2)
    auto, off = _fit(name, data, amp="auto"), _fit(name, data, amp="off")
    np.testing.assert_array_equal(np.asarray(auto.codes_), np.asarray(off.codes_))
    for k, v in auto.network_states_.items():
        np.testing.assert_array_equal(v, off.network_states_[k], err_msg=k)
    bf16 = _fit(name, data, amp="bf16")
    codes = np.asarray(bf16.codes_)
    assert set(np.unique(codes)) <= {-1, 1}
    assert all(np.isfinite(v).all() for v in bf16.network_states_.values())
    X = data[0]
    out = bf16.network_outputs(X, "image")
    assert np.isfinite(out).all()
    # bf16 forward passes round differently from float32 ones: the weights differ
    assert any(not np.array_equal(v, off.network_states_[k])
               for k, v in bf16.network_states_.items())
    with pytest.raises(ValueError, match="amp must be"):
        _fit(name, data, amp="fp8")
