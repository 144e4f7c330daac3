"""One self-contained HTML page for a scan or a repair (``--html``): the verdict in plain words,
the per-class norms, the stand-in trigger on a few clean images, the figures before and after,
and the command and versions that made it. Images are embedded, so the page travels alone."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tacrecon.io import atomic_write_bytes

STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 10px;text-align:right}"
         "img{max-width:100%}.verdict{font-size:1.2em;padding:.6em;border-left:6px solid}"
         ".bad{border-color:#c0392b;background:#fbeae8}.good{border-color:#27ae60;background:#eaf7ef}"
         "code{background:#f4f4f4;padding:2px 4px}")


def verdict(record: dict[str, Any]) -> str:
    """The verdict of a TAC run's record in one line."""
    scan, config = record["scores"], record["defense_config"]
    relative = [float("inf") if v is None else v for v in scan["relative"]]
    k = min(range(len(relative)), key=relative.__getitem__) if scan["target"] is None else scan["target"]
    median = "the median for its class frequency" if scan.get("prior") else "the median"
    stats = f"anomaly index {scan['anomaly_index'][k]:.2f}, norm {relative[k]:.0%} of {median}, p = {scan['p_value']:.3g}"
    if scan["target"] is None:
        return f"no backdoor found (smallest relative norm: class {k}, {stats})"
    why = ", unusually hard to reach: clean-label poisoning" if k in scan["high_side"] else ""
    if k in scan["robust"]:
        i, rel = scan["robust_anomaly_index"][k], scan["robust_relative"][k]
        why = (f"; found by the robust look (robust QP, q {config['robust_quantile']}): anomaly index {i:.2f}, "
               f"norm {rel:.0%} of {median}")
    others = [t for t in scan["targets"] if t != k]
    more = f"; also flagged: class{'es' if len(others) > 1 else ''} {', '.join(map(str, others))}" if others else ""
    return f"BACKDOORED: poisoned class {k} ({record['classes'][k]}), {stats}{why}{more}"


def pairwise_verdict(record: dict[str, Any]) -> str:
    """The pairwise look's finding in one line (the record's ``pairwise_*`` scores)."""
    scan, names = record["scores"], record["classes"]
    pairs, spread = scan["pairwise_flagged"], scan["pairwise_spread"]
    spread_text = "undefined" if spread is None else f"{spread:.2f}"
    if not pairs:
        return f"pairwise look: no pair flagged (spread {spread_text})"
    shown = ", ".join(f"{s} ({names[s]}) -> {t} ({names[t]})" for s, t in pairs[:4])
    more = f" and {len(pairs) - 4} more" if len(pairs) > 4 else ""
    kind = ("many sources each have a cheap target: all-to-all, or a target's whole column"
            if scan["pairwise_all_to_all"] else "a pair far cheaper one way than the other: a source-specific "
            "backdoor, or one source of an all-to-one one")
    return f"pairwise look: {len(pairs)} pair(s) flagged, {shown}{more} (spread {spread_text}; {kind})"


def plain_words(record: dict[str, Any]) -> str:
    """What the scan found, for a reader who does not know the method."""
    scan = record["scores"]
    if scan["target"] is None:
        return ("No backdoor found: every class needs a latent shift of a typical size to take all the clean "
                "images to it, so none has the shortcut that a trigger leaves.")
    t = scan["target"]
    name = record["classes"][t]
    if t in scan["high_side"]:
        return (f"Backdoor found: class {t} ({name}) is unusually hard for clean images to reach, the mark of a "
                "clean-label attack that poisoned the whole class.")
    return (f"Backdoor found: class {t} ({name}) can be reached from every clean image by an unusually small "
            f"shift of the model's last-layer features ({scan['relative'][t]:.0%} of the median class), the "
            "shortcut that a trigger leaves. Images carrying the trigger are likely sent to this class.")


def check_summary(stats: dict[str, Any]) -> str | None:
    """The repair's check of its own work in one line (None where it did not run)."""
    if not stats.get("residual"):
        return None
    last = stats["residual"][-1]
    scores = ", ".join(f"class {t} {r['score']:+.2f} ({r['success']:.0%} of clean images sent there by its best "
                       f"patch)" for t, r in last.items())
    accs = stats.get("held_out_acc", [])
    held = (f"; held-out ACC {accs[0]:.2%} -> {accs[-1]:.2%} on {stats['held_out']} images" if len(accs) > 1 else "")
    return f"self-check after {stats['rounds']} round(s): residual score {scores}{held}"


def figure(png: bytes, caption: str) -> str:
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def metrics_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """ACC / ASR / RA before and after, as HTML rows."""
    names = {"acc": "clean accuracy (ACC)", "asr": "attack success rate (ASR)", "ra": "robust accuracy (RA)"}
    rows = "".join(f"<tr><th>{names[k]}</th><td>{before[k]:.2%}</td><td>{after[k]:.2%}</td></tr>"
                   for k in names if before.get(k) is not None and after.get(k) is not None)
    return f"<table><tr><th></th><th>before</th><th>after</th></tr>{rows}</table>"


def write_page(path: str | Path, record: dict[str, Any], figures: Sequence[tuple[str, bytes]],
               command: str | None = None) -> None:
    """The page of a TAC run's ``record`` (``scan`` or ``repair``) with ``figures`` (caption, PNG)."""
    scan, prov = record["scores"], record.get("provenance", {})
    kind = "repair" if "after" in record else "scan"
    parts = [f"<h1>tacrecon {kind}: {html.escape(str(record['model']))}</h1>",
             f"<p class='verdict {'bad' if scan['backdoored'] else 'good'}'>{html.escape(plain_words(record))}</p>",
             f"<p><code>{html.escape(verdict(record))}</code></p>"]
    if kind == "repair":
        what = "repaired" if record["repaired"] else "left unchanged (nothing to repair)"
        parts += [f"<h2>Repair</h2><p>The model was {what}.</p>", metrics_table(record["before"], record["after"])]
        if record["before"].get("asr") is None:
            parts.append("<p>The trigger is unknown here (the model is not an attack artifact), so the attack "
                         "success rate cannot be measured; only the clean accuracy is.</p>")
        summary = check_summary(record.get("stats", {}))
        parts.append(f"<p>{html.escape(summary)}. A score well above 0 means the target is still far easier to "
                     "reach with a small patch than the other classes.</p>" if summary else
                     "<p>Residual estimate: not run (<code>--set check_rounds=2</code> runs it); judge the repair by "
                     "the attack success rate where the trigger is known.</p>")
    parts += ["<h2>Figures</h2>", *(figure(png, caption) for caption, png in figures)]
    parts.append("<h2>How this page was made</h2><ul>"
                 + (f"<li>command: <code>{html.escape(command)}</code></li>" if command else "")
                 + f"<li>clean images: {record.get('clean_samples')} of {html.escape(str(record.get('dataset')))}</li>"
                 + "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in prov.items())
                 + "</ul>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tacrecon {kind}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    atomic_write_bytes(path, page.encode())
