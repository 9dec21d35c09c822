"""Model bundles: a fitted estimator with everything needed to trust and reuse it.

A bundle is a **directory**::

    model/
      bundle.json        format name/version, labels, backbone fingerprint, manifest hash,
                         metrics, library versions, creation time, SHA-256 of every file
      estimator.joblib   the fitted scikit-learn estimator (pickle, via joblib)
      metrics.json       the metrics table, when one was given as a DataFrame
      xgboost_0.json ... every XGBoost booster inside the estimator, in XGBoost's own JSON

:func:`load_model` verifies every file's SHA-256 **before** unpickling and raises
:class:`~cxr_embed.BundleIntegrityError` on any mismatch, missing file or unknown
format. XGBoost boosters are then reloaded from their JSON files, XGBoost's stable
format. :meth:`ModelBundle.predict_proba` refuses embeddings whose backbone
fingerprint differs from the training one with
:class:`~cxr_embed.FingerprintMismatchError`.

Trust boundary
--------------
``estimator.joblib`` is a pickle: **loading it runs code chosen by whoever wrote
it.** Only load bundles you (or someone you trust) produced. The SHA-256 checksums
detect corruption and accidental edits, not malice: whoever can change the pickle
can change ``bundle.json`` too. To detect tampering, sign bundles with a secret
``key=`` (HMAC-SHA256 over the metadata, which includes every file's checksum) and
pass the same key to :func:`load_model`; an unsigned or wrongly signed bundle is
then refused before anything is unpickled. A signed bundle loaded **without** a key
is refused too, unless the caller says ``trust_unsigned=True``.

Metadata integrity (format version 2): ``bundle.json`` carries ``meta_sha256``, the
SHA-256 of the canonical JSON of all its other fields (except ``hmac``), so an edited
label list or fingerprint is refused; every field's type is validated; every file
entry must be a plain name inside the bundle folder (a regular file, not a link).
Bundles of format version 1 (no ``meta_sha256``) still load, with a warning.

Overwriting: ``save_model(..., overwrite=True)`` replaces only a directory that is
recognisably a bundle (a ``bundle.json`` of this format and nothing but the regular
files save_model writes); anything else raises :class:`~cxr_embed.NotOurFileError` and is left alone.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac as _hmac
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._utils import sha256_file, sha256_text, stable_json
from ..exceptions import BundleIntegrityError, CxrEmbedError, FingerprintMismatchError, NotOurFileError

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelBundle", "load_model", "manifest_hash", "save_model"]

logger = logging.getLogger(__name__)

FORMAT = "cxr_embed.model_bundle"
FORMAT_VERSION = 2  # 2: meta_sha256 over bundle.json; 1 still loads (with a warning)
_META = "bundle.json"
_PICKLE = "estimator.joblib"
_METRICS = "metrics.json"
_KNOWN_NAME = re.compile(r"^(bundle\.json|estimator\.joblib|metrics\.json|xgboost_\d+\.json)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_META_BYTES = 16 << 20

# Module paths before the 0.2 layout (CHANGELOG.md) -> today's, for estimators pickled by 0.1.
# Only modules whose classes can sit inside a fitted estimator are listed.
_MOVED_MODULES = {
    "cxr_embed.classifiers": "cxr_embed.learn.classifiers",
    "cxr_embed.stacking": "cxr_embed.learn.stacking",
    "cxr_embed.validation": "cxr_embed.learn.validation",
    "cxr_embed.labels": "cxr_embed.learn.labels",
    "cxr_embed.metrics": "cxr_embed.evaluate.metrics",
}


def manifest_hash(manifest: Any, labels: Sequence[str] | None = None) -> str:
    """SHA-256 of a manifest's identity: image ids, patient ids and label values.

    Rows are sorted by ``image_id`` first, so row order does not matter; paths and
    metadata columns are left out, so moving the images does not change the hash.

    Parameters
    ----------
    manifest : DataFrame
        From :func:`cxr_embed.io.manifest.load_manifest` (``image_id``, ``patient_id``,
        label columns).
    labels : list of str, optional
        Label columns to include (default ``manifest.attrs["labels"]``).

    Returns
    -------
    digest : str
        64 hex characters.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"image_id": ["b", "a"], "patient_id": ["p", "q"], "x": [1.0, 0.0]})
    >>> manifest_hash(df, ["x"]) == manifest_hash(df.iloc[::-1], ["x"])
    True
    """
    labels = list(manifest.attrs.get("labels", []) if labels is None else labels)
    cols = [c for c in ("image_id", "patient_id") if c in manifest.columns] + labels
    missing = [c for c in cols if c not in manifest.columns]
    if "image_id" not in manifest.columns or missing:
        raise BundleIntegrityError(
            f"manifest lacks columns {missing or ['image_id']}; expected image_id, patient_id and the label "
            "columns (load it with cxr_embed.load_manifest)"
        )
    table = manifest[cols].copy()
    table["image_id"] = table["image_id"].astype(str)
    table = table.sort_values("image_id", kind="stable")
    return sha256_text(table.to_csv(index=False, float_format="%.10g", na_rep="NaN"))


def _versions() -> dict[str, str | None]:
    import sklearn

    from .._version import __version__

    out: dict[str, str | None] = {"cxr_embed": __version__, "python": sys.version.split()[0],
                                  "numpy": np.__version__, "sklearn": sklearn.__version__}
    xgb = sys.modules.get("xgboost")
    out["xgboost"] = getattr(xgb, "__version__", None)
    return out


def _xgboost_models(estimator: Any) -> list[Any]:
    """Every xgboost.XGBModel reachable from the estimator, in a deterministic order."""
    xgb = sys.modules.get("xgboost")
    if xgb is None:  # no booster can exist without xgboost having been imported
        return []
    found: list[Any] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 50:
            return
        seen.add(id(obj))
        if isinstance(obj, xgb.XGBModel):
            found.append(obj)
            return
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)
        elif hasattr(obj, "__dict__") and (hasattr(obj, "get_params")
                                           or type(obj).__module__.split(".")[0] in ("sklearn", "cxr_embed")):
            for v in vars(obj).values():
                walk(v, depth + 1)

    walk(estimator, 0)
    return found


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the canonical JSON of every metadata field but ``meta_sha256`` and ``hmac``."""
    return sha256_text(stable_json({k: v for k, v in meta.items() if k not in ("meta_sha256", "hmac")}))


