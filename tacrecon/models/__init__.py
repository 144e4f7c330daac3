"""Classifiers with the timm-style contract; ``MODELS`` registry; adapter for any ``nn.Module``."""

from tacrecon.models.adapter import HeadAdapter, as_classifier, find_head
from tacrecon.models.base import Classifier, Normalize, latents_of
from tacrecon.models.nets import MODELS, VGG, PreActResNet18, ResNetSmall, TestCNN


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, mean=None, std=None, **kwargs) -> Classifier:
    """Build the registered model ``name`` for images of ``in_chans`` channels in [0, 1]."""
    return MODELS.create(name, num_classes=num_classes, in_chans=in_chans, mean=mean, std=std, **kwargs)


__all__ = ["MODELS", "Classifier", "HeadAdapter", "Normalize", "PreActResNet18", "ResNetSmall",
           "TestCNN", "VGG", "as_classifier", "create_model", "find_head", "latents_of"]
