"""The one-page report: its verdict, its content, and how a real browser renders it."""

import shutil
import subprocess

import pytest

from tacrecon.cli import main
from tacrecon.page import pairwise_verdict, plain_words, verdict


def record(**scores):
    base = {"p_value": 1.0, "norms": [15.0] + [10.0] * 9, "target": 0, "targets": [0], "robust": [],
            "anomaly_index": [-8.6] + [0.0] * 9, "relative": [1.5] + [1.0] * 9, "high_side": [0], "prior": None,
            "backdoored": True}
    return {"scores": {**base, **scores}, "defense_config": {"robust_quantile": 0.95},
            "classes": ["airplane"] + ["x"] * 9}


def test_verdict_names_a_high_side_target():
    line = verdict(record())
    assert line.startswith("BACKDOORED: poisoned class 0 (airplane)") and "150% of the median" in line
    assert "hard to reach" in line and "hard to reach" not in verdict(record(high_side=[]))
    assert "clean-label" in plain_words(record()) and "small" in plain_words(record(high_side=[], relative=[0.6] + [1.0] * 9))
    assert plain_words(record(target=None, targets=[], backdoored=False)).startswith("No backdoor found")


def test_pairwise_verdict_names_the_pairs_and_what_fired():
    none = record(pairwise_flagged=[], pairwise_spread=0.12, pairwise_all_to_all=False)
    assert pairwise_verdict(none) == "pairwise look: no pair flagged (spread 0.12)"
    one = record(pairwise_flagged=[[1, 0]], pairwise_spread=0.19, pairwise_all_to_all=False)
    assert pairwise_verdict(one).startswith("pairwise look: 1 pair(s) flagged, 1 (x) -> 0 (airplane) (spread 0.19; ")
    assert "source-specific" in pairwise_verdict(one)
    ring = record(pairwise_flagged=[[s, (s + 1) % 10] for s in range(6)], pairwise_spread=1.03,
                  pairwise_all_to_all=True)
    assert "and 2 more" in pairwise_verdict(ring) and "all-to-all" in pairwise_verdict(ring)


def test_scan_prints_the_pairwise_look_only_when_asked(planted, capsys):
    model = str(planted["root"] / "badnets")
    assert main(["scan", model, "--dataset", "digits", "--clean-fraction", "0.2", "--pairwise"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "BACKDOORED" in lines[0] and lines[1].startswith(f"{model}: pairwise look: ")


@pytest.fixture(scope="module")
def pages(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("pages")
    model = str(planted["root"] / "badnets")
    assert main(["scan", model, "--dataset", "digits", "--clean-fraction", "0.2", "--seed", "100",
                 "--html", str(out / "scan.html")]) == 0
    assert main(["repair", model, "--dataset", "digits", "--clean-fraction", "0.2", "--seed", "100", "--out",
                 str(out / "r"), "--set", "epochs=1", "stand_in_steps=5", "check_rounds=1", "check_steps=5",
                 "--html", str(out / "repair.html")]) == 0
    return out


def test_the_page_holds_the_verdict_figures_and_command(pages):
    scan = (pages / "scan.html").read_text()
    assert "Backdoor found: class 0" in scan and scan.count("data:image/png;base64,") == 2  # norms + stand-in
    assert "tacrecon scan" in scan and "--html" in scan and "torch" in scan
    repair = (pages / "repair.html").read_text()
    assert "clean accuracy (ACC)" in repair and "attack success rate (ASR)" in repair
    assert "self-check after 1 round(s): residual score class 0" in repair and "held-out ACC" in repair


def test_a_page_that_is_not_html_is_refused(planted, tmp_path, capsys):
    assert main(["scan", str(planted["root"] / "badnets"), "--dataset", "digits", "--html", str(tmp_path / "p.png")]) == 2
    assert "name it *.html" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (.ci/run installs Debian's chromium)")
def test_headless_chromium_renders_every_image(pages, tmp_path):
    # a copy of the page that writes into its title whether every image decoded (broken ones have no size)
    probe = (pages / "scan.html").read_text().replace(
        "</body>", "<script>document.title = [...document.images].every(i => i.complete && i.naturalWidth > 0)"
                   " ? 'images-ok' : 'images-broken';</script></body>")
    (tmp_path / "probe.html").write_text(probe)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", (tmp_path / "probe.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "<title>images-ok</title>" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,1400", (pages / "scan.html").as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        colours = len(im.convert("RGB").getcolors(maxcolors=1 << 24) or [])
    assert colours > 50  # the bar chart and the images, not a blank page of text and broken-image icons


def test_check_summary_names_the_score_and_the_held_out_accuracy():
    from tacrecon.page import check_summary

    assert check_summary({"residual": []}) is None and check_summary({}) is None
    stats = {"rounds": 2, "held_out": 29, "held_out_acc": [1.0, 0.99, 0.98],
             "residual": [{0: {"score": 0.6, "success": 1.0}}, {0: {"score": -0.1, "success": 0.2}}]}
    line = check_summary(stats)
    assert "after 2 round(s)" in line and "class 0 -0.10 (20% of clean images" in line
    assert "held-out ACC 100.00% -> 98.00% on 29 images" in line
