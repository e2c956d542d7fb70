"""Time the build of the shipped atlas on its default grid and list structure volumes.

Run: ``python benchmarks/bench_atlas.py [--repeat N] [--spacing SZ SY SX]``. Prints the
wall-clock and CPU time of ``load_atlas("male_pelvis_postop")`` (best of N), the grid,
every structure's volume (cc) and the landmarks. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import time

from rtplan.atlas import load_atlas, validate_anatomy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SZ", "SY", "SX"))
    args = parser.parse_args()
    walls, cpus = [], []
    atlas = None
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        atlas = load_atlas("male_pelvis_postop", spacing_mm=args.spacing, validate=False)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    assert atlas is not None
    t0 = time.perf_counter()
    problems = validate_anatomy(atlas)
    t_val = time.perf_counter() - t0
    g = atlas.grid
    print(
        f"grid: shape {g.shape}, spacing {tuple(round(s, 4) for s in g.spacing_mm)} mm, "
        f"{g.size / 1e6:.1f} M voxels"
    )
    print(
        f"build (best of {args.repeat}): wall {min(walls):.2f} s, CPU {min(cpus):.2f} s; "
        f"validation {t_val:.2f} s; problems: {problems or 'none'}"
    )
    print()
    print(f"| {'structure':<16} | {'volume (cc)':>11} | {'centroid x, y, z (mm)':<24} |")
    print(f"|{'-' * 18}|{'-' * 13}|{'-' * 26}|")
    for name in atlas.structures.names:
        s = atlas.structures[name]
        c = ", ".join(f"{v:.0f}" for v in s.centroid_mm)
        print(f"| {name:<16} | {s.volume_cc:>11.1f} | {c:<24} |")
    print()
    print(f"| {'landmark':<20} | {'x, y, z (mm)':<22} |")
    print(f"|{'-' * 22}|{'-' * 24}|")
    for key, p in atlas.landmarks.items():
        print(f"| {key:<20} | {', '.join(f'{v:.1f}' for v in p):<22} |")


if __name__ == "__main__":
    main()
