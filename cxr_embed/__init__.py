"""cxr_embed: chest-radiograph embeddings from pretrained Keras CNNs.

Extract embeddings once (batched, cached in a self-describing HDF5 store), then
fit, stack, evaluate and explain classical classifiers on them in seconds.

Importing the package is cheap and has no side effects: TensorFlow, Keras and
the other heavy libraries load only when a name that needs them is first used.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .exceptions import *  # noqa: F401,F403  (small, dependency-free)
from .exceptions import __all__ as _exc_all

# public name -> module that defines it (loaded lazily, PEP 562)
_LAZY = {
    # reading
    "read_image": "cxr_embed.io.images",
    "read_prepared": "cxr_embed.io.prepared",
    "read_dicom": "cxr_embed.io.dicom",
    "is_dicom": "cxr_embed.io.dicom",
    "read_dicom_meta": "cxr_embed.io.dicom",
    "patient_key": "cxr_embed.io.dicom",
    "read_nifti": "cxr_embed.io.nifti",
    "is_nifti": "cxr_embed.io.nifti",
    "load_manifest": "cxr_embed.io.manifest",
    "summarize_manifest": "cxr_embed.io.manifest",
    "prepare_image": "cxr_embed.io.preprocessing",
    "load_boxes": "cxr_embed.io.boxes",
    "perturb": "cxr_embed.io.perturbations",
    # embeddings
    "Backbone": "cxr_embed.embed.backbones",
    "list_backbones": "cxr_embed.embed.backbones",
    "EmbeddingStore": "cxr_embed.embed.store",
    "merge": "cxr_embed.embed.store",
    "extract": "cxr_embed.embed.extraction",
    "ExtractionReport": "cxr_embed.embed.extraction",
    "ImageView": "cxr_embed.embed.views",
    "CompositeEmbedding": "cxr_embed.embed.composite",
    "parse_embedding": "cxr_embed.embed.composite",
    "DEFAULT_EMBEDDING": "cxr_embed.embed.composite",
    # labels, classifiers, validation, metrics
    "apply_uncertainty": "cxr_embed.learn.labels",
    "make_classifier": "cxr_embed.learn.classifiers",
    "list_classifiers": "cxr_embed.learn.classifiers",
    "MultiLabelClassifier": "cxr_embed.learn.classifiers",
    "grouped_kfold": "cxr_embed.learn.validation",
    "GroupedRepeatedKFold": "cxr_embed.learn.validation",
    "check_no_leakage": "cxr_embed.learn.validation",
    "cross_validate_grouped": "cxr_embed.learn.validation",
    "external_validation": "cxr_embed.learn.validation",
    "nested_cv": "cxr_embed.learn.validation",
    "learning_curve_patients": "cxr_embed.learn.validation",
    # clinical variables beside the embeddings, site harmonisation
    "clinical_frame": "cxr_embed.learn.clinical",
    "ClinicalFeatures": "cxr_embed.learn.clinical",
    "with_clinical": "cxr_embed.learn.clinical",
    "clinical_importance": "cxr_embed.learn.clinical",
    "plot_importance": "cxr_embed.evaluate.figures",
    "ComBat": "cxr_embed.learn.harmonization",
    "ray_backend": "cxr_embed.learn.distributed",
    "evaluate_predictions": "cxr_embed.evaluate.metrics",
    "roc_auc_ci": "cxr_embed.evaluate.metrics",
    "delong_test": "cxr_embed.evaluate.metrics",
    "subgroup_auc": "cxr_embed.evaluate.metrics",
    "metrics_to_json": "cxr_embed.evaluate.metrics",
    "plot_roc": "cxr_embed.evaluate.report",
    "plot_calibration": "cxr_embed.evaluate.report",
    "plot_forest": "cxr_embed.evaluate.figures",
    "format_metrics_table": "cxr_embed.evaluate.formatting",
    "save_model": "cxr_embed.learn.persistence",
    "ModelBundle": "cxr_embed.learn.persistence",
    "load_model": "cxr_embed.learn.persistence",
    "write_report": "cxr_embed.evaluate.report",
    "audit_embeddings": "cxr_embed.evaluate.audit",
    "EmbeddingAudit": "cxr_embed.evaluate.audit",
    # transfer approaches
    "StackedEnsemble": "cxr_embed.learn.stacking",
    "AveragingEnsemble": "cxr_embed.learn.stacking",
    "average_predictions": "cxr_embed.learn.stacking",
    "entropy_weights": "cxr_embed.learn.stacking",
    "finetune": "cxr_embed.transfer.finetuning",
    "predict_finetuned": "cxr_embed.transfer.finetuning",
    "FineTuneResult": "cxr_embed.transfer.finetuning",
    "compare_transfer": "cxr_embed.transfer.compare",
    "search_pipeline": "cxr_embed.transfer.search",
    "PipelineSearchResult": "cxr_embed.transfer.search",
    # the embedded default dataset
    "make_synthetic_cxr": "cxr_embed.datasets",
    "write_dataset": "cxr_embed.datasets",
    "make_demo_sites": "cxr_embed.datasets",
    # explanations
    "explain": "cxr_embed.saliency.maps",
    "Saliency": "cxr_embed.saliency.maps",
    "save_overlay": "cxr_embed.saliency.maps",
    "explain_manifest": "cxr_embed.saliency.maps",
    "save_saliency_h5": "cxr_embed.saliency.maps",
    "load_saliency_h5": "cxr_embed.saliency.maps",
    "pointing_game": "cxr_embed.saliency.faithfulness",
    "energy_in_mask": "cxr_embed.saliency.faithfulness",
    "saliency_iou": "cxr_embed.saliency.faithfulness",
    "deletion_auc": "cxr_embed.saliency.faithfulness",
    "insertion_auc": "cxr_embed.saliency.faithfulness",
    "random_saliency": "cxr_embed.saliency.faithfulness",
    "evaluate_localization": "cxr_embed.saliency.localization",
    "LocalizationResult": "cxr_embed.saliency.localization",
}

__all__ = ["__version__", *_exc_all, *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cxr_embed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
