"""Pretrained weights from local files (cmhash.deep.weights) and their input normalisation.

Every loader is tested on a file in the real layout, written here: MatConvNet .mat files in
the SimpleNN and DagNN structures (MATLAB conventions: filters H x W x Cin x Cout, fully
connected layers as convolutions with full-size kernels, biases as column vectors, cell and
struct arrays), torchvision state_dicts saved from torchvision's own model classes, and Caffe's
AlexNet as a state_dict with its grouped shapes.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import scipy.io  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from cmhash.deep._torchvision import import_torchvision  # noqa: E402
from cmhash.deep.backbones import CNNF, AlexNet, build_backbone  # noqa: E402
from cmhash.deep.normalization import (CAFFE_ILSVRC2012, TORCHVISION_IMAGENET,  # noqa: E402
                                       InputNormalization)
from cmhash.deep.weights import (grouped_to_dense, load_vggf_mat, load_weights,  # noqa: E402
                                 normalization_for, read_weights)

FC = 8   # fc6 / fc7 width of the test files (4096 in the real ones; the layout is the same)

#: (name, kernel, Cin per group, Cout, stride, pad) as in MatConvNet's cnn_imagenet_init.m
CNNF_CONVS = [("conv1", 11, 3, 64, 4, 0), ("conv2", 5, 64, 256, 1, 2),
              ("conv3", 3, 256, 256, 1, 1), ("conv4", 3, 256, 256, 1, 1),
              ("conv5", 3, 256, 256, 1, 1)]
#: Krizhevsky's / Caffe's / MatConvNet's AlexNet: conv2, conv4, conv5 in two groups
ALEX_CONVS = [("conv1", 11, 3, 96, 4, 0), ("conv2", 5, 48, 256, 1, 2),
              ("conv3", 3, 256, 384, 1, 1), ("conv4", 3, 192, 384, 1, 1),
              ("conv5", 3, 192, 256, 1, 1)]


def _cell(items):
    """A MATLAB cell array (1 x n) for scipy.io.savemat."""
    out = np.empty((1, len(items)), dtype=object)
    for i, x in enumerate(items):
        out[0, i] = x
    return out


def _mcn_layers(convs, rng):
    """The layer sequence of a MatConvNet CNN-F / AlexNet with random weights (MATLAB layout)."""
    layers = []
    fcs = [("fc6", 6, 256, FC, 1, 0), ("fc7", 1, FC, FC, 1, 0), ("fc8", 1, FC, 1000, 1, 0)]
    for name, k, cin, cout, stride, pad in convs + fcs:
        W = (rng.standard_normal((k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))).astype(np.float32)
        b = (0.1 * rng.standard_normal((cout, 1))).astype(np.float32)       # column vector
        layers.append({"name": name, "type": "conv", "W": W, "b": b, "stride": stride, "pad": pad})
        if name == "fc8":
            layers.append({"name": "prob", "type": "softmax"})
            break
        layers.append({"name": "relu" + name[-1], "type": "relu"})
        if name in ("conv1", "conv2"):
            layers.append({"name": "norm" + name[-1], "type": "lrn",
                           "param": np.array([5.0, 1.0, 1e-4 / 5, 0.75])})
        if name in ("conv1", "conv2", "conv5"):
            layers.append({"name": "pool" + name[-1], "type": "pool",
                           "pad": [0, 1, 0, 1] if name == "conv1" else [0, 0, 0, 0]})
        if name in ("fc6", "fc7"):
            layers.append({"name": "dropout" + name[-1], "type": "dropout"})
    return layers


def _meta(rng):
    avg = (rng.random((224, 224, 3)) * 40 + np.array([123.0, 117.0, 104.0])).astype(np.float32)
    return {"normalization": {"averageImage": avg, "imageSize": np.array([224.0, 224, 3]),
                              "border": np.array([32.0, 32]), "interpolation": "bilinear",
                              "keepAspect": True}}


def _write_simplenn(path, layers, meta=None, old_style=False):
    """``net.layers{i}`` structs in a cell array (vl_simplenn), ``meta.normalization``;
    ``old_style``: pre-beta17 fields (``filters`` / ``biases``, top-level ``normalization``)."""
    structs = []
    for layer in layers:
        d = {"name": layer["name"], "type": layer["type"]}
        if layer["type"] == "conv":
            s, p = layer["stride"], layer["pad"]
            if old_style:
                d.update(filters=layer["W"], biases=layer["b"].T)
            else:
                d["weights"] = _cell([layer["W"], layer["b"]])
            d.update(stride=np.array([s, s], float), pad=np.array([p] * 4, float))
        elif layer["type"] == "lrn":
            d.update(type="normalize", param=layer["param"])
        elif layer["type"] == "pool":
            d.update(method="max", pool=np.array([3.0, 3]), stride=2.0, pad=np.array(layer["pad"], float))
        elif layer["type"] == "dropout":
            d["rate"] = 0.5
        structs.append(d)
    out = {"layers": _cell(structs)}
    if meta is not None:
        if old_style:
            out["normalization"] = meta["normalization"]
        else:
            out["meta"] = meta
    scipy.io.savemat(str(path), out)


def _struct_array(records, fields):
    arr = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for i, rec in enumerate(records):
        arr[0, i] = tuple(rec[f] for f in fields)
    return arr


def _write_dagnn(path, layers, meta, rng, wrap_in_net=False, drop_params=()):
    """``dagnn.DagNN.saveobj``'s structure: layers(i) with name / type / inputs / outputs /
    params / block, params(j) with name / value / learningRate / weightDecay, vars, meta. The
    layers are written in shuffled order (execution order follows inputs / outputs)."""
    types = {"conv": "dagnn.Conv", "relu": "dagnn.ReLU", "lrn": "dagnn.LRN",
             "pool": "dagnn.Pooling", "dropout": "dagnn.DropOut", "softmax": "dagnn.SoftMax"}
    recs, params, var = [], [], "input"
    for i, layer in enumerate(layers):
        out = f"x{i + 1}"
        pnames = np.empty((0, 0), dtype=object)
        if layer["type"] == "conv":
            s, p = layer["stride"], layer["pad"]
            block = {"size": np.array(layer["W"].shape, float), "hasBias": True,
                     "opts": _cell([]), "pad": np.array([p] * 4, float),
                     "stride": np.array([s, s], float), "dilate": np.array([1.0, 1])}
            pnames = _cell([layer["name"] + "f", layer["name"] + "b"])
            params += [{"name": layer["name"] + "f", "value": layer["W"], "learningRate": 1.0,
                        "weightDecay": 1.0},
                       {"name": layer["name"] + "b", "value": layer["b"], "learningRate": 2.0,
                        "weightDecay": 0.0}]
        elif layer["type"] == "lrn":
            block = {"param": layer["param"]}
        elif layer["type"] == "pool":
            block = {"method": "max", "poolSize": np.array([3.0, 3]), "opts": _cell([]),
                     "pad": np.array(layer["pad"], float), "stride": np.array([2.0, 2])}
        else:
            block = {"useShortCircuit": True} if layer["type"] == "relu" else {"rate": 0.5}
        recs.append({"name": layer["name"], "type": types[layer["type"]], "inputs": _cell([var]),
                     "outputs": _cell([out]), "params": pnames, "block": block})
        var = out
    order = rng.permutation(len(recs))
    net = {"layers": _struct_array([recs[i] for i in order],
                                   ("name", "type", "inputs", "outputs", "params", "block")),
           "params": _struct_array([p for p in params if p["name"] not in drop_params],
                                   ("name", "value", "learningRate", "weightDecay")),
           "vars": _struct_array([{"name": f"x{i}", "precious": False}
                                  for i in range(len(recs) + 1)], ("name", "precious")),
           "meta": meta}
    scipy.io.savemat(str(path), {"net": net} if wrap_in_net else net)


def _torch_w(layer):
    """MATLAB H x W x Cin x Cout -> PyTorch Cout x Cin x H x W (the reference conversion)."""
    return torch.from_numpy(layer["W"].transpose(3, 2, 0, 1).copy())


def _by_name(layers):
    return {layer["name"]: layer for layer in layers if layer["type"] == "conv"}


@pytest.fixture(scope="module")
def tv():
    return import_torchvision()


# ------------------------------------------------------------------ grouped convolutions
@pytest.mark.parametrize("groups", [2, 3])
def test_grouped_to_dense_equals_the_grouped_convolution(groups):
    torch.manual_seed(0)
    grouped = torch.nn.Conv2d(6 * groups // 2, 4 * groups, 3, padding=1, groups=groups)
    x = torch.randn(2, grouped.in_channels, 9, 9)
    dense = grouped_to_dense(grouped.weight.detach(), groups)
    assert dense.shape == (grouped.out_channels, grouped.in_channels, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, dense, grouped.bias, padding=1), grouped(x),
                                   rtol=1e-5, atol=1e-5)
    # the off-diagonal blocks are exactly zero, the diagonal blocks the original filters
    og, ig = grouped.out_channels // groups, grouped.in_channels // groups
    for g in range(groups):
        for h in range(groups):
            block = dense[g * og:(g + 1) * og, h * ig:(h + 1) * ig]
            expected = grouped.weight[g * og:(g + 1) * og] if g == h else torch.zeros_like(block)
            assert torch.equal(block, expected)


def _caffe_alexnet_state(rng):
    """bvlc_alexnet as a PyTorch state_dict under Caffe's names and blob shapes (grouped)."""
    state = {}
    for name, k, cin, cout, _, _ in ALEX_CONVS:
        state[f"{name}.weight"] = torch.from_numpy(
            (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (k * k * cin))).astype(np.float32))
        state[f"{name}.bias"] = torch.from_numpy(0.1 * rng.standard_normal(cout).astype(np.float32))
    for name, fin, fout in (("fc6", 9216, FC), ("fc7", FC, FC), ("fc8", FC, 1000)):
        state[f"{name}.weight"] = torch.from_numpy(
            (rng.standard_normal((fout, fin)) / np.sqrt(fin)).astype(np.float32))
        state[f"{name}.bias"] = torch.zeros(fout)
    return state


