"""``tacrecon report DIR``: the grid's table (attacks x defenses, mean +- std over seeds), plots.

Every cell shows ``ACC / ASR`` after the defense (percent); the best defense of each attacked row
(highest mean DER over the row's seeds, above 0.5) is in bold. A second table gives the
detection of the defenses that flag a class (TAC, NC): on backdoored models how often the attack's
targets were all flagged, on clean models how often any class was (false positives); where a model
has several backdoors, ASR is the largest of theirs and a table gives each one's. A third sets TAC
against the best other defense of each row (DER, margin, wins / loses), and a paragraph below it
says the same in words with TAC's cost against each other defense's (one such table for each
setting of TAC in the grid, ``tac-<hash>`` too; TAC's settings are not each other's rivals); a fourth counts the
attacked models each defense brings under the removal bar; a fifth, the attacked models that meet
the attack bar (ASR >= 90% within 2 points of the clean model's accuracy) and what the others
miss; a sixth gives the cost (hours of
cells and attack models per defense). Files written into
DIR: report.md, report.csv, report.html (one self-contained page with the plots inlined),
asr_vs_acc_<dataset>_<arch>.png, der_vs_minutes_<dataset>_<arch>.png (benefit against cost, one
panel per attack), plots/<defense>_*.png (per-class norms of the scans). Each table of a data set
ends with every defense's median minutes, and the comparison gives both sides' minutes, so a claim
about cost comes from the table. A defense, or an attack, whose cells were made by more than one
revision of its code is named under the tables.

``tacrecon report DIR --development DEV`` writes DIR's report in two labelled parts: DIR, the
confirmatory grid (the headline), and below it DEV's tables, the development grid on which the
method's choices were made.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from tacrecon.bench.cells import FAILED_SUFFIX
from tacrecon.bench.rows import IMPLANT_ASR, Row, fmt, load_rows, order
from tacrecon.errors import TacreconError
from tacrecon.io import atomic_write_bytes, read_json
from tacrecon.plots import plot_norms, png_bytes, pyplot

Parts = tuple[list[Row], str, list[dict[str, Any]], str | None]  # what :func:`report_parts` gives


def tables(rows: list[Row]) -> list[dict[str, Any]]:
    """One table per (dataset, arch): header, body rows (cells as text), bold positions."""
    out = []
    for dataset, arch in sorted({(r.dataset, r.arch) for r in rows}):
        sub = [r for r in rows if (r.dataset, r.arch) == (dataset, arch)]
        defenses = order({r.defense for r in sub}, ["none", "tac"])
        clean = {r.attack for r in sub if r.clean}
        attacks = sorted({r.attack for r in sub}, key=lambda a: (a not in clean, a))
        body, bold = [], []
        for attack in attacks:
            cells: list[str] = []
            ders: list[float | None] = []
            seeds = len({r.seed for r in sub if r.attack == attack})
            for d in defenses:
                group = [r for r in sub if r.attack == attack and r.defense == d]
                if not group:
                    cells.append("")
                    ders.append(None)
                    continue
                text = cell_text(group)
                done = len({r.seed for r in group})
                cells.append(text if done == seeds else f"{text} [{done}]")  # a grid still running
                full = done == seeds and d != "none"  # the attacked model itself is the reference, not a rival
                ders.append(mean_der(group) if full else None)
            body.append([attack, str(seeds), *cells])
            bold.append(best_cells(ders))
        minutes = [minutes_text(median_minutes([r for r in sub if r.defense == d])) for d in defenses]
        body.append(["minutes (median)", "", *minutes])  # each defense's own time, clean models included
        bold.append([])
        out.append({"title": f"{dataset} / {arch}", "header": ["attack", "seeds", *defenses], "body": body,
                    "bold": bold})
    return out


def median_minutes(group: list[Row]) -> float | None:
    """The median of the defense's own minutes over ``group``'s cells (None when empty)."""
    return statistics.median(r.seconds for r in group) / 60 if group else None


def minutes_text(minutes: float | None) -> str:
    if minutes is None:
        return ""
    return "<0.1" if minutes < 0.05 else f"{minutes:.1f}"


def cell_text(group: list[Row]) -> str:
    """``ACC / ASR`` of a cell's rows (ACC alone for a clean model), mean±std over its seeds."""
    acc = fmt([r.acc for r in group])
    return acc if group[0].asr is None else f"{acc} / {fmt([r.asr for r in group])}"


