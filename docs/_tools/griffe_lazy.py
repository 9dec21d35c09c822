"""Griffe extension: cxr_embed's docstrings as the API reference shows them.

1. **Lazy public names.** ``cxr_embed/__init__.py`` binds its public names on first use (PEP 562):
   the table ``_LAZY`` maps each name to the module that defines it, and ``__all__`` is built from
   that table at run time. Griffe reads the source without importing it, so it sees neither the
   names nor a literal ``__all__``. The extension reads ``_LAZY`` from the source
   (``ast.literal_eval``, nothing is imported), adds one alias per name (``cxr_embed.extract`` ->
   ``cxr_embed.embed.extraction.extract``) and sets ``__all__``, so that ``::: cxr_embed.extract``
   and the cross-reference ``[extract][cxr_embed.extract]`` work.
2. **Sphinx roles.** The numpydoc docstrings cross-reference with Sphinx roles
   (``:func:`extract```, ``:class:`~cxr_embed.embed.store.EmbeddingStore```). Each is resolved
   the way Sphinx would (the docstring's scope, then the package's public names) and becomes an
   mkdocstrings cross-reference: a link where the target has a reference entry, code otherwise
   (a private helper, a module). A role naming nothing that exists in cxr_embed is a broken
   cross-reference; names outside cxr_embed (``numpy.ndarray``, ``ValueError``) become code.
3. **reST in the docstrings.** Simple tables (``====  ====`` borders) become Markdown tables, and the
   types of ``name : type`` lines lose their double backquotes (a type is shown as code already).
4. **Checks.** Every public name resolves and has a docstring, and so has every public method and
   property of a public class.

Problems are logged as warnings, which ``mkdocs build --strict`` (``make docs``) turns into errors.
"""
from __future__ import annotations

import ast
import builtins
import logging
import re
from html import escape
from pathlib import Path
from typing import Any

import griffe

PACKAGE = "cxr_embed"
_logger = logging.getLogger("mkdocs.plugins.cxr_embed.griffe_lazy")

#: ``:func:`name```, ``:py:class:`~a.b.C```, ``:meth:`title <target>```
ROLE = re.compile(r":(?:py:)?(?P<role>func|class|meth|attr|mod|exc|data|obj|const):"
                  r"`(?P<text>[^`<]+?)(?:\s*<(?P<target>[^>`]+)>)?`")
_LOOKUP_ERRORS = (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError)


def lazy_table(init: Path) -> dict[str, str]:
    """The ``_LAZY`` dict of ``cxr_embed/__init__.py``, read from the source."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"no _LAZY table in {init}")


class LazyExports(griffe.Extension):
    """Add the lazy public names of cxr_embed, turn Sphinx roles into cross-references, check docstrings."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.path != PACKAGE:
            return
        lazy = lazy_table(Path(pkg.filepath))
        for name, module in lazy.items():
            pkg.set_member(name, griffe.Alias(name, f"{module}.{name}", parent=pkg))
        exc_all = [str(e) for e in pkg["exceptions"].exports or ()]
        pkg.exports = ["__version__", *exc_all, *lazy]

        resolver = _Resolver(pkg, loader.modules_collection)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = rst_tables_to_markdown(plain_types(obj.docstring.value))
                obj.docstring.value = ROLE.sub(lambda m, o=obj: resolver.replace(m, o), text)

        for name in pkg.exports:
            try:
                obj = pkg[name]
                docstring = obj.docstring  # resolves an alias
            except _LOOKUP_ERRORS as e:
                _logger.warning("cxr_embed.%s: cannot be resolved for the API reference (%s)", name, e)
                continue
            if docstring is None or len(docstring.value.strip()) < 10:
                _logger.warning("cxr_embed.%s has no docstring: write one (numpydoc) before documenting it", name)
            if obj.is_class:
                for method in _undocumented_methods(obj):
                    _logger.warning("cxr_embed.%s.%s has no docstring: write one (numpydoc)", name, method)


TABLE_BORDER = re.compile(r"^(?P<indent> *)=+(?: +=+)+ *$")
TYPE_LINE = re.compile(r"^(?P<name>\*{0,2}[A-Za-z_][\w, *]*) : (?P<type>.+)$")


def plain_types(text: str) -> str:
    """``name : array of shape like ``X``  ``-> ``name : array of shape like X``: the type is shown as code already."""
    return "\n".join(f"{m['name']} : {m['type'].replace('``', '')}" if (m := TYPE_LINE.match(line)) else line
                     for line in text.split("\n"))