def test_caffe_grouped_alexnet_is_converted_exactly(tmp_path):
    """Caffe's grouped AlexNet loaded into the ungrouped AlexNet computes what the grouped
    Caffe network computes on the BGR image (conv1 is turned to RGB), up to float rounding;
    into AlexNet(groups=2) it loads unconverted."""
    state = _caffe_alexnet_state(np.random.default_rng(0))
    path = tmp_path / "bvlc_alexnet.pt"
    torch.save(state, path)
    # reference: the grouped network with Caffe's LRN, weights copied by torch itself
    ref = AlexNet(16, fc_dim=FC, groups=2, lrn=(5, 1e-4, 0.75, 1.0)).eval()
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc8")}, strict=False)

    dense = AlexNet(16, fc_dim=FC).eval()
    weights = load_weights(dense, path)                       # "auto" -> caffe
    assert weights.source == "caffe" and weights.normalization == CAFFE_ILSVRC2012
    grouped = AlexNet(16, fc_dim=FC, groups=2).eval()
    load_weights(grouped, path, source="caffe")
    assert dense.conv2.weight.shape == (256, 96, 5, 5) and grouped.conv2.weight.shape == (256, 48, 5, 5)
    assert dense.norm1.k == 1.0 and dense.norm1.alpha == pytest.approx(1e-4)
    x_rgb = torch.rand(2, 3, 67, 67) * 255 - 120
    with torch.no_grad():
        expected = ref.fc7(torch.relu(ref.fc6(ref.features(x_rgb.flip(1)).flatten(1))))
        for net in (dense, grouped):
            got = net.fc7(torch.relu(net.fc6(net.features(x_rgb).flatten(1))))
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # conv1 is Caffe's BGR filter bank with the input-channel axis reversed
    assert torch.equal(dense.conv1.weight, state["conv1.weight"].flip(1))
    # the converted conv4 is block-diagonal: no connection across the two groups
    assert torch.count_nonzero(dense.conv4.weight[:192, 192:]) == 0
    assert torch.count_nonzero(dense.conv4.weight[192:, :192]) == 0
    # fc8 (1000 ImageNet classes) is the replaced layer
    assert dense.fc8.weight.shape == (16, FC)