def best_cells(ders: list[float | None]) -> list[int]:
    """Positions of the row's best mean DER (ties within 0.0005 all count), among at least two
    defenses with a DER; none when no defense beats doing nothing (DER 0.5)."""
    values = [(i, v) for i, v in enumerate(ders) if v is not None]
    if len(values) < 2:
        return []
    top = max(v for _, v in values)
    return [i for i, v in values if v > 0.5 and v >= top - 5e-4]


def detection(rows: list[Row]) -> dict[str, Any] | None:
    """Detection table for the defenses that ever flag a class; None when there are none."""
    detectors = sorted({r.defense for r in rows if r.target is not None} | {r.defense for r in rows if r.norms})
    if not detectors:
        return None
    body = []
    clean = {(r.dataset, r.arch, r.attack) for r in rows if r.clean}
    for key in sorted({(r.dataset, r.arch, r.attack) for r in rows}, key=lambda k: (k[0], k[1], k not in clean, k[2])):
        cells = []
        for d in detectors:
            group = [r for r in rows if (r.dataset, r.arch, r.attack) == key and r.defense == d]
            if not group:
                cells.append("")
            elif key in clean:
                cells.append(f"FP {sum(bool(r.targets) for r in group)}/{len(group)}")
            else:
                cells.append(detection_text(group))
        body.append([f"{key[0]}/{key[1]}", key[2], *cells])
    return {"title": "detection (target flagged / models; FP = clean models flagged)",
            "header": ["data/arch", "attack", *detectors], "body": body, "bold": [[] for _ in body]}


def detection_text(group: list[Row]) -> str:
    """``found/models`` over the models whose attack implanted (a model counts when every target
    of its attack was flagged), for attacks with several targets `` (flagged/targets targets)``
    summed over them, and how many models the attack did not implant in."""
    live = [r for r in group if r.implanted()]
    missed = f"{len(group) - len(live)} not implanted" if len(live) < len(group) else ""
    if not live:
        return missed
    text = f"{sum(r.detected() for r in live)}/{len(live)}"
    if any(len(r.attack_targets) > 1 for r in live):
        flagged = sum(len(set(r.attack_targets) & set(r.targets)) for r in live)
        text += f" ({flagged}/{sum(len(r.attack_targets) for r in live)} targets)"
    return f"{text}, {missed}" if missed else text


def per_backdoor(rows: list[Row]) -> dict[str, Any] | None:
    """ASR of each backdoor after each defense, for the models with several backdoors (the other
    tables give the worst of them); None when there is no such model."""
    several = [r for r in rows if r.asr_per_backdoor and len(r.asr_per_backdoor) > 1]
    if not several:
        return None
    defenses = order({r.defense for r in several}, ["none", "tac"])
    body = []
    for key in sorted({(r.dataset, r.arch, r.attack) for r in several}):
        sub = [r for r in several if (r.dataset, r.arch, r.attack) == key]
        for name in dict.fromkeys(n for r in sub for n in r.asr_per_backdoor or {}):
            cells = []
            for d in defenses:
                values = [(r.asr_per_backdoor or {}).get(name) for r in sub if r.defense == d]
                cells.append(fmt(values) if values else "")
            body.append([f"{key[0]}/{key[1]}", key[2], name, *cells])
    return {"title": "ASR of each backdoor after each defense (%, mean±std over seeds; models with several "
                     "backdoors, whose ASR in the tables above is the largest)",
            "header": ["data/arch", "attack", "backdoor", *defenses], "body": body, "bold": [[] for _ in body]}


def mean_der(group: list[Row]) -> float | None:
    values = [r.der for r in group if r.der is not None]
    return statistics.fmean(values) if values else None


def family(defense: str) -> str:
    """The registered defense of a report name: ``tac`` for ``tac`` and ``tac-784338a7``."""
    return re.sub(r"-[0-9a-f]{8}$", "", defense)


