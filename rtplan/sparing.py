"""What an optimised IMRT/VMAT plan does that a distance-only dose profile cannot.

Part of the analytic dose estimate (:mod:`rtplan.dose_estimate`); an approximation for
comparing options, never a dose calculation for treatment. Two terms, both fitted on
reference plans optimised with pyRadPlan (``calibration/``, docs/dose_model.md section 4.7):

* **organ sparing**: outside the PTV, an optimiser pushes the intermediate dose out of the
  organs it is told to spare. In an organ with sparing ``(s, L)`` the dose of each PTV's
  profile is multiplied by ``1 - s * (1 - exp(-r / L))``, ``r`` the distance (mm) to that
  PTV's surface: 1 at the surface (the PTV's own dose and the penumbra next to it are
  untouched), falling to ``1 - s`` far away. The spared dose falls with distance
  at least as fast as the profile does (both factors decrease).
* **hot-spot spread**: an optimised dose is not flat inside the PTV (PTV D2 ~106 % of Rx
  where the median is ~102 %), so organs overlapping the PTV can receive more than the
  plateau (rectum V70 of a 66.6 Gy bed plan). Inside the PTV the plateau gets a
  deterministic zero-mean texture of standard deviation ``spread`` (fraction of Rx), faded
  in over ``spread_depth_mm`` from the surface so the surface dose and D95 keep their
  calibration.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from rtplan._typing import FloatArray
from rtplan._validation import bounding_box
from rtplan.dvh import Float32Array, IndexArray
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid

__all__ = [
    "CALIBRATION",
    "DEFAULT_SPARING",
    "MetricUncertainty",
    "ModelCalibration",
    "OrganSparing",
    "apply_hot_spot_spread",
    "apply_organ_sparing",
    "parse_calibration",
    "sparing_factor",
]


@dataclass(frozen=True)
class OrganSparing:
    """Sparing of one organ by an optimised IMRT/VMAT plan.

    Attributes
    ----------
    organ : str
        TG-263 name (resolved through the structure set's synonyms).
    strength : float
        ``s`` in [0, 1): the fraction of the modelled dose removed far from the PTV.
    length_mm : float
        ``L`` (mm, > 0): the distance from the PTV surface over which sparing builds up.
    source : str
        Where the values come from (fit, reference plans, n).
    """

    organ: str
    strength: float
    length_mm: float
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.organ, str) or not self.organ:
            raise InvalidInputError(f"organ sparing needs an organ name, got {self.organ!r}")
        if not (math.isfinite(self.strength) and 0.0 <= self.strength < 1.0):
            raise InvalidInputError(
                f"sparing strength of {self.organ} must be in [0, 1), got {self.strength!r}"
            )
        if not (math.isfinite(self.length_mm) and self.length_mm > 0):
            raise InvalidInputError(
                f"sparing length of {self.organ} must be a positive number of mm, "
                f"got {self.length_mm!r}"
            )


#: The fitted model and its calibration table, written by ``calibration/fit_model.py``
#: from the stored reference plans; read once at import.
CALIBRATION_FILE = "model_calibration.toml"


@dataclass(frozen=True)
class MetricUncertainty:
    """How far the estimate of one metric fell from optimised reference plans.

    Attributes
    ----------
    structure, metric, unit : str
        E.g. ``"Rectum"``, ``"V40Gy"``, ``"%"``.
    bias : float
        Median of estimate minus reference over the held-out plans (the metric's unit).
    spread : float
        Root-mean-square of estimate minus reference over the held-out plans.
    n : int
        Held-out plans the figures come from.
    """

    structure: str
    metric: str
    unit: str
    bias: float
    spread: float
    n: int

    @property
    def text(self) -> str:
        """``"\u00b16.1 % (n=5)"``-style summary, for reports."""
        unit = f" {self.unit}" if self.unit else ""
        return f"\u00b1{self.spread:.1f}{unit} (n={self.n})"


@dataclass(frozen=True)
class ModelCalibration:
    """The fitted sparing, hot-spot spread and residual table of the dose model.

    Attributes
    ----------
    sparing : tuple of OrganSparing
    hot_spot_spread : float
        Standard deviation of the hot-spot texture (fraction of Rx).
    uncertainties : tuple of MetricUncertainty
    source : str
        What the fit was made from (plans, engine and versions).
    surface, plateau : float or None
        The IMRT profile's surface and plateau doses (fractions of Rx) fitted with the
        sparing; None: the model's published-calibrated defaults stay.
    """

    sparing: tuple[OrganSparing, ...]
    hot_spot_spread: float
    uncertainties: tuple[MetricUncertainty, ...]
    source: str
    surface: float | None = None
    plateau: float | None = None

    def uncertainty(self, structure: str, metric: str, unit: str) -> MetricUncertainty | None:
        """The calibration figures of one metric of one organ, or None when not calibrated.

        ``metric`` and ``unit`` as in the comparison table (``"V40Gy"``, ``"%"``;
        ``"V45Gy"``, ``"cc"``; ``"Dmean"``, ``"Gy"``).
        """
        for u in self.uncertainties:
            if (u.structure, u.metric, u.unit) == (structure, metric, unit):
                return u
        return None


def _float(table: Mapping[str, object], key: str, where: str) -> float:
    value = table.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidInputError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def parse_calibration(text: str, where: str = CALIBRATION_FILE) -> ModelCalibration:
    """Read a model calibration (the TOML ``calibration/fit_model.py`` writes).

    Raises
    ------
    InvalidInputError
        A value that is missing or not a number, a sparing out of range.
    """
    data = tomllib.loads(text)
    source = str(data.get("source", ""))
    sparing = tuple(
        OrganSparing(
            str(organ),
            _float(values, "strength", f"{where} [sparing.{organ}]"),
            _float(values, "length_mm", f"{where} [sparing.{organ}]"),
            source,
        )
        for organ, values in dict(data.get("sparing", {})).items()
    )
    hot = dict(data.get("hot_spot", {}))
    spread = _float(hot, "spread", f"{where} [hot_spot]") if hot else 0.0
    profile = dict(data.get("profile", {}))
    surface = _float(profile, "surface", f"{where} [profile]") if profile else None
    plateau = _float(profile, "plateau", f"{where} [profile]") if profile else None
    uncertainties = tuple(
        MetricUncertainty(
            str(row["structure"]),
            str(row["metric"]),
            str(row["unit"]),
            _float(row, "bias", f"{where} [[uncertainty]]"),
            _float(row, "spread", f"{where} [[uncertainty]]"),
            int(_float(row, "n", f"{where} [[uncertainty]]")),
        )
        for row in list(data.get("uncertainty", []))
    )
    return ModelCalibration(sparing, spread, uncertainties, source, surface, plateau)


def _shipped_calibration() -> ModelCalibration:
    text = files("rtplan").joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")
    return parse_calibration(text)


#: The shipped calibration (``rtplan/model_calibration.toml``).
CALIBRATION: ModelCalibration = _shipped_calibration()
#: Sparing of the organs a prostate-bed / pelvic IMRT plan is optimised to spare, as fitted.
DEFAULT_SPARING: tuple[OrganSparing, ...] = CALIBRATION.sparing


def sparing_factor(
    r_mm: FloatArray | Float32Array, strength: float, length_mm: float
) -> FloatArray:
    """``1 - s (1 - exp(-r / L))`` for ``r > 0``; 1 inside the PTV (``r <= 0``).

    Examples
    --------
    >>> [round(float(f), 3) for f in sparing_factor(np.array([-5.0, 0.0, 10.0, 1e6]), 0.4, 10.0)]
    [1.0, 1.0, 0.747, 0.6]
    """
    r = np.maximum(np.asarray(r_mm, dtype=np.float64), 0.0)
    out: FloatArray = 1.0 - strength * (1.0 - np.exp(-r / length_mm))
    return out


def apply_organ_sparing(
    relative: Float32Array,
    signed_mm: Float32Array,
    organs: Mapping[str, IndexArray],
    sparing: Sequence[OrganSparing],
) -> None:
    """Lower ``relative`` (in place) in the spared organs, by distance to the PTV.

    Parameters
    ----------
    relative : ndarray of float32
        One PTV's relative dose profile on the dose grid (modified in place).
    signed_mm : ndarray of float32
        Signed distance (mm) to that PTV's surface, > 0 outside.
    organs : mapping of str to ndarray of int64
        Organ name -> raveled dose-grid indices of the voxels at least half inside the
        organ (those the organ's DVH is mostly made of).
    sparing : sequence of OrganSparing
        Organs without an entry in ``organs`` are skipped.
    """
    flat_rel = relative.reshape(-1)
    flat_r = signed_mm.reshape(-1)
    for sp in sparing:
        index = organs.get(sp.organ)
        if index is None or index.size == 0:
            continue
        factor = sparing_factor(flat_r[index], sp.strength, sp.length_mm)
        flat_rel[index] *= factor.astype(np.float32)


def _texture(grid: ImageGrid, wavelength_mm: float) -> Float32Array:
    """Zero-mean, unit-variance deterministic texture (sum of three axis cosines)."""
    z, y, x = grid.axis_coordinates_mm()
    k = 2.0 * math.pi / wavelength_mm
    # phases fixed so that the texture is not symmetric about the grid's origin
    cz = np.cos(k * z + 0.7).astype(np.float32)[:, None, None]
    cy = np.cos(k * y + 1.9).astype(np.float32)[None, :, None]
    cx = np.cos(k * x + 2.6).astype(np.float32)[None, None, :]
    out: Float32Array = (cz + cy + cx) * np.float32(1.0 / math.sqrt(1.5))
    return out


def apply_hot_spot_spread(
    relative: Float32Array,
    signed_mm: Float32Array,
    grid: ImageGrid,
    *,
    spread: float,
    depth_mm: float,
    wavelength_mm: float,
) -> None:
    """Add the zero-mean hot-spot texture inside the PTV (in place; no change outside).

    The texture's standard deviation is ``spread`` (fraction of Rx) deep inside and fades
    to 0 at the surface as ``1 - exp(-u / depth_mm)``, ``u`` the depth (mm).
    """
    if spread <= 0:
        return
    inside = signed_mm < 0
    box = bounding_box(inside)
    if box is None:
        return
    sub = grid.crop(box)
    ins = inside[box]
    u = -signed_mm[box][ins]
    fade = (1.0 - np.exp(-u / depth_mm)).astype(np.float32)
    part = relative[box]
    part[ins] += np.float32(spread) * fade * _texture(sub, wavelength_mm)[ins]
