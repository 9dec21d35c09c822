"""ImageView: its own fingerprint and store group; perturbs before and mirrors after preparation."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.embed.views import ImageView  # noqa: E402
from cxr_embed.io.perturbations import perturb  # noqa: E402


@pytest.fixture(scope="module")
def bb():
    keras.utils.set_random_seed(0)
    return cxr_embed.Backbone("mobilenet_v2", weights=None, input_size=32)


def test_views_have_distinct_fingerprints_and_describe_themselves(bb):
    views = [ImageView(bb, flip=True), ImageView(bb, perturbation="jpeg"),
             ImageView(bb, perturbation={"name": "jpeg", "quality": 10}), ImageView(bb, flip=True, perturbation="jpeg")]
    fps = {bb.fingerprint, *(v.fingerprint for v in views)}
    assert len(fps) == 5
    cfg = views[3].config
    assert cfg["view"] == {"flip": True, "perturbation": {"name": "jpeg", "quality": 30}}
    assert cfg["fingerprint"] == views[3].fingerprint and cfg["name"] == bb.name
    assert ImageView(bb, flip=True).fingerprint == views[0].fingerprint
    with pytest.raises(TypeError, match="not another view"):
        ImageView(views[0], flip=True)


def test_prepare_perturbs_then_mirrors(bb):
    img = np.random.default_rng(0).random((50, 40)).astype(np.float32)
    got = ImageView(bb, flip=True, perturbation="gamma").prepare(img)
    want = bb.prepare(perturb(img, "gamma"))[:, ::-1]
    np.testing.assert_array_equal(got, want)


def test_extract_stores_each_view_in_its_own_group_through_prepare(bb, tmp_path):
    from PIL import Image

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 30)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    store = tmp_path / "s.h5"
    view = ImageView(bb, perturbation={"name": "lowres", "size": 8})
    for obj in (bb, view):
        r = cxr_embed.extract(paths, obj, store, workers=2, progress=False)
        assert r.n_done == 3
    s = cxr_embed.EmbeddingStore(store)
    assert set(s.fingerprints()) == {bb.fingerprint, view.fingerprint}
    _, plain = s.load(bb, paths)
    _, low = s.load(view.fingerprint, paths)
    # the perturbation was applied (worker processes reading files directly would have skipped it)
    assert np.abs(plain - low).max() > 1e-2 * np.abs(plain).max()
    want = bb.embed(np.stack([view.prepare(cxr_embed.read_image(p)[0]) for p in paths]))
    np.testing.assert_allclose(low, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