def versus(rows: list[Row], focus: str = "tac") -> dict[str, Any] | None:
    """Where ``focus`` wins and loses: for each attacked row, its mean DER against the best other
    defense's (another setting of ``focus``'s own defense, ``tac-<hash>`` beside ``tac``, is no
    rival), the margin and the median minutes each took, over the seeds that every defense of the row has finished (a
    defense still short of a seed is not left out of the comparison; the seed is) and on the
    models the attack implanted in (:meth:`Row.implanted`). None without ``focus``.

    DER = (max(0, ASR drop) - max(0, ACC drop) + 1) / 2, so a margin of 0.01 is one point of ASR
    removed (or of ACC kept) more than the rival, on average.
    """
    if not any(r.defense == focus for r in rows):
        return None
    outcomes: list[dict[str, Any]] = []
    for key in sorted({(r.dataset, r.arch, r.attack) for r in rows if not r.clean}):
        sub = [r for r in rows if (r.dataset, r.arch, r.attack) == key and r.implanted()]
        defenses = {r.defense for r in sub if r.defense == focus or family(r.defense) not in ("none", family(focus))}
        seeds = set.intersection(*({r.seed for r in sub if r.defense == d} for d in defenses)) if defenses else set()
        groups = {d: [r for r in sub if r.defense == d and r.seed in seeds] for d in defenses}
        found = {d: mean_der(g) for d, g in groups.items() if g}
        ders = {d: v for d, v in found.items() if v is not None}
        if focus not in ders or len(ders) < 2:
            continue
        rival = max((d for d in ders if d != focus), key=ders.__getitem__)
        margin = ders[focus] - ders[rival]
        outcomes.append({"where": f"{key[0]}/{key[1]}", "attack": key[2], "seeds": len(seeds), "der": ders[focus],
                         "text": cell_text(groups[focus]), "minutes": median_minutes(groups[focus]), "rival": rival,
                         "rival_der": ders[rival], "rival_text": cell_text(groups[rival]),
                         "rival_minutes": median_minutes(groups[rival]), "margin": margin,
                         "verdict": "tie" if abs(margin) < 5e-3 else "wins" if margin > 0 else "loses"})
    if not outcomes:
        return None
    body = [[o["where"], o["attack"], str(o["seeds"]), f"{o['der']:.3f}", o["text"], minutes_text(o["minutes"]),
             o["rival"], f"{o['rival_der']:.3f}", o["rival_text"], minutes_text(o["rival_minutes"]),
             f"{o['margin']:+.3f}", o["verdict"]] for o in outcomes]
    tally = ", ".join(f"{v} {sum(o['verdict'] == v for o in outcomes)}" for v in ("wins", "tie", "loses"))
    return {"title": f"{focus} against the best other defense ({tally}; mean DER over the row's seeds, "
                     "tie: within 0.005)",
            "header": ["data/arch", "attack", "seeds", f"{focus} DER", f"{focus} ACC / ASR", f"{focus} min",
                       "best other", "its DER", "its ACC / ASR", "its min", "margin", focus],
            "body": body, "bold": [[] for _ in body], "words": in_words(outcomes, rows, focus)}


WORDS = "In words:"  # the comparison's paragraph starts so; a README copies it whole (scripts/readme_tables.py)


def in_words(outcomes: list[dict[str, Any]], rows: list[Row], focus: str) -> str:
    """The comparison's ``outcomes`` (:func:`versus`, one per attack row) in one paragraph: on how
    many rows ``focus`` has the best DER, ties and loses, against whom and by how much, and its
    cost against each other defense's (:func:`cost_ratios`)."""
    count = {v: [o for o in outcomes if o["verdict"] == v] for v in ("wins", "tie", "loses")}
    text = f"{WORDS} {focus} has the best DER on {len(count['wins'])} of {len(outcomes)} attack rows"
    if count["tie"]:
        text += f", ties on {len(count['tie'])} (within 0.005)"
    if count["loses"]:
        text += f" and loses on {len(count['loses'])}: " + "; ".join(
            f"{o['where']} {o['attack']} to {o['rival']} by {-o['margin']:.3f} ({focus} {o['text']}, "
            f"{o['rival']} {o['rival_text']})" for o in count["loses"])
    else:
        text += "; it loses on none"
    ratios = cost_ratios(rows, focus)
    if ratios:
        text += (f". Cost (each defense's minutes over {focus}'s on the same model, the median over the models both "
                 "ran): " + ", ".join(f"{d} {ratio_text(r)} ({n} model{'s' * (n != 1)})" for d, (r, n) in ratios.items()))
    return text + "."


