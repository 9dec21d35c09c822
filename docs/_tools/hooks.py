"""MkDocs hooks of the cxr_embed site (``hooks:`` in ``mkdocs.yml``).

* The checkout being documented comes first on ``sys.path``, so the reference, the CLI help and
  the gallery all use the code next to ``mkdocs.yml`` (not another installed copy).
* Completeness of the API reference: every name in ``cxr_embed.__all__`` has a
  ``::: cxr_embed.<name>`` entry in ``docs/api/``.
* The site root opens the first page (`architecture.md`), which is not `index.md`.
* The command-line reference (``docs/api/cli.md``): each ``<!-- cli-help: store verify -->``
  marker is replaced by the help of that subcommand, generated from
  ``cxr_embed.cli.build_parser()``; every subcommand of the parser must have a marker.

Problems are logged as warnings: ``mkdocs build --strict`` (``make docs``) fails on them.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.cxr_embed")

ENTRY = re.compile(r"^:::\s+cxr_embed\.([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
MARKER = re.compile(r"^<!--\s*cli-help:\s*([a-z][a-z\- ]*?|)\s*-->\s*$", re.MULTILINE)
HELP_WIDTH = 88  # characters: fits the content column on a 1366 px screen


def on_config(config, **kwargs):
    root = str(Path(config.config_file_path).resolve().parent)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    _check_reference(Path(config.docs_dir) / "api")
    return config


def _check_reference(api: Path) -> None:
    import cxr_embed

    documented = set()
    for page in sorted(api.glob("*.md")):
        documented.update(ENTRY.findall(page.read_text(encoding="utf-8")))
    missing = [n for n in cxr_embed.__all__ if n not in documented]
    if missing:
        log.warning("API reference: no '::: cxr_embed.<name>' entry in docs/api/ for %s", ", ".join(missing))


def cli_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command of ``cxr-embed`` -> its parser; ``""`` is the top-level parser."""
    from cxr_embed.cli import build_parser

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}".strip())

    walk(build_parser(), "")
    return found


def _help(parser: argparse.ArgumentParser) -> str:
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH + 2)  # argparse wraps at COLUMNS - 2
    try:
        return parser.format_help().rstrip()
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def on_page_markdown(markdown, page, config, files, **kwargs):
    if MARKER.search(markdown) is None:
        return markdown
    parsers = cli_parsers()
    used = set()

    def fill(match: re.Match) -> str:
        name = " ".join(match.group(1).split())
        if name not in parsers:
            log.warning("%s: no subcommand 'cxr-embed %s' (known: %s)", page.file.src_path, name,
                        ", ".join(sorted(n for n in parsers if n)))
            return ""
        used.add(name)
        return f"```text\n{_help(parsers[name])}\n```"

    markdown = MARKER.sub(fill, markdown)
    missing = [n for n in parsers if n not in used]
    if missing:
        log.warning("%s: no '<!-- cli-help: NAME -->' section for the subcommand(s) %s", page.file.src_path,
                    ", ".join(repr(n) for n in missing))
    return markdown


def on_post_build(config, **kwargs):
    """The site's root opens the first page of the nav (``architecture.md``), which is not ``index.md``."""
    index = Path(config.site_dir) / "index.html"
    if not index.exists():
        index.write_text('<!doctype html>\n<meta charset="utf-8">\n<title>cxr_embed</title>\n'
                         '<meta http-equiv="refresh" content="0; url=architecture/">\n'
                         '<link rel="canonical" href="architecture/">\n'
                         '<a href="architecture/">cxr_embed: architecture</a>\n', encoding="utf-8")
