"""From .npy embeddings to a search service: cmhash fit -> index build -> query -> serve.

The end-to-end test starts `cmhash serve` on a free loopback port in a subprocess and sends
real HTTP requests (urllib); every wait on the server is bounded and the server is stopped at
the end of the test."""
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cmhash.base import load
from cmhash.cli import main
from cmhash.cli_service import build_bundle, read_ids
from cmhash.index import HammingIndex

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

SRC = Path(__file__).resolve().parents[1] / "src"
N_CLASSES, DIM = 6, 512


def clip_like(rng, centres, classes, noise=1.0):
    """Unit-normalised embeddings around label-dependent centres (as CLIP image / text
    embeddings of a labelled collection look, in miniature)."""
    X = centres[classes] + noise * rng.standard_normal((len(classes), centres.shape[1]))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """Training pairs as .npy files (read by `cmhash fit --image/--text/--labels`; also as an
    .npz with the I_tr/T_tr/L_tr layout `--data` reads), a database of image embeddings with
    string ids (ids.txt) and text queries, all as .npy files."""
    root = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    c_img = rng.standard_normal((N_CLASSES, DIM))
    c_txt = rng.standard_normal((N_CLASSES, DIM))
    y_tr = rng.integers(0, N_CLASSES, 300)
    np.savez(root / "train.npz", I_tr=clip_like(rng, c_img, y_tr),
             T_tr=clip_like(rng, c_txt, y_tr), L_tr=np.eye(N_CLASSES)[y_tr])
    with np.load(root / "train.npz") as f:
        for key, name in (("I_tr", "train_img"), ("T_tr", "train_txt"), ("L_tr", "train_y")):
            np.save(root / f"{name}.npy", f[key])
    y_db = rng.integers(0, N_CLASSES, 800)
    np.save(root / "db.npy", clip_like(rng, c_img, y_db))
    ids = [f"photo-{i:04d}.jpg" for i in rng.permutation(10000)[:800]]
    (root / "ids.txt").write_text("\n".join(ids) + "\n")
    y_q = np.arange(N_CLASSES).repeat(2)
    np.save(root / "q.npy", clip_like(rng, c_txt, y_q))
    return {"root": root, "ids": np.array(ids), "y_db": y_db, "y_q": y_q}


@pytest.fixture(scope="module")
def fitted(embeddings):
    root = embeddings["root"]
    # the user's own .npy embeddings, every row a training item
    assert main(["fit", "--method", "batch", "--image", str(root / "train_img.npy"),
                 "--text", str(root / "train_txt.npy"), "--labels", str(root / "train_y.npy"),
                 "--n-query", "0", "--bits", "32", "--param", "n_anchors=100",
                 "--out", str(root / "model.npz"), "--quiet"]) == 0
    assert main(["index", "build", "--model", str(root / "model.npz"), "--modality", "image",
                 "--features", str(root / "db.npy"), "--ids", str(root / "ids.txt"),
                 "--out", str(root / "db.idx"), "--quiet"]) == 0
    return embeddings


def _query_json(root, capsys, k=5, **paths):
    args = ["query", "--index", str(paths.get("index", root / "db.idx")),
            "--model", str(paths.get("model", root / "model.npz")), "--modality", "text",
            "--features", str(root / "q.npy"), "-k", str(k), "--format", "json"]
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


