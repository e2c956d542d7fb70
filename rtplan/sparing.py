"""What an optimised IMRT/VMAT plan does that a distance-only dose profile cannot.

Part of the analytic dose estimate (:mod:`rtplan.dose_estimate`); an approximation for
comparing options, never a dose calculation for treatment. Three terms, all fitted on
reference plans optimised with pyRadPlan (``calibration/``, docs/dose_model.md section 4.7),
and the calibration file they and the fitted fall-off outside the PTV
(:class:`FallOff`, used by :mod:`rtplan.dose_estimate`) are read from:

* **organ sparing**: outside the PTV, an optimiser pushes the intermediate dose out of the
  organs it is told to spare. In an organ with sparing ``(s, L)`` the dose of each PTV's
  profile is multiplied by ``1 - s * (1 - exp(-r / L))``, ``r`` the distance (mm) to that
  PTV's surface: 1 at the surface (the PTV's own dose and the penumbra next to it are
  untouched), falling to ``1 - s`` far away. The spared dose falls with distance
  at least as fast as the profile does (both factors decrease). Across the organ's surface
  the sparing is blended in over a few mm (:func:`spared_region`), as an optimised dose
  bends there rather than steps.
* **organ hold**: an optimiser told to keep an organ below a dose holds its dose there
  wherever the organ lies far enough from the PTV, whatever the PTV's size: in the
  reference plans the femoral heads' D2 was 0.48-0.49 of each course's prescription, for
  the prostate bed 15 mm away as for the pelvic nodes 10 mm away, where the profile gives
  the pelvic course's 1,200 cc PTV far more tail there than the bed's 250 cc. In an organ
  with hold ``(h, L_h)`` a PTV's profile ``d`` above the cap ``c = h + (1 - h) exp(-r /
  L_h)`` (fraction of that PTV's Rx; ``r`` > 0 the distance to its surface, mm) becomes
  ``d - w (d - c)``, ``w`` the organ's blended weight as for the sparing: no cap inside
  the PTV, about the surface dose next to it, ``h`` far away, bent in across the organ's
  surface (:func:`apply_organ_hold`). Dose below the cap is untouched.
* **hot-spot spread**: an optimised dose is not flat inside the PTV (PTV D2 ~106 % of Rx
  where the median is ~102 %), so organs overlapping the PTV can receive more than the
  plateau (rectum V70 of a 66.6 Gy bed plan). Inside the PTV the plateau gets a
  deterministic zero-mean texture of standard deviation ``spread`` (fraction of Rx), faded
  in over ``spread_depth_mm`` from the surface so the surface dose and D95 keep their
  calibration. The spread grows with the volume of the target's dose level, as a fitted
  power of it.
* **interface yield**: an optimiser weighs a PTV's coverage per unit of its volume, so a
  course whose PTV is large (the whole pelvis, ~1,200 cc) gives up more dose where its
  PTV meets a spared organ than a prostate-bed course (~250 cc) does: in the reference
  plans the pelvic course's PTV edge inside the rectum got ~98 % of Rx where the rest of
  its edge got ~103 %, the bed course's ~102 %. Within a band of the PTV surface, in an
  organ with yield ``y`` (per 1,000 cc) and weight ``w`` (its blended region), a target's
  dose is multiplied by ``1 - w y x exp(-|r| / band)``, ``x`` the volume (1,000 cc) of the
  target's level in its course beyond the reference volume the profile was fitted on
  (:func:`interface_yield`). Courses no larger than that are untouched.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from importlib.resources import files

import numpy as np
from scipy import ndimage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from rtplan._masks import grown_box
from rtplan._typing import FloatArray
from rtplan._validation import bounding_box
from rtplan.dvh import Float32Array, IndexArray
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid

__all__ = [
    "CALIBRATION",
    "DEFAULT_SPARING",
    "FALL_OFF_KEYS",
    "FallOff",
    "MetricUncertainty",
    "ModelCalibration",
    "OrganSparing",
    "SparedRegion",
    "apply_hot_spot_spread",
    "apply_interface_yield",
    "apply_organ_hold",
    "apply_organ_sparing",
    "interface_yield",
    "parse_calibration",
    "spared_region",
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
    interface_yield : float
        ``y`` (>= 0): the fraction of a target's dose given up at the PTV surface inside
        this organ per 1,000 cc of the target's level beyond the reference volume
        (:func:`interface_yield`); 0 (default) gives up nothing.
    hold_level : float
        ``h`` in [0, 1): the fraction of a PTV's Rx the organ's dose is held at far from
        that PTV (:func:`apply_organ_hold`); 0 (default): no hold.
    hold_length_mm : float
        ``L_h`` (mm, > 0): the distance from the PTV surface over which the hold's cap
        comes down from the surface dose to ``h``.
    """

    organ: str
    strength: float
    length_mm: float
    source: str = ""
    interface_yield: float = 0.0
    hold_level: float = 0.0
    hold_length_mm: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.organ, str) or not self.organ:
            raise InvalidInputError(f"organ sparing needs an organ name, got {self.organ!r}")
        for name, what, low, low_included, high in _SPARING_RANGES:
            value = getattr(self, name)
            above = value >= low if low_included else value > low
            if not (math.isfinite(value) and above and value < high):
                bounds = f"{'[' if low_included else '('}{low:g}, {high:g})"
                raise InvalidInputError(
                    f"{what} of {self.organ} must be in {bounds}, got {value!r}"
                )


