"""Dask backend: sharded search and chunked encoding on a LocalCluster with 2 workers."""
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")

from cmhash import HammingIndex, make_hasher  # noqa: E402
from cmhash.codes import pack_codes  # noqa: E402
from cmhash.distributed import (ShardedHammingIndex, encode_to_zarr, make_client,  # noqa: E402
                                open_codes, parse_cluster)
from conftest import local_dask_client, make_structured  # noqa: E402


@pytest.fixture(scope="module")
def client():
    yield from local_dask_client()


def _codes(kind, n, r, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return np.where(rng.random((n, r)) < 0.5, -1, 1).astype(np.int8)
    centres = np.where(rng.random((6, r)) < 0.5, -1, 1)
    B = centres[rng.integers(0, 6, n)].copy()
    flip = rng.random((n, r)) < 0.03                    # few flips: heavy ties
    B[flip] *= -1
    return B.astype(np.int8)


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("r", [32, 64])
def test_sharded_search_equals_one_index(client, kind, r):
    db = _codes(kind, 3001, r, 1)
    q = np.concatenate([_codes(kind, 40, r, 2), db[:5]])
    ref = HammingIndex(r, backend="numpy")
    ref.add(db)
    sharded = ShardedHammingIndex(pack_codes(db), r, client=client, n_shards=3)
    for k in (1, 10, 100, 5000):
        D0, I0 = ref.search(q, k)
        D1, I1 = sharded.search(q, k)
        np.testing.assert_array_equal(D1, D0)
        np.testing.assert_array_equal(I1, I0)
    for radius in (0, 2, 5):
        for a, b in zip(ref.range_search(q, radius), sharded.range_search(q, radius)):
            np.testing.assert_array_equal(b, a)


def test_encode_to_zarr_then_sharded_search_with_ids(client, tmp_path):
    X, T, L = make_structured(n=600, seed=3)
    hasher = make_hasher("batch", n_bits=32, random_state=0, n_anchors=40).fit(X, T, L)
    ids = np.array([f"item-{i}" for i in range(600)])
    path = encode_to_zarr(hasher, X, "image", tmp_path / "db.zarr", ids=ids, chunk_rows=128)
    codes, stored_ids, attrs = open_codes(path)
    assert codes.chunks[0][0] == 128 and attrs["n_bits"] == 32 and attrs["modality"] == "image"
    np.testing.assert_array_equal(codes.compute(), pack_codes(hasher.encode(X, "image")))
    np.testing.assert_array_equal(stored_ids, ids)
    sharded = ShardedHammingIndex(path, client=client)
    qc = hasher.encode(T[:20], "text")
    ref = HammingIndex(32, backend="numpy")
    ref.add(hasher.encode(X, "image"))
    D0, I0 = ref.search(qc, 7)
    D1, I1 = sharded.search(qc, 7)
    np.testing.assert_array_equal(D1, D0)
    np.testing.assert_array_equal(I1, ids[I0])
    with pytest.raises(FileExistsError):
        encode_to_zarr(hasher, X, "image", path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporaries


def test_store_and_cluster_errors(tmp_path):
    with pytest.raises(ValueError, match="not a codes store"):
        open_codes(tmp_path / "missing.zarr")
    import zarr
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["format"] = "x"
    with pytest.raises(ValueError, match="not a cmhash codes store"):
        open_codes(tmp_path / "other.zarr")
    assert parse_cluster("local") is None and parse_cluster("local:3") == 3
    for bad in ("local:0", "remote", "local:x"):
        with pytest.raises(ValueError, match="local"):
            parse_cluster(bad)
    with pytest.raises(ValueError, match="not both"):
        make_client("local:2", scheduler="tcp://127.0.0.1:1")
    assert make_client() is None


def test_cli_encode_to_zarr_and_search_on_a_cluster(tmp_path):
    """cmhash encode --out DB.zarr --cluster local:2, then cmhash search over the store, sharded
    on a cluster and in-process: the same ids as the plain codes files."""
    import json

    from cmhash.cli import main
    X, T, L = make_structured(n=400, seed=5)
    np.save(tmp_path / "img.npy", X)
    np.save(tmp_path / "txt.npy", T)
    np.save(tmp_path / "y.npy", L)
    model = tmp_path / "m.npz"
    assert main(["fit", "--method", "batch", "--image", str(tmp_path / "img.npy"), "--text",
                 str(tmp_path / "txt.npy"), "--labels", str(tmp_path / "y.npy"), "--bits", "16",
                 "--n-query", "0", "--param", "n_anchors=30", "--out", str(model),
                 "--quiet"]) == 0
    assert main(["encode", "--model", str(model), "--image", str(tmp_path / "img.npy"),
                 "--out", str(tmp_path / "db.zarr"), "--chunk-rows", "100", "--cluster",
                 "local:2", "--quiet"]) == 0
    assert main(["encode", "--model", str(model), "--image", str(tmp_path / "img.npy"),
                 "--out", str(tmp_path / "db.npz"), "--quiet"]) == 0
    assert main(["encode", "--model", str(model), "--text", str(tmp_path / "txt.npy"),
                 "--out", str(tmp_path / "q.npz"), "--quiet"]) == 0
    outs = {}
    for name, extra in (("plain", ["--database", str(tmp_path / "db.npz")]),
                        ("store", ["--database", str(tmp_path / "db.zarr")]),
                        ("sharded", ["--database", str(tmp_path / "db.zarr"), "--cluster",
                                     "local:2"])):
        out = tmp_path / f"{name}.json"
        assert main(["search", *extra, "--queries", str(tmp_path / "q.npz"), "-k", "5",
                     "--out", str(out), "--quiet"]) == 0
        outs[name] = json.loads(out.read_text())
    assert outs["store"] == outs["plain"] and outs["sharded"] == outs["plain"]
    # codes of another model are refused against the store
    other = tmp_path / "m2.npz"
    assert main(["fit", "--method", "batch", "--image", str(tmp_path / "img.npy"), "--text",
                 str(tmp_path / "txt.npy"), "--labels", str(tmp_path / "y.npy"), "--bits", "16",
                 "--n-query", "0", "--param", "n_anchors=30", "--seed", "1", "--out",
                 str(other), "--quiet"]) == 0
    assert main(["encode", "--model", str(other), "--text", str(tmp_path / "txt.npy"),
                 "--out", str(tmp_path / "q2.npz"), "--quiet"]) == 0
    assert main(["search", "--database", str(tmp_path / "db.zarr"), "--queries",
                 str(tmp_path / "q2.npz"), "--quiet"]) == 2
    # the options need a store
    assert main(["encode", "--model", str(model), "--image", str(tmp_path / "img.npy"),
                 "--out", str(tmp_path / "x.npz"), "--cluster", "local:2", "--quiet"]) == 2


def test_cli_fit_on_a_cluster_equals_the_in_memory_fit(tmp_path):
    """cmhash fit --cluster local:2 (BATCH): the saved model gives the same codes as the
    in-process fit; a method without a Dask fit is refused by name."""
    from cmhash import load
    from cmhash.cli import main
    X, T, L = make_structured(n=300, seed=7)
    for name, a in (("img", X), ("txt", T), ("y", L)):
        np.save(tmp_path / f"{name}.npy", a)
    common = ["--image", str(tmp_path / "img.npy"), "--text", str(tmp_path / "txt.npy"),
              "--labels", str(tmp_path / "y.npy"), "--n-query", "0", "--bits", "16",
              "--param", "n_anchors=30", "--quiet"]
    assert main(["fit", "--method", "batch", *common, "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["fit", "--method", "batch", *common, "--out", str(tmp_path / "b.npz"),
                 "--cluster", "local:2"]) == 0
    a, b = load(tmp_path / "a.npz"), load(tmp_path / "b.npz")
    np.testing.assert_array_equal(b.codes_, a.codes_)
    np.testing.assert_array_equal(b.encode(T, "text"), a.encode(T, "text"))
    assert b.training_data_fingerprint_ == a.training_data_fingerprint_
    assert main(["fit", "--method", "scratch", *common, "--out", str(tmp_path / "c.npz"),
                 "--cluster", "local:2"]) == 2


def test_hasher_fit_takes_dask_arrays_under_a_client(client):
    """hasher.fit(dask_X, dask_T, dask_L) under a distributed.Client fits on the cluster and
    gives the in-memory codes; a method without a Dask fit says so."""
    import dask.array as da
    X, T, L = make_structured(n=300, seed=8)
    ref = make_hasher("asfoh", n_bits=16, random_state=0, n_anchors=30).fit(X, T, L)
    dX, dT, dL = (da.from_array(a, chunks=(100, a.shape[1])) for a in (X, T, L.astype(float)))
    got = make_hasher("asfoh", n_bits=16, random_state=0, n_anchors=30).fit(dX, dT, dL)
    np.testing.assert_array_equal(np.asarray(got.codes_.compute()), ref.codes_)
    np.testing.assert_array_equal(got.encode(T, "text"), ref.encode(T, "text"))
    with pytest.raises(ValueError, match="has no Dask fit"):
        make_hasher("scratch", n_bits=16, random_state=0).fit(dX, dT, dL)


def test_cli_evaluate_and_scale_on_a_cluster(tmp_path):
    """cmhash evaluate --cluster local:2 gives the mAP of the in-process evaluation (the Dask
    fit's codes are the in-memory ones); the log names the dashboard and each iteration.
    cmhash scale --cluster local:2 fits each point on a cluster and reports each worker's
    peak memory."""
    import json

    from cmhash.cli import main
    data = ["--method", "batch", "--data", "synthetic:small,n=900,n_query=150,seed=3",
            "--bits", "16", "--seeds", "1", "--param", "n_anchors=40", "--param", "n_iter=2"]
    docs = {}
    for name, extra in (("memory", ["--quiet"]),
                        ("dask", ["--cluster", "local:2", "--log-file", str(tmp_path / "log")])):
        assert main(["evaluate", *data, *extra, "--json", str(tmp_path / f"{name}.json")]) == 0
        docs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    runs = [docs[k]["runs"][0] for k in ("memory", "dask")]
    for task in ("map_i2t", "map_t2i"):
        assert runs[1][task] == pytest.approx(runs[0][task], abs=1e-12)
    assert runs[1]["objective"] == pytest.approx(runs[0]["objective"], rel=1e-9)
    log = (tmp_path / "log").read_text()
    assert "dashboard http" in log and "dask BATCH iteration 2/2" in log
    assert main(["scale", "--method", "batch", "--data", "synthetic:small", "--ns", "600",
                 "--bits", "16", "--param", "n_anchors=40", "--param", "n_iter=1",
                 "--cluster", "local:2", "--quiet", "--json", str(tmp_path / "s.json")]) == 0
    row = json.loads((tmp_path / "s.json").read_text())["rows"][0]
    assert row["n"] == 600 and len(row["worker_peak_rss_bytes"]) == 2
    assert all(w > 2**20 for w in row["worker_peak_rss_bytes"])


def test_make_client_without_dashboard_serves_none_and_takes_no_fixed_port(caplog):
    """make_client(dashboard=False): the scheduler's HTTP server runs on a free port (two such
    clusters side by side do not compete for 8787) and serves no Bokeh dashboard (checked in a
    fresh process: once any cluster in a process has served the dashboard its routes stay
    registered); with dashboard=True the link is logged and the status page exists."""
    import logging
    import subprocess
    import sys
    import urllib.request

    probe = ("import urllib.request, urllib.error\n"
             "from cmhash.distributed import make_client\n"
             "if __name__ == '__main__':\n"
             "    c = make_client('local:1', dashboard=False)\n"
             "    port = c.cluster.scheduler.http_server.port\n"
             "    try:\n"
             "        urllib.request.urlopen(f'http://127.0.0.1:{port}/status', timeout=10)\n"
             "        print('served', port)\n"
             "    except urllib.error.HTTPError as e:\n"
             "        print('absent', port, e.code)\n"
             "    c.close(); c.cluster.close()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    words = out.stdout.split()
    assert words[:1] == ["absent"] and words[2] == "404" and words[1] != "8787", out.stderr[-2000:]
    clients = []
    try:
        with caplog.at_level(logging.INFO, logger="cmhash"):
            for dashboard in (False, False, True):
                clients.append(make_client("local:1", dashboard=dashboard))
        ports = [c.cluster.scheduler.http_server.port for c in clients]
        assert len(set(ports)) == 3 and 8787 not in ports[:2]
        status = "http://127.0.0.1:{}/status".format(ports[2])
        assert urllib.request.urlopen(status, timeout=10).status == 200
        logged = [r.getMessage() for r in caplog.records if "Dask cluster" in r.getMessage()]
        assert sum("dashboard http" in m for m in logged) == 1
    finally:
        for c in clients:
            cluster = c.cluster
            c.close()
            cluster.close()
