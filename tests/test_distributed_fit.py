"""BATCH fitted on Dask (cmhash.distributed.fit) gives the in-memory fit's codes."""
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

from cmhash.distributed import blocks as blocks_module  # noqa: E402
from cmhash.distributed.fit import decide_persist, fit_batch  # noqa: E402
from cmhash.methods.batch import BATCH  # noqa: E402
from cmhash.metrics import mean_average_precision  # noqa: E402
from conftest import local_dask_client, make_structured  # noqa: E402


@pytest.fixture(scope="module")
def client():
    yield from local_dask_client()


@pytest.fixture(scope="module")
def data():
    X, T, Y = make_structured(n=700, n_classes=6, d_image=24, d_text=18, seed=3)
    return X, T, Y


@pytest.fixture(scope="module")
def many_classes():
    """More classes than bits: Z is well conditioned, the CholeskyQR2 route."""
    return make_structured(n=700, n_classes=24, d_image=24, d_text=18, seed=4)


def _params():
    return dict(n_bits=16, n_anchors=(60, 80), n_iter=3, random_state=5)


def _agreement(ref, h, data):
    X, T, Y = data
    codes = np.asarray(h.codes_.compute())
    same_train = float(np.mean(codes == ref.codes_))
    q_img, q_ref = h.encode(X[:200], "image"), ref.encode(X[:200], "image")
    same_query = float(np.mean(q_img == q_ref))
    maps = [mean_average_precision(q, c, Y[:200], Y)
            for q, c in ((q_ref, ref.codes_), (q_img, codes))]
    return same_train, same_query, maps


@pytest.mark.parametrize("persist, dataset, route", [
    (True, "data", "tsqr"), (False, "data", "tsqr"), (True, "many_classes", "cholesky_qr2")])
def test_dask_batch_fit_gives_the_in_memory_codes(client, request, monkeypatch, persist,
                                                   dataset, route):
    data = request.getfixturevalue(dataset)
    X, T, Y = data
    reference = BATCH(**_params()).fit(X, T, Y)
    routes = []
    real = blocks_module._polar_via_tsqr
    monkeypatch.setattr(blocks_module, "_polar_via_tsqr",
                        lambda Zc: routes.append("tsqr") or real(Zc))
    dX = da.from_array(X, chunks=(160, -1))             # 5 uneven row blocks on 2 workers
    h = fit_batch(BATCH(**_params()), dX, T, Y, client=client, persist_features=persist)
    assert routes == (["tsqr"] * 3 if route == "tsqr" else [])   # the latent step's route
    assert isinstance(h.codes_, da.Array) and h.codes_.chunks[0] == dX.chunks[0]
    # same anchors (same seeded draw), sigma and kernel mean up to summation order
    for k, kr in zip(h.kernels_, reference.kernels_):
        assert np.array_equal(k.anchors_, kr.anchors_)
        assert k.sigma_ == pytest.approx(kr.sigma_, rel=1e-12)
        assert np.allclose(k.mean_, kr.mean_, rtol=0, atol=1e-12)
    assert np.allclose(h.objective_, reference.objective_, rtol=1e-6)
    same_train, same_query, (map_ref, map_dask) = _agreement(reference, h, data)
    print(f"persist={persist}: identical train bits {same_train:.5f}, query bits "
          f"{same_query:.5f}, mAP {map_ref:.5f} vs {map_dask:.5f}")
    assert same_train >= 0.999 and same_query >= 0.999
    assert abs(map_ref - map_dask) <= 0.002
    for W, Wr in zip(h.projections_, reference.projections_):
        assert np.allclose(W, Wr, rtol=1e-4, atol=1e-6 * np.abs(Wr).max())


def test_worker_memory_limit_below_the_features_recomputes(client):
    limit = sum(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
    assert decide_persist(limit, client) is False              # more than 1/4 of the memory
    assert decide_persist(limit // 8, client) is True
    assert decide_persist(1000, client, persist_features=False) is False


def test_dask_fit_refuses_mismatched_rows(client, data):
    X, T, Y = data
    h = BATCH(**_params())
    with pytest.raises(ValueError, match="same number of rows"):
        fit_batch(h, X, T[:-1], Y, client=client)


@pytest.mark.parametrize("regularizer", ["nuclear", "frobenius"])
def test_dask_asfoh_fit_gives_the_in_memory_codes(client, data, regularizer):
    from cmhash.distributed.fit import fit_asfoh
    from cmhash.methods.asfoh import ASFOH
    X, T, Y = data
    params = dict(n_bits=8, n_anchors=(60, 80), n_iter=3, random_state=2,
                  regularizer=regularizer)
    reference = ASFOH(**params).fit(X, T, Y)
    h = fit_asfoh(ASFOH(**params), da.from_array(X, chunks=(160, -1)), T, Y, client=client)
    assert np.allclose(h.objective_, reference.objective_, rtol=1e-6)
    # alpha comes from residuals ||phi||^2 - 2 <P, H^T phi> + ... (cancellation): the
    # reductions' summation order shows at ~1e-7 relative
    assert np.allclose(h.alpha_, reference.alpha_, rtol=1e-5)
    same_train, same_query, (map_ref, map_dask) = _agreement(reference, h, data)
    print(f"ASFOH {regularizer}: identical train bits {same_train:.5f}, query bits "
          f"{same_query:.5f}, mAP {map_ref:.5f} vs {map_dask:.5f}")
    assert same_train >= 0.999 and same_query >= 0.999
    assert abs(map_ref - map_dask) <= 0.002
