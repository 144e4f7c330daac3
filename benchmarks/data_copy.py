"""What the data copies hold: encoding, JPEG quality and chroma subsampling of each split.

    python benchmarks/data_copy.py --data-root ../shared/data

The CIFAR-10 copy the machines have is a JPEG re-encoding of the original PNG-quality images. A
JPEG's luminance quantization table tells the IJG quality it was written at (the standard table
scaled by 5000/q or 200-2q percent); its sampling factors tell whether colour was kept at full
resolution (4:4:4) or halved in both directions (4:2:0). Both lower the accuracy a recipe can
reach on that copy, so published accuracies of the original data set are not a bar for it as is.
Writes docs/benchmarks/data_copy.{md,json}.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from common import markdown_table, write_result

# the IJG (libjpeg) standard luminance table, natural (row-major) order, quality 50
IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def ijg_table(quality: int) -> np.ndarray:
    """The IJG luminance table libjpeg writes at ``quality`` (1-100)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((IJG_LUMA * scale + 50) // 100, 1, 255)


def estimated_quality(table: list[int]) -> tuple[int, int]:
    """The IJG quality whose luminance table is nearest ``table`` (64 values, natural order), and
    how many of the 64 entries differ from it (0: written by libjpeg at that quality)."""
    values = np.array(table)
    errors = [(int(np.abs(ijg_table(q) - values).sum()), q) for q in range(1, 101)]
    _, best = min(errors)
    return best, int((ijg_table(best) != values).sum())


def subsampling(image: Image.Image) -> str:
    """4:4:4, 4:2:2 or 4:2:0 from the luma sampling factors of a YCbCr JPEG."""
    h, v = image.layer[0][1:3]  # type: ignore[attr-defined]
    return {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0"}.get((h, v), f"{h}x{v}")


def describe(path: Path, sample: int) -> dict:
    data = np.load(path)
    encoded, offsets = data["encoded"], data["offsets"]
    sizes = np.diff(offsets)
    record = {"split": f"{path.parent.name}/{path.stem}", "images": int(len(sizes)), "format": str(data["format"]),
              "bytes_per_image": float(sizes.mean())}
    if record["format"] != "jpeg":
        return record
    picked = range(0, len(sizes), max(1, len(sizes) // sample))
    qualities, mismatches, modes = set(), 0, set()
    for i in picked:
        image = Image.open(io.BytesIO(encoded[offsets[i]:offsets[i + 1]].tobytes()))
        quality, differ = estimated_quality(list(image.quantization[0]))  # type: ignore[attr-defined]
        qualities.add(quality)
        mismatches += differ > 0
        modes.add(subsampling(image))
    return {**record, "sampled": len(picked), "ijg_quality": sorted(qualities),
            "tables_not_ijg": mismatches, "chroma": sorted(modes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--sample", type=int, default=500, help="JPEG images read per split")
    args = parser.parse_args()
    records = [describe(p, args.sample) for p in sorted(args.data_root.glob("*/*.npz"))]
    rows = [[r["split"], f"{r['images']:,}", r["format"], f"{r['bytes_per_image']:.0f}",
             ", ".join(map(str, r.get("ijg_quality", []))) or "-",
             f"{r['tables_not_ijg']}/{r['sampled']}" if "sampled" in r else "-", ", ".join(r.get("chroma", [])) or "-"]
            for r in records]
    table = markdown_table(["split", "images", "format", "bytes / image", "IJG quality", "tables not IJG's (of read)",
                            "chroma"], rows)
    print(write_result("data_copy", {"splits": records}, table))


if __name__ == "__main__":
    main()
