"""Named small triggers (a mark and a paste mask) laid out like backdoor-toolbox's trigger files.

backdoor-toolbox (vtu81/backdoor-toolbox, ``triggers/``) stamps its adaptive and source-specific
attacks with 32x32 PNGs: logos and patterns that we do not ship. Each stamp here keeps the
file's geometry (where its pixels are, how many, which mask) and draws the colours of a logo from
a seed instead; only ``badnet_patch4`` is reproduced exactly, being a plain binary pattern.

=================  ====================================================================
name               geometry in the 32x32 frame (rows, columns, 0-indexed)
=================  ====================================================================
phoenix_corner     a 5x5 logo at rows 27-31, columns 27-31 (bottom right)
phoenix_corner2    the same logo twice: bottom right and bottom left (columns 0-4)
firefox_corner     a round 13x13 logo at rows 1-13, columns 18-30 (top right); the file's
                   mask is its non-black pixels (140 of 169), ours a disc of 137
badnet_patch4      a 3x3 black-and-white X in each corner, its pixel nearest the image
                   centre black
trojan_square      an 8x8 square at rows 21-28, columns 21-28 (full mask)
=================  ====================================================================

Other image sizes get the 32x32 stamp resized with nearest-neighbour sampling (the masks stay
binary), as backdoor-toolbox resizes a trigger file to the dataset's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tacrecon.errors import TacreconError

FRAME = 32
# name -> (top-left corners of its copies, side, shape, the logo whose colours it carries)
STAMPS: dict[str, tuple[tuple[tuple[int, int], ...], int, str, str]] = {
    "phoenix_corner": (((27, 27),), 5, "square", "phoenix"),
    "phoenix_corner2": (((27, 27), (27, 0)), 5, "square", "phoenix"),
    "firefox_corner": (((1, 18),), 13, "disc", "firefox"),
    "badnet_patch4": (((0, 0), (0, 29), (29, 0), (29, 29)), 3, "square", "x"),
    "trojan_square": (((21, 21),), 8, "square", "trojan"),
}
LOGOS = ("phoenix", "firefox", "trojan")  # their order offsets the seed of each logo's colours


def blend(x: Tensor, mark: Tensor, mask: Tensor | float, alpha: Tensor | float) -> Tensor:
    """``x + alpha * mask * (mark - x)``, backdoor-toolbox's stamping rule (alpha 1 pastes).

    Shapes broadcast: x (N, C, H, W) in [0, 1], mark (C, H, W) or (N, C, H, W), mask (1, H, W),
    (N, 1, H, W) or a scalar, alpha a scalar or (N, 1, 1, 1).
    """
    return x + alpha * mask * (mark - x)


def stamp(name: str, c: int, h: int, w: int, seed: int) -> tuple[Tensor, Tensor]:
    """The stamp ``name`` as a mark (C, H, W) in [0, 1] and a binary mask (1, H, W)."""
    if name not in STAMPS:
        raise TacreconError(f"unknown stamp {name!r}; known: {', '.join(STAMPS)}")
    corners, side, shape, logo = STAMPS[name]
    piece = _logo(logo, c, side, seed)
    inside = _shape(shape, side)
    mark, mask = torch.zeros(c, FRAME, FRAME), torch.zeros(1, FRAME, FRAME)
    for top, left in corners:
        block = piece
        if logo == "x":  # mirror the X so that its missing pixel faces the centre
            block = block.flip(-2) if top > FRAME // 2 else block
            block = block.flip(-1) if left > FRAME // 2 else block
        mark[:, top:top + side, left:left + side] = block
        mask[:, top:top + side, left:left + side] = inside
    if (h, w) != (FRAME, FRAME):
        mark = F.interpolate(mark[None], size=(h, w), mode="nearest")[0]
        mask = F.interpolate(mask[None], size=(h, w), mode="nearest")[0]
    return mark, mask


def _logo(logo: str, c: int, side: int, seed: int) -> Tensor:
    """The colours (C, side, side) of ``logo``: uniform noise from the seed, or the binary X."""
    if logo == "x":
        x = torch.eye(side) + torch.eye(side).flip(1)
        x[-1, -1] = 0
        return x.clamp(max=1).expand(c, side, side).clone()
    g = torch.Generator().manual_seed(seed * len(LOGOS) + LOGOS.index(logo))
    return torch.rand(c, side, side, generator=g)


def _shape(shape: str, side: int) -> Tensor:
    """The mask (side, side) of one copy: a full square or a disc of diameter ``side``."""
    if shape == "square":
        return torch.ones(side, side)
    r = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= (side / 2) ** 2).float()
