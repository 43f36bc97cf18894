"""SDCH: the closed-form gradients of L_f and L_h, the B step, the networks, training."""
import itertools
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cmhash.base  # noqa: E402
from cmhash.deep.backbones import AlexNet, build_backbone, load_state_dict_file  # noqa: E402
from cmhash.deep.sdch import (SDCH, codes_step, feature_loss, feature_loss_grad,  # noqa: E402
                              hash_loss, hash_loss_grad, hash_loss_terms, label_similarity)
from cmhash.metrics import mean_average_precision  # noqa: E402
from cmhash.solvers import sign  # noqa: E402
from conftest import make_structured  # noqa: E402

pytestmark = pytest.mark.deep
HP = {"beta1": 1.0, "beta2": 1.0, "beta3": 0.1}


def _batch(b=12, k=7, r=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    Lb = torch.zeros(b, c, dtype=torch.float64)
    Lb[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1
    Lb[torch.rand(b, c, generator=g, dtype=torch.float64) < 0.15] = 1
    Fx = torch.randn(b, k, generator=g, dtype=torch.float64)
    Fy = torch.randn(b, k, generator=g, dtype=torch.float64)
    Z = torch.randn(2 * b, r, generator=g, dtype=torch.float64)
    B = torch.sign(torch.randn(2 * b, r, generator=g, dtype=torch.float64))
    L2 = torch.cat([Lb, Lb])
    return Lb, Fx, Fy, Z, B, 2 * label_similarity(L2, L2) - 1


def test_similarities_follow_shared_labels():
    L = torch.tensor([[1., 0, 0], [1, 1, 0], [0, 0, 1]])
    S = label_similarity(L, L)
    assert torch.equal(S, torch.tensor([[1., 1, 0], [1, 1, 0], [0, 0, 1]]))
    Lb, *_, Sh = _batch()
    assert set(Sh.unique().tolist()) == {-1.0, 1.0} and torch.equal(Sh, Sh.T)


def test_feature_loss_gradient_matches_autograd():
    Lb, Fx, Fy, *_ = _batch(seed=1)
    Sf = label_similarity(Lb, Lb)
    Fx.requires_grad_(True)
    Fy.requires_grad_(True)
    loss = feature_loss(Fx, Fy, Sf)
    gx, gy = torch.autograd.grad(loss, (Fx, Fy))
    ax, ay = feature_loss_grad(Fx.detach(), Fy.detach(), Sf)
    assert torch.allclose(ax, gx, rtol=1e-10, atol=1e-12)
    assert torch.allclose(ay, gy, rtol=1e-10, atol=1e-12)
    # Eq. 4 written out for one pair, without matrix algebra
    fx, fy = Fx.detach(), Fy.detach()
    parts = [np.log1p(np.exp(float(fx[i] @ fy[j]))) - float(Sf[i, j]) * float(fx[i] @ fy[j])
             for i in range(fx.shape[0]) for j in range(fy.shape[0])]
    assert np.isclose(sum(parts), float(loss.detach()), rtol=1e-12)
    # stable for huge inner products (softplus, no overflow)
    big = feature_loss(100 * Fx.detach(), 100 * Fy.detach(), Sf)
    assert torch.isfinite(big)


@pytest.mark.parametrize("literal", [False, True])
def test_hash_loss_gradient_matches_autograd(literal):
    *_, Z, B, Sh = _batch(seed=2)
    Z.requires_grad_(True)
    loss = hash_loss(Z, B, Sh, paper_literal=literal, **HP)
    (g,) = torch.autograd.grad(loss, Z)
    a = hash_loss_grad(Z.detach(), B, Sh, paper_literal=literal, **HP)
    assert torch.allclose(a, g, rtol=1e-10, atol=1e-10)
    # every term contributes: dropping one from the closed form breaks the match
    for off in ("beta1", "beta2", "beta3"):
        hp = dict(HP, **{off: 0.0})
        assert not torch.allclose(hash_loss_grad(Z.detach(), B, Sh, paper_literal=literal, **hp),
                                  g, rtol=1e-6, atol=1e-6)


def test_hash_loss_terms_definitions():
    *_, Z, B, Sh = _batch(seed=3)
    N, r = Z.shape
    t = hash_loss_terms(Z, B, Sh)
    Zn, Bn, Sn = Z.numpy(), B.numpy(), Sh.numpy()
    assert np.isclose(float(t["similarity"]), np.sum((Zn @ Zn.T / r - Sn) ** 2))
    assert np.isclose(float(t["quantization"]), np.sum((Zn - Bn) ** 2))
    assert np.isclose(float(t["decorrelation"]), np.sum((Zn.T @ Zn / N - np.eye(r)) ** 2))
    assert np.isclose(float(t["balance"]), np.sum(Zn.sum(0) ** 2) / r)
    lit = hash_loss_terms(Z, B, Sh, paper_literal=True)
    assert np.isclose(float(lit["decorrelation"]), np.sum((Zn.T @ Zn / r - np.eye(r)) ** 2))
    assert np.isclose(float(lit["balance"]), np.sum(Zn ** 2) / r)
    # balanced, uncorrelated, similarity-consistent codes make the regularisers vanish
    H = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], float)
    Zh = torch.from_numpy(np.vstack([H[:, 1:], H[:, 1:]]))        # columns orthogonal to 1
    th = hash_loss_terms(Zh, torch.sign(Zh), torch.eye(8, dtype=torch.float64))
    assert float(th["balance"]) == 0 and float(th["decorrelation"]) == 0
    assert float(th["quantization"]) == 0


