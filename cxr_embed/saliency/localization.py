"""Do the explanations point where radiologists drew? Localisation measured against boxes.

:func:`evaluate_localization` explains every boxed image of a manifest, scores each map against
the union of the image's boxes (pointing game, energy inside the boxes, IoU of the top region)
and puts the same metrics of baselines computed on the same images beside it:

* ``"random"``: smooth random maps (:func:`cxr_embed.saliency.faithfulness.random_saliency`,
  blobs about a CAM cell wide), ``n_random`` per image;
* ``"centre"``: a Gaussian at the centre of the image;
* ``"lungs"``: a fixed lung-field prior (two Gaussians at the typical centres of the right and
  left lung fields of a frontal film, :func:`lung_prior`); a prior of where the lungs are, not a
  segmentation.

Summaries are means over images with patient-bootstrap percentile intervals (patients resampled
with replacement, so several images of one patient move together); the differences between the
explanation and each baseline are bootstrapped on the same resamples (paired).
"""
from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._utils import require_int
from ..exceptions import BoxFormatError
from ..io.boxes import boxes_to_mask, load_boxes
from .faithfulness import energy_in_mask, random_saliency, saliency_iou

__all__ = ["evaluate_localization", "LocalizationResult", "lung_prior", "save_localization_overlays",
           "localization_html"]

logger = logging.getLogger(__name__)

BASELINES = ("random", "centre", "lungs")
METRICS = ("pointing", "energy", "iou")


@dataclass
class LocalizationResult:
    """What :func:`evaluate_localization` measured.

    Attributes
    ----------
    per_image : DataFrame
        One row per boxed image: ``image_id``, ``patient_id``, ``path``, ``n_boxes``,
        ``box_fraction`` (share of the image inside the boxes), ``score`` (the model's
        probability), ``peak_x``, ``peak_y`` (the map's maximum), ``pointing`` (1 hit, 0 miss;
        a tied maximum scores the share of its pixels inside),
        ``energy``, ``iou`` and the same three metrics of each baseline (``random_pointing`` ...),
        plus ``deletion_auc`` and ``random_deletion_auc`` when measured.
    summary : DataFrame
        One row per (map, metric): ``map`` (``"explanation"`` or a baseline), ``metric``, ``mean``,
        ``ci_low``, ``ci_high``, ``n_images``, ``n_patients``; ``"chance"`` rows hold the mean box
        fraction (the pointing and energy of a uniform map).
    differences : DataFrame
        Explanation minus each baseline, per metric, with paired patient-bootstrap intervals
        (``baseline``, ``metric``, ``difference``, ``ci_low``, ``ci_high``).
    method : str
        The explanation method actually used (``"auto"`` resolved).
    label : str or int or None
    tolerance : int
        Pixels of slack of the pointing game.
    maps : dict of str -> ndarray of shape (H, W)
        The explanation maps (only with ``keep_maps=True``).
    boxes : DataFrame
        The boxes used, in the images' coordinates (coordinates NaN when region masks were given).
    regions : dict of str -> ndarray of shape (H, W), bool
        The region masks given instead of boxes (only with ``keep_maps=True``).
    """

    per_image: Any
    summary: Any
    differences: Any
    method: str
    label: Any
    tolerance: int
    maps: dict = field(default_factory=dict, repr=False)
    boxes: Any = field(default=None, repr=False)
    regions: dict = field(default_factory=dict, repr=False)

    def value(self, metric: str = "pointing", map: str = "explanation") -> tuple[float, float, float]:
        """(mean, ci_low, ci_high) of one metric of one map.

        Examples
        --------
        >>> import pandas as pd
        >>> s = pd.DataFrame({"map": ["explanation"], "metric": ["pointing"], "mean": [0.5], "ci_low": [0.2],
        ...                   "ci_high": [0.8]})
        >>> LocalizationResult(None, s, None, "gradcam", None, 0).value()
        (0.5, 0.2, 0.8)
        """
        row = self.summary[(self.summary["map"] == map) & (self.summary["metric"] == metric)]
        if row.empty:
            raise KeyError(f"no {metric!r} of {map!r}; maps: {sorted(set(self.summary['map']))}")
        r = row.iloc[0]
        return float(r["mean"]), float(r["ci_low"]), float(r["ci_high"])

    def beats_baselines(self, metric: str = "pointing") -> bool:
        """Whether the explanation's lower interval bound lies above every baseline's mean."""
        low = self.value(metric)[1]
        return all(low > self.value(metric, b)[0] for b in set(self.summary["map"]) - {"explanation", "chance"})


