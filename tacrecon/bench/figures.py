"""The report's figures: per data set and architecture ASR against ACC and DER against minutes,
and every scan's per-class norms (PNG bytes, written atomically)."""

from __future__ import annotations

from pathlib import Path

from tacrecon.bench.rows import Row, order
from tacrecon.bench.tables import mean_der, median_minutes
from tacrecon.io import atomic_write_bytes
from tacrecon.plots import plot_norms, png_bytes, pyplot

MARKERS = "os^vD<>pP*Xh"  # one per defense, in the plot's order


def point_style(i: int, defense: str) -> dict[str, object]:
    """The scatter style of the ``i``-th defense of a plot: its marker, TAC's points larger."""
    return {"marker": MARKERS[i % len(MARKERS)], "s": 60 if defense == "tac" else 30, "alpha": 0.8}


def scatter_png(rows: list[Row], title: str) -> bytes | None:
    """ASR vs ACC after the defense, one colour per defense (attacked models only; one data set
    and architecture, ``title``)."""
    points = [r for r in rows if r.asr is not None]
    if not points:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4.2))
    for i, d in enumerate(order({r.defense for r in points}, ["none", "tac"])):
        group = [r for r in points if r.defense == d]
        ax.scatter([100 * r.acc for r in group], [100 * (r.asr or 0.0) for r in group], label=d,
                   **point_style(i, d))
    ax.set_xlabel("clean accuracy after defense (%)")
    ax.set_ylabel("attack success rate after defense (%)")
    ax.set_title(f"{title}: each point one attacked model, one defense (down-right is better)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def der_minutes_png(rows: list[Row], title: str) -> bytes | None:
    """Benefit against cost: one panel per attack, each defense a point at its median minutes
    (log scale) and its mean DER over the attack's implanted models (one data set and
    architecture, ``title``); None without an attacked model with a DER."""
    points = [r for r in rows if not r.clean and r.der is not None and r.defense != "none" and r.implanted()]
    attacks = sorted({r.attack for r in points})
    if not attacks:
        return None
    cols = min(4, len(attacks))
    lines = (len(attacks) + cols - 1) // cols
    fig, axes = pyplot().subplots(lines, cols, figsize=(3.2 * cols, 2.7 * lines), squeeze=False)
    defenses = order({r.defense for r in points}, ["tac"])
    for ax, attack in zip(axes.flat, attacks):
        for i, d in enumerate(defenses):
            group = [r for r in points if r.attack == attack and r.defense == d]
            if group:
                ax.scatter([max(median_minutes(group) or 0.0, 0.01)], [mean_der(group)], label=d,
                           **point_style(i, d))
        ax.set_xscale("log")
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("minutes (median)", fontsize=8)
        ax.set_ylabel("DER (mean)", fontsize=8)
    for ax in list(axes.flat)[len(attacks):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=min(len(labels), 6), loc="lower center")
    fig.suptitle(f"{title}: DER against each defense's minutes (up-left is better)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return png_bytes(fig, dpi=100)


def write_figures(out: Path, rows: list[Row]) -> list[tuple[str, bytes]]:
    """Write the report's figures into ``out`` and return them as (caption, PNG bytes): per data
    set and architecture ASR against ACC and DER against minutes, and every scan's norms."""
    figures = []
    for dataset, arch in sorted({(r.dataset, r.arch) for r in rows}):
        sub = [r for r in rows if (r.dataset, r.arch) == (dataset, arch)]
        for png, stem, caption in ((scatter_png(sub, f"{dataset}/{arch}"), "asr_vs_acc", "ASR vs ACC after each defense"),
                                   (der_minutes_png(sub, f"{dataset}/{arch}"), "der_vs_minutes",
                                    "DER against minutes, per attack")):
            if png:
                atomic_write_bytes(out / f"{stem}_{dataset}_{arch}.png", png)
                figures.append((f"{caption}, {dataset}/{arch}", png))
    for r in rows:
        if r.norms:
            path = out / "plots" / f"{r.defense}_{r.dataset}_{r.arch}_{r.attack}_seed{r.seed}.png"
            title = f"{r.defense} scan: {r.dataset}/{r.arch}/{r.attack} seed {r.seed}"
            if r.robust_relative and r.relative:  # both looks, each norm over its median
                plot_norms(r.relative, r.targets, path, title=title, ylabel="norm / median norm",
                           robust=r.robust_relative, bound=r.robust_bound)
            else:
                plot_norms(r.norms, r.targets, path, title=title)
            figures.append((path.stem, path.read_bytes()))
    return figures
