import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rtplan.grid import ImageGrid  # noqa: E402

finite = st.floats(min_value=-500, max_value=500, allow_nan=False)
spacing = st.floats(min_value=0.3, max_value=5.0, allow_nan=False)
sign = st.sampled_from([-1.0, 1.0])


@st.composite
def axial_grids(draw):
    signs = [draw(sign) for _ in range(3)]
    return ImageGrid(
        shape=tuple(draw(st.integers(1, 30)) for _ in range(3)),
        spacing_mm=tuple(draw(spacing) for _ in range(3)),
        origin_mm=tuple(draw(finite) for _ in range(3)),
        direction=tuple(np.diag(signs).ravel()),
    )


@given(axial_grids(), st.lists(st.tuples(*[st.integers(-5, 40)] * 3), min_size=1, max_size=10))
def test_index_lps_round_trip(g, indices):
    idx = np.array(indices)
    assert np.array_equal(g.lps_to_nearest_index(g.index_to_lps(idx)), idx)
    np.testing.assert_allclose(g.lps_to_index(g.index_to_lps(idx)), idx, atol=1e-6)


@given(axial_grids(), st.integers(0, 3), st.integers(0, 3))
def test_pad_then_crop_is_identity(g, before, after):
    p = g.pad(((before, after), (after, before), (before, before)))
    back = p.crop(
        (
            slice(before, before + g.shape[0]),
            slice(after, after + g.shape[1]),
            slice(before, before + g.shape[2]),
        )
    )
    assert back.equals(g)


@given(axial_grids(), st.floats(0.01, 10.0))
def test_equals_detects_origin_shifts(g, shift):
    moved = ImageGrid(
        g.shape, g.spacing_mm, (g.origin_mm[0] + shift, *g.origin_mm[1:]), g.direction
    )
    assert not g.equals(moved) and not moved.equals(g)
    assert g.equals(ImageGrid(g.shape, g.spacing_mm, g.origin_mm, g.direction))
