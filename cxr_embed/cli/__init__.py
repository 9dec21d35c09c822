"""The ``cxr-embed`` command line, a thin layer over the public API.

Subcommands live in private modules of this package, listed in
``_COMMAND_MODULES``; each module defines ``register(subparsers)``, which adds its
subcommands with ``parser.set_defaults(func=handler)``. A handler receives the
parsed :class:`argparse.Namespace` and returns an exit status (``int``).

Errors raised on purpose by cxr_embed (:class:`cxr_embed.CxrEmbedError`) print one
``error: ...`` line to stderr and exit with status 2; ``--debug`` shows the traceback.
TensorFlow's start-up messages are hidden during a command (``_quiet``); ``--debug`` shows them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

#: Modules of cxr_embed.cli that register subcommands, in help order.
_COMMAND_MODULES = ["_io", "_extract", "_store", "_models", "_compare", "_search", "_explain", "_localize", "_audit"]

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """Return the ``cxr-embed`` argument parser with every registered subcommand.

    Returns
    -------
    argparse.ArgumentParser
        Parser whose subcommands set ``func`` (the handler) in the namespace.

    Examples
    --------
    >>> from cxr_embed.cli import build_parser
    >>> args = build_parser().parse_args(["manifest", "labels.csv", "--json"])
    >>> args.command, args.json
    ('manifest', True)
    """
    import cxr_embed

    parser = argparse.ArgumentParser(
        prog="cxr-embed",
        description="Chest-radiograph embeddings from pretrained Keras CNNs: read, extract, "
                    "classify, compare and explain.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-embed {cxr_embed.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors, debug logging and TensorFlow's start-up messages")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cxr-embed`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 on a usage error or a :class:`cxr_embed.CxrEmbedError`.

    Examples
    --------
    >>> from cxr_embed.cli import main
    >>> main(["--version"])  # doctest: +SKIP
    cxr-embed 0.1.0
    0
    """
    import cxr_embed

    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version, usage errors: return, do not exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    from ._quiet import quiet_tensorflow

    restore = _configure_logging(args.debug, args.verbose)
    try:
        with quiet_tensorflow(not args.debug):
            return int(args.func(args) or 0)
    except cxr_embed.CxrEmbedError as e:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(e).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        restore()


def _configure_logging(debug: bool, verbose: bool):
    """Send cxr_embed's log records (not other libraries') to stderr for this command.

    Returns a function that removes the handler and restores the level, so that ``main``
    leaves the logging configuration as it found it (it may run inside a test or a notebook).
    """
    if not (debug or verbose):
        return lambda: None
    log = logging.getLogger("cxr_embed")
    old_level = log.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)

    def restore() -> None:
        log.removeHandler(handler)
        log.setLevel(old_level)

    return restore
