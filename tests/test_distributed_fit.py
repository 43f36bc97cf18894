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


def _assert_same_answers(label, reference, h, data):
    """Issue 15's bound: >= 99.9 % identical training and query bits, mAP within 0.002, and
    the hash functions equal up to the reductions' rounding."""
    same_train, same_query, (map_ref, map_dask) = _agreement(reference, h, data)
    print(f"{label}: identical train bits {same_train:.5f}, query bits {same_query:.5f}, "
          f"mAP {map_ref:.5f} vs {map_dask:.5f}")
    assert same_train >= 0.999 and same_query >= 0.999
    assert abs(map_ref - map_dask) <= 0.002
    for W, Wr in zip(h.projections_, reference.projections_):
        assert np.allclose(W, Wr, rtol=1e-4, atol=1e-6 * np.abs(Wr).max())


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
                        lambda Zc, *a: routes.append("tsqr") or real(Zc, *a))
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
    _assert_same_answers(f"persist={persist}", reference, h, data)


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
    _assert_same_answers(f"ASFOH {regularizer}", reference, h, data)


def test_dask_ascmh_fit_gives_the_in_memory_codes(client, data, monkeypatch, caplog):
    """ASCMH on Dask (random start V = polar(randn), R, B from the same stream; P, M, R steps
    on the client; Z by the in-memory v_step_target per block): the in-memory codes, and the
    loop reports its progress (cmhash.progress over the iterations, a log line each)."""
    import logging

    from cmhash.distributed import blocks
    from cmhash.methods.ascmh import ASCMH
    X, T, Y = data
    params = dict(n_bits=16, n_anchors=(60, 80), n_iter=3, random_state=5, lambda_h=(0.3, 0.01))
    reference = ASCMH(**params).fit(X, T, Y)
    loops = []
    real_progress = blocks.progress
    monkeypatch.setattr(blocks, "progress",
                        lambda it, **kw: loops.append((len(it), kw["desc"])) or real_progress(it, **kw))
    with caplog.at_level(logging.INFO, logger="cmhash"):
        h = ASCMH(**params).fit(da.from_array(X, chunks=(160, -1)), da.from_array(T, chunks=(160, -1)),
                                da.from_array(Y.astype(float), chunks=(160, -1)))
    assert loops == [(3, "ASCMH (Dask)")]
    assert [r.getMessage().split(":")[0] for r in caplog.records if "iteration" in r.getMessage()] \
        == [f"dask ASCMH iteration {i}/3" for i in (1, 2, 3)]
    assert np.allclose(h.objective_, reference.objective_, rtol=1e-6)
    assert np.all(np.diff(h.objective_) <= 1e-9 * abs(h.objective_[0]))   # never increases
    # (R itself is not compared: with c = 6 classes < r = 16 bits the Procrustes target has
    # rank 6 and R is free on its null space, so rounding picks among equal optima)
    assert np.allclose(h.rotation_.T @ h.rotation_, np.eye(16), atol=1e-10)
    _assert_same_answers("ASCMH", reference, h, data)
    with pytest.raises(ValueError, match="anchors='random' only"):
        ASCMH(**params, anchor_method="kmeans").fit(da.from_array(X, chunks=(160, -1)), T, Y)


def _amsh_params():
    return dict(n_bits=16, n_anchors=(60, 80), n_iter=3, n_iter_hash=3, n_init_samples=300,
                random_state=5)


def test_dask_amsh_fit_gives_the_in_memory_codes(client, data):
    """AMSH paired on Dask (hasher.fit with dask arrays): stage 1 from the in-memory row-block
    steps, stage 2 one pass per iteration; codes of both modalities and the query codes of
    the hash functions agree with the in-memory fit."""
    from cmhash.methods.amsh import AMSH
    X, T, Y = data
    reference = AMSH(**_amsh_params()).fit(X, T, Y)
    h = AMSH(**_amsh_params()).fit(da.from_array(X, chunks=(160, -1)),
                                   da.from_array(T, chunks=(160, -1)),
                                   da.from_array(Y.astype(float), chunks=(160, -1)))
    assert isinstance(h.codes_, list) and len(h.codes_) == 2
    assert np.allclose(h.objective_, reference.objective_, rtol=1e-6)
    assert np.allclose(h.objective_hash_, reference.objective_hash_, rtol=1e-5)
    for t, (name, Q) in enumerate((("image", X), ("text", T))):
        same_train = float(np.mean(np.asarray(h.codes_[t].compute()) == reference.codes_[t]))
        q, q_ref = h.encode(Q[:200], name), reference.encode(Q[:200], name)
        maps = [mean_average_precision(a, c, Y[:200], Y)
                for a, c in ((q_ref, reference.codes_[1 - t]),
                             (q, np.asarray(h.codes_[1 - t].compute())))]
        print(f"AMSH {name}: identical train bits {same_train:.5f}, query bits "
              f"{np.mean(q == q_ref):.5f}, mAP {maps[0]:.5f} vs {maps[1]:.5f}")
        assert same_train >= 0.999 and np.mean(q == q_ref) >= 0.999
        assert abs(maps[0] - maps[1]) <= 0.002