def cost_ratios(rows: list[Row], focus: str) -> dict[str, tuple[float, int]]:
    """Per other defense (doing nothing and ``focus``'s other settings left out), the median over
    the models that both it and ``focus`` ran (clean ones included) of its seconds over
    ``focus``'s, and how many models; the defenses by name."""
    mine = {(r.dataset, r.arch, r.attack, r.seed): r.seconds for r in rows if r.defense == focus}
    ratios: dict[str, list[float]] = {}
    for r in rows:
        key = (r.dataset, r.arch, r.attack, r.seed)
        if family(r.defense) not in (family(focus), "none") and mine.get(key):
            ratios.setdefault(r.defense, []).append(r.seconds / mine[key])
    return {d: (statistics.median(ratios[d]), len(ratios[d])) for d in sorted(ratios)}


def ratio_text(ratio: float) -> str:
    """Two significant figures at most: 14x, 3.9x, 0.04x."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def attack_bar(rows: list[Row], asr: float = 0.9, drop: float = 0.02) -> dict[str, Any] | None:
    """Per attack, how many of its models meet the attack bar: ASR >= ``asr`` (every backdoor's,
    for a model with several) at an accuracy within ``drop`` of the clean model of the same data
    set, architecture and seed; the models short of it are named with what they miss. None
    without an attacked model."""
    models = {(r.dataset, r.arch, r.attack, r.seed): r for r in rows if not r.clean and r.asr_before is not None}
    clean = {(r.dataset, r.arch, r.seed): r.acc_before for r in rows if r.clean}
    if not models:
        return None
    body = []
    for key in sorted({k[:3] for k in models}):
        group = [(seed, r) for (d, a, att, seed), r in sorted(models.items()) if (d, a, att) == key]
        misses = [f"seed {seed}: " + ", ".join(short) for seed, r in group
                  if (short := bar_misses(r, clean.get((key[0], key[1], seed)), asr, drop))]
        body.append([f"{key[0]}/{key[1]}", key[2], f"{len(group) - len(misses)}/{len(group)}",
                     fmt([r.acc_before for _, r in group]), fmt([clean.get((key[0], key[1], s)) for s, _ in group]),
                     fmt([smallest_asr_before(r) for _, r in group]), "; ".join(misses)])
    return {"title": f"attack bar (attacked models with ASR >= {asr:.0%} within {drop * 100:.0f} points of the "
                     "clean model of their seed / attacked models; before any defense)",
            "header": ["data/arch", "attack", "met", "ACC", "clean ACC", "ASR", "short of the bar"],
            "body": body, "bold": [[] for _ in body]}


def smallest_asr_before(r: Row) -> float | None:
    """The attacked model's ASR before any defense: its weakest backdoor's where it has several."""
    return min(r.asr_before_per_backdoor.values()) if r.asr_before_per_backdoor else r.asr_before


def bar_misses(r: Row, clean_acc: float | None, asr: float, drop: float) -> list[str]:
    """What ``r``'s attacked model misses of the attack bar (empty: none; the accuracy is not
    judged without a clean model of its seed)."""
    short, weakest = [], smallest_asr_before(r)
    if weakest is not None and weakest < asr:
        short.append(f"ASR {100 * weakest:.1f}")
    if clean_acc is not None and clean_acc - r.acc_before > drop:
        short.append(f"ACC {100 * r.acc_before:.1f} (clean {100 * clean_acc:.1f})")
    return short


def removal_bar(rows: list[Row], asr: float = IMPLANT_ASR, drop: float = 0.02) -> dict[str, Any] | None:
    """Per data set and architecture, how many attacked models each defense brings to ASR <= ``asr``
    within ``drop`` of the attacked model's accuracy (the protocol's removal bar), among the models
    the attack implanted in; None without any."""
    attacked = [r for r in rows if not r.clean and r.asr is not None and r.defense != "none" and r.implanted()]
    if not attacked:
        return None
    defenses = order({r.defense for r in attacked}, ["tac"])
    body = []
    for dataset, arch in sorted({(r.dataset, r.arch) for r in attacked}):
        cells = []
        for d in defenses:
            group = [r for r in attacked if (r.dataset, r.arch, r.defense) == (dataset, arch, d)]
            met = sum(r.asr is not None and r.asr <= asr and r.acc_before - r.acc <= drop for r in group)
            cells.append(f"{met}/{len(group)}" if group else "")
        body.append([f"{dataset}/{arch}", *cells])
    return {"title": f"removal bar (attacked models brought to ASR <= {asr:.0%} within {drop * 100:.0f} points of "
                     f"their accuracy / attacked models; models whose ASR was <= {IMPLANT_ASR:.0%} before any "
                     "defense left out)",
            "header": ["data/arch", *defenses], "body": body, "bold": [[] for _ in body]}


def cost(rows: list[Row]) -> dict[str, Any]:
    """What the grid cost: per data set and architecture, the cells of each defense and the attack
    artifacts they share (each counted once), in each job's own seconds (a job that shared the CPU
    with others counts longer than it would alone)."""
    body, jobs, total = [], 0, 0.0
    for dataset, arch in sorted({(r.dataset, r.arch) for r in rows}):
        sub = [r for r in rows if (r.dataset, r.arch) == (dataset, arch)]
        models = {(r.attack, r.seed): r.attack_seconds for r in sub if r.attack_seconds is not None}
        groups = [(d, [r.cell_seconds if r.cell_seconds is not None else r.seconds for r in sub if r.defense == d])
                  for d in order({r.defense for r in sub}, ["none", "tac"])]
        if models:
            groups.insert(0, ("(attack models)", list(models.values())))
        for name, seconds in groups:
            body.append([f"{dataset}/{arch}", name, str(len(seconds)), f"{statistics.fmean(seconds) / 60:.1f}",
                         f"{sum(seconds) / 3600:.2f}"])
            jobs, total = jobs + len(seconds), total + sum(seconds)
    body.append(["all", "", str(jobs), "", f"{total / 3600:.2f}"])
    return {"title": "cost of the results in place (each job's own clock: jobs that shared the CPU count longer; "
                     "earlier runs of a rerun cell not counted)",
            "header": ["data/arch", "job", "count", "minutes each (mean)", "hours"],
            "body": body, "bold": [[] for _ in body]}


def legend(rows: list[Row]) -> str | None:
    """What each ``<defense>-<hash>`` column and ``<attack>-<hash>`` row stands for (its
    overrides); None when there is none."""
    parts = []
    for kind, named in (("defenses", {r.defense: r.defense_params for r in rows if r.defense_params}),
                        ("attacks", {r.attack: r.attack_params for r in rows if r.attack_params})):
        if named:
            parts.append(f"Overridden {kind}: " + "; ".join(
                f"{name} = {', '.join(f'{k}={compact(v)}' for k, v in sorted(params.items()))}"
                for name, params in sorted(named.items())))
    return " ".join(parts) or None


def compact(value: Any) -> str:
    """A parameter's value on one line (lists and mappings as compact JSON)."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def mixed_revisions(rows: list[Row]) -> str | None:
    """Which defenses' cells, and which attacks' cells, were made by more than one code revision
    of the defense or of the attack (a grid resumed across a change of a method, its older cells
    not yet rerun); None when there is none."""
    parts = []
    for kind, name, revision in (("defense", lambda r: r.defense, lambda r: r.revision),
                                 ("attack", lambda r: r.attack, lambda r: r.attack_revision)):
        counts: dict[str, Counter] = {}
        for r in rows:
            counts.setdefault(name(r), Counter())[revision(r)] += 1
        parts += [f"{kind} {n} " + ", ".join(f"revision {v}: {k} cell{'s' * (k != 1)}" for v, k in sorted(c.items()))
                  for n, c in sorted(counts.items()) if len(c) > 1]
    return "Cells of more than one code revision: " + "; ".join(parts) + "." if parts else None