def _signature(meta: dict, key: bytes | str) -> str:
    body = stable_json({k: v for k, v in meta.items() if k != "hmac"})
    k = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return _hmac.new(k, body.encode("utf-8"), hashlib.sha256).hexdigest()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def save_model(path: Any, estimator: Any, *, labels: Sequence[str] | str, backbone_fingerprint: str,
               manifest: Any = None, metrics: Any = None, extra: dict | None = None,
               key: bytes | str | None = None, overwrite: bool = False) -> Path:
    """Save a fitted estimator as a self-describing, checksummed bundle directory.

    Parameters
    ----------
    path : str or Path
        Directory to create (written to a temporary sibling, then renamed into place).
    estimator : fitted estimator
        Anything with ``predict_proba`` (e.g. a :class:`~cxr_embed.learn.classifiers.MultiLabelClassifier`).
    labels : list of str or str
        Label names, in the order of the estimator's outputs.
    backbone_fingerprint : str
        Fingerprint of the backbone that produced the training embeddings
        (``Backbone.fingerprint`` or a key of ``EmbeddingStore.info()["backbones"]``).
    manifest : DataFrame, optional
        Training manifest; its :func:`manifest_hash` is recorded.
    metrics : DataFrame or dict, optional
        E.g. the tidy table of :func:`cxr_embed.evaluate.metrics.evaluate_predictions` or CV summary.
    extra : dict, optional
        Any JSON-serialisable provenance (policy, classifier name, CV settings ...).
    key : bytes or str, optional
        Secret for an HMAC-SHA256 signature (see the module's trust boundary).
    overwrite : bool, default=False
        Replace an existing **bundle** at ``path``: a directory holding a ``bundle.json`` of this
        format and nothing but the files save_model writes. Anything else is never deleted.

    Returns
    -------
    path : Path

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    NotOurFileError
        ``overwrite=True`` but ``path`` is not recognisably a bundle (a file, a link, a folder
        with other content); also a ``FileExistsError``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.random.default_rng(0).normal(size=(20, 3)); y = (X[:, 0] > 0).astype(int)
    >>> path = os.path.join(tempfile.mkdtemp(), "model")
    >>> _ = save_model(path, LogisticRegression().fit(X, y), labels=["y"], backbone_fingerprint="abc")
    >>> load_model(path).predict_proba(X, fingerprint="abc").shape
    (20, 1)
    """
    import joblib
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path}: a bundle (or file) already exists; pass overwrite=True or choose another path")
    if os.path.lexists(path):
        _check_overwritable(path)
    labels = [labels] if isinstance(labels, str) else [str(v) for v in labels]
    if not labels:
        raise BundleIntegrityError(f"{path}: labels must name at least one output; got none")
    if not isinstance(backbone_fingerprint, str) or not backbone_fingerprint:
        raise BundleIntegrityError(f"backbone_fingerprint must be a non-empty str; got {backbone_fingerprint!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        joblib.dump(estimator, tmp / _PICKLE)
        xgb_files = []
        for i, model in enumerate(_xgboost_models(estimator)):
            name = f"xgboost_{i}.json"
            model.save_model(str(tmp / name))
            xgb_files.append(name)
        metrics_meta: Any = None
        if metrics is not None and hasattr(metrics, "to_json"):
            (tmp / _METRICS).write_text(metrics.to_json(orient="table", index=False), encoding="utf-8")
            metrics_meta = {"file": _METRICS}
        elif metrics is not None:
            metrics_meta = {"inline": _jsonable(metrics)}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "labels": labels,
            "backbone_fingerprint": backbone_fingerprint,
            "manifest_hash": None if manifest is None else manifest_hash(manifest, labels),
            "estimator_class": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
            "n_features_in": int(getattr(estimator, "n_features_in_", -1)),
            "metrics": metrics_meta,
            "extra": _jsonable(extra or {}),
            "versions": _versions(),
            "xgboost_models": xgb_files,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
        }
        meta["meta_sha256"] = _meta_digest(meta)
        if key is not None:
            meta["hmac"] = _signature(meta, key)
        (tmp / _META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        if os.path.lexists(path):
            _check_overwritable(path)
            _replace_bundle(path, tmp)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder
        raise
    logger.info("saved model bundle %s (%s, labels %s)", path, meta["estimator_class"], labels)
    return path


def _check_overwritable(path: Path) -> None:
    """Raise :class:`NotOurFileError` unless ``path`` is recognisably a bundle (safe to replace)."""
    def refuse(why: str) -> None:
        raise NotOurFileError(f"{path}: {why}; refusing to overwrite it, since it is not recognisably a model "
                              "bundle written by cxr_embed (nothing was deleted); fix: choose another --out/path, "
                              "or move it away yourself")

    if path.is_symlink():
        refuse("is a symbolic link")
    if not path.is_dir():
        refuse("is a file, not a bundle directory")
    meta_path = path / _META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        refuse(f"has no {_META} of format {FORMAT!r}")
    foreign = []
    for entry in os.scandir(path):  # only names save_model writes, as regular files (not what bundle.json lists)
        if not _KNOWN_NAME.match(entry.name) or entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            foreign.append(entry.name)
    if foreign:
        refuse(f"holds {len(foreign)} entries a bundle never has: {sorted(foreign)[:10]}")


def _replace_bundle(path: Path, new: Path) -> None:
    """Swap the bundle at ``path`` for ``new`` by renames, then delete only the old bundle's own files."""
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    path.rename(old)
    try:
        new.rename(path)
    except BaseException:
        old.rename(path)
        raise
    for entry in os.scandir(old):  # only the old bundle's own regular files
        if _KNOWN_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    try:
        os.rmdir(old)
    except OSError:  # something appeared in it meanwhile: keep it
        warnings.warn(f"{old}: the replaced bundle folder kept files that appeared while saving; "
                      "they were not deleted", UserWarning, stacklevel=3)


@dataclass
class ModelBundle:
    """A loaded bundle: the estimator and what it was trained on.

    Attributes
    ----------
    estimator : fitted estimator
    labels : list of str
    backbone_fingerprint : str
    manifest_hash : str or None
    metrics : DataFrame, dict or None
    versions : dict
        Library versions at save time.
    created : str
        ISO time stamp (UTC).
    extra : dict
    path : Path
    """

    estimator: Any
    labels: list[str]
    backbone_fingerprint: str
    manifest_hash: str | None
    metrics: Any
    versions: dict
    created: str
    extra: dict = field(default_factory=dict)
    path: Path | None = None

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raise :class:`~cxr_embed.FingerprintMismatchError` unless ``fingerprint`` is the training one."""
        if fingerprint != self.backbone_fingerprint:
            raise FingerprintMismatchError(
                f"{self.path}: the model was trained on embeddings of backbone fingerprint "
                f"{self.backbone_fingerprint!r} but was given embeddings of {fingerprint!r}; fix: extract "
                "embeddings with the same backbone, layer, pooling and preprocessing as the training ones"
            )

    def predict_proba(self, X: Any, *, fingerprint: str) -> np.ndarray:
        """Probability of the positive class per label, refusing foreign embeddings.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)
        fingerprint : str
            Backbone fingerprint of ``X`` (required, so that the check cannot be forgotten).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_labels)

        Raises
        ------
        FingerprintMismatchError
            ``fingerprint`` differs from the training embeddings'.
        """
        self.check_fingerprint(fingerprint)
        X = X if hasattr(X, "iloc") else np.asarray(X)  # a clinical frame keeps its columns
        n_in = getattr(self.estimator, "n_features_in_", None)
        if n_in is not None and (X.ndim != 2 or X.shape[1] != n_in):
            raise ValueError(f"X has shape {X.shape} but the model expects (n_samples, {n_in})")
        proba = np.asarray(self.estimator.predict_proba(X), dtype=float)
        if hasattr(self.estimator, "labels_"):
            return proba.reshape(len(X), -1)
        classes = list(getattr(self.estimator, "classes_", [0, 1]))
        if proba.ndim == 2 and len(self.labels) == 1 and 1 in classes:
            return proba[:, [classes.index(1)]]
        return proba.reshape(len(X), -1)


def _validate_meta(meta: Any, meta_path: Path) -> dict:
    """Check the type of every field of ``bundle.json``; raise :class:`BundleIntegrityError` naming the field."""
    def bad(field_name: str, expected: str) -> None:
        value = meta.get(field_name, "<missing>") if isinstance(meta, dict) else meta
        raise BundleIntegrityError(f"{meta_path}: field {field_name!r} should be {expected}, found {value!r:.80}; "
                                   "the bundle was edited or damaged: save it again (or restore it)")

    if not isinstance(meta, dict):
        bad("(top level)", "a JSON object")
    if meta.get("format") != FORMAT:
        raise BundleIntegrityError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}; this is not "
                                   "a cxr_embed model bundle")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise BundleIntegrityError(f"{meta_path}: format_version {version} is newer than this cxr_embed reads "
                                   f"({FORMAT_VERSION}); fix: upgrade cxr_embed")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
        bad("labels", "a non-empty list of strings")
    if not isinstance(meta.get("backbone_fingerprint"), str) or not meta["backbone_fingerprint"]:
        bad("backbone_fingerprint", "a non-empty string")
    for name in ("created", "estimator_class"):
        if name in meta and not isinstance(meta[name], str):
            bad(name, "a string")
    if meta.get("manifest_hash") is not None and not (isinstance(meta["manifest_hash"], str)
                                                       and _HEX64.match(meta["manifest_hash"])):
        bad("manifest_hash", "null or 64 hex digits")
    n_in = meta.get("n_features_in", -1)
    if not isinstance(n_in, int) or isinstance(n_in, bool):
        bad("n_features_in", "an integer")
    for name in ("extra", "versions"):
        if not isinstance(meta.get(name, {}), dict):
            bad(name, "an object")
    if not all(v is None or isinstance(v, str) for v in meta.get("versions", {}).values()):
        bad("versions", "an object of version strings")
    files = meta.get("files")
    if not isinstance(files, dict) or _PICKLE not in files:
        raise BundleIntegrityError(f"{meta_path}: no checksum list naming {_PICKLE}; the bundle is incomplete")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _HEX64.match(digest):
            bad("files", "an object of file name -> 64 hex digits")
    xgb = meta.get("xgboost_models", [])
    if not isinstance(xgb, list) or not all(isinstance(v, str) and v in files for v in xgb):
        bad("xgboost_models", "a list of file names listed in 'files'")
    metrics = meta.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict) or len(metrics) != 1 or not ({"file", "inline"} & set(metrics)):
            bad("metrics", "null, {\"file\": name} or {\"inline\": value}")
        if "file" in metrics and (not isinstance(metrics["file"], str) or metrics["file"] not in files):
            bad("metrics", "a file listed (and checksummed) in 'files'")
    for name in ("hmac", "meta_sha256"):
        if name in meta and not (isinstance(meta[name], str) and _HEX64.match(meta[name])):
            bad(name, "64 hex digits")
    return meta


def _bundle_file(path: Path, name: str, meta_path: Path) -> Path:
    """``path / name``, confined to the bundle folder: a plain name of a regular file, not a link."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or Path(name).name != name):
        raise BundleIntegrityError(f"{meta_path}: file entry {name!r} is not a plain file name inside the bundle "
                                   "folder; refusing to read anything outside it")
    fpath = path / name
    if fpath.resolve().parent != path.resolve():
        raise BundleIntegrityError(f"{meta_path}: file entry {name!r} ({fpath}) resolves outside the bundle folder "
                                   f"(a link to {fpath.resolve()}); refusing to read it")
    try:
        st = os.lstat(fpath)
    except FileNotFoundError as e:
        raise BundleIntegrityError(f"{path}: file {name} listed in {_META} is missing; the bundle is incomplete: "
                                   "save it again") from e
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise BundleIntegrityError(f"{fpath}: listed in {_META} but is a link or not a regular file; refusing it")
    return fpath


