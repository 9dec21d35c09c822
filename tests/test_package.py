"""Package-level promises: cheap import without side effects, every public name documented."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cxr_embed
from cxr_embed.io.preprocessing import prepare_image, preprocessing_config

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_cheap_and_side_effect_free():
    code = (
        "import os, sys, warnings; before = dict(os.environ); f = list(warnings.filters);"
        "import cxr_embed;"
        "heavy = [m for m in ('tensorflow', 'keras', 'xgboost', 'matplotlib', 'h5py', 'sklearn') if m in sys.modules];"
        "assert not heavy, heavy;"
        "assert dict(os.environ) == before, 'environment changed';"
        "assert list(warnings.filters) == f, 'warning filters changed'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version():
    assert re.match(r"^\d+\.\d+\.\d+", cxr_embed.__version__)


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        cxr_embed.does_not_exist  # noqa: B018


@pytest.mark.parametrize("name", sorted(cxr_embed._LAZY))
def test_every_public_name_resolves(name):
    module = importlib.import_module(cxr_embed._LAZY[name])
    assert hasattr(module, name), f"{cxr_embed._LAZY[name]} does not define {name}"
    assert name in getattr(module, "__all__", ()), f"{name} missing from {module.__name__}.__all__"


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("name", sorted(set(cxr_embed.__all__) - {"__version__"}))
def test_every_public_name_is_documented(name):
    assert re.search(rf"\b{re.escape(name)}\b", _docs_text()), f"{name} does not appear in docs/"


def test_every_public_function_has_a_docstring():
    for name in cxr_embed._LAZY:
        obj = getattr(cxr_embed, name)
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name


# --- preprocessing ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["pad", "resize", "crop"])
def test_prepare_image_shapes_and_range(mode):
    img = np.linspace(0, 1, 100 * 60, dtype=np.float32).reshape(100, 60)
    out = prepare_image(img, (32, 48), mode=mode)
    assert out.shape == (32, 48, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out[..., 0], out[..., 2])


def test_prepare_image_pad_keeps_aspect_and_pads_with_air():
    img = np.ones((100, 50), np.float32)
    out = prepare_image(img, (64, 64), mode="pad")[..., 0]
    assert out[:, :10].max() == 0 and out[:, -10:].max() == 0  # black side bars
    assert np.allclose(out[:, 20:44], 255)


def test_prepare_image_crop_fills_frame():
    img = np.ones((100, 50), np.float32)
    assert prepare_image(img, (64, 64), mode="crop").min() == 255


def test_prepare_image_errors():
    with pytest.raises(ValueError, match="2-D"):
        prepare_image(np.zeros((4, 4, 3)), 8)
    with pytest.raises(ValueError, match="resize mode"):
        prepare_image(np.zeros((4, 4)), 8, mode="stretch")


def test_preprocessing_config_is_json_and_distinguishes_modes():
    import json

    a, b = preprocessing_config((224, 224), "pad"), preprocessing_config((224, 224), "crop")
    assert json.loads(json.dumps(a)) == a and a != b


@pytest.mark.parametrize("mode", ["pad", "resize", "crop"])
def test_restore_map_inverts_prepare_geometry(mode):
    from cxr_embed.io.preprocessing import restore_map

    img = np.zeros((120, 80), np.float32)
    img[30:50, 20:40] = 1.0  # a bright square
    prepared = prepare_image(img, (64, 64), mode=mode)[..., 0] / 255.0
    back = restore_map(prepared, img.shape, mode=mode)
    assert back.shape == img.shape
    peak = np.unravel_index(np.argmax(back), back.shape)
    assert 28 <= peak[0] <= 52 and 18 <= peak[1] <= 42
    assert np.corrcoef(back.ravel(), img.ravel())[0, 1] > 0.9


def test_public_functions_are_not_shadowed_by_submodules():
    """`import cxr_embed.x` binds the submodule on the package; no public function may share its name."""
    code = (
        "import importlib, pkgutil, types, cxr_embed;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(cxr_embed.__path__, 'cxr_embed.')"
        " if '.cli' not in m.name];"
        "bad = [n for n in cxr_embed._LAZY if isinstance(getattr(cxr_embed, n), types.ModuleType)];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
