"""Time the dose estimate of one option and the DVHs of 15 structures on a realistic grid.

Run: ``python benchmarks/bench_dose.py [--atlas]``.

The CT grid is 512 x 512 x 120 voxels of 0.98 x 0.98 x 2.5 mm (the default atlas grid);
the dose grid is 2.5 mm cubic over the body. Structures are synthetic pelvis-like
ellipsoids built here (or the shipped atlas with ``--atlas`` when rtplan.atlas exists).
The option is a 25-fraction IMRT course with a simultaneous boost (PB 62.5 Gy, pelvic
nodes 50 Gy: CLINICAL.md 4c) plus a 5-fraction SBRT course (30 Gy to a node: 4d).

Reported: wall time of the option's dose, of resampling the 15 structures to the dose grid
(once per case, shared by all options), of their 15 DVHs per option, the same DVHs by a
straightforward implementation (nearest-neighbour mask on the dose grid, boolean
indexing + ``np.histogram``; and dose trilinearly resampled to the CT grid + CT-mask
indexing), peak memory (tracemalloc of numpy allocations and the process's max RSS), and
the volume error of 5 mm and 10 mm radius spheres through each DVH.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np

from rtplan.dose_estimate import estimate_option_dose, make_dose_grid
from rtplan.dvh import compute_dvh, occupancy_on_grid, structure_on_dose_grid
from rtplan.grid import ImageGrid, resample_to_grid
from rtplan.plan import Course, FieldOption, Target
from rtplan.structures import Structure

SHAPE = (120, 512, 512)
SPACING = (2.5, 0.98, 0.98)


def ct_grid() -> ImageGrid:
    nz, ny, nx = SHAPE
    sz, sy, sx = SPACING
    return ImageGrid(
        shape=SHAPE,
        spacing_mm=SPACING,
        origin_mm=(-(nx - 1) * sx / 2, -(ny - 1) * sy / 2 - 20.0, -(nz - 1) * sz / 2),
    )


def ellipsoid(grid, centre, radii):
    z, y, x = grid.axis_coordinates_mm()
    cx, cy, cz = centre
    rx, ry, rz = radii
    return (
        ((x[None, None, :] - cx) / rx) ** 2
        + ((y[None, :, None] - cy) / ry) ** 2
        + ((z[:, None, None] - cz) / rz) ** 2
    ) <= 1.0


def synthetic_pelvis(grid):
    """15 pelvis-like structures (LPS: +x left, +y posterior, +z superior)."""
    z, y, x = grid.axis_coordinates_mm()
    body = (((x[None, None, :] / 180) ** 2 + ((y[None, :, None] + 20) / 120) ** 2) <= 1) & (
        np.abs(z)[:, None, None] < 145
    )
    s = {
        "Body": (body, "external"),
        "Bladder": (ellipsoid(grid, (0, -30, 10), (35, 30, 30)), "organ"),
        "Rectum": (ellipsoid(grid, (0, 25, -10), (18, 16, 45)), "organ"),
        "Spc_Bowel": (ellipsoid(grid, (0, -20, 90), (110, 60, 50)), "organ"),
        "Colon_Sigmoid": (ellipsoid(grid, (20, 20, 50), (25, 20, 25)), "organ"),
        "Femur_Head_L": (ellipsoid(grid, (90, 0, -20), (24, 24, 24)), "organ"),
        "Femur_Head_R": (ellipsoid(grid, (-90, 0, -20), (24, 24, 24)), "organ"),
        "PenileBulb": (ellipsoid(grid, (0, -5, -85), (10, 10, 8)), "organ"),
        "Canal_Anal": (ellipsoid(grid, (0, 30, -65), (10, 10, 18)), "organ"),
        "Sacrum": (ellipsoid(grid, (0, 80, 60), (50, 18, 55)), "organ"),
    }
    s["Bladder"] = (s["Bladder"][0] & ~s["Spc_Bowel"][0], "organ")
    ctv_pb = ellipsoid(grid, (0, 0, -35), (22, 18, 25))
    ptv_pb = ellipsoid(grid, (0, 0, -35), (29, 25, 32))
    nodes = np.zeros(grid.shape, bool)
    for side in (-1, 1):  # iliac chains: two slanted tubes
        for t in np.linspace(0, 1, 12):
            nodes |= ellipsoid(grid, (side * (25 + 45 * t), 20 - 40 * t, 80 - 90 * t), (16, 16, 16))
    ptv_nodes = nodes & ~ptv_pb
    ptv_sbrt = ellipsoid(grid, (55, 10, 95), (12, 12, 12))
    s.update(
        {
            "CTV_ProstateBed": (ctv_pb, "ctv"),
            "PTV_6250": (ptv_pb, "ptv"),
            "PTV_5000": (ptv_nodes, "ptv"),
            "PTV_SBRT": (ptv_sbrt, "ptv"),
            "Sphere_r10": (ellipsoid(grid, (-60, 40, 40.3), (10, 10, 10)), "organ"),
        }
    )
    return {n: Structure(n, m, grid, role=r) for n, (m, r) in s.items()}


def naive_dvh_nearest(dose, dose_grid, structure, bin_width=0.01):
    """Nearest-neighbour mask on the dose grid, boolean indexing, np.histogram."""
    m = resample_to_grid(structure.mask, structure.grid, dose_grid, order=0)
    d = dose[m]
    edges = np.arange(0, d.max() + 2 * bin_width, bin_width)
    h, _ = np.histogram(d, bins=edges)
    cum = np.cumsum(h[::-1])[::-1] * dose_grid.voxel_volume_cc
    return edges[:-1], cum


def naive_dvh_ct(dose_on_ct, structure, bin_width=0.01):
    """Dose already resampled to the CT grid; CT-mask boolean indexing + np.histogram."""
    d = dose_on_ct[structure.mask]
    edges = np.arange(0, d.max() + 2 * bin_width, bin_width)
    h, _ = np.histogram(d, bins=edges)
    cum = np.cumsum(h[::-1])[::-1] * structure.grid.voxel_volume_cc
    return edges[:-1], cum


def atlas_case():
    """The shipped atlas with PTVs grown here (PB + 7 mm, iliac vessels + 7 mm, a sphere)."""
    from rtplan.atlas import load_atlas
    from rtplan.margins import expand

    atlas = load_atlas("male_pelvis_postop")
    grid, ss = atlas.grid, atlas.structures
    keep = [
        "Body",
        "Bladder",
        "Rectum",
        "Canal_Anal",
        "Colon_Sigmoid",
        "Spc_Bowel",
        "Femur_Head_L",
        "Femur_Head_R",
        "PenileBulb",
        "Sacrum",
        "Urethra",
        "ProstateBed",
    ]
    structs = {n: ss[n] for n in keep}
    ptv_pb = expand(ss["ProstateBed"].mask, grid, 7.0)
    vessels = np.zeros(grid.shape, bool)
    for n in ss.names:
        if n.startswith(("A_Iliac", "V_Iliac")):
            vessels |= ss[n].mask
    ptv_nodes = expand(vessels, grid, 7.0) & ~ptv_pb & ss["Body"].mask
    x, y, z = ss["A_Iliac_Ext_L"].centroid_mm
    ptv_sbrt = ellipsoid(grid, (x + 15.0, y, z), (12.0, 12.0, 12.0))
    structs["PTV_6250"] = Structure("PTV_6250", ptv_pb, grid, role="ptv")
    structs["PTV_5000"] = Structure("PTV_5000", ptv_nodes, grid, role="ptv")
    structs["PTV_SBRT"] = Structure("PTV_SBRT", ptv_sbrt, grid, role="ptv")
    structs["Sphere_r10"] = Structure(
        "Sphere_r10", ellipsoid(grid, (-60.0, y, z), (10.0, 10.0, 10.0)), grid
    )
    return grid, structs


class Timing(float):
    """Best wall time (s) of several runs, with the process CPU time of that run."""

    cpu: float

    def __new__(cls, wall: float, cpu: float) -> Timing:
        obj = super().__new__(cls, wall)
        obj.cpu = cpu
        return obj

    def __str__(self) -> str:
        return f"{float(self):.3f} s wall / {self.cpu:.3f} s CPU"


def best_of(fn, repeat=3):
    """Run ``fn`` ``repeat`` times; the fastest wall time and its CPU time, and the result."""
    best = None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if best is None or wall < best[0]:
            best = (wall, cpu)
    return Timing(*best), out


def _sphere(grid, volume_cc, name="PTV"):
    r = (3 * volume_cc * 1000 / (4 * np.pi)) ** (1 / 3)
    return Structure(name, ellipsoid(grid, (0.3, 10.2, 0.4), (r, r, r)), grid, role="ptv")


def calibrate() -> int:
    """Model values next to the published figures of CLINICAL.md section 11."""
    from scipy import ndimage

    from rtplan.dose_estimate import estimate_course_dose, rtog0813_r50_limit

    grid = ImageGrid(
        shape=(100, 240, 280), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(-139.5, -119.5, -123.75)
    )
    z, y, x = grid.axis_coordinates_mm()
    body = Structure(
        "Body",
        ((x[None, None, :] / 135) ** 2 + (y[None, :, None] / 110) ** 2 <= 1)
        & (np.abs(z)[:, None, None] < 120),
        grid,
        role="external",
    )
    dg = make_dose_grid(grid, body=body)
    bm = occupancy_on_grid(body, dg) > 0
    vv = dg.voxel_volume_cc

    def vol(d, level):
        return float((d >= level).sum()) * vv

    print("IMRT/VMAT, spheres, 70 Gy")
    print("| PTV (cc) | CI95 = V95%/V_PTV | R50% | D95 (% Rx) | D50 (% Rx) | V95% (%) |")
    print("|---|---|---|---|---|---|")
    for v in (30.0, 100.0, 300.0):
        ptv = _sphere(grid, v)
        d = estimate_course_dose(Course("c", "imrt", 35, (Target(ptv, 70.0),)), dg, body=bm)
        h = compute_dvh(d, dg, ptv)
        print(
            f"| {ptv.volume_cc:.0f} | {vol(d, 66.5) / ptv.volume_cc:.2f} | "
            f"{vol(d, 35.0) / ptv.volume_cc:.2f} | {100 * h.dose_at_volume_pct(95) / 70:.1f} | "
            f"{100 * h.dose_at_volume_pct(50) / 70:.1f} | {h.volume_at_dose_pct(66.5):.1f} |"
        )
    print("\nSBRT, spheres, 30 Gy / 5 fx, against RTOG 0813/0915 Table 1")
    print(
        "| PTV (cc) | R100% | R50% model | R50% limit none / minor | D2cm model (% Rx) | "
        "D2cm limit none |"
    )
    print("|---|---|---|---|---|---|")
    for v in (1.8, 3.8, 7.4, 13.2, 22.0, 34.0, 50.0):
        ptv = _sphere(grid, v)
        d = estimate_course_dose(Course("s", "sbrt", 5, (Target(ptv, 30.0),)), dg, body=bm)
        occ = occupancy_on_grid(ptv, dg) >= 0.5
        dist = ndimage.distance_transform_edt(~occ, sampling=dg.spacing_mm)
        d2cm = 100 * d[dist >= 20].max() / 30
        lim_row = next(
            r
            for r in __import__("rtplan.dose_estimate", fromlist=["x"]).RTOG0813_R50_TABLE
            if abs(r[0] - v) < 1e-6
        )
        print(
            f"| {ptv.volume_cc:.1f} | {vol(d, 30.0) / ptv.volume_cc:.2f} | "
            f"{vol(d, 15.0) / ptv.volume_cc:.2f} | {rtog0813_r50_limit(v):.1f} / "
            f"{rtog0813_r50_limit(v, deviation='minor'):.1f} | {d2cm:.0f} | {lim_row[3]:.0f} |"
        )

    print(
        "\nFour-field box vs IMRT, synthetic pelvis (512 x 512 x 120 CT), PTV nodes + PB, "
        "45 Gy / 25 fx"
    )
    big = ct_grid()
    st = synthetic_pelvis(big)
    dgb = make_dose_grid(big, body=st["Body"])
    bmb = occupancy_on_grid(st["Body"], dgb) > 0
    pel = Structure("PTV_45", st["PTV_6250"].mask | st["PTV_5000"].mask, big, role="ptv")
    res = {}
    for tech in ("imrt", "3dcrt"):
        d = estimate_course_dose(Course("p", tech, 25, (Target(pel, 45.0),)), dgb, body=bmb)
        res[tech] = (
            compute_dvh(d, dgb, st["Spc_Bowel"]).mean_gy,
            compute_dvh(d, dgb, st["Bladder"]).metric("V40Gy"),
            compute_dvh(d, dgb, st["Rectum"]).metric("V40Gy"),
            compute_dvh(d, dgb, pel).dose_at_volume_pct(95) / 45 * 100,
            compute_dvh(d, dgb, st["Spc_Bowel"]).metric("V40Gy[cc]"),
        )
    print("| metric | IMRT model | 3D-CRT model | IMRT published | 3D-CRT published |")
    print("|---|---|---|---|---|")
    print(f"| bowel mean dose (Gy) | {res['imrt'][0]:.1f} | {res['3dcrt'][0]:.1f} | 18.6 | 25.2 |")
    print(f"| bowel V40 (cc) | {res['imrt'][4]:.0f} | {res['3dcrt'][4]:.0f} | - | - |")
    print(f"| bladder V40 (%) | {res['imrt'][1]:.1f} | {res['3dcrt'][1]:.1f} | 56.8 | 75.4 |")
    print(f"| rectum V40 (%) | {res['imrt'][2]:.1f} | {res['3dcrt'][2]:.1f} | - | - |")
    print(f"| PTV D95 (% Rx) | {res['imrt'][3]:.1f} | {res['3dcrt'][3]:.1f} | - | - |")
    sib = Course("Pelvis", "imrt", 25, (Target(st["PTV_6250"], 62.5), Target(st["PTV_5000"], 50.0)))
    d = estimate_course_dose(sib, dgb, body=bmb)
    normal = bmb & ~(occupancy_on_grid(pel, dgb) >= 0.5)
    print(
        f"\nPB 62.5 + nodes 50 Gy SIB: mean dose to body outside the PTVs "
        f"{d[normal].mean():.1f} Gy (published PB + nodes VMAT: 16.5 Gy, Rx not given)"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atlas", action="store_true", help="use the shipped atlas")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="print the model-versus-publication calibration table instead",
    )
    args = ap.parse_args()
    if args.calibrate:
        return calibrate()

    tracemalloc.start()
    t0 = time.perf_counter()
    if args.atlas:
        grid, structs = atlas_case()
        what = "shipped atlas male_pelvis_postop, targets grown here with rtplan.margins"
    else:
        grid = ct_grid()
        structs = synthetic_pelvis(grid)
        what = "synthetic pelvis-like phantom"
    print(
        f"CT grid {grid.shape} {tuple(round(v, 3) for v in grid.spacing_mm)} mm ({what}); "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    body = structs["Body"]
    dose_grid = make_dose_grid(grid, body=body)
    print(f"dose grid {dose_grid.shape} ({dose_grid.size / 1e6:.2f} M voxels of 2.5 mm)")

    t_body, body_occ = best_of(lambda: occupancy_on_grid(body, dose_grid) > 0, 1)
    option = FieldOption(
        "PBRT+WPRT(SIB)+SBRT",
        (
            Course(
                "Pelvis",
                "imrt",
                25,
                (Target(structs["PTV_6250"], 62.5), Target(structs["PTV_5000"], 50.0)),
            ),
            Course("SBRT", "sbrt", 5, (Target(structs["PTV_SBRT"], 30.0),)),
        ),
    )
    tracemalloc.reset_peak()
    t_dose, od = best_of(
        lambda: estimate_option_dose(option, dose_grid, body=body_occ), args.repeat
    )
    _, peak_dose = tracemalloc.get_traced_memory()
    dose = od.total_gy
    names = [n for n in structs if n != "Sphere_r10"][:15]
    if len(names) < 15:
        names.append("Sphere_r10")
    names = names[:15]
    tracemalloc.reset_peak()
    t_prep, sampled = best_of(
        lambda: [structure_on_dose_grid(structs[n], dose_grid) for n in names], 1
    )
    _, peak_prep = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    t_dvh, dvhs = best_of(lambda: [compute_dvh(dose, dose_grid, s) for s in sampled], args.repeat)
    _, peak_dvh = tracemalloc.get_traced_memory()
    t_naive, _ = best_of(lambda: [naive_dvh_nearest(dose, dose_grid, structs[n]) for n in names], 1)
    t_resample, dose_ct = best_of(lambda: resample_to_grid(dose, dose_grid, grid, order=1), 1)
    t_naive_ct, _ = best_of(lambda: [naive_dvh_ct(dose_ct, structs[n]) for n in names], 1)
    tracemalloc.stop()
    no_body = [n for n in names if n != "Body"]
    t_dvh_nb, _ = best_of(
        lambda: [compute_dvh(dose, dose_grid, s) for s in sampled if s.name != "Body"], args.repeat
    )

    print(
        f"\noption dose ({len(option.courses)} courses, {len(option.targets)} targets): "
        f"{t_dose} (+ body resampling once per case {t_body})"
    )
    print(f"resample {len(names)} structures to the dose grid (once per case): {t_prep}")
    print(
        f"{len(names)} DVHs per option (rtplan): {t_dvh} ({len(no_body)} without Body: {t_dvh_nb})"
    )
    print(
        f"{len(names)} DVHs, naive nearest-mask + np.histogram: {t_naive} "
        f"(ratio naive / rtplan {t_naive / t_dvh:.1f}x wall, {t_naive.cpu / t_dvh.cpu:.1f}x CPU)"
    )
    print(
        f"{len(names)} DVHs, naive dose->CT trilinear + CT mask + np.histogram: "
        f"{t_resample + t_naive_ct:.3f} s wall / {t_resample.cpu + t_naive_ct.cpu:.3f} s CPU "
        f"(resample {t_resample}) (ratio {(t_resample + t_naive_ct) / t_dvh:.1f}x wall, "
        f"{(t_resample.cpu + t_naive_ct.cpu) / t_dvh.cpu:.1f}x CPU)"
    )
    print(
        f"peak traced memory: dose {peak_dose / 2**20:.0f} MiB, structure resampling "
        f"{peak_prep / 2**20:.0f} MiB, DVHs {peak_dvh / 2**20:.0f} MiB; process max RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )

    print("\nvolume of spheres through the DVH (CT grid 0.98 x 0.98 x 2.5 mm, dose 2.5 mm):")
    rng = np.random.default_rng(5)
    sx, sy, sz = structs["Sphere_r10"].centroid_mm
    for radius in (5.0, 10.0):
        errs = {"rtplan": [], "mask": [], "naive_nearest": []}
        for _ in range(8):
            c = tuple(rng.uniform(-3, 3, 3) + np.array([sx, sy, sz]))
            st = Structure("S", ellipsoid(grid, c, (radius,) * 3), grid)
            v_true = 4 / 3 * np.pi * radius**3 / 1000
            errs["rtplan"].append(compute_dvh(dose, dose_grid, st).volume_cc / v_true - 1)
            errs["mask"].append(st.volume_cc / v_true - 1)
            _, cum = naive_dvh_nearest(dose, dose_grid, st)
            errs["naive_nearest"].append(cum[0] / v_true - 1)
        for k, v in errs.items():
            v = 100 * np.array(v)
            print(
                f"  r = {radius:4.1f} mm  {k:14s} mean {v.mean():+5.1f} %  "
                f"range {v.min():+5.1f} .. {v.max():+5.1f} %"
            )
    print("\nsample metrics:", {d.structure: round(d.mean_gy, 1) for d in dvhs[:6]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