# --------------------------------------------------------------------------- baselines
def lung_prior(shape) -> np.ndarray:
    """A smooth prior of the lung fields of a frontal chest radiograph: two Gaussians.

    Centred at 45 % of the height and 30 % / 70 % of the width, standard deviations 15 % of the
    height and 9 % of the width (typical positions on adult PA/AP films and the phantoms).

    Parameters
    ----------
    shape : tuple of int (H, W)

    Returns
    -------
    ndarray of shape (H, W), float32 in [0, 1]
        Peaks (value 1) at the two lung centres.

    Examples
    --------
    >>> p = lung_prior((100, 100))
    >>> round(float(p[45, 30]), 2), round(float(p[45, 50]), 2) < 0.2
    (1.0, True)
    """
    H, W = (int(s) for s in shape)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    sy, sx = 0.15 * H, 0.09 * W
    out = np.zeros((H, W))
    for cx in (0.30, 0.70):
        out = np.maximum(out, np.exp(-((yy + 0.5 - 0.45 * H) ** 2 / (2 * sy**2) + (xx + 0.5 - cx * W) ** 2 / (2 * sx**2))))
    return (out / out.max()).astype(np.float32)


def _centre_map(shape) -> np.ndarray:
    H, W = (int(s) for s in shape)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    s = 0.25 * min(H, W)
    return np.exp(-((yy + 0.5 - H / 2) ** 2 + (xx + 0.5 - W / 2) ** 2) / (2 * s**2)).astype(np.float32)


def _pointing(sal: np.ndarray, mask: np.ndarray, tolerance: int) -> float:
    """Pointing game with ties shared: the share of the map's maximal pixels inside the (dilated) mask."""
    if tolerance > 0:
        from scipy.ndimage import binary_dilation

        mask = binary_dilation(mask, structure=np.ones((2 * tolerance + 1,) * 2, bool))
    top = sal >= sal.max() - 1e-6 * max(abs(float(sal.max())), 1e-12)
    return float(mask[top].mean())


def _iou(sal, mask, top_fraction):
    if top_fraction is None:
        return saliency_iou(sal, mask)
    k = max(1, int(round(top_fraction * sal.size)))
    order = np.argsort(sal, axis=None)[::-1][:k]
    region = np.zeros(sal.size, bool)
    region[order] = True
    region = region.reshape(sal.shape)
    return float(np.logical_and(region, mask).sum() / np.logical_or(region, mask).sum())


def _metrics(sal, mask, tolerance, top_fraction) -> dict:
    return {"pointing": _pointing(sal, mask, tolerance), "energy": energy_in_mask(sal, mask),
            "iou": _iou(sal, mask, top_fraction)}


# --------------------------------------------------------------------------- bootstrap
def _bootstrap_means(values: np.ndarray, groups: np.ndarray, n_bootstrap: int, rng) -> np.ndarray:
    """Patient-bootstrap means: values (n_images, k) -> (n_bootstrap, k)."""
    _, codes = np.unique(groups.astype(str), return_inverse=True)
    n_groups = int(codes.max()) + 1
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_bootstrap)  # (B, G)
    w = counts[:, codes].astype(np.float64)  # (B, n)
    return (w @ values) / w.sum(axis=1, keepdims=True)


def _quantile(values: np.ndarray, q: float) -> float:
    """A bootstrap quantile; NaN without resamples (``n_bootstrap=0``)."""
    return float(np.quantile(values, q)) if values.size else float("nan")


