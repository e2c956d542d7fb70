import dataclasses

import numpy as np
import pytest

from rtplan.errors import GeometryError, GridMismatchError, InvalidInputError
from rtplan.grid import GRID_ATOL_MM, ImageGrid, check_same_grid, resample_to_grid
from rtplan.testing import assert_grid_equal


def make(**kw):
    base = dict(shape=(4, 5, 6), spacing_mm=(2.5, 0.98, 0.98), origin_mm=(-100.0, -50.0, 20.0))
    base.update(kw)
    return ImageGrid(**base)


def test_index_to_lps_follows_the_documented_axes():
    g = make()
    # one step along each array axis (k, j, i) moves +z, +y, +x by the spacing
    base = g.index_to_lps([0, 0, 0])
    np.testing.assert_allclose(base, (-100.0, -50.0, 20.0))
    np.testing.assert_allclose(g.index_to_lps([1, 0, 0]) - base, (0, 0, 2.5))
    np.testing.assert_allclose(g.index_to_lps([0, 1, 0]) - base, (0, 0.98, 0))
    np.testing.assert_allclose(g.index_to_lps([0, 0, 1]) - base, (0.98, 0, 0))


@pytest.mark.parametrize(
    "direction",
    [
        np.eye(3),
        np.diag([-1.0, 1.0, 1.0]),
        np.diag([1.0, -1.0, 1.0]),
        np.diag([1.0, 1.0, -1.0]),
        np.diag([-1.0, -1.0, -1.0]),
    ],
)
def test_round_trip_is_exact_for_axial_orientations(direction):
    g = make(direction=tuple(direction.ravel()))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij"), -1).reshape(-1, 3)
    back = g.lps_to_index(g.index_to_lps(idx))
    np.testing.assert_allclose(back, idx, atol=1e-9)
    assert np.array_equal(g.lps_to_nearest_index(g.index_to_lps(idx)), idx)


def test_flipped_axes_move_the_other_way():
    g = make(direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1))
    base = g.index_to_lps([0, 0, 0])
    np.testing.assert_allclose(g.index_to_lps([0, 0, 1]) - base, (-0.98, 0, 0))
    np.testing.assert_allclose(g.index_to_lps([1, 0, 0]) - base, (0, 0, -2.5))
    assert g.axis_signs == (-1, 1, -1)
    z, y, x = g.axis_coordinates_mm()
    assert z[1] < z[0] and x[1] < x[0] and y[1] > y[0]


def test_oblique_direction_is_refused_with_a_clear_error():
    c, s = np.cos(0.1), np.sin(0.1)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    with pytest.raises(GeometryError, match="only axial orientations"):
        make(direction=tuple(rot.ravel()))


@pytest.mark.parametrize(
    "kw",
    [
        dict(shape=(0, 5, 6)),
        dict(shape=(4, 5)),
        dict(spacing_mm=(0.0, 1.0, 1.0)),
        dict(spacing_mm=(-1.0, 1.0, 1.0)),
        dict(origin_mm=(np.nan, 0.0, 0.0)),
    ],
)
def test_invalid_components_are_refused(kw):
    with pytest.raises(GeometryError):
        make(**kw)


def test_grid_is_immutable_and_hashable():
    g = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.shape = (1, 1, 1)
    assert hash(g) == hash(make())
    a = g.affine
    a[0, 0] = 99.0
    assert g.affine[0, 0] != 99.0


def test_crop_moves_the_origin_and_keeps_positions():
    g = make()
    sub = g.crop((slice(1, 3), slice(2, 5), slice(None, 4)))
    assert sub.shape == (2, 3, 4)
    np.testing.assert_allclose(sub.index_to_lps([0, 0, 0]), g.index_to_lps([1, 2, 0]))
    np.testing.assert_allclose(sub.index_to_lps([1, 2, 3]), g.index_to_lps([2, 4, 3]))
    with pytest.raises(GeometryError):
        g.crop((slice(2, 2), slice(None), slice(None)))


