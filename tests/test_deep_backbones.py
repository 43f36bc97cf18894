"""Backbones, weight loading and the shared TorchHasher machinery (cmhash.deep)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import scipy.io  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from cmhash.deep._torch_base import TorchHasher, resolve_device, seed_everything  # noqa: E402
from cmhash.deep.backbones import (CNNF, LEGACY_LRN, MLP, AlexNet, TextNetSDCH,  # noqa: E402
                                   TextNetTA, build_backbone, load_state_dict_file,
                                   load_vggf_mat)


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


def _lrn_reference(x, n, alpha, beta, k, divide_by_n):
    """b_c = a_c / (k + alpha' sum_{|c'-c| <= n//2} a_c'^2)^beta, alpha' = alpha (/ n)."""
    sq = torch.nn.functional.pad(x ** 2, (0, 0, 0, 0, n // 2, (n - 1) // 2))
    s = sum(sq[:, i:i + x.shape[1]] for i in range(n))
    return x / (k + (alpha / n if divide_by_n else alpha) * s) ** beta


def test_lrn_constants_are_the_papers():
    """CNN-F: MatConvNet's vgg-f [N kappa alpha beta] = [5 1 1e-4/5 0.75] in
    x / (kappa + alpha sum x^2)^beta; AlexNet: Krizhevsky's k = 2, n = 5, alpha = 1e-4,
    beta = 0.75 in b = a / (k + alpha sum a^2)^beta (no division by n)."""
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64) * 30
    cnnf, alex = CNNF(8, fc_dim=8).double(), AlexNet(8, fc_dim=8).double()
    torch.testing.assert_close(cnnf.norm1(x), _lrn_reference(x, 5, 1e-4 / 5, 0.75, 1.0, False))
    torch.testing.assert_close(alex.norm2(x), _lrn_reference(x, 5, 1e-4, 0.75, 2.0, False))
    assert cnnf.lrn == (5, 1e-4, 0.75, 1.0) and alex.lrn == (5, 5e-4, 0.75, 2.0)
    with pytest.raises(ValueError, match="lrn"):
        build_backbone({"kind": "cnnf", "in_shape": [3, 32, 32], "out_dim": 4, "lrn": [5, 1]})


def test_alexnet_groups_split_conv2_conv4_conv5():
    net = AlexNet(16, fc_dim=8, groups=2)
    assert [getattr(net, f"conv{i}").weight.shape[1] for i in range(1, 6)] == [3, 48, 256, 192, 192]
    assert [getattr(net, f"conv{i}").groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    spec = {"kind": "alexnet", "in_shape": [3, 32, 32], "out_dim": 4, "fc_dim": 8, "groups": 2}
    assert build_backbone(spec).conv4.groups == 2
    with pytest.raises(ValueError, match="groups=5 must divide"):
        AlexNet(16, fc_dim=8, groups=5)
    with pytest.raises(ValueError, match=r"unknown backbone spec key\(s\) \['groups'\] for kind 'cnnf'"):
        build_backbone({**spec, "kind": "cnnf"})


@pytest.mark.parametrize("kind,size,out_layer", [("tv_alexnet", 63, "classifier.6"),
                                                 ("tv_resnet50", 32, "fc")])
def test_torchvision_backbones_are_torchvision_classes_with_an_out_dim_layer(kind, size, out_layer):
    from cmhash.deep._torchvision import import_torchvision
    from cmhash.deep.backbones import output_layer_name
    net = build_backbone({"kind": kind, "in_shape": [3, size, size], "out_dim": 12})
    cls = {"tv_alexnet": "AlexNet", "tv_resnet50": "ResNet"}[kind]
    assert isinstance(net, getattr(import_torchvision().models, cls))
    assert output_layer_name(net) == out_layer
    assert net.get_submodule(out_layer).out_features == 12
    assert net.eval()(torch.randn(1, 3, size, size)).shape == (1, 12)
    with pytest.raises(ValueError, match="3-channel RGB"):
        build_backbone({"kind": kind, "in_shape": [1, size, size], "out_dim": 4})
    with pytest.raises(ValueError, match="unknown backbone spec key"):
        build_backbone({"kind": kind, "in_shape": [3, size, size], "out_dim": 4, "fc_dim": 8})


def test_torchvision_backbone_saves_and_rebuilds_from_its_json_spec():
    """The JSON spec rebuilds the same module (BatchNorm buffers included) through
    TorchHasher's persistence."""
    import json
    torch.manual_seed(0)
    net = build_backbone({"kind": "tv_resnet50", "in_shape": [3, 32, 32], "out_dim": 12})
    net.train()(torch.randn(4, 3, 32, 32))           # move the BN running statistics
    h = TorchHasher(4, device="cpu")
    h._store_networks(f=net)
    json.dumps(h.architectures_)
    rebuilt = h._build_networks(torch.device("cpu"))["f"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net.eval()(x))


def test_torchvision_alexnet_minimum_image_size():
    with pytest.raises(ValueError, match=r"'tv_alexnet' needs images of at least 63 x 63"):
        build_backbone({"kind": "tv_alexnet", "in_shape": [3, 62, 62], "out_dim": 4})


def test_models_saved_before_the_lrn_was_in_the_spec_rebuild_with_the_old_constants():
    h = TorchHasher(4, device="cpu")
    net = build_backbone({"kind": "cnnf", "in_shape": [3, 16, 16], "out_dim": 4, "fc_dim": 8})
    h._store_networks(f=net)
    del h.architectures_["f"]["lrn"]                 # as written by the previous version
    rebuilt = h._build_networks(torch.device("cpu"))["f"]
    assert rebuilt.lrn == LEGACY_LRN and rebuilt.spec["lrn"] == list(LEGACY_LRN)


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
    with pytest.raises(ValueError, match="a MatConvNet .mat file: use source='matconvnet'"):
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
@pytest.mark.parametrize("method", ["ta-adcmh", "sdch", "dcmh"])
def test_queries_with_non_finite_network_outputs_are_refused(method):
    """A finite float64 query beyond float32's range became inf, the network output NaN, and
    sign() silently turned it into an all -1 code; now a ValueError naming the row."""
    import cmhash
    rng = np.random.default_rng(0)
    Y = np.eye(2)[np.arange(30) % 2]
    X, T = rng.standard_normal((30, 6)), rng.standard_normal((30, 4))
    small = ({"image_hidden": (8,), "text_hidden": (8,), "feature_dim": 8} if method == "sdch"
             else {"image_hidden": (8,), "text_hidden": 8})
    m = cmhash.make_hasher(method, n_bits=8, n_epochs=1, batch_size=10, device="cpu",
                           random_state=0, **small).fit(X, T, Y)
    Q = X[:3].copy()
    Q[1, 2] = 1e39
    with pytest.raises(ValueError, match=r"1 query row\(s\) \(e.g. row 1\)"):
        m.encode(Q, "image")
    assert m.encode(X[:3], "image").shape == (3, 8)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")  # 1-epoch runs
@pytest.mark.parametrize("method", ["ta-adcmh", "sdch", "dcmh"])
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
    small = ({"image_hidden": (8,), "text_hidden": (8,), "feature_dim": 8} if method == "sdch"
             else {"image_hidden": (8,), "text_hidden": 8})
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


@pytest.mark.parametrize("cls,chunk", [(CNNF, None), (AlexNet, None), (AlexNet, 1)])
def test_recomputed_relu_lrn_pool_blocks_change_nothing_but_the_saved_maps(cls, chunk,
                                                                           monkeypatch):
    """Training with ``recompute_activations`` (default) keeps only the input of each
    ReLU -> LRN -> max-pool block for the backward pass and recomputes the block there, in
    chunks of rows (``chunk=1``: one image at a time): the outputs and every gradient are bit
    for bit those of keeping the maps, and the tensors saved for the backward pass are
    smaller."""
    import cmhash.deep.backbones as bb
    if chunk is not None:
        monkeypatch.setattr(bb, "RECOMPUTE_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    net = cls(8, fc_dim=32)
    x = torch.randn(3, 3, 67, 67)
    results = {}
    for recompute in (True, False):
        net.recompute_activations = recompute
        net.zero_grad(set_to_none=True)
        saved = []
        weights = {p.data_ptr() for p in net.parameters()}

        def pack(t):                                    # activation maps (not the weights)
            if t.data_ptr() not in weights:
                saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(x)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        results[recompute] = (out.detach(), {k: p.grad.clone() for k, p in
                                             net.named_parameters()}, sum(saved))
    del net.recompute_activations                      # back to the class default (True)
    assert cls.recompute_activations is True
    (o1, g1, s1), (o0, g0, s0) = results[True], results[False]
    assert torch.equal(o1, o0)
    for k in g0:
        assert torch.equal(g1[k], g0[k]), k
    assert s1 < 0.6 * s0, (s1, s0)
    net.eval()                                          # no recomputation outside training
    with torch.no_grad():
        assert torch.equal(net(x), o0)
