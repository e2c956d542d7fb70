"""Tests of rtplan.figures: CT slice pictures with structure outlines."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rtplan.atlas import Atlas, load_atlas
from rtplan.errors import GeometryError, MissingStructureError
from rtplan.figures import plot_ct_views, save_atlas_views
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return load_atlas("male_pelvis_postop", spacing_mm=(5.0, 4.0, 4.0))


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_single_png_with_three_views(tmp_path, atlas):
    out = tmp_path / "sub" / "views.png"
    written = save_atlas_views(atlas, out, structures=["Bladder", "Rectum", "Body"])
    assert written == [out]
    w, h = _png_size(out)
    assert w > 2 * h  # three panels side by side
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


def test_folder_output_and_center_by_name(tmp_path, atlas):
    written = save_atlas_views(atlas, tmp_path, center_mm="Bladder", structures=["Bladder"], dpi=50)
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"male_pelvis_postop_{v}.png" for v in ("axial", "coronal", "sagittal", "views")
    )
    for p in written:
        _png_size(p)


def test_unknown_structure_or_center_is_reported(tmp_path, atlas):
    with pytest.raises(MissingStructureError, match="NoSuchOrgan"):
        save_atlas_views(atlas, tmp_path / "x.png", structures=["Bladder", "NoSuchOrgan"])
    with pytest.raises(MissingStructureError, match="Nowhere"):
        save_atlas_views(atlas, tmp_path / "x.png", center_mm="Nowhere")
    assert not (tmp_path / "x.png").exists()


def test_an_atlas_stand_in_is_refused(tmp_path, atlas):
    # the same attributes are not enough: the contract is the Atlas type
    loose = SimpleNamespace(
        name=atlas.name,
        grid=atlas.grid,
        ct_hu=atlas.ct_hu,
        structures=atlas.structures,
        landmarks=atlas.landmarks,
    )
    with pytest.raises(TypeError, match=r"atlas must be an rtplan\.atlas\.Atlas"):
        save_atlas_views(loose, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_panels_show_the_requested_slices(atlas):
    g = atlas.grid
    center = atlas.structures["Bladder"].centroid_mm
    fig = plot_ct_views(atlas.ct_hu, g, center_mm=center, legend=False)
    k, j, i = (int(v) for v in g.lps_to_nearest_index(center))
    axial, coronal, sagittal = (ax.images[0].get_array() for ax in fig.axes[:3])
    assert np.array_equal(axial, atlas.ct_hu[k])
    assert np.array_equal(coronal, atlas.ct_hu[:, j, :])
    assert np.array_equal(sagittal, atlas.ct_hu[:, :, i])
    # outlines are drawn for structures cut by the slice, in their own colours
    fig = plot_ct_views(
        atlas.ct_hu, g, structures=[atlas.structures["Bladder"]], center_mm=center, views=["axial"]
    )
    colors = [c.get_edgecolor()[0][:3] for c in fig.axes[0].collections]
    assert colors and np.allclose(colors[0], np.array((255, 255, 0)) / 255)


def test_flipped_grid_is_displayed_like_the_identity(atlas):
    g = atlas.grid
    flipped = ImageGrid(
        shape=g.shape,
        spacing_mm=g.spacing_mm,
        origin_mm=tuple(g.index_to_lps([0, g.shape[1] - 1, g.shape[2] - 1])),
        direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
    )
    ct_flipped = atlas.ct_hu[:, ::-1, ::-1]
    center = atlas.landmarks["PubicSymphysis_Top"]
    a = plot_ct_views(atlas.ct_hu, g, center_mm=center, legend=False)
    b = plot_ct_views(ct_flipped, flipped, center_mm=center, legend=False)
    for pa, pb in zip(a.axes, b.axes):
        assert np.array_equal(pa.images[0].get_array(), pb.images[0].get_array())
        assert np.allclose(pa.images[0].get_extent(), pb.images[0].get_extent())
    m = np.zeros(g.shape, bool)
    m[g.shape[0] // 2, 5:9, 5:9] = True
    s = Structure("Mark", m[:, ::-1, ::-1], flipped)
    fig = plot_ct_views(ct_flipped, flipped, structures=StructureSet([s]), views=["axial"])
    assert fig.axes[0].collections  # the outline is found on the flipped grid


def test_bad_inputs(atlas):
    g = atlas.grid
    with pytest.raises(GeometryError, match="shape"):
        plot_ct_views(atlas.ct_hu[:-1], g)
    with pytest.raises(GeometryError, match="view"):
        plot_ct_views(atlas.ct_hu, g, views=["oblique"])
    with pytest.raises(GeometryError, match="outside"):
        plot_ct_views(atlas.ct_hu, g, center_mm=(0.0, 0.0, 5000.0))
