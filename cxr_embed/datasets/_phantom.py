"""Render one phantom chest radiograph (anatomy, findings, site effects) with numpy.

Private module: :func:`cxr_embed.datasets.make_synthetic_cxr` draws the random
parameters and calls :func:`render` once per image. Everything is computed on a
normalised grid (``u`` left to right, ``v`` top to bottom, both in ``[-1, 1]``),
so masks and images stay aligned at any size; there are no per-pixel loops.

Display convention: image left is the patient's right (a PA radiograph as a
radiologist reads it), so the heart sits slightly to the image right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__: list[str] = []  # private module

# 7 x 5 bitmaps of the few glyphs burned into images as markers
_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "O": ["01110", "10001", "10001", "10001", "10001", "10001", "01110"],
    "T": ["11111", "00100", "00100", "00100", "00100", "00100", "00100"],
}

_ATTENUATION_GAIN = 0.9  # mu -> transmitted signal: I = 1 - exp(-gain * mu * exposure)


@dataclass(frozen=True)
class Anatomy:
    """Patient-level shape parameters, in normalised coordinates (``[-1, 1]``)."""

    body_a: float  # body (soft tissue) ellipse semi-axes
    body_b: float
    lung_cx: float  # |x| of each lung centre
    lung_cy: float
    lung_a: float  # lung semi-axes
    lung_b: float
    dome_r: float  # v of the right (image left) and left hemidiaphragm dome tops
    dome_l: float
    heart_cx: float
    heart_cy: float
    heart_a: float
    heart_b: float
    heart_tilt: float  # radians
    ctr: float  # intended cardiothoracic ratio (before AP magnification)
    rib_spacing: float
    rib_phase: float
    female: bool


@dataclass(frozen=True)
class Lesions:
    """Patient-level findings: which are present and where."""

    opacity: tuple | None  # (side, cu, cv, radius, amplitude, offsets (3, 2) array as tuple)
    effusion: tuple | None  # (sides tuple, height, amplitude)
    cardiomegaly: bool


@dataclass(frozen=True)
class View:
    """Image-level acquisition: geometry, exposure and markers."""

    ap: bool
    angle: float  # radians
    shift_u: float
    shift_v: float
    zoom: float
    exposure: float
    side_marker: str  # "L" or "R"
    shortcut_marker: bool


def _smooth(d: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for ``d <= -width``, 1 for ``d >= width`` (smoothstep)."""
    t = np.clip(0.5 + 0.5 * d / width, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse_distance(u, v, cu, cv, a, b, tilt=0.0):
    """Approximate signed distance to an ellipse boundary (positive inside)."""
    if tilt:
        c, s = math.cos(tilt), math.sin(tilt)
        du, dv = (u - cu) * c + (v - cv) * s, -(u - cu) * s + (v - cv) * c
    else:
        du, dv = u - cu, v - cv
    r = np.sqrt((du / a) ** 2 + (dv / b) ** 2)
    return (1.0 - r) * min(a, b)


def _segment_distance(u, v, p0, p1):
    """Distance of every grid point to the segment ``p0``-``p1``."""
    (u0, v0), (u1, v1) = p0, p1
    du, dv = u1 - u0, v1 - v0
    t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - u0 - t * du, v - v0 - t * dv)


def heart_semi_axis(ctr: float, lung_cx: float, lung_a: float, heart_b: float, tilt: float) -> float:
    """Semi-axis ``a`` of the tilted heart ellipse whose width gives cardiothoracic ratio ``ctr``.

    The thoracic width is taken between the lungs' outer edges, ``2 * (lung_cx + lung_a)``.
    """
    half_width = ctr * (lung_cx + lung_a)
    c2, s2 = np.cos(tilt) ** 2, np.sin(tilt) ** 2
    return float(np.sqrt(max(half_width**2 - heart_b**2 * s2, 1e-4) / c2))


