"""Dask backend: sharded search and chunked encoding on a LocalCluster with 2 workers."""
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")

from cmhash import HammingIndex, make_hasher  # noqa: E402
from cmhash.codes import pack_codes  # noqa: E402
from cmhash.distributed import (ShardedHammingIndex, encode_to_zarr, make_client,  # noqa: E402
                                open_codes, parse_cluster)
from conftest import make_structured  # noqa: E402


@pytest.fixture(scope="module")
def client():
    c = make_client("local:2", dashboard=False)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


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
