"""Every command that touches a store or a bundle, fed damaged stores, edited or signed bundles and
planted paths: a non-zero exit with one ``error:`` line naming the file, never a traceback."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import types
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cxr_embed.cli import main
from cxr_embed.cli._bundles import KEY_ENV
from cxr_embed.embed.store import EmbeddingStore
from cxr_embed.learn.persistence import _meta_digest

FP = "fp_hostile_cli"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A store, a manifest, an unsigned bundle and a signed one (key in a file)."""
    tmp = tmp_path_factory.mktemp("hostile_cli")
    rng = np.random.default_rng(0)
    n = 40
    ids = [f"img{i:03d}" for i in range(n)]
    X = rng.normal(size=(n, 8)).astype("float32")
    pd.DataFrame({"image_id": ids, "path": [f"{i}.png" for i in ids], "patient_id": [f"p{i // 2}" for i in range(n)],
                  "a": (X[:, 0] > 0).astype(float)}).to_csv(tmp / "labels.csv", index=False)
    store = EmbeddingStore(tmp / "emb.h5")
    with store.writer(types.SimpleNamespace(fingerprint=FP, config={"name": "demo"}, dim=8)) as w:
        w.append(ids, X)
    (tmp / "key.txt").write_text("s3cret\n")
    common = ["--store", str(store.path), "--manifest", str(tmp / "labels.csv"), "--cv", "0"]
    assert main(["fit", *common, "--out", str(tmp / "plain")]) == 0
    assert main(["fit", *common, "--out", str(tmp / "signed"), "--key-file", str(tmp / "key.txt")]) == 0
    assert "hmac" in json.loads((tmp / "signed" / "bundle.json").read_text())
    return tmp


def run(capsys, argv, monkeypatch=None):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, named):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(named) in lines[0], lines[0]


def copy_site(site, tmp_path):
    dst = tmp_path / "site"
    shutil.copytree(site, dst, ignore=shutil.ignore_patterns("*.lock"))
    return dst


def use(site, model, *extra, command="predict"):
    out = site / ("pred.csv" if command == "predict" else "report")
    return [command, "--model", site / model, "--store", site / "emb.h5", "--manifest", site / "labels.csv",
            "--out", out, *(["--n-bootstrap", "20"] if command == "evaluate" else []), *extra]


