"""The DICOM grayscale display steps (PS3.3 C.11) with their validity checks.

Modality LUT (sequence, or RescaleSlope/RescaleIntercept) -> VOI (VOI LUT Sequence, or
WindowCenter/WindowWidth with VOILUTFunction, or min/max, or the stored-bits range) -> [0, 1].
Malformed LUTs and non-finite or zero parameters raise :class:`~cxr_embed.exceptions.InvalidLUTError`,
a result that would be blank :class:`~cxr_embed.exceptions.ConstantImageError`. The VOI functions
are monotone, so the output range follows from the extremes of the input without another pass.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..exceptions import ConstantImageError, ImageReadError, InvalidLUTError
from ._guards import _first, _tag

__all__: list[str] = []  # private module, used by cxr_embed.io.dicom

# luminance weights of ITU-R BT.601 (those of Pillow's "L" conversion)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _ds_float(ds, keyword: str, path: Path, default: float | None) -> float | None:
    """A finite float header value (first of several); ``default`` when absent or empty.

    A value that is present but not a finite number raises :class:`InvalidLUTError`.
    """
    value = ds.get(keyword)
    if value is None or value == "" or (hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0):
        return default
    first = _first(value)
    try:
        number = float(first)
    except (TypeError, ValueError) as e:
        raise InvalidLUTError(path, f"{_tag(keyword)} is {first!r}, not a number; fix: correct the header, or "
                                    "pass voi='minmax' / window=(center, width)") from e
    if not math.isfinite(number):
        raise InvalidLUTError(path, f"{_tag(keyword)} is {first!r}, not a finite number, so every pixel would be "
                                    "NaN or infinite; fix: correct the header, or pass voi='minmax' / "
                                    "window=(center, width)")
    return number


def _lut_table(item, ds, path: Path, sequence: str) -> tuple[np.ndarray, int, int]:
    """Validated (table, first mapped value, bits per entry) of a Modality or VOI LUT Sequence item."""
    fix = f"fix: correct or remove {_tag(sequence)} (re-export the file), or pass voi='minmax'"
    descriptor = item.get("LUTDescriptor")
    if descriptor is None:
        raise InvalidLUTError(path, f"{_tag(sequence)} item has no {_tag('LUTDescriptor')}; {fix}")
    try:
        values = [int(v) for v in descriptor]
    except (TypeError, ValueError) as e:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} {descriptor!r} is not three "
                                    f"integers; {fix}") from e
    if len(values) != 3:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} has {len(values)} value(s) "
                                    f"{values}, it must have 3 (entries, first mapped value, bits); {fix}")
    n, first, bits = values
    n = n or 65536  # PS3.3 C.11.1.1: 0 means 2**16 entries
    if not 8 <= bits <= 16:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} says {bits} bits per entry, "
                                    f"DICOM allows 8..16; {fix}")
    if "LUTData" not in item:
        raise InvalidLUTError(path, f"{_tag(sequence)} item has no {_tag('LUTData')}; {fix}")
    data = item["LUTData"]
    raw = data.value
    if isinstance(raw, (bytes, bytearray)):  # OW: 16-bit words in the file's byte order
        little = True
        fm = getattr(ds, "file_meta", None)
        ts = fm.get("TransferSyntaxUID") if fm is not None else None
        if ts is not None and str(ts) == "1.2.840.10008.1.2.2":
            little = False
        table = np.frombuffer(bytes(raw[: len(raw) // 2 * 2]), dtype="<u2" if little else ">u2")
    elif raw is None:
        table = np.zeros(0, np.int64)
    else:
        try:
            table = np.asarray(list(raw) if hasattr(raw, "__iter__") else [raw], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTData')} is not a list of integers; {fix}") from e
    if table.size < n:
        raise InvalidLUTError(path, f"{_tag(sequence)}: {_tag('LUTDescriptor')} declares {n} entries but "
                                    f"{_tag('LUTData')} holds {table.size}; {fix}")
    return table[:n].astype(np.int64, copy=False), first, bits


def _lookup(x: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """``table[clip(x - first, 0, n - 1)]`` (values below ``first`` take entry 0, PS3.3 C.11)."""
    index = np.rint(x).astype(np.int64) - first if x.dtype.kind == "f" else x.astype(np.int64) - first
    np.clip(index, 0, table.size - 1, out=index)
    return table[index]


def _apply_modality(arr: np.ndarray, ds, path: Path, lo: float, hi: float) -> tuple[np.ndarray, float, float, bool]:
    """Modality LUT step: (values, their min, their max, whether a rescale/LUT ran)."""
    sequence = ds.get("ModalityLUTSequence")
    if sequence is not None and len(sequence) > 0:
        table, first, _ = _lut_table(sequence[0], ds, path, "ModalityLUTSequence")
        out = _lookup(arr, table, first)
        x_lo, x_hi = float(out.min()), float(out.max())
        if x_hi <= x_lo:
            raise ConstantImageError(path, f"{_tag('ModalityLUTSequence')} maps every stored value ({lo:g}..{hi:g}) "
                                           f"to {x_lo:g}: the image would be blank; fix: correct or remove the LUT "
                                           "(re-export the file)")
        return out.astype(np.float64), x_lo, x_hi, True
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = _ds_float(ds, "RescaleSlope", path, 1.0)
        intercept = _ds_float(ds, "RescaleIntercept", path, 0.0)
        if slope == 0.0:
            raise InvalidLUTError(path, f"{_tag('RescaleSlope')} is 0, which maps every pixel to the intercept "
                                        "(a blank image); fix: correct the header (usually 1), or re-export")
        with np.errstate(over="ignore", invalid="ignore"):
            ends = (lo * slope + intercept, hi * slope + intercept)
        if not all(math.isfinite(v) for v in ends) or not math.isfinite(ends[1] - ends[0]):
            raise InvalidLUTError(path, f"{_tag('RescaleSlope')} {slope:g} and {_tag('RescaleIntercept')} "
                                        f"{intercept:g} map the stored values {lo:g}..{hi:g} outside the range of "
                                        "floating point numbers (infinite); fix: correct the header")
        x = arr.astype(np.float64)
        if slope != 1.0:
            x *= slope
        if intercept != 0.0:
            x += intercept
        return x, min(ends), max(ends), True
    return arr.astype(np.float64), lo, hi, False


def _bits_range(ds, signed: bool) -> tuple[float, float]:
    bs = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if signed:
        return float(-(2 ** (bs - 1))), float(2 ** (bs - 1) - 1)
    return 0.0, float(2 ** bs - 1)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflow far below the centre is exactly 0
            return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1.0:  # LINEAR with the minimum width 1 is a threshold at the centre
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _constant_after(path: Path, what: str, x_lo: float, x_hi: float, value: float) -> ConstantImageError:
    shade = "black" if value <= 0.0 else ("white" if value >= 1.0 else f"{value:.3g}")
    return ConstantImageError(path, f"{what} maps every pixel (values {x_lo:g}..{x_hi:g} after the modality LUT) "
                                    f"to {shade}: the displayed image would be blank; fix: pass voi='minmax', or "
                                    "window=(center, width) covering the data, or correct the header")


def _apply_voi(x: np.ndarray, ds, voi: str, window, path: Path, signed: bool, modality_applied: bool,
               x_lo: float, x_hi: float) -> tuple[np.ndarray, str, tuple | None]:
    """VOI step. Returns (image in [0, 1], name of the step that ran, (center, width) or None).

    ``x_lo``/``x_hi`` are the (attained) extremes of ``x``; every VOI function but a LUT is
    monotone, so the output range, and with it a blank result, follows from them without
    another pass over the image.
    """
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
    if window is not None:
        center, width = window
        ends = _window(np.array([x_lo, x_hi]), center, width, function)
        if ends[1] <= ends[0]:
            raise _constant_after(path, f"window=({center:g}, {width:g})", x_lo, x_hi, float(ends[0]))
        return _window(x, center, width, function), "window", (center, width)

    sequence = ds.get("VOILUTSequence")
    has_lut = sequence is not None and len(sequence) > 0
    if voi in ("auto", "lut") and has_lut:
        table, first, bits = _lut_table(sequence[0], ds, path, "VOILUTSequence")
        out = _lookup(x, table, first)
        o_lo, o_hi = int(out.min()), int(out.max())
        if o_hi <= o_lo:
            raise _constant_after(path, f"{_tag('VOILUTSequence')} (every entry used is {o_lo})", x_lo, x_hi,
                                  0.0 if o_lo == 0 else 0.5)
        top = float(2 ** bits - 1)
        if o_hi > top:  # the descriptor understates the LUT's depth (seen in the wild)
            top = float(2 ** int(np.ceil(np.log2(o_hi + 1))) - 1)
        return out / top, "lut", None
    if voi == "lut":
        raise ImageReadError(path, "voi='lut' but the file has no VOI LUT Sequence; fix: use voi='auto'")

    present = [k for k in ("WindowCenter", "WindowWidth") if ds.get(k) not in (None, "")]
    if voi in ("auto", "window") and len(present) == 2:
        wc = _ds_float(ds, "WindowCenter", path, None)
        ww = _ds_float(ds, "WindowWidth", path, None)
        if ww is not None and ww <= 0:
            raise InvalidLUTError(path, f"{_tag('WindowWidth')} is {ww:g}; DICOM requires a width of at least 1; "
                                        "fix: correct the header, or pass voi='minmax' or window=(center, width)")
        if wc is not None and ww is not None:
            ends = _window(np.array([x_lo, x_hi]), wc, ww, function)
            if ends[1] <= ends[0]:
                raise _constant_after(path, f"the window {_tag('WindowCenter')} {wc:g} / {_tag('WindowWidth')} {ww:g}",
                                      x_lo, x_hi, float(ends[0]))
            return _window(x, wc, ww, function), "window", (wc, ww)
    if voi == "window":
        raise ImageReadError(path, "voi='window' but the file has no usable WindowCenter/WindowWidth; "
                                   "fix: use voi='auto' or pass window=(center, width)")
    if voi == "none":
        lo, hi = _bits_range(ds, signed)
        if modality_applied:
            slope = _ds_float(ds, "RescaleSlope", path, 1.0)
            inter = _ds_float(ds, "RescaleIntercept", path, 0.0)
            lo, hi = sorted((lo * slope + inter, hi * slope + inter))
        span = max(hi - lo, 1e-12)
        ends = np.clip((np.array([x_lo, x_hi]) - lo) / span, 0.0, 1.0)
        if ends[1] <= ends[0]:
            raise _constant_after(path, "voi='none' (the full stored range)", x_lo, x_hi, float(ends[0]))
        return np.clip((x - lo) / span, 0.0, 1.0), "none", None
    if x_hi <= x_lo:  # pragma: no cover - a constant image is refused before the modality step
        raise _constant_after(path, "voi='minmax'", x_lo, x_hi, 0.0)
    return (x - x_lo) / (x_hi - x_lo), "minmax", None


def _to_luminance(rgb: np.ndarray, top: float) -> np.ndarray:
    return (rgb[..., :3].astype(np.float64) @ _LUMA) / top