def markdown(table: dict[str, Any]) -> str:
    lines = [f"### {table['title']}", "", "| " + " | ".join(table["header"]) + " |",
             "|" + "|".join("---" for _ in table["header"]) + "|"]
    for row, best in zip(table["body"], table["bold"]):
        cells = [f"**{c}**" if i - 2 in best else c for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + (["", table["words"]] if table.get("words") else []))


def table_blocks(text: str) -> list[str]:
    """Every Markdown table of ``text`` (consecutive lines that start with ``|``), as written by
    :func:`markdown`: what a README copies from a report."""
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def words_lines(text: str) -> list[str]:
    """Every comparison paragraph of ``text`` (a line that starts with :data:`WORDS`), in order."""
    return [line for line in text.splitlines() if line.startswith(WORDS)]


def html_table(table: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table["header"])
    rows = []
    for row, best in zip(table["body"], table["bold"]):
        cells = "".join(f"<td><b>{html.escape(c)}</b></td>" if i - 2 in best
                        else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row))
        rows.append(f"<tr>{cells}</tr>")
    words = f"<p>{html.escape(table['words'])}</p>" if table.get("words") else ""
    return f"<h3>{html.escape(table['title'])}</h3><table><tr>{head}</tr>{''.join(rows)}</table>{words}"


