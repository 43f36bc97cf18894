"""TA-ADCMH: the paper's gradients, the exact B / P / W steps, training and the estimator API."""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cmhash.base  # noqa: E402
from cmhash.deep.ta_adcmh import (TAADCMH, analytic_gradients, batch_loss,  # noqa: E402
                                  class_codes, codes_step, objective_terms, projection_step)
from cmhash.metrics import mean_average_precision  # noqa: E402

HP = dict(lam=0.7, beta=1.3, mu=0.9, nu=0.4)


def _problem(n=11, r=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(n, r, generator=g, dtype=torch.float64)
    G = torch.randn(n, r, generator=g, dtype=torch.float64)
    B = torch.sign(torch.randn(n, r, generator=g, dtype=torch.float64))
    L = (torch.rand(n, c, generator=g) < 0.4).double()
    L[torch.arange(n), torch.arange(n) % c] = 1.0        # every row labelled, some multi-label
    Q = torch.randn(c, r, generator=g, dtype=torch.float64)
    return F, G, B, L, Q


def _autograd(F, G, B, L, Q, query, hp):
    F = F.clone().requires_grad_(True)
    G = G.clone().requires_grad_(True)
    J = objective_terms(F, G, B, L, Q, query=query, block=4, **hp)["total"]
    dF, dG = torch.autograd.grad(J, (F, G))
    return dF, dG


@pytest.mark.parametrize("query", ["image", "text", "codes", None])
def test_analytic_gradients_match_autograd(query):
    """Eq. 6 / 7 (I2T, query="image") and Eq. 14 / 13 (T2I, query="text") equal autograd of J."""
    F, G, B, L, Q = _problem()
    dF, dG = analytic_gradients(F, G, B, L, Q, query=query, block=3, **HP)
    aF, aG = _autograd(F, G, B, L, Q, query, HP)
    torch.testing.assert_close(dF, aF, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dG, aG, rtol=1e-10, atol=1e-10)
    # the regression term sits on the query side only: Eq. 7 / Eq. 14 have no mu term
    dF0, dG0 = analytic_gradients(F, G, B, L, Q, query=query, block=3, **{**HP, "mu": 0.0})
    if query == "image":
        assert torch.equal(dG, dG0) and not torch.allclose(dF, dF0)
    elif query == "text":
        assert torch.equal(dF, dF0) and not torch.allclose(dG, dG0)


def test_gradients_match_finite_differences():
    """Independent of autograd: central differences of J in a few coordinates of F and G."""
    F, G, B, L, Q = _problem(n=7, r=3, c=3, seed=4)
    dF, dG = analytic_gradients(F, G, B, L, Q, query="image", **HP)
    eps = 1e-6
    for (M, D) in ((F, dF), (G, dG)):
        for (i, k) in [(0, 0), (3, 2), (6, 1)]:
            Mp, Mm = M.clone(), M.clone()
            Mp[i, k] += eps
            Mm[i, k] -= eps
            args = lambda X: (X, G) if M is F else (F, X)  # noqa: E731
            Jp = objective_terms(*args(Mp), B, L, Q, query="image", **HP)["total"]
            Jm = objective_terms(*args(Mm), B, L, Q, query="image", **HP)["total"]
            assert float((Jp - Jm) / (2 * eps)) == pytest.approx(float(D[i, k]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("side", ["f", "g"])
def test_batch_loss_gradient_is_the_papers_gradient_on_the_batch_rows(side):
    """The mini-batch loss used for SGD has gradient = rows I of Eq. 6 (f1) / Eq. 7 (g1)."""
    F, G, B, L, Q = _problem(n=13, seed=2)
    idx = torch.tensor([1, 4, 5, 11])
    dF, dG = analytic_gradients(F, G, B, L, Q, query="image", **HP)
    if side == "f":
        out = F[idx].clone().requires_grad_(True)
        loss = batch_loss(out, idx, F, G, B, L, Q, w_quant=HP["lam"], mu=HP["mu"], nu=HP["nu"])
        want = dF[idx]
    else:
        out = G[idx].clone().requires_grad_(True)
        loss = batch_loss(out, idx, G, F, B, L, Q, w_quant=HP["beta"], mu=0.0, nu=HP["nu"])
        want = dG[idx]
    (grad,) = torch.autograd.grad(loss, out)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-10)


def _sub_b(B, F, G, lam, beta, mu=0.0, LQ=None):
    val = lam * np.sum((B - F) ** 2) + beta * np.sum((B - G) ** 2)
    return val + (mu * np.sum((B - LQ) ** 2) if LQ is not None else 0.0)


@pytest.mark.parametrize("with_codes_regression", [False, True])
def test_b_step_is_the_exact_discrete_minimiser(with_codes_regression):
    """Eq. 9 / 16 (and variant I's sign(lam F + beta G + mu L V)) beat all 2^(n r) codes."""
    rng = np.random.default_rng(0)
    n, r = 3, 3
    F, G = rng.standard_normal((n, r)), rng.standard_normal((n, r))
    LQ = rng.standard_normal((n, r)) if with_codes_regression else None
    kw = dict(lam=0.3, beta=0.8, mu=0.5 if with_codes_regression else 0.0)
    B = codes_step(F, G, LQ=LQ, **kw)
    assert set(np.unique(B)) <= {-1.0, 1.0}
    best = _sub_b(B, F, G, LQ=LQ, **kw)
    for bits in itertools.product([-1.0, 1.0], repeat=n * r):
        assert best <= _sub_b(np.array(bits).reshape(n, r), F, G, LQ=LQ, **kw) + 1e-12


def test_relaxed_b_step_zeroes_the_gradient():
    """TA-ADCMH-III: B = (lam F + beta G) / (lam + beta) makes the B-gradient vanish."""
    rng = np.random.default_rng(1)
    F, G = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    B = codes_step(F, G, lam=0.3, beta=0.8, discrete=False)
    np.testing.assert_allclose(2 * 0.3 * (B - F) + 2 * 0.8 * (B - G), 0, atol=1e-12)


def test_projection_step_is_the_exact_minimiser():
    """Eq. 11 / 18: P = (L^T L + nu/mu I)^{-1} L^T F zeroes the gradient, perturbations cost."""
    F, _, _, L, _ = _problem(n=20, r=6, c=4, seed=3)
    F, L = F.numpy(), L.numpy()
    mu, nu = 0.7, 0.2
    P = projection_step(F, L, mu=mu, nu=nu)
    grad = 2 * mu * L.T @ (L @ P - F) + 2 * nu * P
    np.testing.assert_allclose(grad, 0, atol=1e-10)
    # the paper's form (column convention): P^T = F^T L (L^T L + nu/mu I)^{-1}
    np.testing.assert_allclose(P.T, F.T @ L @ np.linalg.inv(L.T @ L + nu / mu * np.eye(4)),
                               rtol=1e-10, atol=1e-12)
    sub = lambda Q: mu * np.sum((F - L @ Q) ** 2) + nu * np.sum(Q ** 2)  # noqa: E731
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert sub(P) < sub(P + 1e-3 * rng.standard_normal(P.shape))
    assert np.all(projection_step(F, L, mu=0.0, nu=nu) == 0)


def test_alternating_steps_do_not_increase_the_objective():
    F, G, B, L, Q = _problem(n=30, r=6, c=4, seed=5)
    for query in ("image", "text"):
        hp = dict(lam=0.1, beta=1.0, mu=1.0, nu=0.1)
        J0 = float(objective_terms(F, G, B, L, Q, query=query, **hp)["total"])
        B1 = torch.from_numpy(codes_step(F.numpy(), G.numpy(), lam=hp["lam"], beta=hp["beta"]))
        J1 = float(objective_terms(F, G, B1, L, Q, query=query, **hp)["total"])
        T = F if query == "image" else G
        Q1 = torch.from_numpy(projection_step(T.numpy(), L.numpy(), mu=hp["mu"], nu=hp["nu"]))
        J2 = float(objective_terms(F, G, B1, L, Q1, query=query, **hp)["total"])
        assert J1 <= J0 + 1e-9 and J2 <= J1 + 1e-9 and J2 < J0


# ------------------------------------------------------------------ end-to-end (vectors)
def _vector_data(n=240, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    Y = np.eye(c)[y]
    X = Y @ rng.standard_normal((c, 20)) * 2 + rng.standard_normal((n, 20))
    T = Y @ rng.standard_normal((c, 12)) * 2 + rng.standard_normal((n, 12))
    return X, T, Y


FAST = dict(n_epochs=6, image_hidden=(32,), text_hidden=32, batch_size=64, lr=1e-2,
            device="cpu")


@pytest.fixture(scope="module")
def fitted():
    X, T, Y = _vector_data()
    h = TAADCMH(8, random_state=0, track_objective=True, **FAST).fit(X[:200], T[:200], Y[:200])
    return h, (X, T, Y)


def test_training_retrieves_far_above_chance(fitted):
    h, (X, T, Y) = fitted
    Xq, Tq, Yq, Yd = X[200:], T[200:], Y[200:], Y[:200]
    chance = float(np.mean((Yq @ Yd.T) > 0))
    i2t = mean_average_precision(h.encode(Xq, "image"), h.learned_codes("text"), Yq, Yd)
    t2i = mean_average_precision(h.encode(Tq, "text"), h.learned_codes("image"), Yq, Yd)
    i2t_h = mean_average_precision(h.encode(Xq, "image"),
                                   h.encode(T[:200], "text", task=("image", "text")), Yq, Yd)
    for m in (i2t, t2i, i2t_h):
        assert m > 0.85 > chance + 0.5
    # the objective (J1 + J2, paper's terms) decreased over training
    assert h.objective_[-1] < h.objective_[0]
    assert len(h.objective_) == FAST["n_epochs"] == len(h.loss_terms_["i2t/nll"])


def test_task_routing_and_learned_codes(fitted):
    h, (X, T, Y) = fitted
    assert set(h.architectures_) == {"f1", "g1", "f2", "g2"}
    # task=None: the network of the task in which the modality is the QUERY
    np.testing.assert_array_equal(h.encode(X, "image"), h.encode(X, "image", task=("image", "text")))
    np.testing.assert_array_equal(h.encode(T, "text"), h.encode(T, "text", task=("text", "image")))
    # the two tasks really use different networks
    assert not np.array_equal(h.encode(X, "image", task=("text", "image")), h.encode(X, "image"))
    # learned codes: B1 for (image, text), B2 for (text, image); None -> modality as database
    B2, B1 = h.codes_
    np.testing.assert_array_equal(h.learned_codes("text"), B1)
    np.testing.assert_array_equal(h.learned_codes("image"), B2)
    np.testing.assert_array_equal(h.learned_codes("image", task=("image", "text")), B1)
    np.testing.assert_array_equal(h.learned_codes("text", task=("text", "image")), B2)
    assert B1.dtype == np.int8 and set(np.unique(B1)) <= {-1, 1}


def test_seeded_runs_are_reproducible_and_save_load_round_trips(fitted, tmp_path):
    h, (X, T, Y) = fitted
    h2 = TAADCMH(8, random_state=0, **FAST).fit(X[:200], T[:200], Y[:200])
    np.testing.assert_array_equal(h.codes_[0], h2.codes_[0])
    np.testing.assert_array_equal(h.encode(X, "image"), h2.encode(X, "image"))
    h3 = TAADCMH(8, random_state=1, **FAST).fit(X[:200], T[:200], Y[:200])
    assert not np.array_equal(h.codes_[1], h3.codes_[1])
    path = h.save(tmp_path / "ta.npz")
    loaded = cmhash.base.load(path)
    assert isinstance(loaded, TAADCMH)
    for mod, task in [("image", None), ("text", None), ("image", ("text", "image")),
                      ("text", ("image", "text"))]:
        Z = X if mod == "image" else T
        np.testing.assert_array_equal(loaded.encode(Z, mod, task=task), h.encode(Z, mod, task=task))
        np.testing.assert_array_equal(loaded.learned_codes(mod, task=task),
                                      h.learned_codes(mod, task=task))
    np.testing.assert_allclose(loaded.network_outputs(X, "image"), h.network_outputs(X, "image"))


@pytest.mark.parametrize("variant", ["TA-ADCMH-I", "TA-ADCMH-II", "TA-ADCMH-III"])
def test_variants(variant):
    X, T, Y = _vector_data(n=160, seed=1)
    params = {**FAST, "n_epochs": 3, "track_objective": True, **TAADCMH.VARIANTS[variant]}
    h = TAADCMH(8, random_state=0, **params).fit(X, T, Y)
    B2, B1 = h.codes_
    assert set(np.unique(B1)) <= {-1, 1} and B1.dtype == np.int8
    if variant in ("TA-ADCMH-I", "TA-ADCMH-II"):   # one couple of networks shared by both tasks
        assert set(h.architectures_) == {"f", "g"}
        np.testing.assert_array_equal(B1, B2)
        np.testing.assert_array_equal(h.encode(X, "image"),
                                      h.encode(X, "image", task=("text", "image")))
    else:
        assert set(h.architectures_) == {"f1", "g1", "f2", "g2"}
    if variant == "TA-ADCMH-II":
        assert "shared/regression" not in h.loss_terms_
    if variant == "TA-ADCMH-I":
        assert "shared/regression" in h.loss_terms_


def test_normalized_weights_and_refreshed_buffers_give_the_exact_closed_form_steps():
    """normalize_likelihood: the objective is the paper's J with n lambda, n beta, n mu.

    With refresh_buffers the B / P / W steps of the last epoch see the exact outputs of the
    final networks, so on the training data (computed independently through
    ``network_outputs``): B1 = sign(lambda1 F1 + beta1 G1), P = (L^T L + nu1 / (n mu1) I)^{-1}
    L^T F1 (Eq. 11 with mu1 -> n mu1), W likewise from G2 (Eq. 18), and the recorded
    quantisation / regression terms carry the factor n.
    """
    X, T, Y = _vector_data(n=150, seed=3)
    n = X.shape[0]
    hp = dict(lambda1=0.2, beta1=0.5, mu1=0.3, nu1=0.7, lambda2=0.4, beta2=0.1, mu2=0.6, nu2=0.9)
    h = TAADCMH(8, random_state=0, **{**FAST, "n_epochs": 3}, **hp,
                normalize_likelihood=True, refresh_buffers=True, track_objective=True).fit(X, T, Y)
    it, ti = ("image", "text"), ("text", "image")
    F1 = h.network_outputs(X, "image", task=it).astype(np.float64)
    G1 = h.network_outputs(T, "text", task=it).astype(np.float64)
    F2 = h.network_outputs(X, "image", task=ti).astype(np.float64)
    G2 = h.network_outputs(T, "text", task=ti).astype(np.float64)
    np.testing.assert_array_equal(h.learned_codes("text", task=it), np.where(0.2 * F1 + 0.5 * G1 > 0, 1, -1))
    np.testing.assert_array_equal(h.learned_codes("image", task=ti), np.where(0.4 * F2 + 0.1 * G2 > 0, 1, -1))
    c = Y.shape[1]
    P = np.linalg.solve(Y.T @ Y + 0.7 / (n * 0.3) * np.eye(c), Y.T @ F1)
    W = np.linalg.solve(Y.T @ Y + 0.9 / (n * 0.6) * np.eye(c), Y.T @ G2)
    np.testing.assert_allclose(h.projection_i2t_, P, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.projection_t2i_, W, rtol=1e-4, atol=1e-5)
    B1 = h.learned_codes("text", task=it).astype(np.float64)
    assert h.loss_terms_["i2t/quant_f"][-1] == pytest.approx(n * 0.2 * ((B1 - F1) ** 2).sum(), rel=1e-4)
    assert h.loss_terms_["t2i/regression"][-1] == pytest.approx(
        n * 0.6 * ((G2 - Y @ h.projection_t2i_) ** 2).sum(), rel=1e-4)
    # without normalisation the same weights enter unscaled (Eq. 11 as printed)
    h0 = TAADCMH(8, random_state=0, **{**FAST, "n_epochs": 1}, **hp, refresh_buffers=True).fit(X, T, Y)
    F1 = h0.network_outputs(X, "image", task=it).astype(np.float64)
    P0 = np.linalg.solve(Y.T @ Y + 0.7 / 0.3 * np.eye(c), Y.T @ F1)
    np.testing.assert_allclose(h0.projection_i2t_, P0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    ({"regression": "labels"}, "regression"), ({"lambda1": -1.0}, "lambda1"),
    ({"device": "gpu"}, "device"), ({"n_epochs": 0}, "n_epochs"),
    ({"image_backbone": "resnet"}, "image_backbone"), ({"dropout": 1.0}, "dropout"),
    ({"image_weights": "/nonexistent/vgg-f.mat"}, "image_weights"),
    ({"normalize_likelihood": "yes"}, "normalize_likelihood"),
    ({"refresh_buffers": 1}, "refresh_buffers"),
    ({"projection_init": "eye"}, "projection_init"),
    ({"projection_warmup": 6}, "projection_warmup"),
    ({"projection_warmup": -1}, "projection_warmup"),
    ({"image_lr": 0.0}, "image_lr"), ({"text_weight_decay": -1e-3}, "text_weight_decay"),
    ({"optimizer": "rmsprop"}, "optimizer"), ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"input_kernel": "audio"}, "input_kernel"), ({"n_anchors": (10, 10, 10)}, "n_anchors"),
    ({"n_anchors": 0}, "n_anchors"),
    ({"projection_init": "hadamard", "n_bits": 12}, "hadamard"),
])
def test_bad_parameters_raise(bad, match):
    X, T, Y = _vector_data(n=40)
    bad = dict(bad)
    bits = bad.pop("n_bits", 8)
    with pytest.raises(ValueError, match=match):
        TAADCMH(bits, **{**FAST, **bad}).fit(X, T, Y)