def test_ungrouped_weights_are_refused_by_a_grouped_alexnet(tmp_path):
    src = AlexNet(16, fc_dim=FC)
    path = tmp_path / "dense.pt"
    torch.save(src.state_dict(), path)
    with pytest.raises(ValueError, match=r"conv2 of AlexNet, which expects \(256, 48, 5, 5\).*groups=1"):
        load_weights(AlexNet(16, fc_dim=FC, groups=2), path, source="caffe")


# ------------------------------------------------------------------ MatConvNet
@pytest.fixture(scope="module")
def vggf_files(tmp_path_factory):
    rng = np.random.default_rng(1)
    d = tmp_path_factory.mktemp("vggf")
    layers, meta = _mcn_layers(CNNF_CONVS, rng), _meta(rng)
    files = {"simplenn": d / "imagenet-vgg-f.mat", "old": d / "imagenet-vgg-f-old.mat",
             "dagnn": d / "imagenet-vgg-f-dag.mat", "dagnn-net": d / "vgg-f-dag-net.mat"}
    _write_simplenn(files["simplenn"], layers, meta)
    _write_simplenn(files["old"], layers, meta, old_style=True)
    _write_dagnn(files["dagnn"], layers, meta, rng)
    _write_dagnn(files["dagnn-net"], layers, meta, rng, wrap_in_net=True)
    return files, layers, meta


