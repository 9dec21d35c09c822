"""Tests of the cxr-embed command line (cxr_embed.cli) and its info/manifest subcommands."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cxr_embed
from cxr_embed.cli import _COMMAND_MODULES, build_parser, main


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    """Generic CSV with 4 images of 3 patients, one uncertain and one missing label."""
    rows = []
    for i, (pid, y, view) in enumerate([("p1", 1, "PA"), ("p1", 0, "AP"), ("p2", -1, "PA"), ("p3", None, "PA")]):
        _png(tmp_path / "img" / f"{i}.png", np.full((6, 6), 40 * i, dtype=np.uint8))
        rows.append({"path": f"img/{i}.png", "patient_id": pid, "effusion": y, "view": view,
                     "sex": "MF"[i % 2], "age": 30 + i, "implant": i % 2})
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_manifest_text(dataset, capsys):
    assert main(["manifest", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "format:   csv" in out and "images:   4" in out and "patients: 3" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("effusion"))
    assert line.split()[1:] == ["1", "1", "1", "1"]  # positive, negative, uncertain, missing
    assert "views:    AP 1, PA 3" in out and "sex:      F 2, M 2" in out
    assert "age:      30-33 years" in out


def test_manifest_json(dataset, capsys):
    assert main(["manifest", str(dataset), "--format", "csv", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_images"] == 4 and s["n_patients"] == 3
    assert s["labels"]["effusion"] == {"positive": 1, "negative": 1, "uncertain": 1, "missing": 1}
    assert s == cxr_embed.summarize_manifest(cxr_embed.load_manifest(dataset))


def test_manifest_options_reach_load_manifest(dataset, tmp_path, capsys):
    assert main(["manifest", str(dataset), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["labels"]) == ["effusion", "implant"]
    assert main(["manifest", str(dataset), "--labels", "effusion", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["labels"]) == ["effusion"]
    moved = tmp_path / "elsewhere" / "labels.csv"
    moved.parent.mkdir()
    moved.write_text(dataset.read_text())
    assert main(["manifest", str(moved), "--no-check-files", "--json"]) == 0
    capsys.readouterr()
    assert main(["manifest", str(moved), "--root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 4


def test_manifest_error_is_one_line_exit_2(dataset, tmp_path, capsys):
    (dataset.parent / "img" / "2.png").unlink()
    assert main(["manifest", str(dataset)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "1 of 4" in err[0] and "2.png" in err[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert main(["--debug", "manifest", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "MissingFilesError" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_verbose_logs_and_leaves_logging_as_found(dataset, capsys):
    import logging

    log = logging.getLogger("cxr_embed")
    before = (log.level, list(log.handlers))
    assert main(["-v", "manifest", str(dataset)]) == 0
    err = capsys.readouterr().err
    assert "INFO cxr_embed.io.manifest" in err and "detected manifest format 'csv'" in err
    assert (log.level, list(log.handlers)) == before


def test_manifest_unknown_format_exit_2(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    assert main(["manifest", str(tmp_path / "t.csv")]) == 2
    assert "unknown manifest format" in capsys.readouterr().err


def test_info_png_text_and_json(tmp_path, capsys):
    arr = np.zeros((5, 7), dtype=np.uint8)
    arr[0, 0] = 255
    png = _png(tmp_path / "x.png", arr)
    assert main(["info", str(png)]) == 0
    out = capsys.readouterr().out
    assert "shape:  5 x 7" in out and "max 1.0000" in out and "min 0.0000" in out and str(png) in out
    assert main(["info", str(png), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["shape"] == [5, 7] and s["dtype"] == "float32"
    assert s["mean"] == pytest.approx(1 / 35, abs=1e-6) and isinstance(s["meta"], dict)


def test_info_dicom_hides_identity(tmp_path, capsys):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality, ds.ViewPosition = "Doe^Jane", "SECRET-42", "DX", "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 3, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(12, dtype=np.uint16) * 300).tobytes()
    path = tmp_path / "scan.bin"  # by content, not suffix
    ds.save_as(path, enforce_file_format=True)
    assert main(["info", str(path), "--json", "--voi", "minmax"]) == 0
    out = capsys.readouterr().out
    s = json.loads(out)
    assert s["shape"] == [4, 3] and s["min"] == pytest.approx(0.0) and s["max"] == pytest.approx(1.0)
    assert s["meta"]["modality"] == "DX" and "SECRET-42" not in out and "Doe" not in out
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "modality" in text and "SECRET-42" not in text


def test_info_missing_file_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.png" in err and "Traceback" not in err


def test_no_command_version_and_usage_errors(capsys):
    assert main([]) == 2
    assert "usage: cxr-embed" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cxr-embed {cxr_embed.__version__}"
    assert main(["manifest"]) == 2  # missing PATH: argparse usage error, returned not raised
    assert "the following arguments are required: path" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "manifest" in capsys.readouterr().out


def test_every_command_module_registers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"info", "manifest"} <= set(sub.choices)
    assert "_io" in _COMMAND_MODULES
    for name, p in sub.choices.items():
        assert p.get_default("func") is not None, name


def test_console_script_and_module_entry_points():
    script = Path(sys.executable).parent / "cxr-embed"
    if not script.exists():
        pytest.skip(f"console script {script} not installed (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "manifest" in proc.stdout and "info" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "cxr_embed.cli", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cxr-embed {cxr_embed.__version__}"


def test_max_pixels_option_refuses_big_images_in_info_and_extract(tmp_path, capsys):
    arr = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    png = _png(tmp_path / "big.png", arr)
    assert main(["info", str(png), "--max-pixels", "1000"]) == 2
    err = capsys.readouterr().err
    assert "big.png" in err and "max_pixels=1,000" in err and "--max-pixels" in err and "Traceback" not in err
    assert main(["info", str(png), "--max-pixels", "5000"]) == 0
    args = build_parser().parse_args(["extract", "--manifest", "m", "--backbone", "b", "--store", "s",
                                      "--max-pixels", "123"])
    assert args.max_pixels == 123
