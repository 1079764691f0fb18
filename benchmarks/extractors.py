"""nfebench's own feature extractors: plain torch modules, uint8 images [N, 3, H, W] -> a
one-element tuple of features (torch-fidelity's extractor convention).

``digits-classifier``: the penultimate layer of the shipped digits classifier (FID/KID on digits).

``pixels``: the image itself, flattened and scaled to [0, 1]. The Frechet distance in this space
is the FD of the pixel distribution: meaningful for small images (the exact image-shaped mixtures,
8x8 digits) where no trained extractor applies, and exactly checkable.

The sweep builds them directly (:data:`OWN_EXTRACTORS`); :func:`register_with_torch_fidelity`
registers them with torch-fidelity, for its ``calculate_metrics(feature_extractor=NAME)``. Kept
apart because importing torch-fidelity (and torchvision with it) takes over a second in every
process, which a run needing only these would spend for nothing.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

__all__ = ["PixelFeatures", "DigitsClassifierFeatures", "OWN_EXTRACTORS", "register_with_torch_fidelity"]


class PixelFeatures(torch.nn.Module):
    """uint8 images [N, 3, H, W] -> float32 features [N, 3*H*W] in [0, 1]."""

    LAYER = "pixels"

    def __init__(self, weights_path: Optional[str] = None):  # no weights: the path is not read
        super().__init__()

    def forward(self, x: torch.Tensor) -> tuple:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"pixels extractor expects uint8 images [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        return (x.reshape(x.shape[0], -1).float() / 255.0,)


class DigitsClassifierFeatures(torch.nn.Module):
    """The shipped digits classifier's penultimate layer (128-d): the FID/KID feature space of
    8x8 digits (uint8 [N, 3, 8, 8] from to_uint8_images; channel 0 is used)."""

    LAYER = "penultimate"

    def __init__(self, weights_path: Optional[str] = None):
        super().__init__()
        from score_models import shipped

        # The shipped classifier, or the weights file given (read as tensors only).
        self.classifier = shipped.load_classifier("digits-classifier", path=weights_path)

    def forward(self, x: torch.Tensor) -> tuple:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-2:] != (8, 8):
            raise ValueError(f"digits-classifier expects uint8 images [N, C, 8, 8], got {x.dtype} {tuple(x.shape)}")
        images = x[:, :1].float() / 127.5 - 1.0
        return (self.classifier.features(images),)


#: name -> extractor class; each reads its own weights path safely (tensors only).
OWN_EXTRACTORS: Dict[str, type] = {"pixels": PixelFeatures, "digits-classifier": DigitsClassifierFeatures}


def register_with_torch_fidelity() -> None:
    """Register :data:`OWN_EXTRACTORS` in torch-fidelity's extractor registry (once)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    for name, extractor in OWN_EXTRACTORS.items():
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, _torch_fidelity_extractor(extractor))


def _torch_fidelity_extractor(extractor: type) -> type:
    """``extractor`` behind torch-fidelity's FeatureExtractorBase interface (one feature layer)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class TorchFidelityExtractor(FeatureExtractorBase):
        def __init__(self, name: str, features_list: list, feature_extractor_weights_path: Optional[str] = None,
                     **kwargs):
            super().__init__(name, features_list)
            self.extractor = extractor(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list() -> tuple:
            return (extractor.LAYER,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return extractor.LAYER

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple:
            return self.extractor(x)

    TorchFidelityExtractor.__name__ = TorchFidelityExtractor.__qualname__ = f"TorchFidelity{extractor.__name__}"
    return TorchFidelityExtractor