@pytest.mark.parametrize("layout", ["simplenn", "old", "dagnn", "dagnn-net"])
def test_vggf_mat_loads_in_every_layout(vggf_files, layout):
    files, layers, meta = vggf_files
    net = CNNF(16, fc_dim=FC)
    fc8_before = net.fc8.weight.detach().clone()
    weights = read_weights(files[layout])
    assert weights.source == "matconvnet"
    assert weights.layout == ("dagnn" if layout.startswith("dagnn") else "simplenn")
    keys = weights.load_into(net)
    assert sorted(keys) == sorted(f"{n}.{p}" for n in ("conv1", "conv2", "conv3", "conv4",
                                                        "conv5", "fc6", "fc7")
                                  for p in ("weight", "bias"))
    convs = _by_name(layers)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        assert torch.equal(getattr(net, name).weight, _torch_w(convs[name]))
        assert torch.equal(getattr(net, name).bias, torch.from_numpy(convs[name]["b"].ravel()))
    assert torch.equal(net.fc8.weight, fc8_before)           # the replaced layer
    # MatConvNet's definition y[o] = sum_{h,w,c} x[c,h,w] W[h,w,c,o] + b[o] (conv1 and fc6)
    x = torch.randn(1, 3, 11, 11)
    with torch.no_grad():
        y = net.conv1(x)[0, :, 0, 0].numpy()
        ref = np.einsum("chw,hwco->o", x[0].double().numpy(), convs["conv1"]["W"]) + convs["conv1"]["b"].ravel()
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
        feat = torch.randn(1, 256, 6, 6)
        y6 = net.fc6(feat.flatten(1))[0].numpy()
        ref6 = np.einsum("chw,hwco->o", feat[0].double().numpy(), convs["fc6"]["W"]) + convs["fc6"]["b"].ravel()
        np.testing.assert_allclose(y6, ref6, rtol=1e-4, atol=1e-4)
    # LRN [N kappa alpha beta] = [5 1 2e-5 0.75] -> torch (5, alpha * N, beta, kappa), in the spec
    assert (net.norm2.size, net.norm2.k, net.norm2.beta) == (5, 1.0, 0.75)
    assert net.norm2.alpha == pytest.approx(1e-4)
    # the normalisation stored in the file: the average image, 0-255 RGB, channel-first
    norm = weights.normalization
    assert norm.source == "matconvnet" and norm.scale == 255.0 and norm.size == (224, 224)
    assert norm.resize == 256                                  # imageSize + border
    np.testing.assert_array_equal(norm.mean, meta["normalization"]["averageImage"].transpose(2, 0, 1))
    np.testing.assert_array_equal(norm.std, np.ones(3))
    assert normalization_for({"kind": "cnnf"}, files[layout]) == norm   # reads meta only


def test_vggf_dagnn_and_simplenn_give_the_same_network(vggf_files):
    files, _, _ = vggf_files
    a, b = CNNF(16, fc_dim=FC), CNNF(16, fc_dim=FC)
    b.load_state_dict(a.state_dict())                         # same fc8
    load_weights(a, files["simplenn"])
    load_weights(b, files["dagnn"])
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_legacy_load_vggf_mat_and_lrn_in_spec(vggf_files):
    """load_vggf_mat still returns the layer names; the file's LRN constants go into the spec,
    so a saved and rebuilt network has them (they were lost on save before)."""
    files, _, _ = vggf_files
    net = build_backbone({"kind": "cnnf", "in_shape": [3, 32, 32], "out_dim": 16, "fc_dim": FC})
    net.set_lrn((5, 3e-4, 0.5, 2.0))
    assert load_vggf_mat(net, files["dagnn"]) == ["conv1", "conv2", "conv3", "conv4", "conv5",
                                                  "fc6", "fc7"]
    assert net.spec["lrn"] == [5, pytest.approx(1e-4), 0.75, 1.0]
    again = build_backbone(dict(net.spec))
    assert (again.norm1.size, again.norm1.alpha, again.norm1.beta, again.norm1.k) == \
        (net.norm1.size, net.norm1.alpha, net.norm1.beta, net.norm1.k)


