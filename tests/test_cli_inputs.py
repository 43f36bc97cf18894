"""Inputs of the CLI and the loaders (issue 16, item 1): .npy / arbitrary-key .npz files, one
file per role, named keys, errors that list the keys, --n-query, unlabelled encoding, one query
vector, output paths checked before any fit, a closed pipe."""
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.io as sio

from cmhash.cli import main
from cmhash.data import load_dataset
from cmhash.data.loaders import MissingLabelsError, load_features
from conftest import REPO

FAST = ["--param", "n_anchors=30,30", "--param", "n_iter=2"]


def _clip_like(n=300, c=4, seed=0):
    """Unit-norm image / text embeddings whose class structure is shared (CLIP-like)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    img = rng.standard_normal((c, 24))[y] + 0.5 * rng.standard_normal((n, 24))
    txt = rng.standard_normal((c, 16))[y] + 0.5 * rng.standard_normal((n, 16))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(np.float32), txt.astype(np.float32), y


@pytest.fixture
def files(tmp_path):
    img, txt, y = _clip_like()
    for name, arr in (("img", img), ("txt", txt), ("y", y)):
        np.save(tmp_path / f"{name}.npy", arr)
    np.savez(tmp_path / "emb.npz", clip_img=img, clip_txt=txt, y=y)
    return tmp_path


def test_fit_on_npy_files_announces_the_held_out_split_and_n_query_0_trains_on_all(files, capsys):
    from cmhash.base import load
    base = ["fit", "--method", "batch", "--image", str(files / "img.npy"), "--text",
            str(files / "txt.npy"), "--labels", str(files / "y.npy"), "--bits", "8", *FAST]
    assert main(base + ["--out", str(files / "m.npz"), "--quiet"]) == 0
    err = capsys.readouterr().err      # a warning: shown with --quiet too
    assert "30 of 300 items held out at random as queries" in err
    assert "fit trains on the other 270 items only (--n-query 0 trains on all 300)" in err
    assert load(files / "m.npz").codes_.shape == (270, 8)
    assert main(base + ["--out", str(files / "all.npz"), "--n-query", "0"]) == 0
    err = capsys.readouterr().err
    assert "no held-out queries; training on all 300 items" in err and "held out" not in err
    assert load(files / "all.npz").codes_.shape == (300, 8)
    # the same arrays in one .npz of arbitrary keys, named by the key options
    assert main(["fit", "--method", "batch", "--data", str(files / "emb.npz"), "--image-key",
                 "clip_img", "--text-key", "clip_txt", "--label-key", "y", "--n-query", "0",
                 "--bits", "8", *FAST, "--out", str(files / "keys.npz"), "--quiet"]) == 0
    assert np.array_equal(load(files / "keys.npz").codes_, load(files / "all.npz").codes_)
    # .npy files joined with '+' are arrays named by their stems (img, txt, labels: roles)
    np.save(files / "labels.npy", np.load(files / "y.npy"))
    assert main(["fit", "--method", "batch", "--data", "+".join(
        str(files / f) for f in ("img.npy", "txt.npy", "labels.npy")), "--n-query", "0",
        "--bits", "8", *FAST, "--out", str(files / "joined.npz"), "--quiet"]) == 0
    assert np.array_equal(load(files / "joined.npz").codes_, load(files / "all.npz").codes_)


def test_unrecognised_keys_are_listed_with_the_options_to_name_them(files, capsys):
    # the arrays' names are not in the key grammar: "no label array for split 'all' (found
    # ['y'])" named neither the other keys nor how to name them
    assert main(["fit", "--method", "batch", "--data", str(files / "emb.npz"), "--bits", "8",
                 "--out", str(files / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert "no label array for the whole pool" in err
    assert "clip_img (300 x 24 float32; not used: not a recognised name)" in err
    assert "y (300 int64; text, whole pool)" in err
    assert "--image-key / --text-key / --label-key" in err
    # a key that is not there, and a role file with several arrays
    with pytest.raises(ValueError, match=r"has no array 'nope' for the images; keys found: "
                                         r"clip_img"):
        load_dataset(files / "emb.npz", keys={"image": "nope"})
    with pytest.raises(ValueError, match=r"no image array; keys found: .* name the array "
                                         r"with --image-key"):
        load_dataset({"image": files / "emb.npz", "text": files / "txt.npy",
                      "labels": files / "y.npy"})
    with pytest.raises(MissingLabelsError, match="a.npy: no known layout; keys found: a"):
        np.save(files / "a.npy", np.ones((5, 2)))
        load_dataset(files / "a.npy")


def test_skipped_entries_are_listed(tmp_path):
    # MATLAB cells / structs were dropped without a word
    rng = np.random.default_rng(0)
    path = tmp_path / "d.mat"
    sio.savemat(path, {"feats": rng.standard_normal((20, 3)),
                       "names": np.array([["a"], ["bb"]], dtype=object)})
    with pytest.raises(MissingLabelsError) as err:
        load_dataset(path)
    assert "feats (20 x 3 float64; not used: not a recognised name)" in str(err.value)
    assert "skipped (not numeric arrays): names (cell array)" in str(err.value)


def test_npy_renamed_npz_and_split_dimensions_are_named(tmp_path, capsys):
    np.save(tmp_path / "e.npy", np.ones((4, 3)))
    (tmp_path / "e.npy").rename(tmp_path / "e.npz")
    assert main(["fit", "--method", "batch", "--data", str(tmp_path / "e.npz"), "--out",
                 str(tmp_path / "m.npz")]) == 2
    assert ("e.npz is a NumPy .npy file (a single array), not the .npz file its extension "
            "says: rename it to e.npy") in capsys.readouterr().err
    # I_tr 20-d with I_te 10-d: "all the input array dimensions except for the concatenation
    # axis must match exactly ..." named no array
    rng = np.random.default_rng(1)
    Y = np.eye(3)[np.arange(60) % 3]
    sio.savemat(tmp_path / "dims.mat", {
        "I_tr": rng.standard_normal((40, 20)), "I_te": rng.standard_normal((20, 10)),
        "T_tr": rng.standard_normal((40, 5)), "T_te": rng.standard_normal((20, 5)),
        "L_tr": Y[:40], "L_te": Y[40:]})
    with pytest.raises(ValueError, match=r"the image features of the splits have different "
                                         r"dimensions: I_tr 20-d \(train\), I_te 10-d \(query\)"):
        load_dataset(tmp_path / "dims.mat")


def test_class_name_labels(tmp_path):
    # string labels were "class indices must be integer-valued (no NaN, no fractions)" in an
    # .npz and silently dropped from a .mat ("no label array")
    rng = np.random.default_rng(2)
    names = np.array(["cat", "dog", "fish"])[np.arange(90) % 3]
    X, T = rng.standard_normal((90, 4)), rng.standard_normal((90, 3))
    np.savez(tmp_path / "s.npz", IAll=X, TAll=T, LAll=names)
    sio.savemat(tmp_path / "s.mat", {"IAll": X, "TAll": T, "LAll": names})
    for path in (tmp_path / "s.npz", tmp_path / "s.mat"):
        ds = load_dataset(path, n_query=0)
        assert ds.class_names == ["cat", "dog", "fish"]
        assert np.array_equal(ds.labels.argmax(axis=1), np.arange(90) % 3)
    np.savez(tmp_path / "c2.npz", IAll=X, TAll=T, LAll=np.array([list("abc")] * 90))
    with pytest.raises(ValueError, match=r"labels are a 2-D array of strings \(shape \(90, 3\)"):
        load_dataset(tmp_path / "c2.npz")


def test_encode_without_labels_and_one_query_vector(files, capsys):
    model = files / "m.npz"
    assert main(["fit", "--method", "batch", "--image", str(files / "img.npy"), "--text",
                 str(files / "txt.npy"), "--labels", str(files / "y.npy"), "--bits", "8",
                 "--n-query", "0", *FAST, "--out", str(model), "--quiet"]) == 0
    # an unlabelled database: a features file ("no label array" before), and a data file
    # with features only
    assert main(["encode", "--model", str(model), "--text", str(files / "txt.npy"),
                 "--out", str(files / "db.npz")]) == 0
    assert "encoded 300 text items" in capsys.readouterr().err
    with np.load(files / "db.npz") as f:
        assert set(f.files) == {"packed", "n_bits", "ids", "modality",
                                "model_fingerprint"}   # no labels
        assert np.array_equal(f["ids"], np.arange(300))
    np.savez(files / "unlabelled.npz", T_db=np.load(files / "txt.npy"))
    assert main(["encode", "--model", str(model), "--data", str(files / "unlabelled.npz"),
                 "--modality", "text", "--out", str(files / "db2.npz")]) == 0
    assert "has no labels: encoding its text features (300 items)" in capsys.readouterr().err
    with np.load(files / "db.npz") as a, np.load(files / "db2.npz") as b:
        assert np.array_equal(a["packed"], b["packed"])
    # one query vector (a 1-D array), and a vector of the wrong length
    q = np.load(files / "img.npy")[7]
    np.save(files / "q1.npy", q)
    assert main(["encode", "--model", str(model), "--features", str(files / "q1.npy"),
                 "--modality", "image", "--out", str(files / "q.npz")]) == 0
    assert "a 1-D array of 24 values: encoded as one image query" in capsys.readouterr().err
    assert main(["search", "--database", str(files / "db.npz"), "--queries",
                 str(files / "q.npz"), "-k", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("query 0: ")
    np.save(files / "bad.npy", q[:10])
    assert main(["encode", "--model", str(model), "--image", str(files / "bad.npy"),
                 "--out", str(files / "x.npz")]) == 2
    assert ("the image input is a 1-D array of 10 values, but the model's image features have "
            "shape (24,)") in capsys.readouterr().err
    # the codes of the labelled route are unchanged and keep the labels
    assert main(["encode", "--model", str(model), "--image", str(files / "img.npy"), "--labels",
                 str(files / "y.npy"), "--out", str(files / "ql.npz"), "--quiet"]) == 0
    with np.load(files / "ql.npz") as f:
        assert f["labels"].shape == (300, 4)


def test_load_features_picks_by_key_role_and_split(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {"I_db": rng.standard_normal((8, 3)), "I_te": rng.standard_normal((4, 3)),
              "T_db": rng.standard_normal((8, 2)), "extra": rng.standard_normal((2, 2))}
    np.savez(tmp_path / "f.npz", **arrays)
    assert np.array_equal(load_features(tmp_path / "f.npz", "text"), arrays["T_db"])
    assert np.array_equal(load_features(tmp_path / "f.npz", "image", split="query"), arrays["I_te"])
    assert np.array_equal(load_features(tmp_path / "f.npz", "image", key="extra"), arrays["extra"])
    with pytest.raises(ValueError, match=r"several image arrays \(I_db, I_te\)|no image array"):
        load_features(tmp_path / "f.npz", "image")
    with pytest.raises(ValueError, match="unknown split 'nope'"):
        load_features(tmp_path / "f.npz", "image", split="nope")


def test_output_paths_fail_before_any_fit(files, capsys, monkeypatch):
    # `--json DIR` / `--out DIR` failed after the whole fit (IsADirectoryError)
    from cmhash import base, protocol
    monkeypatch.setattr(base, "make_hasher", lambda *a, **k: pytest.fail("fitted"))
    monkeypatch.setattr(protocol, "run_evaluation", lambda *a, **k: pytest.fail("fitted"))
    data = ["--image", str(files / "img.npy"), "--text", str(files / "txt.npy"), "--labels",
            str(files / "y.npy")]
    (files / "a_file").write_text("x")
    for argv, message in (
            (["fit", "--method", "batch", *data, "--out", str(files)], "--out {d} is a directory"),
            (["fit", "--method", "batch", *data, "--out", str(files / "no" / "m.npz")],
             "the directory {d}/no does not exist"),
            (["evaluate", "--method", "batch", *data, "--json", str(files)],
             "--json {d} is a directory"),
            (["evaluate", "--method", "batch", *data, "--markdown", str(files)],
             "--markdown {d} is a directory"),
            (["bench", "--methods", "batch", *data, "--out-dir", str(files / "a_file")],
             "--out-dir {d}/a_file is a file"),
            (["sweep", "--method", "batch", *data, "--param-name", "omega", "--values", "1",
              "--json", str(files)], "--json {d} is a directory"),
            (["plot", "--json", str(files / "x.json"), "--out", str(files)],
             "--out {d} is a directory"),
            (["fit", "--method", "batch", *data, "--out", str(files / "m.npz"), "--log-file",
              str(files)], "--log-file {d} is a directory")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message.format(d=files) in err and "Traceback" not in err, err


def test_refused_options_and_missing_inputs(files, capsys):
    data = ["--image", str(files / "img.npy"), "--text", str(files / "txt.npy")]
    for argv in (["fit", "--method", "batch", *data, "--out", "m.npz", "--json", "x.json"],
                 ["encode", "--model", "m.npz", "--text", "t.npy", "--out", "q.npz", "--json",
                  "x.json"]):
        with pytest.raises(SystemExit) as exit_:     # accepted and ignored before
            main(argv)
        assert exit_.value.code == 2
        assert "unrecognized arguments: --json x.json" in capsys.readouterr().err
    assert main(["fit", "--method", "batch", *data, "--out", str(files / "m.npz")]) == 2
    assert "--labels FILE is required with --image / --text" in capsys.readouterr().err
    assert main(["fit", "--method", "batch", "--out", str(files / "m.npz")]) == 2
    assert "no data: give --data FILE" in capsys.readouterr().err
    assert main(["evaluate", "--method", "batch", *data, "--labels", str(files / "y.npy"),
                 "--n-query", "0", "--quiet"]) == 2
    assert "evaluate needs query items, but the query split of img is empty" in \
        capsys.readouterr().err
    model = files / "m.npz"
    assert main(["fit", "--method", "batch", *data, "--labels", str(files / "y.npy"), "--bits",
                 "8", *FAST, "--out", str(model), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["encode", "--model", str(model), "--text", str(files / "txt.npy"), "--task",
                 "image,text", "--out", str(files / "q.npz")]) == 2
    assert "--task selects the hash functions of one retrieval task of a task-specific model" \
        in capsys.readouterr().err
    for extra, message in ((["--split", "query"], "--split selects a split of --data"),
                           (["--modality", "image"], "--text gives text features but --modality "
                                                     "is 'image'"),
                           (["--n-train", "5"], "--n-train choose how --data is split; --text is encoded whole")):
        assert main(["encode", "--model", str(model), "--text", str(files / "txt.npy"),
                     *extra, "--out", str(files / "q.npz")]) == 2
        assert message in capsys.readouterr().err


def test_split_options_that_would_be_ignored_are_refused(tmp_path, capsys):
    # --preset with synthetic data and --n-query with a stored query split were ignored with
    # a warning
    assert main(["fit", "--method", "batch", "--data", "synthetic:small", "--preset", "wiki",
                 "--out", str(tmp_path / "m.npz")]) == 2
    assert "--preset selects the split protocol of a data file" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    Y = np.eye(3)[np.arange(60) % 3]
    np.savez(tmp_path / "split.npz", I_tr=rng.standard_normal((40, 4)),
             T_tr=rng.standard_normal((40, 3)), L_tr=Y[:40], I_te=rng.standard_normal((20, 4)),
             T_te=rng.standard_normal((20, 3)), L_te=Y[40:])
    assert main(["fit", "--method", "batch", "--data", str(tmp_path / "split.npz"),
                 "--n-query", "5", "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert "stores its own query split (20 items)" in err and "Warning" not in err


def test_closed_pipe_ends_quietly(files):
    """`cmhash search ... | head -1` ended with a BrokenPipeError traceback ("Broken pipe")."""
    env_path = str(REPO / "src")
    model, db = files / "m.npz", files / "db.npz"
    run = [sys.executable, "-m", "cmhash.cli"]
    env = {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    subprocess.run(run + ["fit", "--method", "batch", "--image", str(files / "img.npy"),
                          "--text", str(files / "txt.npy"), "--labels", str(files / "y.npy"),
                          "--bits", "8", "--n-query", "0", *FAST, "--out", str(model)],
                   check=True, env=env, capture_output=True)
    subprocess.run(run + ["encode", "--model", str(model), "--text", str(files / "txt.npy"),
                          "--out", str(db)], check=True, env=env, capture_output=True)
    big = np.tile(np.load(files / "img.npy"), (40, 1))       # 12,000 queries: > a pipe buffer
    np.save(files / "many.npy", big)
    subprocess.run(run + ["encode", "--model", str(model), "--image", str(files / "many.npy"),
                          "--out", str(files / "q.npz")], check=True, env=env, capture_output=True)
    cmd = (f"{sys.executable} -m cmhash.cli search --database {db} --queries {files / 'q.npz'} "
           f"-k 10 --show 12000 2>{files / 'err.txt'} | head -n 1; echo ${{PIPESTATUS[0]}}")
    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, check=True)
    first, status = out.stdout.splitlines()
    assert first.startswith("query 0: ")
    assert status == "141"
    err = (files / "err.txt").read_text()
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception ignored" not in err
    json.dumps(err)
