"""A generated corpus of damaged stores, journals and faults (issue 10).

Each scenario damages a good store in one way; the test asserts the exact exception class of the
first read, that the message names the damaged file, that it is a ``CxrEmbedError``, that no entry
point (open, load, ids, info, writer, merge, verify) raises anything else, and that what was
committed before the damage is not lost. The table of outcomes is in docs/errors.md.
"""
from __future__ import annotations

import os
import shutil
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxr_embed.embed.store import EmbeddingStore, merge
from cxr_embed.exceptions import (CxrEmbedError, FingerprintMismatchError, StoreCorruptError, StoreError,
                                  StoreInputError)

DATA = Path(__file__).resolve().parents[1] / "data"
DIM = 64
BB = types.SimpleNamespace(fingerprint="f" * 16 + "good", config={"name": "demo", "pooling": "avg"}, dim=DIM)
IDS = [f"img{i:05d}" for i in range(30)]
X = np.random.default_rng(0).standard_normal((30, DIM)).astype(np.float32)


_TEMPLATES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _templates(tmp_path_factory):
    """Where good_store keeps the store it copies for each scenario."""
    _TEMPLATES.clear()
    _TEMPLATES["dir"] = tmp_path_factory.mktemp("templates")
    yield
    _TEMPLATES.clear()


def good_store(folder: Path, *, journal_batches: int = 0, compression="gzip") -> Path:
    """Three writer sessions of 10 rows (three checksum segments), optionally more rows left in the journal.

    Built once per compression and copied (the corpus damages a fresh copy each time).
    """
    if compression in _TEMPLATES and not journal_batches:
        shutil.copyfile(_TEMPLATES[compression], folder / "emb.h5")
        return folder / "emb.h5"
    store = EmbeddingStore(folder / "emb.h5", compression=compression)
    for k in range(3):
        with store.writer(BB) as w:
            w.append(IDS[10 * k : 10 * k + 10], X[10 * k : 10 * k + 10])
    if journal_batches:
        leave_journal(store, journal_batches)
    else:
        template = _TEMPLATES["dir"] / f"{compression}.h5"
        shutil.copyfile(store.path, template)
        _TEMPLATES[compression] = template
    return store.path


def leave_journal(store: EmbeddingStore, n: int, first: int = 0) -> list[Path]:
    """Append ``n`` batches of 2 new rows and "die" before close(): the journal stays."""
    w = store.writer(BB).__enter__()
    for b in range(n):
        k = first + b
        w.append([f"new{k:03d}a", f"new{k:03d}b"], np.full((2, DIM), k + 0.5, np.float32))
    w._lock_cm.__exit__(None, None, None)
    w._lock_cm = None
    return store._journal_files()


def flip(path: Path, offset: int, n: int = 4) -> None:
    blob = bytearray(path.read_bytes())
    for i in range(n):
        blob[offset + i] ^= 0xFF
    path.write_bytes(bytes(blob))


def replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    blob = path.read_bytes()
    assert blob.count(old) >= 1, old
    path.write_bytes(blob.replace(old, new, 1))


def chunk_offset(path: Path, name: str) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
        return info.byte_offset, info.size


def group(path):
    return f"embeddings/{BB.fingerprint}"


def edit(path: Path, fn, key=None) -> None:
    with h5py.File(path, "a") as f:
        fn(f[key] if key else f)


# ----------------------------------------------------------------------------- the corpus
# name -> (damage(folder, store_path) -> file the message must name, operation, exact exception)
CORPUS: dict = {}


def scenario(name, op, exc):
    def deco(fn):
        CORPUS[name] = (fn, op, exc)
        return fn
    return deco


