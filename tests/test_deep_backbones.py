"""Backbones, weight loading and the shared TorchHasher machinery (cmhash.deep)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import scipy.io  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from cmhash.deep._torch_base import TorchHasher, resolve_device, seed_everything  # noqa: E402
from cmhash.deep.backbones import (CNNF, MLP, AlexNet, TextNetSDCH, TextNetTA,  # noqa: E402
                                   build_backbone, load_state_dict_file, load_vggf_mat)


def _shapes(net, x, names):
    """Output shape of each named submodule during one forward pass."""
    out = {}
    hooks = [getattr(net, nm).register_forward_hook(
        lambda m, i, o, nm=nm: out.__setitem__(nm, tuple(o.shape))) for nm in names]
    with torch.no_grad():
        y = net(x)
    for h in hooks:
        h.remove()
    return out, tuple(y.shape)


def test_cnnf_layer_shapes_at_224():
    torch.manual_seed(0)
    net = CNNF(32).eval()
    shapes, y = _shapes(net, torch.randn(1, 3, 224, 224),
                        ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5",
                         "adapt", "fc6", "fc7", "fc8"])
    assert shapes["conv1"] == (1, 64, 54, 54)
    assert shapes["pool1"] == (1, 64, 27, 27)
    assert shapes["conv2"] == (1, 256, 27, 27)
    assert shapes["pool2"] == (1, 256, 13, 13)
    for c in ("conv3", "conv4", "conv5"):
        assert shapes[c] == (1, 256, 13, 13)
    assert shapes["pool5"] == (1, 256, 6, 6)
    assert shapes["adapt"] == (1, 256, 6, 6)      # identity at the paper's input size
    assert shapes["fc6"] == (1, 4096) and shapes["fc7"] == (1, 4096)
    assert y == (1, 32)
    # the adaptive pooling really is the identity at 224 x 224
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        h = net.pool5(torch.relu(net.conv5(torch.relu(net.conv4(torch.relu(net.conv3(
            net.pool2(net.norm2(torch.relu(net.conv2(net.pool1(net.norm1(torch.relu(net.conv1(x)))))))))))))))
        assert torch.equal(h, net.features(x))


def test_alexnet_layer_shapes_at_227():
    net = AlexNet(256).eval()
    shapes, y = _shapes(net, torch.randn(1, 3, 227, 227),
                        ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5",
                         "fc6", "fc7"])
    assert shapes["conv1"] == (1, 96, 55, 55) and shapes["pool1"] == (1, 96, 27, 27)
    assert shapes["conv2"] == (1, 256, 27, 27) and shapes["pool2"] == (1, 256, 13, 13)
    assert shapes["conv3"] == (1, 384, 13, 13) and shapes["conv4"] == (1, 384, 13, 13)
    assert shapes["conv5"] == (1, 256, 13, 13) and shapes["pool5"] == (1, 256, 6, 6)
    assert shapes["fc6"] == (1, 4096) and shapes["fc7"] == (1, 4096) and y == (1, 256)


def test_cnn_runs_on_small_images():
    net = build_backbone({"kind": "cnnf", "in_shape": [3, 32, 32], "out_dim": 8, "fc_dim": 16})
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 8)


def test_text_networks_layer_structure():
    ta = TextNetTA(50, 16)
    linears = [m for m in ta.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(50, 8192), (8192, 16)]
    sd = TextNetSDCH(50)
    linears = [m for m in sd.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(50, 4096), (4096, 4096),
                                                                    (4096, 256)]
    # identity output: a negative output is possible (no ReLU on the last layer)
    mlp = MLP(5, 3, hidden=(4,))
    torch.manual_seed(1)
    assert (mlp(torch.randn(200, 5)) < 0).any()


def test_build_backbone_rejects_bad_specs():
    with pytest.raises(ValueError, match="unknown backbone kind"):
        build_backbone({"kind": "vgg16", "in_shape": [3, 8, 8], "out_dim": 4})
    with pytest.raises(ValueError, match="images"):
        build_backbone({"kind": "cnnf", "in_shape": [128], "out_dim": 4})
    with pytest.raises(ValueError, match="out_dim"):
        build_backbone({"kind": "mlp", "in_shape": [8], "out_dim": 0})
    with pytest.raises(ValueError, match="unknown backbone spec key"):
        build_backbone({"kind": "mlp", "in_shape": [8], "out_dim": 2, "widht": 3})
    with pytest.raises(ValueError, match="dropout"):
        build_backbone({"kind": "mlp", "in_shape": [8], "out_dim": 2, "dropout": 1.5})


def test_state_dict_file_round_trip(tmp_path):
    torch.manual_seed(0)
    src = build_backbone({"kind": "text-ta", "in_shape": [20], "out_dim": 8, "hidden": [32]})
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    dst = build_backbone({"kind": "text-ta", "in_shape": [20], "out_dim": 8, "hidden": [32]})
    x = torch.randn(5, 20)
    assert not torch.allclose(src(x), dst(x))
    keys = load_state_dict_file(dst, path, strict=True)
    assert sorted(keys) == sorted(src.state_dict())
    assert torch.equal(src(x), dst(x))
    # a network whose last layer was replaced: everything else loads, the last layer is kept
    torch.manual_seed(2)
    other = build_backbone({"kind": "text-ta", "in_shape": [20], "out_dim": 4, "hidden": [32]})
    before = other.fc2.weight.detach().clone()
    keys = load_state_dict_file(other, path, strict=False)
    assert sorted(keys) == ["fc1.bias", "fc1.weight"]
    assert torch.equal(other.fc1.weight, src.fc1.weight) and torch.equal(other.fc2.weight, before)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_state_dict_file(other, path, strict=True)
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(other, tmp_path / "missing.pt")


def _fake_vggf(path, fc_dim, rng):
    """A MatConvNet SimpleNN .mat in the imagenet-vgg-f layout (random weights)."""
    convs = [("conv1", (11, 11, 3, 64)), ("conv2", (5, 5, 64, 256)), ("conv3", (3, 3, 256, 256)),
             ("conv4", (3, 3, 256, 256)), ("conv5", (3, 3, 256, 256)),
             ("fc6", (6, 6, 256, fc_dim)), ("fc7", (1, 1, fc_dim, fc_dim)),
             ("fc8", (1, 1, fc_dim, 1000))]
    layers, weights = [], {}
    for i, (name, shape) in enumerate(convs):
        W = rng.standard_normal(shape).astype(np.float32)
        b = rng.standard_normal(shape[-1]).astype(np.float32)
        weights[name] = (W, b)
        cell = np.empty((1, 2), dtype=object)
        cell[0, 0], cell[0, 1] = W, b
        layers.append({"name": name, "type": "conv", "weights": cell,
                       "stride": np.array([1, 1]), "pad": np.array([0, 0, 0, 0])})
        layers.append({"name": f"relu{i}", "type": "relu"})
        if name in ("conv1", "conv2"):
            layers.append({"name": f"norm{i}", "type": "lrn",
                           "param": np.array([5.0, 1.0, 2e-5, 0.75])})
    cell = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cell[0, i] = layer
    scipy.io.savemat(str(path), {"layers": cell})
    return weights


def test_vggf_mat_weights_land_transposed(tmp_path):
    rng = np.random.default_rng(0)
    fc_dim = 8
    path = tmp_path / "imagenet-vgg-f.mat"
    weights = _fake_vggf(path, fc_dim, rng)
    net = CNNF(16, fc_dim=fc_dim)
    fc8_before = net.fc8.weight.detach().clone()
    loaded = load_vggf_mat(net, path)
    assert loaded == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    # conv filters: torch (Cout, Cin, H, W)[o, c, h, w] == MatConvNet (H, W, Cin, Cout)[h, w, c, o]
    W1, b1 = weights["conv1"]
    for (h, w, c, o) in [(0, 0, 0, 0), (10, 3, 2, 63), (4, 9, 1, 17)]:
        assert net.conv1.weight[o, c, h, w].item() == W1[h, w, c, o]
    np.testing.assert_array_equal(net.conv1.weight.detach().numpy(), W1.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(net.conv1.bias.detach().numpy(), b1)
    # a conv with these weights equals the MatConvNet definition y[o] = sum_{h,w,c} x[c,h,w] W[h,w,c,o]
    x = torch.randn(1, 3, 11, 11)
    y = torch.nn.functional.conv2d(x, net.conv1.weight, net.conv1.bias)[0, :, 0, 0]
    ref = np.einsum("chw,hwco->o", x[0].numpy().astype(np.float64), W1.astype(np.float64)) + b1
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-4, atol=1e-3)
    # fc6 (a 6x6x256xfc_dim convolution in MatConvNet) applied to pool5 in torch's flatten order
    W6, b6 = weights["fc6"]
    feat = torch.randn(1, 256, 6, 6)
    y6 = net.fc6(feat.flatten(1))[0].detach().numpy()
    ref6 = np.einsum("chw,hwco->o", feat[0].numpy().astype(np.float64), W6.astype(np.float64)) + b6
    np.testing.assert_allclose(y6, ref6, rtol=1e-4, atol=1e-2)
    np.testing.assert_array_equal(net.fc7.weight.detach().numpy(), weights["fc7"][0][0, 0].T)
    # fc8 (ImageNet classes) is replaced by the hash layer and left alone
    assert torch.equal(net.fc8.weight, fc8_before)
    # LRN parameters [N kappa alpha beta] -> torch (size, k, alpha * N, beta)
    assert net.norm1.size == 5 and net.norm1.k == 1.0 and net.norm1.beta == 0.75
    assert net.norm1.alpha == pytest.approx(1e-4)
    # mismatched widths are refused
    with pytest.raises(ValueError, match="fc6"):
        load_vggf_mat(CNNF(16, fc_dim=4), path)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_seed_everything_reproduces_initialisation():
    seed_everything(123)
    a = MLP(6, 3).net[0].weight.detach().clone()
    seed_everything(123)
    b = MLP(6, 3).net[0].weight.detach().clone()
    seed_everything(124)
    c = MLP(6, 3).net[0].weight.detach().clone()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tensor_and_predict_helpers():
    rng = np.random.default_rng(0)
    dense = rng.random((37, 9)) * (rng.random((37, 9)) < 0.3)
    csr = sp.csr_matrix(dense)
    t_dense = TorchHasher._to_tensor(dense, "cpu")
    t_csr = TorchHasher._to_tensor(csr, "cpu", chunk=5)
    assert t_dense.dtype == torch.float32 and torch.equal(t_dense, t_csr)
    net = MLP(9, 4, hidden=(8,), dropout=0.5)
    net.train()
    full = TorchHasher._predict(net, dense, batch_size=100)
    # eval mode (no dropout): batching and CSR input do not change the outputs
    np.testing.assert_allclose(TorchHasher._predict(net, csr, batch_size=7), full, rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(t_dense).numpy(), full, rtol=1e-6)
    net.train()
    TorchHasher._predict(net, dense)
    assert net.training  # the previous mode is restored


def test_store_and_rebuild_networks():
    h = TorchHasher(4, device="cpu")
    torch.manual_seed(0)
    nets = {"f1": build_backbone({"kind": "mlp", "in_shape": [6], "out_dim": 4, "hidden": [5]}),
            "g1": build_backbone({"kind": "cnnf", "in_shape": [3, 32, 32], "out_dim": 4,
                                  "fc_dim": 8})}
    h._store_networks(**nets)
    assert set(h.architectures_) == {"f1", "g1"}
    assert "f1.net.0.weight" in h.network_states_
    assert all(isinstance(v, np.ndarray) for v in h.network_states_.values())
    rebuilt = h._build_networks(torch.device("cpu"))
    x, im = torch.randn(3, 6), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt["f1"](x), nets["f1"].eval()(x))
        assert torch.equal(rebuilt["g1"](im), nets["g1"].eval()(im))
    with pytest.raises(ValueError, match="build_backbone"):
        h._store_networks(bad=torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ audit: bad inputs / files
@pytest.mark.parametrize("kind", ["cnnf", "alexnet"])
def test_cnn_backbones_refuse_images_smaller_than_conv1(kind):
    """Images below conv1's 11 x 11 were a RuntimeError from inside torch's conv2d at the first
    forward pass; now build_backbone names the size (and spots channels-last input)."""
    with pytest.raises(ValueError, match=r"at least 11 x 11 .*\(3, 8, 8\)"):
        build_backbone({"kind": kind, "in_shape": [3, 8, 8], "out_dim": 4, "fc_dim": 8})
    with pytest.raises(ValueError, match="channels-last"):
        build_backbone({"kind": kind, "in_shape": [16, 16, 3], "out_dim": 4, "fc_dim": 8})
    net = build_backbone({"kind": kind, "in_shape": [3, 11, 11], "out_dim": 4, "fc_dim": 8})
    assert net(torch.randn(2, 3, 11, 11)).shape == (2, 4)


def test_state_dict_file_refuses_wrong_keys_wrong_shapes_and_unreadable_files(tmp_path):
    """strict=False used to skip every mis-shaped tensor and to load nothing at all from a file
    of another architecture, silently training from scratch; now only the output layer may
    differ, and wrong files are a ValueError naming the layer / the file."""
    torch.manual_seed(0)
    spec = {"kind": "cnnf", "in_shape": [3, 16, 16], "out_dim": 8, "fc_dim": 16}
    src = build_backbone(spec)
    good = tmp_path / "good.pt"
    torch.save(src.state_dict(), good)
    # another fc_dim: fc6 / fc7 do not fit -> error naming fc6
    with pytest.raises(ValueError, match=r"fc6\.weight: file \(16, 9216\) vs model \(8, 9216\)"):
        load_state_dict_file(build_backbone({**spec, "fc_dim": 8}), good)
    # one-channel images: conv1 does not fit -> error naming conv1
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        load_state_dict_file(build_backbone({**spec, "in_shape": [1, 16, 16]}), good)
    # only the output layer (fc8) may differ: another code length loads everything else
    other = build_backbone({**spec, "out_dim": 4})
    keys = load_state_dict_file(other, good)
    assert "fc8.weight" not in keys and "fc6.weight" in keys
    assert torch.equal(other.fc6.weight, src.fc6.weight)
    # nothing matches (e.g. torchvision names) -> error
    wrong = tmp_path / "wrong.pt"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, wrong)
    with pytest.raises(ValueError, match="no tensor of .* matches the network"):
        load_state_dict_file(build_backbone(spec), wrong)
    # unreadable / not a state_dict / a directory
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not read .*garbage.pt as a PyTorch state_dict"):
        load_state_dict_file(build_backbone(spec), garbage)
    mat = tmp_path / "vgg.mat"
    scipy.io.savemat(str(mat), {"x": np.zeros(2)})
    with pytest.raises(ValueError, match="MatConvNet .mat files load only into CNN-F"):
        load_state_dict_file(build_backbone(spec), mat)
    lst = tmp_path / "list.pt"
    torch.save([1, 2], lst)
    with pytest.raises(ValueError, match="does not contain a state_dict"):
        load_state_dict_file(build_backbone(spec), lst)
    with pytest.raises(ValueError, match="not a file"):
        load_state_dict_file(build_backbone(spec), tmp_path)
    with pytest.raises(ValueError, match="could not read .* as a MATLAB .mat file"):
        load_vggf_mat(CNNF(8, fc_dim=8), garbage)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-epoch runs
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("method", ["ta-adcmh", "sdch"])
def test_queries_with_non_finite_network_outputs_are_refused(method):
    """A finite float64 query beyond float32's range became inf, the network output NaN, and
    sign() silently turned it into an all -1 code; now a ValueError naming the row."""
    import cmhash
    rng = np.random.default_rng(0)
    Y = np.eye(2)[np.arange(30) % 2]
    X, T = rng.standard_normal((30, 6)), rng.standard_normal((30, 4))
    small = ({"image_hidden": (8,), "text_hidden": 8} if method == "ta-adcmh" else
             {"image_hidden": (8,), "text_hidden": (8,), "feature_dim": 8})
    m = cmhash.make_hasher(method, n_bits=8, n_epochs=1, batch_size=10, device="cpu",
                           random_state=0, **small).fit(X, T, Y)
    Q = X[:3].copy()
    Q[1, 2] = 1e39
    with pytest.raises(ValueError, match=r"1 query row\(s\) \(e.g. row 1\)"):
        m.encode(Q, "image")
    assert m.encode(X[:3], "image").shape == (3, 8)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-epoch runs
@pytest.mark.parametrize("method", ["ta-adcmh", "sdch"])
def test_estimator_contract_quiet_progress_device_params(method, capfd, caplog):
    """verbose=False prints nothing, verbose=True shows progress (a bar on a terminal; here,
    without one, INFO records of the "cmhash" logger) and nothing on stdout; device="cuda"
    without a GPU is a clear error at fit; get_params / set_params round-trip."""
    import logging

    import cmhash
    caplog.set_level(logging.INFO, logger="cmhash")
    rng = np.random.default_rng(0)
    Y = np.eye(2)[np.arange(30) % 2]
    X, T = rng.standard_normal((30, 6)), rng.standard_normal((30, 4))
    small = ({"image_hidden": (8,), "text_hidden": 8} if method == "ta-adcmh" else
             {"image_hidden": (8,), "text_hidden": (8,), "feature_dim": 8})
    kw = dict(n_bits=8, n_epochs=2, batch_size=10, device="cpu", random_state=0, **small)
    capfd.readouterr()
    quiet = cmhash.make_hasher(method, verbose=False, **kw).fit(X, T, Y)
    out, err = capfd.readouterr()
    assert out == "" and err == "" and not caplog.records
    loud = cmhash.make_hasher(method, verbose=True, **kw).fit(X, T, Y)
    out, err = capfd.readouterr()
    assert out == "" and err == ""      # stderr is not a terminal: no bar redraws
    assert [r for r in caplog.records if r.name == "cmhash" and r.levelno == logging.INFO]
    assert np.array_equal(quiet.encode(X, "image"), loud.encode(X, "image"))
    clone = type(quiet)().set_params(**quiet.get_params())
    assert clone.get_params() == quiet.get_params()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            cmhash.make_hasher(method, **{**kw, "device": "cuda"}).fit(X, T, Y)