def test_matconvnet_grouped_alexnet_mat_is_converted_exactly(tmp_path):
    """imagenet-caffe-alex.mat style: conv2 5x5x48x256, conv4 / conv5 3x3x192xC (MatConvNet
    infers two groups from the filter depth). Reference: MATLAB's grouped convolution written
    out with einsum from the file's H x W x Cin x Cout filters."""
    rng = np.random.default_rng(2)
    layers = _mcn_layers(ALEX_CONVS, rng)
    path = tmp_path / "imagenet-caffe-alex.mat"
    _write_simplenn(path, layers, _meta(rng))
    net = AlexNet(16, fc_dim=FC).eval()
    load_weights(net, path)
    W2, b2 = _by_name(layers)["conv2"]["W"], _by_name(layers)["conv2"]["b"].ravel()
    x = torch.randn(1, 96, 5, 5, dtype=torch.float64)
    xn = x[0].numpy()
    ref = np.concatenate([np.einsum("chw,hwco->o", xn[48 * g:48 * (g + 1)], W2[..., 128 * g:128 * (g + 1)])
                          for g in range(2)]) + b2
    with torch.no_grad():
        y = F.conv2d(x.float(), net.conv2.weight, net.conv2.bias)[0, :, 0, 0].numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    grouped = AlexNet(16, fc_dim=FC, groups=2).eval()
    load_weights(grouped, path)
    xi = torch.rand(2, 3, 67, 67) * 255
    with torch.no_grad():
        torch.testing.assert_close(net.features(xi), grouped.features(xi), rtol=1e-4, atol=1e-3)


def test_pixel_stats_use_the_average_image_at_its_size(vggf_files):
    files, _, meta = vggf_files
    norm = normalization_for({"kind": "cnnf"}, files["dagnn"])
    avg = meta["normalization"]["averageImage"].transpose(2, 0, 1)
    mean, std = norm.pixel_stats((3, 224, 224))
    np.testing.assert_array_equal(mean, avg)
    np.testing.assert_array_equal(std, np.ones((3, 1, 1)))
    mean, _ = norm.pixel_stats((3, 32, 32))                   # another size: per-channel mean
    np.testing.assert_allclose(mean.ravel(), avg.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6)
    X = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224)).astype(np.uint8)
    np.testing.assert_allclose(norm.apply(X), X - avg[None], rtol=1e-6, atol=1e-4)
    with pytest.raises(ValueError, match="3-channel"):
        norm.pixel_stats((1, 224, 224))
    with pytest.raises(ValueError, match="load into the 'cnnf' / 'alexnet' backbone"):
        normalization_for({"kind": "tv_alexnet"}, files["simplenn"])


# ------------------------------------------------------------------ torchvision
@pytest.fixture(scope="module")
def tv_alexnet_file(tv, tmp_path_factory):
    torch.manual_seed(0)
    model = tv.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp("tv") / "alexnet-owt.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_torchvision_alexnet_state_dict_loads_into_tv_alexnet(tv_alexnet_file):
    path, ref = tv_alexnet_file
    net = build_backbone({"kind": "tv_alexnet", "in_shape": [3, 64, 64], "out_dim": 16}).eval()
    weights = load_weights(net, path)
    assert (weights.source, weights.layout) == ("torchvision", "alexnet")
    assert weights.normalization == TORCHVISION_IMAGENET
    for k, v in ref.state_dict().items():
        if k.startswith("classifier.6."):
            assert net.state_dict()[k].shape[0] == 16          # the hash / feature layer
        else:
            assert torch.equal(net.state_dict()[k], v), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        penultimate = lambda m: m.classifier[:6](torch.flatten(m.avgpool(m.features(x)), 1))  # noqa: E731
        assert torch.equal(penultimate(net), penultimate(ref))
    assert normalization_for(net.spec, path) == TORCHVISION_IMAGENET
    # torchvision weights of one model do not go into another torchvision backbone
    with pytest.raises(ValueError, match="torchvision alexnet weights, which load into the "
                                         "'tv_alexnet' backbone; the image backbone is "
                                         "'tv_resnet50'"):
        normalization_for({"kind": "tv_resnet50", "in_shape": [3, 64, 64]}, path)