@scenario("gzip embedding block: bytes flipped", "load", StoreCorruptError)
def _(folder, p):
    off, size = chunk_offset(p, f"{group(p)}/embeddings")
    flip(p, off + size // 2)
    return p


@scenario("gzip embedding block flipped, selective load(ids)", "load_ids", StoreCorruptError)
def _(folder, p):
    off, size = chunk_offset(p, f"{group(p)}/embeddings")
    flip(p, off + size // 3)
    return p


@scenario("lzf embedding block: bytes flipped (fletcher32)", "load_ids", StoreCorruptError)
def _(folder, p):
    p.unlink()
    good_store(folder, compression="lzf")
    off, size = chunk_offset(p, f"{group(p)}/embeddings")
    flip(p, off + size // 2)
    return p


@scenario("one embedding value rewritten through HDF5 (checksum segment)", "load", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g["embeddings"].__setitem__((15, 3), 42.0), group(p))
    return p


@scenario("an id rewritten through HDF5", "load_ids", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g["ids"].__setitem__(3, "img99999"), group(p))
    return p


@scenario("id bytes flipped in the file's heap", "load", StoreCorruptError)
def _(folder, p):
    replace_bytes(p, b"img00017", b"img0001X")
    return p


@scenario("config attribute edited", "load", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g.attrs.__setitem__("config", '{"name":"evil","pooling":"avg"}'), group(p))
    return p


@scenario("config bytes flipped in the file", "load", StoreCorruptError)
def _(folder, p):
    replace_bytes(p, b'"name":"demo"', b'"name":"dEmo"')
    return p


@scenario("config edited, read with the backbone", "load_bb", FingerprintMismatchError)
def _(folder, p):
    edit(p, lambda g: g.attrs.__setitem__("config", '{"name":"evil","pooling":"avg"}'), group(p))
    return p


@scenario("dtype attribute edited", "load", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g.attrs.__setitem__("dtype", "float16"), group(p))
    return p


@scenario("count attribute edited", "load", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g.attrs.__setitem__("count", 29), group(p))
    return p


@scenario("compute attribute edited", "ids", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g.attrs.__setitem__("compute", '[{"precision":"float64"}]'), group(p))
    return p


@scenario("attrs_sha256 removed", "ids", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g.attrs.__delitem__("attrs_sha256"), group(p))
    return p


@scenario("fewer rows than ids", "load", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g["embeddings"].resize((29, DIM)), group(p))
    return p


@scenario("more ids than rows", "ids", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g["ids"].resize((31,)), group(p))
    return p


@scenario("duplicate id in the main file", "ids", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g["ids"].__setitem__(4, "img00003"), group(p))
    return p


@scenario("checksum segments removed", "ids", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g.__delitem__("segments"), group(p))
    return p


@scenario("checksum segments overlap", "ids", StoreCorruptError)
def _(folder, p):
    def fn(g):
        seg = g["segments"][()]
        seg[1]["start"] = 5
        g["segments"][...] = seg
    edit(p, fn, group(p))
    return p


@scenario("group without its embeddings dataset", "ids", StoreCorruptError)
def _(folder, p):
    edit(p, lambda g: g.__delitem__("embeddings"), group(p))
    return p


@scenario("group fingerprint attribute edited", "load", FingerprintMismatchError)
def _(folder, p):
    edit(p, lambda g: g.attrs.__setitem__("fingerprint", "0" * 20), group(p))
    return p


@scenario("main file truncated to half", "open", StoreCorruptError)
def _(folder, p):
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    return p


@scenario("zero-byte store", "open", StoreError)
def _(folder, p):
    p.write_bytes(b"")
    return p


@scenario("an HDF5 file that is not ours", "open", StoreError)
def _(folder, p):
    p.unlink()
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "anndata"
        f["X"] = np.zeros(3)
    return p


@scenario("format_version 'abc'", "open", StoreCorruptError)
def _(folder, p):
    edit(p, lambda f: f.attrs.__setitem__("format_version", "abc"))
    return p


@scenario("format_version from the future", "open", StoreError)
def _(folder, p):
    edit(p, lambda f: f.attrs.__setitem__("format_version", 99))
    return p


@scenario("store path is a folder", "open", StoreError)
def _(folder, p):
    p.unlink()
    p.mkdir()
    return p


@scenario("store path is a FIFO (must not hang)", "open", StoreError)
def _(folder, p):
    p.unlink()
    os.mkfifo(p)
    return p


@scenario("store path is a dangling symlink", "open", StoreError)
def _(folder, p):
    p.unlink()
    p.symlink_to(folder / "nowhere.h5")
    return p


@scenario("journal batch truncated", "load", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 3)[1]
    j.write_bytes(j.read_bytes()[:700])
    return j


@scenario("journal batch garbled", "ids", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 2)[0]
    j.write_bytes(os.urandom(j.stat().st_size))
    return j


@scenario("journal batch of zero bytes", "load_ids", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 2)[1]
    j.write_bytes(b"")
    return j


@scenario("journal batch: embedding bytes flipped", "load", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 2)[1]
    with h5py.File(j, "r") as f:
        off = f["embeddings"].id.get_offset()
    flip(j, off + 8)
    return j


@scenario("journal batch: id rewritten", "ids", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 2)[0]
    edit(j, lambda f: f["ids"].__setitem__(0, "img00001"))
    return j


@scenario("journal batch: dim attribute edited", "load", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 1)[0]
    edit(j, lambda f: f.attrs.__setitem__("dtype", "float16"))
    return j


@scenario("journal batch: ids and rows differ in length", "ids", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 1)[0]
    with h5py.File(j, "a") as f:
        ids = f["ids"][()]
        del f["ids"]
        f.create_dataset("ids", data=ids[:1], dtype=h5py.string_dtype())
    return j


@scenario("journal batch: checksums removed", "load", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 1)[0]
    edit(j, lambda f: f.attrs.__delitem__("rows_sha256"))
    return j


@scenario("journal batch: a foreign HDF5 file", "ids", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 1)[0]
    j.unlink()
    with h5py.File(j, "w") as f:
        f["x"] = np.zeros(2)
    return j


@scenario("journal batch: id also in the main file with other bits", "load", StoreCorruptError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 1)[0]
    X2 = np.full((1, DIM), 7.0, np.float32)
    with h5py.File(j, "a") as f:  # a consistent forgery: the digests are recomputed
        from cxr_embed.embed._store_io import attrs_digest, ids_digest, rows_digest

        for k in ("ids", "embeddings"):
            del f[k]
        f.create_dataset("ids", data=np.array(["img00000"], object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=X2)
        f.attrs["count"] = 1
        f.attrs["attrs_sha256"] = attrs_digest(f.attrs)
        f.attrs["ids_sha256"] = ids_digest(["img00000"])
        f.attrs["rows_sha256"] = rows_digest(X2, "float32")
    return p


@scenario("journal batch is a symlink", "ids", StoreError)
def _(folder, p):
    j = leave_journal(EmbeddingStore(p), 1)[0]
    target = folder / "elsewhere.h5"
    os.replace(j, target)
    j.symlink_to(target)
    return j


@scenario("journal folder is a symlink", "ids", StoreError)
def _(folder, p):
    other = folder / "other_journal"
    other.mkdir()
    EmbeddingStore(p).journal_dir.symlink_to(other)
    return EmbeddingStore(p).journal_dir


@scenario("journal folder is a file", "write", StoreError)
def _(folder, p):
    EmbeddingStore(p).journal_dir.write_text("not a folder")
    return EmbeddingStore(p).journal_dir


@scenario("lock file is a symlink to a user file", "write", StoreError)
def _(folder, p):
    victim = folder / "thesis.txt"
    victim.write_text("three years of work")
    EmbeddingStore(p).lock_path.unlink(missing_ok=True)  # a lock file left by earlier writers is harmless
    EmbeddingStore(p).lock_path.symlink_to(victim)
    return EmbeddingStore(p).lock_path


@scenario("lock file is a folder", "write", StoreError)
def _(folder, p):
    EmbeddingStore(p).lock_path.unlink(missing_ok=True)
    EmbeddingStore(p).lock_path.mkdir()
    return EmbeddingStore(p).lock_path


OPS = {
    "open": lambda p: EmbeddingStore(p, "r"),
    "load": lambda p: EmbeddingStore(p, "r").load(BB.fingerprint),
    "load_bb": lambda p: EmbeddingStore(p, "r").load(BB),
    "load_ids": lambda p: EmbeddingStore(p, "r").load(BB.fingerprint, IDS[::7]),
    "ids": lambda p: EmbeddingStore(p, "r").ids(BB.fingerprint),
    "info": lambda p: EmbeddingStore(p, "r").info(),
    "write": lambda p: _write_one(p),
    "merge": lambda p: merge([p], Path(p).parent / "merged.h5"),
    "verify": lambda p: EmbeddingStore(p, "r").verify(),
}


def _write_one(p):
    with EmbeddingStore(p).writer(BB) as w:
        w.append(["extra"], np.zeros((1, DIM), np.float32))


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_store(name, tmp_path):
    damage, op, exc = CORPUS[name]
    p = good_store(tmp_path)
    named = damage(tmp_path, p)
    victim = tmp_path / "thesis.txt"
    with pytest.raises(CxrEmbedError) as e:
        OPS[op](p)
    assert type(e.value) is exc, f"{name}: {type(e.value).__name__}: {e.value}"
    assert str(named) in str(e.value), f"{name}: the message does not name {named}: {e.value}"
    assert "fix" in str(e.value)
    for other, fn in OPS.items():  # every entry point: success or a CxrEmbedError, never a bare built-in
        try:
            result = fn(p)
        except CxrEmbedError:
            continue
        if other == "verify" and op != "load_bb":
            assert not result.ok and any(str(named) in msg for msg in result.problems), (name, str(result))
    if victim.exists():
        assert victim.read_text() == "three years of work"  # never written through the link


# ----------------------------------------------------------------------------- recovery
def test_killed_first_run_reads_the_journal_read_only(tmp_path):
    store = EmbeddingStore(tmp_path / "emb.h5")
    leave_journal(store, 3)  # the first run died: no main file, only committed batches
    assert not store.path.exists()
    ro = EmbeddingStore(store.path, "r")
    ids, got = ro.load(BB.fingerprint)
    assert ids.tolist() == [f"new{k:03d}{s}" for k in range(3) for s in "ab"]
    assert got.tobytes() == np.repeat(np.arange(3) + 0.5, 2)[:, None].astype(np.float32).repeat(DIM, 1).tobytes()
    assert ro.info()["pending_journal_batches"] == 3 and ro.verify().ok
    with pytest.raises(StoreError, match="no such embedding store.*journal"):
        EmbeddingStore(tmp_path / "absent.h5", "r")


def test_repair_moves_a_damaged_journal_batch_aside_and_keeps_the_rest(tmp_path):
    p = good_store(tmp_path)
    store = EmbeddingStore(p)
    j = leave_journal(store, 3)
    j[1].write_bytes(j[1].read_bytes()[:500])
    report = store.verify()
    assert not report.ok and [x["problem"] is not None for x in report.journal] == [False, True, False]
    fixed = store.repair()
    assert fixed.ok and any("journal" in a and j[1].name in a for a in fixed.actions)
    assert (store.quarantine_dir / f"journal-{j[1].name}").read_bytes()  # moved, not deleted
    ids, got = store.load(BB.fingerprint)
    assert ids.tolist()[:30] == IDS and got[:30].tobytes() == X.tobytes()  # nothing committed before is lost
    assert ids.tolist()[30:] == ["new000a", "new000b", "new002a", "new002b"]
    with store.writer(BB) as w:  # the dropped rows can be computed again
        assert "new001a" not in w.existing
        w.append(["new001a"], np.zeros((1, DIM), np.float32))


def test_repair_keeps_every_intact_segment(tmp_path):
    p = good_store(tmp_path)
    edit(p, lambda g: g["embeddings"].__setitem__((15, 3), 42.0), group(p))
    store = EmbeddingStore(p)
    report = store.repair()
    assert report.ok, str(report)
    assert any("rows 10-20" in a for a in report.actions)
    ids, got = store.load(BB.fingerprint)
    keep = list(range(10)) + list(range(20, 30))
    assert ids.tolist() == [IDS[i] for i in keep] and got.tobytes() == X[keep].tobytes()
    backups = list(store.quarantine_dir.glob("emb.h5.*.damaged"))
    assert len(backups) == 1  # the damaged original is kept
    with h5py.File(backups[0], "r") as f:
        assert f[f"{group(p)}/embeddings"][15, 3] == 42.0


def test_repair_drops_a_format1_group_whose_lengths_disagree(tmp_path):
    p = tmp_path / "v1.h5"
    shutil.copyfile(DATA / "store_v1.h5", p)
    fp = "v1" + "0" * 62
    edit(p, lambda g: g["ids"].resize((23,)), f"embeddings/{fp}")
    with pytest.raises(StoreCorruptError, match="23 ids but 24"):
        EmbeddingStore(p, "r").load(fp)
    report = EmbeddingStore(p).repair()
    assert report.ok and any("whole group dropped" in a for a in report.actions)
    assert EmbeddingStore(p).fingerprints() == []


def test_repair_refuses_a_file_that_is_not_a_store(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"my notes")
    with pytest.raises(StoreError, match="not an HDF5 file"):
        EmbeddingStore(p)
    assert p.read_bytes() == b"my notes"


# ----------------------------------------------------------------------------- old stores
def test_format1_store_written_before_checksums_still_loads_and_is_upgraded(tmp_path):
    p = tmp_path / "v1.h5"
    shutil.copyfile(DATA / "store_v1.h5", p)
    fp = "v1" + "0" * 62
    rows = np.load(DATA / "store_v1_rows.npy")
    store = EmbeddingStore(p)
    ids, got = store.load(fp)
    assert ids.tolist() == [f"img{i:03d}" for i in range(24)] and got.tobytes() == rows.tobytes()
    report = store.verify()
    assert report.ok and report.format_version == 1 and report.groups[fp]["checked"] == "readable"
    bb = types.SimpleNamespace(fingerprint=fp, config={"name": "demo_v1", "pooling": "avg"}, dim=128)
    with store.writer(bb) as w:
        w.append(["img900"], np.ones((1, 128), np.float32))
    report = store.verify()
    assert report.ok and report.format_version == 2 and report.groups[fp]["checked"] == "sha256"
    ids, got = store.load(fp)
    assert ids.size == 25 and got[:24].tobytes() == rows.tobytes()


def test_format1_store_with_a_damaged_gzip_block(tmp_path):
    p = tmp_path / "v1.h5"
    shutil.copyfile(DATA / "store_v1.h5", p)
    fp = "v1" + "0" * 62
    with h5py.File(p, "r") as f:
        info = f[f"embeddings/{fp}/embeddings"].id.get_chunk_info(0)
    flip(p, info.byte_offset + info.size // 2)
    with pytest.raises(StoreCorruptError) as e:
        EmbeddingStore(p, "r").load(fp)
    assert str(p) in str(e.value) and "store repair" in str(e.value)


# ----------------------------------------------------------------------------- merge
def test_refused_merge_leaves_into_exactly_as_it_was(tmp_path):
    into = good_store(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = EmbeddingStore(tmp_path / "a" / "s.h5")
    with a.writer(BB) as w:
        w.append(["shard_a1", "shard_a2"], np.ones((2, DIM), np.float32))
    b = EmbeddingStore(tmp_path / "b" / "s.h5")
    with b.writer(BB) as w:
        w.append(["shard_a1"], np.zeros((1, DIM), np.float32))  # same id, other bits
    before = into.read_bytes()
    with pytest.raises(StoreError, match="different embedding bits") as e:
        merge([a, b], into)
    assert type(e.value) is StoreError and str(b.path) in str(e.value)
    assert into.read_bytes() == before  # the first shard was not half written
    assert not list(tmp_path.glob(".*.tmp")) and not EmbeddingStore(into).journal_dir.exists()
    # a damaged shard is refused before anything is written
    with h5py.File(a.path, "a") as f:
        f[f"{group(a.path)}/ids"][0] = "tampered"
    with pytest.raises(StoreCorruptError) as e:
        merge([b, a], into)
    assert str(a.path) in str(e.value) and into.read_bytes() == before


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["nul id", "empty id", "2-d ids", "object rows", "nan rows", "wrong shape",
                                  "not a backbone", "bad mode", "bad dtype", "load 2-d ids"])
def test_bad_input_is_a_store_input_error(case, tmp_path):
    store = EmbeddingStore(good_store(tmp_path))
    row = np.zeros((1, DIM), np.float32)
    with pytest.raises(StoreInputError) as e:
        if case == "bad mode":
            EmbeddingStore(store.path, "w")
        elif case == "bad dtype":
            store.writer(BB, dtype="float64")
        elif case == "not a backbone":
            store.writer(object())
        elif case == "load 2-d ids":
            store.load(BB, [["img00001"]])
        else:
            with store.writer(BB) as w:
                if case == "nul id":
                    w.append(["a\x00b"], row)
                elif case == "empty id":
                    w.append([""], row)
                elif case == "2-d ids":
                    w.append([["a"]], row)
                elif case == "object rows":
                    w.append(["a"], np.array([["x"] * DIM], object))
                elif case == "nan rows":
                    w.append(["a"], row * np.nan)
                else:
                    w.append(["a"], row[:, :-1])
    assert isinstance(e.value, ValueError) and isinstance(e.value, CxrEmbedError)
    assert store.load(BB)[1].tobytes() == X.tobytes()  # nothing stored, nothing lost


# ----------------------------------------------------------------------------- disk full
@pytest.fixture
def small_disk(tmp_path):
    """A 640 KiB tmpfs (root only); skipped where it cannot be mounted."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_disk_full_is_a_store_write_error_and_resume_is_bit_identical(small_disk, tmp_path):
    from cxr_embed.exceptions import StoreWriteError

    dim = 256
    bb = types.SimpleNamespace(fingerprint="diskfull", config={"name": "demo"}, dim=dim)
    ids = [f"img{i:05d}" for i in range(1200)]
    X_all = np.random.default_rng(1).standard_normal((len(ids), dim)).astype(np.float32)
    store = EmbeddingStore(small_disk / "emb.h5")
    with store.writer(bb) as w:  # a first session fits
        w.append(ids[:32], X_all[:32])
    done, error = 32, None
    w = store.writer(bb).__enter__()
    try:
        for b in range(done, len(ids), 32):
            w.append(ids[b : b + 32], X_all[b : b + 32])
            done = b + 32
    except StoreWriteError as e:
        error = e
    finally:
        try:
            w.close()  # compacting needs a copy of the main file: may not fit either
        except StoreWriteError as e:
            error = error or e
    assert error is not None and done < len(ids), "the small disk never filled up"
    assert type(error) is StoreWriteError and str(store.path) in str(error) and "disk is full" in str(error)
    assert isinstance(error, OSError) and isinstance(error, CxrEmbedError)
    got_ids, got = EmbeddingStore(store.path, "r").load(bb.fingerprint)  # every committed row is intact
    assert got_ids.tolist() == ids[:done] and got.tobytes() == X_all[:done].tobytes()
    assert EmbeddingStore(store.path, "r").verify().ok
    assert not [p for p in small_disk.rglob(".*tmp")], "temporary files left on the full disk"
    # move to a roomy disk and resume: the same bits as an uninterrupted run
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    shutil.copyfile(store.path, roomy / "emb.h5")
    if store.journal_dir.exists():
        shutil.copytree(store.journal_dir, roomy / "emb.h5.journal")
    resumed = EmbeddingStore(roomy / "emb.h5")
    with resumed.writer(bb) as w:
        todo = [i for i in ids if i not in w.existing]
        assert todo == ids[done:]
        for b in range(0, len(todo), 32):
            w.append(todo[b : b + 32], X_all[done + b : done + b + 32])
    ref = EmbeddingStore(tmp_path / "ref.h5")
    with ref.writer(bb) as w:
        for b in range(0, len(ids), 32):
            w.append(ids[b : b + 32], X_all[b : b + 32])
    r_ids, r_X = resumed.load(bb.fingerprint)
    f_ids, f_X = ref.load(bb.fingerprint)
    assert r_ids.tolist() == f_ids.tolist() and r_X.tobytes() == f_X.tobytes()
    assert resumed.verify().ok and not resumed.journal_dir.exists()
