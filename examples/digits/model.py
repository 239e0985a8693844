"""A small CNN for scikit-learn's 8x8 digits images (1 channel, 10 classes).

edgeopt records this file inside the artifact and builds the module with
``build(**kwargs)``, then loads the trained weights from safetensors.
"""
import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(width * 2, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(pixel_values), 1))


def build(num_classes: int = 10, width: int = 32) -> DigitsCNN:
    return DigitsCNN(num_classes=num_classes, width=width)
