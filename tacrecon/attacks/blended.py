"""Blended: the whole image is alpha-blended with a fixed pattern image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tacrecon.attacks.base import ATTACKS, Attack
from tacrecon.errors import TacreconError


def smooth_pattern(c: int, h: int, w: int, seed: int) -> Tensor:
    """A fixed natural-looking pattern (C, H, W) in [0, 1]: random noise summed over octaves.

    Stands in for BackdoorBench's Hello-Kitty image, which cannot be shipped: like a photo it has
    structure at every scale, unlike plain per-pixel noise.
    """
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, c, h, w)
    for octave, weight in ((4, 1.0), (8, 0.5), (16, 0.25), (max(h, w), 0.125)):
        noise = torch.rand(1, c, octave, octave, generator=g)
        out += weight * F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    out -= out.amin()
    return (out / out.amax().clamp_min(1e-8))[0]


def load_image(path: str, c: int, h: int, w: int) -> Tensor:
    """The image file at ``path`` as (C, H, W) in [0, 1], resized (bilinear) to H x W."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise TacreconError(f"{path}: cannot read the blend image ({e})") from None
    t = torch.from_numpy(arr)
    return t.permute(2, 0, 1).contiguous() if t.ndim == 3 else t[None]


@ATTACKS.register("blended")
@dataclass
class Blended(Attack):
    """Blended (Chen et al. 2017, "Targeted Backdoor Attacks on Deep Learning Systems Using Data
    Poisoning", https://arxiv.org/abs/1712.05526).

    ``x' = (1 - alpha) x + alpha * pattern``. BackdoorBench blends a Hello-Kitty photo with alpha
    0.2 at train and test time; we blend the image file given as ``image``, else a fixed
    multi-scale noise pattern drawn from ``pattern_seed``.

    Args:
        alpha: blend weight of the pattern, in (0, 1].
        image: optional path of the pattern image (any format Pillow reads).
        pattern_seed: seed of the generated pattern when no image is given.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
    """

    alpha: float = 0.2
    image: str = ""
    pattern_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if not 0 < self.alpha <= 1:
            raise TacreconError(f"alpha must be in (0, 1], got {self.alpha}")

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        c, h, w = self.input_shape_
        self.pattern_ = load_image(self.image, c, h, w) if self.image else smooth_pattern(c, h, w, self.pattern_seed)

    def apply(self, x: Tensor) -> Tensor:
        return (1 - self.alpha) * x + self.alpha * self.pattern_.to(x)

    def state_dict(self) -> dict[str, Tensor]:
        return {"pattern": self.pattern_}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.pattern_ = state["pattern"]
