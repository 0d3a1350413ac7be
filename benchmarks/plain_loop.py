"""The temporal benchmark's yardstick: a plain PyTorch loop written apart from the project (torchvision ResNet-18,
TSM's shift written here, no augmentation, no dropout, torchvision's fc init, SGD with per-step cosine, BCE)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from tin_core import map_over_videos


def multi_hot(manifest) -> np.ndarray:
    y = np.zeros((len(manifest.records), manifest.num_classes), np.float32)
    for i, video in enumerate(manifest.records):
        y[i, list(video.labels)] = 1
    return y


class ShiftThenConv(torch.nn.Module):
    """TSM's residual shift: 1/8 of the channels from the next frame, 1/8 from the previous one, then the conv."""

    def __init__(self, conv: torch.nn.Conv2d, frames: int) -> None:
        super().__init__()
        self.conv, self.frames = conv, frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        clip = x.view(nt // self.frames, self.frames, c, h, w)
        fold = c // 8
        out = torch.zeros_like(clip)
        out[:, :-1, :fold] = clip[:, 1:, :fold]
        out[:, 1:, fold : 2 * fold] = clip[:, :-1, fold : 2 * fold]
        out[:, :, 2 * fold :] = clip[:, :, 2 * fold :]
        return self.conv(out.view(nt, c, h, w))


class PlainNet(torch.nn.Module):
    def __init__(self, arch: str, num_classes: int, frames: int) -> None:
        super().__init__()
        self.net, self.frames = torchvision.models.resnet18(num_classes=num_classes), frames
        if arch == "tsm":
            for stage in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4):
                for block in stage:
                    block.conv1 = ShiftThenConv(block.conv1, frames)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # [N, T, 3, H, W] -> [N, K]
        n = clips.shape[0]
        return self.net(clips.flatten(0, 1)).view(n, self.frames, -1).mean(dim=1)


def decode_all(manifest, size: int) -> list[np.ndarray]:
    import av

    clips = []
    for video in manifest.records:
        with av.open(video.uri) as container:
            frames = [f.to_ndarray(format="rgb24", width=size, height=size) for f in container.decode(video=0)]
        clips.append(np.stack(frames))
    return clips


def plain_batch(clips: list[np.ndarray], rows, frames: int, rng: np.random.Generator | None) -> torch.Tensor:
    picked = []
    for i in rows:
        n = len(clips[i])
        edges = np.linspace(0, n, frames + 1)
        ticks = rng.uniform(edges[:-1], edges[1:]) if rng is not None else (edges[:-1] + edges[1:]) / 2
        picked.append(clips[i][np.minimum(ticks.astype(int), n - 1)])
    x = torch.from_numpy(np.stack(picked)).permute(0, 1, 4, 2, 3).float() / 255  # [N, T, 3, H, W]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    return (x - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)


def predict(model: torch.nn.Module, clips: list[np.ndarray], frames: int) -> np.ndarray:
    """Probabilities on `clips` (segment centres), 32 clips at a time."""
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [
                torch.sigmoid(model(plain_batch(clips, range(i, min(i + 32, len(clips))), frames, None))).numpy()
                for i in range(0, len(clips), 32)
            ]
        )


def train_plain(arch: str, train, val, budget: dict, seed: int = 0, scored=None) -> np.ndarray:
    """The yardstick: SGD (momentum 0.9, wd 5e-4), per-step cosine, BCE. Returns the scores on `scored` (default: the
    validation clips) of the epoch best on the validation clips, as the job keeps its best validation checkpoint."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    frames, batch, epochs = budget["num_segments"], budget["batch_size"], budget["epochs"]
    train_clips, val_clips = decode_all(train, budget["frame_size"]), decode_all(val, budget["frame_size"])
    scored_clips = val_clips if scored is None or scored is val else decode_all(scored, budget["frame_size"])
    y_train, y_val = torch.from_numpy(multi_hot(train)), multi_hot(val)
    model = PlainNet(arch, train.num_classes, frames)
    optimizer = torch.optim.SGD(model.parameters(), lr=budget["lr"], momentum=0.9, weight_decay=5e-4)
    steps = math.ceil(len(train_clips) / batch) * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    best, best_map = None, -1.0
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(train_clips))
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            loss = F.binary_cross_entropy_with_logits(model(plain_batch(train_clips, rows, frames, rng)), y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        scores = predict(model, val_clips, frames)
        if map_over_videos(scores, y_val) > best_map:
            best_map = map_over_videos(scores, y_val)
            best = scores if scored_clips is val_clips else predict(model, scored_clips, frames)
    return best