# ----------------------------------------------------------------------- server helpers
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`cmhash serve` in a subprocess; ``start`` waits (bounded) for its 'listening' line."""

    def __init__(self, *args):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(SRC)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cmhash.cli", "serve", *map(str, args), "--host",
             "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"server not ready in {timeout} s: {''.join(self.stderr)}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"server exited ({self.proc.wait(10)}): "
                                     f"{''.join(self.stderr)}")
            if "listening on http://127.0.0.1:" in line:
                return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def request(self, path, body=None):
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


# ----------------------------------------------------------------------------- tests
def test_npy_embeddings_to_query_and_serve_end_to_end(fitted, capsys):
    """fit -> index build --ids -> query gives the user's ids (the right ones: those the
    Python API finds, of the query's class); the same query through `cmhash serve` over real
    HTTP gives the same ids and distances."""
    root = fitted["root"]
    code, doc = _query_json(root, capsys)
    assert code == 0, doc
    hasher = load(root / "model.npz")
    assert doc["model_fingerprint"] == hasher.fingerprint and doc["k"] == 5
    # the same search through the Python API, positions mapped to the user's ids by hand
    index = HammingIndex(32)
    index.add(hasher.encode(np.load(root / "db.npy"), "image"))
    d_ref, pos_ref = index.search(hasher.encode(np.load(root / "q.npy"), "text",
                                                task=("text", "image")), 5)
    cli_ids = [r["ids"] for r in doc["results"]]
    assert cli_ids == fitted["ids"][pos_ref].tolist()
    assert [r["distances"] for r in doc["results"]] == d_ref.tolist()
    # they are the ids of database items of the query's class (cross-modal retrieval works)
    id_class = dict(zip(fitted["ids"], fitted["y_db"]))
    hits = np.array([[id_class[i] for i in row] for row in cli_ids])
    assert (hits == fitted["y_q"][:, None]).mean() >= 0.9

    server = Server("--index", root / "db.idx", "--model", root / "model.npz")
    try:
        server.wait_ready()
        assert server.request("/health") == (200, {"status": "ok"})
        status, info = server.request("/info")
        assert status == 200 and info["model_fingerprint"] == hasher.fingerprint
        assert (info["n_bits"], info["size"], info["database_modality"]) == (32, 800, "image")
        q = np.load(root / "q.npy")
        status, res = server.request("/query", {"modality": "text", "vectors": q.tolist(),
                                                "k": 5})
        assert status == 200
        assert [r["ids"] for r in res["results"]] == cli_ids
        assert [r["distances"] for r in res["results"]] == d_ref.tolist()
        # one query at a time and as packed codes: the same answers
        status, one = server.request("/query", {"modality": "text", "vectors": q[3:4].tolist(),
                                                "k": 5})
        assert status == 200 and one["results"][0]["ids"] == cli_ids[3]
        from cmhash.codes import pack_codes
        hexes = [bytes(p).hex() for p in pack_codes(hasher.encode(q, "text",
                                                                  task=("text", "image")))]
        status, by_code = server.request("/query", {"codes": hexes, "k": 5})
        assert status == 200 and [r["ids"] for r in by_code["results"]] == cli_ids
        status, err = server.request("/query", {"modality": "text",
                                                "vectors": [[0.1] * 7], "k": 5})
        assert status == 400 and "has 7 values but modality 'text' has 512" in err["detail"]
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_query_formats_have_headers_and_the_users_ids(fitted, capsys):
    root = fitted["root"]
    _, doc = _query_json(root, capsys, k=2)
    base = ["query", "--index", str(root / "db.idx"), "--model", str(root / "model.npz"),
            "--modality", "text", "--features", str(root / "q.npy"), "-k", "2"]
    assert main(base + ["--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query,rank,id,distance"
    assert lines[1] == f"0,1,{doc['results'][0]['ids'][0]},{doc['results'][0]['distances'][0]}"
    assert len(lines) == 1 + 2 * len(fitted["y_q"])
    assert main(base) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["query", "rank", "id", "distance"]
    assert text[2].split() == ["0", "2", doc["results"][0]["ids"][1],
                               str(doc["results"][0]["distances"][1])]


def test_query_refuses_a_model_that_did_not_build_the_index(fitted, tmp_path, capsys):
    """Codes of another model of the same width searched silently; now an error naming both
    fingerprints."""
    root = fitted["root"]
    assert main(["fit", "--method", "batch", "--data", str(root / "train.npz"), "--bits", "32",
                 "--param", "n_anchors=100", "--seed", "1", "--out", str(tmp_path / "other.npz"),
                 "--quiet"]) == 0
    code, err = _query_json(root, capsys, model=tmp_path / "other.npz")
    fp_other = load(tmp_path / "other.npz").fingerprint
    fp_index = load(root / "model.npz").fingerprint
    assert code == 2 and fp_other != fp_index
    assert f"(fingerprint {fp_other}) is not the model that encoded the index" in err
    assert f"(fingerprint {fp_index})" in err
    # a plain HammingIndex file (no fingerprint) is not a bundle
    HammingIndex(32).save(tmp_path / "plain.idx")
    code, err = _query_json(root, capsys, index=tmp_path / "plain.idx")
    assert code == 2 and "is not an index bundle" in err


def test_cmhash_search_refuses_codes_of_different_models(tmp_path, capsys):
    data = "synthetic:n=400,query=100"
    for seed, name in ((0, "a"), (1, "b")):
        assert main(["fit", "--method", "batch", "--data", data, "--bits", "16", "--seed",
                     str(seed), "--param", "n_anchors=50", "--out", str(tmp_path / f"{name}.npz"),
                     "--quiet"]) == 0
    for model, split, out in (("a", "retrieval", "db_a"), ("a", "query", "q_a"),
                              ("b", "query", "q_b")):
        assert main(["encode", "--model", str(tmp_path / f"{model}.npz"), "--data", data,
                     "--split", split, "--modality", "image" if split == "query" else "text",
                     "--out", str(tmp_path / f"{out}.npz"), "--quiet"]) == 0
    capsys.readouterr()
    search = ["search", "--database", str(tmp_path / "db_a.npz"), "-k", "3", "--quiet"]
    assert main(search + ["--queries", str(tmp_path / "q_a.npz")]) == 0
    capsys.readouterr()
    assert main(search + ["--queries", str(tmp_path / "q_b.npz")]) == 2
    err = capsys.readouterr().err
    fa, fb = load(tmp_path / "a.npz").fingerprint, load(tmp_path / "b.npz").fingerprint
    assert f"come from another model (fingerprint {fb})" in err and f"(fingerprint {fa})" in err


def test_index_build_errors_name_the_problem(fitted, tmp_path, capsys):
    root = fitted["root"]
    build = ["index", "build", "--model", str(root / "model.npz"), "--modality", "image",
             "--features", str(root / "db.npy"), "--out", str(tmp_path / "x.idx")]
    cases = [
        ("short.txt", "a\nb\n", "has 2 ids but the features have 800 rows"),
        ("dup.txt", "\n".join(["x"] * 2 + [f"i{i}" for i in range(798)]),
         "must be unique: 'x' appears 2 times"),
        ("blank.txt", "a\n\nb\n" + "\n".join(f"i{i}" for i in range(797)), "line 2 is empty"),
    ]
    for name, text, message in cases:
        (tmp_path / name).write_text(text)
        capsys.readouterr()
        assert main(build + ["--ids", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err
    assert main(build[:-2] + ["--modality", "audio", "--out", str(tmp_path / "x.idx")]) == 2
    assert "unknown modality 'audio'" in capsys.readouterr().err
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 512)), b=np.zeros((3, 512)))
    bad = build[:6] + ["--features", str(tmp_path / "two.npz"), "--out", str(tmp_path / "x.idx")]
    assert main(bad) == 2
    assert "holds several arrays ['a', 'b']: name one with --features-key" in \
        capsys.readouterr().err
    assert not (tmp_path / "x.idx").exists()


def test_ids_files_integers_and_strings(tmp_path):
    (tmp_path / "i.txt").write_text("10\n-3\n7\n")
    ids = read_ids(tmp_path / "i.txt", 3)
    assert ids.dtype == np.int64 and ids.tolist() == [10, -3, 7]
    (tmp_path / "s.txt").write_text("10\n007\n7\n")      # 007 is not an integer id
    ids = read_ids(tmp_path / "s.txt", 3)
    assert ids.dtype.kind == "U" and ids.tolist() == ["10", "007", "7"]
    np.save(tmp_path / "i.npy", np.array([5, 6, 7], dtype=np.uint32))
    assert read_ids(tmp_path / "i.npy", 3).dtype == np.int64


def test_bundle_round_trip_keeps_ids_fingerprint_and_modality(fitted, tmp_path):
    root = fitted["root"]
    hasher = load(root / "model.npz")
    X = np.load(root / "db.npy")[:50]
    index = build_bundle(hasher, X, "image", ids=np.arange(100, 150))
    index.save(tmp_path / "b.idx")
    back = HammingIndex.load(tmp_path / "b.idx")
    assert back.model_fingerprint == hasher.fingerprint
    assert back.metadata["modality"] == "image" and back.metadata["n_bits"] == 32
    assert np.array_equal(back.ids, np.arange(100, 150))
    assert np.array_equal(back.get_codes(), hasher.encode(X, "image", task=("text", "image")))


# ------------------------------------------------------------------------ service errors
@pytest.fixture(scope="module")
def client(fitted):
    from fastapi.testclient import TestClient

    from cmhash.serve import ServiceLimits, create_app, load_service

    root = fitted["root"]
    service = load_service(root / "db.idx", root / "model.npz",
                           ServiceLimits(max_body_bytes=20_000, max_vectors=4, max_k=20))
    with TestClient(create_app(service)) as c:
        yield c


@pytest.mark.parametrize("body, status, message", [
    ({"modality": "text", "vectors": [[0.1] * 3], "k": 2}, 400,
     "vectors[0] has 3 values but modality 'text' has 512 features"),
    ({"modality": "audio", "vectors": [[0.1] * 512], "k": 2}, 400,
     "unknown modality 'audio'; this model has ['image', 'text']"),
    ({"vectors": [[0.1] * 512], "k": 2}, 400, "'modality' is required"),
    ({"modality": "text", "vectors": [[0.1] * 512], "k": 21}, 400,
     "k must be between 1 and 20 (the service's limit), got 21"),
    ({"modality": "text", "vectors": [[0.1] * 512], "k": 0}, 400, "k must be between 1"),
    ({"modality": "text", "vectors": [[0.1] * 512] * 5, "k": 2}, 413,
     "5 vectors in one request; the limit is 4"),
    ({"modality": "text", "vectors": [], "k": 2}, 400, "vectors is empty"),
    ({"codes": ["00ff"], "k": 2}, 400, "codes[0] must be 8 hex digits (a packed 32-bit code)"),
    ({"codes": ["00ff00zz"], "k": 2}, 400, "codes[0] is not hexadecimal"),
    ({"k": 2}, 400, "send either 'vectors' (with 'modality') or 'codes'"),
])
def test_service_bad_requests_are_clear_4xx(client, body, status, message):
    r = client.post("/query", json=body)
    assert r.status_code == status and message in r.json()["detail"], r.json()


def test_service_refuses_nan_too_big_bodies_and_unknown_fields(client):
    nan_body = b'{"modality": "text", "vectors": [[NaN' + b", 0.5" * 511 + b']], "k": 2}'
    r = client.post("/query", content=nan_body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "vectors[0] holds NaN or infinite values" in r.json()["detail"]
    big = {"modality": "text", "vectors": [[0.123456789] * 512] * 4, "k": 2}
    r = client.post("/query", json=big)
    assert r.status_code == 413 and "larger than 20000 bytes" in r.json()["detail"]

    def chunks():                                # no Content-Length: counted while read
        yield b'{"modality": "text", "vectors": [['
        for _ in range(3000):
            yield b"0.1234567, "
        yield b"0.1]], \"k\": 2}"
    r = client.post("/query", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/query", json={"modality": "text", "vector": [[0.1] * 512]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "vector"]
    r = client.post("/query", json={"modality": "text", "vectors": [[0.1] * 512], "k": "5"})
    assert r.status_code == 422
    ok = client.post("/query", json={"modality": "text", "vectors": [[0.1] * 512] * 2, "k": 3})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    assert all(len(r["ids"]) == 3 and r["distances"] == sorted(r["distances"])
               for r in ok.json()["results"])


def test_serve_without_fastapi_names_the_extra(monkeypatch, fitted):
    from cmhash import serve

    monkeypatch.setitem(sys.modules, "fastapi", None)
    root = fitted["root"]
    with pytest.raises(ImportError, match=r"pip install 'cmhash\[serve\]'"):
        serve.run_server(root / "db.idx", root / "model.npz", port=0)
    # the core and the other commands do not need it
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
            "import cmhash, cmhash.cli, cmhash.cli_service, cmhash.serve\n"
            "cmhash.cli.build_parser(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