def test_dask_amsh_unpaired_fit_gives_the_in_memory_codes(client, data):
    """AMSH unpaired (fit_unpaired with dask arrays: modalities of 700 and 550 rows with their
    own labels and row chunks) equals the in-memory unpaired fit."""
    from cmhash.methods.amsh import AMSH
    X, T, Y = data
    views, labels = [X, T[150:]], [Y, Y[150:]]
    reference = AMSH(**_amsh_params()).fit_unpaired(views, labels)
    h = AMSH(**_amsh_params()).fit_unpaired(
        [da.from_array(v, chunks=(200, -1)) for v in views],
        [da.from_array(y.astype(float), chunks=(200, -1)) for y in labels])
    assert h.paired_ is False and [c.shape[0] for c in h.codes_] == [700, 550]
    assert np.allclose(h.objective_, reference.objective_, rtol=1e-6)
    for t in range(2):
        assert np.mean(np.asarray(h.codes_[t].compute()) == reference.codes_[t]) >= 0.999
    with pytest.raises(ValueError, match="kernel features"):
        AMSH(**_amsh_params(), kernel=False).fit(da.from_array(X, chunks=(200, -1)), T, Y)


def _feature_runs(stream):
    """How often each kernel-feature task (key name with the ``kernel-features`` token, one
    per row block; fused tasks carry it too) ran in a ``get_task_stream`` record."""
    from collections import Counter
    return Counter((str(t["key"][0]), t["key"][1]) for t in stream.data
                   if isinstance(t["key"], tuple) and "kernel-features" in str(t["key"][0]))


def test_worker_memory_below_the_features_recomputes_them(data, caplog):
    """Workers whose memory limit (256 KiB each) is below the kernel features (700 x 140
    float32 = 383 KiB): the fit chooses recompute by itself, the kernel-feature tasks run again
    in every pass (counted in the task stream), and the codes are the in-memory ones. On the
    module's cluster (GiBs per worker) the same fit persists them: each block computed once."""
    import logging

    import dask
    from distributed import Client, LocalCluster, get_task_stream
    X, T, Y = data
    reference = BATCH(**_params()).fit(X, T, Y)
    limit = 256 * 2**10
    assert 700 * (60 + 80) * 4 > limit
    # the limit is what the persist decision reads; the memory monitor, which would pause a
    # worker whose interpreter alone uses more than 256 KiB, is off
    off = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause",
                                                            "terminate")}
    with dask.config.set(off), caplog.at_level(logging.INFO, logger="cmhash"), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, memory_limit=limit,
                         dashboard_address=":0") as cluster, Client(cluster) as small:
        with get_task_stream(small) as stream:
            h = fit_batch(BATCH(**_params()), da.from_array(X, chunks=(160, -1)), T, Y,
                          client=small)
        codes = np.asarray(h.codes_.compute())
    assert any("recomputed each pass" in r.getMessage() for r in caplog.records)
    runs = _feature_runs(stream)
    assert len({key[1] for key in runs}) == 5             # every row block's features ...
    assert min(runs.values()) >= _params()["n_iter"]     # ... ran again in the passes
    np.testing.assert_array_equal(codes, reference.codes_)
    for W, Wr in zip(h.projections_, reference.projections_):
        assert np.allclose(W, Wr, rtol=1e-4, atol=1e-6 * np.abs(Wr).max())


