"""The import rules of docs/architecture.md, read from the source (no module is imported).

Each folder of ``cxr_embed`` is one part of the data flow; a part may import only the parts
listed for it below, which is the table "Which folder may import which" of the architecture page.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "cxr_embed"
SHARED = {"exceptions", "_utils", "_version", "_ray"}
# part -> parts it may import (besides itself); "" is the package root (`import cxr_embed`)
ALLOWED = {
    "": {"exceptions", "_version"},
    "exceptions": set(),
    "_version": set(),
    "_utils": {"exceptions"},
    "_ray": {"_utils", "exceptions"},
    "io": SHARED,
    "embed": SHARED | {"io"},
    "evaluate": SHARED,
    "learn": SHARED | {"evaluate"},
    "saliency": SHARED | {"io", "learn"},
    "transfer": SHARED | {"io", "embed", "learn", "evaluate"},
    "datasets": SHARED,
    "cli": SHARED | {"", "io", "embed", "learn", "evaluate", "saliency", "transfer", "datasets"},
}
HEAVY = {"tensorflow", "keras", "xgboost", "tf_keras_vis", "matplotlib", "ray"}
# modules that cannot work without Keras may import it at the top; everyone else inside functions
HEAVY_AT_TOP = {"cxr_embed.embed.backbones", "cxr_embed.embed.compute", "cxr_embed.embed.graph",
                "cxr_embed.transfer.finetuning"}
NETWORK = {"urllib", "http", "socket", "requests", "ftplib", "smtplib", "urllib3", "httpx"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield ".".join(parts), is_pkg, path


def _imports(name: str, is_pkg: bool, path: Path):
    """(imported module, at module top?) for every import statement of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` names modules: resolve them
                targets = [f"{target}.{a.name}" if not node.module else target for a in node.names]
            else:
                targets = [node.module or ""]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            yield target, id(node) in top_level


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = list(_modules())
GRAPH = {name: list(_imports(name, is_pkg, path)) for name, is_pkg, path in MODULES}


def test_every_module_belongs_to_a_known_part():
    unknown = {name for name in GRAPH if _part(name) not in ALLOWED}
    assert not unknown, f"modules outside the parts of docs/architecture.md: {sorted(unknown)}; add the part to ALLOWED and the page"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_follow_the_part_rules(module):
    part = _part(module)
    bad = sorted({t for t, _ in GRAPH[module]
                  if t.startswith("cxr_embed") and _part(t) != part and _part(t) not in ALLOWED[part]})
    assert not bad, f"{module} ({part or 'package root'}) imports {bad}; allowed: {sorted(ALLOWED[part])}"


def test_nothing_imports_the_cli_and_only_the_cli_imports_compare():
    for module, imports in GRAPH.items():
        targets = {t for t, _ in imports}
        if _part(module) != "cli":
            assert not any(t.startswith("cxr_embed.cli") for t in targets), module
        if _part(module) not in ("cli", "transfer"):
            assert "cxr_embed.transfer.compare" not in targets, module


def test_learn_never_imports_embed_and_the_store_knows_no_model():
    for module, imports in GRAPH.items():
        if _part(module) == "learn":
            assert not any(_part(t) == "embed" for t, _ in imports if t.startswith("cxr_embed")), module
    # the store and its private helpers (embed/_store_*.py) import no model code and no Keras
    store_modules = ["cxr_embed.embed.store"] + [m for m in GRAPH if m.startswith("cxr_embed.embed._store_")]
    for module in store_modules:
        imports = {t for t, _ in GRAPH[module]}
        assert not {t.split(".")[0] for t in imports} & HEAVY, (module, imports)
        assert not {t for t in imports if t.startswith("cxr_embed.embed") and t not in store_modules}, (module, imports)


def test_io_knows_no_network():
    for module, imports in GRAPH.items():
        if _part(module) == "io":
            assert not {t.split(".")[0] for t, _ in imports} & NETWORK, module


def test_heavy_libraries_load_late():
    for module, imports in GRAPH.items():
        at_top = {t.split(".")[0] for t, top in imports if top} & HEAVY
        if module not in HEAVY_AT_TOP:
            assert not at_top, f"{module} imports {at_top} at the top; import inside the functions that need it"


def test_no_import_cycles_between_parts():
    edges = {(_part(m), _part(t)) for m, imps in GRAPH.items() for t, _ in imps
             if t.startswith("cxr_embed") and _part(t) != _part(m) and _part(m) != "cli"}
    for a, b in edges:
        assert (b, a) not in edges, f"parts {a!r} and {b!r} import each other"


def test_long_modules_are_explained_in_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for module, _, path in MODULES:
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > 900:
            rel = str(path.relative_to(PACKAGE))
            assert re.search(rf"`{re.escape(rel)}`[^\n]*stays whole", page), \
                f"{rel} has {n} lines: split it, or say in docs/architecture.md why it `stays whole`"


def test_architecture_page_lists_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(PACKAGE)) for _, _, p in MODULES
               if p.name != "__init__.py" and str(p.relative_to(PACKAGE)) not in page
               and str(p.relative_to(PACKAGE).parent) + "/" not in page]
    assert not missing, f"docs/architecture.md does not mention {missing}"
