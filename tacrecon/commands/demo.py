"""``demo``: attack, scan and repair on the bundled digits data, end to end, in about a minute."""

from __future__ import annotations

from pathlib import Path

import torch


def demo(device: torch.device | str = "cpu", seed: int = 0, epochs: int | None = None,
         out: str | Path | None = None) -> int:
    """Attack digits with BadNets, scan the model with TAC, repair it; print ACC/ASR before and after."""
    import tempfile

    from tacrecon.artifact import run_attack
    from tacrecon.commands.repair import run_repair

    train = {} if epochs is None else {"epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        attack = run_attack("badnets", "digits", "resnet_small", root / "badnets", device=device, seed=seed,
                            train=train)
        print(f"1. trained a BadNets-backdoored resnet_small on digits (target class 0): "
              f"ACC {attack['acc']:.2%}, ASR {attack['asr']:.2%} ({attack['seconds']:.0f} s)")
        r = run_repair(str(root / "badnets"), "digits", root / "repaired", device=device, seed=seed,
                       clean_fraction=0.2)
    scan = r["scores"]
    found = f"class {scan['target']} flagged" if scan["backdoored"] else "no class flagged"
    print(f"2. TAC scan on {r['clean_samples']} clean images: {found} (anomaly index "
          f"{max(scan['anomaly_index']):.2f}, p = {scan['p_value']:.3g}, {scan['scan_seconds']:.1f} s)")
    b, a = r["before"], r["after"]
    print(f"3. repair: ACC {b['acc']:.2%} -> {a['acc']:.2%}, ASR {b['asr']:.2%} -> {a['asr']:.2%} "
          f"(DER {r['der']:.3f}, {r['stats'].get('repair_seconds', 0):.0f} s)")
    return 0