# ------------------------------------------------------- options beyond the paper's defaults
def test_class_codes():
    rng = np.random.default_rng(0)
    H = class_codes("hadamard", 5, 16, rng)
    assert H.shape == (5, 16) and set(np.unique(H)) == {-1.0, 1.0}
    np.testing.assert_array_equal(H @ H.T, 16 * np.eye(5))        # orthogonal class codes
    G = class_codes("gaussian", 5, 16, np.random.default_rng(0))
    assert set(np.unique(G)) == {-1.0, 1.0}
    Bc = class_codes("balanced", 6, 16, np.random.default_rng(0))
    assert set(np.unique(Bc)) == {-1.0, 1.0}
    np.testing.assert_array_equal(Bc.sum(0), 0)                   # every bit splits 3 / 3
    D = (16 - Bc @ Bc.T) / 2
    assert D[~np.eye(6, dtype=bool)].min() >= 4                   # distinct, separated codes
    np.testing.assert_array_equal(Bc, class_codes("balanced", 6, 16, np.random.default_rng(0)))
    np.testing.assert_array_equal(class_codes("random", 5, 16, np.random.default_rng(0)),
                                  np.random.default_rng(0).standard_normal((5, 16)))
    with pytest.raises(ValueError, match="hadamard"):
        class_codes("hadamard", 16, 16, rng)