def _check_signature(path: Path, meta: dict, key, trust_unsigned: bool) -> None:
    sig = meta.get("hmac")
    if key is not None and sig:
        if not _hmac.compare_digest(str(sig), _signature(meta, key)):
            raise BundleIntegrityError(f"{path}: HMAC signature mismatch: the bundle was altered or signed with "
                                       "another key; refusing to load it")
    elif key is not None:
        if not trust_unsigned:
            raise BundleIntegrityError(f"{path}: a key was given but the bundle is unsigned; refusing to load it "
                                       "(fix: load it without a key, or with trust_unsigned=True / --trust-unsigned "
                                       "if you trust where it came from)")
        warnings.warn(f"{path}: the bundle is unsigned; loaded because trust_unsigned=True", UserWarning, stacklevel=3)
    elif sig:
        if not trust_unsigned:
            raise BundleIntegrityError(
                f"{path}: the bundle is signed but no key was given, so its signature cannot be checked and its "
                "pickle could run anyone's code; refusing to load it; fix: pass key= (CLI: --key-file FILE or "
                "$CXR_EMBED_BUNDLE_KEY), or trust_unsigned=True (--trust-unsigned) to skip the check")
        warnings.warn(f"{path}: the bundle is signed but no key= was given; its signature is not checked "
                      "(trust_unsigned=True)", UserWarning, stacklevel=3)


