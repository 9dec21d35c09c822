"""Tests of cxr_embed.embed.extraction: batching, resume, failures, workers, kill-and-resume."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_embed.exceptions import ManifestError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SIZE = 32


# --------------------------------------------------------------- tiny backbones
def tiny_model_file(folder: Path) -> Path:
    """A tiny two-conv Keras CNN (32x32 input, fixed-seed weights) saved as .keras."""
    path = Path(folder) / "tiny.keras"
    if path.exists():
        return path
    import keras

    init = keras.initializers.GlorotUniform
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=init(seed=1), name="conv1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", kernel_initializer=init(seed=2), name="conv2")(x)
    out = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inp, out, name="tiny").save(path)
    return path


def real_backbone(model_path):
    """The library's Backbone over the tiny model, or None while backbones.py is absent."""
    try:
        from cxr_embed.embed.backbones import Backbone
    except ImportError:
        return None
    return Backbone.from_keras(str(model_path), preprocess="none")


class DuckBackbone:
    """A backbone built only on the duck type extract/store need, with a real tiny Keras CNN.

    Its ``prepare`` stretches (``mode="resize"``), which a worker process cannot be told about,
    so it exercises the thread fallback of ``extract``.
    """

    name = "tiny_duck"

    def __init__(self, model_path, resize="resize"):
        import keras

        self.model = keras.models.load_model(model_path, safe_mode=True)
        self.input_size = (SIZE, SIZE)
        self.dim = int(self.model.output_shape[-1])
        self.resize = None  # do not advertise a mode: forces the probe
        self._mode = resize
        weights = b"".join(np.asarray(w).tobytes() for w in self.model.get_weights())
        self.config = {"name": self.name, "input_size": [SIZE, SIZE], "resize": resize,
                       "weights_sha256": hashlib.sha256(weights).hexdigest()}
        self.fingerprint = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()
        self.calls = 0
        self.rows = 0

    def prepare(self, image):
        from cxr_embed.io.preprocessing import prepare_image

        return prepare_image(image, self.input_size, mode=self._mode)

    def embed(self, batch):
        self.calls += 1
        self.rows += len(batch)
        return np.asarray(self.model(np.asarray(batch, np.float32), training=False), dtype=np.float32)


def counting(backbone):
    """Wrap ``backbone.embed`` to count forward passes and rows (results unchanged)."""
    original = backbone.embed
    backbone.n_rows = 0

    def embed(batch):
        backbone.n_rows += len(batch)
        return original(batch)

    backbone.embed = embed
    return backbone


