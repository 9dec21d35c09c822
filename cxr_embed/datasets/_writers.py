"""Write synthetic datasets to disk as DICOM and/or PNG, with labels.csv and masks.npz.

Folder layout written by :func:`write_dataset`::

    out_dir/
      images/<image_id>.dcm      12-bit DICOM (DX or CR), MONOCHROME2 or MONOCHROME1
      images/<image_id>.png      8-bit grayscale PNG
      labels.csv                 path (relative to out_dir), patient_id, image_id, findings, metadata
      masks.npz                  image_id + one bool (n, H, W) array per finding (and "marker")
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import SITES, SyntheticCXR, make_synthetic_cxr

__all__ = ["write_dataset", "load_masks", "make_demo_sites"]

logger = logging.getLogger(__name__)

_FORMATS = ("dicom", "png", "both")
_MASKS_FORMAT = "cxr_embed.synthetic_masks"
_MASKS_VERSION = 1
_BITS_STORED = 12
_STUDY_DATE = datetime.date(2024, 1, 1)  # fixed: files are reproducible byte for byte


def write_dataset(ds: SyntheticCXR, out_dir, *, format: str = "dicom", monochrome1: bool = False) -> Path:
    """Write a synthetic dataset as image files plus ``labels.csv`` and ``masks.npz``.

    DICOM files are valid Part 10 files (file meta, Explicit VR Little Endian): Digital X-Ray
    (modality DX) or Computed Radiography (CR) Image Storage as the site says, 12-bit unsigned
    pixels, window centre/width, rescale slope/intercept, pixel spacing, and synthetic patient
    data only (``PatientID`` = the synthetic patient id, sex, age as ``"045Y"``, view). UIDs are
    derived deterministically from the image ids, so writing the same dataset twice gives the
    same files. With ``monochrome1=True`` the stored values are inverted (``4095 - value``) and
    tagged MONOCHROME1, as some CR vendors do: a correct reader shows the same image.

    Parameters
    ----------
    ds : SyntheticCXR
        From :func:`make_synthetic_cxr`.
    out_dir : str or Path
        Folder to write into (created if needed); existing files of the same names are replaced.
    format : {"dicom", "png", "both"}, default "dicom"
        Image files to write. With ``"both"``, ``path`` is the DICOM and ``png_path`` the PNG.
    monochrome1 : bool, default False
        Store DICOM pixels inverted with PhotometricInterpretation MONOCHROME1.

    Returns
    -------
    Path
        The written ``labels.csv``: columns ``path`` (relative to ``out_dir``), ``patient_id``,
        ``image_id``, one 0/1 column per finding, ``site``, ``sex``, ``age``, ``view``
        (plus ``png_path`` with ``format="both"``).

    Examples
    --------
    >>> import tempfile
    >>> import pandas as pd
    >>> ds = make_synthetic_cxr(4, size=64, seed=0)
    >>> csv = write_dataset(ds, tempfile.mkdtemp(), format="png")
    >>> pd.read_csv(csv)["path"].iloc[0]
    'images/AI00000.png'
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if not isinstance(ds, SyntheticCXR):
        raise TypeError(f"ds must be a SyntheticCXR from make_synthetic_cxr(), got {type(ds).__name__}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    table = ds.labels.copy()
    dcm_paths, png_paths = [], []
    for i, row in enumerate(table.itertuples(index=False)):
        if format in ("dicom", "both"):
            rel = f"images/{row.image_id}.dcm"
            _write_dicom(out / rel, ds.images[i], row, ds, number=i + 1, monochrome1=monochrome1)
            dcm_paths.append(rel)
        if format in ("png", "both"):
            rel = f"images/{row.image_id}.png"
            Image.fromarray(np.round(ds.images[i] * 255.0).astype(np.uint8)).save(out / rel)
            png_paths.append(rel)
    table.insert(0, "path", dcm_paths if dcm_paths else png_paths)
    if format == "both":
        table.insert(1, "png_path", png_paths)
    cols = ["path"] + (["png_path"] if format == "both" else []) + ["patient_id", "image_id"]
    table = table[cols + [c for c in table.columns if c not in cols]]
    csv_path = out / "labels.csv"
    table.to_csv(csv_path, index=False)
    np.savez_compressed(
        out / "masks.npz",
        image_id=np.asarray(ds.labels["image_id"], dtype=str),
        format=np.asarray(_MASKS_FORMAT),
        version=np.asarray(_MASKS_VERSION),
        **{f"mask_{k}": m for k, m in ds.masks.items()},
    )
    logger.info("wrote %d synthetic images (%s) to %s", len(table), format, out)
    return csv_path


def load_masks(path) -> tuple[np.ndarray, dict]:
    """Read the lesion masks written by :func:`write_dataset`.

    Parameters
    ----------
    path : str or Path
        The ``masks.npz`` file or the folder that holds it.

    Returns
    -------
    image_ids : ndarray of shape (n,), str
        Row order of the masks (matches ``labels.csv``).
    masks : dict of str -> ndarray of shape (n, H, W), bool
        One entry per finding (and ``"marker"`` when the dataset has a planted shortcut).

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_dataset(make_synthetic_cxr(3, size=64, seed=0), folder, format="png")
    >>> ids, masks = load_masks(folder)
    >>> masks["opacity"].shape
    (3, 64, 64)
    """
    path = Path(path)
    if path.is_dir():
        path = path / "masks.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no masks file; write one with cxr_embed.datasets.write_dataset(ds, folder)")
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != _MASKS_FORMAT:
            raise ValueError(f"{path}: not a cxr_embed synthetic masks file (expected format {_MASKS_FORMAT!r})")
        if int(z["version"]) > _MASKS_VERSION:
            raise ValueError(
                f"{path}: masks format version {int(z['version'])} is newer than this library's "
                f"({_MASKS_VERSION}); upgrade cxr_embed"
            )
        ids = z["image_id"].astype(str)
        masks = {k[len("mask_"):]: z[k].astype(bool) for k in z.files if k.startswith("mask_")}
    return ids, masks


