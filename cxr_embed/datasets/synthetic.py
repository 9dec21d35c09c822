"""Synthetic chest-radiograph phantoms with known lesion masks and scanner (site) effects.

The embedded default dataset of cxr_embed: it needs no download, renders 200
images of 256 px in about a second, and knows the ground truth of every image
(which findings, where, and which pixels), so classifiers, domain shift and
saliency maps can be checked against it. Rendering lives in ``_phantom.py``,
the DICOM/PNG writers in ``_writers.py``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from . import _phantom

__all__ = ["CLINICAL_COVARIATES", "FINDINGS", "SITES", "SiteProfile", "SyntheticCXR", "add_clinical_covariates",
           "make_synthetic_cxr", "cardiothoracic_ratio"]

logger = logging.getLogger(__name__)

#: Findings the phantom can render, in their default order.
FINDINGS = ("opacity", "effusion", "cardiomegaly")


@dataclass(frozen=True)
class SiteProfile:
    """Scanner and protocol effects of one synthetic site (the source of domain shift).

    Parameters
    ----------
    name : str
        Site name; it prefixes image and patient ids and fills the ``site`` column.
    gamma : float
        Contrast curve applied to the [0, 1] image (``image ** gamma``).
    noise : float
        Standard deviation of the quantum-like noise (scaled up in bright regions).
    blur : float
        Gaussian blur sigma in pixels at 256 px (scaled with the image size).
    exposure : float
        Mean exposure; higher gives a brighter, more saturated image.
    heel : float
        Strength of the vertical anode-heel gradient (signed).
    marker_corner : str
        Corner of the burned-in "L"/"R" side marker (``"top-left"``, ``"top-right"``,
        ``"bottom-left"``, ``"bottom-right"``).
    shortcut_corner : str
        Corner of the "PORT" marker used by ``marker_shortcut=True``.
    p_ap : float
        Probability that an image is an AP view (AP magnifies the heart by 10% and moves
        the scapulae over the lung fields).
    monochrome1 : bool
        Whether :func:`write_dataset` should store this site as MONOCHROME1 by default.
    modality : {"DX", "CR"}
        DICOM modality written for this site.
    manufacturer : str
        DICOM Manufacturer written for this site.
    field_of_view_mm : float
        Detector width in mm; the pixel spacing is ``field_of_view_mm / size``.
    """

    name: str
    gamma: float = 1.0
    noise: float = 0.012
    blur: float = 0.6
    exposure: float = 1.0
    heel: float = 0.04
    marker_corner: str = "top-right"
    shortcut_corner: str = "bottom-left"
    p_ap: float = 0.2
    monochrome1: bool = False
    modality: str = "DX"
    manufacturer: str = "cxr_embed phantom DX"
    field_of_view_mm: float = 400.0

    def __post_init__(self):
        corners = ("top-left", "top-right", "bottom-left", "bottom-right")
        for attr in ("marker_corner", "shortcut_corner"):
            if getattr(self, attr) not in corners:
                raise ValueError(f"SiteProfile.{attr} must be one of {corners}, got {getattr(self, attr)!r}")
        if self.marker_corner == self.shortcut_corner:
            raise ValueError("SiteProfile.marker_corner and shortcut_corner must differ; pick two corners")
        if self.modality not in ("DX", "CR"):
            raise ValueError(f"SiteProfile.modality must be 'DX' or 'CR', got {self.modality!r}")
        if not (self.gamma > 0 and self.noise >= 0 and self.blur >= 0 and self.exposure > 0 and 0 <= self.p_ap <= 1):
            raise ValueError(
                f"SiteProfile {self.name!r}: expected gamma > 0, noise >= 0, blur >= 0, exposure > 0, "
                f"0 <= p_ap <= 1; got gamma={self.gamma}, noise={self.noise}, blur={self.blur}, "
                f"exposure={self.exposure}, p_ap={self.p_ap}"
            )


#: Built-in sites: "A" (clean DX, mostly PA), "B" (CR, flatter contrast, noisier, blurrier,
#: half AP, MONOCHROME1), "C" (DX, harder contrast, brighter exposure).
SITES: Mapping[str, SiteProfile] = MappingProxyType(
    {
        "A": SiteProfile("A"),
        "B": SiteProfile(
            "B", gamma=0.85, noise=0.022, blur=1.0, exposure=0.92, heel=-0.05, marker_corner="top-left",
            shortcut_corner="bottom-right", p_ap=0.5, monochrome1=True, modality="CR",
            manufacturer="cxr_embed phantom CR", field_of_view_mm=430.0,
        ),
        "C": SiteProfile(
            "C", gamma=1.3, noise=0.02, blur=0.9, exposure=1.15, heel=0.0, marker_corner="bottom-right",
            shortcut_corner="top-left", p_ap=0.35, manufacturer="cxr_embed phantom DX-2",
        ),
    }
)


@dataclass
class SyntheticCXR:
    """A rendered synthetic dataset: images, ground-truth masks, labels and parameters.

    Attributes
    ----------
    images : ndarray of shape (n, size, size), float32
        Radiographs in [0, 1], air dark, bone bright.
    masks : dict of str -> ndarray of shape (n, size, size), bool
        One entry per requested finding (all False where the finding is absent; the
        cardiomegaly mask is the heart region), plus ``"marker"`` when the dataset was made
        with ``marker_shortcut``.
    labels : pandas.DataFrame
        One row per image: ``image_id``, ``patient_id``, one 0/1 int column per finding,
        ``site``, ``sex`` ("F"/"M"), ``age`` (years), ``view`` ("AP"/"PA").
    anatomy : dict of str -> ndarray of shape (n, size, size), bool
        ``"lungs"``, ``"heart"`` and ``"thorax"`` regions, for checks and lesion scoring.
    params : pandas.DataFrame
        Per-image ground truth behind the pixels: ``image_id``, ``ctr`` (intended
        cardiothoracic ratio), ``opacity_u``/``opacity_v``/``opacity_radius``/
        ``opacity_amplitude`` (normalised coordinates, NaN when absent), ``effusion_sides``,
        ``angle_deg``, ``exposure``, ``marker`` (the shortcut marker is burned in).
    site : SiteProfile
        The scanner effects used.
    findings : tuple of str
        The finding columns, in order.
    """

    images: np.ndarray
    masks: dict
    labels: pd.DataFrame
    anatomy: dict
    params: pd.DataFrame
    site: SiteProfile
    findings: tuple = field(default=FINDINGS)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "SyntheticCXR":
        """Rows ``index`` (int array, slice or bool mask) as a new dataset."""
        idx = np.arange(len(self))[index]
        return SyntheticCXR(
            images=self.images[idx],
            masks={k: m[idx] for k, m in self.masks.items()},
            labels=self.labels.iloc[idx].reset_index(drop=True),
            anatomy={k: m[idx] for k, m in self.anatomy.items()},
            params=self.params.iloc[idx].reset_index(drop=True),
            site=self.site,
            findings=self.findings,
        )


def cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Measure the cardiothoracic ratio from masks: heart width over the lungs' outer width.

    Parameters
    ----------
    heart, lungs : ndarray of shape (n, H, W) or (H, W), bool
        Heart region and both lung fields (e.g. ``ds.anatomy["heart"]``, ``ds.anatomy["lungs"]``).

    Returns
    -------
    ndarray of shape (n,) or float
        Horizontal extent of the heart divided by that of the lungs (NaN where a mask is empty).

    Examples
    --------
    >>> ds = make_synthetic_cxr(4, size=64, seed=0)
    >>> cardiothoracic_ratio(ds.anatomy["heart"], ds.anatomy["lungs"]).shape
    (4,)
    """
    heart, lungs = np.asarray(heart, bool), np.asarray(lungs, bool)
    if heart.shape != lungs.shape or heart.ndim not in (2, 3):
        raise ValueError(
            f"heart and lungs must be masks of the same shape (H, W) or (n, H, W); got {heart.shape} and {lungs.shape}"
        )
    single = heart.ndim == 2
    if single:
        heart, lungs = heart[None], lungs[None]

    def width(m):
        cols = m.any(axis=1)  # (n, W)
        w = cols.shape[1]
        first = np.argmax(cols, axis=1)
        last = w - 1 - np.argmax(cols[:, ::-1], axis=1)
        return np.where(cols.any(axis=1), last - first + 1, 0).astype(float)

    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = width(heart) / width(lungs)
    ratio[(width(heart) == 0) | (width(lungs) == 0)] = np.nan
    return float(ratio[0]) if single else ratio