@pytest.mark.parametrize("init", ["hadamard", "gaussian", "balanced"])
def test_projection_warmup_holds_the_class_codes_then_takes_the_closed_form_step(init):
    """For exactly ``projection_warmup`` epochs P and W are the initial +-1 class codes (the
    recorded ridge term nu ||P||^2 is nu c r); from then on they are Eq. 11 / 18 (checked
    exactly on the final networks)."""
    X, T, Y = _vector_data(n=150, seed=4)
    n, c, r, w = X.shape[0], Y.shape[1], 8, 3
    hp = dict(lambda1=0.2, beta1=0.5, mu1=0.3, nu1=0.7, lambda2=0.4, beta2=0.1, mu2=0.6, nu2=0.9)
    h = TAADCMH(r, random_state=0, **{**FAST, "n_epochs": w + 2}, **hp, projection_init=init,
                projection_warmup=w, normalize_likelihood=True, refresh_buffers=True,
                track_objective=True).fit(X, T, Y)
    for t, nu in (("i2t", 0.7), ("t2i", 0.9)):
        ridge = h.loss_terms_[f"{t}/ridge"]
        np.testing.assert_allclose(ridge[:w], nu * c * r, rtol=1e-6)
        assert np.all(np.abs(ridge[w:] - nu * c * r) > 1e-3 * nu * c * r)
    it, ti = ("image", "text"), ("text", "image")
    F1 = h.network_outputs(X, "image", task=it).astype(np.float64)
    G2 = h.network_outputs(T, "text", task=ti).astype(np.float64)
    P = np.linalg.solve(Y.T @ Y + 0.7 / (n * 0.3) * np.eye(c), Y.T @ F1)
    W = np.linalg.solve(Y.T @ Y + 0.9 / (n * 0.6) * np.eye(c), Y.T @ G2)
    np.testing.assert_allclose(h.projection_i2t_, P, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.projection_t2i_, W, rtol=1e-4, atol=1e-5)
    # warm-up 0 (Algorithm 1) takes the closed form from the first epoch
    h0 = TAADCMH(r, random_state=0, **{**FAST, "n_epochs": 2}, **hp, projection_init=init,
                 normalize_likelihood=True, track_objective=True).fit(X, T, Y)
    assert abs(h0.loss_terms_["i2t/ridge"][0] - 0.7 * c * r) > 1e-3