def write_pngs(folder: Path, n: int, *, seed: int = 0, corrupt=()) -> list[str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        if i in corrupt:
            p.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png at all")
        else:
            h, w = rng.integers(30, 60, size=2)
            arr = (rng.random((h, w)) * 255).astype(np.uint8)
            Image.fromarray(arr, mode="L").save(p)
        paths.append(str(p))
    return paths


def have_reader() -> bool:
    try:
        import cxr_embed.io.images  # noqa: F401
    except ImportError:
        return False
    return True


needs_reader = pytest.mark.skipif(not have_reader(), reason="cxr_embed.io.images not written yet")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def backbone(model_path):
    bb = real_backbone(model_path)
    return bb if bb is not None else DuckBackbone(model_path)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    return write_pngs(tmp_path_factory.mktemp("png"), 24)


# --------------------------------------------------------------- tests
@needs_reader
def test_extract_list_of_paths_matches_direct_embedding(backbone, pngs, tmp_path):
    import cxr_embed
    from cxr_embed.io.images import read_image

    report = cxr_embed.extract(pngs, backbone, tmp_path / "e.h5", batch_size=5, workers=0, progress=False)
    assert (report.n_done, report.n_cached, report.n_failed) == (24, 0, 0)
    assert report.images_per_second > 0 and "extracted 24 images" in str(report)
    ids, X = cxr_embed.EmbeddingStore(tmp_path / "e.h5").load(backbone, pngs[::-1])
    assert ids.tolist() == pngs[::-1] and X.shape == (24, backbone.dim) and X.dtype == np.float32
    direct = np.asarray(backbone.embed(np.stack([backbone.prepare(read_image(p)[0]) for p in pngs[::-1]])))
    np.testing.assert_allclose(X, direct, rtol=1e-5, atol=1e-6)


@needs_reader
def test_resume_computes_only_missing_ids(model_path, pngs, tmp_path):
    import pandas as pd

    import cxr_embed

    bb = counting(real_backbone(model_path) or DuckBackbone(model_path))
    df = pd.DataFrame({"image_id": [f"id{i}" for i in range(len(pngs))], "path": pngs})
    store = cxr_embed.EmbeddingStore(tmp_path / "s.h5")
    r1 = cxr_embed.extract(df.iloc[:10], bb, store, batch_size=4, workers=0, progress=False)
    assert r1.n_done == 10 and bb.n_rows == 12  # 3 passes of exactly 4 rows (last one padded)
    bb.n_rows = 0
    r2 = cxr_embed.extract(df, bb, store, batch_size=4, workers=0, progress=False)
    assert (r2.n_done, r2.n_cached) == (14, 10) and bb.n_rows == 16
    bb.n_rows = 0
    r3 = cxr_embed.extract(df, bb, store, batch_size=4, workers=0, progress=False)
    assert (r3.n_done, r3.n_cached) == (0, 24) and bb.n_rows == 0
    # bits equal to one uninterrupted run
    cxr_embed.extract(df, bb, tmp_path / "ref.h5", batch_size=4, workers=0, progress=False)
    a = store.load(bb, df.image_id)[1]
    b = cxr_embed.EmbeddingStore(tmp_path / "ref.h5").load(bb, df.image_id)[1]
    assert a.tobytes() == b.tobytes()


@needs_reader
def test_corrupt_image_reported_and_absent(backbone, tmp_path):
    import pandas as pd

    import cxr_embed

    paths = write_pngs(tmp_path / "imgs", 9, seed=3, corrupt={4})
    paths.append(str(tmp_path / "imgs" / "does_not_exist.png"))
    df = pd.DataFrame({"image_id": [f"p{i}" for i in range(10)], "path": paths})
    report = cxr_embed.extract(df, backbone, tmp_path / "c.h5", batch_size=4, workers=0, progress=False)
    assert (report.n_done, report.n_failed) == (8, 2)
    failed = {f[0]: f for f in report.failures}
    assert set(failed) == {"p4", "p9"}
    assert failed["p4"][1] == paths[4] and paths[4] in failed["p4"][2]
    assert "failed p4" in str(report)
    stored = set(cxr_embed.EmbeddingStore(tmp_path / "c.h5").ids(backbone).tolist())
    assert stored == {f"p{i}" for i in range(9) if i != 4}
    with pytest.raises(cxr_embed.MissingIdsError, match="p4"):
        cxr_embed.EmbeddingStore(tmp_path / "c.h5").load(backbone, ["p0", "p4"])


@needs_reader
@pytest.mark.parametrize("executor", ["process", "thread"])
def test_workers_give_the_same_bits(backbone, pngs, tmp_path, executor):
    import cxr_embed

    if executor == "process" and not hasattr(backbone, "feature_layer"):
        pytest.skip("process pool needs a backbone whose prepare is prepare_image")
    ref = cxr_embed.extract(pngs, backbone, tmp_path / "a.h5", batch_size=8, workers=0, progress=False)
    par = cxr_embed.extract(pngs, backbone, tmp_path / "b.h5", batch_size=8, workers=2, progress=False,
                            executor=executor, prefetch=2)
    assert ref.n_done == par.n_done == 24
    a = cxr_embed.EmbeddingStore(tmp_path / "a.h5").load(backbone)
    b = cxr_embed.EmbeddingStore(tmp_path / "b.h5").load(backbone)
    assert a[0].tolist() == b[0].tolist() == pngs  # input order kept
    assert a[1].tobytes() == b[1].tobytes()


@needs_reader
def test_custom_prepare_uses_threads_and_refuses_process(model_path, pngs, tmp_path):
    import cxr_embed

    duck = DuckBackbone(model_path, resize="resize")
    from cxr_embed.embed.extraction import _picklable_prepare

    assert _picklable_prepare(duck)[:3] == ((SIZE, SIZE), "resize", "area")  # the probe finds mode and filter
    duck._mode = "crop"
    duck.prepare = lambda image: np.flipud(DuckBackbone.prepare(duck, image)).copy()  # custom: no mode matches
    assert _picklable_prepare(duck) is None
    with pytest.raises(ValueError, match="custom prepare"):
        cxr_embed.extract(pngs[:4], duck, tmp_path / "x.h5", workers=1, executor="process", progress=False)
    r = cxr_embed.extract(pngs[:6], duck, tmp_path / "x.h5", batch_size=4, workers=2, progress=False)
    assert r.n_done == 6


def test_bad_inputs(backbone, tmp_path):
    import pandas as pd

    import cxr_embed

    with pytest.raises(ManifestError, match="image_id"):
        cxr_embed.extract(pd.DataFrame({"path": ["a"]}), backbone, tmp_path / "x.h5", progress=False)
    with pytest.raises(ManifestError, match="duplicate"):
        cxr_embed.extract(["a.png", "a.png"], backbone, tmp_path / "x.h5", progress=False)
    with pytest.raises(TypeError, match="single path"):
        cxr_embed.extract("a.png", backbone, tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        cxr_embed.extract(["a.png"], backbone, tmp_path / "x.h5", batch_size=0, progress=False)


# --------------------------------------------------------------- kill and resume
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from test_extraction import real_backbone, DuckBackbone
    import cxr_embed
    paths = json.load(open({paths!r}))
    bb = real_backbone({model!r}) or DuckBackbone({model!r})
    import time
    _embed = bb.embed
    def slow_embed(batch):  # spread the run over ~1 s so that random kills land mid-run
        time.sleep(0.08)
        return _embed(batch)
    bb.embed = slow_embed
    open({ready!r}, "w").close()
    cxr_embed.extract(paths, bb, {store!r}, batch_size=3, workers=0, progress=False)
    """
)


def _kill_and_resume(tmp_path, backbone, model_path, pngs, kills, rng, first_batch=False):
    import cxr_embed

    store_path = tmp_path / "killed.h5"
    (tmp_path / "paths.json").write_text(json.dumps(pngs))
    ready = tmp_path / "ready"
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=str(HERE), paths=str(tmp_path / "paths.json"), model=str(model_path),
                                     ready=str(ready), store=str(store_path)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    killed_counts = []
    for _ in range(kills):
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        if first_batch:  # wait for a committed batch, then kill somewhere in the rest of the run
            journal = store_path.with_name(store_path.name + ".journal")
            while not any(journal.glob("*.h5")) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = cxr_embed.EmbeddingStore(store_path)  # opens after every kill
        ids = store.ids(backbone).tolist()
        assert ids == pngs[: len(ids)]  # a prefix of whole committed batches, no duplicates
        killed_counts.append(len(ids))
    report = cxr_embed.extract(pngs, backbone, store_path, batch_size=3, workers=0, progress=False)
    assert report.n_done + report.n_cached == len(pngs)
    ref = cxr_embed.extract(pngs, backbone, tmp_path / "ref.h5", batch_size=3, workers=0, progress=False)
    assert ref.n_done == len(pngs)
    a_ids, a = cxr_embed.EmbeddingStore(store_path).load(backbone)
    b_ids, b = cxr_embed.EmbeddingStore(tmp_path / "ref.h5").load(backbone)
    assert a_ids.tolist() == b_ids.tolist() == pngs
    assert a.tobytes() == b.tobytes()
    assert not cxr_embed.EmbeddingStore(store_path).journal_dir.exists()
    return killed_counts


@needs_reader
def test_kill_and_resume_bit_for_bit(backbone, model_path, pngs, tmp_path):
    counts = _kill_and_resume(tmp_path, backbone, model_path, pngs, kills=1, rng=random.Random(), first_batch=True)
    assert counts[0] >= 3  # killed after at least one committed batch


@pytest.mark.slow
@needs_reader
def test_kill_and_resume_many_times(backbone, model_path, tmp_path):
    many = write_pngs(tmp_path / "many", 60, seed=7)
    counts = _kill_and_resume(tmp_path, backbone, model_path, many, kills=6, rng=random.Random())
    assert len(counts) == 6


@needs_reader
def test_cli_extract_then_store_info(model_path, pngs, tmp_path, capsys):
    import pandas as pd

    import cxr_embed
    from cxr_embed.cli import main

    if real_backbone(model_path) is None:
        pytest.skip("cxr_embed.embed.backbones not written yet")
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": [f"c{i}" for i in range(6)], "path": pngs[:6],
                  "patient_id": [f"p{i}" for i in range(6)], "finding": [0, 1] * 3}).to_csv(csv, index=False)
    store = tmp_path / "cli.h5"
    argv = ["extract", "--manifest", str(csv), "--backbone", str(model_path), "--store", str(store),
            "--batch-size", "4", "--workers", "0", "--no-progress", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["n_done"], report["n_failed"]) == (6, 0)
    assert main(argv) == 0  # resume: nothing left to do
    assert json.loads(capsys.readouterr().out)["n_cached"] == 6
    assert main(["store", "info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (fp, entry), = info["backbones"].items()
    assert entry["count"] == 6 and entry["dim"] == 16
    ids, X = cxr_embed.EmbeddingStore(store).load(fp, [f"c{i}" for i in range(6)])
    assert X.shape == (6, 16)
    assert main(["store", "info", str(tmp_path / "absent.h5")]) == 2
    assert "absent.h5" in capsys.readouterr().err


@pytest.mark.slow  # 14 s: a user script in a subprocess
def test_script_without_main_guard_falls_back_to_threads(model_path, pngs, tmp_path):
    """Spawned workers re-run an unguarded script; extraction must warn and finish in threads."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import warnings
        from cxr_embed import Backbone, EmbeddingStore, extract
        bb = Backbone.from_keras({str(model_path)!r}, preprocess="none")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = extract({pngs[:6]!r}, bb, {str(tmp_path / "s.h5")!r}, workers=2, progress=False, batch_size=4)
        print("DONE", report.n_done, any("__main__" in str(w.message) for w in caught))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DONE 6 True" in out.stdout


# --------------------------------------------------------------- preprocessing settings (issue 11)
def test_fingerprint_covers_interpolation_and_decode_and_old_stores_are_named(model_path, pngs, tmp_path):
    """Stores written before 0.3 (bilinear) keep their fingerprint with interpolation='bilinear';
    the new default never mixes into them and a load says which setting differs."""
    import cxr_embed
    from cxr_embed.embed.backbones import Backbone

    old = Backbone.from_keras(str(model_path), preprocess="none", interpolation="bilinear")
    new = Backbone.from_keras(str(model_path), preprocess="none")
    reduced = Backbone.from_keras(str(model_path), preprocess="none", decode="reduced")
    assert len({old.fingerprint, new.fingerprint, reduced.fingerprint}) == 3
    assert old.config["preprocessing"] == {"size": [SIZE, SIZE], "mode": "pad", "channels": "gray3",
                                           "range": [0.0, 255.0], "interpolation": "bilinear", "version": 1}
    assert reduced.config["preprocessing"]["decode"] == "reduced" and "decode" not in new.config["preprocessing"]
    store = tmp_path / "old.h5"
    cxr_embed.extract(pngs[:3], old, store, workers=0, progress=False)
    with pytest.raises(cxr_embed.MissingIdsError, match=r"interpolation 'bilinear' there vs 'area' here.*"
                                                        r"Backbone\(\.\.\., interpolation='bilinear'"):
        cxr_embed.EmbeddingStore(store).load(new, pngs[:3])
    r = cxr_embed.extract(pngs[:3], new, store, workers=0, progress=False)  # a new group, never mixed
    assert r.n_done == 3 and len(cxr_embed.EmbeddingStore(store).fingerprints()) == 2
    a = cxr_embed.EmbeddingStore(store).load(old, pngs[:3])[1]
    direct = old.embed(np.stack([old.prepare(read_image_(p)) for p in pngs[:3]]))
    np.testing.assert_allclose(a, direct, rtol=1e-5, atol=1e-6)


def read_image_(path):
    from cxr_embed.io.images import read_image

    return read_image(path)[0]


def test_extract_dicom_equals_read_prepared(backbone, tmp_path):
    """Workers read DICOMs straight into CNN inputs; within 0.01 grey levels of prepare(read_image)."""
    import cxr_embed
    from cxr_embed.io.prepared import read_prepared
    from test_io_dicom import _write

    rng = np.random.default_rng(5)
    paths = [str(_write(tmp_path / f"d{i}.dcm", (rng.random((50, 41)) * 4000).astype(np.uint16), bits_stored=12,
                        photometric="MONOCHROME1", WindowCenter=1800, WindowWidth=2500)) for i in range(4)]
    cxr_embed.extract(paths, backbone, tmp_path / "d.h5", batch_size=4, workers=0, progress=False)
    X = cxr_embed.EmbeddingStore(tmp_path / "d.h5").load(backbone, paths)[1]
    fast = np.stack([read_prepared(p, backbone.input_size)[0] for p in paths])
    slow = np.stack([backbone.prepare(read_image_(p)) for p in paths])
    assert np.abs(fast - slow).max() <= 0.01
    np.testing.assert_allclose(X, backbone.embed(fast), rtol=1e-5, atol=1e-6)
