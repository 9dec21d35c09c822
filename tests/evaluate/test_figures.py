"""Tests of cxr_embed.evaluate.figures: one palette everywhere, legends off the curves, the forest plot."""
from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

from cxr_embed.evaluate.figures import PALETTE, color_map, plot_calibration, plot_forest, plot_roc
from cxr_embed.evaluate.metrics import evaluate_predictions


def _hex(c) -> str:
    return mcolors.to_hex(c).upper()


def test_color_map_is_stable_and_keeps_fixed_colours():
    names = [f"m{i}" for i in range(len(PALETTE) + 2)]
    cmap = color_map(names)
    assert [cmap[n] for n in names[:len(PALETTE)]] == list(PALETTE)
    assert cmap[names[-2]] == PALETTE[0]            # cycles beyond the palette
    assert color_map(["b", "a"]) == color_map(["b", "a", "b"])
    fixed = color_map(["a", "b", "c"], colors={"b": PALETTE[0]})
    assert fixed["b"] == PALETTE[0] and PALETTE[0] not in (fixed["a"], fixed["c"]) and fixed["a"] != fixed["c"]


@pytest.fixture
def two_models():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200).astype(float)
    s = np.column_stack([np.clip(y * 0.3 + rng.uniform(0, 0.7, 200), 0, 1), rng.uniform(0, 1, 200)])
    return np.column_stack([y, y]), s


@pytest.mark.parametrize("plot", [plot_roc, plot_calibration])
def test_curves_take_the_shared_colours_and_keep_the_legend_off_the_axes(plot, two_models):
    Y, S = two_models
    colors = {"good": "#123456", "noise": "#ABCDEF"}
    fig = plot(Y, S, labels=["good", "noise"], colors=colors)
    ax = fig.axes[0]
    drawn = {line.get_label().split(" (")[0]: _hex(line.get_color()) for line in ax.get_lines()}
    assert drawn["good"] == "#123456" and drawn["noise"] == "#ABCDEF"
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    axes = ax.get_window_extent()
    assert legend.y1 <= axes.y0 + 1, "the legend must sit under the axes, not on the curves"


def _table():
    rows = []
    for setting, shift in (("internal", 0.0), ("external", -0.1)):
        for a, base in (("rf", 0.85), ("logreg", 0.8), ("stacking", 0.7)):
            for lab, d in (("opacity", 0.0), ("effusion", 0.02), ("macro", 0.01)):
                auc = base + shift + d
                rows.append({"setting": setting, "approach": a, "label": lab, "auc": auc,
                             "ci_low": auc - 0.05, "ci_high": min(auc + 0.05, 1.0)})
    rows[-1]["ci_low"] = rows[-1]["ci_high"] = np.nan      # an estimate without an interval: a dot alone
    return pd.DataFrame(rows)


def test_forest_plot_panels_groups_and_colours():
    colors = color_map(["logreg", "rf", "stacking"])
    fig = plot_forest(_table(), colors=colors, title="Comparison")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["internal", "external"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["macro", "opacity", "effusion"]
    # one interval line + one marker per (approach, label) in each panel, except the missing interval
    for ax, n_ci in zip(axes, (9, 8)):
        markers = [ln for ln in ax.get_lines() if ln.get_marker() in ("o", "D")]
        intervals = [ln for ln in ax.get_lines() if ln.get_marker() in ("None", "", None) and ln.get_linestyle() == "-"]
        assert len(markers) == 9 and len(intervals) == n_ci
        assert {_hex(ln.get_color()) for ln in markers} == {c.upper() for c in colors.values()}
        macro = [ln for ln in markers if ln.get_marker() == "D"]
        assert len(macro) == 3 and min(ln.get_ydata()[0] for ln in macro) > max(
            ln.get_ydata()[0] for ln in markers if ln.get_marker() == "o")   # macro on top
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["logreg", "rf", "stacking"]   # the palette's order
    assert fig._suptitle.get_text() == "Comparison"
    # order= puts the best first within a group
    first = plot_forest(_table(), colors=colors, order=["rf", "logreg", "stacking"])
    top = max(first.axes[0].get_lines(), key=lambda ln: ln.get_ydata()[0] if ln.get_marker() == "D" else -1e9)
    assert _hex(top.get_color()) == colors["rf"].upper()


def test_forest_plot_of_one_model_from_the_tidy_metrics(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 2)).astype(float)
    m = evaluate_predictions(y, np.clip(y * 0.3 + rng.uniform(0, 0.7, y.shape), 0, 1), labels=["a", "b"],
                             n_bootstrap=30, random_state=0)
    fig = plot_forest(m, hue=None, panel=None, color="#D55E00", path=tmp_path / "forest.png")
    assert (tmp_path / "forest.png").read_bytes()[:4] == b"\x89PNG"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["macro", "a", "b"]
    assert {_hex(ln.get_color()) for ln in fig.axes[0].get_lines() if ln.get_linestyle() != "--"} == {"#D55E00"}
    assert not fig.legends
    with pytest.raises(ValueError, match="no column"):
        plot_forest(pd.DataFrame({"label": ["a"], "auc": [0.5]}))
    with pytest.raises(ValueError, match="no rows"):
        plot_forest(_table().iloc[:0])