def _summaries(per_image, maps_names, n_bootstrap, random_state, confidence):
    import pandas as pd

    groups = per_image["patient_id"].to_numpy()
    rng = np.random.default_rng(random_state)
    cols = [(m, k, k if m == "explanation" else f"{m}_{k}") for m in maps_names for k in METRICS]
    cols.append(("chance", "pointing", "box_fraction"))
    cols.append(("chance", "energy", "box_fraction"))
    values = per_image[[c for _, _, c in cols]].to_numpy(float)
    boot = _bootstrap_means(values, groups, n_bootstrap, rng)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    n_pat = len(set(groups))
    rows = []
    for j, (m, k, _) in enumerate(cols):
        rows.append({"map": m, "metric": k, "mean": float(values[:, j].mean()),
                     "ci_low": _quantile(boot[:, j], lo_q), "ci_high": _quantile(boot[:, j], hi_q),
                     "n_images": len(per_image), "n_patients": n_pat})
    diffs = []
    for m in maps_names[1:]:
        for k in METRICS:
            a, b = cols.index(("explanation", k, k)), cols.index((m, k, f"{m}_{k}"))
            d = boot[:, a] - boot[:, b]
            diffs.append({"baseline": m, "metric": k, "difference": float(values[:, a].mean() - values[:, b].mean()),
                          "ci_low": _quantile(d, lo_q), "ci_high": _quantile(d, hi_q)})
    return pd.DataFrame(rows), pd.DataFrame(diffs)