def make_demo_sites(
    out_dir,
    *,
    n_source: int = 240,
    n_target: int = 120,
    seed: int = 0,
    size: int = 256,
    images_per_patient: int = 1,
    format: str = "dicom",
    clinical: bool = False,
) -> dict:
    """Write a source site and a target site for the demo and the transfer comparison.

    The source is site "A" (clean DX, mostly PA, MONOCHROME2); the target is site "B"
    (CR with flatter contrast, more noise and blur, half AP views, markers in the other corner,
    stored MONOCHROME1): the same findings under a scanner shift.

    Parameters
    ----------
    out_dir : str or Path
        Parent folder; ``source/`` and ``target/`` are written inside it.
    n_source, n_target : int
        Number of images per site.
    seed : int, default 0
        Random state; the two sites use independent streams derived from it.
    size : int, default 256
        Image size in pixels.
    images_per_patient : int, default 1
        Passed to :func:`make_synthetic_cxr`.
    format : {"dicom", "png", "both"}, default "dicom"
        Passed to :func:`write_dataset`.
    clinical : bool, default False
        Add the planted clinical covariates (``make_synthetic_cxr(..., clinical=True)``) to labels.csv.

    Returns
    -------
    dict
        ``{"source": Path, "target": Path}``, each the site's ``labels.csv``.

    Examples
    --------
    >>> import tempfile
    >>> paths = make_demo_sites(tempfile.mkdtemp(), n_source=4, n_target=4, size=64)
    >>> sorted(paths)
    ['source', 'target']
    """
    out = Path(out_dir)
    source_rng, target_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    paths = {}
    for key, site, n, rng in (("source", "A", n_source, source_rng), ("target", "B", n_target, target_rng)):
        ds = make_synthetic_cxr(n, site=site, size=size, seed=rng, images_per_patient=images_per_patient,
                                clinical=clinical)
        paths[key] = write_dataset(ds, out / key, format=format, monochrome1=SITES[site].monochrome1)
    return paths


def _write_dicom(path: Path, image: np.ndarray, row, ds: SyntheticCXR, *, number: int, monochrome1: bool) -> None:
    """One image as a DICOM Part 10 file (12 bits stored in 16, Explicit VR Little Endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    site = ds.site
    maxval = (1 << _BITS_STORED) - 1
    stored = np.round(np.clip(image, 0.0, 1.0) * maxval).astype(np.uint16)
    if monochrome1:
        stored = (maxval - stored).astype(np.uint16)
    sop_class = DigitalXRayImageStorageForPresentation if site.modality == "DX" else ComputedRadiographyImageStorage
    key = f"cxr_embed-synthetic/{site.name}/{row.patient_id}"
    study_uid = generate_uid(entropy_srcs=[key, "study"])
    series_uid = generate_uid(entropy_srcs=[key, "series", site.modality])
    sop_uid = generate_uid(entropy_srcs=[key, row.image_id])
    spacing = site.field_of_view_mm / image.shape[1]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    d = Dataset()
    d.file_meta = meta
    d.SOPClassUID = sop_class
    d.SOPInstanceUID = sop_uid
    d.StudyInstanceUID = study_uid
    d.SeriesInstanceUID = series_uid
    d.Modality = site.modality
    d.ImageType = ["ORIGINAL", "PRIMARY"]
    d.Manufacturer = site.manufacturer
    d.StudyDate = d.SeriesDate = d.ContentDate = _STUDY_DATE.strftime("%Y%m%d")
    d.StudyTime = d.SeriesTime = d.ContentTime = "120000"
    d.AccessionNumber = ""
    d.ReferringPhysicianName = ""
    d.StudyID = "1"
    d.SeriesNumber = 1
    d.InstanceNumber = number
    d.PatientName = f"Synthetic^{row.patient_id}"
    d.PatientID = str(row.patient_id)
    d.PatientBirthDate = ""
    d.PatientSex = str(row.sex)
    d.PatientAge = f"{int(row.age):03d}Y"
    d.BodyPartExamined = "CHEST"
    d.ViewPosition = str(row.view)
    d.PatientOrientation = ["L", "F"]  # displayed as read: image left is the patient's right
    if site.modality == "DX":
        d.PresentationIntentType = "FOR PRESENTATION"
    d.SamplesPerPixel = 1
    d.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    d.Rows, d.Columns = (int(x) for x in image.shape)
    d.BitsAllocated = 16
    d.BitsStored = _BITS_STORED
    d.HighBit = _BITS_STORED - 1
    d.PixelRepresentation = 0
    d.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    d.ImagerPixelSpacing = [round(spacing, 6), round(spacing, 6)]
    d.RescaleIntercept = 0
    d.RescaleSlope = 1
    d.RescaleType = "US"
    d.WindowCenter = (maxval + 1) // 2
    d.WindowWidth = maxval + 1
    d.PixelData = stored.tobytes()
    d.save_as(path, enforce_file_format=True)
