"""Bounding boxes drawn by radiologists: read them, scale them to the stored images, rasterise them.

Three layouts are read (``format="auto"`` recognises them by their header):

* ``"nih"``: NIH ChestX-ray14's ``BBox_List_2017.csv`` (``Image Index``, ``Finding Label``,
  ``Bbox [x``, ``y``, ``w``, ``h]`` -- the published header is ``Bbox [x,y,w,h]`` split by its
  commas), in the coordinates of NIH's 1024 x 1024 PNGs;
* ``"cxr_embed"``: ``image_id``, ``finding``, ``x``, ``y``, ``w``, ``h`` in the stored images'
  pixels, optionally with the boxes in another frame as ``x_<N>``, ``y_<N>``, ``w_<N>``, ``h_<N>``
  (the layout of ``nih_cxr14_pneumonia/bboxes.csv``: ``x_1024`` ...);
* ``"csv"``: any table with an id column (``image_id``, ``id``, ``image``, ``filename``, ``path``)
  and either ``x``/``y``/``w``/``h`` (also ``width``/``height``) or corners
  ``x_min``/``y_min``/``x_max``/``y_max`` (also ``xmin`` ..., ``x1``/``y1``/``x2``/``y2``).

Coordinates are pixels with the origin at the top-left corner of the image; ``x`` runs along
columns, ``y`` along rows. The returned table always has ``image_id``, ``finding``, ``x``, ``y``,
``w``, ``h`` in the coordinates of the images the boxes are used with.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import BoxFormatError

__all__ = ["load_boxes", "boxes_to_mask"]

BOX_FORMATS = ("auto", "nih", "cxr_embed", "csv")
_NIH_SIZE = 1024  # NIH ChestX-ray14's PNGs (and so its BBox_List_2017.csv) are 1024 x 1024
_ID_COLUMNS = ("image_id", "id", "image", "image_index", "filename", "file", "path")
_FINDING_COLUMNS = ("finding", "finding_label", "label", "class", "class_name")
_CORNERS = (("x_min", "y_min", "x_max", "y_max"), ("xmin", "ymin", "xmax", "ymax"), ("x1", "y1", "x2", "y2"))
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom",
                   ".jp2", ".j2k", ".j2c", ".jpc", ".jpx", ".jpf")
_MAX_BYTES = 256 * 2**20  # a box table larger than this is not a box table


def _norm(col: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(col).strip().lower()).strip("_")


def _image_id(value: Any) -> str:
    """Image id as load_manifest makes it: the file name without folder and image suffix."""
    name = os.path.basename(str(value).strip().replace("\\", "/"))
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in _IMAGE_SUFFIXES else name


def _detect(cols: list[str], path) -> str:
    if "Image Index" in cols and "Finding Label" in cols and any(c.startswith("Bbox") for c in cols):
        return "nih"
    norm = {_norm(c) for c in cols}
    if {"image_id", "x", "y", "w", "h"} <= norm:
        return "cxr_embed"
    if any(c in norm for c in _ID_COLUMNS):
        return "csv"
    raise BoxFormatError(
        f"{path}: unknown box table layout; header columns {cols[:12]}; supported: 'nih' (BBox_List_2017.csv: "
        "Image Index, Finding Label, Bbox [x,y,w,h]), 'cxr_embed' (image_id, finding, x, y, w, h) and 'csv' (an "
        "id column such as image_id plus x, y, w, h or x_min, y_min, x_max, y_max); rename the columns or pass format=")


def _size(value, what: str) -> tuple[float, float] | None:
    """(height, width) from an int or a pair; None stays None."""
    if value is None:
        return None
    if np.isscalar(value):
        h = w = float(value)
    else:
        pair = tuple(value)
        if len(pair) != 2:
            raise BoxFormatError(f"{what} must be an int or (height, width), got {value!r}")
        h, w = (float(v) for v in pair)
    if not (np.isfinite(h) and np.isfinite(w) and h > 0 and w > 0):
        raise BoxFormatError(f"{what} must be positive, got {value!r}")
    return h, w


def load_boxes(path, format: str = "auto", *, image_size=None, source_size=None, finding: str | None = None):
    """Read a table of bounding boxes, one row per box, in the stored images' pixel coordinates.

    Parameters
    ----------
    path : str or Path
        A CSV file in one of the layouts of this module (NIH ``BBox_List_2017.csv``, the
        ``image_id, finding, x, y, w, h`` layout, or a generic CSV).
    format : {"auto", "nih", "cxr_embed", "csv"}, default "auto"
        ``"auto"`` recognises the layout by its header.
    image_size : int or (height, width) or DataFrame or mapping, optional
        The size of the images the boxes will be used with: one size for all, a manifest
        (``image_id`` plus ``height`` and ``width`` columns, or ``path`` to read each image), or
        ``{image_id: (height, width)}``. When given together with a source frame the boxes are
        scaled into it; boxes are then also checked to lie on the image.
    source_size : int or (height, width), optional
        The frame the boxes were drawn on. Default: 1024 for ``"nih"``; for ``"cxr_embed"`` the
        ``x, y, w, h`` columns are already in the stored images' coordinates unless
        ``image_size`` is given and ``x_<N>`` columns exist (then those, with ``source_size=N``);
        for ``"csv"`` the boxes are taken as drawn on the stored images.
    finding : str, optional
        Keep only boxes of this finding (case-insensitive; NIH's ``Pneumonia`` matches ``pneumonia``).

    Returns
    -------
    DataFrame
        Columns ``image_id`` (str), ``finding`` (str, lower case), ``x``, ``y``, ``w``, ``h``
        (float, pixels; ``x`` along columns from the left, ``y`` along rows from the top) and any
        other columns of the file; ``attrs["format"]``, ``attrs["scale"]`` (``{image_id: (sy, sx)}``
        when scaled, else ``{}``).

    Raises
    ------
    BoxFormatError
        Unknown layout, missing columns, non-finite or non-positive sizes, a box outside its image,
        a scaling that needs an image size that was not given, or no box of ``finding``.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "BBox_List_2017.csv")
    >>> _ = open(p, "w").write("Image Index,Finding Label,Bbox [x,y,w,h],,,\\n"
    ...                        "00000001_000.png,Pneumonia,100,200,300,400,,,\\n")
    >>> b = load_boxes(p, image_size=512)            # NIH boxes are in 1024 px coordinates
    >>> b[["image_id", "finding", "x", "y", "w", "h"]].values.tolist()
    [['00000001_000', 'pneumonia', 50.0, 100.0, 150.0, 200.0]]
    """
    import pandas as pd

    path = Path(path)
    if format not in BOX_FORMATS:
        raise BoxFormatError(f"unknown box format {format!r}; choose one of {BOX_FORMATS}")
    if not path.is_file():
        raise BoxFormatError(f"{path}: no such file (or not a regular file); fix: pass the box table's CSV path")
    if path.stat().st_size > _MAX_BYTES:
        raise BoxFormatError(f"{path}: {path.stat().st_size} bytes is too large for a box table")
    try:
        raw = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BoxFormatError(f"{path}: not a readable CSV ({e})") from e
    cols = [str(c) for c in raw.columns]
    fmt = _detect(cols, path) if format == "auto" else format
    src = _size(source_size, "source_size")
    if fmt == "nih":
        out, src = _from_nih(raw, path), src or (float(_NIH_SIZE), float(_NIH_SIZE))
    elif fmt == "cxr_embed":
        out, src = _from_cxr_embed(raw, path, src, image_size is not None)
    else:
        out = _from_generic(raw, path)
    if len(out) == 0:
        raise BoxFormatError(f"{path}: the table has a header but no boxes")
    _check_finite(out, path)
    if finding is not None:
        kept = out[out["finding"] == str(finding).strip().lower()].reset_index(drop=True)
        if kept.empty:
            raise BoxFormatError(f"{path}: no box has the finding {finding!r}; its findings are "
                                 f"{sorted(out['finding'].unique())[:20]}; fix: pass one of them (or finding=None)")
        out = kept
    scale: dict = {}
    if image_size is not None:
        out, scale = _scale(out, path, src, image_size)
    out.attrs.update({"format": fmt, "scale": scale, "source": str(path)})
    return out


def _num(raw, col, path):
    import pandas as pd

    values = pd.to_numeric(raw[col].astype(str).str.strip(), errors="coerce")
    bad = values.isna()
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy()) + 2).tolist()[:10]
        raise BoxFormatError(f"{path}: column {col!r} has non-numeric or empty values on CSV lines {rows}; "
                             "fix: every box needs four numbers")
    return values.astype(float).to_numpy()


def _from_nih(raw, path):
    import pandas as pd

    cols = list(raw.columns)
    try:
        k = next(i for i, c in enumerate(cols) if str(c).startswith("Bbox"))
    except StopIteration:
        raise BoxFormatError(f"{path}: NIH layout needs the 'Bbox [x,y,w,h]' columns; found {cols[:10]}") from None
    for need in ("Image Index", "Finding Label"):
        if need not in cols:
            raise BoxFormatError(f"{path}: NIH layout needs column {need!r}; found {cols[:10]}")
    if len(cols) < k + 4:
        raise BoxFormatError(f"{path}: NIH layout needs four box columns from {cols[k]!r} on (x, y, w, h); "
                             f"found {cols[k:]}")
    xs = [_num(raw, cols[k + j], path) for j in range(4)]
    return pd.DataFrame({"image_id": [_image_id(v) for v in raw["Image Index"]],
                         "finding": raw["Finding Label"].astype(str).str.strip().str.lower(),
                         "x": xs[0], "y": xs[1], "w": xs[2], "h": xs[3]})


def _from_cxr_embed(raw, path, src, scaling: bool):
    import pandas as pd

    by = {_norm(c): c for c in raw.columns}
    for need in ("image_id", "x", "y", "w", "h"):
        if need not in by:
            raise BoxFormatError(f"{path}: layout 'cxr_embed' needs columns image_id, x, y, w, h; found "
                                 f"{list(raw.columns)[:12]}")
    suffix = ""
    if scaling and src is None:  # boxes in another frame, e.g. x_1024: scale from that one, it is exact
        frames = sorted({int(m.group(1)) for c in by if (m := re.fullmatch(r"x_(\d+)", c))})
        frames = [n for n in frames if all(f"{k}_{n}" in by for k in "xywh")]
        if frames:
            suffix, src = f"_{frames[-1]}", (float(frames[-1]), float(frames[-1]))
    key = {k: by[k + suffix] for k in "xywh"}
    out = pd.DataFrame({"image_id": [_image_id(v) for v in raw[by["image_id"]]],
                        "finding": (raw[by["finding"]].astype(str).str.strip().str.lower() if "finding" in by
                                    else "finding"),
                        **{k: _num(raw, key[k], path) for k in "xywh"}})
    extra = [c for c in raw.columns if _norm(c) not in {"image_id", "finding", "x", "y", "w", "h"}]
    for c in extra:
        try:
            out[c] = pd.to_numeric(raw[c])
        except (ValueError, TypeError):
            out[c] = raw[c]
    return out, src


def _from_generic(raw, path):
    import pandas as pd

    by = {_norm(c): c for c in raw.columns}
    id_col = next((by[c] for c in _ID_COLUMNS if c in by), None)
    if id_col is None:
        raise BoxFormatError(f"{path}: no image id column; expected one of {list(_ID_COLUMNS)}; found "
                             f"{list(raw.columns)[:12]}")
    fcol = next((by[c] for c in _FINDING_COLUMNS if c in by), None)
    finding = raw[fcol].astype(str).str.strip().str.lower() if fcol is not None else "finding"
    wcol, hcol = by.get("w", by.get("width")), by.get("h", by.get("height"))
    if "x" in by and "y" in by and wcol is not None and hcol is not None:
        x, y, w, h = (_num(raw, c, path) for c in (by["x"], by["y"], wcol, hcol))
    else:
        corners = next((c for c in _CORNERS if all(k in by for k in c)), None)
        if corners is None:
            raise BoxFormatError(
                f"{path}: no box columns; expected x, y, w, h (or width, height) or corners x_min, y_min, x_max, "
                f"y_max (or xmin..., x1, y1, x2, y2); found {list(raw.columns)[:12]}")
        x0, y0, x1, y1 = (_num(raw, by[c], path) for c in corners)
        x, y, w, h = x0, y0, x1 - x0, y1 - y0
    return pd.DataFrame({"image_id": [_image_id(v) for v in raw[id_col]], "finding": finding,
                         "x": x, "y": y, "w": w, "h": h})


def _check_finite(out, path) -> None:
    vals = out[["x", "y", "w", "h"]].to_numpy(float)
    bad = ~np.isfinite(vals).all(axis=1) | (vals[:, 2] <= 0) | (vals[:, 3] <= 0)
    if bad.any():
        rows = (np.flatnonzero(bad) + 2).tolist()[:10]
        raise BoxFormatError(f"{path}: {int(bad.sum())} box(es) with non-finite values or a width/height <= 0 "
                             f"(CSV lines {rows}); fix: w and h are sizes, not corners (or use x_max/y_max columns)")


def _image_sizes(out, image_size) -> dict:
    """{image_id: (height, width)} for the ids in ``out``."""
    ids = out["image_id"].unique().tolist()
    if np.isscalar(image_size) or (isinstance(image_size, (tuple, list)) and len(image_size) == 2
                                   and all(np.isscalar(v) for v in image_size)):
        one = _size(image_size, "image_size")
        return dict.fromkeys(ids, one)
    if isinstance(image_size, Mapping):
        return {i: _size(image_size[i], f"image_size[{i!r}]") for i in ids if i in image_size}
    table = image_size  # a manifest
    if not hasattr(table, "columns") or "image_id" not in table.columns:
        raise BoxFormatError("image_size must be an int, (height, width), {image_id: (height, width)} or a manifest "
                             f"with image_id and height/width or path columns; got {type(image_size).__name__}")
    rows = table[table["image_id"].astype(str).isin(ids)]
    if {"height", "width"} <= set(rows.columns) and rows[["height", "width"]].notna().all().all():
        return {str(i): (float(h), float(w)) for i, h, w in zip(rows["image_id"], rows["height"], rows["width"])}
    if "path" not in rows.columns:
        raise BoxFormatError("the manifest given as image_size has neither height/width nor path columns")
    from .images import read_image

    return {str(i): tuple(float(s) for s in read_image(p)[0].shape) for i, p in zip(rows["image_id"], rows["path"])}


def _scale(out, path, src, image_size):
    sizes = _image_sizes(out, image_size)
    missing = sorted(set(out["image_id"]) - set(sizes))
    if missing and hasattr(image_size, "columns"):  # a manifest: boxes of other images are not ours to use
        if len(missing) == out["image_id"].nunique():
            raise BoxFormatError(
                f"{path}: no manifest image has a box: box ids look like {missing[:3]}, manifest ids like "
                f"{image_size['image_id'].astype(str).head(3).tolist()}; fix: the ids must match (file names "
                "without suffix)")
        warnings.warn(f"{path}: {len(missing)} boxed image(s) are not in the manifest and were dropped "
                      f"(e.g. {missing[:3]})", stacklevel=3)
        out = out[out["image_id"].isin(sizes)].reset_index(drop=True)
        missing = []
    if missing:
        raise BoxFormatError(f"{path}: no image size for {len(missing)} boxed image(s) {missing[:5]}; fix: pass "
                             "image_size= covering every image (or drop those boxes)")
    out = out.copy()
    scale = {}
    for i, (h, w) in sizes.items():
        sy, sx = (h / src[0], w / src[1]) if src is not None else (1.0, 1.0)
        rows = out["image_id"] == i
        out.loc[rows, ["x", "w"]] *= sx
        out.loc[rows, ["y", "h"]] *= sy
        scale[i] = (sy, sx)
        b = out.loc[rows]
        slack = 1.0  # one pixel of rounding in the published coordinates
        outside = (b["x"] < -slack) | (b["y"] < -slack) | (b["x"] + b["w"] > w + slack) | (b["y"] + b["h"] > h + slack)
        if outside.any():
            frame = f"{src[0]:g} x {src[1]:g}" if src is not None else "the image's own"
            raise BoxFormatError(
                f"{path}: box(es) of {i!r} reach outside its {h:g} x {w:g} image (boxes read in {frame} coordinates); "
                "fix: pass source_size= (the frame the boxes were drawn on) or the right image_size=")
    return out, (scale if src is not None else {})


def boxes_to_mask(boxes, shape, image_id: str | None = None) -> np.ndarray:
    """Rasterise boxes into a boolean mask: a pixel is inside when its centre is.

    Parameters
    ----------
    boxes : DataFrame or ndarray of shape (n_boxes, 4)
        ``x, y, w, h`` in pixels (a table from :func:`load_boxes`, or an array).
    shape : tuple of int (H, W)
        The image's shape.
    image_id : str, optional
        Keep only the table's rows of this image.

    Returns
    -------
    ndarray of shape (H, W), bool
        The union of the boxes; a box smaller than a pixel marks the pixel holding its centre.

    Examples
    --------
    >>> boxes_to_mask(np.array([[1, 0, 2, 2]]), (3, 4)).astype(int)
    array([[0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    if hasattr(boxes, "columns"):
        table = boxes if image_id is None else boxes[boxes["image_id"].astype(str) == str(image_id)]
        arr = table[["x", "y", "w", "h"]].to_numpy(float)
    else:
        arr = np.asarray(boxes, float).reshape(-1, 4)
    H, W = (int(s) for s in shape)
    mask = np.zeros((H, W), bool)
    for x, y, w, h in arr:
        c0, c1 = int(np.ceil(x - 0.5)), int(np.floor(x + w - 0.5))  # pixel centres c + 0.5 in [x, x + w]
        r0, r1 = int(np.ceil(y - 0.5)), int(np.floor(y + h - 0.5))
        if c1 < c0:
            c0 = c1 = int(np.floor(x + w / 2))
        if r1 < r0:
            r0 = r1 = int(np.floor(y + h / 2))
        c0, r0 = max(c0, 0), max(r0, 0)
        c1, r1 = min(c1, W - 1), min(r1, H - 1)
        if c1 >= c0 and r1 >= r0:
            mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask
