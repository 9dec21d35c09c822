"""A decoding worker process that dies (segfault, OOM kill) fails its image only, never the run."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

import cxr_embed
from cxr_embed.embed import extraction


@pytest.fixture
def crashing_workers(monkeypatch):
    import _crashy

    # the pool pickles the task by name: spawned workers import _crashy, whose wrapper calls their own
    # (unpatched) extraction._read_and_prepare
    monkeypatch.setattr(extraction, "_read_and_prepare", _crashy.read_and_prepare_or_die)


def test_a_worker_killed_by_one_file_fails_that_file_only(tiny_backbone_for_crash, tmp_path, crashing_workers):
    from test_extraction import write_pngs

    paths = write_pngs(tmp_path / "imgs", 12, seed=5)
    for i in (3, 8):  # two files that kill whichever worker decodes them
        crash = paths[i].replace(".png", "_crash.png")
        shutil.move(paths[i], crash)
        paths[i] = crash
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = cxr_embed.extract(paths, tiny_backbone_for_crash, tmp_path / "s.h5", batch_size=4, workers=2,
                                   executor="process", progress=False)
    failed = {f[0]: f[2] for f in report.failures}
    assert set(failed) == {paths[3], paths[8]}
    assert all(r.startswith("WorkerCrashError") and "info" in r for r in failed.values())
    good = [p for i, p in enumerate(paths) if i not in (3, 8)]
    assert report.n_done == len(good)
    ids, X = cxr_embed.EmbeddingStore(tmp_path / "s.h5").load(tiny_backbone_for_crash, good)
    alone = cxr_embed.extract(good, tiny_backbone_for_crash, tmp_path / "alone.h5", batch_size=4, workers=0,
                              progress=False)
    assert alone.n_done == len(good)
    _, X_alone = cxr_embed.EmbeddingStore(tmp_path / "alone.h5").load(tiny_backbone_for_crash, good)
    np.testing.assert_array_equal(X, X_alone)


@pytest.fixture
def tiny_backbone_for_crash(tmp_path):
    from test_extraction import real_backbone, tiny_model_file

    bb = real_backbone(tiny_model_file(tmp_path))
    if bb is None:
        pytest.skip("needs the library's Backbone")
    return bb
