"""A generated corpus of damaged, edited and forged model bundles, and paths save_model must not destroy.

For each scenario: the exact exception class, the file or folder named in the message, a
``CxrEmbedError``, and nothing of the user's deleted. The table of outcomes is in docs/errors.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cxr_embed.exceptions import BundleIntegrityError, CxrEmbedError, NotOurFileError
from cxr_embed.learn.persistence import _meta_digest, load_model, save_model

PREMOVE = Path(__file__).resolve().parents[1] / "data" / "bundle_v0_1_premove"
X = np.random.default_rng(0).normal(size=(40, 3))
Y = (X[:, 0] > 0).astype(int)
EST = LogisticRegression().fit(X, Y)


def bundle(folder: Path, name="m", **kw) -> Path:
    import pandas as pd

    return save_model(folder / name, EST, labels=["y"], backbone_fingerprint="fp1",
                      metrics=pd.DataFrame({"label": ["y"], "auc": [0.9]}), **kw)


def meta_of(p: Path) -> dict:
    return json.loads((p / "bundle.json").read_text())


def write_meta(p: Path, meta: dict, *, rehash: bool = False) -> None:
    if rehash:  # a consistent forgery: the metadata checksum is recomputed too
        meta["meta_sha256"] = _meta_digest(meta)
    (p / "bundle.json").write_text(json.dumps(meta))


def set_field(name, value, rehash=False):
    def damage(folder, p):
        meta = meta_of(p)
        meta[name] = value
        write_meta(p, meta, rehash=rehash)
        return p / "bundle.json"
    return damage


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def tampered_pickle(signed: bool):
    def damage(folder, p):
        (p / "estimator.joblib").write_bytes(pickle.dumps(Evil()))
        meta = meta_of(p)
        meta["files"]["estimator.joblib"] = hashlib.sha256((p / "estimator.joblib").read_bytes()).hexdigest()
        write_meta(p, meta, rehash=True)
        return p
    return damage


def escape_metrics(folder, p):
    (folder / "secret.json").write_text("{}")
    meta = meta_of(p)
    meta["metrics"] = {"file": "../secret.json"}
    meta["files"]["../secret.json"] = hashlib.sha256(b"{}").hexdigest()
    write_meta(p, meta, rehash=True)
    return p / "bundle.json"


def symlinked_file(folder, p):
    outside = folder / "outside.joblib"
    shutil.move(p / "estimator.joblib", outside)
    (p / "estimator.joblib").symlink_to(outside)
    return p / "estimator.joblib"


def flip_pickle(folder, p):
    blob = bytearray((p / "estimator.joblib").read_bytes())
    blob[len(blob) // 2] ^= 1
    (p / "estimator.joblib").write_bytes(bytes(blob))
    return p / "estimator.joblib"


def missing(name):
    def damage(folder, p):
        (p / name).unlink()
        return p if name != "bundle.json" else p
    return damage


def garbage_meta(content: bytes):
    def damage(folder, p):
        (p / "bundle.json").write_bytes(content)
        return p / "bundle.json"
    return damage


def drop_meta_sha(folder, p):
    meta = meta_of(p)
    del meta["meta_sha256"]
    write_meta(p, meta)
    return p / "bundle.json"


def downgrade(folder, p):  # strip the checksum and claim format 1: only a key can catch this
    meta = meta_of(p)
    del meta["meta_sha256"]
    meta["format_version"] = 1
    meta["labels"] = ["evil"]
    write_meta(p, meta)
    return p


def truncated_pickle(folder, p):
    blob = (p / "estimator.joblib").read_bytes()
    (p / "estimator.joblib").write_bytes(blob[:40])
    meta = meta_of(p)
    meta["files"]["estimator.joblib"] = hashlib.sha256(blob[:40]).hexdigest()
    write_meta(p, meta, rehash=True)
    return p / "estimator.joblib"


def not_a_dir(folder, p):
    shutil.rmtree(p)
    p.write_text("a file")
    return p


# name -> (damage(folder, bundle) -> path the message names, load kwargs, exact class, save with key?)
CORPUS = {
    "edited labels": (set_field("labels", ["pneumonia"]), {}, BundleIntegrityError, False),
    "edited backbone_fingerprint": (set_field("backbone_fingerprint", "fp2"), {}, BundleIntegrityError, False),
    "edited extra": (set_field("extra", {"policy": "zeros"}), {}, BundleIntegrityError, False),
    "format_version 'abc'": (set_field("format_version", "abc"), {}, BundleIntegrityError, False),
    "format_version true": (set_field("format_version", True), {}, BundleIntegrityError, False),
    "format_version 99": (set_field("format_version", 99), {}, BundleIntegrityError, False),
    "format not ours": (set_field("format", "other.thing"), {}, BundleIntegrityError, False),
    "labels not a list": (set_field("labels", "y", rehash=True), {}, BundleIntegrityError, False),
    "labels empty": (set_field("labels", [], rehash=True), {}, BundleIntegrityError, False),
    "fingerprint a number": (set_field("backbone_fingerprint", 7, rehash=True), {}, BundleIntegrityError, False),
    "files not an object": (set_field("files", ["estimator.joblib"], rehash=True), {}, BundleIntegrityError, False),
    "checksum not hex": (set_field("files", {"estimator.joblib": "zz"}, rehash=True), {}, BundleIntegrityError,
                         False),
    "xgboost_models not listed": (set_field("xgboost_models", ["x.json"], rehash=True), {}, BundleIntegrityError,
                                  False),
    "metrics entry malformed": (set_field("metrics", {"file": 3}, rehash=True), {}, BundleIntegrityError, False),
    "metrics path escaping the bundle": (escape_metrics, {}, BundleIntegrityError, False),
    "versions not strings": (set_field("versions", {"sklearn": 1}, rehash=True), {}, BundleIntegrityError, False),
    "meta_sha256 removed (format 2)": (drop_meta_sha, {}, BundleIntegrityError, False),
    "bundle.json not JSON": (garbage_meta(b"{not json"), {}, BundleIntegrityError, False),
    "bundle.json not UTF-8": (garbage_meta(b"\xff\xfe\x00"), {}, BundleIntegrityError, False),
    "bundle.json a JSON list": (garbage_meta(b"[1, 2]"), {}, BundleIntegrityError, False),
    "bundle.json nested 100000 deep": (garbage_meta(b"[" * 100000), {}, BundleIntegrityError, False),
    "bundle.json missing": (missing("bundle.json"), {}, BundleIntegrityError, False),
    "estimator missing": (missing("estimator.joblib"), {}, BundleIntegrityError, False),
    "metrics file missing": (missing("metrics.json"), {}, BundleIntegrityError, False),
    "pickle bit flipped": (flip_pickle, {}, BundleIntegrityError, False),
    "pickle truncated, checksum rewritten": (truncated_pickle, {}, BundleIntegrityError, False),
    "estimator is a symlink out of the bundle": (symlinked_file, {}, BundleIntegrityError, False),
    "path is a file": (not_a_dir, {}, BundleIntegrityError, False),
    "signed, tampered pickle, checksums rewritten, no key": (tampered_pickle(True), {}, BundleIntegrityError, True),
    "signed, tampered pickle, checksums rewritten, key": (tampered_pickle(True), {"key": "k"}, BundleIntegrityError,
                                                           True),
    "signed, labels edited, meta_sha256 rewritten, key": (
        lambda folder, p: set_field("labels", ["evil"], rehash=True)(folder, p).parent, {"key": "k"},
        BundleIntegrityError, True),
    "signed, loaded with the wrong key": (lambda folder, p: p, {"key": "other"}, BundleIntegrityError, True),
    "signed, loaded without a key": (lambda folder, p: p, {}, BundleIntegrityError, True),
    "unsigned, loaded with a key": (lambda folder, p: p, {"key": "k"}, BundleIntegrityError, False),
    "downgraded to format 1 and edited, key": (downgrade, {"key": "k"}, BundleIntegrityError, True),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_bundle(name, tmp_path):
    damage, kwargs, exc, signed = CORPUS[name]
    p = bundle(tmp_path, key="k" if signed else None)
    named = damage(tmp_path, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CxrEmbedError) as e:
            load_model(p, **kwargs)
    assert type(e.value) is exc, f"{name}: {type(e.value).__name__}: {e.value}"
    assert str(named) in str(e.value), f"{name}: message does not name {named}: {e.value}"


def test_extra_files_are_ignored_with_a_warning(tmp_path):
    p = bundle(tmp_path)
    (p / "README.txt").write_text("notes")
    with pytest.warns(UserWarning, match="README.txt"):
        assert load_model(p).labels == ["y"]


def test_format1_bundle_downgrade_without_a_key_loads_with_a_warning(tmp_path):
    """Without a key nothing can tell an edited format-1 bundle from an old one: it warns (documented)."""
    p = bundle(tmp_path)
    downgrade(tmp_path, p)
    with pytest.warns(UserWarning, match="without a metadata checksum"):
        assert load_model(p).labels == ["evil"]


def test_premove_bundle_still_loads_with_a_warning():
    with pytest.warns(UserWarning, match="without a metadata checksum"):
        assert load_model(PREMOVE).labels == ["a", "b"]


# ------------------------------------------------------------------ overwrite never destroys user data
def planted(kind):
    def make(folder: Path) -> tuple[Path, Path]:
        target = folder / "out"
        if kind == "thesis folder":
            target.mkdir()
            (target / "thesis.tex").write_text("three years")
            keep = target / "thesis.tex"
        elif kind == "file":
            target.write_text("results")
            keep = target
        elif kind == "symlink to a folder":
            real = folder / "real"
            real.mkdir()
            (real / "data.csv").write_text("a,b")
            target.symlink_to(real)
            keep = real / "data.csv"
        elif kind == "empty folder":
            target.mkdir()
            keep = target
        elif kind == "folder with a foreign bundle.json":
            target.mkdir()
            (target / "bundle.json").write_text('{"format": "something.else"}')
            keep = target / "bundle.json"
        elif kind == "bundle plus a user file":
            bundle(folder, "out")
            (target / "notes.txt").write_text("mine")
            keep = target / "notes.txt"
        elif kind == "bundle plus a subfolder":
            bundle(folder, "out")
            (target / "runs").mkdir()
            (target / "runs" / "a.csv").write_text("x")
            keep = target / "runs" / "a.csv"
        elif kind == "bundle.json listing a user file":
            bundle(folder, "out")
            (target / "thesis.tex").write_text("three years")
            meta = meta_of(target)
            meta["files"]["thesis.tex"] = hashlib.sha256(b"three years").hexdigest()
            write_meta(target, meta, rehash=True)
            keep = target / "thesis.tex"
        else:  # a bundle whose estimator is a link to a user file
            bundle(folder, "out")
            user = folder / "user.bin"
            user.write_bytes(b"user")
            (target / "estimator.joblib").unlink()
            (target / "estimator.joblib").symlink_to(user)
            keep = user
        return target, keep
    return make


@pytest.mark.parametrize("kind", ["thesis folder", "file", "symlink to a folder", "empty folder",
                                  "folder with a foreign bundle.json", "bundle plus a user file",
                                  "bundle plus a subfolder", "bundle with a linked file",
                                  "bundle.json listing a user file"])
def test_overwrite_refuses_what_is_not_a_bundle(kind, tmp_path):
    target, keep = planted(kind)(tmp_path)
    before = keep.read_bytes() if keep.is_file() else None
    with pytest.raises(NotOurFileError) as e:
        save_model(target, EST, labels=["y"], backbone_fingerprint="fp", overwrite=True)
    assert isinstance(e.value, FileExistsError) and isinstance(e.value, CxrEmbedError)
    assert str(target) in str(e.value) and "nothing was deleted" in str(e.value)
    assert keep.exists() and (before is None or keep.read_bytes() == before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_overwrite_replaces_a_bundle_and_only_its_files(tmp_path):
    p = bundle(tmp_path, "out")
    save_model(p, EST, labels=["y"], backbone_fingerprint="fp2", overwrite=True)
    assert load_model(p).backbone_fingerprint == "fp2"
    assert sorted(os.listdir(p)) == ["bundle.json", "estimator.joblib"]
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]
