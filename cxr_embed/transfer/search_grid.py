"""The grid of embedding configurations a pipeline search compares (:func:`cxr_embed.search_pipeline`).

Every backbone x input size x layer x TTA option, the per-backbone multi-resolution means
(``multiscale``), then the fusions (``fuse``). The configurations themselves live in
:mod:`cxr_embed.embed.composite`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations, product

from ..embed.composite import AnyConfig, EmbeddingConfig, FusedConfig, parse_embedding

__all__ = ["parse_fuse"]


def _sizes_of(name: str, input_sizes) -> list[int]:
    """Sorted distinct input sizes of one backbone (None: its native size)."""
    from ..embed.registry import _get_spec

    if isinstance(input_sizes, Mapping):
        sizes = list(input_sizes.get(name, [None]))
    else:
        sizes = [None] if input_sizes is None else list(input_sizes)
    if not sizes:
        raise ValueError(f"input_sizes is empty{f' for {name}' if isinstance(input_sizes, Mapping) else ''}: "
                         "give at least one size, or None for the backbone's native size")
    native = int(_get_spec(name).input_size[0])
    return sorted({native if s is None else int(s) for s in sizes})


def _configs(backbones, input_sizes, layers, tta, multiscale, fuse=None) -> list[AnyConfig]:
    """Every embedding configuration of the grid, then the fusions asked for."""
    _require_options(backbones=backbones, layers=layers, tta=tta)
    if isinstance(input_sizes, Mapping):
        unknown = set(input_sizes) - set(backbones)
        if unknown:
            raise ValueError(f"input_sizes names backbones that are not searched: {sorted(unknown)}")
    out: list[AnyConfig] = []
    widest: dict = {}  # (backbone, layer, tta) -> the configuration that stands for it in fuse="backbones"
    for name, layer, t in product(backbones, layers, tta):
        if t not in (None, "flip"):
            raise ValueError(f"tta options are None and 'flip', got {t!r}")
        resolved = _sizes_of(name, input_sizes)
        out += [EmbeddingConfig(name, (s,), layer, t) for s in resolved]
        if multiscale and len(resolved) > 1:
            out.append(EmbeddingConfig(name, tuple(resolved), layer, t))
        widest[(name, layer, t)] = out[-1] if multiscale or len(resolved) == 1 else None
    out += _fusions(fuse, out, widest, backbones, layers, tta)
    if len(set(out)) != len(out):
        raise ValueError("the search grid repeats an embedding configuration; list each backbone, size and layer once")
    return out


def _require_options(**dims) -> None:
    """Each grid dimension needs an option: an empty one would leave nothing to search."""
    for name, options in dims.items():
        if options is not None and not isinstance(options, (str, dict)) and len(list(options)) == 0:
            raise ValueError(f"{name} is empty: give at least one option (None is the default one where it applies)")


def _fusions(fuse, grid, widest, backbones, layers, tta) -> list[FusedConfig]:
    if fuse is None or (not isinstance(fuse, str) and len(fuse) == 0):
        return []
    if isinstance(fuse, str):
        if fuse != "backbones":
            raise ValueError(f"fuse is 'backbones' or a list of groups of embedding labels, got {fuse!r}")
        if len(backbones) < 2:
            raise ValueError("fuse='backbones' needs two or more backbones")
        out = []
        for layer, t in product(layers, tta):
            reps = [widest[(b, layer, t)] for b in backbones]
            if any(r is None for r in reps):
                raise ValueError("fuse='backbones' fuses one configuration per backbone: with several input sizes, "
                                 "set multiscale=True (each backbone is then its multi-resolution embedding)")
            out += [FusedConfig(tuple(c)) for k in range(2, len(reps) + 1) for c in combinations(reps, k)]
        return out
    by_label = {c.label: c for c in grid}
    out = []
    for group in fuse:
        if isinstance(group, str):
            raise ValueError(f"each fusion is a list of embedding labels, got the string {group!r}")
        missing = [lab for lab in group if lab not in by_label]
        if missing:
            raise ValueError(f"fuse names embeddings that are not in the search grid: {missing}; "
                             f"the grid has {sorted(by_label)}")
        out.append(FusedConfig(tuple(by_label[lab] for lab in group)))
    return out


def parse_fuse(text: Sequence[str] | str | None):
    """The ``fuse`` argument from command-line text: ``backbones`` or groups ``a + b`` (spaces around ``+``).

    Examples
    --------
    >>> parse_fuse(["efficientnet_lite0@224+flip + efficientnet_lite2@260+flip"])
    [['efficientnet_lite0@224+flip', 'efficientnet_lite2@260+flip']]
    >>> parse_fuse("backbones")
    'backbones'
    """
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    if items == ["backbones"]:
        return "backbones"
    return [[part.label for part in parse_embedding(item).parts] for item in items]