# --------------------------------------------------------------------------- main entry
def evaluate_localization(model, manifest, boxes, *, backbone=None, label=None, method: str = "auto",
                          finding: str | None = None, maps: Mapping[str, np.ndarray] | None = None,
                          tolerance: int = 0, top_fraction: float | None = None,
                          baselines: Sequence[str] = BASELINES, n_random: int = 10, deletion: bool = False,
                          deletion_steps: int = 20, n_bootstrap: int = 2000, confidence: float = 0.95,
                          random_state=0, keep_maps: bool = False, **explain_kwargs) -> LocalizationResult:
    """Score saliency maps against radiologists' boxes, beside random and anatomical baselines.

    Parameters
    ----------
    model : keras.Model or fitted classifier or ModelBundle or ensemble or None
        Anything :func:`cxr_embed.explain` accepts; ``None`` when ``maps`` are given.
    manifest : DataFrame
        ``image_id`` and ``path`` (``patient_id`` for the patient bootstrap; without it every image
        is its own patient). Only images with a box are evaluated.
    boxes : DataFrame or str or Path or mapping of image_id -> ndarray of shape (H, W), bool
        From :func:`cxr_embed.load_boxes` (in the images' pixel coordinates), or a box table's path
        (read with ``load_boxes(path, image_size=manifest)``, i.e. scaled to the stored images), or
        region masks (a phantom's lesion masks, a segmentation) in the images' coordinates.
    backbone : Backbone or list of Backbone, optional
        As in :func:`cxr_embed.explain`.
    label : str or int, optional
        The label explained.
    method : str, default "auto"
        Any of :data:`cxr_embed.saliency.maps.METHODS`.
    finding : str, optional
        Use only boxes of this finding (e.g. ``"pneumonia"``).
    maps : mapping of image_id -> ndarray of shape (H, W), optional
        Precomputed maps in the images' coordinates, scored instead of explaining ``model``.
    tolerance : int, default 0
        Pixels of slack of the pointing game (the boxes are dilated).
    top_fraction : float, optional
        IoU of the top ``top_fraction`` of the pixels with the boxes; default as many top pixels as
        the boxes cover.
    baselines : sequence of {"random", "centre", "lungs"}
    n_random : int, default 10
        Random maps per image (their metrics are averaged per image).
    deletion : bool, default False
        Also measure the deletion AUC (:func:`cxr_embed.deletion_auc`, in the model input's
        coordinates) of each explanation and of one random map on the same image (needs ``model``;
        not for ensembles).
    deletion_steps : int, default 20
    n_bootstrap : int, default 2000
        Patient-bootstrap resamples.
    confidence : float, default 0.95
    random_state : int, default 0
        Seeds the random maps and the bootstrap.
    keep_maps : bool, default False
        Keep the maps in the result (needed by :func:`save_localization_overlays`).
    **explain_kwargs
        Passed to :func:`cxr_embed.explain` (``layer``, ``faster_n``, ``batch_size`` ...).

    Returns
    -------
    LocalizationResult

    Raises
    ------
    BoxFormatError
        When no manifest image has a box, or a box lies outside its image (boxes in another frame).

    Examples
    --------
    >>> import numpy as np, pandas as pd, tempfile, os
    >>> from PIL import Image
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.png")
    >>> Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(p)
    >>> man = pd.DataFrame({"image_id": ["a"], "path": [p], "patient_id": ["p1"]})
    >>> box = pd.DataFrame({"image_id": ["a"], "finding": ["x"], "x": [10.0], "y": [10.0], "w": [8.0], "h": [8.0]})
    >>> m = np.zeros((64, 64), np.float32); m[14, 14] = 1
    >>> r = evaluate_localization(None, man, box, maps={"a": m}, n_bootstrap=50)
    >>> r.per_image["pointing"].tolist(), r.value("pointing", "centre")[0]
    ([1.0], 0.0)
    """
    import pandas as pd

    from ..io.images import read_image

    if maps is None and model is None:
        raise ValueError("evaluate_localization needs a model to explain or maps={image_id: map}")
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; choose among {BASELINES}")
    if "random" in baselines:
        require_int(n_random, "n_random", 1, also=" with the random baseline",
                    hint=" (leave 'random' out of baselines to skip it)")
    if top_fraction is not None and not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction is a share of the pixels in (0, 1], got {top_fraction!r}")
    region_masks = None
    if isinstance(boxes, Mapping):
        region_masks = {str(k): np.asarray(v, bool) for k, v in boxes.items()}
        boxes = pd.DataFrame({"image_id": list(region_masks), "finding": finding or "region", "x": np.nan,
                              "y": np.nan, "w": np.nan, "h": np.nan})
    elif not hasattr(boxes, "columns"):
        boxes = load_boxes(boxes, image_size=manifest, finding=finding)
    elif finding is not None:
        boxes = boxes[boxes["finding"].astype(str).str.lower() == str(finding).lower()]
    for need in ("image_id", "x", "y", "w", "h"):
        if need not in boxes.columns:
            raise BoxFormatError(f"boxes need columns image_id, x, y, w, h (load_boxes makes them); missing {need!r}")
    if "image_id" not in manifest.columns or "path" not in manifest.columns:
        raise ValueError("manifest needs image_id and path columns (cxr_embed.load_manifest makes them)")
    boxed = set(boxes["image_id"].astype(str))
    rows_m = manifest[manifest["image_id"].astype(str).isin(boxed)]
    if rows_m.empty:
        raise BoxFormatError(
            f"no manifest image has a box: box ids look like {sorted(boxed)[:3]}, manifest ids like "
            f"{manifest['image_id'].astype(str).head(3).tolist()}; fix: the ids must match (file names without suffix)")

    explainer = None
    if maps is None:
        from .maps import _Explainer

        explainer = _Explainer(model, backbone=backbone, method=method, label=label, **explain_kwargs)
        method = explainer.method
    rng = np.random.default_rng(random_state)
    records, kept, kept_regions = [], {}, {}
    for _, row in rows_m.iterrows():
        image_id = str(row["image_id"])
        image, _ = read_image(row["path"])
        H, W = image.shape
        own = boxes[boxes["image_id"].astype(str) == image_id]
        b = own[["x", "y", "w", "h"]].to_numpy(float)
        if region_masks is not None:
            mask = region_masks[image_id]
            if mask.shape != (H, W) or not mask.any():
                raise ValueError(f"the region mask of {image_id!r} has shape {mask.shape} (image {(H, W)}) or is empty")
        elif (b[:, 0] < -1).any() or (b[:, 1] < -1).any() or (b[:, 0] + b[:, 2] > W + 1).any() or \
                (b[:, 1] + b[:, 3] > H + 1).any():
            raise BoxFormatError(f"a box of {image_id!r} reaches outside its {H} x {W} image; fix: read the boxes "
                                 "with load_boxes(..., image_size=manifest) to scale them to the stored images")
        else:
            mask = boxes_to_mask(b, (H, W))
        rec: dict[str, Any] = {"image_id": image_id, "patient_id": str(row.get("patient_id", image_id)),
                               "path": str(row["path"]), "n_boxes": len(b), "box_fraction": float(mask.mean())}
        sal = None
        if maps is not None:
            if image_id not in maps:
                raise ValueError(f"maps has no entry for boxed image {image_id!r}")
            sal = np.asarray(maps[image_id], np.float64)
            if sal.shape != (H, W):
                raise ValueError(f"map of {image_id!r} has shape {sal.shape}, its image {(H, W)}")
            rec["score"] = np.nan
        else:
            s = explainer(image, str(row["path"]))
            sal = np.asarray(s.map, np.float64)
            rec["score"] = s.score
            if deletion:
                rec.update(explainer.deletion(image, s, rng, steps=deletion_steps))
        peak = np.unravel_index(int(np.argmax(sal)), sal.shape)
        rec["peak_y"], rec["peak_x"] = int(peak[0]), int(peak[1])
        rec.update(_metrics(sal, mask, tolerance, top_fraction))
        if "random" in baselines:
            smooth = max(H, W) / 16.0
            rand = [_metrics(random_saliency((H, W), smooth=smooth, random_state=rng), mask, tolerance, top_fraction)
                    for _ in range(n_random)]
            rec.update({f"random_{k}": float(np.mean([r[k] for r in rand])) for k in METRICS})
        if "centre" in baselines:
            rec.update({f"centre_{k}": v for k, v in _metrics(_centre_map((H, W)), mask, tolerance, top_fraction).items()})
        if "lungs" in baselines:
            rec.update({f"lungs_{k}": v for k, v in _metrics(lung_prior((H, W)), mask, tolerance, top_fraction).items()})
        records.append(rec)
        if keep_maps:
            kept[image_id] = sal.astype(np.float32)
            if region_masks is not None:
                kept_regions[image_id] = mask
    per_image = pd.DataFrame(records)
    names = ["explanation", *[b for b in BASELINES if b in baselines]]
    summary, differences = _summaries(per_image, names, n_bootstrap, random_state, confidence)
    if deletion and "deletion_auc" in per_image:
        extra, _ = _summaries_deletion(per_image, n_bootstrap, random_state, confidence)
        summary = pd.concat([summary, extra], ignore_index=True)
    return LocalizationResult(per_image, summary, differences, method if maps is None else "precomputed", label,
                              tolerance, kept, boxes, kept_regions)


