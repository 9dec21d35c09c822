"""Hostile inputs to cxr_embed.io.manifest: special files, control characters, paths outside root,
header-like columns, wide tables. Nothing may hang, be silently wrong, or raise a bare built-in error."""
from __future__ import annotations

import json
import os
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_embed.exceptions import CxrEmbedError, ManifestError
from cxr_embed.io.local_datasets import label_columns
from cxr_embed.io.manifest import load_manifest, summarize_manifest

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo is not available on this platform")


@contextmanager
def _deadline(seconds: int = 20):
    """Fail (instead of hanging the suite) when the block blocks, e.g. on a FIFO."""
    def _raise(*_):
        raise TimeoutError(f"blocked for {seconds} s: something opened a FIFO")
    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), 90, dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- special files
@needs_fifo
def test_manifest_path_that_is_a_fifo_is_refused_without_opening(tmp_path):
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    with _deadline(), pytest.raises(ManifestError, match=r"labels.csv: is a FIFO \(named pipe\), not a regular file"):
        load_manifest(fifo)
    with _deadline(), pytest.raises(ManifestError, match="FIFO"):
        load_manifest(fifo, format="csv")


@needs_fifo
@pytest.mark.parametrize("fifo_name", ["labels.csv", "Data_Entry_2017.csv", "x.csv.gz", "a/scan.png", "a/scan.dcm",
                                       "sub/scan.png"])
def test_fifo_inside_a_folder_is_skipped_with_a_warning(tmp_path, fifo_name):
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "b" / "2.png")
    fifo = tmp_path / fifo_name
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    with _deadline(), pytest.warns(UserWarning, match=r"skipped 1 entry that is not a regular file.*" + fifo.name):
        df = load_manifest(tmp_path)
    assert df.attrs["format"] in ("folders", "images") and set(df["image_id"]) >= {"a/1", "b/2"}
    assert fifo_name.split("/")[-1] not in " ".join(df["path"])


@needs_fifo
def test_fifo_in_a_dicom_folder_and_an_nih_image_folder(tmp_path):
    os.mkfifo(tmp_path / "x.dcm")
    with _deadline(), pytest.raises(ManifestError, match="no DICOM image found"):
        load_manifest(tmp_path, format="dicom_folder")
    nih = tmp_path / "nih"
    (nih / "images").mkdir(parents=True)
    os.mkfifo(nih / "images" / "00000001_000.png")
    (nih / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\n00000001_000.png,No Finding,1\n")
    with _deadline(), pytest.warns(UserWarning, match="not a regular file"):
        df = load_manifest(nih, check_files=False)
    with _deadline(), pytest.raises(ManifestError, match="not regular files"):
        load_manifest(nih)
    assert df["path"][0].endswith("images/00000001_000.png")


def test_folder_given_where_a_table_is_needed(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"format 'nih' needs a table \(.csv, .csv.gz, .zip\)"):
        load_manifest(tmp_path, format="nih")


# --------------------------------------------------------------------------- control characters
@pytest.mark.parametrize("column, line", [("path", 3), ("patient_id", 2), ("image_id", 3)])
def test_nul_byte_in_an_id_is_refused_with_the_csv_line(tmp_path, column, line):
    rows = {"path": ["a.png", "b.png"], "patient_id": ["p1", "p2"], "image_id": ["a", "b"], "y": [1, 0]}
    rows[column][line - 2] = rows[column][line - 2][:1] + "\x00" + rows[column][line - 2][1:]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ManifestError, match=rf"column '{column}' holds a control character.*CSV line\(s\) \[{line}\]"):
        load_manifest(tmp_path / "t.csv", check_files=False)