def load_model(path: Any, *, expected_fingerprint: str | None = None, key: bytes | str | None = None,
               trust_unsigned: bool = False) -> ModelBundle:
    """Load a bundle written by :func:`save_model`, verifying it before unpickling.

    Parameters
    ----------
    path : str or Path
        Bundle directory.
    expected_fingerprint : str, optional
        Refuse the bundle unless it was trained on this backbone fingerprint.
    key : bytes or str, optional
        Verify the HMAC signature with this secret; an unsigned bundle is refused.
    trust_unsigned : bool, default=False
        Load a **signed** bundle without ``key`` (its signature unchecked), or an unsigned one
        with ``key``, with a warning instead of an error. Only for bundles whose origin you trust.

    Returns
    -------
    ModelBundle

    Raises
    ------
    BundleIntegrityError
        Missing, malformed or edited metadata (``meta_sha256``), a missing file or one outside the
        bundle folder, a checksum or signature mismatch, a signed bundle without a key.
    FingerprintMismatchError
        ``expected_fingerprint`` differs from the bundle's.

    Examples
    --------
    >>> bundle = load_model("model", expected_fingerprint=fp)  # doctest: +SKIP
    >>> bundle.predict_proba(X, fingerprint=fp)  # doctest: +SKIP
    """
    import joblib

    path = Path(path)
    meta_path = path / _META
    if not path.is_dir():
        raise BundleIntegrityError(f"{path}: not a bundle directory; expected the folder written by "
                                   "cxr_embed.save_model / cxr-embed fit")
    if meta_path.is_symlink() or not meta_path.is_file():
        raise BundleIntegrityError(f"{path}: no {_META} (or it is a link); expected a bundle directory written by "
                                   "cxr_embed.save_model")
    try:
        if meta_path.stat().st_size > _MAX_META_BYTES:
            raise BundleIntegrityError(f"{meta_path}: {meta_path.stat().st_size} bytes, far more than a bundle's "
                                       "metadata; refusing to read it")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleIntegrityError(f"{meta_path}: not valid JSON ({e}); the bundle is corrupted, save it again") from e
    meta = _validate_meta(meta, meta_path)
    _check_signature(path, meta, key, trust_unsigned)  # the HMAC covers meta_sha256 and everything else
    recorded = meta.get("meta_sha256")
    if recorded is not None and recorded != _meta_digest(meta):
        raise BundleIntegrityError(f"{meta_path}: the metadata (labels, fingerprint, checksums ...) does not match "
                                   "its meta_sha256: bundle.json was edited or damaged; refusing to load it; fix: "
                                   "save the model again")
    if recorded is None:
        if meta["format_version"] >= 2:
            raise BundleIntegrityError(f"{meta_path}: format_version {meta['format_version']} bundles record "
                                       "meta_sha256, this one has none: bundle.json was edited; refusing to load it")
        warnings.warn(f"{path}: saved by an older cxr_embed (bundle format 1) without a metadata checksum, so edits "
                      f"to {_META} cannot be detected; save it again to add one", UserWarning, stacklevel=2)
    files = meta["files"]
    for name, digest in files.items():
        fpath = _bundle_file(path, name, meta_path)
        actual = sha256_file(fpath)
        if actual != digest:
            raise BundleIntegrityError(
                f"{fpath}: SHA-256 {actual[:12]}... does not match {digest[:12]}... recorded in {_META}; "
                "the file was corrupted or modified: refusing to load it"
            )
    extra_files = sorted(e.name for e in os.scandir(path) if e.name != _META and e.name not in files)
    if extra_files:
        warnings.warn(f"{path}: files not part of the bundle are ignored: {extra_files[:10]}", UserWarning,
                      stacklevel=2)
    if expected_fingerprint is not None and meta.get("backbone_fingerprint") != expected_fingerprint:
        raise FingerprintMismatchError(
            f"{path}: bundle trained on backbone fingerprint {meta.get('backbone_fingerprint')!r}, "
            f"expected {expected_fingerprint!r}; fix: use the bundle trained on these embeddings"
        )
    now = _versions()
    saved = meta.get("versions", {})
    for lib in ("sklearn", "xgboost", "cxr_embed"):
        if saved.get(lib) and now.get(lib) and saved[lib] != now[lib]:
            warnings.warn(f"{path}: saved with {lib} {saved[lib]}, loading with {now[lib]}; predictions may differ",
                          UserWarning, stacklevel=2)
    estimator = _unpickle(path, joblib)
    xgb_files = list(meta.get("xgboost_models", []))
    if xgb_files:
        models = _xgboost_models(estimator)
        if len(models) != len(xgb_files):
            raise BundleIntegrityError(f"{path}: {len(xgb_files)} XGBoost JSON files but {len(models)} boosters in "
                                       "the estimator; the bundle is inconsistent")
        for model, name in zip(models, xgb_files):
            try:
                model.load_model(str(path / name))
            except Exception as e:  # xgboost.core.XGBoostError and friends
                raise BundleIntegrityError(f"{path / name}: XGBoost cannot read it ({e}); save the model again") from e
    metrics_meta = meta.get("metrics")
    metrics: Any = None
    if isinstance(metrics_meta, dict) and "file" in metrics_meta:
        import io

        import pandas as pd

        mpath = _bundle_file(path, metrics_meta["file"], meta_path)
        try:
            metrics = pd.read_json(io.StringIO(mpath.read_text(encoding="utf-8")), orient="table")
        except (ValueError, UnicodeDecodeError, KeyError) as e:
            raise BundleIntegrityError(f"{mpath}: not a metrics table ({e}); save the model again") from e
    elif isinstance(metrics_meta, dict):
        metrics = metrics_meta.get("inline")
    return ModelBundle(estimator=estimator, labels=list(meta["labels"]),
                       backbone_fingerprint=meta["backbone_fingerprint"], manifest_hash=meta.get("manifest_hash"),
                       metrics=metrics, versions=saved, created=meta.get("created", ""),
                       extra=meta.get("extra", {}), path=path)


