"""search_pipeline(train_augment=...): copies of training images only, same patient, and stress columns
scored by models that never saw their shift (leave-one-perturbation-out)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402
from cxr_embed.embed.store import EmbeddingStore  # noqa: E402
from cxr_embed.learn import classifiers as clf_mod  # noqa: E402
from cxr_embed.transfer import search as search_mod  # noqa: E402

KW = dict(backbones=["mobilenet_v2"], input_sizes=[32], tta=[None], classifiers=["logreg"], stress=["lowres", "jpeg"],
          train_augment=[None, [{"name": "lowres", "size": 160}]], cv=3, inner_cv=2, n_bootstrap=0, backbone_kwargs={"weights": None},
          extract_kwargs={"workers": 0})


def _rows(X) -> list[bytes]:
    return [np.asarray(r, np.float32).tobytes() for r in np.asarray(X)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    ds = make_synthetic_cxr(36, site="A", size=48, seed=1, images_per_patient=2)
    manifest = cxr_embed.load_manifest(write_dataset(ds, root / "internal", format="png"))
    fits = []
    real = clf_mod.GroupedSearchCV.fit

    def spy(self, X, y, groups=None, sample_weight=None):
        fits.append((np.array(X, np.float32, copy=True), np.asarray(groups).copy()))
        return real(self, X, y, groups=groups, sample_weight=sample_weight)

    mp = pytest.MonkeyPatch()
    mp.setattr(clf_mod.GroupedSearchCV, "fit", spy)
    try:
        keras.utils.set_random_seed(0)
        res = search_mod.search_pipeline(manifest, "opacity", store=root / "s.h5", **KW)
    finally:
        mp.undo()
    # every image's rows in the store: clean and each perturbation, by image id
    store = EmbeddingStore(root / "s.h5")
    by_view = {}
    for fp, meta in store.info()["backbones"].items():
        view = (meta["config"].get("view") or {}).get("perturbation")
        ids, X = store.load(fp)
        by_view[f"{view['name']}{view.get('size', '')}" if view else "clean"] = dict(zip(ids.astype(str), _rows(X)))
    return {"res": res, "fits": fits, "rows": by_view, "manifest": manifest, "root": root}


def _owner(rows: dict) -> dict:
    """row bytes -> (view, image id)."""
    return {b: (view, i) for view, d in rows.items() for i, b in d.items()}


def test_both_options_are_pipelines_of_the_table(run):
    t = run["res"].table
    assert sorted(t["train_augment"]) == ["lowres(size=160)", "none"]
    assert set(t["pipeline"]) == {"mobilenet_v2@32 · logreg", "mobilenet_v2@32 · logreg · aug:lowres(size=160)"}
    assert t[["auc", "auc_lowres", "auc_jpeg", "worst_shift"]].notna().all().all()
    assert run["res"].settings["train_augment"] == [[], [{"name": "lowres", "size": 160}]]


def test_augmented_fits_hold_copies_of_training_images_only_with_their_patient(run):
    res, fits, owner = run["res"], run["fits"], _owner(run["rows"])
    ids = res.image_ids
    k = len(res.folds)
    # fits in order: plain pipeline (k folds), augmented pipeline (k folds), its lowres leave-out (k), refit
    for j, (train, test) in enumerate(res.folds):
        X, groups = fits[k + j]
        seen = [owner[b] for b in _rows(X)]
        assert {v for v, _ in seen} == {"clean", "lowres160"}
        assert {i for _, i in seen} == set(ids[train])  # training images only, never a held-out one
        assert sum(v == "lowres160" for v, _ in seen) == len(train)  # one copy of each
        lookup = dict(zip(ids, res.groups))
        assert [lookup[i] for _, i in seen] == list(groups)  # each copy carries its image's patient
        # the plain pipeline's fits hold no copy
        assert {owner[b][0] for b in _rows(fits[j][0])} == {"clean"}


def test_a_trained_shift_is_stressed_by_models_that_never_saw_it(run):
    res, fits, owner = run["res"], run["fits"], _owner(run["rows"])
    k = len(res.folds)
    # trained on lowres at 160 px, stressed by lowres at 224 px: the same kind of shift, so left out
    for j in range(k):  # the leave-one-perturbation-out fits: the lowres copies are gone
        assert {owner[b][0] for b in _rows(fits[2 * k + j][0])} == {"clean"}
    assert len(fits) == 3 * k + 1
    plain, aug = "mobilenet_v2@32 · logreg", "mobilenet_v2@32 · logreg · aug:lowres(size=160)"
    # without its only perturbation the augmented pipeline is the plain one: same lowres predictions
    np.testing.assert_allclose(res.stressed_oof[(aug, "lowres")], res.stressed_oof[(plain, "lowres")])
    # an untrained shift is scored by the augmented models themselves
    assert not np.allclose(res.stressed_oof[(aug, "jpeg")], res.stressed_oof[(plain, "jpeg")])
    assert not np.allclose(res.oof[aug], res.oof[plain])


def test_the_winner_records_its_augmentation_and_predicts_clean_images(run, tmp_path):
    res = run["res"]
    best = res.best
    want = () if res.table.loc[0, "train_augment"] == "none" else ({"name": "lowres", "size": 160},)
    assert best.train_augment == want
    path = best.save(tmp_path / "bundle")
    assert cxr_embed.load_model(path).extra["search"]["train_augment"] == [dict(c) for c in want]


def test_bad_options_are_named(run, tmp_path):
    m = run["manifest"]
    with pytest.raises(ValueError, match="unknown perturbation"):
        search_mod.search_pipeline(m, "opacity", store=tmp_path / "s.h5", **{**KW, "train_augment": [["blur"]]})
    with pytest.raises(ValueError, match="repeats a perturbation"):
        search_mod.search_pipeline(m, "opacity", store=tmp_path / "s.h5",
                                   **{**KW, "train_augment": [["jpeg", "jpeg"]]})
    with pytest.raises(ValueError, match="list of options"):
        search_mod.search_pipeline(m, "opacity", store=tmp_path / "s.h5", **{**KW, "train_augment": "jpeg"})
    assert not (tmp_path / "s.h5").exists()
    assert isinstance(run["res"].table, pd.DataFrame)


def test_the_label_of_an_option_shows_parameters_other_than_the_defaults():
    cfg = search_mod.perturbation_config
    assert search_mod._aug_label((cfg("lowres"), cfg({"name": "jpeg", "quality": 60}))) == "lowres+jpeg(quality=60)"
    assert search_mod._aug_label(()) == "none"


def test_an_image_whose_copy_could_not_be_embedded_trains_without_it():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y, g = np.array([0, 1, 0, 1, 0, 1]), np.array(list("aabbcc"))
    copy = (np.array([True, False, True, True, True, True]), X + 100)
    Xt, yt, gt = search_mod._with_copies(X, y, g, np.array([0, 1, 2]), [copy])
    np.testing.assert_array_equal(Xt, np.r_[X[[0, 1, 2]], X[[0, 2]] + 100])  # image 1 has no copy; 3-5 held out
    assert list(yt) == [0, 1, 0, 0, 0] and list(gt) == list("aabab")
