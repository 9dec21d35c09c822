"""Shared by the localisation benchmarks: the boxed NIH pneumonia images and the rounding of their results."""
from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_EMBED_SHARED_DATA", ROOT.parent / "shared" / "data"))
FOLDER = SHARED / "nih_cxr14_pneumonia"


def load_boxed(*, scaled: bool = True):
    """(manifest, pneumonia boxes) of ``nih_cxr14_pneumonia``, or None after printing the JSON error.

    ``scaled``: boxes in the stored images' pixels (``load_boxes(image_size=manifest)``); otherwise as
    the table has them.
    """
    import cxr_embed as cx

    if not (FOLDER / "bboxes.csv").is_file():
        print(json.dumps({"error": f"{FOLDER} not found (set CXR_EMBED_SHARED_DATA)"}))
        return None
    m = cx.load_manifest(FOLDER / "labels.csv")
    boxes = cx.load_boxes(FOLDER / "bboxes.csv", finding="pneumonia", **({"image_size": m} if scaled else {}))
    return m, boxes


def ci(result, metric: str = "pointing", map_name: str = "explanation") -> list[float]:
    """[mean, ci_low, ci_high] of one metric of one map of a LocalizationResult, rounded to 3 places."""
    return [round(float(v), 3) for v in result.value(metric, map_name)]
