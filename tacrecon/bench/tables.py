"""The report's tables, computed from the finished cells' rows (no rendering here).

Each table is a dict: ``title``, ``header``, ``body`` (rows of cell texts), ``bold`` (per body row,
the positions after the first two columns to print in bold) and, for a comparison, ``words`` (the
same comparison as a paragraph). :func:`tables` gives one main table per (data set, arch); the
others (detection, per backdoor, TAC against the best other defense, removal bar, attack bar,
cost) each give one table over every data set, or None when the grid has nothing for them.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from typing import Any

from tacrecon.bench.rows import IMPLANT_ASR, Row, fmt, order


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
    rival), the margin and the median minutes each took, on the models the attack implanted in
    (:meth:`Row.implanted`). Each rival is set against ``focus`` on the seeds both have finished
    (a paired comparison: a rival still short of a seed, or run on only some seeds, is compared on
    the ones it has), and the best other is the rival with the smallest margin. None without
    ``focus``.

    DER = (max(0, ASR drop) - max(0, ACC drop) + 1) / 2, so a margin of 0.01 is one point of ASR
    removed (or of ACC kept) more than the rival, on average.
    """
    if not any(r.defense == focus for r in rows):
        return None
    outcomes: list[dict[str, Any]] = []
    for key in sorted({(r.dataset, r.arch, r.attack) for r in rows if not r.clean}):
        sub = [r for r in rows if (r.dataset, r.arch, r.attack) == key and r.implanted()]
        rivals = sorted({r.defense for r in sub if family(r.defense) not in ("none", family(focus))})
        pairs = [pair for d in rivals if (pair := paired(sub, focus, d))]
        if not pairs:
            continue
        der, rival_der, mine, theirs = min(pairs, key=lambda pair: pair[0] - pair[1])  # the smallest margin
        margin = der - rival_der
        outcomes.append({"where": f"{key[0]}/{key[1]}", "attack": key[2], "seeds": len(mine), "der": der,
                         "text": cell_text(mine), "minutes": median_minutes(mine), "rival": theirs[0].defense,
                         "rival_der": rival_der, "rival_text": cell_text(theirs),
                         "rival_minutes": median_minutes(theirs), "margin": margin,
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


def paired(rows: list[Row], focus: str, rival: str) -> tuple[float, float, list[Row], list[Row]] | None:
    """``focus``'s and ``rival``'s mean DER and cells among ``rows`` (one attack row) on the seeds
    both have (one cell per seed, in seed order); None where they share no seed or either has no
    DER there."""
    mine = {r.seed: r for r in rows if r.defense == focus}
    theirs = {r.seed: r for r in rows if r.defense == rival}
    seeds = sorted(mine.keys() & theirs.keys())
    a, b = [mine[s] for s in seeds], [theirs[s] for s in seeds]
    der, rival_der = mean_der(a), mean_der(b)
    return None if der is None or rival_der is None else (der, rival_der, a, b)


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
