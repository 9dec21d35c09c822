"""Synthetic chest radiographs with known lesion masks: the embedded default dataset.

:func:`make_synthetic_cxr` renders phantom radiographs (thorax, lungs, ribs, heart,
diaphragm) with focal opacity, pleural effusion and cardiomegaly at known
locations and scanner effects per site; :func:`write_dataset` writes them as DICOM
and/or PNG with ``labels.csv`` and ``masks.npz``; :func:`make_demo_sites` writes a
source and a target site for the demo. Importing this package renders nothing.
"""
from __future__ import annotations

from ._writers import load_masks, make_demo_sites, write_dataset
from .synthetic import (CLINICAL_COVARIATES, FINDINGS, SITES, SiteProfile, SyntheticCXR, add_clinical_covariates,
                        cardiothoracic_ratio, make_synthetic_cxr)

__all__ = [
    "FINDINGS",
    "SITES",
    "SiteProfile",
    "SyntheticCXR",
    "make_synthetic_cxr",
    "add_clinical_covariates",
    "CLINICAL_COVARIATES",
    "cardiothoracic_ratio",
    "write_dataset",
    "load_masks",
    "make_demo_sites",
]
