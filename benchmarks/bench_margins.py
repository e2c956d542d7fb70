"""Time and check rtplan.margins.expand against the methods peers use (plain script).

Run: ``python benchmarks/bench_margins.py [--repeat 5] [--quick]``. Needs SimpleITK
(``pip install -e .[bench]``) for two of the peer methods; they are skipped without it.

Grid 512 x 512 x 120 voxels of 0.98 x 0.98 x 2.5 mm. Structures:

* ``prostate_bed``: a 100 cc sphere (radius 28.8 mm), the size of a prostate-bed CTV;
  its expansion has a closed form for every margin (Steiner formula with the
  octant-wise ellipsoid, see ``analytic_volume``);
* ``nodal``: vessel-like tubes (capsules of radius 14 mm along 8 segments, ~350 cc)
  spread over ~15 x 10 x 17 cm like a pelvic nodal CTV; for a uniform margin the exact
  expansion is the same capsules with radius + margin, rasterised on the same grid.

Margins: uniform 7 mm; symmetric anisotropic 7 mm, 10 mm sup/inf; asymmetric 10 sup,
5 inf, 8 ant, 3 post, 7 lat. Peer methods, timed in the same run from the full-grid mask
to the full-grid result:

* ``scipy_dilation``: scipy.ndimage.binary_dilation on the cropped box with the
  equivalent (octant-wise) ellipsoidal structuring element of voxel centres;
* ``sitk_ball_full``: SimpleITK BinaryDilate with a ball of per-axis radius
  round(margin / spacing) on the full grid (what platipy does); symmetric margins only;
* ``sitk_distance_box``: SimpleITK SignedMaurerDistanceMap on the cropped box
  (uniform margin only);
* ``scipy_edt_box``: scipy.ndimage.distance_transform_edt on the cropped box, axes
  scaled by the margin (symmetric margins only).

Times are medians of wall-clock time and of process CPU time (the sum over threads; less
disturbed than wall time when other work shares the machine). Peak memory is the
tracemalloc peak of NumPy/Python allocations during one call
(SimpleITK's C++ heap is not seen by tracemalloc: reported as "-").
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
import tracemalloc

import numpy as np
from scipy import ndimage

from rtplan.grid import ImageGrid
from rtplan.margins import Margin, expand

try:
    import SimpleITK as sitk
except ImportError:  # pragma: no cover - optional
    sitk = None

SPACING = (2.5, 0.98, 0.98)
SHAPE = (120, 512, 512)
TUBE_RADIUS_MM = 14.0
# capsule segments (x, y, z) in mm relative to the grid centre: a bifurcation, two common
# iliac branches splitting into external and internal iliac-like tubes
SEGMENTS = [
    ((0, 0, 75), (-30, 5, 45)),
    ((0, 0, 75), (30, 5, 45)),
    ((-30, 5, 45), (-60, -30, -70)),
    ((30, 5, 45), (60, -30, -70)),
    ((-30, 5, 45), (-35, 45, -40)),
    ((30, 5, 45), (35, 45, -40)),
    ((-35, 45, -40), (-25, 50, -70)),
    ((35, 45, -40), (25, 50, -70)),
]
MARGINS = {
    "uniform 7": Margin.uniform(7.0),
    "7, 10 sup/inf": Margin(right=7, left=7, anterior=7, posterior=7, superior=10, inferior=10),
    "asymmetric": Margin(right=7, left=7, anterior=8, posterior=3, superior=10, inferior=5),
}


# ---------------------------------------------------------------------------- phantoms


def _axes(grid):
    z, y, x = grid.axis_coordinates_mm()
    c = np.array(grid.center_mm)
    return z - c[2], y - c[1], x - c[0]


def sphere(grid, radius_mm):
    z, y, x = _axes(grid)
    return z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2 <= radius_mm**2


def capsules(grid, radius_mm):
    z, y, x = _axes(grid)
    out = np.zeros(grid.shape, bool)
    for p, q in SEGMENTS:
        p, q = np.array(p, float), np.array(q, float)
        lo, hi = np.minimum(p, q) - radius_mm - 3, np.maximum(p, q) + radius_mm + 3
        ks = (z >= lo[2]) & (z <= hi[2])
        js = (y >= lo[1]) & (y <= hi[1])
        is_ = (x >= lo[0]) & (x <= hi[0])
        zz, yy, xx = z[ks][:, None, None], y[js][None, :, None], x[is_][None, None, :]
        d = q - p
        t = ((xx - p[0]) * d[0] + (yy - p[1]) * d[1] + (zz - p[2]) * d[2]) / (d @ d)
        t = np.clip(t, 0.0, 1.0)
        dist2 = (xx - p[0] - t * d[0]) ** 2 + (yy - p[1] - t * d[1]) ** 2
        dist2 = dist2 + (zz - p[2] - t * d[2]) ** 2
        sub = np.ix_(np.flatnonzero(ks), np.flatnonzero(js), np.flatnonzero(is_))
        out[sub] |= dist2 <= radius_mm**2
    return out


# ---------------------------------------------------------------------------- analytic


def _ellipsoid_area(a, b, c, n=400):
    """Surface area of the ellipsoid with semi-axes a, b, c (midpoint rule)."""
    th = (np.arange(n) + 0.5) * math.pi / n
    ph = (np.arange(2 * n) + 0.5) * math.pi / n
    t, p = np.meshgrid(th, ph, indexing="ij")
    st, ct, sp, cp = np.sin(t), np.cos(t), np.sin(p), np.cos(p)
    nx, ny, nz = b * c * st * st * cp, a * c * st * st * sp, a * b * st * ct
    return float(np.sum(np.sqrt(nx * nx + ny * ny + nz * nz)) * (math.pi / n) ** 2)


def analytic_volume(radius_mm, m: Margin):
    """Volume (mm^3) of a ball of radius r grown by the octant-wise ellipsoid of ``m``.

    Steiner: V(E + rB) = V(E) + S(E) r + M(E) r^2 + 4/3 pi r^3, where for the octant-wise
    ellipsoid E the volume and area are the octant means of the full ellipsoids', and
    M(E) is the integral over the unit sphere of E's support function.
    """
    octs = [
        (x, y, z)
        for x in (m.right, m.left)
        for y in (m.anterior, m.posterior)
        for z in (m.inferior, m.superior)
    ]
    vol_e = 4 / 3 * math.pi * np.mean([a * b * c for a, b, c in octs])
    area_e = np.mean([_ellipsoid_area(a, b, c) for a, b, c in octs])
    n = 600
    th = (np.arange(n) + 0.5) * math.pi / n
    ph = (np.arange(2 * n) + 0.5) * math.pi / n
    t, p = np.meshgrid(th, ph, indexing="ij")
    ux, uy, uz = np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)
    mx = np.where(ux > 0, m.left, m.right)
    my = np.where(uy > 0, m.posterior, m.anterior)
    mz = np.where(uz > 0, m.superior, m.inferior)
    h = np.sqrt((mx * ux) ** 2 + (my * uy) ** 2 + (mz * uz) ** 2)
    m_int = float(np.sum(h * np.sin(t)) * (math.pi / n) ** 2)
    r = radius_mm
    return vol_e + area_e * r + m_int * r * r + 4 / 3 * math.pi * r**3


# ---------------------------------------------------------------------------- peers


def _axis_margins(m: Margin):
    """(lo, hi) margins along (k, j, i) for the identity direction."""
    lo = np.array([m.inferior, m.anterior, m.right])
    hi = np.array([m.superior, m.posterior, m.left])
    return lo, hi


def _crop(mask, pad):
    k, j, i = (np.flatnonzero(mask.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    sl = tuple(
        slice(max(int(a[0]) - p, 0), min(int(a[-1]) + 1 + p, n))
        for a, p, n in zip((k, j, i), pad, mask.shape)
    )
    return sl


def _pad_voxels(m: Margin, spacing):
    lo, hi = _axis_margins(m)
    return [math.ceil(max(a, b) / s) + 1 for a, b, s in zip(lo, hi, spacing)]


def scipy_dilation(mask, grid, m: Margin):
    lo, hi = _axis_margins(m)
    s = np.array(grid.spacing_mm)
    r = [math.floor(max(a, b) / sp) for a, b, sp in zip(lo, hi, s)]
    t = np.indices([2 * v + 1 for v in r]).reshape(3, -1).T - np.array(r)
    mm = np.where(t > 0, hi, lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(t == 0, 0.0, (t * s / mm) ** 2).sum(axis=1)
    se = (q <= 1.0 + 1e-9).reshape([2 * v + 1 for v in r])
    sl = _crop(mask, _pad_voxels(m, s))
    out = np.zeros(mask.shape, bool)
    out[sl] = ndimage.binary_dilation(mask[sl], structure=se)
    return out


def sitk_ball_full(mask, grid, m: Margin):
    lo, hi = _axis_margins(m)
    if not np.allclose(lo, hi):
        return None
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(reversed(grid.spacing_mm)))
    radius = [round(v / s) for v, s in zip(hi, grid.spacing_mm)]
    out = sitk.BinaryDilate(img, list(reversed(radius)), sitk.sitkBall)
    return sitk.GetArrayViewFromImage(out).astype(bool)


def sitk_distance_box(mask, grid, m: Margin):
    if not m.is_uniform:
        return None
    sl = _crop(mask, _pad_voxels(m, grid.spacing_mm))
    img = sitk.GetImageFromArray(mask[sl].astype(np.uint8))
    img.SetSpacing(tuple(reversed(grid.spacing_mm)))
    dist = sitk.SignedMaurerDistanceMap(
        img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    out = np.zeros(mask.shape, bool)
    out[sl] = sitk.GetArrayViewFromImage(dist) <= m.right
    return out


def scipy_edt_box(mask, grid, m: Margin):
    lo, hi = _axis_margins(m)
    if not np.allclose(lo, hi) or np.any(hi == 0):
        return None
    sl = _crop(mask, _pad_voxels(m, grid.spacing_mm))
    d = ndimage.distance_transform_edt(~mask[sl], sampling=np.array(grid.spacing_mm) / hi)
    out = np.zeros(mask.shape, bool)
    out[sl] = d <= 1.0
    return out


def rtplan_expand(mask, grid, m):
    return expand(mask, grid, m, name="bench")


METHODS = {
    "rtplan.expand": rtplan_expand,
    "scipy_dilation": scipy_dilation,
    "sitk_ball_full": sitk_ball_full,
    "sitk_distance_box": sitk_distance_box,
    "scipy_edt_box": scipy_edt_box,
}


# ---------------------------------------------------------------------------- run


def run(fn, mask, grid, m, repeat):
    out = fn(mask, grid, m)  # warm-up (and result)
    if out is None:
        return None
    times, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn(mask, grid, m)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = None
    if not fn.__name__.startswith("sitk"):
        tracemalloc.start()
        fn(mask, grid, m)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return statistics.median(times), statistics.median(cpu), peak, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one margin, fewer runs")
    args = ap.parse_args()
    grid = ImageGrid(shape=SHAPE, spacing_mm=SPACING, origin_mm=(-250.0, -250.0, -150.0))
    vox = grid.voxel_volume_mm3
    r_bed = (3 * 100e3 / (4 * math.pi)) ** (1 / 3)
    structures = {
        "prostate_bed": (sphere(grid, r_bed), lambda m: analytic_volume(r_bed, m)),
        "nodal": (
            capsules(grid, TUBE_RADIUS_MM),
            lambda m: (
                capsules(grid, TUBE_RADIUS_MM + m.right).sum() * vox if m.is_uniform else None
            ),
        ),
    }
    methods = dict(METHODS)
    if sitk is None:
        methods = {k: v for k, v in methods.items() if not k.startswith("sitk")}
    margins = dict(list(MARGINS.items())[:1]) if args.quick else MARGINS
    print(f"# {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(f"# grid {SHAPE} voxels of {SPACING} mm; median of {args.repeat} runs")
    print("# ms: wall time; cpu ms: process CPU time (all threads; SimpleITK uses several)")
    print(
        f"{'structure':13s} {'margin':14s} {'method':18s} {'ms':>8s} {'cpu ms':>8s} "
        f"{'peak MB':>8s} {'vol cc':>8s} {'err %':>7s} {'x rtplan':>8s}"
    )
    for sname, (mask, exact_fn) in structures.items():
        print(f"# {sname}: {mask.sum() * grid.voxel_volume_cc:.1f} cc")
        for mname, m in margins.items():
            exact = exact_fn(m)
            base = None
            for meth, fn in methods.items():
                res = run(fn, mask, grid, m, args.repeat)
                if res is None:
                    continue
                t, c, peak, out = res
                base = t if base is None else base
                vol = out.sum() * vox
                err = "" if exact is None else f"{(vol / exact - 1) * 100:+7.2f}"
                pk = "-" if peak is None else f"{peak / 1e6:8.1f}"
                print(
                    f"{sname:13s} {mname:14s} {meth:18s} {t * 1e3:8.1f} {c * 1e3:8.1f} {pk:>8s} "
                    f"{vol / 1e3:8.1f} {err:>7s} {t / base:8.1f}"
                )


if __name__ == "__main__":
    main()
