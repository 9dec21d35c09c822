"""Extraction on a Ray cluster: decoding tasks on every CPU, backbone actors on the GPUs, one writer.

:func:`cxr_embed.extract` with ``engine="ray"`` runs this module's pipeline instead of its local
workers. It is a `Ray Data <https://docs.ray.io/en/latest/data/data.html>`_ pipeline of two stages:

1. **decoding** (Ray tasks, ``decode_cpus`` CPUs each, spread over the cluster): each block of
   ``(index, path)`` rows is read and prepared by the local engine's own worker function
   (:func:`cxr_embed.embed.extraction._read_and_prepare`: ``read_image`` then ``prepare_image``
   with the backbone's input size and resize mode), so a pixel is decoded by the same code
   whichever engine runs. A file that cannot be read becomes a row with ``ok=False`` and
   the reason, as locally;
2. **embedding** (Ray actors; one per GPU when the cluster has GPUs, else CPU actors): each
   actor rebuilds the backbone from ``backbone.config`` (:meth:`Backbone.from_config`) and
   compares its fingerprint with the driver's **before embedding anything**, refusing with
   :class:`~cxr_embed.exceptions.FingerprintMismatchError` when the weights on its node
   differ; then every call is one forward pass of exactly ``batch_size`` rows
   (:func:`cxr_embed.embed.extraction._embed_fixed`, zero-padded), so the bits of an
   embedding are those of ``engine="local"`` on the same machine.

The results stream back to the driver, which is the only writer of the store: it appends each
batch through the same :class:`~cxr_embed.embed.store.StoreWriter` (lock, journal, crash
safety) as the local engine, skips ids already stored (a killed driver resumes; a block
recomputed after a node was lost is not stored twice), and lists failures in the report.
Rows arrive in the order the cluster finishes them, not in manifest order.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._ray import cluster_resources, ray_session
from .._utils import stable_json
from .._version import __version__
from ..exceptions import BackboneError, CxrEmbedError, FingerprintMismatchError, WeightsError
from ..io.dicom import DEFAULT_MAX_PIXELS
from .extraction import _NONFINITE_REASON, _embed_fixed, _picklable_prepare, _read_and_prepare

__all__ = ["RAY_OPTIONS", "RayPlan", "plan_ray_extraction", "run_ray_extraction"]

logger = logging.getLogger(__name__)

#: keys of ``extract(..., ray_options=...)`` and what they mean
RAY_OPTIONS = {
    "actors": "embedding actors (default: one per GPU of the cluster, else 1)",
    "actor_cpus": "CPUs reserved by each embedding actor (default 1)",
    "decode_cpus": "CPUs reserved by each decoding task (default 1)",
    "block_rows": "images per decoding task (default 4 * batch_size)",
    "init": "keyword arguments of ray.init when extract starts or connects the session",
    "runtime_env": "Ray runtime_env of both stages (e.g. env_vars, pip); default none",
    "actor_memory": "bytes of memory reserved by each embedding actor (default 1 GiB)",
    "commit_rows": "rows per store commit on the driver (default max(batch_size, 256); also every 10 s)",
}


_ACTOR_MEMORY = 1 << 30  # a TensorFlow runtime and one CNN


@dataclass(frozen=True)
class RayPlan:
    """What the driver checked before opening the store (see :func:`plan_ray_extraction`)."""

    config: dict
    fingerprint: str
    dim: int
    size: tuple
    mode: str
    precision: str
    workers: int | None
    address: str | None
    options: dict = field(default_factory=dict)


def plan_ray_extraction(backbone, *, workers: int | None, address: str | None, options: dict | None) -> RayPlan:
    """Check, before anything is opened or started, that ``backbone`` can run on Ray workers.

    Parameters
    ----------
    backbone : Backbone
        Must be rebuildable from its ``config`` (a registry name with ``"imagenet"`` or file
        weights, or a ``.keras`` file) and use the library's ``prepare_image``.
    workers : int, optional
        Decoding tasks running at once (``None``: as many as the cluster's CPUs allow).
    address : str, optional
        Ray cluster address (``None``: this process's session or a new local instance).
    options : dict, optional
        Keys of :data:`RAY_OPTIONS`.

    Returns
    -------
    RayPlan

    Raises
    ------
    MissingDependencyError
        Ray is not installed (``pip install "cxr_embed[ray]"``).
    BackboneError
        The backbone cannot be rebuilt on a worker from its config.
    ValueError
        Unknown option or bad value.
    """
    from .._ray import import_ray

    import_ray(data=True)  # the install hint now, not after the store is open
    options = dict(options or {})
    unknown = sorted(set(options) - set(RAY_OPTIONS))
    if unknown:
        raise ValueError(f"unknown ray_options {unknown}; expected keys among {sorted(RAY_OPTIONS)}")
    for key in ("actors", "block_rows", "commit_rows"):
        if options.get(key) is not None and int(options[key]) < 1:
            raise ValueError(f"ray_options[{key!r}] must be >= 1, got {options[key]!r}")
    if options.get("actor_memory") is not None and float(options["actor_memory"]) <= 0:
        raise ValueError(f"ray_options['actor_memory'] must be > 0 bytes, got {options['actor_memory']!r}")
    for key in ("actor_cpus", "decode_cpus"):
        if options.get(key) is not None and float(options[key]) < 0:
            raise ValueError(f"ray_options[{key!r}] must be >= 0, got {options[key]!r}")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"with engine='ray', workers is the number of decoding tasks at once (>= 1) or None "
                         f"(as many as the cluster allows), got {workers}")
    config = getattr(backbone, "config", None)
    if not isinstance(config, dict) or config.get("format") != "cxr_embed.backbone":
        raise BackboneError(
            f"engine='ray' rebuilds the backbone on each worker from Backbone.config; {type(backbone).__name__} "
            "is not a cxr_embed.Backbone; fix: use cxr_embed.Backbone or Backbone.from_keras('model.keras'), "
            "or engine='local'")
    if config.get("source") == "keras_model" and config.get("weights") in (None, "in-memory"):
        raise BackboneError(
            f"engine='ray' rebuilds the backbone on each worker, but {config.get('name')!r} was built from an "
            "in-memory Keras model; fix: save it (model.save('model.keras')) on storage every node sees and use "
            "Backbone.from_keras('model.keras')")
    if config.get("source") != "keras_model" and config.get("weights") is None:
        raise BackboneError(
            f"engine='ray' rebuilds the backbone on each worker, but {config.get('name')!r} has random weights "
            "(weights=None), which no worker can reproduce; fix: save them (backbone.model.save('model.keras')) "
            "and use Backbone.from_keras")
    spec = _picklable_prepare(backbone)
    if spec is None:
        raise BackboneError(
            "engine='ray' decodes with cxr_embed.prepare_image(image, backbone.input_size, mode=...), which does "
            "not reproduce this backbone's custom prepare; fix: use engine='local'")
    size, mode = spec
    precision = getattr(backbone, "_precision_arg", "auto")  # "auto" resolves on each worker (GPU: mixed float16)
    return RayPlan(config=dict(config), fingerprint=str(backbone.fingerprint), dim=int(backbone.dim),
                   size=tuple(size), mode=mode, precision=str(precision),
                   workers=None if workers is None else int(workers), address=address, options=options)


# ---------------------------------------------------------------- stage 1: decoding tasks
def _decode_block(batch: dict, size, mode, max_pixels=DEFAULT_MAX_PIXELS) -> dict:
    """Ray task: decode and prepare one block of rows ``idx``, ``path`` (one channel per image)."""
    idx = [int(i) for i in batch["idx"]]
    decoded = _read_and_prepare(list(zip(idx, [str(p) for p in batch["path"]])), size, mode, max_pixels)
    images = np.zeros((len(idx), int(size[0]), int(size[1])), np.float32)
    ok = np.zeros(len(idx), bool)
    reasons = [""] * len(idx)
    for row, (_, arr, reason) in enumerate(decoded):  # _read_and_prepare keeps the order of its input
        if arr is None:
            reasons[row] = str(reason)
        else:
            images[row] = arr
            ok[row] = True
    return {"idx": np.asarray(idx, np.int64), "image": images, "ok": ok, "reason": np.asarray(reasons, dtype=object)}


# ---------------------------------------------------------------- stage 2: embedding actors
class _EmbedWorker:
    """Ray actor holding the backbone, rebuilt from its config and checked against the driver's fingerprint."""

    def __init__(self, config: dict, fingerprint: str, precision: str, batch_size: int, driver_version: str):
        from .backbones import Backbone

        where = f"Ray worker on {platform.node()} (cxr_embed {__version__}, pid {os.getpid()})"
        try:
            backbone = Backbone.from_config(config, precision=precision, check_fingerprint=False)
        except (BackboneError, WeightsError) as e:
            raise type(e)(f"{where}: cannot rebuild the backbone {config.get('name')!r}: {e}; fix: every node "
                          "needs the same weights (see docs/distributed.md)") from e
        if backbone.fingerprint != fingerprint:
            versions = "" if driver_version == __version__ else f" (the driver runs cxr_embed {driver_version})"
            raise FingerprintMismatchError(
                f"{where}{versions}: the backbone {config.get('name')!r} rebuilt here from weights "
                f"{config.get('weights')!r} has fingerprint {backbone.fingerprint[:16]}..., the driver's is "
                f"{fingerprint[:16]}...: the weights on this node differ from the driver's; nothing was embedded "
                "here; fix: put byte-identical weights at the same path on every node (see docs/distributed.md)")
        self.backbone = backbone
        self.batch_size = int(batch_size)
        self.compute = stable_json(backbone.compute)

    def __call__(self, batch: dict) -> dict:
        ok = np.array(batch["ok"], bool)
        reason = np.array(batch["reason"], dtype=object)
        out = np.zeros((len(ok), int(self.backbone.dim)), np.float32)
        if ok.any():  # one forward pass of exactly batch_size rows, as in the local engine
            images = [np.repeat(a[:, :, None], 3, axis=2) for a in np.asarray(batch["image"])[ok]]
            out[ok] = _embed_fixed(self.backbone, images, self.batch_size)
            bad = ok & ~np.isfinite(out).all(axis=1)  # a NaN row is a failure of that image, as locally
            ok[bad], reason[bad], out[bad] = False, _NONFINITE_REASON, 0.0
        return {"idx": batch["idx"], "ok": ok, "reason": reason, "embedding": out,
                "compute": np.asarray([self.compute] * len(ok), dtype=object)}


# ---------------------------------------------------------------- the driver
def run_ray_extraction(plan: RayPlan, todo, ids, paths, writer, report, *, batch_size: int, progress: bool,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Run the pipeline for ``todo`` (list of (index, path)) and commit every result through ``writer``.

    Called by :func:`cxr_embed.extract` with ``engine="ray"`` inside its writer context;
    fills ``report.n_done`` and ``report.failures``.

    Parameters
    ----------
    plan : RayPlan
        From :func:`plan_ray_extraction`.
    todo : list of (int, str)
        Indices into ``ids``/``paths`` still to embed.
    ids, paths : list of str
    writer : StoreWriter
    report : ExtractionReport
    batch_size : int
        Rows of every forward pass.
    progress : bool
        tqdm bar on the driver.
    max_pixels : int or None
        Pixel budget of each image (:func:`cxr_embed.read_image`), checked before decoding.
    """
    from tqdm.auto import tqdm

    opts = plan.options
    with ray_session(plan.address, opts.get("init"), data=True) as ray:
        resources = cluster_resources(ray)
        gpus = int(resources.get("GPU", 0))
        actors = int(opts.get("actors") or max(1, gpus))
        block = int(opts.get("block_rows") or 4 * batch_size)
        stage = {"runtime_env": opts["runtime_env"]} if opts.get("runtime_env") else {}
        logger.info("ray engine: %d images, cluster %s, %d embedding actor(s) on %s, blocks of %d",
                    len(todo), resources, actors, "GPUs" if gpus else "CPUs", block)
        items = [{"idx": int(i), "path": str(p)} for i, p in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / block)))
        del items  # now in the object store (about 200 MB of Python objects per million images)
        ds = ds.map_batches(_decode_block, fn_kwargs={"size": plan.size, "mode": plan.mode, "max_pixels": max_pixels}, batch_size=None,
                            batch_format="numpy", num_cpus=float(opts.get("decode_cpus", 1)),
                            compute=ray.data.TaskPoolStrategy(size=plan.workers), **stage)
        # The actors reserve memory for the model; remote arguments that differ from the decoding
        # tasks' also keep Ray Data from fusing the decoding into the actors (fused, an actor would
        # decode and embed in turn instead of being fed by every CPU of the cluster).
        ds = ds.map_batches(
            _EmbedWorker, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"config": plan.config, "fingerprint": plan.fingerprint, "precision": plan.precision,
                                   "batch_size": batch_size, "driver_version": __version__},
            num_cpus=float(opts.get("actor_cpus", 1)), num_gpus=1 if gpus else 0,
            memory=float(opts.get("actor_memory") or _ACTOR_MEMORY), **stage)
        ds.context.enable_progress_bars = False  # the driver shows its own bar
        bar = tqdm(total=len(todo), disable=not progress, unit="img", desc=f"embedding on ray ({plan.config.get('name', '')})")
        committer = _Committer(ids, paths, writer, report, plan.dim,
                               int(opts.get("commit_rows") or max(batch_size, 256)))
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(committer.add(batch))
        except Exception as e:  # noqa: BLE001 - Ray wraps what workers raise; surface our own error
            committer.flush_quietly()  # rows already computed (by workers with the right fingerprint) are kept
            cause = _our_error(e)
            if cause is not None and cause is not e:
                raise cause from e
            raise
        except BaseException:  # Ctrl-C: keep what is computed, then stop
            committer.flush_quietly()
            raise
        else:
            committer.flush()
        finally:
            bar.close()


class _Committer:
    """The driver's side: accounts for each result row once and appends rows in groups of ``commit_rows``.

    Each append is one atomic journal commit of the store; grouping the actors' batches keeps the
    journal (and the compaction at the end) small on a fast cluster. Rows waiting in the group
    are lost if the driver is killed, and recomputed by the next run.
    """

    def __init__(self, ids, paths, writer, report, dim: int, commit_rows: int, commit_seconds: float = 10.0):
        self.ids, self.paths, self.writer, self.report, self.dim = ids, paths, writer, report, dim
        self.commit_rows, self.commit_seconds = commit_rows, commit_seconds
        self.seen_failed: set[int] = set()
        self.pending_ids: list[str] = []
        self.pending_set: set[str] = set()
        self.pending_x: list[np.ndarray] = []
        self.pending_compute: dict | None = None
        self.last = time.monotonic()

    def add(self, batch: dict) -> int:
        """Take one result batch; returns the number of rows newly accounted for (stored or failed)."""
        rows: list[int] = []
        n = 0
        computes = np.asarray(batch["compute"])
        for row, (i, ok, reason) in enumerate(zip(batch["idx"], batch["ok"], batch["reason"])):
            i = int(i)
            image_id = self.ids[i]
            if image_id in self.writer.existing or image_id in self.pending_set or i in self.seen_failed:
                continue  # a block recomputed after a worker was lost: each image is stored once
            n += 1
            if not ok:
                self.seen_failed.add(i)
                self.report.failures.append((image_id, self.paths[i], str(reason)))
                continue
            rows.append(row)
        if rows:
            X = np.asarray(batch["embedding"], np.float32)[rows]
            if X.shape != (len(rows), self.dim):
                raise ValueError(f"a Ray worker returned embeddings of shape {X.shape}, expected ({len(rows)}, {self.dim})")
            compute = json.loads(str(computes[rows[0]]))
            if self.pending_ids and compute != self.pending_compute:  # one provenance per journal commit
                self.flush()
            new = [self.ids[int(batch["idx"][r])] for r in rows]
            self.pending_ids.extend(new)
            self.pending_set.update(new)
            self.pending_x.append(X)
            self.pending_compute = compute
        if len(self.pending_ids) >= self.commit_rows or time.monotonic() - self.last >= self.commit_seconds:
            self.flush()
        return n

    def flush(self) -> None:
        """Append the rows waiting (one atomic commit)."""
        if self.pending_ids:
            self.writer.append(self.pending_ids, np.concatenate(self.pending_x), compute=self.pending_compute)
            self.report.n_done += len(self.pending_ids)
            self.pending_ids, self.pending_set, self.pending_x = [], set(), []
        self.last = time.monotonic()

    def flush_quietly(self) -> None:
        """Flush while another error is being raised (that error is the one to report)."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - e.g. the writer itself failed; the rows are recomputed next run
            logger.warning("could not commit %d computed rows while stopping; the next run recomputes them",
                           len(self.pending_ids), exc_info=True)


def _our_error(e: BaseException) -> BaseException | None:
    """The first CxrEmbedError in the chain of a Ray error (task/actor errors carry the worker's exception)."""
    seen: set[int] = set()
    stack: list[Any] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen or not isinstance(x, BaseException):
            continue
        seen.add(id(x))
        if isinstance(x, CxrEmbedError) and type(x).__module__.startswith("cxr_embed"):
            return x
        stack.extend([getattr(x, "cause", None), getattr(x, "__cause__", None), getattr(x, "__context__", None)])
        stack.extend(a for a in getattr(x, "args", ()) if isinstance(a, BaseException))
    return None