def _prevalences(findings: tuple, prevalence) -> dict:
    if isinstance(prevalence, Mapping):
        unknown = set(prevalence) - set(findings)
        missing = [f for f in findings if f not in prevalence]
        if unknown or missing:
            raise ValueError(
                f"prevalence dict must have exactly one entry per finding {list(findings)}; "
                f"unknown {sorted(unknown)}, missing {missing}"
            )
        prev = {f: float(prevalence[f]) for f in findings}
    else:
        prev = {f: float(prevalence) for f in findings}
    for f, p in prev.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"prevalence of {f!r} must be in [0, 1], got {p}")
    return prev


def make_synthetic_cxr(
    n: int,
    *,
    site: str | SiteProfile = "A",
    findings: Sequence[str] = FINDINGS,
    prevalence: float | Mapping[str, float] = 0.5,
    size: int = 256,
    seed: int | np.random.Generator | None = None,
    marker_shortcut: bool | str = False,
    images_per_patient: int = 1,
    opacity_contrast: float = 1.0,
    clinical: bool = False,
) -> SyntheticCXR:
    """Render phantom chest radiographs with findings at known locations and site effects.

    Each patient gets random anatomy (thorax, lung size and position, heart size, diaphragm
    height, rib spacing); each image a random rotation, shift, zoom, exposure, view (AP/PA)
    and a burned-in "L"/"R" marker in the site's corner. Findings are independent
    Bernoulli(prevalence) per patient: ``"opacity"`` (a bright irregular blob inside a lung),
    ``"effusion"`` (bright fluid with a meniscus at a costophrenic angle, one or both sides)
    and ``"cardiomegaly"`` (cardiothoracic ratio 0.53-0.63 instead of 0.38-0.46).

    Parameters
    ----------
    n : int
        Number of images.
    site : str or SiteProfile, default "A"
        A key of :data:`SITES` (``"A"``, ``"B"``, ``"C"``) or a custom profile.
    findings : sequence of str, default ("opacity", "effusion", "cardiomegaly")
        Which findings to render and label (a subset of :data:`FINDINGS`).
    prevalence : float or dict of str -> float, default 0.5
        Probability that a patient has each finding (one value, or one per finding).
    size : int, default 256
        Image height and width in pixels (at least 32).
    seed : int, numpy.random.Generator or None
        Random state; the same int gives identical datasets.
    marker_shortcut : bool or str, default False
        Burn a "PORT" marker into the site's shortcut corner of 85% of the images positive for
        the first finding (or the finding named) and 15% of the negatives, and return its
        rectangle as ``masks["marker"]``: a planted shortcut for testing explanations.
    images_per_patient : int, default 1
        Images per patient (follow-ups share anatomy, labels and lesion location but differ
        in pose, exposure, view and noise), so patient-grouped splits matter.
    opacity_contrast : float, default 1.0
        Factor on the opacity's drawn amplitude (attenuation 0.25-0.45 at 1.0). The default
        is tuned for pretrained ImageNet embeddings at 256 px; a small CNN trained from scratch
        on 64 px images needs a more conspicuous lesion (for example 2.0). Only the rendered
        amplitude changes (the same seed gives the same patients, labels, lesion locations and
        masks); ``params["opacity_amplitude"]`` records the scaled value.
    clinical : bool, default False
        Add clinical covariates to ``labels`` (see :func:`add_clinical_covariates`): ``wbc`` and
        ``fever`` depend on the first finding, ``crp`` weakly on it, ``bmi`` and ``smoker`` on
        nothing; ``wbc``, ``crp`` and ``smoker`` have missing values. They come from their own
        random stream, so images, labels and every other column are identical with or without them.

    Returns
    -------
    SyntheticCXR
        ``images`` (n, size, size) float32 in [0, 1]; ``masks`` finding -> (n, size, size) bool;
        ``labels`` DataFrame; ``anatomy`` and ``params`` ground truth.

    Raises
    ------
    ValueError
        On an unknown site or finding, a prevalence outside [0, 1], ``n < 1``, ``size < 32``
        or a negative ``opacity_contrast``.

    Examples
    --------
    >>> ds = make_synthetic_cxr(8, site="B", size=64, seed=0)
    >>> ds.images.shape, ds.images.dtype.name
    ((8, 64, 64), 'float32')
    >>> sorted(ds.masks)
    ['cardiomegaly', 'effusion', 'opacity']
    >>> list(ds.labels.columns)
    ['image_id', 'patient_id', 'opacity', 'effusion', 'cardiomegaly', 'site', 'sex', 'age', 'view']
    """
    profile = _site(site)
    findings = tuple(findings)
    bad = [f for f in findings if f not in FINDINGS]
    if bad or not findings or len(set(findings)) != len(findings):
        raise ValueError(f"findings must be distinct names from {FINDINGS}; got {findings!r}")
    prev = _prevalences(findings, prevalence)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if int(size) != size or size < 32:
        raise ValueError(f"size must be an integer >= 32 pixels, got {size!r}")
    if int(images_per_patient) != images_per_patient or images_per_patient < 1:
        raise ValueError(f"images_per_patient must be a positive integer, got {images_per_patient!r}")
    if not (math.isfinite(opacity_contrast) and opacity_contrast >= 0):
        raise ValueError(f"opacity_contrast must be a finite number >= 0 (1.0 = default amplitude), "
                         f"got {opacity_contrast!r}")
    shortcut = None
    if marker_shortcut:
        shortcut = findings[0] if marker_shortcut is True else marker_shortcut
        if shortcut not in findings:
            raise ValueError(f"marker_shortcut names {shortcut!r}, which is not among findings {findings}")
    n, size = int(n), int(size)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # clinical covariates get a child stream (spawning draws nothing from rng: images stay identical)
    clinical_rng = rng.spawn(1)[0] if clinical else None
    # pixel noise and texture come from their own stream, so the patients, labels and lesions
    # drawn from ``rng`` are the same at every image size
    pixel_rng = np.random.default_rng(rng.integers(2**63))

    images = np.empty((n, size, size), np.float32)
    keys = list(findings) + (["marker"] if shortcut else [])
    masks = {k: np.zeros((n, size, size), bool) for k in keys}
    anatomy = {k: np.empty((n, size, size), bool) for k in ("lungs", "heart", "thorax")}
    rows, params = [], []
    n_patients = math.ceil(n / images_per_patient)
    width = max(5, len(str(n_patients)))
    i = 0
    for p in range(n_patients):
        lab = {f: int(rng.random() < prev[f]) for f in findings}
        female = bool(rng.random() < 0.5)
        age = int(rng.integers(18, 91))
        an = _phantom.draw_anatomy(rng, bool(lab.get("cardiomegaly", 0)), female)
        opacity = _phantom.draw_opacity(rng, an) if lab.get("opacity") else None
        if opacity is not None and opacity_contrast != 1.0:
            opacity = opacity[:4] + (opacity[4] * float(opacity_contrast),) + opacity[5:]
        effusion = _phantom.draw_effusion(rng) if lab.get("effusion") else None
        les = _phantom.Lesions(opacity=opacity, effusion=effusion, cardiomegaly=bool(lab.get("cardiomegaly", 0)))
        patient_id = f"{profile.name}P{p:0{width}d}"
        for _ in range(min(images_per_patient, n - i)):
            mark = bool(shortcut) and bool(rng.random() < (0.85 if lab[shortcut] else 0.15))
            view = _phantom.View(
                ap=bool(rng.random() < profile.p_ap), angle=float(rng.normal(0, 0.05)),
                shift_u=float(rng.normal(0, 0.03)), shift_v=float(rng.normal(0, 0.03)),
                zoom=float(rng.uniform(0.93, 1.03)), exposure=float(profile.exposure * rng.uniform(0.88, 1.12)),
                side_marker="L" if rng.random() < 0.7 else "R", shortcut_marker=mark,
            )
            out = _phantom.render(size, an, les, view, profile, pixel_rng)
            images[i] = out["image"]
            for k in keys:
                masks[k][i] = out[k]
            for k in anatomy:
                anatomy[k][i] = out[k]
            image_id = f"{profile.name}I{i:0{width}d}"
            rows.append({"image_id": image_id, "patient_id": patient_id, **lab, "site": profile.name,
                         "sex": "F" if female else "M", "age": age, "view": "AP" if view.ap else "PA"})
            params.append({
                "image_id": image_id, "ctr": an.ctr,
                "opacity_u": opacity[1] if opacity else np.nan, "opacity_v": opacity[2] if opacity else np.nan,
                "opacity_radius": opacity[3] if opacity else np.nan,
                "opacity_amplitude": opacity[4] if opacity else np.nan,
                "effusion_sides": "" if effusion is None else "+".join("RL"[s] for s in effusion[0]),
                "angle_deg": float(np.degrees(view.angle)), "exposure": view.exposure, "marker": mark,
            })
            i += 1
    logger.debug("rendered %d synthetic images of site %s at %d px", n, profile.name, size)
    labels = pd.DataFrame(rows)
    if clinical:
        labels = add_clinical_covariates(labels, findings[0], seed=clinical_rng)
    return SyntheticCXR(images=images, masks=masks, labels=labels, anatomy=anatomy,
                        params=pd.DataFrame(params), site=profile, findings=findings)


