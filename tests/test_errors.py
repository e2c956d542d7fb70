"""Bad input anywhere in the public API raises an RtplanError (one except clause catches all)."""

import numpy as np
import pytest

import rtplan as rp
from rtplan.dose_estimate import bed_gy, make_dose_grid
from rtplan.dvh import parse_metric
from rtplan.errors import RtplanError

GRID = rp.ImageGrid(shape=(4, 6, 6), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
ONE = np.zeros(GRID.shape, bool)
ONE[2, 3, 3] = True


@pytest.mark.parametrize(
    "call",
    [
        lambda: rp.ImageGrid(shape=(0, 1, 1), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0)),
        lambda: rp.Structure("A", np.full(GRID.shape, 0.5), GRID),
        lambda: rp.expand(ONE, GRID, -1.0),
        lambda: rp.Target(rp.Structure("PTV", ONE, GRID, role="ptv"), -60.0),
        lambda: bed_gy(60.0, 0, 3.0),
        lambda: make_dose_grid(GRID, spacing_mm=0.0),
        lambda: parse_metric("W65Gy"),
        lambda: rp.lesions_from_mask(ONE, GRID, min_volume_cc=-1.0),
        lambda: rp.load_protocol("no_such_protocol"),
        lambda: rp.load_atlas("no_such_atlas"),
        lambda: rp.StructureSet([]),
    ],
)
def test_bad_input_raises_an_rtplan_error(call):
    with pytest.raises(RtplanError):
        call()


def test_rtplan_errors_stay_builtin_compatible():
    assert issubclass(rp.InvalidInputError, ValueError)
    assert issubclass(rp.OutputExistsError, FileExistsError)
    assert issubclass(rp.MissingStructureError, KeyError)