def test_pad_moves_the_origin_and_undoes_with_negative_pad():
    g = make(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    p = g.pad(((1, 2), (3, 0), (0, 5)))
    assert p.shape == (7, 8, 11)
    np.testing.assert_allclose(p.index_to_lps([1, 3, 0]), g.index_to_lps([0, 0, 0]))
    assert_grid_equal(p.pad(((-1, -2), (-3, 0), (0, -5))), g)


def test_equals_is_sensitive_to_every_field():
    g = make(frame_of_reference_uid="1.2.3")
    assert g.equals(make(frame_of_reference_uid="1.2.3"))
    assert g.equals(make(origin_mm=(-100.0 + GRID_ATOL_MM / 2, -50.0, 20.0)))
    variants = [
        make(shape=(4, 5, 7)),
        make(spacing_mm=(2.5, 0.98, 0.99)),
        make(origin_mm=(-100.0, -50.0, 20.1)),
        make(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)),
        make(frame_of_reference_uid="1.2.4"),
    ]
    for v in variants:
        assert not g.equals(v), v
        assert not v.equals(g), v
    assert not g.equals("not a grid")


def test_check_same_grid_names_both_sides():
    with pytest.raises(GridMismatchError, match="dose.*CT"):
        check_same_grid(make(), make(shape=(4, 5, 7)), names=["CT", "dose"])
    check_same_grid(make(), make())


def test_from_dicom_slices_sorts_by_position_not_input_order():
    positions = [(-100, -50, z) for z in (25.0, 20.0, 30.0, 22.5, 27.5)]
    g = ImageGrid.from_dicom_slices(
        positions, orientation=(1, 0, 0, 0, 1, 0), pixel_spacing_mm=(0.8, 1.2), rows=5, columns=6
    )
    assert g.shape == (5, 5, 6)
    # PixelSpacing is [row spacing, column spacing]: rows are 0.8 apart (y), columns 1.2 (x)
    assert g.spacing_mm == (2.5, 0.8, 1.2)
    assert g.origin_mm == (-100.0, -50.0, 20.0)


def test_from_dicom_slices_feet_first_orientation_gives_a_flipped_grid():
    positions = [(100, 50, z) for z in (0.0, 3.0, 6.0)]
    g = ImageGrid.from_dicom_slices(
        positions, orientation=(-1, 0, 0, 0, -1, 0), pixel_spacing_mm=(1, 1), rows=4, columns=4
    )
    # row x col normal of (-x) x (-y) is +z
    assert g.axis_signs == (1, -1, -1)
    np.testing.assert_allclose(g.index_to_lps([0, 1, 1]), (99.0, 49.0, 0.0))


@pytest.mark.parametrize(
    "zs, message",
    [
        ((0.0, 2.5, 5.0, 10.0, 12.5), "missing slice"),
        ((0.0, 2.5, 5.0, 8.0, 10.5), "uneven"),
        ((0.0, 2.5, 2.5, 5.0), "duplicate"),
    ],
)
def test_from_dicom_slices_reports_the_positions_found(zs, message):
    positions = [(0, 0, z) for z in zs]
    with pytest.raises(GeometryError, match=message) as err:
        ImageGrid.from_dicom_slices(
            positions, orientation=(1, 0, 0, 0, 1, 0), pixel_spacing_mm=(1, 1), rows=2, columns=2
        )
    if message != "duplicate":
        assert str(zs[-1]) in str(err.value)


def test_from_dicom_slices_refuses_tilt_and_oblique():
    tilted = [(0, 0.5 * n, 2.5 * n) for n in range(4)]
    with pytest.raises(GeometryError, match="not stacked"):
        ImageGrid.from_dicom_slices(
            tilted, orientation=(1, 0, 0, 0, 1, 0), pixel_spacing_mm=(1, 1), rows=2, columns=2
        )
    c, s = np.cos(0.2), np.sin(0.2)
    with pytest.raises(GeometryError, match="axial"):
        ImageGrid.from_dicom_slices(
            [(0, 0, 0), (0, 0, 1)],
            orientation=(c, s, 0, -s, c, 0),
            pixel_spacing_mm=(1, 1),
            rows=2,
            columns=2,
        )


def test_from_affine_converts_ras_to_lps():
    # a typical NIfTI written from an axial CT: i runs to the patient's left (RAS -x)
    affine = np.array([[-0.9, 0, 0, 120.0], [0, -0.9, 0, 80.0], [0, 0, 3.0, -200.0], [0, 0, 0, 1]])
    g = ImageGrid.from_affine(affine, (10, 12, 7))
    assert g.shape == (7, 12, 10)
    assert g.spacing_mm == pytest.approx((3.0, 0.9, 0.9))
    assert g.is_standard_orientation
    # voxel (i, j, k) = (2, 3, 4) in RAS: (120 - 1.8, 80 - 2.7, -200 + 12)
    ras = affine @ [2, 3, 4, 1]
    lps = np.array([-ras[0], -ras[1], ras[2]])
    np.testing.assert_allclose(g.index_to_lps([4, 3, 2]), lps)
    data = np.arange(10 * 12 * 7).reshape(10, 12, 7)
    assert ImageGrid.array_from_ijk(data)[4, 3, 2] == data[2, 3, 4]


