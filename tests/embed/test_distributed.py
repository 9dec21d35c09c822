"""Tests of extract(engine="ray") and the joblib Ray backend, on a two-node Ray cluster made here.

The cluster (``ray.cluster_utils.Cluster``: a head and one worker node, one CPU each, small object
stores, no dashboard) is started once for the module and shut down by the fixture's finalizer.
The driver (this process) is not connected to it between tests: each ``extract`` connects with
``ray_address`` and disconnects, as a user's script would. Heavier checks (a node removed mid-run,
a driver killed mid-run) are marked slow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_extraction import real_backbone, tiny_model_file, write_pngs

pytest.importorskip("ray")  # the [ray] extra; `make test` installs it through [dev]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MB = 1 << 20
# resources small enough that one node can host an actor and a decoding task at once
OPTIONS = {"actors": 1, "actor_cpus": 0.5, "decode_cpus": 0.5, "block_rows": 8}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 150 * MB, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1, object_store_memory=100 * MB)
        c.wait_for_nodes()
        yield c
    finally:
        import logging

        import ray

        ray.shutdown()
        c.shutdown()
        # Ray Data leaves a daemon thread in this process that polls Prometheus every 10 s and logs each
        # failure at DEBUG with its traceback. Formatting a traceback calls ast.parse (3.11's error carets),
        # and CPython 3.11.7's ast state is not thread-safe (gh-106905): a later test's ast.parse then
        # fails with "SystemError: AST constructor recursion depth mismatch". No record, no formatting.
        logging.getLogger("ray.data._internal.usage").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def backbone(model_path):
    return real_backbone(model_path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Manifest of the first 48 images of the tiny NIH set (generated PNGs when it is absent) + 2 corrupt files."""
    import pandas as pd

    from conftest import SHARED_DATA

    folder = tmp_path_factory.mktemp("imgs")
    if (SHARED_DATA / "nih_cxr14_tiny64" / "labels.csv").is_file():
        import cxr_embed

        df = cxr_embed.load_manifest(SHARED_DATA / "nih_cxr14_tiny64").head(48)[["image_id", "path"]]
    else:
        paths = write_pngs(folder / "png", 48, seed=5)
        df = pd.DataFrame({"image_id": [f"g{i}" for i in range(48)], "path": paths})
    bad = folder / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    extra = pd.DataFrame({"image_id": ["bad_png", "missing"], "path": [str(bad), str(folder / "absent.png")]})
    return pd.concat([df.iloc[:20], extra, df.iloc[20:]], ignore_index=True)


def _local(images, backbone, path):
    import cxr_embed

    return cxr_embed.extract(images, backbone, path, batch_size=8, workers=1, progress=False)


# --------------------------------------------------------------- default set
def test_ray_gives_the_local_ids_and_bits_and_reports_failures(cluster, backbone, images, tmp_path, capsys):
    import ray

    import cxr_embed
    from cxr_embed.cli import main

    ref = _local(images, backbone, tmp_path / "local.h5")
    rep = cxr_embed.extract(images, backbone, tmp_path / "ray.h5", batch_size=8, progress=False, engine="ray",
                            ray_address=cluster.address, ray_options=OPTIONS)
    assert not ray.is_initialized()  # extract disconnected what it connected
    assert (rep.n_done, rep.n_failed, rep.n_cached) == (ref.n_done, 2, 0) == (48, 2, 0)
    assert sorted(f[0] for f in rep.failures) == ["bad_png", "missing"]
    assert {f[0]: f[2] for f in rep.failures} == {f[0]: f[2] for f in ref.failures}  # same reasons as locally
    good = [i for i in images.image_id if i not in ("bad_png", "missing")]
    store = cxr_embed.EmbeddingStore(tmp_path / "ray.h5")
    assert sorted(store.ids(backbone).tolist()) == sorted(good)  # failures absent, no duplicates
    a = cxr_embed.EmbeddingStore(tmp_path / "local.h5").load(backbone, good)[1]
    b = store.load(backbone, good)[1]
    assert a.tobytes() == b.tobytes()
    (entry,) = store.info()["backbones"].values()
    assert entry["compute"][0]["precision"] == "float32"  # recorded from the workers
    # resume from the command line: everything is cached, so no Ray session is needed to find that out
    csv = tmp_path / "labels.csv"
    on_disk = images[images.image_id.isin(good)]  # failures would be retried (and need the cluster)
    on_disk.assign(patient_id=[f"p{i}" for i in range(len(on_disk))]).to_csv(csv, index=False)
    argv = ["extract", "--manifest", str(csv), "--backbone", backbone.config["weights"], "--store",
            str(tmp_path / "ray.h5"), "--batch-size", "8", "--no-progress", "--json", "--ray-address", cluster.address]
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["n_done"], again["n_cached"], again["n_failed"]) == (0, 48, 0)
    assert main([*argv[:-2], "--engine", "local", "--ray-actors", "2"]) == 2
    assert "--engine ray" in capsys.readouterr().err