#: Clinical covariates of :func:`add_clinical_covariates`: name -> what it depends on.
CLINICAL_COVARIATES = MappingProxyType({
    "wbc": "predictive: white-cell count (10^9/L), higher with the finding; 15% missing",
    "crp": "weakly predictive: C-reactive protein (mg/L), slightly higher with the finding; 25% missing",
    "fever": "predictive: 'yes'/'no', more often 'yes' with the finding",
    "bmi": "noise: body-mass index, independent of every label",
    "smoker": "noise: 'never'/'former'/'current', independent of every label; 10% missing",
})


def add_clinical_covariates(labels: pd.DataFrame, target: str, *, seed=None) -> pd.DataFrame:
    """Add planted clinical covariates (some predictive of ``target``, some noise, some missing).

    Parameters
    ----------
    labels : DataFrame
        One row per image with a 0/1 column ``target`` (e.g. ``make_synthetic_cxr(...).labels``).
    target : str
        The label the predictive covariates depend on.
    seed : int, numpy.random.Generator or None

    Returns
    -------
    DataFrame
        A copy with the columns of :data:`CLINICAL_COVARIATES`: ``wbc`` ~ N(8 + 4 y, 2) (15% NaN),
        ``crp`` ~ lognormal(log 10 + 0.3 y, 0.8) (25% NaN), ``fever`` "yes" with probability
        0.2 + 0.5 y, ``bmi`` ~ N(26, 4), ``smoker`` uniform over three levels (10% missing).

    Examples
    --------
    >>> import pandas as pd
    >>> out = add_clinical_covariates(pd.DataFrame({"opacity": [0, 1] * 50}), "opacity", seed=0)
    >>> bool(out.loc[out.opacity == 1, "wbc"].mean() > out.loc[out.opacity == 0, "wbc"].mean())
    True
    """
    if target not in labels.columns:
        raise ValueError(f"target {target!r} is not a column of labels ({list(labels.columns)})")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    y = labels[target].to_numpy(dtype=float)
    n = len(labels)
    out = labels.copy()
    wbc = rng.normal(8.0 + 4.0 * y, 2.0).clip(1.0, None).round(1)
    crp = np.exp(rng.normal(np.log(10.0) + 0.3 * y, 0.8)).round(1)
    fever = np.where(rng.random(n) < 0.2 + 0.5 * y, "yes", "no")
    bmi = rng.normal(26.0, 4.0, n).round(1)
    smoker = rng.choice(np.array(["never", "former", "current"], dtype=object), n)
    out["wbc"] = np.where(rng.random(n) < 0.15, np.nan, wbc)
    out["crp"] = np.where(rng.random(n) < 0.25, np.nan, crp)
    out["fever"] = fever
    out["bmi"] = bmi
    out["smoker"] = pd.Series(np.where(rng.random(n) < 0.10, None, smoker), dtype=object)
    return out


def _site(site) -> SiteProfile:
    if isinstance(site, SiteProfile):
        return site
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {sorted(SITES)} or a SiteProfile(...)")
    return SITES[site]