def test_torchvision_file_with_a_missing_layer_is_refused(tv_alexnet_file, tmp_path):
    path, ref = tv_alexnet_file
    state = {k: v for k, v in ref.state_dict().items() if k != "features.6.weight"}
    cut = tmp_path / "alexnet-cut.pth"
    torch.save(state, cut)
    net = build_backbone({"kind": "tv_alexnet", "in_shape": [3, 64, 64], "out_dim": 16})
    with pytest.raises(ValueError, match=r"does not fit torchvision alexnet: missing layers "
                                         r"\['features\.6\.weight'\]"):
        load_weights(net, cut, source="torchvision")


@pytest.mark.parametrize("cls", [AlexNet, CNNF])
def test_torchvision_alexnet_is_refused_by_the_papers_networks(tv_alexnet_file, cls):
    path, _ = tv_alexnet_file
    net = cls(16, fc_dim=FC)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"torchvision AlexNet weights .* features\.3 "
                                         r"\(192, 64, 5, 5\) vs conv2 \(256, \d+, 5, 5\).*'tv_alexnet'"):
        load_weights(net, path)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # nothing loaded


@pytest.mark.slow
def test_torchvision_resnet50_state_dict_and_an_older_file(tv, tmp_path):
    torch.manual_seed(0)
    ref = tv.models.resnet50(weights=None)
    with torch.no_grad():                                     # non-trivial BN statistics
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ref.eval()
    # torchvision's older resnet50 files have no num_batches_tracked entries
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    net = build_backbone({"kind": "tv_resnet50", "in_shape": [3, 32, 32], "out_dim": 8}).eval()
    keys = load_weights(net, path).load_into(net)
    assert "fc.weight" not in keys and "layer4.2.bn3.running_var" in keys
    x = torch.randn(2, 3, 32, 32)
    trunk = lambda m: torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(  # noqa: E731
        m.maxpool(m.relu(m.bn1(m.conv1(x))))))))), 1)
    with torch.no_grad():
        assert torch.equal(trunk(net), trunk(ref))
    # a missing layer is named
    del state["layer4.2.conv3.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing layers \['layer4\.2\.conv3\.weight'\]"):
        load_weights(net, path, source="torchvision")
    # torchvision weights of one model do not go into another torchvision backbone
    alex = build_backbone({"kind": "tv_alexnet", "in_shape": [3, 64, 64], "out_dim": 8})
    torch.save(ref.state_dict(), path)
    with pytest.raises(ValueError, match="torchvision resnet50 weights, which load into the "
                                         "'tv_resnet50' backbone, not 'tv_alexnet'"):
        load_weights(alex, path)
    # and the network saves / rebuilds through the estimators' persistence (BN buffers too)
    from cmhash.deep._torch_base import TorchHasher
    h = TorchHasher(8, device="cpu")
    h._store_networks(f=net)
    rebuilt = h._build_networks(torch.device("cpu"))["f"]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


@pytest.mark.slow
def test_torchvision_vgg16_state_dict(tv, tmp_path):
    torch.manual_seed(0)
    ref = tv.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16.pth"
    torch.save(ref.state_dict(), path)
    net = build_backbone({"kind": "tv_vgg16", "in_shape": [3, 32, 32], "out_dim": 8}).eval()
    weights = load_weights(net, path)
    assert weights.layout == "vgg16" and weights.normalization == TORCHVISION_IMAGENET
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.features(x), ref.features(x))
        assert torch.equal(net.classifier[:6](torch.flatten(net.avgpool(net.features(x)), 1)),
                           ref.classifier[:6](torch.flatten(ref.avgpool(ref.features(x)), 1)))