@contextlib.contextmanager
def _old_module_paths():
    """Let pickles that name a module by its 0.1 path find today's module.

    Adds ``sys.modules`` entries for the old paths that are not there, and removes exactly
    those again on exit, so nothing outlives the load.
    """
    import importlib

    added = []
    try:
        for old, new in _MOVED_MODULES.items():
            if old not in sys.modules:
                sys.modules[old] = importlib.import_module(new)
                added.append(old)
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def _unpickle(path: Path, joblib) -> Any:
    """``joblib.load`` of the bundle's estimator, resolving classes saved under 0.1 module paths."""
    try:
        return joblib.load(path / _PICKLE)
    except ModuleNotFoundError as e:
        if e.name not in _MOVED_MODULES:
            raise BundleIntegrityError(
                f"{path / _PICKLE}: the estimator needs module {e.name!r}, which is not installed; install it, or "
                "re-save the bundle where it was made"
            ) from e
    except Exception as e:  # noqa: BLE001 - unpickling can fail in any way although the checksum passed
        raise _unpickle_error(path, e) from e
    try:
        with _old_module_paths():
            return joblib.load(path / _PICKLE)
    except (ModuleNotFoundError, AttributeError) as e:
        raise BundleIntegrityError(
            f"{path / _PICKLE}: saved by an older cxr_embed whose classes no longer resolve ({e}); fix: load it "
            "with the cxr_embed version in bundle.json's 'versions', then save_model it again with this version"
        ) from e
    except Exception as e:  # noqa: BLE001
        raise _unpickle_error(path, e) from e


def _unpickle_error(path: Path, e: Exception) -> Exception:
    if isinstance(e, CxrEmbedError):
        return e
    return BundleIntegrityError(f"{path / _PICKLE}: cannot be unpickled ({type(e).__name__}: {e}); fix: load it "
                                "with the library versions in bundle.json's 'versions' and save it again")
