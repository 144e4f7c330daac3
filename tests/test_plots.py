"""tacrecon.plots: the scan's bar chart and the stand-ins' picture."""

import math

import torch

from tacrecon.plots import finite_or_zero, plot_norms, plot_stand_ins

PNG = b"\x89PNG\r\n\x1a\n"


def test_an_unreachable_class_is_drawn_at_zero():
    assert finite_or_zero([0.5, math.inf, 2.0]) == [0.5, 0, 2.0]
    assert finite_or_zero([0.5, None, 2.0]) == [0.5, 0, 2.0]  # as a JSON record stores it


def test_plot_norms_alone_and_with_the_robust_look(tmp_path):
    plot_norms([3.0, 10.0, math.inf], [0], tmp_path / "plain.png", ["a", "b", "c"])
    plot_norms([0.9, 1.0, 1.1], [0], tmp_path / "both.png", ylabel="norm / median norm", robust=[0.5, 1.0, 1.05],
               bound=0.85)
    assert (tmp_path / "plain.png").read_bytes()[:8] == PNG and (tmp_path / "both.png").read_bytes()[:8] == PNG


def test_plot_stand_ins(tmp_path):
    plot_stand_ins(torch.full((1, 3, 4, 4), 0.1), [0], tmp_path / "s.png", ["airplane"])
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
