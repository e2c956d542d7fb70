"""Accuracy and time of anatomy completion on clinical cases made from atlas variants.

Run: ``python benchmarks/bench_completion.py [--spacing SZ SY SX] [--cases N] [--seeds S ...]
[--json F]``.

For the shipped atlas and ten variants (``tests/clinical_cases.py``: random seeds and the
extremes of scale and filling, vendor-style ROI names, moved patient coordinates, a
scanner-like CT with blur, noise and a couch), each case is written to DICOM with ONLY
the clinical subset (Body, Bladder, Rectum, Femur_Head_L/R, Spc_Bowel, PenileBulb), read
back with ``atlas_from_dicom`` and completed with ``complete_anatomy``; the result is
compared with the variant's full truth:

* derived bones: Dice per bone (target >= 0.90);
* iliac vessels (12 segments): symmetric mean surface distance (target <= 5 mm);
* landmarks: |z error| in slices (target <= 1);
* CTVsb and CTVn (nrg_salvage protocol) built from the completed anatomy vs from the
  truth: Dice (target >= 0.85);
* completion time: wall and CPU of ``complete_anatomy`` (target <= 60 s on 2 cores),
  with the load average (the machine may be shared).

``--seeds`` runs random variants of those seeds *instead* of the benchmark's cases
(``tests/clinical_cases.py::seeded_variant``), to check on anatomy the methods were not
developed on. Default grid: the atlas's own (512 x 512, 0.98 mm pixels, 2.5 mm slices).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from clinical_cases import (
    BENCHMARK_VARIANTS,
    CLINICAL_SUBSET,
    Variant,
    build_truth,
    seeded_variant,
    write_clinical_case,
)

from rtplan.atlas import ATLAS_STRUCTURES, Atlas, atlas_from_dicom, complete_anatomy
from rtplan.completion.core import BONE_NAMES
from rtplan.errors import RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet
from rtplan.volumes import ctv_pelvic_nodes, ctv_prostate_bed

DERIVED_BONES = [n for n in (*BONE_NAMES, "VB_S1", "VB_S2", "VB_S3") if n not in CLINICAL_SUBSET]
VESSELS = [n for n in ATLAS_STRUCTURES if n.startswith(("A_Iliac", "V_Iliac"))]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def msd_mm(a: np.ndarray, b: np.ndarray, grid: ImageGrid) -> float:
    """Symmetric mean surface distance (mm), computed in the masks' common box."""
    both = np.argwhere(a | b)
    if both.size == 0:
        return float("nan")
    lo, hi = np.maximum(both.min(axis=0) - 2, 0), both.max(axis=0) + 3
    box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    sa = a[box] & ~ndimage.binary_erosion(a[box])
    sb = b[box] & ~ndimage.binary_erosion(b[box])
    if not sa.any() or not sb.any():
        return float("inf")
    da = ndimage.distance_transform_edt(~sb, sampling=grid.spacing_mm)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=grid.spacing_mm)[sb]
    return float(np.concatenate([da, db]).mean())


def on_grid(truth: Atlas, grid: ImageGrid) -> Atlas:
    """The truth's structures on the case's grid as read back (same voxels, with its FoR)."""
    structures = StructureSet(
        [
            Structure.from_cropped(
                s.name,
                s.cropped_mask,
                (s.bbox[0].start, s.bbox[1].start, s.bbox[2].start),
                grid,
                role=s.role,
            )
            for s in truth.structures.values()
            if s.bbox is not None
        ],
        grid=grid,
    )
    return Atlas(
        name="truth",
        grid=grid,
        ct_hu=truth.ct_hu,
        structures=structures,
        landmarks=dict(truth.landmarks),
    )