def test_per_network_optimiser_settings_and_cosine_schedule():
    X, T, Y = _vector_data(n=80)
    h = TAADCMH(8, **{**FAST, "n_epochs": 4}, optimizer="adamw", image_lr=3e-3, text_lr=2e-2,
                image_weight_decay=0.5, text_weight_decay=0.0, lr_schedule="cosine")
    opt_f, opt_g = h._make_optimizer(torch.nn.Linear(2, 2), "f"), h._make_optimizer(torch.nn.Linear(2, 2), "g")
    assert isinstance(opt_f, torch.optim.AdamW)
    assert opt_f.defaults["lr"] == 3e-3 and opt_f.defaults["weight_decay"] == 0.5
    assert opt_g.defaults["lr"] == 2e-2 and opt_g.defaults["weight_decay"] == 0.0
    for e, factor in [(0, 1.0), (2, 0.5), (3, 0.5 * (1 + np.cos(0.75 * np.pi)))]:
        h._set_epoch_lr(opt_f, "f", e)
        assert opt_f.param_groups[0]["lr"] == pytest.approx(3e-3 * factor)
    h.fit(X, T, Y)
    # unset per-network values fall back to lr / weight_decay
    h2 = TAADCMH(8, **FAST, weight_decay=0.1)
    opt = h2._make_optimizer(torch.nn.Linear(2, 2), "f")
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == FAST["lr"]
    assert opt.defaults["weight_decay"] == 0.1


