"""Tests of cxr_embed.embed.store: format, refusal, locking, crash safety, merge, CLI."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxr_embed.exceptions import (FingerprintMismatchError, MissingIdsError, StoreError,
                                  StoreLockedError)
from cxr_embed.embed.store import FORMAT, EmbeddingStore, merge

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    """The real tiny backbone of test_extraction (a Backbone once backbones.py exists)."""
    from test_extraction import DuckBackbone, real_backbone, tiny_model_file

    path = tiny_model_file(tmp_path_factory.mktemp("model"))
    return real_backbone(path) or DuckBackbone(path)


@pytest.fixture(scope="module")
def bb2(tmp_path_factory):
    """A second backbone configuration (other pooling / resize mode)."""
    from test_extraction import DuckBackbone, real_backbone, tiny_model_file

    path = tiny_model_file(tmp_path_factory.mktemp("model2"))
    real = real_backbone(path)
    if real is not None:
        from cxr_embed.embed.backbones import Backbone

        return Backbone.from_keras(str(path), preprocess="none", pooling="max")
    return DuckBackbone(path, resize="crop")


def identity(backbone):
    """What a worker process needs of a backbone to write to a store: its identity, not its model."""
    return {"fingerprint": backbone.fingerprint, "config": backbone.config, "dim": int(backbone.dim)}


def rows(ids, dim):
    """Deterministic embeddings per id (so a resumed writer reproduces the same bits)."""
    return np.stack([np.random.default_rng(int(i[2:])).standard_normal(dim).astype(np.float32) for i in ids])


def test_append_load_order_and_missing(bb, tmp_path):
    store = EmbeddingStore(tmp_path / "s.h5")
    assert not store.has(bb) and bb not in store and store.ids(bb).size == 0
    ids = [f"id{i:03d}" for i in range(25)]
    X = rows(ids, bb.dim)
    with store.writer(bb) as w:
        w.append(ids[:10], X[:10])
        w.append(ids[10:], X[10:])
        assert store.ids(bb).tolist() == ids  # readable while the writer is open
    assert bb in store and store.has(bb.fingerprint)
    got_ids, got = store.load(bb, ids[::-3])
    assert got_ids.tolist() == ids[::-3] and got.dtype == np.float32
    assert got.tobytes() == X[::-3].tobytes()
    all_ids, all_X = store.load(bb.fingerprint)
    assert all_ids.tolist() == ids and all_X.tobytes() == X.tobytes()
    missing = [f"nope{i}" for i in range(13)]
    with pytest.raises(MissingIdsError) as e:
        store.load(bb, ids[:2] + missing)
    msg = str(e.value)
    assert "13 of 15" in msg and "nope9" in msg and "nope10" not in msg and str(store.path) in msg
    info = store.info()
    assert info["backbones"][bb.fingerprint]["count"] == 25
    assert info["backbones"][bb.fingerprint]["dim"] == bb.dim
    assert info["backbones"][bb.fingerprint]["config"] == json.loads(json.dumps(bb.config))
    assert "25 x" in repr(store)


def test_append_refuses_duplicates_and_bad_shapes(bb, tmp_path):
    store = EmbeddingStore(tmp_path / "s.h5")
    X = rows(["id1", "id2"], bb.dim)
    with store.writer(bb) as w:
        w.append(["id1"], X[:1])
        with pytest.raises(ValueError, match="already stored"):
            w.append(["id1"], X[:1])
        with pytest.raises(ValueError, match="within the batch"):
            w.append(["id2", "id2"], np.concatenate([X[1:], X[1:]]))
        with pytest.raises(ValueError, match="shape"):
            w.append(["id2"], X[1:, :-1])
        with pytest.raises(ValueError, match="NaN"):
            w.append(["id2"], np.full((1, bb.dim), np.nan, np.float32))
    with store.writer(bb) as w:  # refused across sessions too
        with pytest.raises(ValueError, match="already stored"):
            w.append(["id1"], X[:1])
    assert store.ids(bb).tolist() == ["id1"]


def test_float16_and_self_description(bb, tmp_path):
    store = EmbeddingStore(tmp_path / "s.h5", compression="lzf")
    ids = [f"id{i}" for i in range(7)]
    X = rows(ids, bb.dim)
    with store.writer(bb, dtype="float16") as w:
        w.append(ids, X)
    _, got = store.load(bb, ids)
    assert got.dtype == np.float32 and got.tobytes() == X.astype(np.float16).astype(np.float32).tobytes()
    with pytest.raises(StoreError, match="float16"):
        with store.writer(bb, dtype="float32"):
            pass
    with h5py.File(store.path, "r") as f:
        assert f.attrs["format"] == FORMAT and int(f.attrs["format_version"]) == 2
        for key in ("library_version", "created", "updated"):
            assert f.attrs[key]
        g = f[f"embeddings/{bb.fingerprint}"]
        assert g.attrs["fingerprint"] == bb.fingerprint and int(g.attrs["dim"]) == bb.dim
        assert json.loads(g.attrs["config"]) == json.loads(json.dumps(bb.config))
        assert g.attrs["dtype"] == "float16" and int(g.attrs["count"]) == 7
        e = g["embeddings"]
        assert e.dtype == np.float16 and e.chunks is not None and e.compression == "lzf"
        assert e.maxshape == (None, bb.dim) and g["ids"].maxshape == (None,)
        assert e.fletcher32 and len(g.attrs["attrs_sha256"]) == 64
        seg = g["segments"][()]
        assert seg["start"].tolist() == [0] and seg["stop"].tolist() == [7] and len(seg["rows_sha256"][0]) == 64
        assert h5py.check_string_dtype(g["ids"].dtype).encoding == "utf-8"


def test_wrong_format_is_refused(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "anndata"
    with pytest.raises(StoreError, match="other.h5.*format"):
        EmbeddingStore(p)
    q = tmp_path / "text.h5"
    q.write_text("not hdf5")
    with pytest.raises(StoreError, match="text.h5"):
        EmbeddingStore(q)
    with pytest.raises(StoreError, match="no such"):
        EmbeddingStore(tmp_path / "absent.h5", mode="r")


def test_fingerprint_refusal_and_separate_groups(bb, bb2, tmp_path):
    assert bb.fingerprint != bb2.fingerprint
    store = EmbeddingStore(tmp_path / "s.h5")
    with store.writer(bb) as w:
        w.append(["a"], rows(["id1"], bb.dim))
    with store.writer(bb2) as w:
        w.append(["a"], rows(["id2"], bb2.dim))
    assert store.load(bb, ["a"])[1].tobytes() != store.load(bb2, ["a"])[1].tobytes()
    assert set(store.info()["backbones"]) == {bb.fingerprint, bb2.fingerprint}
    # a group whose stored config disagrees with the backbone asked for is never mixed into
    with h5py.File(store.path, "a") as f:
        g = f[f"embeddings/{bb.fingerprint}"]
        cfg = json.loads(g.attrs["config"])
        cfg["tampered"] = True
        g.attrs["config"] = json.dumps(cfg)
    with pytest.raises(FingerprintMismatchError, match="config"):
        store.load(bb, ["a"])
    with pytest.raises(FingerprintMismatchError):
        with store.writer(bb):
            pass
    with h5py.File(store.path, "a") as f:
        f[f"embeddings/{bb2.fingerprint}"].attrs["fingerprint"] = "0" * 64
    with pytest.raises(FingerprintMismatchError, match="stamped"):
        store.ids(bb2)
    with pytest.raises(MissingIdsError, match="no embeddings"):
        store.load("f" * 64)


def test_second_writer_in_process_is_refused(bb, tmp_path):
    store = EmbeddingStore(tmp_path / "s.h5")
    with store.writer(bb):
        with pytest.raises(StoreLockedError, match="another writer"):
            with EmbeddingStore(tmp_path / "s.h5").writer(bb):
                pass
        with pytest.raises(StoreLockedError):
            merge([], store)
    with store.writer(bb) as w:  # released on exit
        w.append(["x"], rows(["id1"], bb.dim))


_HOLDER = textwrap.dedent(
    """
    import json, sys, time, types
    from cxr_embed.embed.store import EmbeddingStore
    ident = types.SimpleNamespace(**json.loads(sys.argv[2]))
    with EmbeddingStore(sys.argv[1]).writer(ident) as w:
        open(sys.argv[3], "w").close()
        time.sleep(60)
    """
)


def _python(script, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_second_writer_in_other_process_is_refused_and_sigkill_releases(bb, tmp_path):
    store_path, ready = tmp_path / "s.h5", tmp_path / "ready"
    proc = _python(_HOLDER, store_path, json.dumps(identity(bb)), ready)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
            time.sleep(0.02)
        with pytest.raises(StoreLockedError, match="s.h5"):
            with EmbeddingStore(store_path).writer(bb):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with EmbeddingStore(store_path).writer(bb) as w:  # no stale lock after SIGKILL
        w.append(["a"], rows(["id1"], bb.dim))


_WRITER = textwrap.dedent(
    """
    import json, sys, types
    import numpy as np
    from cxr_embed.embed.store import EmbeddingStore
    ident = types.SimpleNamespace(**json.loads(sys.argv[2]))
    ids = [f"id{i:04d}" for i in range(int(sys.argv[3]))]
    store = EmbeddingStore(sys.argv[1])
    open(sys.argv[4], "w").close()  # imports done
    while True:
        with store.writer(ident) as w:  # a new session every 4 batches: kills also hit compactions
            todo = [i for i in ids if i not in w.existing]
            if not todo:
                break
            for b in range(0, min(len(todo), 20), 5):
                batch = todo[b:b + 5]
                X = np.stack([np.random.default_rng(int(i[2:])).standard_normal(ident.dim).astype(np.float32)
                              for i in batch])
                w.append(batch, X)
    """
)


def test_store_kill_and_resume_bit_for_bit(bb, tmp_path):
    n = 200
    ident = json.dumps(identity(bb))
    ref = tmp_path / "ref.h5"
    ready = tmp_path / "ready"
    p = _python(_WRITER, ref, ident, n, ready)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    ref_ids, ref_X = EmbeddingStore(ref).load(bb)
    assert ref_ids.size == n
    killed = tmp_path / "killed.h5"
    rng = random.Random()
    seen_sizes = []
    for _ in range(4):
        ready.unlink(missing_ok=True)
        proc = _python(_WRITER, killed, ident, n, ready)
        deadline = time.time() + 60
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the run (a full run takes a few seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = EmbeddingStore(killed)  # opens whatever moment the kill hit
        ids = store.ids(bb).tolist()
        assert ids == ref_ids.tolist()[: len(ids)] and len(ids) % 5 == 0
        seen_sizes.append(len(ids))
    print('rows committed at each kill:', seen_sizes)
    proc = _python(_WRITER, killed, ident, n, ready)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    ids, X = EmbeddingStore(killed).load(bb)
    assert ids.tolist() == ref_ids.tolist() and X.tobytes() == ref_X.tobytes()
    assert not EmbeddingStore(killed).journal_dir.exists()
    with h5py.File(killed, "r") as f:
        assert f[f"embeddings/{bb.fingerprint}/ids"].shape == (n,)  # compacted, no duplicates


_FIRST_SESSION = textwrap.dedent(
    """
    import json, sys, time, types
    import numpy as np
    from cxr_embed.embed.store import EmbeddingStore
    ident = types.SimpleNamespace(**json.loads(sys.argv[2]))
    store = EmbeddingStore(sys.argv[1])
    with store.writer(ident) as w:  # the first session: its batches are committed to the journal only
        for b in range(int(sys.argv[4])):
            batch = [f"id{i:04d}" for i in range(5 * b, 5 * b + 5)]
            X = np.stack([np.random.default_rng(int(i[2:])).standard_normal(ident.dim).astype(np.float32)
                          for i in batch])
            w.append(batch, X)
        open(sys.argv[3], "w").close()  # committed; the kill lands here, before any compaction
        time.sleep(120)
    """
)


def test_sigkill_during_the_first_run_then_read_only_open_reads_the_committed_rows(bb, tmp_path):
    """Kills that land before the first compaction leave only a journal: mode='r' must read it."""
    n = 200
    ident = json.dumps(identity(bb))
    ref = tmp_path / "ref.h5"
    ready = tmp_path / "ready"
    p = _python(_WRITER, ref, ident, n, ready)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    ref_ids, ref_X = EmbeddingStore(ref).load(bb)
    # a kill after 1 and after 3 committed batches of the first session, by construction (a random
    # kill time missed that window in all 10 tries of one CI run: the session lasts milliseconds)
    for batches in (1, 3):
        killed, committed = tmp_path / f"journal{batches}.h5", tmp_path / f"committed{batches}"
        proc = _python(_FIRST_SESSION, killed, ident, committed, batches)
        deadline = time.time() + 60
        while not committed.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert committed.exists(), proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not killed.exists() and EmbeddingStore(killed)._journal_files()  # only a journal
        ro = EmbeddingStore(killed, "r")
        ids, X = ro.load(bb)
        assert ids.tolist() == ref_ids.tolist()[: 5 * batches]
        assert X.tobytes() == ref_X[: 5 * batches].tobytes()
        assert ro.verify().ok
    # kills at random times of the first run: whatever was committed reads back, nothing else
    rng = random.Random()
    for attempt in range(4):
        killed = tmp_path / f"first{attempt}.h5"
        ready.unlink(missing_ok=True)
        proc = _python(_WRITER, killed, ident, n, ready)
        deadline = time.time() + 60
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = EmbeddingStore(killed)
        if not killed.exists() and not store._journal_files():
            with pytest.raises(StoreError, match="no such embedding store"):  # nothing was committed yet
                EmbeddingStore(killed, "r")
            continue
        ro = EmbeddingStore(killed, "r")
        ids, X = ro.load(bb)
        assert ids.tolist() == ref_ids.tolist()[: ids.size] and ids.size % 5 == 0 and ids.size > 0
        assert X.tobytes() == ref_X[: ids.size].tobytes()
        assert ro.verify().ok


def test_leftover_journal_is_readable_and_compacted(bb, tmp_path):
    """A killed compaction (copy not renamed; journal left) reads back exactly once."""
    store = EmbeddingStore(tmp_path / "s.h5")
    X = rows([f"id{i}" for i in range(6)], bb.dim)
    with store.writer(bb) as w:
        w.append(["a", "b", "c"], X[:3])
    w = store.writer(bb).__enter__()
    w.append(["d", "e", "f"], X[3:])
    w._lock_cm.__exit__(None, None, None)  # the process "dies" before close(): journal left
    w._lock_cm = None
    (store.path.parent / f".{store.path.name}.dead.compact.tmp").write_bytes(b"half written")
    assert store.info()["pending_journal_batches"] == 1
    assert store.load(bb)[0].tolist() == list("abcdef")
    # a compaction killed after its rename but before deleting the journal: rows present twice on disk
    jfile = store._journal_files()[0]
    keep = jfile.read_bytes()
    store.compact()
    store.journal_dir.mkdir()
    jfile.write_bytes(keep)
    ids, got = store.load(bb)
    assert ids.tolist() == list("abcdef") and got.tobytes() == X.tobytes()
    store.compact()
    assert not store.journal_dir.exists()
    assert not list(store.path.parent.glob("*.compact.tmp"))
    with h5py.File(store.path, "r") as f:
        assert f[f"embeddings/{bb.fingerprint}/ids"].shape == (6,)


def test_merge(bb, bb2, tmp_path):
    ids = [f"id{i:02d}" for i in range(12)]
    X = rows(ids, bb.dim)
    a, b, c = (EmbeddingStore(tmp_path / f"{n}.h5") for n in "abc")
    with a.writer(bb) as w:
        w.append(ids[:8], X[:8])
    with b.writer(bb) as w:
        w.append(ids[5:], X[5:])  # 5..7 overlap with identical bits
    with b.writer(bb2) as w:
        w.append(ids[:3], rows(ids[:3], bb2.dim) + 1)
    out = merge([a, tmp_path / "b.h5"], tmp_path / "all.h5")
    got_ids, got = out.load(bb, ids)
    assert got.tobytes() == X.tobytes()
    assert sorted(out.ids(bb).tolist()) == ids
    assert out.info()["backbones"][bb2.fingerprint]["count"] == 3
    with c.writer(bb) as w:
        w.append(ids[:1], X[:1] + 1)  # same id, other bits
    with pytest.raises(StoreError, match="different embedding bits"):
        merge([c], out)
    assert out.load(bb, ids)[1].tobytes() == X.tobytes()  # the failed merge changed nothing readable


def test_cli_store_info(bb, tmp_path, capsys):
    from cxr_embed.cli import _COMMAND_MODULES, main

    if "_extract" not in _COMMAND_MODULES:
        from cxr_embed.cli import _extract

        import argparse

        parser = argparse.ArgumentParser()
        _extract.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["store", "info", str(tmp_path / "s.h5"), "--json"])
        run = lambda argv: args.func(parser.parse_args(argv))  # noqa: E731
    else:
        run = main
    store = EmbeddingStore(tmp_path / "s.h5")
    with store.writer(bb) as w:
        w.append(["a", "b"], rows(["id1", "id2"], bb.dim))
    assert run(["store", "info", str(store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbones"][bb.fingerprint]["count"] == 2
    assert run(["store", "info", str(store.path)]) == 0
    text = capsys.readouterr().out
    assert bb.fingerprint[:12] in text and "2 embeddings" in text


def test_chunked_selective_read(bb, tmp_path):
    """load(ids) reads only the chunks holding the asked rows and aligns them across chunks and journal."""
    from cxr_embed.embed.store import _read_selected

    data = np.arange(100 * 4, dtype=np.float32).reshape(100, 4)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        ds = f.create_dataset("x", data=data, chunks=(7, 4))
        rows = np.array([0, 1, 6, 7, 8, 50, 69, 70, 99])
        assert _read_selected(ds, rows).tobytes() == data[rows].tobytes()
        assert _read_selected(ds, np.array([], np.int64)).shape == (0, 4)
    store = EmbeddingStore(tmp_path / "s.h5")
    ids = [f"id{i:03d}" for i in range(30)]
    X = rows_ = np.random.default_rng(0).standard_normal((30, bb.dim)).astype(np.float32)
    with store.writer(bb) as w:
        w.append(ids[:20], X[:20])
    w = store.writer(bb).__enter__()  # leave the last rows in the journal (a killed writer)
    w.append(ids[20:], X[20:])
    w._lock_cm.__exit__(None, None, None)
    w._lock_cm = None
    ask = ["id025", "id003", "id003", "id019", "id020"]
    got_ids, got = store.load(bb, ask)
    assert got_ids.tolist() == ask
    assert got.tobytes() == rows_[[25, 3, 3, 19, 20]].tobytes()


def test_provenance_keys_of_the_config_do_not_lock_the_store(bb, tmp_path):
    """Upgrading Keras or moving the weights file keeps the same function (same fingerprint:
    architecture and weight *content*): the store stays readable and resumable. Identity keys
    of the config still refuse."""
    store = EmbeddingStore(tmp_path / "s.h5")
    with store.writer(bb) as w:
        w.append(["a"], rows(["id1"], bb.dim))

    class Moved:
        fingerprint = bb.fingerprint
        dim = bb.dim
        config = {**bb.config, "keras_version": "99.0.0", "weights": "/somewhere/else/model.keras"}

    ids, X = store.load(Moved(), ["a"])
    assert ids.tolist() == ["a"] and X.tobytes() == store.load(bb, ["a"])[1].tobytes()
    with store.writer(Moved()) as w:  # resuming after the upgrade appends to the same group
        w.append(["b"], rows(["id2"], bb.dim))
    assert store.ids(bb).tolist() == ["a", "b"]

    class Other(Moved):
        config = {**bb.config, "pooling": "max" if bb.config.get("pooling") != "max" else "avg"}

    with pytest.raises(FingerprintMismatchError, match="config differs"):
        store.load(Other(), ["a"])