def test_from_affine_refuses_shear():
    affine = np.array([[1, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    with pytest.raises(GeometryError):
        ImageGrid.from_affine(affine, (2, 2, 2))


def test_resample_nearest_and_linear_against_known_values():
    src = ImageGrid(shape=(4, 4, 4), spacing_mm=(2, 2, 2), origin_mm=(0, 0, 0))
    # a linear ramp in x survives trilinear resampling exactly
    ramp = np.broadcast_to(np.arange(4.0) * 2.0, src.shape).copy()
    dst = ImageGrid(shape=(3, 3, 5), spacing_mm=(2, 2, 1), origin_mm=(1.0, 0, 0))
    out = resample_to_grid(ramp, src, dst, order=1)
    _, _, x = dst.axis_coordinates_mm()
    np.testing.assert_allclose(out[1, 1], x)
    labels = np.zeros(src.shape, np.int16)
    labels[:, :, 2:] = 7
    nn = resample_to_grid(labels, src, dst, order=0)
    assert nn.dtype == np.int16 and set(np.unique(nn)) <= {0, 7}
    mask = resample_to_grid(labels > 0, src, dst, order=0)
    assert mask.dtype == bool


def test_resample_checks_frame_of_reference_and_shape():
    a = ImageGrid(
        shape=(2, 2, 2), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0), frame_of_reference_uid="1"
    )
    b = a.with_frame_of_reference("2")
    with pytest.raises(GridMismatchError, match="frames of reference"):
        resample_to_grid(np.zeros(a.shape), a, b)
    with pytest.raises(GridMismatchError, match="shape"):
        resample_to_grid(np.zeros((3, 2, 2)), a, a)


def test_bounds_and_extent():
    g = make()
    (x0, x1), _, (z0, z1) = g.bounds_mm
    assert x1 - x0 == pytest.approx(6 * 0.98)
    assert z1 - z0 == pytest.approx(4 * 2.5)
    assert g.extent_mm == pytest.approx((10.0, 4.9, 5.88))
    assert g.voxel_volume_cc == pytest.approx(2.5 * 0.98 * 0.98 / 1000)


# ------------------------------------------------------------------ argument checks


def test_a_non_integral_shape_is_refused_not_truncated():
    with pytest.raises(GeometryError, match="shape"):
        make(shape=(2.5, 5, 6))
    assert make(shape=(4.0, 5, 6)).shape == (4, 5, 6)  # integral floats are fine


@pytest.mark.parametrize("field", ["shape", "spacing_mm", "origin_mm"])
def test_strings_are_not_numbers(field):
    value = {"shape": ("4", "5", "6"), "spacing_mm": ("1", "1", "1"), "origin_mm": ("0", "0", "0")}
    with pytest.raises(TypeError, match=field):
        make(**{field: value[field]})


def test_frame_of_reference_uid_must_be_a_string():
    with pytest.raises(TypeError, match="frame_of_reference_uid"):
        make(frame_of_reference_uid=123)
    assert make(frame_of_reference_uid="1.2.3").frame_of_reference_uid == "1.2.3"


def test_check_same_grid_refuses_what_is_not_a_grid():
    with pytest.raises(TypeError, match="ImageGrid"):
        check_same_grid(make(), (4, 5, 6))


def test_check_same_grid_needs_one_name_per_grid():
    # with too few names the third grid used to go unchecked
    with pytest.raises(InvalidInputError, match="one name per grid"):
        check_same_grid(make(), make(), make(shape=(4, 5, 7)), names=["CT", "dose"])


def test_resample_to_grid_checks_its_grids_and_order():
    g = make()
    a = np.zeros(g.shape)
    with pytest.raises(TypeError, match="source"):
        resample_to_grid(a, g.shape, g)
    with pytest.raises(TypeError, match="target"):
        resample_to_grid(a, g, "grid")
    with pytest.raises(InvalidInputError, match="order"):
        resample_to_grid(a, g, g, order=3)


def test_crop_needs_slices():
    with pytest.raises(TypeError, match="slice"):
        make().crop((0, slice(None), slice(None)))