def test_input_kernel_round_trips_and_encodes_identically(tmp_path):
    from cmhash.kernel import RBFAnchorFeatures
    X, T, Y = _vector_data()
    h = TAADCMH(8, random_state=0, **{**FAST, "image_hidden": ()}, input_kernel="image",
                n_anchors=(40, 30)).fit(X[:200], T[:200], Y[:200])
    km, none = h.input_kernels_
    assert isinstance(km, RBFAnchorFeatures) and none is None and km.anchors_.shape == (40, 20)
    assert h.architectures_["f1"]["in_shape"] == [40] and h.architectures_["f1"]["hidden"] == []
    assert h.architectures_["g1"]["in_shape"] == [12]
    # encoding = the network on the standardised kernel features of the raw input
    Z = (km.transform(X) - h.input_means_[0]) / h.input_scales_[0]
    direct = h._predict(h._network("f1"), Z.astype(np.float32))
    np.testing.assert_array_equal(h.encode(X, "image"), np.where(direct > 0, 1, -1))
    loaded = cmhash.base.load(h.save(tmp_path / "kernel.npz"))
    np.testing.assert_array_equal(loaded.input_kernels_[0].anchors_, km.anchors_)
    assert loaded.input_kernels_[1] is None
    for mod, Z in (("image", X), ("text", T)):
        for task in (None, ("image", "text"), ("text", "image")):
            np.testing.assert_array_equal(loaded.encode(Z, mod, task=task),
                                          h.encode(Z, mod, task=task))
    # encoding in small row chunks (base.encode) gives the same codes for every network
    whole = {(mod, task): h.encode(Z, mod, task=task) for mod, Z in (("image", X), ("text", T))
             for task in (None, ("image", "text"), ("text", "image"))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cmhash.base, "ENCODE_CHUNK_ROWS", 7)
        for (mod, task), codes in whole.items():
            np.testing.assert_array_equal(h.encode(X if mod == "image" else T, mod, task=task), codes)
    Xq, Yq, Yd = X[200:], Y[200:], Y[:200]
    assert mean_average_precision(h.encode(Xq, "image"), h.learned_codes("text"), Yq, Yd) > 0.8
    with pytest.raises(ValueError, match="input_kernel"):
        import scipy.sparse as sp
        TAADCMH(8, **FAST, input_kernel="text").fit(X[:50], sp.csr_matrix(T[:50]), Y[:50])


def test_presets_and_variants_are_valid_parameters():
    names = set(TAADCMH._param_names())
    for preset in TAADCMH.PRESETS.values():
        assert set(preset) <= names
    for v in TAADCMH.VARIANTS.values():
        assert set(v) <= names
    assert TAADCMH.PRESETS["mirflickr25k"]["beta2"] == 100.0  # Section 4.3


# ------------------------------------------------------------------ CNN path (images)
def _image_data():
    from cmhash.data.synthetic import make_synthetic_image_text
    ds = make_synthetic_image_text(180, image_size=32, n_classes=4, multilabel_rate=0.0,
                                   noise=0.2, n_query=40, random_state=0)
    tr, q = ds.splits["train"], ds.splits["query"]
    return ds.modalities["image"], ds.modalities["text"], ds.labels, tr, q


CNN_FAST = dict(n_epochs=2, fc_dim=32, text_hidden=32, batch_size=45, device="cpu")


# two epochs: the image network may give every query one code (said by encode's warning)
@pytest.mark.filterwarnings("ignore::cmhash.OutOfDistributionWarning")
def test_cnn_backbone_end_to_end_and_save_load(tmp_path):
    img, txt, Y, tr, q = _image_data()
    h = TAADCMH(8, random_state=0, **CNN_FAST).fit(img[tr], txt[tr], Y[tr])
    assert h.architectures_["f1"]["kind"] == "cnnf" and h.architectures_["g1"]["kind"] == "text-ta"
    codes = h.encode(img[q], "image")
    assert codes.shape == (len(q), 8) and set(np.unique(codes)) <= {-1, 1}
    # per-channel standardisation of images is stored and re-applied at encoding
    assert h.input_means_[0].shape == (3, 1, 1) and h.input_means_[1] is None  # CSR text
    loaded = cmhash.base.load(h.save(tmp_path / "cnn.npz"))
    np.testing.assert_array_equal(loaded.encode(img[q], "image"), codes)
    np.testing.assert_array_equal(loaded.encode(txt[q], "text", task=("image", "text")),
                                  h.encode(txt[q], "text", task=("image", "text")))


