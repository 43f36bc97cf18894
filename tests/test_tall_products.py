"""The threaded tall products of the latent steps (solvers.tall_*) and the thread helpers they
run on (_threads.leaf_map, the re-entrant single_threaded_blas)."""
import multiprocessing

import numpy as np
import pytest

import cmhash._threads as threads
import cmhash.solvers as solvers
from cmhash.solvers import (orthogonal_zero_mean, tall_cross, tall_product,
                            tall_product_and_gram)


@pytest.fixture
def blocked(monkeypatch):
    """Every tall product takes the row-block path (blocks of 37 rows)."""
    monkeypatch.setattr(solvers, "TALL_BLOCK_ROWS", 37)
    monkeypatch.setattr(solvers, "LATENCY_BOUND_FLOPS", 0.0)


def _tall(seed, n=500, k=6, m=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k)), rng.standard_normal((k, m)), rng.standard_normal((n, m))


def test_the_small_path_is_one_product():
    A, T, B = _tall(0)
    assert solvers._tall_blocks(A.shape[0], 2.0 * A.size * 4) == [slice(0, A.shape[0])]
    assert np.array_equal(tall_product(A, T), A @ T)
    assert np.array_equal(tall_cross(A, B), A.T @ B)
    assert np.array_equal(tall_cross(A, A), A.T @ A)
    Q, C = tall_product_and_gram(A, T)
    AT = A @ T
    assert np.array_equal(Q, AT) and np.array_equal(C, AT.T @ AT)


def test_blocked_products_equal_the_direct_ones(blocked):
    A, T, B = _tall(1)
    assert len(solvers._tall_blocks(A.shape[0], 1.0)) == 14          # 500 rows / 37
    assert np.allclose(tall_product(A, T), A @ T, rtol=0, atol=1e-13)
    assert np.allclose(tall_cross(A, B), A.T @ B, rtol=0, atol=1e-12)
    assert np.allclose(tall_cross(A, A), A.T @ A, rtol=0, atol=1e-12)
    Q, C = tall_product_and_gram(A, T)
    assert np.allclose(Q, A @ T, rtol=0, atol=1e-13)
    assert np.allclose(C, (A @ T).T @ (A @ T), rtol=0, atol=1e-11)
    assert np.allclose(solvers._gram_of_tall_product(A, T), C, rtol=0, atol=1e-11)


def test_blocked_products_in_place(blocked):
    A, _, _ = _tall(2)
    T = np.random.default_rng(3).standard_normal((6, 6))
    expected = A @ T
    work = A.copy()
    assert tall_product(work, T, out=work) is work
    assert np.allclose(work, expected, rtol=0, atol=1e-13)
    work = A.copy()
    Q, C = tall_product_and_gram(work, T, out=work)
    assert Q is work and np.allclose(Q, expected, rtol=0, atol=1e-13)
    assert np.allclose(C, expected.T @ expected, rtol=0, atol=1e-11)


def test_results_do_not_depend_on_the_number_of_threads(blocked, monkeypatch):
    A, T, B = _tall(4, n=2000, k=16, m=16)
    two = (tall_product(A, T), tall_cross(A, B), tall_product_and_gram(A, T)[1])
    monkeypatch.setattr(threads, "cpu_workers", lambda: 1)
    one = (tall_product(A, T), tall_cross(A, B), tall_product_and_gram(A, T)[1])
    for x, y in zip(two, one):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("case", ["full rank", "ill-conditioned", "rank-deficient"])
def test_orthogonal_zero_mean_blocked_equals_one_call(case, monkeypatch):
    rng = np.random.default_rng(5)
    n, r = 3000, 12
    if case == "full rank":
        Z = rng.standard_normal((n, r)) + 3.0
    elif case == "ill-conditioned":          # the shifted Cholesky-QR route
        U, _ = np.linalg.qr(rng.standard_normal((n, r)))
        W, _ = np.linalg.qr(rng.standard_normal((r, r)))
        Z = (U * np.logspace(0, 7, r)) @ W.T
    else:                                    # rank 5: the seeded completion
        Z = rng.standard_normal((n, 5)) @ rng.standard_normal((5, r))
    with pytest.warns(Warning) if case == "rank-deficient" else _no_warning():
        V_one = orthogonal_zero_mean(Z, np.random.default_rng(9))
    monkeypatch.setattr(solvers, "TALL_BLOCK_ROWS", 211)
    monkeypatch.setattr(solvers, "LATENCY_BOUND_FLOPS", 0.0)
    with pytest.warns(Warning) if case == "rank-deficient" else _no_warning():
        V_blocked = orthogonal_zero_mean(Z, np.random.default_rng(9))
    assert np.allclose(V_blocked.T @ V_blocked, n * np.eye(r), atol=1e-8 * n)
    assert np.allclose(V_blocked.sum(axis=0), 0.0, atol=1e-6 * np.sqrt(n))
    assert np.allclose(V_blocked, V_one, rtol=0, atol=1e-7)


class _no_warning:
    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _blas_threads():
    return [info["num_threads"] for info in threads._get_controller().info()
            if info["user_api"] == "blas"]


def test_single_threaded_blas_is_reentrant():
    before = _blas_threads()
    with threads.single_threaded_blas():
        with threads.single_threaded_blas():
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {1}          # the inner exit keeps the limit
    assert _blas_threads() == before


def test_single_threaded_blas_in_worker_threads_leaves_the_callers_limit():
    before = _blas_threads()
    with threads.single_threaded_blas():
        threads.leaf_map(_enter_and_leave_a_block, range(4))
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before


def _enter_and_leave_a_block(_):
    with threads.single_threaded_blas():
        with threads.single_threaded_blas():
            pass


def test_leaf_map_keeps_order_and_runs_in_a_forked_child():
    assert threads.leaf_map(lambda x: x * x, range(20)) == [x * x for x in range(20)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:                       # the parent's pool threads are gone there
        result = pool.apply_async(_square_in_leaf_pool, (7,))
        assert result.get(timeout=30) == [0, 1, 4, 9, 16, 25, 36]


def _square_in_leaf_pool(k):
    return threads.leaf_map(lambda x: x * x, range(k))
