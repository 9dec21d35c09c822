"""The page of a transfer comparison: the answer first, then the evidence.

Used by :class:`cxr_embed.transfer.compare.ComparisonResult` (``write_report`` and
``_repr_html_``); it reads the result's attributes only. Reading order of the page:

1. a summary: the best approach internally and externally, AUC [95 % CI] and the DeLong p
   against the runner-up, one sentence each;
2. the comparison: a forest plot (AUC and CI per approach and label, internal and external
   side by side), one table per setting, the full table folded with its CSV, then ROC and
   calibration curves per setting and label, side by side;
3. the evaluation of the best internal approach (forest plot of its AUC per label, table);
4. further tables, the importance of the image and of each clinical variable (when given),
   images (saliency overlays in a grid), notes, wall times, all metrics.

Every figure takes its colours from one mapping, approach -> colour (:meth:`colors`), so an
approach has the same colour everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__: list[str] = []

_SETTINGS = {
    "internal": ("Internally", "out-of-fold on the target, same patient-grouped folds"),
    "external": ("Externally", "refitted on all target data, scored on the external set"),
}
_SHORT = {"internal": "out-of-fold", "external": "on the external set"}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in str(name))


def colors(result) -> dict[str, str]:
    """Approach -> colour, in the order the approaches ran."""
    from ..evaluate.figures import color_map

    return color_map(list(result.oof) + list(result.table["approach"].unique()))


def summary_sentences(result) -> list[str]:
    """One sentence per setting: the best approach, its AUC [CI], the runner-up and DeLong p."""
    from ..evaluate.formatting import format_ci, format_p

    out = []
    multi = len(result.labels) > 1
    for setting, (adverb, _) in _SETTINGS.items():
        if not (result.table["setting"] == setting).any():
            continue
        s = result.summary(setting).dropna(subset=["auc"])
        if s.empty:
            continue
        best = s.iloc[0]
        what = "macro AUC" if multi else "AUC"
        text = (f"{adverb} ({_SHORT[setting]}), {best['approach']} is best: {what} "
                f"{format_ci(best['auc'], best['ci_low'], best['ci_high'])}")
        if len(s) < 2:
            out.append(text + " (the only approach).")
            continue
        second = s.iloc[1]
        if multi:
            ps = [f"{format_p(second[f'p[{lab}]'])} for {lab}" for lab in result.labels
                  if pd.notna(second.get(f"p[{lab}]"))]
            p_text = f"DeLong p {', '.join(ps)}" if ps else "DeLong p not estimable"
        else:
            p_text = (f"DeLong p {format_p(second['delong_p'])}" if pd.notna(second["delong_p"])
                      else "DeLong p not estimable")
        out.append(f"{text}; the runner-up, {second['approach']}, reaches "
                   f"{format_ci(second['auc'], second['ci_low'], second['ci_high'])} ({p_text}).")
    clinical = list(getattr(result, "clinical", None) or [])
    if clinical:
        text = f"Clinical columns {', '.join(clinical)} were used beside the embeddings"
        ignored = sorted(set(result.families.values()) - {"embeddings"})
        if "embeddings" not in result.families.values():
            text = f"Clinical columns {', '.join(clinical)} were not used: {' and '.join(ignored)} use the images alone"
        elif ignored:
            text += f"; {' and '.join(ignored)} used the images alone (not like for like)"
        out.append(text + ".")
    return out


def setting_table(result, setting: str):
    """One row per approach of ``setting``, best first, formatted for people."""
    from ..evaluate.formatting import FormattedTable

    s = result.summary(setting)
    multi = len(result.labels) > 1
    cols = ["approach", "family"] + [c for c in s.columns if c not in ("approach", "family")]
    s = s[cols]
    rename = {"delong_p": "DeLong p vs best", "AUC [95% CI]": "macro AUC [95% CI]" if multi else "AUC [95% CI]"}
    rename.update({f"p[{lab}]": f"p vs best: {lab}" for lab in result.labels})
    _, how = _SETTINGS.get(setting, (setting, ""))
    return FormattedTable.from_frame(s, caption=f"{setting.capitalize()}: {how}", rename=rename,
                                     csv_name=f"comparison_{setting}.csv")


def _forest(result, cmap):
    from ..evaluate.figures import plot_forest

    order = list(result.summary("internal")["approach"])
    return plot_forest(result.table, colors=cmap, order=order)


def build_page(result, *, title: str, fragment: bool = False, out: Path | None = None):
    """The summary and the comparison section (all that ``_repr_html_`` shows); ``out`` gets ``forest.png``."""
    from ..evaluate.report import Report

    cmap = colors(result)
    page = Report(title, subtitle=f"{len(result.image_ids)} target images, labels {', '.join(result.labels)}"
                  if fragment else None)
    page.add_summary(summary_sentences(result))
    page.add_section("Comparison")
    fig = _forest(result, cmap)
    if out is not None:
        fig.savefig(out / "forest.png", bbox_inches="tight")
    page.add_figure(out / "forest.png" if out is not None else fig,
                    "AUC with its 95% patient-level bootstrap CI per approach and label (diamond: macro AUC; "
                    "dashed: chance). DeLong p in the tables compares each approach with the best of its setting "
                    "on the same images (treated as independent).")
    fig.clf()
    for setting in _SETTINGS:
        if (result.table["setting"] == setting).any():
            page.add_table(setting_table(result, setting))
    return page, cmap


def _curves(result, page, out: Path, cmap: Mapping[str, str]) -> None:
    from ..evaluate.report import plot_calibration, plot_roc

    for setting, truth, scores in (("internal", result.y_true, result.oof),
                                   ("external", result.y_external, result.external)):
        if truth is None or not scores:
            continue
        page.add_subsection(f"ROC and calibration, {setting}")
        names = list(scores)
        for j, lab in enumerate(result.labels):
            Y = np.column_stack([truth[:, j]] * len(names))
            S = np.column_stack([scores[n][:, j] for n in names])
            n = int(np.sum(np.isfinite(truth[:, j])))
            roc = plot_roc(Y, S, labels=names, path=out / f"roc_{setting}_{_safe(lab)}.png",
                           title=f"{lab}: {setting}", colors=cmap)
            cal = plot_calibration(Y, S, labels=names, n_bins=10 if n >= 300 else 5,
                                   path=out / f"calibration_{setting}_{_safe(lab)}.png",
                                   title=f"{lab}: {setting}, calibration", colors=cmap)
            page.add_figures([(out / f"roc_{setting}_{_safe(lab)}.png", f"ROC, {setting}: {lab}"),
                              (out / f"calibration_{setting}_{_safe(lab)}.png", f"Calibration, {setting}: {lab}")])
            roc.clf()
            cal.clf()


def write(result, out_dir, *, title: str, images: Mapping[str, Any] | None, tables: Mapping[str, pd.DataFrame] | None,
          notes: str | Sequence[str] | None, n_bootstrap: int, random_state, importance=None) -> Path:
    """Write ``index.html`` and its side files (see ``ComparisonResult.write_report``)."""
    from ..evaluate.formatting import FormattedTable, format_metrics_table
    from ..evaluate.metrics import evaluate_predictions, metrics_to_json
    from ..evaluate.report import check_image, check_importance

    if importance is not None:
        check_importance(importance)  # a malformed table fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in (images or {}).values():
        check_image(path)  # a missing image fails before anything is written
    result.table.to_csv(out / "comparison.csv", index=False)
    oof = pd.DataFrame({"image_id": result.image_ids, "patient_id": result.groups, "fold": result.fold})
    for name, p in result.oof.items():
        for j, lab in enumerate(result.labels):
            oof[f"{name}:{lab}"] = p[:, j]
    oof.to_csv(out / "oof.csv", index=False)

    page, cmap = build_page(result, title=title, out=out)
    full = FormattedTable.from_frame(result.table, caption="Every approach, setting and label", max_rows=0,
                                     csv_name="comparison.csv")
    page.add_table(full)
    _curves(result, page, out, cmap)

    best = result.best("internal")
    metrics = evaluate_predictions(result.y_true, result.oof[best], labels=result.labels, groups=result.groups,
                                   n_bootstrap=n_bootstrap, random_state=random_state)
    metrics_to_json(metrics, out / "metrics.json")
    page.add_evaluation(metrics, heading=f"Best internal approach: {best}", color=cmap.get(best),
                        text="Out-of-fold predictions on the target; all its metrics are in the last section.")
    for name, df in (tables or {}).items():
        page.add_section(str(name))
        page.add_table(df if isinstance(df, FormattedTable) else pd.DataFrame(df), csv_name=_safe(name) + ".csv")
    if importance is not None:
        page.add_importance(importance, out=out)
    if images:
        page.add_section("Images")
        page.add_gallery(images)
    page.add_section("Run details")
    paras = list(result.notes) + ([notes] if isinstance(notes, str) else list(notes or []))
    if paras:
        page.add_text(paras)
    stages = pd.DataFrame({"stage": list(result.timings), "seconds": list(result.timings.values())})
    page.add_table(stages, caption="Wall time per stage (s)", max_rows=8, csv_name="timings.csv")
    page.add_section(f"All metrics of {best}")
    page.add_table(format_metrics_table(metrics, max_rows=0, caption="All metrics"))
    return page.write(out)