def flip_block(store: Path):
    with h5py.File(store, "r") as f:
        info = f[f"embeddings/{FP}/embeddings"].id.get_chunk_info(0)
    blob = bytearray(store.read_bytes())
    blob[info.byte_offset + info.size // 2] ^= 0xFF
    store.write_bytes(bytes(blob))


def test_store_verify_and_repair(site, tmp_path, capsys):
    s = copy_site(site, tmp_path)
    rc, out, err = run(capsys, ["store", "verify", s / "emb.h5"])
    assert rc == 0 and "OK" in out and "40 rows verified (sha256)" in out
    rc, out, err = run(capsys, ["store", "verify", s / "emb.h5", "--json"])
    assert rc == 0 and json.loads(out)["ok"] is True
    flip_block(s / "emb.h5")
    rc, out, err = run(capsys, ["store", "verify", s / "emb.h5"])
    assert rc == 1 and "problem" in out and str(s / "emb.h5") in out and "store repair" in out
    rc, out, err = run(capsys, ["store", "repair", s / "emb.h5", "--json"])
    report = json.loads(out)
    assert rc == 0 and report["ok"] and report["actions"]
    rc, out, err = run(capsys, ["store", "verify", s / "emb.h5"])
    assert rc == 0


@pytest.mark.parametrize("case", ["not a store", "zero bytes", "missing", "truncated"])
def test_store_commands_on_a_file_that_is_not_a_store(case, site, tmp_path, capsys):
    s = copy_site(site, tmp_path)
    p = s / "emb.h5"
    if case == "not a store":
        p.write_text("hello")
    elif case == "zero bytes":
        p.write_bytes(b"")
    elif case == "missing":
        p.unlink()
    else:
        p.write_bytes(p.read_bytes()[:3000])
    for action in ("info", "verify", "repair"):
        rc, out, err = run(capsys, ["store", action, p])
        assert_one_line_error(rc, err, p)
    rc, out, err = run(capsys, use(s, "plain"))
    assert_one_line_error(rc, err, p)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("case", ["damaged store", "edited labels", "signed without key", "tampered pickle",
                                  "wrong key", "missing key file", "empty key file", "format_version abc",
                                  "metrics path escaping", "bundle is a file"])
def test_loading_commands_refuse(command, case, site, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    s = copy_site(site, tmp_path)
    model, extra, named = "plain", [], s / "plain"
    meta_path = s / "plain" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    if case == "damaged store":
        flip_block(s / "emb.h5")
        named = s / "emb.h5"
    elif case == "edited labels":
        meta["labels"] = ["b"]
        meta_path.write_text(json.dumps(meta))
        named = meta_path
    elif case == "signed without key":
        model, named = "signed", s / "signed"
    elif case == "tampered pickle":
        model, named = "signed", s / "signed"
        meta = json.loads((s / "signed" / "bundle.json").read_text())
        (s / "signed" / "estimator.joblib").write_bytes(pickle.dumps({"evil": True}))
        meta["files"]["estimator.joblib"] = hashlib.sha256((s / "signed" / "estimator.joblib").read_bytes()).hexdigest()
        meta["meta_sha256"] = _meta_digest(meta)
        (s / "signed" / "bundle.json").write_text(json.dumps(meta))
        extra = ["--key-file", s / "key.txt"]
    elif case == "wrong key":
        model, named = "signed", s / "signed"
        monkeypatch.setenv(KEY_ENV, "not the key")
    elif case == "missing key file":
        extra, named = ["--key-file", s / "nokey.txt"], s / "nokey.txt"
    elif case == "empty key file":
        (s / "empty.txt").write_text("\n")
        extra, named = ["--key-file", s / "empty.txt"], s / "empty.txt"
    elif case == "format_version abc":
        meta["format_version"] = "abc"
        meta_path.write_text(json.dumps(meta))
        named = meta_path
    elif case == "metrics path escaping":
        meta["metrics"] = {"file": "../labels.csv"}
        meta["files"]["../labels.csv"] = hashlib.sha256((s / "labels.csv").read_bytes()).hexdigest()
        meta["meta_sha256"] = _meta_digest(meta)
        meta_path.write_text(json.dumps(meta))
        named = meta_path
    else:
        shutil.rmtree(s / "plain")
        (s / "plain").write_text("x")
    rc, out, err = run(capsys, use(s, model, *extra, command=command))
    assert_one_line_error(rc, err, named)


def test_keys_from_file_environment_and_trust_unsigned(site, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    s = copy_site(site, tmp_path)
    assert run(capsys, use(s, "signed", "--key-file", s / "key.txt"))[0] == 0
    monkeypatch.setenv(KEY_ENV, "s3cret")
    assert run(capsys, use(s, "signed", command="evaluate"))[0] == 0
    rc, out, err = run(capsys, use(s, "plain"))  # the environment's key refuses an unsigned bundle...
    assert_one_line_error(rc, err, s / "plain")
    with pytest.warns(UserWarning, match="unsigned"):
        assert run(capsys, use(s, "plain", "--trust-unsigned"))[0] == 0  # ...unless trusted explicitly
    monkeypatch.delenv(KEY_ENV)
    with pytest.warns(UserWarning, match="not checked"):
        assert run(capsys, use(s, "signed", "--trust-unsigned"))[0] == 0


@pytest.mark.parametrize("planted", ["thesis folder", "file", "foreign bundle.json"])
def test_fit_overwrite_never_deletes_what_is_not_a_bundle(planted, site, tmp_path, capsys):
    s = copy_site(site, tmp_path)
    out = s / "out"
    if planted == "thesis folder":
        out.mkdir()
        (out / "thesis.tex").write_text("three years")
        keep = out / "thesis.tex"
    elif planted == "file":
        out.write_text("results")
        keep = out
    else:
        out.mkdir()
        (out / "bundle.json").write_text('{"format": "not.ours"}')
        keep = out / "bundle.json"
    before = keep.read_bytes()
    rc, _, err = run(capsys, ["fit", "--store", s / "emb.h5", "--manifest", s / "labels.csv", "--cv", "0",
                              "--out", out, "--overwrite"])
    assert_one_line_error(rc, err, out)
    assert keep.read_bytes() == before
    # a real bundle is replaced, and signed when asked
    rc, _, err = run(capsys, ["fit", "--store", s / "emb.h5", "--manifest", s / "labels.csv", "--cv", "0",
                              "--out", s / "plain", "--overwrite", "--key-file", s / "key.txt"])
    assert rc == 0, err
    assert "hmac" in json.loads((s / "plain" / "bundle.json").read_text())


def test_fit_with_a_bad_key_file_fails_before_fitting(site, tmp_path, capsys):
    s = copy_site(site, tmp_path)
    rc, out, err = run(capsys, ["fit", "--store", s / "emb.h5", "--manifest", s / "labels.csv", "--cv", "0",
                                "--out", s / "new", "--key-file", s / "absent.key"])
    assert_one_line_error(rc, err, s / "absent.key")
    assert not (s / "new").exists() and "images" not in out


@pytest.mark.slow  # importing the saliency stack takes ~10 s
def test_explain_refuses_a_signed_bundle_without_key(site, tmp_path, capsys, monkeypatch):
    pytest.importorskip("keras")
    monkeypatch.delenv(KEY_ENV, raising=False)
    s = copy_site(site, tmp_path)
    (s / "x.png").write_bytes(b"")
    rc, out, err = run(capsys, ["explain", "--model", s / "signed", "--image", s / "x.png", "--out", s / "ex"])
    assert_one_line_error(rc, err, s / "signed")
    assert "signed but no key" in err