def scatter_png(rows: list[Row], title: str) -> bytes | None:
    """ASR vs ACC after the defense, one colour per defense (attacked models only; one data set
    and architecture, ``title``)."""
    points = [r for r in rows if r.asr is not None]
    if not points:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4.2))
    markers = "os^vD<>pP*Xh"
    for i, d in enumerate(order({r.defense for r in points}, ["none", "tac"])):
        group = [r for r in points if r.defense == d]
        ax.scatter([100 * r.acc for r in group], [100 * (r.asr or 0.0) for r in group], label=d,
                   marker=markers[i % len(markers)], s=60 if d == "tac" else 30, alpha=0.8)
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
    markers = "os^vD<>pP*Xh"
    defenses = order({r.defense for r in points}, ["tac"])
    for ax, attack in zip(axes.flat, attacks):
        for i, d in enumerate(defenses):
            group = [r for r in points if r.attack == attack and r.defense == d]
            if group:
                ax.scatter([max(median_minutes(group) or 0.0, 0.01)], [mean_der(group)], label=d,
                           marker=markers[i % len(markers)], s=60 if d == "tac" else 30, alpha=0.8)
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


def html_part(note: str, tables: list[dict[str, Any]], names: str | None) -> str:
    return (f"<p>{html.escape(note)}</p>" + "".join(html_table(t) for t in tables)
            + (f"<p>{html.escape(names)}</p>" if names else ""))


def development_html(development: Path, parts: Parts) -> str:
    """The development grid's part of the page: its tables (its figures stay in its own report)."""
    _, note, tables, names = parts
    return (f"<h2>Development grid: {html.escape(grid_name(development))} ({html.escape(DEVELOPMENT_NOTE)})</h2>"
            + html_part(note, tables, names))


def csv_text(rows: list[Row]) -> str:
    buf = io.StringIO()
    fields = ["dataset", "arch", "attack", "seed", "defense", "acc_before", "asr_before", "acc", "asr", "ra", "der",
              "target", "attack_target", "seconds"]
    writer = csv.writer(buf)
    writer.writerow([*fields, "asr_per_backdoor"])
    for r in rows:
        each = ";".join(f"{name}={value}" for name, value in (r.asr_per_backdoor or {}).items())
        writer.writerow([*(getattr(r, f) for f in fields), each])
    return buf.getvalue()


