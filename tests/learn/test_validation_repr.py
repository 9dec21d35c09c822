"""CVResult and ExternalResult render in Jupyter as the report's tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_embed.learn.validation import CVResult, ExternalResult


def test_results_render_as_tables_for_people():
    summary = pd.DataFrame({"label": ["opacity", "effusion"], "auc": [0.86812, 0.7], "ci_low": [0.8214, 0.6],
                            "ci_high": [0.90999, 0.8], "fold_auc_mean": [0.85, 0.69], "fold_auc_std": [0.02, 0.05],
                            "n": [120, 120], "n_pos": [50, 40], "n_patients": [60, 60]}).set_index("label")
    cv = CVResult(["opacity", "effusion"], np.zeros((1, 120, 2)), np.zeros((120, 2)), np.arange(120),
                  pd.DataFrame(), summary)
    html = cv._repr_html_()
    assert html.startswith('<div class="cxr">') and "<td>opacity</td>" in html
    assert "0.868 [0.821, 0.910]" in html and "0.86812" not in html and "patients" in html
    ext = ExternalResult(None, ["opacity"], np.zeros((5, 1)), np.zeros((5, 1)), pd.DataFrame(
        {"setting": ["internal", "external"], "label": "opacity", "auc": [0.9, 0.75], "ci_low": [0.85, 0.6],
         "ci_high": [0.95, 0.88], "n": [120, 60], "n_pos": [50, 20], "n_patients": [60, 30]}))
    html = ext._repr_html_()
    assert "0.750 [0.600, 0.880]" in html and "external" in html
