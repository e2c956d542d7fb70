"""Analytic phantoms built in code for the tests (no patient data)."""

from __future__ import annotations

import numpy as np

from rtplan.grid import ImageGrid


def aniso_grid(shape=(24, 40, 40), spacing=(2.5, 0.98, 0.98), origin=(-17.3, 4.2, -31.0)):
    """An anisotropic CT-like grid with a non-zero origin."""
    return ImageGrid(shape=shape, spacing_mm=spacing, origin_mm=origin)


def sphere_mask(grid: ImageGrid, center_mm, radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of ``center_mm`` (LPS)."""
    z, y, x = grid.axis_coordinates_mm()
    cx, cy, cz = center_mm
    d2 = (z[:, None, None] - cz) ** 2 + (y[None, :, None] - cy) ** 2 + (x[None, None, :] - cx) ** 2
    return d2 <= radius_mm**2


def box_mask(grid: ImageGrid, lo_mm, hi_mm) -> np.ndarray:
    """Voxels whose centre lies in the LPS box ``lo_mm <= p <= hi_mm``."""
    z, y, x = grid.axis_coordinates_mm()
    return (
        ((z >= lo_mm[2]) & (z <= hi_mm[2]))[:, None, None]
        & ((y >= lo_mm[1]) & (y <= hi_mm[1]))[None, :, None]
        & ((x >= lo_mm[0]) & (x <= hi_mm[0]))[None, None, :]
    )


def random_box_or_sphere(
    grid: ImageGrid, rng: np.random.Generator, *, corner_mm, size_mm, centre_mm, radius_mm
) -> np.ndarray:
    """A box or a sphere (even odds) at random, some cut by the grid's edge or off it.

    A box: lower corner uniform in ``corner_mm`` (low, high) per axis, edges uniform in
    ``size_mm``; a sphere: centre uniform in ``centre_mm`` per axis, radius uniform in
    ``radius_mm``.
    """
    if rng.random() < 0.5:
        lo = rng.uniform(*corner_mm, 3)
        return box_mask(grid, tuple(lo), tuple(lo + rng.uniform(*size_mm, 3)))
    centre = tuple(rng.uniform(*centre_mm, 3))
    return sphere_mask(grid, centre, float(rng.uniform(*radius_mm)))
