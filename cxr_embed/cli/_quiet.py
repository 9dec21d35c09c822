"""Keep TensorFlow's start-up noise off the terminal during one ``cxr-embed`` command.

TensorFlow prints C++ log lines when it is imported (oneDNN, CUDA probing, CPU features,
``All log messages before absl::InitializeLog() ...``) and Python warnings later (retracing).
A command-line user cannot act on them, so :func:`quiet_tensorflow` hides them for the
duration of a command: ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it, the file
descriptor 2 redirected while ``tensorflow`` is imported (the lines printed before absl's
logging is initialised obey no setting), and the ``tensorflow`` and ``absl`` Python loggers
at ERROR. Everything is restored afterwards. Only the CLI uses it (``--debug`` turns it off);
importing the library never touches the environment or the loggers.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["quiet_tensorflow"]

_NOISY = ("tensorflow",)
_LOGGERS = ("tensorflow", "absl")


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader with file descriptor 2 and ``sys.stderr`` sent to temporary buffers.

    The captured text is written to stderr after all when the import fails, so an
    installation problem is never hidden.
    """

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        sys.stderr.flush()
        saved_fd, saved_stream, text = os.dup(2), sys.stderr, io.StringIO()
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)  # C++ logging writes to the descriptor
            sys.stderr = text  # Python warnings to the stream
            try:
                self._loader.exec_module(module)
            except BaseException:
                sys.stderr = saved_stream
                os.dup2(saved_fd, 2)
                sink.seek(0)
                os.write(2, sink.read())
                saved_stream.write(text.getvalue())
                raise
            finally:
                sys.stderr = saved_stream
                os.dup2(saved_fd, 2)
                os.close(saved_fd)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds the noisy top-level packages with the other finders and wraps their loaders (once)."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        self.names.discard(fullname)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


@contextlib.contextmanager
def quiet_tensorflow(enabled: bool = True, *, modules: tuple[str, ...] = _NOISY) -> Iterator[None]:
    """Hide TensorFlow's start-up messages inside the ``with`` block (no-op when ``enabled`` is False).

    Parameters
    ----------
    enabled : bool, default=True
    modules : tuple of str
        Top-level packages whose import is silenced (the first time they are imported).

    Examples
    --------
    >>> import os
    >>> before = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    >>> with quiet_tensorflow():
    ...     os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1", "2", "3")
    True
    >>> os.environ.get("TF_CPP_MIN_LOG_LEVEL") == before
    True
    """
    if not enabled:
        yield
        return
    old_env = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if old_env is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    finder = _QuietFinder(m for m in modules if m not in sys.modules)
    sys.meta_path.insert(0, finder)
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if old_env is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
