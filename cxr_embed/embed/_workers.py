"""Decoding worker processes that survive the crash of one of them.

A native decoder that segfaults on a hostile file (or the kernel's out-of-memory killer) ends the
worker process; :class:`concurrent.futures.ProcessPoolExecutor` then marks the whole pool broken and
fails every chunk in flight with :class:`~concurrent.futures.process.BrokenProcessPool`.
:class:`RestartingPool` replaces the broken pool with a fresh one and re-runs the lost chunks one at a
time; a chunk that breaks the pool again is re-run file by file, so the file that kills its worker is
named and reported as failed, and the run goes on. A pool that keeps crashing on file after file
(something systemic, not one file) stops the run with a :class:`WorkerCrashError`.
"""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..exceptions import WorkerCrashError

__all__: list[str] = []  # private module

logger = logging.getLogger(__name__)

#: The failure reason recorded for a file whose decoding killed its worker process.
CRASH_REASON = ("WorkerCrashError: decoding this file killed its worker process (a native decoder crash "
                "such as a segmentation fault, or the out-of-memory killer); the file is probably corrupt or "
                "hostile; fix: re-export or re-copy it, or lower max_pixels= if memory is short")


class RestartingPool:
    """A spawn-context process pool running ``fn(items, *args)`` per chunk, restarted after a crash.

    Parameters
    ----------
    fn : callable
        Picklable task ``fn(items, *args) -> list of (index, array or None, reason)``.
    args : tuple
        Extra arguments of ``fn``.
    workers : int
        Worker processes.
    max_consecutive_crashes : int, default 8
        Files in a row that each killed a worker (with no file decoded between them) before the run
        stops with :class:`WorkerCrashError`.
    """

    def __init__(self, fn: Callable, args: tuple, workers: int, *, max_consecutive_crashes: int = 8):
        self.fn, self.args, self.workers = fn, tuple(args), int(workers)
        self.max_consecutive_crashes = int(max_consecutive_crashes)
        self.restarts = 0
        self._consecutive = 0
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that runs TensorFlow
        self._ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._ctx)

    def submit(self, items) -> Future:
        return self._ex.submit(self.fn, items, *self.args)

    def starts(self) -> bool:
        """Whether the spawned workers come up (they re-import ``__main__``, which may re-run a script)."""
        try:
            self.submit([]).result()
            return True
        except BrokenProcessPool:
            return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._ex.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _restart(self) -> None:
        # the broken pool's own manager has already ended its processes; never wait on it
        self._ex.shutdown(wait=False, cancel_futures=True)
        self.restarts += 1
        self._ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._ctx)

    def recover(self, lost: list[list]) -> Iterator[tuple]:
        """After a :class:`BrokenProcessPool`: a fresh pool, then the ``lost`` chunks again, in order.

        Each chunk runs alone; one that breaks the pool again runs file by file, and a file that
        breaks it is yielded as failed with :data:`CRASH_REASON`. Yields ``(index, array or None,
        reason)`` for every item of ``lost``, in order.
        """
        self._restart()
        for chunk in lost:
            try:
                results = self.submit(chunk).result()
            except BrokenProcessPool:
                self._restart()
                results = list(self._one_by_one(chunk))
            else:
                self._consecutive = 0
            yield from results

    def _one_by_one(self, chunk) -> Iterator[tuple]:
        for item in chunk:
            try:
                result = self.submit([item]).result()
            except BrokenProcessPool:
                self._consecutive += 1
                logger.warning("%s: decoding killed its worker process; reported as failed", item[1])
                if self._consecutive >= self.max_consecutive_crashes:
                    raise WorkerCrashError(
                        f"decoding worker processes crashed on {self._consecutive} files in a row (the last: "
                        f"{item[1]}): something systemic (a broken decoder install, memory too small for these "
                        "images), not one bad file; fix: check the image decoders (pip check; pydicom, "
                        "pylibjpeg, Pillow), lower max_pixels=, or pass workers=0 to see the crash in this "
                        "process") from None
                self._restart()
                yield item[0], None, CRASH_REASON
            else:
                self._consecutive = 0
                yield from result