def report_parts(out: Path) -> Parts:
    """The finished cells under ``out``, the report's opening note, its tables and its closing names."""
    rows, failed = load_rows(out)
    if not rows:
        raise TacreconError(f"{out}: no finished cell to report" + (f" ({failed} failed)" if failed else ""))
    blocks = tables(rows)
    found = detection(rows)
    focuses = order({r.defense for r in rows if family(r.defense) == "tac"}, ["tac"])
    extra = [t for t in (found, per_backdoor(rows), *(versus(rows, f) for f in focuses), removal_bar(rows),
                         attack_bar(rows), cost(rows)) if t]
    names = " ".join(t for t in (legend(rows), mixed_revisions(rows)) if t) or None
    note = (f"{len(rows)} finished cells" + (f", {failed} failed (see cells/**/*{FAILED_SUFFIX})" if failed else "")
            + ". Each entry: ACC / ASR after the defense (%), mean±std over seeds ([n]: over only n of the row's "
            "seeds, the rest not run yet); bold: the highest DER of the row (above 0.5, over all its seeds).")
    return rows, note, blocks + extra, names


def report_markdown(note: str, tables: list[dict[str, Any]], names: str | None) -> str:
    """The report as Markdown (``report.md``): the note, every table, the names."""
    return "\n\n".join([note, *(markdown(t) for t in tables), *([names] if names else [])]) + "\n"


DEVELOPMENT_HEADING = "## Development grid: "  # where a two-part report's development part starts
DEVELOPMENT_NOTE = ("the grid on which the method's choices were made (every revision of it was looked at "
                    "on these cells): development figures, not the headline")


def grid_name(out: Path) -> str:
    """The bench config's name recorded in ``out/bench.json`` (the folder's name without one)."""
    path = out / "bench.json"
    try:
        return str(read_json(path)["config"]["name"]) if path.exists() else out.name
    except (KeyError, TypeError):
        return out.name


def development_parts(development: str | Path | None) -> tuple[Path, Parts] | None:
    """The development folder and its :func:`report_parts` (None without one)."""
    return None if development is None else (Path(development), report_parts(Path(development)))


def confirmatory_part(text: str) -> str:
    """A two-part ``report.md``'s confirmatory part (what comes before its development grid); a
    one-part report whole."""
    return text.split(f"\n{DEVELOPMENT_HEADING}", 1)[0]


def report_text(out: str | Path, development: str | Path | None = None) -> str:
    """``report.md`` of ``out``; with ``development``, in two labelled parts: ``out`` (the
    confirmatory grid, the headline) and below it the development grid's tables."""
    out = Path(out)
    dev = development_parts(development)
    return compose_markdown(out, report_parts(out), dev)


def compose_markdown(out: Path, parts: Parts, dev: tuple[Path, Parts] | None) -> str:
    """:func:`report_text` from the parts already read (``dev``: the development folder and its parts)."""
    _, note, tables, names = parts
    text = report_markdown(note, tables, names)
    if dev is None:
        return text
    folder, (_, dev_note, dev_tables, dev_names) = dev
    return (f"## Confirmatory grid: {grid_name(out)}\n\n{text}\n"
            f"{DEVELOPMENT_HEADING}{grid_name(folder)} ({DEVELOPMENT_NOTE})\n\n"
            + report_markdown(dev_note, dev_tables, dev_names))


def write_report(out: str | Path, development: str | Path | None = None) -> dict[str, str]:
    """Write the report files into ``out`` and return the texts by format (md, html, csv); with
    ``development`` (another bench folder), the report has two parts, as :func:`report_text`."""
    out = Path(out)
    if development is not None and Path(development).resolve() == out.resolve():
        raise TacreconError(f"--development {development}: the development grid must be another folder than {out}")
    parts = report_parts(out)
    rows, note, all_tables, names = parts
    dev = development_parts(development)
    md = compose_markdown(out, parts, dev)
    images = "".join(f"<figure><img src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
                     f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, b in write_figures(out, rows))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>tacrecon report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}figure{display:inline-block;margin:1em}</style></head><body>"
            "<h2>tacrecon benchmark report</h2>" + html_part(note, all_tables, names) + images
            + (development_html(*dev) if dev is not None else "") + "</body></html>")
    texts = {"md": md, "html": page, "csv": csv_text(rows)}
    for fmt_name, text in texts.items():
        atomic_write_bytes(out / f"report.{fmt_name}", text.encode())
    return texts


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