def test_b_step_is_the_exact_minimiser_of_its_subproblem():
    """With Z fixed, min over B in {-1,1}^{N x r} of the whole L is attained at sign(Z)."""
    g = torch.Generator().manual_seed(4)
    Z = torch.randn(3, 3, generator=g, dtype=torch.float64)
    Sh = torch.tensor([[1., 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    best, arg = np.inf, None
    for bits in itertools.product([-1.0, 1.0], repeat=9):
        B = torch.tensor(bits, dtype=torch.float64).reshape(3, 3)
        val = float(hash_loss(Z, B, Sh, **HP))
        if val < best - 1e-12:
            best, arg = val, B
    assert np.array_equal(arg.numpy(), codes_step(Z.numpy()).astype(float))
    assert codes_step(np.array([[0.0, -0.0, 2.0]])).tolist() == [[-1, -1, 1]]


def test_alexnet_has_the_papers_layer_shapes():
    """Table 1 with a 227 x 227 x 3 input, batch 1 on CPU."""
    torch.manual_seed(0)
    net = AlexNet(out_dim=256).eval()
    shapes = {}
    for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5",
                 "fc6", "fc7", "fc8"):
        getattr(net, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        out = net(torch.randn(1, 3, 227, 227))
    assert out.shape == (1, 256)
    assert shapes == {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
                      "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                      "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,),
                      "fc7": (4096,), "fc8": (256,)}
    assert net.conv1.weight.shape == (96, 3, 11, 11) and net.conv2.weight.shape == (256, 96, 5, 5)


@pytest.fixture(scope="module")
def fitted():
    X, T, Y = make_structured(300, seed=5, noise=0.8)
    m = SDCH(16, n_epochs=6, batch_size=32, image_hidden=(64,), text_hidden=(64,),
             feature_dim=32, device="cpu", random_state=0).fit(X, T, Y)
    return m, X, T, Y


def test_learned_codes_are_the_final_b_step(fitted):
    m, X, T, Y = fitted
    Bx, By = m.learned_codes("image"), m.learned_codes("text")
    assert Bx.dtype == np.int8 and Bx.shape == (300, 16) and set(np.unique(Bx)) <= {-1, 1}
    assert np.array_equal(Bx, sign(m.network_outputs(X, "image")))
    assert np.array_equal(By, sign(m.network_outputs(T, "text")))
    assert np.array_equal(m.encode(X, "image"), Bx)
    with pytest.MonkeyPatch.context() as mp:   # chunked encoding (base.encode): same codes
        mp.setattr(cmhash.base, "ENCODE_CHUNK_ROWS", 7)
        assert np.array_equal(m.encode(X, "image"), Bx) and np.array_equal(m.encode(T, "text"), By)
    # ITQ initialisation ran and its quantization loss never increased
    q = np.asarray(m.itq_loss_)
    assert q.size == 50 and np.all(np.diff(q) <= 1e-6 * q[1:])
    assert set(m.loss_terms_) == {"feature", "similarity", "quantization", "decorrelation",
                                  "balance"}
    assert len(m.objective_) == 6 and np.all(np.isfinite(m.objective_))
    # epoch 1 trains the features on L_f alone; B (hence L_h) only exists from epoch 2
    assert m.loss_terms_["similarity"][0] == 0 and m.loss_terms_["similarity"][1] > 0
    assert m.loss_terms_["feature"][-1] < m.loss_terms_["feature"][0]


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-3 epoch mechanics runs
def test_warmup_freezes_the_right_networks():
    X, T, Y = make_structured(120, seed=6)
    kw = dict(n_bits=8, batch_size=32, image_hidden=(16,), text_hidden=(16,), feature_dim=8,
              device="cpu", random_state=3)
    one = SDCH(n_epochs=1, **kw).fit(X, T, Y)
    two = SDCH(n_epochs=2, **kw).fit(X, T, Y)
    s1, s2 = one.network_states_, two.network_states_
    # epoch 2 updates only fc4 (Theta_h); epoch 1 only the feature networks (Theta_f)
    for k in s1:
        if k.startswith(("f.", "g.")):
            assert np.array_equal(s1[k], s2[k]), k
    assert not np.array_equal(s1["h.net.0.weight"], s2["h.net.0.weight"])
    # a model whose single epoch updates everything (no warm-up) moves fc4 in epoch 1
    nowarm = SDCH(n_epochs=1, warmup=False, **kw).fit(X, T, Y)
    assert not np.array_equal(nowarm.network_states_["h.net.0.weight"], s1["h.net.0.weight"])


def test_retrieval_beats_chance():
    X, T, Y = make_structured(500, seed=7, noise=1.0)
    tr, te = np.arange(400), np.arange(400, 500)
    m = SDCH(16, n_epochs=8, batch_size=32, image_hidden=(32,), text_hidden=(32,),
             feature_dim=32, device="cpu", random_state=0).fit(X[tr], T[tr], Y[tr])
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    i2t = mean_average_precision(m.encode(X[te], "image"), m.learned_codes("text"), Y[te], Y[tr])
    t2i = mean_average_precision(m.encode(T[te], "text"), m.learned_codes("image"), Y[te], Y[tr])
    assert i2t > chance + 0.3 and t2i > chance + 0.3


def test_seeded_cpu_training_is_reproducible(fitted, tmp_path):
    m, X, T, Y = fitted
    again = SDCH(**m.get_params()).fit(X, T, Y)
    for a, b in zip(m.codes_, again.codes_):
        assert np.array_equal(a, b)
    assert np.array_equal(m.encode(T, "text"), again.encode(T, "text"))
    other = SDCH(**dict(m.get_params(), random_state=1)).fit(X, T, Y)
    assert not np.array_equal(m.codes_[0], other.codes_[0])
    # save / cmhash.load round trip (no pickle) keeps codes and encoders
    path = m.save(tmp_path / "sdch.npz")
    back = cmhash.base.load(path)
    assert isinstance(back, SDCH)
    assert np.array_equal(back.learned_codes("image"), m.learned_codes("image"))
    assert np.array_equal(back.encode(X, "image"), m.encode(X, "image"))
    assert np.array_equal(back.encode(T, "text"), m.encode(T, "text"))


def test_weights_round_trip_through_a_state_dict_file(fitted, tmp_path):
    m, X, T, Y = fitted
    f = m._network("f")
    torch.save(f.state_dict(), tmp_path / "f.pt")
    g = build_backbone(dict(f.spec))
    assert not torch.equal(g.net[0].weight, f.net[0].weight)
    loaded = load_state_dict_file(g, tmp_path / "f.pt", strict=True)
    assert sorted(loaded) == sorted(f.state_dict())
    g.eval()
    Xs = torch.from_numpy(m._prepare(X, 0))
    with torch.no_grad():
        assert torch.equal(g(Xs), f(Xs))
    # as SDCH's image_weights: the loaded layers start from the file's values
    m2 = SDCH(**dict(m.get_params(), image_weights=str(tmp_path / "f.pt"), n_epochs=1,
                     lr_feature=1e-12, pretrained_lr_scale=0.0)).fit(X, T, Y)
    for k, v in f.state_dict().items():
        assert np.array_equal(m2.network_states_["f." + k], v.numpy()), k


# ------------------------------------------------------- stabilising options (off by default)
_SMALL = dict(n_bits=8, batch_size=32, image_hidden=(16,), text_hidden=(16,), feature_dim=8,
              device="cpu", random_state=3)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-3 epoch mechanics runs
@pytest.mark.parametrize("bound, scale", [("tanh", 0.5), ("l2", 2.0)])
def test_bounded_features_are_bounded_and_round_trip(bound, scale, tmp_path):
    X, T, Y = make_structured(120, seed=6)
    m = SDCH(n_epochs=4, feature_bound=bound, feature_scale=scale, lr_feature=1e-2,
             **_SMALL).fit(X, T, Y)
    for V, mod in ((X, "image"), (T, "text")):
        F = m.features(V, mod)
        raw = m._predict(m._network("f" if mod == "image" else "g"), m._prepare(V, mod == "text"))
        if bound == "tanh":
            assert np.abs(F).max() < scale and np.abs(raw).max() > scale   # really clipped
        else:
            assert np.allclose(np.linalg.norm(F, axis=1), scale, rtol=1e-5)
            assert not np.allclose(np.linalg.norm(raw, axis=1), scale, rtol=1e-2)
        # the codes, learned and encoded, are sign(fc4(bounded features))
        assert np.array_equal(m.encode(V, mod), sign(m._predict(m._network("h"), F)))
    assert np.array_equal(m.learned_codes("text"), m.encode(T, "text"))
    back = cmhash.base.load(m.save(tmp_path / "b.npz"))
    assert back.feature_bound == bound and back.feature_scale == scale
    for V, mod in ((X, "image"), (T, "text")):
        assert np.array_equal(back.encode(V, mod), m.encode(V, mod))
        assert np.allclose(back.features(V, mod), m.features(V, mod))
    plain = SDCH(n_epochs=4, lr_feature=1e-2, **_SMALL).fit(X, T, Y)
    assert not np.array_equal(plain.codes_[1], m.codes_[1])


def test_gradient_clipping_bounds_the_applied_gradient_norm():
    X, T, Y = make_structured(120, seed=6)
    free = SDCH(n_epochs=3, **_SMALL).fit(X, T, Y)
    clip = 1e-3
    assert free.grad_norm_max_ > 10 * clip
    clipped = SDCH(n_epochs=3, grad_clip=clip, **_SMALL).fit(X, T, Y)
    assert 0 < clipped.grad_norm_max_ <= clip * (1 + 1e-6)
    assert not np.array_equal(free.network_states_["g.net.0.weight"],
                              clipped.network_states_["g.net.0.weight"])


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-3 epoch mechanics runs
def test_text_learning_rate_decay_and_text_steps():
    X, T, Y = make_structured(120, seed=6)
    # lr_text ~ 0 freezes the text network from its (seeded) initialisation ...
    a = SDCH(n_epochs=1, lr_text=1e-12, **_SMALL).fit(X, T, Y)
    b = SDCH(n_epochs=4, lr_text=1e-12, **_SMALL).fit(X, T, Y)
    assert np.allclose(a.features(T, "text"), b.features(T, "text"), atol=1e-6)
    assert not np.allclose(a.features(X, "image"), b.features(X, "image"), atol=1e-3)
    # ... while the default (lr_text = lr_feature) moves it
    c = SDCH(n_epochs=4, **_SMALL).fit(X, T, Y)
    assert not np.allclose(a.features(T, "text"), c.features(T, "text"), atol=1e-3)
    # lr_decay ~ 0 stops all learning after the first epoch
    d1 = SDCH(n_epochs=1, lr_decay=1e-9, **_SMALL).fit(X, T, Y)
    d4 = SDCH(n_epochs=4, lr_decay=1e-9, **_SMALL).fit(X, T, Y)
    for k, v in d1.network_states_.items():
        assert np.allclose(v, d4.network_states_[k], atol=1e-6), k
    # extra text steps change the text network but keep training reproducible
    t2 = SDCH(n_epochs=4, text_steps=3, **_SMALL).fit(X, T, Y)
    t2b = SDCH(n_epochs=4, text_steps=3, **_SMALL).fit(X, T, Y)
    assert np.array_equal(t2.codes_[1], t2b.codes_[1])
    assert not np.allclose(t2.features(T, "text"), c.features(T, "text"), atol=1e-3)


def test_stabilising_options_are_validated():
    X, T, Y = make_structured(40, seed=8)
    for kw, err, msg in [({"feature_bound": "relu"}, ValueError, "feature_bound must be one of"),
                         ({"feature_scale": 0.0}, ValueError, "feature_scale must be > 0"),
                         ({"grad_clip": -1.0}, ValueError, "grad_clip must be > 0"),
                         ({"lr_text": 0.0}, ValueError, "lr_text must be > 0"),
                         ({"lr_decay": 1.5}, ValueError, r"lr_decay must be in \(0, 1\]"),
                         ({"lr_decay": 0.0}, ValueError, r"lr_decay must be in \(0, 1\]"),
                         ({"text_steps": 0}, ValueError, "text_steps must be >= 1"),
                         ({"text_steps": 1.5}, TypeError, "text_steps must be an integer")]:
        with pytest.raises(err, match=msg):
            SDCH(device="cpu", **kw).fit(X, T, Y)


@pytest.mark.slow
def test_synthetic_image_text_with_alexnet():
    synth = pytest.importorskip("cmhash.data.synthetic")
    ds = synth.make_synthetic_image_text(n=360, image_size=32, n_classes=5, n_query=60,
                                         text_dim=100, random_state=0)
    (Xi, Xt), Ltr = ds.views("train"), ds.labels_of("train")
    (Qi, Qt), Lq = ds.views("query"), ds.labels_of("query")
    # measured (seed 0): i2t 0.559, t2i 0.547 against chance 0.361; L_f needs ~8 epochs to
    # leave its zero-feature saddle on 300 items, hence 25 epochs (docs/methods/sdch.md)
    m = SDCH(16, image_backbone="alexnet", fc_dim=64, feature_dim=32, text_hidden=(256,),
             n_epochs=25, batch_size=16, lr_feature=3e-3, device="cpu",
             random_state=0).fit(Xi, Xt, Ltr)
    assert m.architectures_["f"]["kind"] == "alexnet"
    chance = np.mean((Lq @ Ltr.T) > 0)
    i2t = mean_average_precision(m.encode(Qi, "image"), m.learned_codes("text"), Lq, Ltr)
    t2i = mean_average_precision(m.encode(Qt, "text"), m.learned_codes("image"), Lq, Ltr)
    print(f"synthetic image-text AlexNet: i2t={i2t:.3f} t2i={t2i:.3f} chance={chance:.3f}")
    assert i2t > chance + 0.12 and t2i > chance + 0.12


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-3 epoch mechanics runs
def test_bad_parameters_and_inputs():
    X, T, Y = make_structured(40, seed=8)
    with pytest.raises(ValueError, match="gamma must be >= 0, got -1"):
        SDCH(gamma=-1.0).fit(X, T, Y)
    with pytest.raises(ValueError, match="image_backbone must be one of .* got 'vgg'"):
        SDCH(image_backbone="vgg").fit(X, T, Y)
    with pytest.raises(ValueError, match="alexnet backbone takes images"):
        SDCH(image_backbone="alexnet", device="cpu").fit(X, T, Y)
    with pytest.raises(ValueError, match="two hidden layers"):
        SDCH(text_backbone="text-sdch", text_hidden=(8,), device="cpu").fit(X, T, Y)
    with pytest.raises(TypeError, match="warmup must be True or False"):
        SDCH(warmup="yes").fit(X, T, Y)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        SDCH(batch_size=1).fit(X, T, Y)
    m = SDCH(8, n_epochs=1, image_hidden=(8,), text_hidden=(8,), feature_dim=8,
             device="cpu", random_state=0).fit(X, T, Y)
    with pytest.raises(ValueError, match="shape"):
        m.encode(X[:, :5], "image")
    assert cmhash.base.get_method("sdch") is SDCH


# ------------------------------------------------------------------ audit: inputs and failures
def test_network_outputs_and_features_validate_their_input(fitted):
    """Both bypassed encode's checks: a wrong per-sample shape was numpy's broadcast error, a
    1-D sample an IndexError from torch, NaN rows silently gave NaN outputs."""
    m, X, T, Y = fitted
    for fn in (m.network_outputs, m.features):
        with pytest.raises(ValueError, match=r"per sample but the model was fitted on"):
            fn(T, "image")
        with pytest.raises(ValueError, match="must be a 2-D to 4-D array"):
            fn(X[0], "image")
        with pytest.raises(ValueError, match="NaN"):
            fn(np.full((2, X.shape[1]), np.nan), "image")


def test_raw_input_methods_share_encodes_validation(fitted):
    """TorchHasher._check_input was a copy of encode's checks; network_outputs / features now use
    the base class's _check_query, so each bad input gets encode's exact message, and no rows
    give (0, ...) outputs as encode gives (0, r) codes."""
    from cmhash.deep._torch_base import TorchHasher
    assert not hasattr(TorchHasher, "_check_input")
    m, X, T, Y = fitted
    for bad in (T, X[0], np.full((2, X.shape[1]), np.nan), X[:, :0], X.astype(complex)):
        with pytest.raises((ValueError, TypeError)) as ref:
            m.encode(bad, "image")
        for fn in (m.network_outputs, m.features):
            with pytest.raises(type(ref.value), match=re.escape(str(ref.value))):
                fn(bad, "image")
    assert m.network_outputs(X[:0], "image").shape == (0, 16)
    assert m.features(X[:0], "image").shape == (0, 32)
    assert m.encode(X[:0], "image").shape == (0, 16)
    # a single image without the batch axis is named as such
    fake = SDCH(8)
    fake.modality_names_, fake.n_features_ = ["image", "text"], [[3, 12, 12], [10]]
    with pytest.raises(ValueError, match=r"fitted on \(3, 12, 12\); a single sample is X\[None\]"):
        fake._check_query(np.zeros((3, 12, 12)), 0)


def test_csr_queries_of_a_dense_trained_modality_are_standardised(fitted):
    """CSR input skipped the training standardisation: other codes than the same dense rows."""
    import scipy.sparse as sp
    m, X, T, Y = fitted
    assert np.array_equal(m.encode(sp.csr_matrix(T), "text"), m.encode(T, "text"))
    assert np.array_equal(m.encode(sp.csr_matrix(X), "image"), m.learned_codes("image"))
    assert np.allclose(m.features(sp.csr_matrix(T), "text"), m.features(T, "text"))


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-epoch run
def test_one_warmup_epoch_still_ends_with_the_sign_b_step():
    """With n_epochs=1 (warm-up) the learned codes were ITQ's rotated sign((Z - mean) R), a
    code space the hash functions sign(fc4(f(x))) do not share: queries and the learned
    database did not match. Now every run ends with B = sign(Z) (Eq. 10)."""
    X, T, Y = make_structured(120, seed=6)
    m = SDCH(n_epochs=1, **_SMALL).fit(X, T, Y)
    assert len(m.itq_loss_) == 50                      # ITQ still initialised B after epoch 1
    assert np.array_equal(m.learned_codes("image"), m.encode(X, "image"))
    assert np.array_equal(m.learned_codes("text"), m.encode(T, "text"))


def test_divergence_is_an_error_not_nan_codes():
    """A diverged run used to return a model with NaN objective and all -1 codes."""
    X, T, Y = make_structured(120, seed=6)
    with pytest.raises(FloatingPointError, match=r"diverged in epoch \d: .*lr_feature="):
        SDCH(n_epochs=4, lr_feature=1e6, lr_hash=1e6, **_SMALL).fit(X, T, Y)


def test_bad_weights_files_and_hidden_widths(tmp_path):
    """A directory as image_weights was an IsADirectoryError from torch.load; a file of another
    architecture silently loaded nothing; hidden widths 8.5 were truncated to 8."""
    X, T, Y = make_structured(40, seed=8)
    with pytest.raises(ValueError, match="image_weights must be a file"):
        SDCH(device="cpu", image_weights=str(tmp_path)).fit(X, T, Y)
    torch.save({"features.0.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor of .*other.pt matches the network"):
        SDCH(n_epochs=1, image_weights=str(tmp_path / "other.pt"), **_SMALL).fit(X, T, Y)
    wide = build_backbone({"kind": "mlp", "in_shape": [X.shape[1]], "out_dim": 8, "hidden": [32]})
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"net\.0\.weight: file \(32, 20\) vs model \(16, 20\)"):
        SDCH(n_epochs=1, image_weights=str(tmp_path / "wide.pt"), **_SMALL).fit(X, T, Y)
    with pytest.raises(ValueError, match="text_hidden must be a positive integer"):
        SDCH(n_epochs=1, **{**_SMALL, "text_hidden": (8.5,)}).fit(X, T, Y)


def test_save_with_a_torch_device_and_a_path_object(tmp_path):
    """device=torch.device("cpu") and image_weights=pathlib.Path(...) are accepted by fit, but
    save failed with "Object of type device / PosixPath is not JSON serializable"."""
    X, T, Y = make_structured(60, seed=6)
    pre = build_backbone({"kind": "mlp", "in_shape": [X.shape[1]], "out_dim": 8, "hidden": [16]})
    torch.save(pre.state_dict(), tmp_path / "w.pt")
    kw = {**_SMALL, "device": torch.device("cpu")}
    m = SDCH(n_epochs=2, image_weights=tmp_path / "w.pt", **kw).fit(X, T, Y)
    back = cmhash.base.load(m.save(tmp_path / "m.npz"))
    # the path is written as a string and comes back as the same pathlib.Path (exact round trip)
    assert back.device == "cpu" and back.image_weights == tmp_path / "w.pt"
    with np.load(tmp_path / "m.npz") as f:
        header = json.loads(bytes(f["__header__"]).decode())
    assert header["params"]["image_weights"] == str(tmp_path / "w.pt")
    assert m.device == torch.device("cpu")                 # the estimator's own params unchanged
    assert np.array_equal(back.encode(X, "image"), m.encode(X, "image"))


# ------------------------------------------------ wiring: real training steps vs. the objective
def _L_f(Fx, Fy, Lb):
    """Eq. 4 written out: sum_ij log(1 + e^Theta_ij) - S^f_ij Theta_ij, Theta = Fx Fy^T."""
    Sf = (Lb @ Lb.T > 0).double()
    theta = Fx @ Fy.T
    return (torch.log1p(torch.exp(theta)) - Sf * theta).sum()


def _L_h(Z, B, Lb, beta1, beta2, beta3):
    """Eq. 7 as implemented (docs/methods/sdch.md) for Z = [fc4(Fx); fc4(Fy)] (2b x r)."""
    L2 = torch.cat([Lb, Lb]).double()
    Sh = 2.0 * (L2 @ L2.T > 0).double() - 1.0
    N, r = Z.shape
    return (((Z @ Z.T / r - Sh) ** 2).sum() + beta1 * ((Z - B) ** 2).sum()
            + beta2 * ((Z.T @ Z / N - torch.eye(r, dtype=Z.dtype)) ** 2).sum()
            + beta3 / r * (Z.sum(0) ** 2).sum())


#: gamma = 1 and distinct learning rates, so that each term and each network's rate matters
_WIRING = dict(n_bits=6, batch_size=10, image_hidden=(8,), text_hidden=(8,), feature_dim=5,
               gamma=1.0, beta1=0.8, beta2=0.6, beta3=0.3, optimizer="sgd", lr_feature=0.01,
               lr_text=0.004, lr_hash=0.002, standardize=False, device="cpu", random_state=0)


def _record_steps(monkeypatch):
    """Spy on SDCH._train_step: the first call of each phase ("feature", "hash", "all") with
    float64 copies of f, g, h and their parameters before and after; every call's phase and
    fc4 parameters before it."""
    from wiring import float64_copy, snapshot
    first, calls = {}, []
    real_step = SDCH._train_step

    def spy(self, phase, f, g, h, opt_f, opt_h, xb, yb, Lb, Bb, gamma, hp):
        calls.append((phase, snapshot(h)))
        rec = None
        if phase not in first:
            rec = {"xb": xb.clone(), "yb": yb.clone(), "Lb": Lb.clone(),
                   "Bb": None if Bb is None else Bb.clone(),
                   "copies": {k: float64_copy(v) for k, v in (("f", f), ("g", g), ("h", h))},
                   "before": {k: snapshot(v) for k, v in (("f", f), ("g", g), ("h", h))}}
        out = real_step(self, phase, f, g, h, opt_f, opt_h, xb, yb, Lb, Bb, gamma, hp)
        if rec is not None:
            rec["after"] = {k: snapshot(v) for k, v in (("f", f), ("g", g), ("h", h))}
            first[phase] = rec
        return out

    monkeypatch.setattr(SDCH, "_train_step", spy)
    return first, calls


def _check_batch_rows(rec, X, T, Y):
    """The batch holds the same items in both modalities, with their labels."""
    from wiring import rows_of
    idx = rows_of(rec["xb"], X)
    assert rows_of(rec["yb"], T) == idx
    np.testing.assert_array_equal(rec["Lb"].numpy(), Y[idx])


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-2 epoch mechanics runs
def test_every_network_steps_on_the_objective_and_fc4_waits_in_epoch_1(monkeypatch):
    """Wiring of Algorithm 1 / Section 4.2 against L = L_f + gamma L_h written out here:
    epoch 1 ("feature") steps psi_x, psi_y on L_f only and leaves fc4 unchanged through the
    whole epoch (its learning rate is 0); epoch 2 ("hash") steps fc4 only, on gamma L_h with
    the features fixed; a full step ("all") first steps fc4 on gamma L_h, then psi_x, psi_y on
    L_f + gamma L_h through the UPDATED fc4. Each is the first step of a fresh SGD, so plain
    SGD with the network's own learning rate."""
    from wiring import sgd_reference, update_error, with_parameters
    X, T, Y = make_structured(40, seed=9)
    first, calls = _record_steps(monkeypatch)
    m = SDCH(n_epochs=2, **_WIRING).fit(X, T, Y)
    n_batches = 4
    assert [c[0] for c in calls] == ["feature"] * n_batches + ["hash"] * n_batches
    h0 = calls[0][1]
    for phase, h_before in calls[:n_batches + 1]:   # fc4 unchanged until the first hash step
        for k in h0:
            assert torch.equal(h_before[k], h0[k]), (phase, k)
    lrs = {"f": m.lr_feature, "g": m.lr_text, "h": m.lr_hash}
    hp = dict(beta1=m.beta1, beta2=m.beta2, beta3=m.beta3)

    rec = first["feature"]                 # L_f only; fc4 does not move
    _check_batch_rows(rec, X, T, Y)
    c = rec["copies"]
    want = sgd_reference({"f": c["f"], "g": c["g"]}, lambda nets: _L_f(
        nets["f"](rec["xb"].double()), nets["g"](rec["yb"].double()), rec["Lb"].double()), lrs)
    for k in ("f", "g"):
        assert update_error(rec["before"][k], rec["after"][k], want[k]) < 1e-4, k
    for k, v in rec["before"]["h"].items():
        assert torch.equal(rec["after"]["h"][k], v)

    rec = first["hash"]                    # gamma L_h on fc4, features fixed
    _check_batch_rows(rec, X, T, Y)
    c = rec["copies"]
    with torch.no_grad():
        Fxy = torch.cat([c["f"](rec["xb"].double()), c["g"](rec["yb"].double())])
    want = sgd_reference({"h": c["h"]}, lambda nets: m.gamma * _L_h(
        nets["h"](Fxy), rec["Bb"].double(), rec["Lb"], **hp), lrs)
    assert update_error(rec["before"]["h"], rec["after"]["h"], want["h"]) < 1e-4
    for k in ("f", "g"):
        for name, v in rec["before"][k].items():
            assert torch.equal(rec["after"][k][name], v)

    # a full step (no warm-up: epoch 1 is a full epoch with the ITQ codes)
    monkeypatch.undo()
    first, _ = _record_steps(monkeypatch)
    m = SDCH(n_epochs=1, warmup=False, **_WIRING).fit(X, T, Y)
    rec = first["all"]
    _check_batch_rows(rec, X, T, Y)
    c, B, Lb = rec["copies"], rec["Bb"].double(), rec["Lb"]
    with torch.no_grad():
        Fxy = torch.cat([c["f"](rec["xb"].double()), c["g"](rec["yb"].double())])
    want_h = sgd_reference({"h": c["h"]}, lambda nets: m.gamma * _L_h(nets["h"](Fxy), B, Lb, **hp),
                           lrs)["h"]
    assert update_error(rec["before"]["h"], rec["after"]["h"], want_h) < 1e-4
    h_new = with_parameters(c["h"], want_h)

    def total(nets):
        Fx, Fy = nets["f"](rec["xb"].double()), nets["g"](rec["yb"].double())
        return _L_f(Fx, Fy, Lb.double()) + m.gamma * _L_h(h_new(torch.cat([Fx, Fy])), B, Lb, **hp)

    want = sgd_reference({"f": c["f"], "g": c["g"]}, total, lrs)
    for k in ("f", "g"):
        assert update_error(rec["before"][k], rec["after"][k], want[k]) < 1e-4, k


def test_paper_presets_use_table_1_text_network():
    """The paper presets built a 512-unit MLP text network; Table 1's is txt-fc1 4096 -
    txt-fc2 4096 - txt-fc3 256 (AlexNet for images); the Wiki preset keeps its MLPs."""
    bow, images = np.zeros((2, 1386)), np.zeros((2, 3, 227, 227))
    for name in ("nuswide", "mirflickr25k", "iapr-tc12"):
        m = SDCH(**SDCH.PRESETS[name])
        text = m._spec(bow, "text")
        assert text == {"kind": "text-sdch", "in_shape": [1386], "out_dim": 256,
                        "dropout": 0.0, "hidden": [4096, 4096]}, name
        net = build_backbone(text)
        assert [tuple(lin.weight.shape) for lin in (net.fc1, net.fc2, net.fc3)] == \
            [(4096, 1386), (4096, 4096), (256, 4096)]
        assert m._spec(images, "image")["kind"] == "alexnet"
    assert SDCH(**SDCH.PRESETS["wiki"])._spec(np.zeros((2, 10)), "text")["kind"] == "mlp"
