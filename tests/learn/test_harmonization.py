"""ComBat as a pipeline step: wraps neuroCombat, fitted on training folds, removes a planted site effect."""
from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("neuroCombat")

from cxr_embed.exceptions import HarmonizationError, MissingDependencyError  # noqa: E402
from cxr_embed.learn.classifiers import make_classifier  # noqa: E402
from cxr_embed.learn.clinical import clinical_frame, embedding_columns, with_clinical  # noqa: E402
from cxr_embed.learn.harmonization import ComBat  # noqa: E402
from cxr_embed.learn.validation import cross_validate_grouped  # noqa: E402


def _sites(n_per=80, d=30, seed=0):
    """Three sites with per-feature location and scale effects; a label signal balanced across sites;
    an age effect whose distribution differs by site."""
    rng = np.random.default_rng(seed)
    site = np.repeat(["a", "b", "c"], n_per)
    n = len(site)
    y = np.tile([0, 1], n // 2)
    age = rng.normal(50, 8, n)  # same distribution at every site: then site is not predictable through age
    X = rng.normal(size=(n, d))
    X[:, :4] += 1.2 * y[:, None]  # the biology: 4 features carry the label
    X += 0.04 * (age - 50)[:, None]
    for s, loc, scale in (("b", 1.5, 1.8), ("c", -1.0, 0.6)):
        shift = rng.normal(loc, 0.5, d)
        X[site == s] = X[site == s] * scale + shift
    clin = pd.DataFrame({"site": site, "age": age, "sex": rng.choice(np.array(["F", "M"], dtype=object), n)})
    return X, y, clin, np.arange(n)


def test_transform_of_the_training_rows_is_neurocombat_itself():
    from neuroCombat import neuroCombat

    X, _, clin, _ = _sites(n_per=40)
    frame = clinical_frame(X, clin)
    out = ComBat(covariates=["age", "sex"]).fit(frame).transform(frame)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = neuroCombat(X.T, clin.astype(object), "site", categorical_cols=["sex"], continuous_cols=["age"])["data"].T
    np.testing.assert_allclose(out[embedding_columns(out)].to_numpy(), ref, atol=1e-5)
    assert out["site"].tolist() == clin["site"].tolist() and out["age"].equals(frame["age"])  # passed through
    sub = ComBat(covariates=["age", "sex"]).fit(frame).transform(frame.iloc[[5, 50, 100]])  # any subset of sites
    np.testing.assert_allclose(sub[embedding_columns(sub)].to_numpy(), ref[[5, 50, 100]], atol=1e-5)


def _site_auc(estimator, X, clin, target, groups):
    res = cross_validate_grouped(estimator, X, target, groups, clinical=clin, n_splits=4, random_state=0,
                                 n_bootstrap=0)
    return res.mean_auc


def test_combat_in_cv_removes_the_site_effect_and_keeps_the_biology():
    X, y, clin, groups = _sites()
    ab = (clin["site"] != "c").to_numpy()
    site_target = (clin["site"][ab] == "b").astype(int).to_numpy()
    plain = make_classifier("logreg", clinical=[])
    harmonised = with_clinical("logreg", [], harmonizer=ComBat(site="site", covariates=["age"]))
    before = _site_auc(plain, X[ab], clin[ab], site_target, groups[ab])
    after = _site_auc(harmonised, X[ab], clin[ab], site_target, groups[ab])
    assert before > 0.95 and after < 0.65, (before, after)  # the site is no longer predictable
    label_before = _site_auc(plain, X, clin, y, groups)
    label_after = _site_auc(harmonised, X, clin, y, groups)
    assert label_after > 0.85 and label_after >= label_before - 0.03, (label_before, label_after)


def test_combat_is_fitted_on_training_folds_only(monkeypatch):
    X, y, clin, groups = _sites(n_per=40)
    seen = []
    original = ComBat.fit

    def spy(self, Xf, yf=None):
        seen.append(set(Xf.index))
        return original(self, Xf, yf)

    monkeypatch.setattr(ComBat, "fit", spy)
    cross_validate_grouped(with_clinical("logreg", [], harmonizer=ComBat()), X, y, groups, clinical=clin,
                           n_splits=3, random_state=0, n_bootstrap=0)
    assert len(seen) == 3 and all(len(s) < len(y) for s in seen)
    assert set().union(*[set(range(len(y))) - s for s in seen]) == set(range(len(y)))


def test_an_unseen_site_is_estimated_from_its_unlabelled_images_or_refused():
    X, y, clin, _ = _sites(n_per=60)
    train = (clin["site"] != "c").to_numpy()
    frame = clinical_frame(X, clin[["site"]])
    cb = ComBat().fit(frame[train])
    assert cb.sites_.tolist() == ["a", "b"]
    ref = cb.transform(frame[train])
    ext = cb.transform(frame[~train])
    assert set(cb.estimated_sites_) == {"c"}
    emb = embedding_columns(ext)
    gap_before = np.abs(X[~train].mean(0) - X[train].mean(0)).mean()
    gap_after = np.abs(ext[emb].to_numpy().mean(0) - ref[emb].to_numpy().mean(0)).mean()
    assert gap_after < 0.2 * gap_before
    # the external labels play no part: transform has no y, and the label signal survives
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[~train], ext[emb[0]].to_numpy()) > 0.75
    with pytest.raises(HarmonizationError, match="unseen_site='estimate'"):
        ComBat(unseen_site="error").fit(frame[train]).transform(frame[~train])
    with pytest.raises(HarmonizationError, match="all of its images at once"):
        cb.transform(frame[~train].iloc[:1])


def test_single_training_site_then_external_site():
    X, _, clin, _ = _sites(n_per=50)
    frame = clinical_frame(X, clin[["site"]])
    a, c = (clin["site"] == "a").to_numpy(), (clin["site"] == "c").to_numpy()
    cb = ComBat().fit(frame[a])
    np.testing.assert_allclose(cb.transform(frame[a])[embedding_columns(frame)].to_numpy(), X[a], atol=0.1)
    out = cb.transform(frame[c])[embedding_columns(frame)].to_numpy()
    assert np.abs(out.mean(0) - X[a].mean(0)).mean() < 0.2 * np.abs(X[c].mean(0) - X[a].mean(0)).mean()


def test_input_checks_and_search(monkeypatch):
    X, y, clin, groups = _sites(n_per=30)
    frame = clinical_frame(X, clin)
    with pytest.raises(HarmonizationError, match="site column 'scanner'"):
        ComBat(site="scanner").fit(frame)
    holes = frame.copy()
    holes.loc[3, "age"] = np.nan
    with pytest.raises(HarmonizationError, match="missing values"):
        ComBat(covariates=["age"]).fit(holes)
    with pytest.raises(HarmonizationError, match="fewer than 2"):
        ComBat().fit(frame.iloc[:31])
    with pytest.warns(UserWarning, match="not seen in fit"):
        other = frame.copy()
        other["sex"] = "X"
        ComBat(covariates=["sex"]).fit(frame).transform(other)
    search = with_clinical("logreg", [], harmonizer=ComBat())
    from cxr_embed.learn.classifiers import GroupedSearchCV

    gs = GroupedSearchCV(search, {"harmonize__mean_only": [False, True]}, cv=2, random_state=0).fit(frame, y,
                                                                                                  groups=groups)
    assert set(gs.best_params_) == {"harmonize__mean_only"}
    monkeypatch.setitem(sys.modules, "neuroCombat.neuroCombat", None)
    with pytest.raises(MissingDependencyError, match=r"cxr_embed\[harmonize\]"):
        ComBat().fit(frame)