def rst_tables_to_markdown(text: str) -> str:
    """reST simple tables (``====  ====`` borders) -> Markdown tables; a row whose first cell is
    empty continues the row above."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        top = TABLE_BORDER.match(lines[i])
        if not top:
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
        rows, header, j, borders = [], None, i + 1, 1
        while j < len(lines) and borders < 3:
            if lines[j].strip() and lines[j].strip().replace(" ", "").replace("=", "") == "":
                borders += 1
                if borders == 2:
                    header, rows = rows, []
                j += 1
                continue
            cells = []
            for k, (a, b) in enumerate(spans):
                end = spans[k + 1][0] if k + 1 < len(spans) else None
                cells.append(lines[j][a:end].strip())
            if rows and not cells[0]:
                rows[-1] = [f"{x} {y}".strip() for x, y in zip(rows[-1], cells)]
            elif any(cells):
                rows.append(cells)
            j += 1
        if header is None:  # a table without a header row: leave it alone
            out.append(lines[i])
            i += 1
            continue
        cell = lambda c: c.replace("|", "\\|")  # noqa: E731
        indent = top["indent"]
        out += ["", indent + "| " + " | ".join(cell(c) for c in header[0]) + " |",
                indent + "|" + "---|" * len(spans)]
        out += [indent + "| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        out.append("")
        i = j
    return "\n".join(out)


def _walk(obj: griffe.Object):
    """The object and every object defined inside it (aliases, i.e. imports, left out)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _undocumented_methods(cls: griffe.Object | griffe.Alias) -> list[str]:
    """Public methods and properties defined by ``cls`` itself (not inherited) without a docstring."""
    target = cls.final_target if cls.is_alias else cls
    return [name for name, member in target.members.items()
            if not name.startswith("_") and not member.is_alias and (member.is_function or "property" in member.labels)
            and member.docstring is None]


class _Resolver:
    """Resolve the target of a Sphinx role in the scope of the documented object."""

    def __init__(self, pkg: griffe.Module, collection: griffe.ModulesCollection):
        self.pkg = pkg
        self.collection = collection

    def lookup(self, path: str) -> griffe.Object | griffe.Alias | None:
        """The object at a dotted path inside cxr_embed, members inherited from bases included."""
        head, _, rest = path.partition(".")
        if head != PACKAGE:
            return None
        obj: Any = self.pkg
        for part in rest.split(".") if rest else []:
            try:
                members = obj.all_members if obj.is_class else obj.members
                obj = members[part]
            except _LOOKUP_ERRORS:
                return None
        return obj

    def resolve(self, target: str, scope: griffe.Object) -> str | None:
        """Full path of ``target`` inside cxr_embed, or None."""
        if target.startswith("."):  # relative to the documented object's package (``:mod:`.graph```)
            module = scope.module
            base = module if module.is_init_module else module.parent
            return self._found(f"{base.path}{target}")
        if target.split(".")[0] == PACKAGE:
            return self._found(target)
        head, _, rest = target.partition(".")
        candidates = []
        try:
            candidates.append(scope.resolve(head))
        except (griffe.NameResolutionError, *_LOOKUP_ERRORS):
            pass
        if scope.is_function and scope.parent is not None and scope.parent.is_class:
            candidates.append(f"{scope.parent.path}.{head}")  # a sibling method or attribute
        if scope.is_class:
            candidates.append(f"{scope.path}.{head}")
        candidates.append(f"{PACKAGE}.{head}")  # a public name of the package
        for base in candidates:
            found = self._found(f"{base}.{rest}" if rest else base)
            if found:
                return found
        return None

    def _found(self, path: str) -> str | None:
        obj = self.lookup(path)
        if obj is None:
            return None
        try:
            return obj.final_target.path if obj.is_alias else obj.path
        except _LOOKUP_ERRORS:
            return None

    def replace(self, match: re.Match, scope: griffe.Object) -> str:
        text = match["text"].strip()
        target = (match["target"] or text).lstrip("~!").strip()
        if match["target"]:
            shown = text
        elif text.startswith("~"):
            shown = target.rsplit(".", 1)[-1]
        else:
            shown = target
        path = self.resolve(target, scope)
        if path is None:
            owner = target.rsplit(".", 1)[0] if "." in target else None
            if match["role"] == "attr" and (owner is None or self.resolve(owner, scope)):
                # an instance attribute set outside __init__ (documented in its class's Attributes section)
                return f"`{shown}`"
            if self._is_internal(target, scope):
                _logger.warning("%s: broken cross-reference %s (no such object in cxr_embed)",
                                _where(scope), match.group(0))
            return f"`{shown}`"
        # optional: a link when the target has a reference entry on the site, code otherwise
        return f'<autoref identifier="{escape(path)}" optional><code>{escape(shown)}</code></autoref>'

    def _is_internal(self, target: str, scope: griffe.Object) -> bool:
        """Whether an unresolved role points into cxr_embed (a broken reference) rather than outside it."""
        head = target.split(".")[0]
        if target.startswith(".") or head == PACKAGE:
            return True
        if hasattr(builtins, head):
            return False
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, *_LOOKUP_ERRORS):
            return "." not in target  # an unknown bare name; a dotted one names another library
        return resolved.split(".")[0] == PACKAGE


def _where(obj: griffe.Object) -> str:
    try:
        return f"{obj.relative_filepath}:{obj.docstring.lineno}"
    except (ValueError, AttributeError):
        return obj.path