@pytest.mark.slow  # 10 s: a second Ray worker set
def test_worker_with_other_weights_is_refused_before_anything_is_written(cluster, tmp_path):
    import keras

    import cxr_embed

    path = tiny_model_file(tmp_path)
    driver = real_backbone(path)
    assert driver.fingerprint  # the driver hashed these weights
    model = keras.models.load_model(path)  # same architecture at the same path, other weights
    model.set_weights([w + 0.01 for w in model.get_weights()])
    model.save(path)
    pngs = write_pngs(tmp_path / "png", 6)
    with pytest.raises(cxr_embed.FingerprintMismatchError, match=r"Ray worker .*weights on this node differ"):
        cxr_embed.extract(pngs, driver, tmp_path / "s.h5", batch_size=4, progress=False, engine="ray",
                          ray_address=cluster.address, ray_options=OPTIONS)
    store = cxr_embed.EmbeddingStore(tmp_path / "s.h5")
    assert store.ids(driver).size == 0 and not store.journal_dir.exists()


@pytest.mark.slow  # 6 s
def test_grouped_cv_on_ray_equals_n_jobs_1(cluster):
    import ray
    from sklearn.ensemble import RandomForestClassifier

    import cxr_embed

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6))
    y = (X[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(int)
    groups = np.arange(80) // 2
    clf = RandomForestClassifier(n_estimators=20, random_state=0)
    local = cxr_embed.cross_validate_grouped(clf, X, y, groups, n_splits=4, n_repeats=2, random_state=1,
                                             n_jobs=1, n_bootstrap=0)
    with cxr_embed.ray_backend(cluster.address):
        assert ray.is_initialized()
        remote = cxr_embed.cross_validate_grouped(clf, X, y, groups, n_splits=4, n_repeats=2, random_state=1,
                                                  n_bootstrap=0)
    assert not ray.is_initialized()
    np.testing.assert_array_equal(remote.oof, local.oof)
    assert remote.folds[["n_train", "n_test"]].equals(local.folds[["n_train", "n_test"]])


def test_bad_arguments_are_refused_before_ray_starts(backbone, tmp_path):
    import ray

    import cxr_embed
    from test_extraction import DuckBackbone

    with pytest.raises(ValueError, match="engine must be one of"):
        cxr_embed.extract(["a.png"], backbone, tmp_path / "x.h5", engine="dask", progress=False)
    with pytest.raises(ValueError, match="options of engine='ray'"):
        cxr_embed.extract(["a.png"], backbone, tmp_path / "x.h5", ray_address="auto", progress=False)
    with pytest.raises(ValueError, match="unknown ray_options"):
        cxr_embed.extract(["a.png"], backbone, tmp_path / "x.h5", engine="ray", ray_options={"gpus": 1})
    with pytest.raises(ValueError, match="decoding tasks"):
        cxr_embed.extract(["a.png"], backbone, tmp_path / "x.h5", engine="ray", workers=0)
    duck = DuckBackbone(backbone.config["weights"])
    with pytest.raises(cxr_embed.BackboneError, match="not a cxr_embed.Backbone"):
        cxr_embed.extract(["a.png"], duck, tmp_path / "x.h5", engine="ray")
    assert not ray.is_initialized() and not (tmp_path / "x.h5").exists()


def test_missing_ray_gives_the_install_hint(backbone, tmp_path, monkeypatch):
    import cxr_embed

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(cxr_embed.MissingDependencyError, match=r"cxr_embed\[ray\]"):
        cxr_embed.extract(["a.png"], backbone, tmp_path / "x.h5", engine="ray")
    with pytest.raises(cxr_embed.MissingDependencyError, match=r"cxr_embed\[ray\]"):
        with cxr_embed.ray_backend():
            pass


def test_session_is_reused_or_started_and_only_ours_is_shut_down(monkeypatch):
    import types

    from cxr_embed._ray import ray_session

    calls = []
    fake = types.SimpleNamespace(
        initialized=False, is_initialized=lambda: fake.initialized,
        init=lambda address=None, **kw: calls.append(("init", address, kw)),
        shutdown=lambda: calls.append(("shutdown",)))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", types.ModuleType("ray.data"))
    with ray_session("HOST:6379", {"num_cpus": 2}, data=True):
        assert calls == [("init", "HOST:6379", {"include_dashboard": False, "log_to_driver": False, "num_cpus": 2})]
    assert calls[-1] == ("shutdown",)
    calls.clear()
    fake.initialized = True  # this process already has a session: use it, leave it running
    with ray_session("auto"):
        pass
    assert calls == []


# --------------------------------------------------------------- slow set
@pytest.mark.slow
def test_worker_node_removed_mid_run_every_image_once(cluster, backbone, tmp_path, monkeypatch):
    import cxr_embed
    from cxr_embed.embed import distributed

    pngs = write_pngs(tmp_path / "png", 80, seed=11)
    node = cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
    cluster.wait_for_nodes()
    add = distributed._Committer.add

    def slow_add(self, batch):  # the driver takes its time, so the removal lands mid-run
        time.sleep(0.15)
        return add(self, batch)

    monkeypatch.setattr(distributed._Committer, "add", slow_add)
    store_path = tmp_path / "s.h5"
    journal = store_path.with_name(store_path.name + ".journal")
    removed = threading.Event()
    stored_at_removal: list[int] = []

    def remove_when_started():
        deadline = time.time() + 240
        while not any(journal.glob("*.h5")) and time.time() < deadline:
            time.sleep(0.05)
        cluster.remove_node(node, allow_graceful=False)
        stored_at_removal.append(cxr_embed.EmbeddingStore(store_path).ids(backbone).size)
        removed.set()

    t = threading.Thread(target=remove_when_started, daemon=True)
    t.start()
    rep = cxr_embed.extract(pngs, backbone, store_path, batch_size=4, progress=False, engine="ray",
                            ray_address=cluster.address,
                            ray_options=dict(OPTIONS, actors=2, block_rows=4, commit_rows=4))
    t.join(timeout=60)
    assert removed.is_set() and 0 < stored_at_removal[0] < 80  # removed mid-run
    assert (rep.n_done, rep.n_failed) == (80, 0)
    ids = cxr_embed.EmbeddingStore(store_path).ids(backbone).tolist()
    assert len(ids) == len(set(ids)) == 80 and set(ids) == set(pngs)
    _local(pngs, backbone, tmp_path / "ref.h5")
    a = cxr_embed.EmbeddingStore(tmp_path / "ref.h5").load(backbone, pngs)[1]
    assert cxr_embed.EmbeddingStore(store_path).load(backbone, pngs)[1].tobytes() == a.tobytes()


_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from test_extraction import real_backbone
    import cxr_embed
    from cxr_embed.embed import distributed
    add = distributed._Committer.add
    def slow_add(self, batch):  # spread the driver's work so that the kill lands mid-run
        time.sleep(0.3)
        return add(self, batch)
    distributed._Committer.add = slow_add
    paths = json.load(open({paths!r}))
    cxr_embed.extract(paths, real_backbone({model!r}), {store!r}, batch_size=4, progress=False, engine="ray",
                      ray_address={address!r}, ray_options={options!r})
    """
)


@pytest.mark.slow
def test_driver_killed_mid_run_resumes_without_recomputing(cluster, backbone, model_path, tmp_path):
    import cxr_embed

    pngs = write_pngs(tmp_path / "png", 40, seed=13)
    (tmp_path / "paths.json").write_text(json.dumps(pngs))
    store_path = tmp_path / "killed.h5"
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER.format(tests=str(HERE), paths=str(tmp_path / "paths.json"), model=str(model_path),
                                     store=str(store_path), address=cluster.address,
                                     options=dict(OPTIONS, block_rows=4, commit_rows=4)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = store_path.with_name(store_path.name + ".journal")
    deadline = time.time() + 300
    while len(list(journal.glob("*.h5"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished (or died) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = cxr_embed.EmbeddingStore(store_path).ids(backbone).tolist()
    assert 8 <= len(done_before) < 40 and len(set(done_before)) == len(done_before)
    rep = cxr_embed.extract(pngs, backbone, store_path, batch_size=4, progress=False, engine="ray",
                            ray_address=cluster.address, ray_options=OPTIONS)
    assert rep.n_cached == len(done_before) and rep.n_done == 40 - len(done_before)  # only the rest was embedded
    ids = cxr_embed.EmbeddingStore(store_path).ids(backbone).tolist()
    assert len(ids) == len(set(ids)) == 40
    _local(pngs, backbone, tmp_path / "ref.h5")
    a = cxr_embed.EmbeddingStore(tmp_path / "ref.h5").load(backbone, pngs)[1]
    assert cxr_embed.EmbeddingStore(store_path).load(backbone, pngs)[1].tobytes() == a.tobytes()