def lung_fields(u, v, an: Anatomy, edge: float):
    """Soft masks (right lung = image left, left lung = image right) and diaphragm dome curves."""
    out = []
    for sign, dome in ((-1.0, an.dome_r), (1.0, an.dome_l)):
        cu = sign * an.lung_cx
        # lungs widen towards the base: scale the x semi-axis with height
        rel = np.clip((v - an.lung_cy) / an.lung_b, -1.0, 1.0)
        a = an.lung_a * (1.0 + 0.18 * np.clip(rel + 0.2, 0.0, None))
        # apex narrower than base: the ellipse is shifted laterally at the base
        lateral = sign * 0.05 * np.clip(rel, 0, None)
        r = np.sqrt(((u - lateral - cu) / a) ** 2 + ((v - an.lung_cy) / an.lung_b) ** 2)
        d_ell = (1.0 - r) * an.lung_a
        # diaphragm dome: highest near the lung's medial third, lower at the costophrenic angle
        dome_curve = dome + 0.55 * ((u - (cu - sign * 0.05)) / (1.6 * an.lung_a)) ** 2
        d_dome = dome_curve - v
        out.append((_smooth(np.minimum(d_ell, d_dome), edge), dome_curve, cu))
    return out


def draw_anatomy(rng: np.random.Generator, cardiomegaly: bool, female: bool) -> Anatomy:
    """Random patient anatomy; cardiomegaly sets the cardiothoracic ratio to 0.53-0.63 (else 0.38-0.46)."""
    lung_cx, lung_a = rng.uniform(0.33, 0.39), rng.uniform(0.24, 0.29)
    lung_cy, lung_b = rng.uniform(-0.12, -0.04), rng.uniform(0.52, 0.60)
    dome_r = lung_cy + lung_b * rng.uniform(0.70, 0.80)
    dome_l = dome_r + rng.uniform(0.02, 0.07)
    heart_b, tilt = rng.uniform(0.19, 0.24), rng.uniform(0.2, 0.45)
    ctr = rng.uniform(0.53, 0.63) if cardiomegaly else rng.uniform(0.38, 0.46)
    return Anatomy(
        body_a=rng.uniform(0.80, 0.90), body_b=rng.uniform(0.95, 1.05),
        lung_cx=lung_cx, lung_cy=lung_cy, lung_a=lung_a, lung_b=lung_b, dome_r=dome_r, dome_l=dome_l,
        heart_cx=rng.uniform(0.05, 0.10), heart_cy=dome_l - 0.72 * heart_b, heart_b=heart_b, heart_tilt=tilt,
        heart_a=heart_semi_axis(ctr, lung_cx, lung_a, heart_b, tilt), ctr=ctr,
        rib_spacing=rng.uniform(0.10, 0.12), rib_phase=rng.uniform(0, 1), female=female,
    )


def draw_opacity(rng: np.random.Generator, an: Anatomy) -> tuple:
    """A blob centre well inside one lung field, away from the heart and the diaphragm."""
    for _ in range(200):
        side = int(rng.integers(2))
        sign = -1.0 if side == 0 else 1.0
        cu = sign * an.lung_cx + rng.uniform(-0.6, 0.6) * an.lung_a
        cv = an.lung_cy + rng.uniform(-0.6, 0.6) * an.lung_b
        dome = an.dome_r if side == 0 else an.dome_l
        inside = _ellipse_distance(cu, cv, sign * an.lung_cx, an.lung_cy, an.lung_a, an.lung_b) > 0.08
        clear_of_heart = _ellipse_distance(cu, cv, an.heart_cx, an.heart_cy, an.heart_a, an.heart_b, an.heart_tilt) < -0.06
        if inside and clear_of_heart and cv < dome - 0.08:
            break
    radius, amp = rng.uniform(0.08, 0.14), rng.uniform(0.25, 0.45)
    offsets = tuple(rng.uniform(-0.6, 0.6, size=6))
    return (side, float(cu), float(cv), float(radius), float(amp), offsets)


def draw_effusion(rng: np.random.Generator) -> tuple:
    """Sides (0 = patient right / image left, 1 = left; 20% bilateral), height, lateral climb, density."""
    u = rng.random()
    sides = (0,) if u < 0.4 else (1,) if u < 0.8 else (0, 1)
    return (sides, float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.35, 0.6)))