#: the likelihood weighted per row (normalize_likelihood) with small per-sample weights, as in
#: PRESETS["wiki"] before its class-code options; 16-item batches so that CNN-F gets ~225 steps
CNN_QUALITY = dict(CNN_FAST, n_epochs=25, batch_size=16, lr=3e-3, fc_dim=64, text_hidden=64,
                   normalize_likelihood=True, refresh_buffers=True,
                   lambda1=0.01, beta1=0.01, mu1=0.01, nu1=1e-3,
                   lambda2=0.01, beta2=0.01, mu2=0.01, nu2=1e-3)


@pytest.mark.slow
def test_cnn_backbone_retrieves_far_above_chance():
    # measured (seed 0, 1 CPU thread, ~20-35 s): I->T 0.766, T->I 0.684 against chance 0.250
    img, txt, Y, tr, q = _image_data()
    h = TAADCMH(8, random_state=0, **CNN_QUALITY).fit(img[tr], txt[tr], Y[tr])
    chance = float(np.mean((Y[q] @ Y[tr].T) > 0))
    i2t = mean_average_precision(h.encode(img[q], "image"), h.learned_codes("text"), Y[q], Y[tr])
    t2i = mean_average_precision(h.encode(txt[q], "text"), h.learned_codes("image"), Y[q], Y[tr])
    assert i2t > chance + 0.3 and t2i > chance + 0.3, (i2t, t2i, chance)


# ------------------------------------------------------------------ audit: inputs and failures
def test_network_outputs_validates_its_input(fitted):
    """network_outputs bypassed encode's checks: a wrong per-sample shape was numpy's broadcast
    error, a 1-D sample an IndexError from torch, NaN rows silently gave NaN outputs."""
    h, (X, T, Y) = fitted
    with pytest.raises(ValueError, match=r"per sample but the model was fitted on \(20,\)"):
        h.network_outputs(T, "image")
    with pytest.raises(ValueError, match="must be a 2-D to 4-D array"):
        h.network_outputs(X[0], "image")
    with pytest.raises(ValueError, match="NaN"):
        h.network_outputs(np.full((2, 20), np.nan), "image")
    # no rows is not an error (as for encode): the (0, r) outputs; no features still is one
    out = h.network_outputs(X[:0], "image")
    assert out.shape == (0, h.n_bits) and out.dtype == np.float32
    with pytest.raises(ValueError, match="empty"):
        h.network_outputs(np.zeros((3, 0)), "image")


def test_csr_queries_of_a_dense_trained_modality_are_standardised(fitted):
    """CSR input skipped the training standardisation (kept only for dense input), so the same
    queries gave other codes as CSR than as a dense array."""
    import scipy.sparse as sp
    h, (X, T, Y) = fitted
    for mod, Z in (("image", X), ("text", T)):
        for task in (("image", "text"), ("text", "image")):
            np.testing.assert_array_equal(h.encode(sp.csr_matrix(Z), mod, task=task),
                                          h.encode(Z, mod, task=task))


@pytest.mark.parametrize("bad, err, match", [
    ({"text_hidden": (16, 32)}, ValueError, "text-ta network has exactly one hidden layer"),
    ({"text_hidden": ()}, ValueError, "text-ta network has exactly one hidden layer"),
    ({"image_hidden": (8.5,)}, ValueError, "image_hidden must be a positive integer"),
    ({"image_hidden": "wide"}, ValueError, "image_hidden must be a positive integer"),
    ({"standardize": "no"}, ValueError, "standardize must be True or False"),
    ({"n_epochs": "3", "projection_warmup": 1}, TypeError, "n_epochs must be an integer"),
    ({"image_weights": "."}, ValueError, "image_weights must be a file"),
    ({"image_weights": 3}, TypeError, "image_weights must be a file path"),
])
def test_more_bad_parameters_raise(bad, err, match):
    """These were silently truncated (text_hidden=(16, 32) -> 16, 8.5 -> 8), silently accepted
    (standardize="no"), or errors from inside numpy / Python / torch.load."""
    X, T, Y = _vector_data(n=40)
    with pytest.raises(err, match=match):
        TAADCMH(8, **{**FAST, **bad}).fit(X, T, Y)


def test_divergence_is_an_error_not_nan_codes():
    """A diverged run (NaN network outputs) used to return a model whose codes were sign(NaN)
    = -1 everywhere."""
    X, T, Y = _vector_data(n=40)
    with pytest.raises(FloatingPointError, match=r"diverged in epoch \d: .*image network.*lr="):
        TAADCMH(8, **{**FAST, "n_epochs": 3, "lr": 1e8, "optimizer": "sgd"}).fit(X, T, Y)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-epoch, lr ~ 0 runs