def evaluate(variant: Variant, folder: Path, spacing: list[float] | None) -> dict[str, object]:
    truth = build_truth(variant, spacing_mm=spacing)
    t0 = time.perf_counter()
    write_clinical_case(folder, variant, spacing_mm=spacing, truth=truth)
    t_write = time.perf_counter() - t0
    load0 = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        t0 = time.perf_counter()
        user = atlas_from_dicom(folder)
        t_read = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        done = complete_anatomy(user)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load1 = os.getloadavg()[0]
    ref = on_grid(truth, done.grid)
    slice_mm = done.grid.spacing_mm[0]
    bones = {n: dice(done.structures[n].mask, ref.structures[n].mask) for n in DERIVED_BONES}
    vessels = {
        n: msd_mm(done.structures[n].mask, ref.structures[n].mask, done.grid) for n in VESSELS
    }
    landmarks = {
        k: abs(done.landmarks[k][2] - p[2]) / slice_mm if k in done.landmarks else float("inf")
        for k, p in ref.landmarks.items()
    }
    z_errors = {
        k: done.landmarks[k][2] - p[2] for k, p in ref.landmarks.items() if k in done.landmarks
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        ctv_sb = dice(ctv_prostate_bed(done).mask, ctv_prostate_bed(ref).mask)
        ctv_n = dice(ctv_pelvic_nodes(done).mask, ctv_pelvic_nodes(ref).mask)
    return {
        "case": variant.label,
        "vendor": variant.vendor,
        "grid": list(done.grid.shape),
        "bones_dice": bones,
        "vessels_msd_mm": vessels,
        "landmarks_slices": landmarks,
        "landmarks_z_error_mm": z_errors,
        "landmark_sources": dict(done.landmark_derivations),
        "ctv_sb_dice": ctv_sb,
        "ctv_n_dice": ctv_n,
        "write_s": t_write,
        "read_s": t_read,
        "complete_wall_s": wall,
        "complete_cpu_s": cpu,
        "steps_s": done.parameters["completion"]["seconds"],
        "load_average": [load0, load1],
    }


def table(rows: list[dict[str, object]]) -> str:
    head = (
        "| case | vendor | bones Dice min (which) | bones Dice mean | vessels MSD mean / max (mm) "
        "| landmarks max (slices, which) | CTVsb Dice | CTVn Dice | completion wall / CPU (s) "
        "| load |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        bones = r["bones_dice"]
        vessels = r["vessels_msd_mm"]
        lm = r["landmarks_slices"]
        assert isinstance(bones, dict) and isinstance(vessels, dict) and isinstance(lm, dict)
        worst_bone = min(bones, key=bones.get)
        worst_lm = max(lm, key=lm.get)
        load = r["load_average"]
        assert isinstance(load, list)
        lines.append(
            f"| {r['case']} | {r['vendor']} | {bones[worst_bone]:.3f} ({worst_bone}) "
            f"| {np.mean(list(bones.values())):.3f} "
            f"| {np.mean(list(vessels.values())):.2f} / {max(vessels.values()):.2f} "
            f"| {lm[worst_lm]:.2f} ({worst_lm}) | {r['ctv_sb_dice']:.3f} | {r['ctv_n_dice']:.3f} "
            f"| {r['complete_wall_s']:.1f} / {r['complete_cpu_s']:.1f} "
            f"| {load[0]:.1f}-{load[1]:.1f} |"
        )
    return "\n".join(lines)


def per_structure(rows: list[dict[str, object]]) -> str:
    """Worst case of every bone, vessel and landmark over all cases."""
    lines = ["| item | worst over cases | mean over cases |", "|---|---:|---:|"]
    for key, fmt, worst in (
        ("bones_dice", "{:.3f}", min),
        ("vessels_msd_mm", "{:.2f} mm", max),
        ("landmarks_slices", "{:.2f} slices", max),
    ):
        first = rows[0][key]
        assert isinstance(first, dict)
        for name in first:
            values = [float(r[key][name]) for r in rows]  # type: ignore[index]
            lines.append(
                f"| {name} | {fmt.format(worst(values))} | {fmt.format(float(np.mean(values)))} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SZ", "SY", "SX"))
    parser.add_argument("--cases", type=int, default=len(BENCHMARK_VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    variants = (
        [seeded_variant(n) for n in args.seeds]
        if args.seeds
        else list(BENCHMARK_VARIANTS[: args.cases])
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="rtplan-bench-completion-") as tmp:
        for v in variants:
            row = evaluate(v, Path(tmp) / v.label, args.spacing)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    print()
    print(per_structure(rows))
    walls = [float(r["complete_wall_s"]) for r in rows]  # type: ignore[arg-type]
    print(f"\ncompletion wall time: median {np.median(walls):.1f} s, max {max(walls):.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
