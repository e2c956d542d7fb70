"""Shared pytest fixtures: small analytic phantoms on anisotropic grids."""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import aniso_grid, sphere_mask

from rtplan.grid import ImageGrid


@pytest.fixture
def grid() -> ImageGrid:
    """A 24 x 40 x 40 grid of 2.5 x 0.98 x 0.98 mm voxels with a non-zero origin."""
    return aniso_grid()


@pytest.fixture
def sphere(grid: ImageGrid) -> np.ndarray:
    """A 10 mm-radius sphere at the grid centre."""
    return sphere_mask(grid, grid.center_mm, 10.0)


@pytest.fixture
def single_voxel(grid: ImageGrid) -> np.ndarray:
    m = np.zeros(grid.shape, bool)
    m[12, 20, 20] = True
    return m


@pytest.fixture
def empty(grid: ImageGrid) -> np.ndarray:
    return np.zeros(grid.shape, bool)


@pytest.fixture(scope="session")
def coarse_atlas():
    """The shipped atlas on a coarse grid (5 x 3 x 3 mm), built once per test session."""
    from rtplan.atlas import load_atlas

    return load_atlas("male_pelvis_postop", spacing_mm=(5.0, 3.0, 3.0))