def test_image_weights_load_into_the_image_networks_only(tmp_path):
    """image_weights were silently ignored with an MLP image backbone (feature vectors), and
    loaded into CNN-F TEXT networks when the text modality also held images."""
    from cmhash.deep.backbones import build_backbone
    X, T, Y = _vector_data(n=40)
    torch.manual_seed(0)
    pre = build_backbone({"kind": "mlp", "in_shape": [20], "out_dim": 8, "hidden": [32]})
    path = tmp_path / "mlp.pt"
    torch.save(pre.state_dict(), path)
    h = TAADCMH(8, **{**FAST, "n_epochs": 1, "lr": 1e-12}, image_weights=str(path)).fit(X, T, Y)
    for f in ("f1", "f2"):
        np.testing.assert_allclose(h.network_states_[f + ".net.0.weight"],
                                   pre.net[0].weight.detach().numpy(), atol=1e-8)
    # a MatConvNet file only fits CNN-F / AlexNet
    mat = tmp_path / "imagenet-vgg-f.mat"
    import scipy.io
    conv = {"name": "conv1", "type": "conv", "weights": np.empty((1, 2), dtype=object)}
    conv["weights"][0, 0], conv["weights"][0, 1] = np.zeros((11, 11, 3, 64)), np.zeros((64, 1))
    layers = np.empty((1, 1), dtype=object)
    layers[0, 0] = conv
    scipy.io.savemat(str(mat), {"layers": layers})
    with pytest.raises(ValueError, match="load into the 'cnnf' or 'alexnet' backbone, not 'mlp'"):
        TAADCMH(8, **FAST, image_weights=str(mat)).fit(X, T, Y)
    # images in both modalities: the text CNN-F keeps its own initialisation
    rng = np.random.default_rng(0)
    img = rng.standard_normal((12, 3, 16, 16)).astype(np.float32)
    Yi = np.eye(2)[np.arange(12) % 2]
    cnn = build_backbone({"kind": "cnnf", "in_shape": [3, 16, 16], "out_dim": 8, "fc_dim": 8})
    torch.save(cnn.state_dict(), tmp_path / "cnnf.pt")
    h = TAADCMH(8, n_epochs=1, fc_dim=8, batch_size=6, lr=1e-12, device="cpu", random_state=0,
                image_weights=str(tmp_path / "cnnf.pt")).fit(img, img[:, :, ::-1].copy(), Yi)
    w = cnn.conv1.weight.detach().numpy()
    assert h.architectures_["g1"]["kind"] == "cnnf"
    np.testing.assert_allclose(h.network_states_["f1.conv1.weight"], w, atol=1e-8)
    assert not np.allclose(h.network_states_["g1.conv1.weight"], w)
    # weights of another architecture are refused, naming the layer
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        TAADCMH(8, n_epochs=1, fc_dim=8, batch_size=6, device="cpu",
                image_weights=str(tmp_path / "cnnf.pt")).fit(img[:, :1], T[:12], Yi)


def test_images_smaller_than_conv1_are_a_clear_error():
    """8 x 8 images (or channels-last arrays) reached torch's conv2d: a RuntimeError."""
    rng = np.random.default_rng(0)
    Y = np.eye(2)[np.arange(12) % 2]
    T = rng.standard_normal((12, 5))
    with pytest.raises(ValueError, match="at least 11 x 11"):
        TAADCMH(8, **CNN_FAST).fit(rng.standard_normal((12, 3, 8, 8)), T, Y)
    with pytest.raises(ValueError, match="channels-last"):
        TAADCMH(8, **CNN_FAST).fit(rng.standard_normal((12, 16, 16, 3)), T, Y)


def test_similarity_block_is_shared_label_and_objective_uses_it():
    # S_ij = 1 iff items i and j share a label (0 for items with disjoint label sets, and 0/1
    # only: never the number of shared labels); a hand-made multi-label example
    from cmhash.deep.ta_adcmh import similarity_block
    L = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float64)
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1]],
                        dtype=torch.float64)
    torch.testing.assert_close(similarity_block(L, L), want, rtol=0, atol=0)
    torch.testing.assert_close(similarity_block(L[1:3], L), want[1:3], rtol=0, atol=0)
    # the likelihood term is -sum_ij (S_ij Phi_ij - log(1 + e^Phi_ij)), Phi = F G^T / 2, summed
    # over row blocks (block=3 splits the 4 rows unevenly): compare with the explicit n x n sum
    gen = torch.Generator().manual_seed(0)
    F = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    G = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    B = torch.sign(F + G)
    phi = F @ G.T / 2
    nll = -(want * phi - torch.log1p(torch.exp(phi))).sum()
    terms = objective_terms(F, G, B, L, torch.zeros(3, 5, dtype=torch.float64), lam=0.0,
                            beta=0.0, mu=0.0, nu=0.0, block=3)
    torch.testing.assert_close(terms["nll"], nll, rtol=1e-12, atol=0)


# ------------------------------------------------ wiring: real training steps vs. the objective
def _J_written_out(F, G, B, L, Q, *, lam, beta, mu, nu, query):
    """J_1 (``query="image"``: Eq. 1 + 3) or J_2 (``"text"``: Eq. 4 + 5) with n x n matrices."""
    S = (L @ L.T > 0).double()
    Phi = F @ G.T / 2
    J = (torch.log1p(torch.exp(Phi)) - S * Phi).sum()
    J = J + lam * ((B - F) ** 2).sum() + beta * ((B - G) ** 2).sum()
    T = F if query == "image" else G
    J = J + mu * ((T - L @ Q) ** 2).sum()
    return J + nu * ((F.sum(0) ** 2).sum() + (G.sum(0) ** 2).sum() + (Q ** 2).sum())


