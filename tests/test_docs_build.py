"""The documentation site builds strictly, and the strict build fails on what it promises to catch.

Slow (minutes: the gallery runs every example): ``make test-slow``. Each build works on a copy of
``mkdocs.yml``, ``docs/``, ``examples/`` and the package in a temporary folder, so the checkout's
``docs/generated/`` cache is neither used nor touched. Skipped when the ``docs`` extra is not installed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cxr_embed
from conftest import ROOT

pytestmark = pytest.mark.slow

for _module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_gallery", "griffe"):
    pytest.importorskip(_module, reason="the docs extra is not installed (pip install -e '.[docs]')")


def _copy_project(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "generated", "*.pyc")
    shutil.copy2(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    for folder in ("docs", "examples", "cxr_embed"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


def _build(project: Path, *, examples: bool = True, timeout: int = 1800) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1",
           "NO_MKDOCS_2_WARNING": "1", "CXR_EMBED_DOCS_EXAMPLES": "true" if examples else "false",
           "PYTHONPATH": str(project)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(project / "site")],
                          cwd=project, capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - t


def test_site_builds_strictly_with_reference_and_gallery(tmp_path):
    project = _copy_project(tmp_path)
    proc, seconds = _build(project)
    log = proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, f"strict build failed ({proc.returncode}):\n{log}"
    print(f"strict build with the gallery: {seconds:.0f} s")
    site = project / "site"

    # every public name has an entry in the rendered reference (an anchor with its full name)
    html = "\n".join(p.read_text(encoding="utf-8") for p in (site / "api").rglob("index.html"))
    anchors = set(re.findall(r'id="(cxr_embed\.[\w.]+)"', html))
    missing = [n for n in cxr_embed.__all__ if f"cxr_embed.{n}" not in anchors]
    assert not missing, f"no reference entry rendered for {missing}"
    extract = (site / "api" / "embed" / "index.html").read_text(encoding="utf-8")
    assert 'id="cxr_embed.extract"' in extract and "manifest_or_paths" in extract
    assert ":func:" not in html and ":class:" not in html, "a Sphinx role reached the page"
    cli = (site / "api" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "usage: cxr-embed store verify" in cli and "--key-file" in cli

    # the gallery: one page per example; the run ones show their output, the figures are embedded
    gallery = site / "generated" / "gallery"
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert (gallery / script.stem / "index.html").is_file(), f"no gallery page for {script.name}"
    quick = (gallery / "quickstart" / "index.html").read_text(encoding="utf-8")
    assert "macro AUC" in quick and re.search(r'<img[^>]+mkd_glr_quickstart_001\.png', quick)
    demo = (gallery / "demo" / "index.html").read_text(encoding="utf-8")
    assert "8. report" in demo and len(re.findall(r"<img[^>]+mkd_glr_demo_\d+\.png", demo)) >= 5
    for png in (gallery / "images").glob("mkd_glr_*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # architecture.md is the first page, and the site root opens it
    assert "architecture/" in (site / "index.html").read_text(encoding="utf-8")
    assert (site / "search" / "search_index.json").is_file()


def test_strict_build_fails_on_a_missing_docstring_a_broken_link_or_reference(tmp_path):
    project = _copy_project(tmp_path)
    # a public name without a docstring
    boxes = project / "cxr_embed" / "io" / "boxes.py"
    source = boxes.read_text(encoding="utf-8")
    doc = re.search(r'(def load_boxes\([^)]*\)[^:]*:\n)(\s+"""(?:.|\n)*?"""\n)', source)
    boxes.write_text(source.replace(doc.group(0), doc.group(1)), encoding="utf-8")
    # a public name without a reference entry
    embed = project / "docs" / "api" / "embed.md"
    embed.write_text(embed.read_text(encoding="utf-8").replace("::: cxr_embed.merge\n", ""), encoding="utf-8")
    # a broken link, a broken anchor and a broken cross-reference in a narrative page
    page = project / "docs" / "reading.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](no_such_page.md), [here](errors.md#no-such-anchor), "
                    "[nothing][cxr_embed.no_such_function]\n", encoding="utf-8")
    # a Sphinx role naming nothing inside cxr_embed
    store = project / "cxr_embed" / "embed" / "store.py"
    store.write_text(store.read_text(encoding="utf-8").replace('"""', '""":func:`no_such_helper` ', 1), encoding="utf-8")

    proc, _ = _build(project, examples=False, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "cxr_embed.load_boxes has no docstring" in out
    assert "cxr_embed.merge" in out and "no '::: cxr_embed.<name>' entry" in out
    assert "no_such_page.md" in out and "no-such-anchor" in out and "cxr_embed.no_such_function" in out
    assert "broken cross-reference :func:`no_such_helper`" in out
    assert "Aborted with" in out and "in strict mode" in out


@pytest.mark.parametrize("body, message", [
    ('raise ValueError("boom")\n', "boom"),
    ("import sys\nsys.exit(3)\n", "exited with status 3"),
])
def test_strict_build_fails_on_an_example_that_fails(tmp_path, body, message):
    project = _copy_project(tmp_path)
    for script in (project / "examples").glob("*.py"):
        script.unlink()
    (project / "examples" / "quickstart.py").write_text(f'"""Broken\n\nAn example that fails."""\n{body}',
                                                        encoding="utf-8")
    proc, _ = _build(project, timeout=900)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