def _summaries_deletion(per_image, n_bootstrap, random_state, confidence):
    import pandas as pd

    values = per_image[["deletion_auc", "random_deletion_auc"]].to_numpy(float)
    boot = _bootstrap_means(values, per_image["patient_id"].to_numpy(), n_bootstrap, np.random.default_rng(random_state))
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    rows = [{"map": m, "metric": "deletion_auc", "mean": float(values[:, j].mean()),
             "ci_low": _quantile(boot[:, j], lo), "ci_high": _quantile(boot[:, j], hi),
             "n_images": len(per_image), "n_patients": per_image["patient_id"].nunique()}
            for j, m in enumerate(("explanation", "random"))]
    d = boot[:, 0] - boot[:, 1]
    rows.append({"map": "explanation - random", "metric": "deletion_auc", "mean": float(values[:, 0].mean() - values[:, 1].mean()),
                 "ci_low": _quantile(d, lo), "ci_high": _quantile(d, hi),
                 "n_images": len(per_image), "n_patients": per_image["patient_id"].nunique()})
    return pd.DataFrame(rows), None


# --------------------------------------------------------------------------- overlays and HTML
def _caption(row) -> str:
    hit = "inside" if row["pointing"] >= 0.5 else "outside"
    return f"peak {hit} the region | energy inside {row['energy']:.2f} (its area {row['box_fraction']:.2f})"


