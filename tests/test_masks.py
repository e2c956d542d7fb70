"""Tests of rtplan._masks: work done on a box equals the whole-grid work there."""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import aniso_grid
from scipy import ndimage

from rtplan._masks import crop_organs, grown_box, quiet_expand, reach_voxels, whole_box
from rtplan.margins import Margin
from rtplan.structures import Structure, StructureSet

GRID = aniso_grid(shape=(30, 64, 64))
INNER = (slice(10, 18), slice(20, 40), slice(22, 44))


def _blobs(seed: int, level: float) -> np.ndarray:
    """Random blobs: thick and thin parts, holes, lone voxels, touching the grid edge."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(GRID.shape), sigma=(0.7, 2.0, 2.0))
    return noise > level * noise.std()


def _within(inner, outer):
    return tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(inner, outer))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "margin",
    [
        0.4,
        3.0,
        7.0,
        Margin(right=7.0, left=7.0, anterior=7.0, posterior=7.0),
        Margin(left=10.0, posterior=4.0, superior=5.0),
    ],
    ids=["0.4", "3", "7", "inplane7", "aniso"],
)
def test_a_mask_cut_at_the_reach_of_a_margin_grows_there_as_the_whole_mask(seed, margin):
    mask = _blobs(seed, 0.5)
    padded = grown_box(INNER, reach_voxels(GRID, margin), GRID.shape)
    assert padded != whole_box(GRID)  # the mask is cut on every side
    whole = quiet_expand(mask, GRID, margin)
    local = quiet_expand(mask[padded], GRID.crop(padded), margin)
    assert np.array_equal(local[_within(INNER, padded)], whole[INNER])


def test_reach_is_nothing_but_the_taps_along_an_axis_without_margin():
    inplane = reach_voxels(GRID, Margin(right=7.0, left=7.0, anterior=7.0, posterior=7.0))
    assert inplane[0] == 3 and inplane[1] == inplane[2] > 3
    assert reach_voxels(GRID, 0.0).tolist() == [3, 3, 3]


@pytest.mark.parametrize("gap", [0.0, 4.0])
def test_crop_organs_on_a_box_is_the_whole_grid_result_there(gap):
    body = np.zeros(GRID.shape, bool)
    body[:, 5:60, 3:50] = True
    ss = StructureSet(
        [
            Structure("Bladder", _blobs(7, 1.0), GRID),
            Structure("Body", body, GRID, role="external"),
        ]
    )
    mask = _blobs(8, 0.0)
    groups = {("Bladder",): gap, ("Rectum",): 2.0}  # the rectum is absent
    whole = crop_organs(mask.copy(), ss, GRID, groups)
    boxes = [
        INNER,
        (slice(0, 30), slice(30, 64), slice(40, 64)),
        (slice(0, 5), slice(0, 4), slice(55, 64)),
    ]
    for box in boxes:  # the last one holds no Body: nothing of it is kept
        local = crop_organs(mask[box].copy(), ss, GRID, groups, box=box)
        assert np.array_equal(local, whole[box])
    assert not whole[boxes[-1]].any()
