"""Feature extractors nfebench registers with torch-fidelity (``register_feature_extractor``).

``digits-classifier``: the penultimate layer of the shipped digits classifier (FID/KID on digits).

``pixels``: the image itself, flattened and scaled to [0, 1]. The Frechet distance in this space
is the FD of the pixel distribution: meaningful for small images (the exact image-shaped mixtures,
8x8 digits) where no trained extractor applies, and exactly checkable.
"""
from __future__ import annotations

import torch
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

__all__ = ["PixelFeatures", "DigitsClassifierFeatures"]


class _OneLayerExtractor(FeatureExtractorBase):
    """torch-fidelity's extractor interface for extractors with one feature layer, ``LAYER``."""

    LAYER = ""

    @classmethod
    def get_provided_features_list(cls) -> tuple:
        return (cls.LAYER,)

    @classmethod
    def get_default_feature_layer_for_metric(cls, metric: str) -> str:
        return cls.LAYER

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


class PixelFeatures(_OneLayerExtractor):
    """uint8 images [N, 3, H, W] -> float32 features [N, 3*H*W] in [0, 1]."""

    def __init__(self, name: str, features_list: list, **kwargs):
        super().__init__(name, features_list)

    LAYER = "pixels"

    def forward(self, x: torch.Tensor) -> tuple:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"pixels extractor expects uint8 images [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        return (x.reshape(x.shape[0], -1).float() / 255.0,)


if "pixels" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("pixels", PixelFeatures)


class DigitsClassifierFeatures(_OneLayerExtractor):
    """The shipped digits classifier's penultimate layer (128-d): the FID/KID feature space of
    8x8 digits (uint8 [N, 3, 8, 8] from to_uint8_images; channel 0 is used)."""

    def __init__(self, name: str, features_list: list, feature_extractor_weights_path: str | None = None, **kwargs):
        super().__init__(name, features_list)
        from score_models import shipped

        # The shipped classifier, or the weights file given (read as tensors only).
        self.classifier = shipped.load_classifier("digits-classifier", path=feature_extractor_weights_path)

    LAYER = "penultimate"

    def forward(self, x: torch.Tensor) -> tuple:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-2:] != (8, 8):
            raise ValueError(f"digits-classifier expects uint8 images [N, C, 8, 8], got {x.dtype} {tuple(x.shape)}")
        images = x[:, :1].float() / 127.5 - 1.0
        return (self.classifier.features(images),)


if "digits-classifier" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("digits-classifier", DigitsClassifierFeatures)