#: distinct weights for every term and network, so that a term on the wrong network, a weight
#: swapped between networks or a learning rate of the other network changes the update
WIRING = dict(n_epochs=1, image_hidden=(8,), text_hidden=8, batch_size=10, optimizer="sgd",
              image_lr=0.1, text_lr=0.05, lambda1=0.7, beta1=1.6, mu1=0.9, nu1=0.4,
              lambda2=1.5, beta2=0.5, mu2=1.2, nu2=0.3, standardize=False, device="cpu")


def test_every_network_steps_on_its_tasks_objective(monkeypatch):
    """Wiring of Algorithm 1: the first real step of each of f1, g1, f2, g2 (a fresh SGD, so
    plain SGD) equals SGD on J_t / (|I| n) written out here, as a function of the network's
    batch outputs (rows I of F or G; the other rows and the other modality from the buffers):
    f1 carries lambda1 and mu1 (I2T regresses the image output), g1 beta1, g2 beta2 and mu2
    (T2I regresses the text output), f2 lambda2; the batch is the rows I of its own modality."""
    from conftest import make_structured
    from wiring import float64_copy, sgd_reference, snapshot, update_error
    X, T, Y = make_structured(24, n_classes=3, d_image=6, d_text=5, seed=5)
    records = {}
    real_step = TAADCMH._train_step

    def spy(self, side, s, xb, it, L):
        net = s[side]
        rec = None
        if id(net) not in records:
            rec = {"xb": xb.clone(), "it": it.clone(), "L": L.clone(), "net": float64_copy(net),
                   "before": snapshot(net), **{k: s[k].clone() for k in ("F", "G", "B", "Q")}}
        real_step(self, side, s, xb, it, L)
        if rec is not None:
            rec["after"] = snapshot(net)
            records[id(net)] = rec

    monkeypatch.setattr(TAADCMH, "_train_step", spy)
    h = TAADCMH(4, random_state=0, **WIRING).fit(X, T, Y)
    names = {id(net): name for name, net in h._nets.items()}
    assert sorted(names[k] for k in records) == ["f1", "f2", "g1", "g2"]
    n = X.shape[0]
    for key, rec in records.items():
        name = names[key]
        side, t = name[0], name[1]
        it = rec["it"]
        data = X if side == "f" else T
        np.testing.assert_array_equal(rec["xb"].numpy(), data[it.numpy()].astype(np.float32))
        weights = {"lam": getattr(h, "lambda" + t), "beta": getattr(h, "beta" + t),
                   "mu": getattr(h, "mu" + t), "nu": getattr(h, "nu" + t),
                   "query": "image" if t == "1" else "text"}

        def loss(nets, rec=rec, side=side, weights=weights, it=it):
            F, G = rec["F"].double(), rec["G"].double()
            out = nets["net"](rec["xb"].double())
            if side == "f":
                F = F.index_put((it,), out)
            else:
                G = G.index_put((it,), out)
            J = _J_written_out(F, G, rec["B"].double(), rec["L"].double(), rec["Q"].double(),
                               **weights)
            return J / (len(it) * n)

        lr = h.image_lr if side == "f" else h.text_lr
        expected = sgd_reference({"net": rec["net"]}, loss, {"net": lr})["net"]
        err = update_error(rec["before"], rec["after"], expected)
        assert err < 1e-4, (name, err)


def test_objective_trace_is_opt_in_and_computed_in_row_blocks(monkeypatch):
    """The O(n^2 r) float64 trace used to run every epoch by default. Now it runs only with
    track_objective=True, and then over row blocks of at most OBJECTIVE_BLOCK_ELEMENTS / n
    rows (here 5 of n = 40): its value equals J written out with the n x n matrices."""
    import cmhash.deep.ta_adcmh as ta
    X, T, Y = _vector_data(n=40, seed=2)
    calls = []
    real_terms = ta.objective_terms

    def counting(F, G, B, L, Q, **kw):
        out = real_terms(F, G, B, L, Q, **kw)
        calls.append(((F, G, B, L, Q), kw, out))
        return out

    monkeypatch.setattr(ta, "objective_terms", counting)
    h = TAADCMH(8, random_state=0, **{**FAST, "n_epochs": 2}).fit(X, T, Y)
    assert h.track_objective is False
    assert calls == [] and h.objective_ == [] and h.loss_terms_ == {}
    # 1,024 rows for small n, fewer when 1,024 x n would exceed 2^22 entries (32 MB float64)
    assert ta.objective_block_rows(10) == 10 and ta.objective_block_rows(2000) == 1024
    assert ta.objective_block_rows(10 ** 6) == 4 and ta.objective_block_rows(10 ** 8) == 1

    monkeypatch.setattr(ta, "OBJECTIVE_BLOCK_ELEMENTS", 5 * 40)
    h = TAADCMH(8, random_state=0, track_objective=True, **{**FAST, "n_epochs": 2}).fit(X, T, Y)
    assert len(calls) == 4 and len(h.objective_) == 2                # 2 epochs x 2 tasks
    for (F, G, B, L, Q), kw, out in calls:
        assert kw["block"] == 5 and F.dtype == torch.float64
        hp = {k: kw[k] for k in ("lam", "beta", "mu", "nu", "query")}
        direct = _J_written_out(F, G, B, L, Q, **hp)
        assert float(out["total"]) == pytest.approx(float(direct), rel=1e-12)
    # J_1 + J_2 of the last epoch is the recorded objective
    assert h.objective_[-1] == pytest.approx(float(calls[-2][2]["total"] + calls[-1][2]["total"]),
                                             rel=1e-12)
