"""save_overlay's default title names what is known: never "None" for a single-label model's map."""
from __future__ import annotations

import numpy as np
import pytest

from cxr_embed.saliency.maps import Saliency, save_overlay


@pytest.mark.parametrize("label, title", [(None, "gradcam | p=0.87"), ("opacity", "gradcam | opacity | p=0.87"),
                                          (0, "gradcam | 0 | p=0.87")])
def test_default_title(tmp_path, monkeypatch, label, title):
    from matplotlib.axes import Axes

    titles = []
    orig = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **kw: titles.append(t) or orig(self, t, *a, **kw))
    m = np.zeros((8, 8), np.float32)
    path = save_overlay(Saliency(m, "gradcam", label, 0.871, m, np.zeros((8, 8))), tmp_path / "o.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert titles == [title]