# ------------------------------------------------------------------ wrong files
def test_wrong_layouts_missing_layers_and_mismatched_shapes_are_named(vggf_files, tmp_path):
    files, layers, meta = vggf_files
    rng = np.random.default_rng(3)
    # a .mat that is not a MatConvNet model
    other = tmp_path / "other.mat"
    scipy.io.savemat(str(other), {"IAll": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"not a MatConvNet model.*variables: \['IAll'\]"):
        read_weights(other)
    # missing layers: a SimpleNN file cut after conv5
    cut = tmp_path / "cut.mat"
    _write_simplenn(cut, layers[:next(i for i, layer in enumerate(layers)
                                      if layer["name"] == "fc6")], meta)
    with pytest.raises(ValueError, match="has 5 conv / fc layer.*missing layers"):
        load_weights(CNNF(16, fc_dim=FC), cut)
    # shape mismatch, naming the layer and both shapes: vgg-f into AlexNet / a narrower fc
    with pytest.raises(ValueError, match=r"layer 'conv1' .* stored 11x11x3x64\): weights "
                                         r"\(64, 3, 11, 11\) .* expects \(96, 3, 11, 11\)"):
        load_weights(AlexNet(16, fc_dim=FC), files["simplenn"])
    with pytest.raises(ValueError, match=r"layer 'fc6' .* \(8, 9216\) .* expects \(4, 9216\)"):
        load_weights(CNNF(16, fc_dim=4), files["dagnn"])
    # hyper-parameters are checked too: a conv1 with stride 1 is not CNN-F's
    bad = [dict(layer, stride=1) if layer.get("name") == "conv1" else layer for layer in layers]
    stride1 = tmp_path / "stride1.mat"
    _write_simplenn(stride1, bad, meta)
    with pytest.raises(ValueError, match=r"stride \(1, 1\) differs from conv1's \(4, 4\)"):
        load_weights(CNNF(16, fc_dim=FC), stride1)
    # a layer type CNN-F / AlexNet do not have (a batch-normalised variant, say)
    bnorm = tmp_path / "bnorm.mat"
    _write_simplenn(bnorm, layers[:1] + [{"name": "bn1", "type": "bnorm"}] + layers[1:], meta)
    with pytest.raises(ValueError, match="layer 'bn1' has type 'bnorm', which the CNN-F / "
                                         "AlexNet layout does not have"):
        read_weights(bnorm)
    # a DagNN layer whose parameter is not in params
    dag = tmp_path / "dag.mat"
    _write_dagnn(dag, layers, meta, rng, drop_params=("conv1f", "conv1b"))
    with pytest.raises(ValueError, match=r"layer 'conv1' refers to parameter\(s\) \['conv1f', "
                                         r"'conv1b'\] that are not in 'params'"):
        read_weights(dag)
    # MatConvNet weights into a network of another kind
    with pytest.raises(ValueError, match="load into the 'cnnf' or 'alexnet' backbone, not 'mlp'"):
        load_weights(build_backbone({"kind": "mlp", "in_shape": [5], "out_dim": 2}), files["dagnn"])


def test_files_that_are_not_what_they_claim(vggf_files, tv_alexnet_file, tmp_path):
    files, _, _ = vggf_files
    tv_path, _ = tv_alexnet_file
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"\x00not a torch file at all")
    with pytest.raises(ValueError, match="could not read .*weights.pth as a PyTorch state_dict"):
        read_weights(garbage, "torchvision")
    with pytest.raises(ValueError, match="could not read .* as a MATLAB .mat file"):
        read_weights(tv_path, "matconvnet")
    with pytest.raises(ValueError, match="could not read .* as a PyTorch state_dict .*"
                                         "source='matconvnet'"):
        read_weights(files["simplenn"], "torchvision")
    # a torchvision file claimed to be Caffe's AlexNet, a Caffe file claimed to be torchvision
    with pytest.raises(ValueError, match=r"not a Caffe AlexNet state_dict: missing layer\(s\)"):
        read_weights(tv_path, "caffe")
    caffe = tmp_path / "caffe.pt"
    torch.save(_caffe_alexnet_state(np.random.default_rng(0)), caffe)
    with pytest.raises(ValueError, match="does not hold torchvision .* looks like caffe weights"):
        read_weights(caffe, "torchvision")
    with pytest.raises(ValueError, match="unknown weights source"):
        read_weights(caffe, "onnx")
    # MATLAB v7.3 (HDF5) files are named as such
    h5py = pytest.importorskip("h5py")
    v73 = tmp_path / "vgg-f-v73.mat"
    with h5py.File(v73, "w", userblock_size=512) as fh:
        fh.create_dataset("layers", data=np.zeros(3))
    with open(v73, "r+b") as fh:
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8
        fh.write(header + b"\x00\x02IM")
    with pytest.raises(ValueError, match=r"MATLAB v7\.3 \(HDF5\) file"):
        read_weights(v73)