def test_kernel_features_persisted_when_they_fit(client, data):
    """The module cluster's workers have GiBs: the features are persisted (auto), each block's
    features computed once; the Dask config ``cmhash.kernel-features`` overrides the choice."""
    import dask
    from distributed import get_task_stream
    X, T, Y = data
    runs = {}
    for mode in ("auto", "recompute"):
        with dask.config.set({"cmhash.kernel-features": mode}), get_task_stream(client) as s:
            fit_batch(BATCH(**{**_params(), "n_iter": 1}), da.from_array(X, chunks=(160, -1)),
                      T, Y, client=client)
        runs[mode] = _feature_runs(s)
    assert max(runs["auto"].values()) == 1                # persisted: each block once
    assert min(runs["recompute"].values()) >= 2           # recomputed in the passes
    with dask.config.set({"cmhash.kernel-features": "sometimes"}), \
            pytest.raises(ValueError, match="'auto', 'persist' or 'recompute'"):
        decide_persist(1, client)


# ------------------------------------------------- latent step at numerical rank k < r
def test_draw_blocks_gives_the_numbers_of_one_draw():
    """NumPy's Generator fills row-major: drawing (n, m) in blocks of rows gives one draw's
    numbers and leaves the Generator in the same state (the Dask completion relies on it)."""
    whole, blocked = np.random.default_rng(8), np.random.default_rng(8)
    X = whole.standard_normal((700, 5))
    Xb = blocks_module.draw_blocks(blocked, (160, 160, 3, 377), 5, None).compute()
    np.testing.assert_array_equal(Xb, X)
    assert whole.random() == blocked.random()


@pytest.mark.parametrize("k", [5, 0])
def test_dask_latent_step_completes_a_rank_deficient_z_as_in_memory(client, k):
    """A centred Z of numerical rank k < r (rank 5 of 16; Z constant): the Dask latent step
    warns as the in-memory solver does and gives its V for the same seed (the same Gaussian
    draws, Gram-Schmidt passes, CholeskyQR2 and null-space basis), consuming the same draws."""
    import warnings

    from cmhash import NumericalFallbackWarning
    from cmhash.solvers import orthogonal_zero_mean
    from test_solvers import _rank_deficient_z
    n, r = 700, 16
    Z = (_rank_deficient_z(np.random.default_rng(1), n, r, k, 3) if k
         else np.full((n, r), 2.0))
    rng_mem, rng_dask = np.random.default_rng(3), np.random.default_rng(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        V_mem = orthogonal_zero_mean(Z, rng_mem)
        V = blocks_module.latent_step(client, da.from_array(Z, chunks=(160, -1)), rng_dask)
    V = np.asarray(V.compute())
    rank_warnings = [str(w.message) for w in caught if w.category is NumericalFallbackWarning]
    assert len(rank_warnings) == 2 and all(f"numerical rank {k} < r = {r}" in m
                                           for m in rank_warnings)
    np.testing.assert_allclose(V, V_mem, rtol=0, atol=1e-8)
    assert np.allclose(V.T @ V, n * np.eye(r), atol=1e-10 * n)
    assert np.abs(V.sum(axis=0)).max() <= 1e-9 * n
    assert rng_mem.random() == rng_dask.random()              # the same number of draws


def test_dask_asfoh_fit_at_numerical_rank_below_r_gives_the_in_memory_codes(client):
    """ASFOH with 3 classes, 32 bits and 10 + 10 anchors: the in-memory fit's latent matrix has
    numerical rank 26 < 32 in its iterations (warned); the Dask fit, which refused such a Z,
    completes it from the same draws and gives the in-memory codes (issue 15's bound)."""
    import warnings

    from cmhash.distributed.fit import fit_asfoh
    from cmhash.methods.asfoh import ASFOH
    data = make_structured(n=700, n_classes=3, d_image=24, d_text=18, seed=3)
    X, T, Y = data
    params = dict(n_bits=32, n_anchors=(10, 10), n_iter=3, random_state=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = ASFOH(**params).fit(X, T, Y)
    assert any("numerical rank" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = fit_asfoh(ASFOH(**params), da.from_array(X, chunks=(160, -1)), T, Y, client=client)
    assert np.allclose(h.objective_, reference.objective_, rtol=1e-6)
    _assert_same_answers("ASFOH at rank < r", reference, h, data)
