"""Classifiers with the timm-style contract; ``MODELS`` registry; adapter for any ``nn.Module``."""

from tacrecon.models.adapter import HeadAdapter, as_classifier, find_head
from tacrecon.models.base import Classifier, Normalize, evaluating, inspecting, latents_of
from tacrecon.models.checkpoint import load_checkpoint
from tacrecon.models.nets import MODELS, VGG, PreActResNet18, ResNetSmall, TestCNN, TorchvisionVGG, create_model

__all__ = ["MODELS", "Classifier", "HeadAdapter", "Normalize", "PreActResNet18", "ResNetSmall",
           "TestCNN", "TorchvisionVGG", "VGG", "as_classifier", "create_model", "evaluating", "find_head", "inspecting",
           "latents_of", "load_checkpoint"]
