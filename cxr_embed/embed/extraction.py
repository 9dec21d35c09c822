"""Batched, streaming, resumable extraction of embeddings into an :class:`~cxr_embed.EmbeddingStore`.

The pipeline: ids already in the store are skipped (resume); the remaining files are decoded
(:func:`cxr_embed.read_image`) and prepared (``backbone.prepare``) by parallel workers feeding a
bounded, in-order prefetch window; full batches go through ``backbone.embed`` and each finished
batch is committed to the store at once, so a killed run loses at most the batch in flight.

Determinism: every forward pass sees exactly ``batch_size`` rows (a short last batch is padded
with zero images whose outputs are discarded), so the computation applied to an image never
depends on how many images were left to do; a resumed run stores the same bits as an
uninterrupted one on the same machine.
"""
from __future__ import annotations

import collections
import inspect
import logging
import os
import time
import warnings
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..exceptions import ImageReadError, ManifestError, MissingDependencyError
from ..io.dicom import DEFAULT_MAX_PIXELS, _check_max_pixels

from ._workers import RestartingPool
from .store import EmbeddingStore

__all__ = ["extract", "ExtractionReport", "default_workers"]

logger = logging.getLogger(__name__)

_RESIZE_MODES = ("pad", "resize", "crop")
ENGINES = ("local", "ray")
_NONFINITE_REASON = ("NonFiniteEmbedding: the backbone returned non-finite values (NaN/inf) for this image; "
                     "it was not stored")


@dataclass
class ExtractionReport:
    """What :func:`extract` did.

    Attributes
    ----------
    n_done : int
        Images embedded and stored by this run.
    n_cached : int
        Images skipped because the store already held them.
    n_failed : int
        Images that could not be read, prepared or embedded (absent from the store).
    failures : list of (image_id, path, reason)
    seconds : float
        Wall time of the run.
    images_per_second : float
        ``n_done / seconds`` (0 when nothing was done).
    store_path : str
    fingerprint : str
    """

    n_done: int = 0
    n_cached: int = 0
    n_failed: int = 0
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    store_path: str = ""
    fingerprint: str = ""

    def __str__(self) -> str:
        lines = [
            f"extracted {self.n_done} images in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s); "
            f"{self.n_cached} already cached; {self.n_failed} failed",
            f"store: {self.store_path} (fingerprint {self.fingerprint[:16]})",
        ]
        for image_id, path, reason in self.failures[:10]:
            lines.append(f"  failed {image_id} ({path}): {reason}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more failures")
        return "\n".join(lines)


def default_workers() -> int:
    """Number of decoding workers used when ``workers=None``: ``min(8, cpu_count - 1)``, at least 1.

    One core is left to the forward pass (TensorFlow uses several threads of its own).

    Returns
    -------
    int

    Examples
    --------
    >>> default_workers() >= 1
    True
    """
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# ---------------------------------------------------------------- input table
def _as_items(manifest_or_paths) -> tuple[list[str], list[str]]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a hard dependency
        pd = None
    if pd is not None and isinstance(manifest_or_paths, pd.DataFrame):
        missing = [c for c in ("image_id", "path") if c not in manifest_or_paths.columns]
        if missing:
            raise ManifestError(
                f"manifest DataFrame lacks column(s) {missing}; expected image_id and path "
                "(as returned by cxr_embed.load_manifest)"
            )
        ids = [str(i) for i in manifest_or_paths["image_id"].tolist()]
        paths = [str(p) for p in manifest_or_paths["path"].tolist()]
    elif isinstance(manifest_or_paths, (str, os.PathLike)):
        raise TypeError(
            f"expected a manifest DataFrame or a list of image paths, got the single path {manifest_or_paths!r}; "
            "fix: pass cxr_embed.load_manifest(path) or [path]"
        )
    else:
        paths = [str(p) for p in manifest_or_paths]
        ids = list(paths)
    seen: set[str] = set()
    dup = [i for i in ids if i in seen or seen.add(i)]
    if dup:
        raise ManifestError(f"{len(dup)} duplicate image ids, first ten: {dup[:10]}; fix: make image_id unique")
    return ids, paths