def save_localization_overlays(result: LocalizationResult, out_dir, *, n: int = 3) -> dict:
    """Overlays of the best and worst localised images, boxes drawn, the peak marked, a caption.

    Parameters
    ----------
    result : LocalizationResult
        From :func:`evaluate_localization` with ``keep_maps=True``.
    out_dir : str or Path
        Created if needed.
    n : int, default 3
        Images of each kind (ranked by energy inside the boxes).

    Returns
    -------
    dict of str -> Path
        Caption (``"best 1: <image_id> ..."``) -> PNG, best first.
    """
    from ..io.images import read_image
    from .maps import Saliency, save_overlay

    if not result.maps:
        raise ValueError("the result holds no maps; run evaluate_localization(..., keep_maps=True)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = result.per_image.sort_values("energy", ascending=False)
    chosen = [("best", r) for r in list(table.head(n).itertuples(index=False))]
    chosen += [("worst", r) for r in list(table.tail(min(n, max(len(table) - n, 0))).itertuples(index=False))[::-1]]
    written = {}
    for k, (kind, r) in enumerate(chosen):
        row = r._asdict()
        image, _ = read_image(row["path"])
        sal = Saliency(result.maps[row["image_id"]], result.method, result.label,
                       float(row["score"]) if np.isfinite(row["score"]) else float("nan"), None, image, row["path"])
        b = result.boxes[result.boxes["image_id"].astype(str) == row["image_id"]].dropna(subset=["x", "y", "w", "h"])
        label = f" | {result.label}" if result.label is not None else ""
        score = f" | p={row['score']:.2f}" if np.isfinite(row["score"]) else ""
        title = f"{kind}: {row['image_id']} | {result.method}{label}{score}"
        safe = row["image_id"].replace("/", "_").replace("\\", "_")
        png = save_overlay(sal, out / f"{kind}_{k}_{safe}.png", boxes=b if len(b) else None, title=title,
                           caption=_caption(row), contour=result.regions.get(row["image_id"]))
        written[title] = png
    return written


def localization_html(result: LocalizationResult, overlays: Mapping[str, Any] | None = None, *,
                      title: str = "Localisation against radiologists' boxes") -> str:
    """A self-contained HTML fragment (a ``<section>``): summary table, differences, overlays inline.

    Parameters
    ----------
    result : LocalizationResult
    overlays : mapping of caption -> PNG path, optional
        From :func:`save_localization_overlays`; embedded as base64 data URIs.
    title : str

    Returns
    -------
    str
        HTML without ``<html>``/``<body>``, to be placed in any report.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"map": ["explanation"], "metric": ["pointing"], "mean": [0.5], "ci_low": [0.2],
    ...                   "ci_high": [0.8], "n_images": [4], "n_patients": [3]})
    >>> localization_html(LocalizationResult(pd.DataFrame(), s, pd.DataFrame(), "gradcam", None, 0)).startswith("<section")
    True
    """
    s = result.summary
    esc = html.escape
    parts = [f'<section class="cxr-localization"><h2>{esc(title)}</h2>']
    n_img = int(s["n_images"].iloc[0]) if len(s) and "n_images" in s else 0
    n_pat = int(s["n_patients"].iloc[0]) if len(s) and "n_patients" in s else 0
    parts.append(f"<p>Method <code>{esc(str(result.method))}</code>, label <code>{esc(str(result.label))}</code>; "
                 f"{n_img} images of {n_pat} patients; pointing-game tolerance {result.tolerance} px. Means with "
                 "patient-bootstrap 95 % intervals. Chance: the boxes' share of the image.</p>")
    parts.append("<table><tr><th>map</th><th>metric</th><th>mean</th><th>95 % CI</th></tr>")
    for _, r in s.iterrows():
        parts.append(f"<tr><td>{esc(str(r['map']))}</td><td>{esc(str(r['metric']))}</td><td>{r['mean']:.3f}</td>"
                     f"<td>[{r['ci_low']:.3f}, {r['ci_high']:.3f}]</td></tr>")
    parts.append("</table>")
    d = result.differences
    if d is not None and len(d):
        parts.append("<table><tr><th>explanation minus</th><th>metric</th><th>difference</th><th>95 % CI</th></tr>")
        for _, r in d.iterrows():
            parts.append(f"<tr><td>{esc(str(r['baseline']))}</td><td>{esc(str(r['metric']))}</td>"
                         f"<td>{r['difference']:+.3f}</td><td>[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]</td></tr>")
        parts.append("</table>")
    for caption, png in (overlays or {}).items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}"/>'
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)