# ------------------------------------------------------------------ the estimators
def _images(n, rng, size=16):
    Y = np.eye(2)[np.arange(n) % 2]
    X = rng.integers(0, 256, (n, 3, size, size)).astype(np.float32)
    X[Y[:, 0] == 1, 0] = np.minimum(X[Y[:, 0] == 1, 0] + 60, 255)   # label-dependent content
    return X, rng.standard_normal((n, 6)), Y


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
def test_sdch_applies_the_normalisation_of_vggf_weights_and_saves_it(vggf_files, tmp_path):
    import cmhash
    files, layers, meta = vggf_files
    rng = np.random.default_rng(0)
    X, T, Y = _images(8, rng)
    kw = dict(n_bits=8, n_epochs=1, batch_size=8, device="cpu", random_state=0, feature_dim=8,
              image_backbone="cnnf", fc_dim=FC, text_hidden=(8,))
    m = cmhash.make_hasher("sdch", image_weights=files["dagnn"], **kw).fit(X, T, Y)
    norm = m.input_normalization_
    assert isinstance(norm, InputNormalization) and norm.source == "matconvnet"
    avg_rgb = meta["normalization"]["averageImage"].astype(np.float64).mean(axis=(0, 1))  # 16 != 224
    np.testing.assert_allclose(m.input_means_[0].ravel(), avg_rgb, rtol=1e-6)
    np.testing.assert_array_equal(m.input_scales_[0], np.ones((3, 1, 1)))
    # the image network sees x - mean (in 0-255 units), not z-scores or raw pixels
    with torch.no_grad():
        f = m._network("f")
        expected = f(torch.from_numpy((X[:4] - avg_rgb[None, :, None, None]).astype(np.float32)))
    np.testing.assert_allclose(m.features(X[:4], "image"), expected.numpy(), rtol=1e-5, atol=1e-5)
    path = m.save(tmp_path / "sdch.npz")
    loaded = cmhash.load(path)
    assert loaded.input_normalization_ == norm
    assert np.array_equal(loaded.encode(X, "image"), m.encode(X, "image"))
    # images given as [0, 1] values are spotted (the weights expect 0-255 pixels)
    with pytest.warns(UserWarning, match=r"look like \[0, 1\] values"):
        cmhash.make_hasher("sdch", image_weights=files["dagnn"], **kw)._fit_standardization(
            [X / 255.0, T])
    # without weights SDCH feeds raw pixels, as before
    raw = cmhash.make_hasher("sdch", **kw)
    raw._fit_standardization([X, T])
    assert raw.input_normalization_ is None and raw.input_means_[0] is None


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
def test_ta_adcmh_caffe_weights_replace_z_scoring(tmp_path):
    import cmhash
    rng = np.random.default_rng(0)
    X, T, Y = _images(8, rng)
    state = _caffe_alexnet_state(rng)
    path = tmp_path / "bvlc_alexnet.pt"
    torch.save(state, path)
    kw = dict(n_bits=8, n_epochs=1, batch_size=8, device="cpu", random_state=0,
              image_backbone="alexnet", fc_dim=FC, text_hidden=8, lr=1e-12)
    m = cmhash.make_hasher("ta-adcmh", image_weights=path, **kw).fit(X, T, Y)
    assert m.input_normalization_ == CAFFE_ILSVRC2012
    np.testing.assert_allclose(m.input_means_[0].ravel(), [122.67891434, 116.66876762, 104.00698793])
    for name in ("f1", "f2"):        # both image networks start from the file (lr ~ 0)
        torch.testing.assert_close(m._network(name).conv1.weight, state["conv1.weight"].flip(1))
    # without weights TA-ADCMH z-scores images per channel, as before
    z = cmhash.make_hasher("ta-adcmh", **kw)
    z._fit_standardization([X, T])
    assert z.input_normalization_ is None
    np.testing.assert_allclose(z.input_means_[0].ravel(), X.mean(axis=(0, 2, 3)), rtol=1e-5)


def test_estimators_check_the_weights_format():
    import cmhash
    with pytest.raises(ValueError, match="image_weights_format must be one of"):
        cmhash.make_hasher("sdch", image_weights_format="onnx").fit(
            np.arange(12.0).reshape(4, 3), np.arange(8.0).reshape(4, 2), np.eye(2)[[0, 1, 0, 1]])
