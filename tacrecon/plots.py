"""Plots and human-readable summaries."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tacrecon.io import atomic_write_bytes

if TYPE_CHECKING:
    from torch import Tensor


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (imported on first use: it is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 120) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def written(png: bytes, path: str | Path | None) -> bytes:
    """``png``, written to ``path`` first unless it is None."""
    if path is not None:
        atomic_write_bytes(path, png)
    return png


def finite_or_zero(values: Sequence[float | None]) -> list[float]:
    """The bar heights of a score: an infinite value (a class no shift reaches; None in a JSON
    record) is drawn as 0."""
    return [v if v is not None and math.isfinite(v) else 0.0 for v in values]


def plot_norms(norms: Sequence[float | None], flagged: Sequence[int], path: str | Path | None,
               classes: Sequence[str] | None = None, title: str = "", ylabel: str = "||s_k|| (minimal latent shift)",
               robust: Sequence[float | None] | None = None, bound: float | None = None) -> bytes:
    """Bar chart of a per-class score (by default the minimal-shift norms), flagged classes in red:
    the PNG's bytes, also written to ``path`` unless it is None.

    With ``robust`` (the robust look's score, e.g. the robust norms over their median, beside the plain
    ones over theirs) both series are drawn side by side, with the rule's ``bound`` as a dashed line.
    An infinite score (a class no shift reaches) is drawn as 0.
    """
    plt = pyplot()
    names = list(classes) if classes is not None else [str(k) for k in range(len(norms))]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(norms) + 1.5), 3.2))
    colors = ["tab:red" if k in flagged else "tab:blue" for k in range(len(norms))]
    if robust is None:
        ax.bar(range(len(norms)), finite_or_zero(norms), color=colors)
    else:
        light = ["salmon" if k in flagged else "lightsteelblue" for k in range(len(norms))]
        ax.bar([k - 0.2 for k in range(len(norms))], finite_or_zero(norms), width=0.4, color=colors,
               label="plain look (every sample)")
        ax.bar([k + 0.2 for k in range(len(norms))], finite_or_zero(robust), width=0.4, color=light,
               label="robust look (a quantile of the samples)")
        if bound is not None:
            ax.axhline(bound, color="grey", linestyle="--", linewidth=1)
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(norms)))
    ax.set_xticklabels(names if len(names) <= 20 else [str(k) for k in range(len(names))],
                       rotation=90 if len(names) > 10 or max(map(len, names)) > 4 else 0, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "TAC scan: flagged classes in red", fontsize=9)
    fig.tight_layout()
    return written(png_bytes(fig), path)


def show(ax: Any, image: Tensor, title: str) -> None:
    """Draw ``image`` (C, H, W) in [0, 1] on ``ax``, titled, without axes."""
    img = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_stand_ins(deltas: Tensor, targets: Sequence[int], path: str | Path | None,
                   classes: Sequence[str] | None = None, images: Tensor | None = None) -> bytes:
    """The stand-in triggers of a TAC run (``deltas`` (T, C, H, W), one per target), each shown
    as 0.5 + delta / (2 max|delta|) (mid-grey is no change), one row per target; with clean
    ``images`` (k, C, H, W), each of them beside it with the stand-in added. The PNG's bytes,
    also written to ``path`` unless it is None."""
    from tacrecon.data.augment import add_clipped

    rows = []
    for d in deltas:
        d = d.detach().float().cpu()
        rows.append((0.5 + d / (2 * d.abs().max().clamp_min(1e-12)), f"|delta| <= {float(d.abs().max()):.2f}",
                     lambda x, d=d: add_clipped(x, d)))
    return plot_trigger_rows(rows, targets, path, classes, images, "with the stand-in")


def plot_patches(masks: Tensor, patterns: Tensor, targets: Sequence[int], path: str | Path | None,
                 classes: Sequence[str] | None = None, images: Tensor | None = None) -> bytes:
    """The patch stand-ins of a TAC repair (masks (T, 1, H, W), patterns (T, C, H, W), one per
    target), each shown as mask * pattern on mid-grey, one row per target; with clean ``images``
    (k, C, H, W), each of them beside it with the patch stamped. The PNG's bytes, also written
    to ``path`` unless it is None."""
    from tacrecon.data.augment import stamp

    rows = []
    for m, p in zip(masks, patterns):
        m, p = m.detach().float().cpu(), p.detach().float().cpu()
        rows.append((stamp(p.new_full(p.shape, 0.5), m, p), f"{int((m > 0).sum())} pixels",
                     lambda x, m=m, p=p: stamp(x, m, p)))
    return plot_trigger_rows(rows, targets, path, classes, images, "with the patch")


def plot_trigger_rows(rows: Sequence[tuple[Tensor, str, Any]], targets: Sequence[int], path: str | Path | None,
                      classes: Sequence[str] | None, images: Tensor | None, applied: str) -> bytes:
    """One row per target: its trigger's picture (C, H, W) titled with the class and ``rows``'
    note, then each clean image (k, C, H, W) beside it with the row's trigger function applied
    (titled ``applied``). The PNG's bytes, also written to ``path`` unless it is None."""
    k = 0 if images is None else images.shape[0]
    fig, axes = pyplot().subplots(len(targets), 1 + 2 * k, figsize=(2.2 * (1 + 2 * k), 2.5 * len(targets)),
                                  squeeze=False)
    for row, t, (picture, note, apply) in zip(axes, targets, rows):
        show(row[0], picture, f"class {t}" + (f" ({classes[t]})" if classes is not None else "") + f"\n{note}")
        for i in range(k):
            x = images[i].detach().float().cpu()  # type: ignore[index]
            show(row[1 + 2 * i], x, "clean image")
            show(row[2 + 2 * i], apply(x), applied)
    fig.tight_layout()
    return written(png_bytes(fig), path)


def plot_scan(record: dict[str, Any], path: str | Path | None) -> bytes:
    """The per-class scores of a TAC run's record (``scan`` or ``repair``), flagged classes in red,
    titled with the verdict: both looks, each norm over its median, where the robust look ran.
    The PNG's bytes, also written to ``path`` unless it is None."""
    scores, config = record["scores"], record["defense_config"]
    verdict = (f"backdoor, class {scores['target']} ({record['classes'][scores['target']]})"
               if scores["backdoored"] else "no backdoor found")
    title = f"{record['model']}: {verdict}"[-90:]
    if "robust_relative" in scores and config["score"] == "norm":
        label = "norm / median norm" + (" (class-count corrected)" if scores.get("prior") else "")
        return plot_norms(scores["relative"], scores["targets"], path, record["classes"], title, label,
                          robust=scores["robust_relative"], bound=config["robust_max_relative"])
    ratio = config["score"] == "ratio"
    return plot_norms(scores["ratios" if ratio else "norms"], scores["targets"], path, record["classes"], title,
               "||s_k|| / mean per-sample distance" if ratio else "||s_k|| (minimal latent shift)")