# ---------------------------------------------------------------- workers
def _decode_chunk(items: list[tuple[int, str]], prepare,
                  max_pixels=DEFAULT_MAX_PIXELS) -> list[tuple[int, Any, str | None]]:
    """Read and prepare each (index, path); return (index, array or None, failure reason).

    Any exception while reading or preparing one image (a named ``ImageReadError``, or anything a
    decoder or a custom ``prepare`` raises, ``MemoryError`` included) fails that image only. A
    missing dependency fails every image alike, so it stops the run instead.
    """
    from ..io.images import read_image

    out = []
    for idx, path in items:
        try:
            image, _ = read_image(path, max_pixels=max_pixels)
            arr = prepare(image)
            if not np.isfinite(arr).all():
                raise ValueError("the prepared image has non-finite values (NaN/inf) after prepare; "
                                 "fix: check the backbone's prepare function")
            out.append((idx, arr, None))
        except ImageReadError as e:  # the named reading errors: the message starts with the path
            out.append((idx, None, _reason(e)))
        except MissingDependencyError:
            raise
        except BaseException as e:  # noqa: BLE001 - anything else one image causes (even a native decoder's
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):  # panic) is reported, never fatal
                raise
            out.append((idx, None, _reason(e)))
    return out


def _read_and_prepare(items: list[tuple[int, str]], spec: tuple,
                      max_pixels=DEFAULT_MAX_PIXELS) -> list[tuple[int, Any, str | None]]:
    """Worker task: read each file straight into a CNN input (:func:`cxr_embed.read_prepared`).

    ``spec`` is ``(size, mode, interpolation, decode)``. Returns one channel (the three are
    copies: a third of the bytes through a process pipe); :func:`_stream` repeats it.
    """
    from ..io.prepared import read_prepared

    size, mode, interpolation, decode = spec
    out = []
    for idx, path in items:
        try:
            arr = read_prepared(path, size, mode=mode, interpolation=interpolation, decode=decode,
                                max_pixels=max_pixels)[0]
            out.append((idx, np.ascontiguousarray(arr[:, :, 0]), None))
        except ImageReadError as e:  # the named reading errors: the message starts with the path
            out.append((idx, None, _reason(e)))
        except MissingDependencyError:
            raise
        except BaseException as e:  # noqa: BLE001 - as _decode_chunk: one image never stops the run
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            out.append((idx, None, _reason(e)))
    return out


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _local_task(backbone, max_pixels=DEFAULT_MAX_PIXELS, spec=None):
    """In-process / thread task: the library's one-step reader when ``spec`` is known, else
    ``read_image`` + ``backbone.prepare`` (a custom prepare)."""
    if spec is not None:
        def fast(items):
            return _read_and_prepare(items, spec, max_pixels)

        return fast

    def task(items):
        return _decode_chunk(items, lambda image: np.asarray(backbone.prepare(image), dtype=np.float32), max_pixels)

    return task