def test_control_characters_in_public_tables_and_file_names(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_bytes(
        b"Image Index,Finding Labels,Patient ID\n00000001_000.png,No Finding,1\n0000\x01002_000.png,No Finding,2\n")
    with pytest.raises(ManifestError, match=r"'Image Index' holds a control character.*\[3\]"):
        load_manifest(tmp_path / "Data_Entry_2017.csv", check_files=False)
    (tmp_path / "t.csv").write_text("ImageId,EncodedPixels\n1.2.3\t4,-1\n")
    with pytest.raises(ManifestError, match=r"'ImageId' holds a control character"):
        load_manifest(tmp_path / "t.csv", check_files=False)
    folder = tmp_path / "imgs"
    _png(folder / "ok.png")
    _png(folder / "bad\nname.png")
    with pytest.raises(ManifestError, match=r"image_id holds a control character.*'bad\\nname'.*rename"):
        load_manifest(folder)


# --------------------------------------------------------------------------- paths outside root
def test_paths_outside_root_are_counted_and_ids_never_absolute(tmp_path):
    data = tmp_path / "project" / "data"
    data.mkdir(parents=True)
    outside = _png(tmp_path / "elsewhere" / "scan.png")
    _png(data / "in.png")
    _png(tmp_path / "up.png")
    (data / "t.csv").write_text(f"path,patient_id,y\nin.png,p1,1\n{outside},p2,0\n../../up.png,p3,1\n")
    df = load_manifest(data / "t.csv")
    assert df["image_id"][0] == "in"
    for image_id in df["image_id"]:
        assert not image_id.startswith(("/", "..")) and not os.path.isabs(image_id)
    assert df["image_id"][1] == str(outside.with_suffix("")).lstrip("/")
    assert df["path"][2] == str(tmp_path / "up.png")
    s = summarize_manifest(df)
    assert s["n_outside_root"] == 2
    json.dumps(s)
    assert summarize_manifest(load_manifest(data / "t.csv", root=tmp_path, check_files=False))["n_outside_root"] == 1


def test_cli_prints_paths_outside_root_and_knows_every_format(tmp_path, capsys):
    from cxr_embed.cli import main
    from cxr_embed.cli._io import MANIFEST_FORMATS
    from cxr_embed.io.manifest import FORMATS

    assert MANIFEST_FORMATS == FORMATS

    _png(tmp_path / "up.png")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.csv").write_text("path,patient_id,y\n../up.png,p1,1\n")
    assert main(["manifest", str(tmp_path / "d" / "t.csv")]) == 0
    assert "paths outside root: 1" in capsys.readouterr().out


# --------------------------------------------------------------------------- generic label auto-detection
def test_constant_and_dicom_header_columns_are_not_labels_and_the_note_says_so(tmp_path):
    n = 12
    df = pd.DataFrame({"path": [f"i{i}.png" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                       "effusion": [0, 1] * 6, "pneumothorax": [0] * n, "InstanceNumber": [1] * n,
                       "Samples per Pixel": [1] * n, "Rescale Slope": [1] * n, "PixelRepresentation_DICOM": [0, 1] * 6,
                       "qc_passed": [1] * n, "tiny": [1] * 3 + [None] * 9})
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.warns(UserWarning) as caught:
        out = load_manifest(tmp_path / "t.csv", check_files=False)
    assert out.attrs["labels"] == ["effusion", "pneumothorax", "tiny"]
    msg = [str(w.message) for w in caught if "took 3 column(s) as labels" in str(w.message)]
    assert len(msg) == 1 and "\n" not in msg[0]
    assert "constant ['qc_passed']" in msg[0]
    assert "dicom header ['InstanceNumber', 'Samples per Pixel', 'Rescale Slope', 'PixelRepresentation_DICOM']" in msg[0]
    assert out["InstanceNumber"].tolist() == [1] * n  # kept as metadata
    labels, ignored = label_columns(df, exclude=["path", "patient_id"])
    assert labels == ["effusion", "pneumothorax", "tiny"] and ignored["constant"] == ["qc_passed"]


def test_auto_detection_is_logged_when_nothing_is_passed_over(tmp_path, caplog):
    (tmp_path / "t.csv").write_text("path,patient_id,effusion\na.png,p1,1\nb.png,p2,0\n")
    with caplog.at_level("INFO", logger="cxr_embed"), warnings.catch_warnings():
        warnings.simplefilter("error")
        load_manifest(tmp_path / "t.csv", check_files=False)
    assert "took 1 column(s) as labels: ['effusion']" in caplog.text


def test_many_label_columns_build_without_fragmentation_warning(tmp_path):
    n, k = 50, 193
    rng = np.random.default_rng(0)
    data = {"path": [f"i{i}.png" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)]}
    data.update({f"finding_{j}": rng.integers(0, 2, n) for j in range(k)})
    pd.DataFrame(data).to_csv(tmp_path / "wide.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas' PerformanceWarning ("highly fragmented") would fail here
        df = load_manifest(tmp_path / "wide.csv", check_files=False)
    assert len(df.attrs["labels"]) == k and df[[f"finding_{j}" for j in range(k)]].dtypes.eq(np.float32).all()


# --------------------------------------------------------------------------- every failure is named
@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00\x81garbage", b"a,b\n1,2\n", b"path\n", b"PK\x03\x04junk",
                                     b"path,patient_id\n\"unterminated,p1\n"])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".zip"])
def test_bad_tables_raise_named_errors(tmp_path, content, suffix):
    path = tmp_path / f"t{suffix}"
    path.write_bytes(content)
    for fmt in ("auto", "csv", "nih", "chexpert", "padchest", "mimic", "rsna", "vindr", "siim"):
        try:
            load_manifest(path, format=fmt, check_files=False)
        except CxrEmbedError as e:
            assert str(path) in str(e)