#: :class:`OrganSparing`'s numbers: field, name in messages, lowest value, whether it is
#: allowed, and the (excluded) highest.
_SPARING_RANGES: tuple[tuple[str, str, float, bool, float], ...] = (
    ("strength", "sparing strength", 0.0, True, 1.0),
    ("length_mm", "sparing length (mm)", 0.0, False, math.inf),
    ("interface_yield", "interface yield", 0.0, True, math.inf),
    ("hold_level", "hold level", 0.0, True, 1.0),
    ("hold_length_mm", "hold length (mm)", 0.0, False, math.inf),
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
class FallOff:
    """Fitted fall-off of an IMRT course's dose outside its PTV.

    The fields of :class:`rtplan.dose_estimate.DoseModelParameters` of the same names
    with an ``imrt_`` prefix, which document them. Kept with the calibration it is read
    from (``[fall_off]`` of ``model_calibration.toml``).

    Attributes
    ----------
    penumbra_mm : float
        Length (mm, > 0) of the steep exponential of a target up to the reference volume
        (``imrt_reference_volume_cc``, 300 cc).
    penumbra_volume_power : float
        Growth (>= 0) of that length with the target's volume: a power of
        ``V / imrt_reference_volume_cc``, above the reference volume only.
    tail_fraction : float
        Share (fraction of the surface dose, 0 to 1) in the low-dose tail, target up to
        the reference volume; the model caps the share at 0.9.
    tail_volume_power : float
        Growth (>= 0) of that share with the target's volume, as for the penumbra.
    tail_mm : float
        Decay length (mm, > 0) of the tail.
    tail_z_mm : float
        Decay length (mm, > 0) of the tail beyond the PTV's superior-inferior extent.
    tail_z_floor : float
        Fraction of the tail (0 to 1) left beyond that extent, however far.

    Raises
    ------
    InvalidInputError
        A value out of its range.
    """

    penumbra_mm: float
    penumbra_volume_power: float
    tail_fraction: float
    tail_volume_power: float
    tail_mm: float
    tail_z_mm: float
    tail_z_floor: float

    def __post_init__(self) -> None:
        for name in ("penumbra_mm", "tail_mm", "tail_z_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidInputError(f"fall-off {name} must be a length > 0 mm, got {value!r}")
        for name in ("penumbra_volume_power", "tail_volume_power"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"fall-off {name} must be a number >= 0, got {value!r}")
        for name in ("tail_fraction", "tail_z_floor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise InvalidInputError(f"fall-off {name} must be in [0, 1), got {value!r}")


#: ``[fall_off]`` keys of the calibration file, in :class:`FallOff`'s order.
FALL_OFF_KEYS: tuple[str, ...] = tuple(f.name for f in fields(FallOff))


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
    hot_spot_depth_mm : float or None
        Depth (mm) over which the hot-spot texture fades in; None: the tool default.
    hot_spot_volume_power : float
        Power of the texture spread's growth with the dose level's volume
        (:class:`rtplan.dose_estimate.DoseModelParameters`); 0: none.
    plan_sum_ceiling : float or None
        The plan-sum ceiling of options of several courses
        (:class:`rtplan.dose_estimate.DoseModelParameters`); None: the tool default.
    fall_off : FallOff or None
        The IMRT dose's fall-off outside the PTV, fitted on the reference plans' dose by
        distance; None: the published-calibrated tool defaults stay.
    """

    sparing: tuple[OrganSparing, ...]
    hot_spot_spread: float
    uncertainties: tuple[MetricUncertainty, ...]
    source: str
    surface: float | None = None
    plateau: float | None = None
    hot_spot_depth_mm: float | None = None
    plan_sum_ceiling: float | None = None
    hot_spot_volume_power: float = 0.0
    fall_off: FallOff | None = None

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


def _fall_off(table: object, where: str) -> FallOff | None:
    """The ``[fall_off]`` table as a :class:`FallOff` (every key, no other), or None."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise InvalidInputError(f"{where} must be a table, got {table!r}")
    unknown = sorted(set(table) - set(FALL_OFF_KEYS))
    if unknown:
        raise InvalidInputError(f"{where}: unknown keys {unknown}; expected {list(FALL_OFF_KEYS)}")
    values = [_float(table, key, where) for key in FALL_OFF_KEYS]
    try:
        return FallOff(*values)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


#: Keys of a ``[sparing.<organ>]`` table that may be left out, with their defaults (the
#: numbers of :class:`OrganSparing` that have one).
_OPTIONAL_SPARING_KEYS: dict[str, float] = {
    key: getattr(OrganSparing("defaults", 0.0, 1.0), key)
    for key in ("interface_yield", "hold_level", "hold_length_mm")
}


def _organ_sparing(organ: str, values: object, where: str, source: str) -> OrganSparing:
    """One ``[sparing.<organ>]`` table as an :class:`OrganSparing` (unknown keys refused)."""
    if not isinstance(values, dict):
        raise InvalidInputError(f"{where} must be a table, got {values!r}")
    known = {"strength", "length_mm", *_OPTIONAL_SPARING_KEYS}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(f"{where}: unknown keys {unknown}; expected {sorted(known)}")
    optional = {
        key: _float(values, key, where) if key in values else default
        for key, default in _OPTIONAL_SPARING_KEYS.items()
    }
    try:
        return OrganSparing(
            organ,
            _float(values, "strength", where),
            _float(values, "length_mm", where),
            source,
            **optional,
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


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
        _organ_sparing(str(organ), values, f"{where} [sparing.{organ}]", source)
        for organ, values in dict(data.get("sparing", {})).items()
    )
    hot = dict(data.get("hot_spot", {}))
    spread = _float(hot, "spread", f"{where} [hot_spot]") if hot else 0.0
    depth = _float(hot, "depth_mm", f"{where} [hot_spot]") if "depth_mm" in hot else None
    power = _float(hot, "volume_power", f"{where} [hot_spot]") if "volume_power" in hot else 0.0
    profile = dict(data.get("profile", {}))
    surface = _float(profile, "surface", f"{where} [profile]") if profile else None
    plateau = _float(profile, "plateau", f"{where} [profile]") if profile else None
    ceiling = (
        _float(profile, "plan_sum_ceiling", f"{where} [profile]")
        if "plan_sum_ceiling" in profile
        else None
    )
    fall_off = _fall_off(data.get("fall_off"), f"{where} [fall_off]")
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
    return ModelCalibration(
        sparing,
        spread,
        uncertainties,
        source,
        surface,
        plateau,
        depth,
        ceiling,
        power,
        fall_off=fall_off,
    )


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


@dataclass(frozen=True, eq=False)
class SparedRegion:
    """Where one organ's sparing applies on the dose grid, and with what weight.

    Attributes
    ----------
    index : ndarray of int64, shape (N,)
        Raveled dose-grid indices of the voxels with a weight above 0.
    weight : ndarray of float32, shape (N,)
        In (0, 1]: about 1 a blend's width inside the organ, 0.5 at its surface, falling
        to 0 outside it (:func:`spared_region`).
    """

    index: IndexArray
    weight: Float32Array


def spared_region(
    flat_index: IndexArray, occupancy: Float32Array, grid: ImageGrid, blend_mm: float
) -> SparedRegion:
    """The voxels an organ's sparing weighs, blended across the organ's surface.

    An optimised dose has no step at an organ's surface: it bends over a few mm. The
    weight is the organ's occupancy on the dose grid smoothed by a Gaussian of standard
    deviation ``blend_mm / sqrt(2 pi)``: across a flat surface it rises from 0 to 1 as
    ``Phi(d / sigma)`` (``d`` the signed distance, mm, > 0 inside), 0.5 at the surface,
    with the slope of a linear ramp ``blend_mm`` wide. Separable, so it costs a few
    passes over the organ's box. ``blend_mm = 0`` weighs the voxels at least half inside
    the organ by 1 and no other.

    Parameters
    ----------
    flat_index : ndarray of int64
        Raveled dose-grid indices of the voxels the organ occupies (in part).
    occupancy : ndarray of float32
        Occupied fraction of each of those voxels.
    grid : ImageGrid
        The dose grid.
    blend_mm : float
        Width (mm, >= 0) of the blend, as the linear ramp of the same slope.
    """
    flat_index = np.asarray(flat_index)
    occupancy = np.asarray(occupancy, dtype=np.float32)
    if blend_mm <= 0 or flat_index.size == 0:
        inside_index = flat_index[occupancy >= 0.5]
        return SparedRegion(inside_index, np.ones(inside_index.size, np.float32))
    spacing = np.asarray(grid.spacing_mm, dtype=np.float64)
    sigma_mm = blend_mm / math.sqrt(2.0 * math.pi)
    coords = np.unravel_index(flat_index, grid.shape)
    pad = np.ceil(_BLEND_TRUNCATE * sigma_mm / spacing).astype(int) + 1
    bk, bj, bi = (slice(int(c.min()), int(c.max()) + 1) for c in coords)
    grown = grown_box((bk, bj, bi), pad, grid.shape)
    lo = [b.start for b in grown]
    shape = tuple(b.stop - b.start for b in grown)
    box = np.zeros(shape, np.float32)
    box[tuple(c - low for c, low in zip(coords, lo, strict=True))] = occupancy
    weight = ndimage.gaussian_filter(box, sigma_mm / spacing, truncate=_BLEND_TRUNCATE)
    np.clip(weight, 0.0, 1.0, out=weight)
    local = np.flatnonzero(weight > _MIN_WEIGHT)
    k, j, i = np.unravel_index(local, shape)
    index = np.ravel_multi_index((k + lo[0], j + lo[1], i + lo[2]), grid.shape)
    return SparedRegion(index.astype(np.int64), weight.reshape(-1)[local])


#: The blend's Gaussian is cut at this many standard deviations, and weights below
#: _MIN_WEIGHT are dropped (the sparing they would bring is below 0.1 % of the dose).
_BLEND_TRUNCATE = 3.0
_MIN_WEIGHT = 1e-3


def apply_organ_sparing(
    relative: Float32Array,
    signed_mm: Float32Array,
    organs: Mapping[str, SparedRegion],
    sparing: Sequence[OrganSparing],
) -> None:
    """Lower ``relative`` (in place) in the spared organs, by distance to the PTV.

    A voxel's factor is ``1 - w s (1 - exp(-r / L))`` with ``w`` the organ's weight
    there (:class:`SparedRegion`); where two organs' regions meet, the lower factor holds
    (a voxel is spared once).

    Parameters
    ----------
    relative : ndarray of float32
        One PTV's relative dose profile on the dose grid (modified in place).
    signed_mm : ndarray of float32
        Signed distance (mm) to that PTV's surface, > 0 outside.
    organs : mapping of str to SparedRegion
        Organ name -> the voxels its sparing weighs (:func:`spared_region`).
    sparing : sequence of OrganSparing
        Organs without an entry in ``organs`` are skipped.
    """
    flat_rel = relative.reshape(-1)
    flat_r = signed_mm.reshape(-1)
    parts = []
    for sp in sparing:
        region = organs.get(sp.organ)
        if region is None or region.index.size == 0:
            continue
        reduction = 1.0 - sparing_factor(flat_r[region.index], sp.strength, sp.length_mm)
        parts.append((region.index, (1.0 - region.weight * reduction).astype(np.float32)))
    _multiply_by_lowest(flat_rel, parts)


def apply_organ_hold(
    relative: Float32Array,
    signed_mm: Float32Array,
    organs: Mapping[str, SparedRegion],
    sparing: Sequence[OrganSparing],
) -> None:
    """Hold ``relative`` (in place) down to a cap in the held organs, by distance to the PTV.

    Outside the PTV (``r > 0``), in the region of an organ with ``hold_level`` ``h > 0``,
    a profile value ``d`` above the cap ``c = h + (1 - h) exp(-r / L_h)`` (near 1 at the
    PTV surface, ``h`` far away) becomes ``d - w (d - c)``, ``w`` the organ's weight there
    (:class:`SparedRegion`: 1 inside, 0.5 at its surface, fading out over the blend as
    the sparing does). At a fixed weight the held dose falls with ``r`` wherever the
    profile does (both ``d`` and ``c`` do). Where two organs' regions meet, the lower
    factor holds; voxels inside the PTV are never changed.

    Parameters
    ----------
    relative : ndarray of float32
        One PTV's relative dose profile on the dose grid (modified in place).
    signed_mm : ndarray of float32
        Signed distance (mm) to that PTV's surface, > 0 outside.
    organs : mapping of str to SparedRegion
        Organ name -> its region (:func:`spared_region`).
    sparing : sequence of OrganSparing
        Organs without a hold or without an entry in ``organs`` are skipped.

    Examples
    --------
    >>> from rtplan.sparing import OrganSparing, SparedRegion
    >>> rel = np.array([1.03, 0.9, 0.7, 0.3], np.float32)
    >>> r = np.array([-1.0, 1.0, 20.0, 20.0], np.float32)
    >>> region = SparedRegion(np.arange(4), np.ones(4, np.float32))  # fully inside
    >>> held = OrganSparing("Femur_Head_L", 0.0, 1.0, hold_level=0.5, hold_length_mm=2.0)
    >>> apply_organ_hold(rel, r, {"Femur_Head_L": region}, [held])
    >>> [round(float(v), 3) for v in rel]
    [1.03, 0.803, 0.5, 0.3]
    """
    flat_rel = relative.reshape(-1)
    flat_r = signed_mm.reshape(-1)
    parts = []
    for sp in sparing:
        region = organs.get(sp.organ)
        if sp.hold_level <= 0 or region is None or region.index.size == 0:
            continue
        r = flat_r[region.index]
        value = flat_rel[region.index]
        # h + (1 - h) exp(-r / L_h) is the sparing factor of strength 1 - h
        cap = sparing_factor(r, 1.0 - sp.hold_level, sp.hold_length_mm)
        over = (r > 0) & (value > cap)
        factor = np.ones(region.index.size, np.float32)
        # d - w (d - c) as a factor of d (d > c >= h > 0 where it applies)
        factor[over] = 1.0 - region.weight[over] * (1.0 - cap[over] / value[over])
        parts.append((region.index, factor))
    _multiply_by_lowest(flat_rel, parts)


def _multiply_by_lowest(
    flat: Float32Array, parts: Sequence[tuple[IndexArray, Float32Array]]
) -> None:
    """Multiply ``flat`` (in place) by the lowest of the organs' factors at each voxel.

    ``parts`` holds one (raveled indices, factors) pair per organ; a voxel no part
    names keeps its value (a voxel in two organs' regions is lowered once).
    """
    if not parts:
        return
    if len(parts) == 1:
        index, factor = parts[0]
        flat[index] *= factor
        return
    # the lowest factor per voxel, on a grid of ones (cheaper than sorting the indices)
    lowest = np.ones(flat.size, np.float32)
    for index, factor in parts:
        lowest[index] = np.minimum(lowest[index], factor)
    flat *= lowest


#: No organ takes more than this fraction of a target's dose at the interface, however
#: large the course (tool default; the fitted yields reach 0.18 at a 1,200 cc level).
MAX_INTERFACE_YIELD = 0.3


def interface_yield(per_1000cc: float, level_volume_cc: float, reference_volume_cc: float) -> float:
    """Fraction of a target's dose an organ takes at the PTV surface.

    ``per_1000cc`` times the volume (in 1,000 cc) of the target's level beyond
    ``reference_volume_cc``, at most :data:`MAX_INTERFACE_YIELD`.

    Examples
    --------
    >>> interface_yield(0.05, 250.0, 300.0), round(interface_yield(0.05, 1300.0, 300.0), 3)
    (0.0, 0.05)
    """
    excess_1000cc = max(0.0, level_volume_cc - reference_volume_cc) / 1000.0
    return min(MAX_INTERFACE_YIELD, per_1000cc * excess_1000cc)


def apply_interface_yield(
    relative: Float32Array,
    signed_mm: Float32Array,
    organs: Mapping[str, SparedRegion],
    yields: Mapping[str, float],
    band_mm: float,
) -> None:
    """Lower ``relative`` (in place) where the PTV's surface meets the organs.

    A voxel's factor is ``1 - w y exp(-|r| / band_mm)``, ``w`` the organ's weight there
    (:class:`SparedRegion`), ``y`` the organ's yield for this target
    (:func:`interface_yield`), ``r`` the signed distance (mm) to the PTV surface. Where
    two organs' regions meet, the lower factor holds.

    Parameters
    ----------
    relative : ndarray of float32
        One PTV's relative dose profile on the dose grid (modified in place).
    signed_mm : ndarray of float32
        Signed distance (mm) to that PTV's surface, > 0 outside.
    organs : mapping of str to SparedRegion
        Organ name -> its region (:func:`spared_region`).
    yields : mapping of str to float
        Organ name -> yield in [0, 1); organs with 0 or without a region are skipped.
    band_mm : float
        Decay length (mm, > 0) of the yield away from the PTV surface, both sides.
    """
    flat_r = signed_mm.reshape(-1)
    parts = []
    for organ, y in yields.items():
        region = organs.get(organ)
        if y <= 0 or region is None or region.index.size == 0:
            continue
        band = np.exp(np.abs(flat_r[region.index]) * np.float32(-1.0 / band_mm))
        parts.append(
            (region.index, (1.0 - np.float32(y) * region.weight * band).astype(np.float32))
        )
    _multiply_by_lowest(relative.reshape(-1), parts)


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