def _picklable_prepare(backbone) -> tuple | None:
    """(size, mode, interpolation, decode) such that ``prepare_image(img, size, mode=mode, interpolation=...)``
    equals ``backbone.prepare`` bit for bit.

    Workers (processes, and threads too) then read each file straight into the CNN input with
    :func:`cxr_embed.read_prepared`, which needs no backbone; this probe proves that the library's
    preparation is the backbone's, on an image with an awkward aspect ratio. ``decode`` is the
    backbone's ``decode`` attribute (``"full"`` when absent). ``None`` when no mode and
    interpolation agree (a custom ``prepare``), or when the backbone declares
    ``reproducible_prepare = False`` (e.g. :class:`~cxr_embed.embed.views.ImageView`, whose perturbation
    may leave the small probe unchanged): then ``read_image`` + ``backbone.prepare`` in threads.
    """
    from ..io.preprocessing import INTERPOLATIONS, prepare_image

    if getattr(backbone, "reproducible_prepare", True) is False:
        return None

    size = tuple(int(s) for s in backbone.input_size)
    rng = np.random.default_rng(0)
    probe = rng.random((37, 23), dtype=np.float32)
    try:
        want = np.asarray(backbone.prepare(probe))
    except Exception:  # noqa: BLE001 - any failure means "cannot reproduce it elsewhere"
        return None
    first = getattr(backbone, "resize", None)
    modes = ([first] if first in _RESIZE_MODES else []) + [m for m in _RESIZE_MODES if m != first]
    chosen = getattr(backbone, "interpolation", None)
    interpolations = ([chosen] if chosen in INTERPOLATIONS else []) + [i for i in INTERPOLATIONS if i != chosen]
    decode = getattr(backbone, "decode", "full")
    decode = decode if decode in ("full", "reduced") else "full"
    for interpolation in interpolations:
        for mode in modes:
            got = prepare_image(probe, size, mode=mode, interpolation=interpolation)
            if got.shape == want.shape and np.array_equal(got, want) and np.array_equal(
                np.repeat(got[:, :, :1], 3, axis=2), want
            ):
                return size, mode, interpolation, decode
    return None


def _library_prepare(backbone) -> bool:
    """Whether ``backbone.prepare`` is :meth:`cxr_embed.Backbone.prepare` itself (not overridden or wrapped).

    Only then do in-process and thread workers bypass it for :func:`cxr_embed.read_prepared`: a
    custom ``prepare`` that happens to agree with the library on the probe image is still called.
    """
    method = getattr(type(backbone), "prepare", None)
    return ("prepare" not in vars(backbone) and getattr(method, "__qualname__", "") == "Backbone.prepare"
            and getattr(method, "__module__", "") == "cxr_embed.embed.backbones")


def _make_executor(kind: str, workers: int, backbone, max_pixels=DEFAULT_MAX_PIXELS):
    """(executor or None, task callable taking a list of (index, path))."""
    spec = _picklable_prepare(backbone)
    local_spec = spec if _library_prepare(backbone) else None
    if workers == 0:
        return None, _local_task(backbone, max_pixels, local_spec)
    if kind == "process" or (kind == "auto" and workers > 1):
        if spec is not None:
            # spawned processes, restarted when a decoder crash kills one (the file is then reported)
            ex = RestartingPool(_read_and_prepare, (spec, max_pixels), workers)
            if ex.starts():
                return ex, ex.submit
            ex.shutdown(wait=False, cancel_futures=True)
            if kind == "process":
                raise RuntimeError(
                    "worker processes could not start: a script that calls extract() with process workers must "
                    "guard its top level with `if __name__ == \"__main__\":` (spawned workers re-import the main "
                    "module); fix: add the guard, or pass executor='thread' or workers=0"
                )
            warnings.warn(
                "decoding worker processes could not start (a script without an `if __name__ == \"__main__\":` "
                "guard re-runs itself in spawned workers); decoding in threads instead, which is slower for DICOM. "
                "Fix: add the guard, or pass executor='thread' to silence this warning",
                RuntimeWarning,
                stacklevel=4,
            )
        if kind == "process" and spec is None:
            raise ValueError(
                "executor='process' needs backbone.prepare to equal cxr_embed.prepare_image(image, "
                "backbone.input_size, mode=..., interpolation=...) so that worker processes can reproduce it; this "
                "backbone has a custom prepare; fix: use executor='thread'"
            )
        if spec is None:
            logger.info("backbone.prepare is custom: decoding in %d threads instead of processes", workers)
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr_embed-decode")
    local = _local_task(backbone, max_pixels, local_spec)

    def task(items, _ex=ex):
        return _ex.submit(local, items)

    return ex, task