def render(size: int, an: Anatomy, les: Lesions, view: View, site, rng: np.random.Generator) -> dict:
    """Render one image and its masks.

    Parameters
    ----------
    size : int
        Output height and width in pixels.
    an, les, view : Anatomy, Lesions, View
        Patient and image parameters.
    site : SiteProfile
        Scanner effects (contrast, noise, blur, marker corner, heel effect).
    rng : numpy.random.Generator
        Source of the texture and noise.

    Returns
    -------
    dict
        ``image`` float32 (size, size) in [0, 1]; bool (size, size) masks ``lungs``, ``heart``,
        ``thorax``, ``opacity``, ``effusion``, ``cardiomegaly`` and ``marker``.
    """
    px = 2.0 / size
    edge = 1.2 * px
    # pixel grid -> patient coordinates (rotation, shift, zoom; AP magnifies the heart only)
    g = (np.arange(size, dtype=np.float32) + 0.5) * px - 1.0
    gv, gu = np.meshgrid(g, g, indexing="ij")
    c, s = math.cos(view.angle), math.sin(view.angle)
    u = ((gu - view.shift_u) * c + (gv - view.shift_v) * s) / view.zoom
    v = (-(gu - view.shift_u) * s + (gv - view.shift_v) * c) / view.zoom

    body = _smooth(_ellipse_distance(u, v, 0.0, 0.12, an.body_a, an.body_b), 4 * edge)
    for sign in (-1.0, 1.0):  # shoulders
        body = np.maximum(body, _smooth(_ellipse_distance(u, v, sign * 0.55, -0.84, 0.45, 0.16, sign * 0.22), 4 * edge))
    body = np.maximum(body, _smooth(0.18 - np.abs(u), 4 * edge) * _smooth(-0.6 - v, 0.1))  # neck
    thorax = body > 0.5

    fields = lung_fields(u, v, an, edge)
    lung = np.maximum(fields[0][0], fields[1][0])

    mag = 1.1 if view.ap else 1.0
    heart = _smooth(
        _ellipse_distance(u, v, an.heart_cx, an.heart_cy, an.heart_a * mag, an.heart_b * mag, an.heart_tilt),
        2 * edge,
    )
    # the heart's lower edge merges into the diaphragm: cut where the ellipse runs below the domes
    heart = heart * _smooth(max(an.dome_r, an.dome_l) + 0.12 - v, 0.05)

    # bones: posterior ribs (arches), fainter anterior ribs, clavicles, spine, scapulae
    au = np.abs(u)
    post = np.cos(2 * np.pi * ((v - (0.8 * au**2 - 0.22 * au)) / an.rib_spacing + an.rib_phase))
    ante = np.cos(2 * np.pi * ((v + (0.45 * au**2 - 0.35 * au)) / (1.2 * an.rib_spacing) + 0.3 + an.rib_phase))
    ribs = np.clip(post - 0.5, 0, None) / 0.5 + 0.4 * np.clip(ante - 0.6, 0, None) / 0.4
    rib_zone = _smooth(_ellipse_distance(u, v, 0.0, -0.05, an.lung_cx + an.lung_a + 0.06, 0.78), 0.05)
    ribs = ribs * rib_zone * _smooth(au - 0.07, 0.02) * (0.35 + 0.65 * lung)
    clav = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        d = _segment_distance(u, v, (sign * 0.07, -0.66), (sign * 0.62, -0.78))
        clav = np.maximum(clav, _smooth(0.035 - d, 0.012))
    vert = 0.75 + 0.25 * np.cos(2 * np.pi * v / 0.105)
    spine = _smooth(0.075 - au, 0.015) * vert * body
    scap_u, scap_v = (0.56, -0.32) if view.ap else (0.74, -0.3)
    scap = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        scap = np.maximum(scap, _smooth(_ellipse_distance(u, v, sign * scap_u, scap_v, 0.13, 0.3, sign * 0.25), 0.03))
    bone = 0.16 * ribs + 0.3 * clav + 0.3 * spine + 0.1 * scap * body
    trachea = _smooth(0.035 - au, 0.01) * _smooth(-0.22 - v, 0.05)

    # lung texture: vessels (smooth random field) brighter near the hila
    tex = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=size / 80)
    tex = tex / (tex.std() + 1e-6)
    hilum = np.exp(-(((au - 0.2) / 0.14) ** 2 + ((v - 0.0) / 0.25) ** 2))
    air = lung * (1.0 - 0.92 * heart)
    mu = 1.0 * body - 0.72 * air + 0.12 * heart * body + bone - 0.3 * trachea * body
    mu = mu + air * (0.035 * tex + 0.12 * hilum)
    if an.female:
        for sign in (-1.0, 1.0):
            mu = mu + 0.12 * _smooth(_ellipse_distance(u, v, sign * 0.45, 0.52, 0.32, 0.22), 0.12)

    lungs_hard = lung > 0.5
    masks = {"opacity": np.zeros((size, size), bool), "effusion": np.zeros((size, size), bool)}
    if les.opacity is not None:
        side, cu, cv, radius, amp, offs = les.opacity
        blob = np.zeros_like(u)
        for du, dv in np.asarray(offs).reshape(-1, 2).tolist():
            blob = blob + np.exp(-(((u - cu - du * radius) ** 2 + (v - cv - dv * radius) ** 2) / (radius**2)))
        blob = blob / blob.max()
        mu = mu + amp * blob * lung
        masks["opacity"] = (blob > 0.5) & lungs_hard
    if les.effusion is not None:
        sides, height, climb, amp = les.effusion
        fluid = np.zeros_like(u)
        for side_idx in sides:
            field, dome_curve, cu = fields[side_idx]
            sign = -1.0 if side_idx == 0 else 1.0
            top = an.dome_r if side_idx == 0 else an.dome_l
            # meniscus: a level just above the dome that climbs the lateral chest wall
            level = top + 0.06 - height - climb * np.clip(sign * (u - cu) / an.lung_a, 0, None) ** 2
            inside = _smooth(v - level, 0.03) * field
            fluid = np.maximum(fluid, inside)
        mu = mu + amp * fluid
        masks["effusion"] = (fluid > 0.5) & lungs_hard

    expo = view.exposure
    img = (1.0 - np.exp(-_ATTENUATION_GAIN * expo * np.clip(mu, 0, None))) / (1.0 - np.exp(-_ATTENUATION_GAIN * 2.0))
    # heel effect: a gentle vertical gradient whose strength depends on the tube
    img = img * (1.0 + site.heel * gv)
    if site.blur > 0:
        img = ndimage.gaussian_filter(img, sigma=site.blur * size / 256)
    img = np.clip(img, 0.0, 1.0) ** site.gamma
    img = img + site.noise * (0.6 + 0.8 * img) * rng.standard_normal((size, size)).astype(np.float32)

    marker = np.zeros((size, size), bool)
    _burn(img, view.side_marker, site.marker_corner, size, box=None)
    if view.shortcut_marker:
        _burn(img, "PORT", site.shortcut_corner, size, box=marker)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)

    heart_hard = heart > 0.5
    masks["cardiomegaly"] = heart_hard if les.cardiomegaly else np.zeros((size, size), bool)
    masks["marker"] = marker
    return {"image": img, "lungs": lungs_hard, "heart": heart_hard, "thorax": thorax, **masks}


def _burn(img: np.ndarray, text: str, corner: str, size: int, box: np.ndarray | None) -> None:
    """Burn ``text`` as a bright glyph block into ``corner`` of ``img`` (in place).

    ``box``, when given, is set True over the block's rectangle.
    """
    scale = max(1, round(size / 110))
    glyphs = [np.array([[ch == "1" for ch in row] for row in _GLYPHS[t]], dtype=np.float32) for t in text]
    gap = np.zeros((7, 1), np.float32)
    word = np.concatenate([x for gl in glyphs for x in (gl, gap)][:-1], axis=1)
    word = np.kron(word, np.ones((scale, scale), np.float32))
    pad = scale
    block = np.full((word.shape[0] + 2 * pad, word.shape[1] + 2 * pad), 0.08, np.float32)
    block[pad:-pad, pad:-pad] = np.where(word > 0, 0.97, 0.08)
    h, w = block.shape
    margin = max(2, size // 32)
    top = margin if corner.startswith("top") else size - margin - h
    left = margin if corner.endswith("left") else size - margin - w
    img[top : top + h, left : left + w] = block
    if box is not None:
        box[top : top + h, left : left + w] = True
