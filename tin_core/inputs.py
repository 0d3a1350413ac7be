"""What a clip must look like to the models: uint8 RGB frames, centre-cropped to the training size and
ImageNet-normalised to float [N, T, 3, H, W]. The training pipeline and the registered model share these."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips [N, T, H, W, 3] -> float [N, T, 3, H, W], scaled to [0, 1] and ImageNet-normalised."""
    x = clips.permute(0, 1, 4, 2, 3).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def centre_crop_box(height: int, width: int, crop_size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centre crop (the whole side where the frame is smaller)."""
    h, w = min(crop_size, height), min(crop_size, width)
    return (height - h) // 2, (width - w) // 2, h, w


def crop_and_fit(frames: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """uint8 frames [T, 3, H, W] -> the box, resized to size x size where it is not already."""
    top, left, h, w = box
    out = frames[..., top : top + h, left : left + w]
    return out if (h, w) == (size, size) else TF.resize(out, [size, size], antialias=True)


def centre_view(clip: torch.Tensor, short_side: int, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] of any size -> [T, size, size, 3]: the short side scaled to short_side, a centre crop."""
    frames = clip.permute(0, 3, 1, 2)
    if min(frames.shape[-2:]) != short_side:
        frames = TF.resize(frames, short_side, antialias=True)
    box = centre_crop_box(frames.shape[-2], frames.shape[-1], size)
    return crop_and_fit(frames, box, size).permute(0, 2, 3, 1).contiguous()