def _stream(items: list[tuple[int, str]], executor: Executor | None, task, chunk: int, window: int) -> Iterator:
    """Yield (index, array or None, reason) in input order, at most ``window`` chunks in flight."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    if executor is None:
        for c in chunks:
            yield from _three_channels(task(c))
        return
    pending: collections.deque = collections.deque()  # (future, its chunk)
    it = iter(chunks)

    def fill():  # submit chunks not yet submitted until ``window`` are in flight
        for c in it:
            pending.append((task(c), c))
            if len(pending) >= window:
                break

    fill()
    while pending:
        fut, c = pending.popleft()
        try:
            results = fut.result()
        except BrokenProcessPool:
            if not isinstance(executor, RestartingPool):
                raise
            # a worker died (a decoder crash on one file): every chunk in flight is lost with it;
            # a fresh pool re-runs them (before anything new is submitted to it), isolating the
            # file that kills its worker
            lost = [c] + [chunk for _, chunk in pending]
            pending.clear()
            yield from _three_channels(executor.recover(lost))
            fill()
            continue
        fill()
        yield from _three_channels(results)


def _three_channels(results):
    for idx, arr, reason in results:
        if arr is not None and arr.ndim == 2:  # one channel from a worker: back to (h, w, 3)
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        yield idx, arr, reason


def _accepts_batch_size(fn) -> bool:
    try:
        return "batch_size" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def _embed_fixed(backbone, batch: list[np.ndarray], batch_size: int) -> np.ndarray:
    """Forward pass of exactly ``batch_size`` rows (zero-padded); returns the first ``len(batch)`` rows."""
    x = np.stack(batch).astype(np.float32, copy=False)
    n = x.shape[0]
    if n < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), np.float32)])
    if _accepts_batch_size(backbone.embed):  # Backbone.embed splits big batches itself: keep one pass
        out = backbone.embed(x, batch_size=batch_size)
    else:
        out = backbone.embed(x)
    out = np.asarray(out, dtype=np.float32)
    if out.shape != (batch_size, int(backbone.dim)):
        raise ValueError(f"backbone.embed returned shape {out.shape}, expected ({batch_size}, {backbone.dim})")
    return out[:n]


# ---------------------------------------------------------------- public
def extract(
    manifest_or_paths,
    backbone,
    store,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    dtype: str | None = None,
    executor: str = "auto",
    prefetch: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    engine: str = "local",
    ray_address: str | None = None,
    ray_options: dict | None = None,
) -> ExtractionReport:
    """Embed every image not yet in the store, in batches, committing each batch as it finishes.

    Parameters
    ----------
    manifest_or_paths : DataFrame or sequence of str
        A table with columns ``image_id`` and ``path`` (from :func:`cxr_embed.load_manifest`),
        or a list of image paths (then the ids are the path strings).
    backbone : Backbone or CompositeEmbedding
        Any object with ``fingerprint``, ``config``, ``dim``, ``input_size``, ``name``,
        ``prepare(image) -> (h, w, 3)`` and ``embed(batch (n, h, w, 3)) -> (n, dim)`` float32;
        or a :class:`~cxr_embed.embed.composite.CompositeEmbedding` (multi-size, flip TTA,
        fused backbones), whose passes are each extracted with these settings into its parts
        store and combined into one group of ``store``.
    store : EmbeddingStore or str or Path
        Where the embeddings go (created if missing).
    batch_size : int, default 32
        Rows per forward pass; every pass has exactly this many rows (see Notes).
    workers : int, optional
        Decoding/preparing workers; ``None`` picks :func:`default_workers`, ``0`` works in-process.
    progress : bool, default True
        Show a tqdm progress bar (images/s, ETA) on stderr.
    dtype : {"float32", "float16"}, optional
        Storage type of a new group (see :meth:`EmbeddingStore.writer`).
    executor : {"auto", "process", "thread"}
        ``"process"``: a spawn-context process pool, used when the backbone's ``prepare`` is the
        library's ``prepare_image`` (checked bit for bit; otherwise threads). ``"auto"``: one
        decoding thread when ``workers == 1`` (TensorFlow releases the GIL during the forward
        pass, and a thread needs no start-up or pickling: measured 0.75 vs 0.65 of the
        model-only rate on two cores), the process pool for several workers (DICOM parsing
        holds the GIL, so several threads would take turns).
    prefetch : int, optional
        Chunks of ``min(batch_size, 8)`` images decoded ahead; default ``2 * workers + 2``.
        Bounds memory whatever the dataset size.
    max_pixels : int or None, default 100_000_000
        Pixel budget of each image (see :func:`cxr_embed.read_image`), checked from the header
        before decoding; larger images are failures (``ImageTooLargeError``). ``None``: no limit.
    engine : {"local", "ray"}
        ``"local"``: the workers above, in this process. ``"ray"``: a Ray Data pipeline
        (:mod:`cxr_embed.embed.distributed`): decoding tasks on the cluster's CPUs, the backbone
        rebuilt from its config in one actor per GPU (CPU actors without GPUs), its fingerprint
        checked on each worker before any image is embedded; this process stays the only
        writer of the store, and the embeddings are bit-identical to ``"local"`` on the same
        machine. ``workers`` then bounds the decoding tasks at once (``None``: as many as the
        cluster's CPUs allow); ``executor`` and ``prefetch`` are not used. Needs
        ``pip install "cxr_embed[ray]"``.
    ray_address : str, optional
        With ``engine="ray"``: the cluster to connect to (``"auto"``, ``"HOST:6379"``);
        ``None`` reuses this process's Ray session or starts a local one sized to this
        machine. A session that ``extract`` started or connected is shut down at the end.
    ray_options : dict, optional
        With ``engine="ray"``: ``actors``, ``actor_cpus``, ``actor_memory``, ``decode_cpus``,
        ``block_rows``, ``commit_rows``, ``init`` (``ray.init`` arguments), ``runtime_env`` (see
        :data:`cxr_embed.embed.distributed.RAY_OPTIONS`).

    Returns
    -------
    ExtractionReport

    Raises
    ------
    ManifestError
        Missing ``image_id``/``path`` columns or duplicate ids.
    StoreLockedError
        Another writer holds the store.
    FingerprintMismatchError
        The store's group for this backbone was written with another configuration, or
        (``engine="ray"``) a worker's weights differ from this process's.
    MissingDependencyError
        ``engine="ray"`` without Ray installed.

    Notes
    -----
    Any exception while reading or preparing one image, a prepared image that is not finite or
    not of the backbone's input shape, and an embedding row with NaN/inf fail that image only:
    it is reported in ``failures`` (id, path, ``"ExceptionClass: message"``), never stored (no
    zero rows), and retried by the next run. So is a file whose decoding kills its worker
    process (a native decoder's segmentation fault, an out-of-memory kill): the process pool is
    restarted, the chunks in flight are re-run and the file that kills a worker again is named
    (``WorkerCrashError: ...``); only crashes on many files in a row stop the run
    (:class:`~cxr_embed.WorkerCrashError`). Errors about the run itself (store, backbone forward
    pass, disk, a missing dependency) stop it. Padding each forward pass to ``batch_size`` rows
    makes the bits of an image's embedding independent of the number of images left, so a resumed
    run matches an uninterrupted one (oneDNN/cuDNN may choose different kernels for different
    batch shapes).

    Examples
    --------
    >>> import cxr_embed
    >>> bb = cxr_embed.Backbone("efficientnet_lite0")  # doctest: +SKIP
    >>> report = cxr_embed.extract(cxr_embed.load_manifest("labels.csv"), bb, "emb.h5")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    extracted 1000 images in 52.1 s (19.2 images/s); 0 already cached; 0 failed
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    if executor not in ("auto", "process", "thread"):
        raise ValueError(f"executor must be 'auto', 'process' or 'thread', got {executor!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    max_pixels = _check_max_pixels(max_pixels)
    n_workers = default_workers() if workers is None else int(workers)
    if n_workers < 0:
        raise ValueError(f"workers must be >= 0 or None, got {workers}")
    ids, paths = _as_items(manifest_or_paths)
    if not ids:
        logger.warning("extract: the manifest lists no images; nothing is extracted and %s is not created or "
                       "changed", getattr(store, "path", store))
    if getattr(backbone, "composite", False):  # several passes, each extracted like a backbone, then combined
        import pandas as pd

        return backbone.extract_into(
            pd.DataFrame({"image_id": ids, "path": paths}), store, batch_size=batch_size, workers=workers,
            progress=progress, dtype=dtype, executor=executor, prefetch=prefetch, max_pixels=max_pixels, engine=engine,
            ray_address=ray_address, ray_options=ray_options)
    if engine == "local" and (ray_address is not None or ray_options):
        raise ValueError("ray_address and ray_options are options of engine='ray'; fix: pass engine='ray' or drop them")
    ray_plan = None
    if engine == "ray":  # everything checkable is checked before the store is opened
        from .distributed import plan_ray_extraction

        ray_plan = plan_ray_extraction(backbone, workers=workers, address=ray_address, options=ray_options)
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store, mode="a")
    report = ExtractionReport(store_path=str(store.path), fingerprint=str(backbone.fingerprint))
    t0 = time.perf_counter()
    with store.writer(backbone, dtype=dtype) as w:
        todo = [(i, p) for i, p in enumerate(paths) if ids[i] not in w.existing]
        report.n_cached = len(ids) - len(todo)
        logger.info(
            "extracting %d images with %s (%d already in %s), batch %d, %s workers, engine %s",
            len(todo), getattr(backbone, "name", "backbone"), report.n_cached, store.path, batch_size,
            workers if engine == "ray" else n_workers, engine,
        )
        if todo and ray_plan is not None:
            from .distributed import run_ray_extraction

            run_ray_extraction(ray_plan, todo, ids, paths, w, report, batch_size=batch_size, progress=progress,
                               max_pixels=max_pixels)
        elif todo:
            _run(todo, ids, paths, backbone, w, report, batch_size, n_workers, executor, prefetch, progress,
                 max_pixels)
    report.seconds = time.perf_counter() - t0
    report.images_per_second = report.n_done / report.seconds if report.n_done and report.seconds > 0 else 0.0
    report.n_failed = len(report.failures)
    if report.failures:
        logger.warning("%d images could not be read, e.g. %s", report.n_failed, report.failures[0][2])
    logger.info("%s", report)
    return report


def _run(todo, ids, paths, backbone, w, report, batch_size, n_workers, executor, prefetch, progress,
         max_pixels=DEFAULT_MAX_PIXELS):
    from tqdm.auto import tqdm

    chunk = max(1, min(batch_size, 8))
    window = int(prefetch) if prefetch else 2 * n_workers + 2
    pool, task = _make_executor(executor, n_workers, backbone, max_pixels)
    bar = tqdm(total=len(todo), disable=not progress, unit="img", desc=f"embedding ({getattr(backbone, 'name', '')})")
    expected = (*(int(s) for s in backbone.input_size), 3)
    batch_idx: list[int] = []
    batch_x: list[np.ndarray] = []

    def flush():
        X = _embed_fixed(backbone, batch_x, batch_size)
        finite = np.isfinite(X).all(axis=1)
        for i in np.flatnonzero(~finite):  # a NaN row is never stored (it would poison every classifier)
            idx = batch_idx[i]
            report.failures.append((ids[idx], paths[idx], _NONFINITE_REASON))
        keep = [ids[idx] for idx in batch_idx]
        if not finite.all():
            keep = [k for k, ok in zip(keep, finite, strict=True) if ok]
            X = X[finite]
        if keep:
            w.append(keep, X)
        report.n_done += len(keep)
        bar.update(len(batch_idx))
        batch_idx.clear()
        batch_x.clear()

    try:
        for idx, arr, reason in _stream(todo, pool, task, chunk, window):
            if arr is not None and arr.shape != expected:
                arr, reason = None, (f"ValueError: the prepared image has shape {arr.shape}, the backbone "
                                     f"expects {expected}; fix: check the backbone's prepare function")
            if arr is None:
                report.failures.append((ids[idx], paths[idx], reason))
                bar.update(1)
                continue
            batch_idx.append(idx)
            batch_x.append(arr)
            if len(batch_idx) == batch_size:
                flush()
        if batch_idx:
            flush()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
