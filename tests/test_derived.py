"""Tests of rtplan.derived: the cauda equina outlined from the vertebrae and the sacrum."""

from __future__ import annotations

import numpy as np
import pytest

from rtplan.derived import derived_oars, spinal_canal_mask
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

G = ImageGrid(shape=(20, 40, 40), spacing_mm=(5.0, 2.0, 2.0), origin_mm=(-39.0, -39.0, 0.0))


def _ring_vertebra(name: str, slices: range) -> Structure:
    """A body (disc) with an arch behind it enclosing a 10 mm canal, on the given slices."""
    _, y, x = G.axis_coordinates_mm()
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body = (yy + 10) ** 2 + xx**2 <= 12**2
    arch = ((yy - 10) ** 2 + xx**2 <= 11**2) & ~((yy - 10) ** 2 + xx**2 <= 5**2)
    m = np.zeros(G.shape, bool)
    for k in slices:
        m[k] = body | arch
    return Structure(name, m, G)


def test_the_canal_is_the_hole_enclosed_by_the_bone_with_disc_gaps_bridged():
    ss = StructureSet([_ring_vertebra("VB_L4", range(2, 7)), _ring_vertebra("VB_L5", range(9, 14))])
    (cauda,) = derived_oars(ss)
    assert cauda.name == "CaudaEquina" and cauda.derived
    assert "VB_L4, VB_L5" in cauda.derivation
    slices = np.nonzero(cauda.mask.any(axis=(1, 2)))[0]
    assert slices.tolist() == list(range(2, 14))  # the two-slice disc gap is bridged
    per_slice = cauda.mask[4].sum() * 4.0  # mm2
    assert per_slice == pytest.approx(np.pi * 5**2, rel=0.3)
    assert not np.any(cauda.mask & ss["VB_L4"].mask)


def test_nothing_is_derived_without_bones_or_when_the_anatomy_has_it():
    empty = StructureSet([Structure("Rectum", np.ones(G.shape, bool), G)])
    assert derived_oars(empty) == ()
    ss = StructureSet([_ring_vertebra("VB_L4", range(2, 7))])
    (cauda,) = derived_oars(ss)
    given = StructureSet([*ss.values(), cauda.renamed("CaudaEquina")])
    assert derived_oars(given) == ()
    assert spinal_canal_mask(ss, ["Sacrum"]) is None
    with pytest.raises(TypeError, match="structures"):
        derived_oars([cauda])  # type: ignore[arg-type]


def test_the_shipped_atlas_gets_a_cauda_equina(coarse_atlas):
    (cauda,) = derived_oars(coarse_atlas.structures)
    assert 15.0 < cauda.volume_cc < 60.0
    x, y, _ = cauda.centroid_mm
    assert abs(x) < 3.0
    assert y > coarse_atlas.structures["VB_L5"].centroid_mm[1]  # behind the vertebral bodies
