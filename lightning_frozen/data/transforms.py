"""Video augmentation that runs on the accelerator (kornia).

Datasets hand out raw ``uint8`` clips so that worker processes only decode, and the
per-pixel work (crop, resize, flip, colour, normalisation) happens on the device after
the batch has been transferred (``FrozenDataModule.on_after_batch_transfer``).

Training follows Frozen-in-Time: a random resized crop (scale 0.5-1.0) and a horizontal
flip drawn once per clip and applied identically to all of its frames, so motion stays
coherent, then optional colour jitter and ImageNet normalisation. Evaluation resizes the
short side to ``input_res`` and takes the centre crop, or three crops along the long side
(the TimeSformer/SlowFast test protocol: together they cover the whole frame).

A batch of several clips per video, ``[B, N, F, 3, H, W]``, is augmented as one clip of N*F
frames (the clips of a video share their crop and flip); three crops make each video
``[B, 3*N, F, 3, r, r]``, every (crop, clip) a view to average over.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import kornia.augmentation as K
import torch
from torch import nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VideoTransform"]

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_video(video: torch.Tensor) -> None:
    """Reject inputs that are not ``[B, (N,) F, 3, H, W]`` clips of bytes or [0, 1] floats."""
    if video.ndim not in (5, 6) or video.shape[-3] != 3:
        raise ValueError(
            f"VideoTransform expects a video batch shaped [B, F, 3, H, W] (or [B, N, F, 3, H, W], N clips); got shape "
            f"{tuple(video.shape)}. Images must be one-frame clips: add the frame axis with "
            f"video.unsqueeze(1)."
        )
    if video.dtype != torch.uint8 and not video.is_floating_point():
        raise TypeError(
            f"VideoTransform expects a uint8 video (0-255) or a floating video in [0, 1]; "
            f"got dtype {video.dtype}."
        )


class VideoTransform(nn.Module):
    """Turn a ``uint8 [B, F, 3, H, W]`` batch into a normalised float batch on its own device.

    Args:
        train: random crop/flip/jitter (``True``) or deterministic resize + centre crop.
        input_res: output height and width.
        crop_scale: area fraction range of the random resized crop (training only).
        hflip: apply a random horizontal flip with probability 0.5 (training only).
        color_jitter: strength for brightness, contrast and saturation jitter (hue is
            left alone); ``None`` or 0 disables it (training only).
        mean, std: per-channel normalisation applied to [0, 1] pixel values.
        crops: evaluation crops, 1 (centre) or 3 (start, centre and end of the long side).

    Random parameters come from torch's global generator, so ``torch.manual_seed`` makes
    the output reproducible.
    """

    def __init__(
        self,
        train: bool,
        input_res: int,
        crop_scale: Tuple[float, float] = (0.5, 1.0),
        hflip: bool = True,
        color_jitter: Optional[float] = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crops: int = 1,
    ) -> None:
        super().__init__()
        if input_res <= 0:
            raise ValueError(f"input_res must be a positive number of pixels; got {input_res}.")
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 (centre) or 3 (along the long side); got {crops}.")
        lo, hi = crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1; got {tuple(crop_scale)}.")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0); got mean={mean}, std={std}.")
        self.train_mode = train
        self.input_res = input_res
        self.crops = crops
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._constants: dict = {}
        size = (input_res, input_res)
        if train:
            ops: list[nn.Module] = [
                K.RandomResizedCrop(size, scale=(lo, hi), align_corners=False),
            ]
            if hflip:
                ops.append(K.RandomHorizontalFlip(p=0.5))
            if color_jitter:
                c = float(color_jitter)
                ops.append(K.ColorJitter(brightness=c, contrast=c, saturation=c, hue=0.0, p=1.0))
            # same_on_frame: one parameter draw per clip, repeated over its frames.
            self.augment: nn.Module = K.VideoSequential(*ops, data_format="BTCHW", same_on_frame=True)
        else:
            self.resize = K.Resize(input_res, side="short", align_corners=False)
            self.augment = nn.Sequential(self.resize, K.CenterCrop(size, align_corners=False))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Augment (training) or resize + crop (evaluation), then normalise."""
        _check_video(video)
        clips = video.shape[1] if video.ndim == 6 else None
        if clips is not None:  # one clip of N*F frames: one augmentation draw per video
            video = video.flatten(1, 2)
        b, f = video.shape[:2]
        x = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
        if self.train_mode:
            x = self.augment(x)
        elif self.crops == 3:
            x = self._three_crops(x.reshape(b * f, *x.shape[2:]))  # [B*F, 3 crops, 3, r, r]
            x = x.view(b, f, *x.shape[1:]).transpose(1, 2)  # [B, 3 crops, F, 3, r, r]
            return self._normalise(x.reshape(b, 3 * (clips or 1), f // (clips or 1), *x.shape[3:]))
        else:
            x = self.augment(x.reshape(b * f, *x.shape[2:])).reshape(b, f, 3, self.input_res, self.input_res)
        x = self._normalise(x)
        return x if clips is None else x.view(b, clips, f // clips, *x.shape[2:])

    def _three_crops(self, frames: torch.Tensor) -> torch.Tensor:
        """[T, 3, H, W] -> [T, 3, 3, r, r]: short side to r; crops at the start, centre, end of the long side."""
        frames = self.resize(frames)
        r, (height, width) = self.input_res, frames.shape[-2:]
        along = max(height, width) - r
        starts = (0, along // 2, along)
        if width >= height:
            top = (height - r) // 2
            crops = [frames[..., top : top + r, s : s + r] for s in starts]
        else:
            left = (width - r) // 2
            crops = [frames[..., s : s + r, left : left + r] for s in starts]
        return torch.stack(crops, dim=1)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean_std(x.device, x.dtype)
        return (x - mean) / std

    def _mean_std(self, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalisation constants, made once per device: a copy per batch would stall a GPU."""
        key = (device, dtype)
        if key not in self._constants:
            self._constants[key] = tuple(
                torch.tensor(v, device=device, dtype=dtype).view(3, 1, 1) for v in (self.mean, self.std))
        return self._constants[key]

    def extra_repr(self) -> str:
        return f"train={self.train_mode}, input_res={self.input_res}" + (", crops=3" if self.crops == 3 else "")
