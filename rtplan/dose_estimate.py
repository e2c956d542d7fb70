"""Fast analytic dose estimate of field options, and BED / EQD2 radiobiology.

This is an approximation for **comparing options**, never a dose calculation for
treatment. The model, its equations, its parameters and their sources are written down
in ``docs/dose_model.md``; every default parameter of :class:`DoseModelParameters` names
its source or says "tool default".

Model in one paragraph (see the docs for the equations). For intensity-modulated courses
(``"imrt"``, IMRT/VMAT) every PTV gets a dose profile that depends on the signed distance
``r`` to its surface: a plateau slightly above the prescription inside, the surface at a
set fraction of it, and outside a fall-off made of a penumbra exponential and a low-dose
tail (its share growing with the PTV's size, fading beyond the PTV's superior-inferior
extent as for coplanar arcs). Several dose levels of a course are combined with a
voxel-wise maximum, so a lower level never lowers a higher one and the gradient between
levels is that of the higher level's fall-off. ``"sbrt"`` courses use the same form with a
hot centre and a fall-off length solved per PTV so that its R50% sits at a set fraction of
the RTOG 0813/0915 limit for its volume. ``"3dcrt"`` courses are a four-field box: parallel
opposed AP/PA and lateral beams shaped to the PTV's projection (one MLC opening per leaf
row) plus a block margin, with exponential depth attenuation in the body and a Gaussian
field-edge penumbra. Courses add physically; :meth:`OptionDose.eqd2_gy` sums them voxel by
voxel in EQD2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.special import ndtr

from rtplan._memo import IdentityMemo
from rtplan._typing import BoolMask, FloatArray, Shape3, Vec3
from rtplan._validation import bounding_box
from rtplan.dvh import Float32Array, occupancy_on_grid, structure_on_dose_grid
from rtplan.errors import GeometryError, GridMismatchError, InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.level_zones import level_zones
from rtplan.plan import Course, FieldOption, target_levels
from rtplan.sparing import (
    CALIBRATION,
    DEFAULT_SPARING,
    FALL_OFF_KEYS,
    FallOff,
    OrganSparing,
    SparedRegion,
    apply_hot_spot_spread,
    apply_interface_yield,
    apply_organ_hold,
    apply_organ_sparing,
    interface_yield,
    spared_region,
)
from rtplan.structures import Structure, StructureSet

__all__ = [
    "ALPHA_BETA_GY",
    "MAX_TAIL_SHARE",
    "RTOG0813_R50_TABLE",
    "TOOL_DEFAULT_FALL_OFF",
    "TOOL_DEFAULT_TAIL_REFERENCE_RADIUS_MM",
    "CourseDose",
    "DoseModelParameters",
    "OptionDose",
    "alpha_beta_gy_for",
    "bed_gy",
    "eqd2_gy",
    "estimate_course_dose",
    "estimate_option_dose",
    "fall_off_fields",
    "imrt_fall_off",
    "make_dose_grid",
    "physical_dose_gy",
    "rtog0813_r50_limit",
    "spared_organ_names",
]

# ---------------------------------------------------------------------------- radiobiology
#: alpha/beta in Gy by TG-263 structure name or role (CLINICAL.md section 7).
#: Prostate cancer 1.5 (three overviews give 1.4-1.7, PMID 23482774 [V]); late rectum 3
#: [V, conventional]; bladder 3 (3-5 quoted [U]; the lower value is the conservative one
#: for late effects, tool default); other late-responding organs 3 (tool default); acute
#: tumour 10 [U, convention]; spinal cord 2 [U, convention].
ALPHA_BETA_GY: dict[str, float] = {
    "prostate": 1.5,
    "ptv": 1.5,
    "ctv": 1.5,
    "gtv": 1.5,
    "Rectum": 3.0,
    "Bladder": 3.0,
    "late": 3.0,
    "acute": 10.0,
    "SpinalCord": 2.0,
}


def alpha_beta_gy_for(name: str, role: str = "organ") -> float:
    """alpha/beta (Gy) to use for a structure: targets 1.5, organs 3 (see ALPHA_BETA_GY).

    Examples
    --------
    >>> alpha_beta_gy_for("Rectum"), alpha_beta_gy_for("PTV_6600", "ptv")
    (3.0, 1.5)
    """
    if name in ALPHA_BETA_GY:
        return ALPHA_BETA_GY[name]
    if role in ("ptv", "ctv", "gtv"):
        return ALPHA_BETA_GY[role]
    return ALPHA_BETA_GY["late"]


def _check_radiobiology(dose: FloatArray, fractions: float, alpha_beta_gy: float) -> None:
    if not (isinstance(fractions, (int, np.integer)) or float(fractions).is_integer()):
        raise InvalidInputError(f"fractions must be a positive integer, got {fractions!r}")
    if fractions < 1:
        raise InvalidInputError(f"fractions must be a positive integer, got {fractions!r}")
    if not (math.isfinite(alpha_beta_gy) and alpha_beta_gy > 0):
        raise InvalidInputError(
            f"alpha_beta_gy must be a positive number of Gy, got {alpha_beta_gy!r}"
        )
    if not np.all(np.isfinite(dose)):
        raise InvalidInputError("dose_gy has NaN or infinite values")
    if np.any(dose < 0):
        raise InvalidInputError("dose_gy must not be negative")


def bed_gy(dose_gy: npt.ArrayLike, fractions: int, alpha_beta_gy: float) -> FloatArray | float:
    """Biologically effective dose, ``BED = D * (1 + d / (alpha/beta))`` with ``d = D / n``.

    Parameters
    ----------
    dose_gy : float or array_like
        Total physical dose in Gy (>= 0), voxel-wise if an array.
    fractions : int
        Number of equal fractions the dose was given in (>= 1).
    alpha_beta_gy : float
        alpha/beta in Gy (> 0).

    Returns
    -------
    float or ndarray
        BED in Gy.

    Examples
    --------
    >>> round(float(bed_gy(70.0, 35, 3.0)), 3), float(bed_gy(0.0, 5, 3.0))
    (116.667, 0.0)
    """
    d = np.asarray(dose_gy, dtype=np.float64)
    _check_radiobiology(d, fractions, alpha_beta_gy)
    out = d * (1.0 + d / (fractions * alpha_beta_gy))
    return float(out) if out.ndim == 0 else out


def eqd2_gy(dose_gy: npt.ArrayLike, fractions: int, alpha_beta_gy: float) -> FloatArray | float:
    """Equivalent dose in 2 Gy fractions, ``EQD2 = D * (d + a/b) / (2 + a/b)``, ``d = D / n``.

    Parameters
    ----------
    dose_gy : float or array_like
        Total physical dose in Gy (>= 0), voxel-wise if an array.
    fractions : int
        Number of fractions (>= 1).
    alpha_beta_gy : float
        alpha/beta in Gy (> 0).

    Returns
    -------
    float or ndarray
        EQD2 in Gy.

    Examples
    --------
    >>> round(float(eqd2_gy(62.5, 25, 1.5)), 3), float(eqd2_gy(70.0, 35, 3.0))
    (71.429, 70.0)
    """
    d = np.asarray(dose_gy, dtype=np.float64)
    _check_radiobiology(d, fractions, alpha_beta_gy)
    out = d * (d / fractions + alpha_beta_gy) / (2.0 + alpha_beta_gy)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------- RTOG table
#: RTOG 0813 / 0915 Table 1 (CLINICAL.md 11c, [V-3p]): PTV volume (cc), R50% limit with no
#: deviation, R50% limit for a minor deviation, D2cm limits (% Rx, none / minor).
RTOG0813_R50_TABLE: tuple[tuple[float, float, float, float, float], ...] = (
    (1.8, 5.9, 7.5, 50.0, 57.0),
    (3.8, 5.5, 6.5, 50.0, 57.0),
    (7.4, 5.1, 6.0, 50.0, 58.0),
    (13.2, 4.7, 5.8, 50.0, 58.0),
    (22.0, 4.5, 5.5, 54.0, 63.0),
    (34.0, 4.3, 5.3, 58.0, 68.0),
    (50.0, 4.0, 5.0, 62.0, 77.0),
    (70.0, 3.5, 4.8, 66.0, 86.0),
    (95.0, 3.3, 4.4, 70.0, 89.0),
    (126.0, 3.1, 4.0, 73.0, 91.0),
    (163.0, 2.9, 3.7, 77.0, 94.0),
)


def rtog0813_r50_limit(ptv_volume_cc: float, *, deviation: str = "none") -> float:
    """R50% limit of RTOG 0813/0915 Table 1 for a PTV volume (linear interpolation).

    Volumes outside 1.8-163 cc take the nearest row (the table gives nothing beyond).

    Parameters
    ----------
    ptv_volume_cc : float
        PTV volume in cc.
    deviation : {"none", "minor"}
        Which column.

    Examples
    --------
    >>> rtog0813_r50_limit(13.2), round(rtog0813_r50_limit(10.3), 2)
    (4.7, 4.9)
    """
    col = {"none": 1, "minor": 2}.get(deviation)
    if col is None:
        raise InvalidInputError(f"deviation must be 'none' or 'minor', got {deviation!r}")
    vols = [row[0] for row in RTOG0813_R50_TABLE]
    vals = [row[col] for row in RTOG0813_R50_TABLE]
    return float(np.interp(ptv_volume_cc, vols, vals))


# ---------------------------------------------------------------------------- parameters
#: The IMRT fall-off outside the PTV without a calibration file (tool defaults, see
#: :class:`DoseModelParameters`): R50% of a 100 cc PTV about 5, inside the published
#: 4.30-8.37 (CLINICAL.md 11b).
TOOL_DEFAULT_FALL_OFF = FallOff(
    penumbra_mm=8.0,
    penumbra_volume_power=0.0,
    tail_fraction=0.7,
    tail_volume_power=0.0,
    tail_mm=70.0,
    tail_z_mm=15.0,
    tail_z_floor=0.0,
)
#: Equivalent-sphere radius (mm) below which the tool defaults shrink the tail share
#: (``imrt_tail_reference_radius_mm``); tool default.
TOOL_DEFAULT_TAIL_REFERENCE_RADIUS_MM = 25.0
#: The fall-off the defaults use: fitted when the calibration file has one.
_FALL_OFF = CALIBRATION.fall_off or TOOL_DEFAULT_FALL_OFF


def fall_off_fields(fall: FallOff) -> dict[str, float]:
    """The :class:`DoseModelParameters` fields that set the IMRT fall-off to ``fall``.

    ``imrt_`` + each field of ``fall``, and ``imrt_tail_reference_radius_mm``: the
    small-target radius term belongs to the tool defaults
    (:data:`TOOL_DEFAULT_TAIL_REFERENCE_RADIUS_MM`); a fitted fall-off's volume powers
    replace it (0).

    Examples
    --------
    >>> fall_off_fields(TOOL_DEFAULT_FALL_OFF)["imrt_tail_reference_radius_mm"]
    25.0
    """
    out = {f"imrt_{key}": float(getattr(fall, key)) for key in FALL_OFF_KEYS}
    fitted = fall != TOOL_DEFAULT_FALL_OFF
    out["imrt_tail_reference_radius_mm"] = 0.0 if fitted else TOOL_DEFAULT_TAIL_REFERENCE_RADIUS_MM
    return out


@dataclass(frozen=True)
class DoseModelParameters:
    """Parameters of the analytic dose model (see ``docs/dose_model.md``).

    Doses are fractions of the target's prescription; distances in mm. Defaults were
    calibrated against CLINICAL.md section 11 (the calibration table is in the docs and
    ``tests/test_dose_estimate.py`` keeps the model inside it).

    Attributes
    ----------
    imrt_plateau : float
        Dose deep inside an IMRT/VMAT PTV. 1.02: PB VMAT median PTV dose 71.2 Gy for
        ~70 Gy (CLINICAL.md 11d, planning-study abstract [V]); replaced by the value
        fitted on the reference plans when ``rtplan/model_calibration.toml`` has one.
    imrt_surface : float
        Dose at the PTV surface. 0.96: the 95 % isodose hugs the PTV (prostate VMAT
        objective CI95 <= 1.2, PMID 19268554 [V]; PB V95% 99 % [V]); tool default,
        replaced by the fitted value when ``rtplan/model_calibration.toml`` has one.
    imrt_inner_mm : float
        Build-up length inside the PTV from the surface dose to the plateau. 1.5 mm,
        tool default chosen so that D95 ~ 0.97 Rx (published PB VMAT D95 68.6/70 = 0.98).
    imrt_penumbra_mm : float
        Length of the steep exponential outside the PTV, for a target up to
        ``imrt_reference_volume_cc``. Fitted on the reference plans' dose by distance to
        the PTV (``rtplan/model_calibration.toml``, docs/dose_model.md 4.7); without a
        calibration file 8 mm, tool default (multi-beam fall-off, slower than a single
        6 MV edge's ~16 %/mm, CLINICAL.md 11b).
    imrt_penumbra_volume_power : float
        The penumbra length of a target of volume ``V`` is ``imrt_penumbra_mm`` times
        ``max(1, V / imrt_reference_volume_cc) ** power``: an optimiser lets the dose round
        a large PTV spread (in the reference plans the mean dose 10-15 mm outside the PTV
        was 52 % of Rx for a 250 cc prostate bed, 64 % for a 1,200 cc pelvis); below the
        reference volume the length is held (a design choice: the reference PTVs below it,
        188-300 cc, span too little to say how it would steepen, and a power law would
        give a 10 cc node a penumbra of about 1 mm). Fitted; 0 without a calibration file.
    imrt_tail_fraction : float
        Share of the surface dose carried by the low-dose tail, for a target up to
        ``imrt_reference_volume_cc`` (at most :data:`MAX_TAIL_SHARE`, 0.9, whatever
        the volume). Fitted (see ``imrt_penumbra_mm``); without a
        calibration file 0.7, tool default calibrated with ``imrt_tail_mm`` and
        ``imrt_penumbra_mm`` so that R50% of a 100 cc PTV lies between the published
        CyberKnife Iris 4.30 and linac IMRT 8.37 values (CLINICAL.md 11b [V]).
    imrt_tail_volume_power : float
        The tail share of a target of volume ``V`` is ``imrt_tail_fraction`` times
        ``max(1, V / imrt_reference_volume_cc) ** power``, at most :data:`MAX_TAIL_SHARE`: the
        low-dose bath grows with the beams' cross-section. Fitted; 0 without a calibration
        file.
    imrt_tail_mm : float
        Decay length of the tail. Fitted; 70 mm, tool default, without a calibration file.
    imrt_tail_reference_radius_mm : float
        Without a calibration file the tail share is also scaled by
        ``min(1, sqrt(r_eq / this))``, ``r_eq`` the PTV's equivalent-sphere radius, so a
        small target gets a smaller bath: 25 mm (a 65 cc sphere), tool default. 0 turns
        this off, as the calibration does (the fitted volume power replaces it).
    imrt_tail_z_mm : float
        Beyond the superior-inferior extent of the PTV (the slices it occupies, and half a
        slice beyond) the tail is multiplied by ``f + (1 - f) exp(-dz / this)``, ``dz``
        (mm) the distance beyond that extent, ``f`` = ``imrt_tail_z_floor``:
        coplanar arcs spread low dose within the treated slab, little above or below it.
        Fitted; 15 mm, tool default, without a calibration file.
    imrt_tail_z_floor : float
        The part of the tail that scatter carries beyond the slab, whatever ``dz`` (0 to
        1). Fitted; 0 without a calibration file.
    sbrt_plateau : float
        Dose at the centre of an SBRT PTV. 1.25 (prescription to the ~80 % isodose), tool
        default, within the RTOG limit Dmax/Rx <= 2.0 (Shaw 1993, [V-3p]).
    sbrt_surface : float
        Dose at the SBRT PTV surface. 1.0, tool default: the prescription isodose is
        the PTV surface (RTOG 0813: R100% between 1.0 and 1.2).
    sbrt_inner_mm : float
        Build-up length inside an SBRT PTV. 5 mm, tool default.
    sbrt_tail_fraction, sbrt_tail_mm : float
        Low-dose tail of SBRT. 0.15 and 30 mm, tool defaults (keep D2cm inside the
        RTOG 0813 limits, CLINICAL.md 11c).
    sbrt_r50_fraction_of_limit : float
        The penumbra length of each SBRT PTV is solved so that its R50% equals this
        fraction of the RTOG 0813/0915 "no deviation" limit for its volume. 0.9, tool
        default (a good plan sits a little under the limit).
    crt_block_margin_mm : float
        Aperture margin around the PTV projection for 3D-CRT. 7 mm, tool default.
    crt_penumbra_sigma_mm : float
        Gaussian sigma of a field edge. 2.26 mm: a 3.8 mm 80-20 % penumbra at 10 cm depth
        (6 MV MLC, J Appl Clin Med Phys 2011;12(3):142 [V]); 80-20 % = 1.683 sigma.
    crt_attenuation_per_mm : float
        Effective linear attenuation of depth dose beyond d_max. 0.0045 /mm, tool default
        (a ~10 MV beam; not in CLINICAL.md).
    crt_scatter_fraction, crt_scatter_mm : float
        Out-of-field dose next to a field edge (fraction of the beam dose and decay
        length). 0.03 and 20 mm, tool defaults.
    crt_beams : tuple of str
        Beams of the box, from ``"AP"``, ``"PA"``, ``"RL"``, ``"LR"`` (equal weights).
    fine_reach_mm : float
        Distances to a PTV are computed exactly (EDT on the dose grid) within this reach
        around its bounding box, and on a coarse grid beyond. 40 mm, tool default.
    coarse_voxel_mm : float
        Voxel size of the coarse grid used for far distances. 7.5 mm, tool default.
    plan_sum_ceiling : float
        Planned on the sum: in an option of several courses, the composite dose of a voxel
        (EQD2 at the targets' alpha/beta) does not exceed this factor times the highest
        intended level it should get (see :func:`estimate_option_dose`); where the
        courses as modelled one by one would stack above it, the later modulated courses
        give less there, as a planner's cropped later-phase PTV and plan-sum optimisation
        do. Fitted on optimised reference plans (``rtplan/model_calibration.toml``) no
        higher than the +7 % hot-spot limit of a PTV (ICRU 50: 95-107 %, @icru50_1993
        [V-3p]; "never above 107 %", @pmc8744000_constraints [V]), which at 1.8 Gy per
        fraction and alpha/beta 1.5 Gy is 1.11 in EQD2; 1.05 (tool default) without a
        calibration file.
    imrt_sparing : tuple of OrganSparing
        Organs an optimised IMRT/VMAT plan spares, with strength and length
        (:mod:`rtplan.sparing`); applied to IMRT courses when the organs are passed to
        :func:`estimate_option_dose`. Default :data:`rtplan.sparing.DEFAULT_SPARING`,
        fitted on pyRadPlan reference plans (docs/dose_model.md 4.7).
    imrt_sparing_blend_mm : float
        Width (mm) over which an organ's sparing is blended in across its surface (a
        Gaussian with the slope of a linear ramp this wide,
        :func:`rtplan.sparing.spared_region`), so that the estimate bends there as an
        optimised dose does instead of stepping; 0 spares exactly the voxels at least half
        inside the organ. 5 mm (two dose voxels), tool default; the sparing is fitted with
        it.
    imrt_hot_spot_spread : float
        Standard deviation (fraction of Rx) of the zero-mean hot-spot texture deep inside an
        IMRT PTV (:func:`rtplan.sparing.apply_hot_spot_spread`); fitted with the sparing
        (``rtplan/model_calibration.toml``).
    imrt_hot_spot_depth_mm : float
        Depth (mm) over which the texture fades in from the PTV surface; fitted with the
        spread (5 mm, tool default, without a calibration file).
    imrt_hot_spot_wavelength_mm : float
        Wavelength (mm) of the texture. 20 mm, tool default.
    imrt_hot_spot_volume_power : float
        The texture's standard deviation is ``imrt_hot_spot_spread`` times
        ``(V / imrt_reference_volume_cc) ** power``, ``V`` the volume (cc) of the target's
        dose level in its course: an optimised dose is less uniform in a large PTV (in the
        reference plans D2 - D50 was 2.1 % of Rx for a 14 cc boost, 4.1 % for a 250 cc
        prostate bed, 6.0-6.6 % for a 1,200 cc pelvis). Fitted
        (``rtplan/model_calibration.toml``); 0 (no volume dependence) without a
        calibration file.
    imrt_reference_volume_cc : float
        The volume (cc) of a dose level whose texture spread is ``imrt_hot_spot_spread`` and
        whose interface with spared organs the fitted profile holds; a larger level gives
        up more dose where its PTV meets a spared organ, in proportion to its excess volume
        (:func:`rtplan.sparing.interface_yield`), and above which the fall-off outside a
        target widens (``imrt_penumbra_volume_power``, ``imrt_tail_volume_power``). 300 cc,
        tool default: the prostate-bed PTVs the profile and sparing are fitted on are
        188-330 cc.
    imrt_yield_band_mm : float
        Decay length (mm) of that yield away from the PTV surface, both sides. 2.5 mm (one
        dose voxel), tool default: in the reference plans the pelvic course's deficit
        was confined to the 2.5 mm layers either side of the surface.
    """

    imrt_plateau: float = 1.02 if CALIBRATION.plateau is None else CALIBRATION.plateau
    imrt_surface: float = 0.96 if CALIBRATION.surface is None else CALIBRATION.surface
    imrt_inner_mm: float = 1.5
    imrt_penumbra_mm: float = _FALL_OFF.penumbra_mm
    imrt_penumbra_volume_power: float = _FALL_OFF.penumbra_volume_power
    imrt_tail_fraction: float = _FALL_OFF.tail_fraction
    imrt_tail_volume_power: float = _FALL_OFF.tail_volume_power
    imrt_tail_mm: float = _FALL_OFF.tail_mm
    imrt_tail_reference_radius_mm: float = fall_off_fields(_FALL_OFF)[
        "imrt_tail_reference_radius_mm"
    ]
    imrt_tail_z_mm: float = _FALL_OFF.tail_z_mm
    imrt_tail_z_floor: float = _FALL_OFF.tail_z_floor
    sbrt_plateau: float = 1.25
    sbrt_surface: float = 1.0
    sbrt_inner_mm: float = 5.0
    sbrt_tail_fraction: float = 0.15
    sbrt_tail_mm: float = 30.0
    sbrt_r50_fraction_of_limit: float = 0.9
    crt_block_margin_mm: float = 7.0
    crt_penumbra_sigma_mm: float = 2.26
    crt_attenuation_per_mm: float = 0.0045
    crt_scatter_fraction: float = 0.03
    crt_scatter_mm: float = 20.0
    crt_beams: tuple[str, ...] = ("AP", "PA", "RL", "LR")
    fine_reach_mm: float = 40.0
    coarse_voxel_mm: float = 7.5
    plan_sum_ceiling: float = (
        1.05 if CALIBRATION.plan_sum_ceiling is None else CALIBRATION.plan_sum_ceiling
    )
    imrt_sparing: tuple[OrganSparing, ...] = DEFAULT_SPARING
    imrt_sparing_blend_mm: float = 5.0
    imrt_hot_spot_spread: float = CALIBRATION.hot_spot_spread
    imrt_hot_spot_depth_mm: float = (
        5.0 if CALIBRATION.hot_spot_depth_mm is None else CALIBRATION.hot_spot_depth_mm
    )
    imrt_hot_spot_wavelength_mm: float = 20.0
    imrt_hot_spot_volume_power: float = CALIBRATION.hot_spot_volume_power
    imrt_reference_volume_cc: float = 300.0
    imrt_yield_band_mm: float = 2.5

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "imrt_sparing":
                if not all(isinstance(o, OrganSparing) for o in v):
                    raise InvalidInputError(
                        "imrt_sparing must be a tuple of rtplan.sparing.OrganSparing"
                    )
                object.__setattr__(self, "imrt_sparing", tuple(v))
                continue
            if f.name == "crt_beams":
                bad = [b for b in v if b not in ("AP", "PA", "RL", "LR")]
                if not v or bad:
                    raise InvalidInputError(
                        f"crt_beams must be a non-empty tuple of 'AP', 'PA', 'RL', 'LR', got {v!r}"
                    )
                object.__setattr__(self, "crt_beams", tuple(v))
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise InvalidInputError(
                    f"dose model parameter {f.name} must be a finite number, got {v!r}"
                )
            zero_allowed = f.name in (
                "crt_scatter_fraction",
                "imrt_hot_spot_spread",
                "imrt_hot_spot_volume_power",
                "imrt_penumbra_volume_power",
                "imrt_tail_volume_power",
                "imrt_tail_reference_radius_mm",
                "imrt_tail_z_floor",
                "imrt_sparing_blend_mm",
                "sbrt_tail_fraction",
                "imrt_tail_fraction",
                "crt_block_margin_mm",
                "crt_attenuation_per_mm",
            )
            if not (v >= 0 if zero_allowed else v > 0):
                bound = "must not be negative" if zero_allowed else "must be positive"
                raise InvalidInputError(f"dose model parameter {f.name} {bound}, got {v!r}")
        for name in ("imrt_tail_fraction", "sbrt_tail_fraction", "imrt_tail_z_floor"):
            if getattr(self, name) >= 1:
                raise InvalidInputError(f"{name} must be below 1, got {getattr(self, name)!r}")
        if self.imrt_surface > self.imrt_plateau or self.sbrt_surface > self.sbrt_plateau:
            raise InvalidInputError("the surface dose must not exceed the plateau dose")
        if self.plan_sum_ceiling < self.imrt_plateau:
            raise InvalidInputError(
                f"plan_sum_ceiling ({self.plan_sum_ceiling!r}) must not be below imrt_plateau "
                f"({self.imrt_plateau!r}): a single course would be cut below its own plateau"
            )


# ---------------------------------------------------------------------------- dose grid
def make_dose_grid(
    reference_grid: ImageGrid,
    *,
    spacing_mm: float | Sequence[float] = 2.5,
    body: Structure | None = None,
    margin_mm: float = 0.0,
) -> ImageGrid:
    """A dose grid (standard axial orientation) covering the body or the whole CT.

    Parameters
    ----------
    reference_grid : ImageGrid
        The CT grid; its frame of reference is kept.
    spacing_mm : float or (sz, sy, sx)
        Dose voxel size in mm; default 2.5 mm cubic (tool default).
    body : Structure, optional
        External contour; the grid covers its bounding box (plus ``margin_mm``).
        Without it the grid covers the whole reference grid.
    margin_mm : float
        Extra margin around the covered box, in mm (>= 0).

    Returns
    -------
    ImageGrid
        Voxel edges start at the covered box's lower corner, so when the dose slice
        spacing equals the CT's the slices coincide.

    Examples
    --------
    >>> ct = ImageGrid(shape=(10, 100, 100), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> make_dose_grid(ct).shape
    (10, 40, 40)
    """
    if not isinstance(reference_grid, ImageGrid):
        raise TypeError(
            f"reference_grid must be an rtplan.grid.ImageGrid, got {type(reference_grid).__name__}"
        )
    if body is not None and not isinstance(body, Structure):
        raise TypeError(
            f"body must be an rtplan.structures.Structure or None, got {type(body).__name__}"
        )
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InvalidInputError(f"spacing_mm must be positive, got {spacing_mm!r}")
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise InvalidInputError(f"margin_mm must be >= 0, got {margin_mm!r}")
    if body is not None:
        if body.is_empty:
            raise GeometryError(f"body structure {body.name!r} is empty")
        bounds = body.bounds_mm
    else:
        bounds = reference_grid.bounds_mm
    lo = np.array([b[0] for b in bounds]) - margin_mm  # x, y, z
    hi = np.array([b[1] for b in bounds]) + margin_mm
    sp_xyz = sp[::-1]
    n_xyz = np.maximum(np.ceil((hi - lo) / sp_xyz - 1e-6).astype(int), 1)
    origin = lo + 0.5 * sp_xyz
    return ImageGrid(
        shape=(int(n_xyz[2]), int(n_xyz[1]), int(n_xyz[0])),
        spacing_mm=(float(sp[0]), float(sp[1]), float(sp[2])),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        frame_of_reference_uid=reference_grid.frame_of_reference_uid,
    )


# ---------------------------------------------------------------------------- geometry
def _as_dose_grid_mask(
    body: Structure | npt.ArrayLike | None, dose_grid: ImageGrid
) -> BoolMask | None:
    if body is None:
        return None
    if isinstance(body, Structure):
        return occupancy_on_grid(body, dose_grid) > 0
    arr = np.asarray(body)
    if arr.shape != dose_grid.shape:
        raise GridMismatchError(
            f"body array has shape {arr.shape} but the dose grid has shape {dose_grid.shape}"
        )
    return arr > 0


def _upsample_axis(arr: Float32Array, axis: int, factor: int, n_out: int) -> Float32Array:
    """Linear interpolation from block centres (blocks of ``factor`` voxels) to voxels."""
    n_in = arr.shape[axis]
    pos = (np.arange(n_out) + 0.5) / factor - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = (pos - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n_out
    lower: Float32Array = np.take(arr, i0, axis=axis)
    upper: Float32Array = np.take(arr, i1, axis=axis)
    return lower * (1 - t).reshape(shape) + upper * t.reshape(shape)


@dataclass(frozen=True, eq=False)
class _TargetGeometry:
    """Signed distance (mm, > 0 outside) to a PTV surface on the dose grid."""

    signed_mm: Float32Array  # full dose grid
    inside: BoolMask  # full dose grid (occupancy >= 0.5)
    volume_cc: float


def _occupied(occupancy: Float32Array) -> BoolMask:
    """Voxels at least half occupied; if none, the most occupied ones (a tiny PTV)."""
    inside = occupancy >= 0.5
    if not inside.any():
        inside = occupancy >= occupancy.max()
    return inside


def _slices(lo: npt.NDArray[np.intp], hi: npt.NDArray[np.intp]) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


#: Distance maps of the last PTVs: options of one comparison share PTVs (the pelvic PTV of
#: a whole-pelvis option with and without a boost), 0.05-0.1 s each.
_GEOMETRY_MEMO: IdentityMemo[_TargetGeometry] = IdentityMemo(6)


def _target_geometry(
    ptv: Structure, dose_grid: ImageGrid, params: DoseModelParameters
) -> _TargetGeometry:
    """Signed distance to the PTV (read-only arrays, shared between calls for one PTV)."""
    values = (dose_grid, params.fine_reach_mm, params.coarse_voxel_mm)
    found = _GEOMETRY_MEMO.get((ptv,), values)
    if found is None:
        found = _draw_target_geometry(ptv, dose_grid, params)
        found.signed_mm.flags.writeable = False
        found.inside.flags.writeable = False
        _GEOMETRY_MEMO.put((ptv,), values, found)
    return found


def _draw_target_geometry(
    ptv: Structure, dose_grid: ImageGrid, params: DoseModelParameters
) -> _TargetGeometry:
    """Signed distance to the PTV: exact in a box around it, coarse beyond, blended between."""
    if ptv.is_empty:
        raise GeometryError(f"PTV {ptv.name!r} is empty")
    occ = occupancy_on_grid(ptv, dose_grid)
    inside = _occupied(occ)  # a PTV smaller than half a dose voxel keeps its densest voxel
    shape = np.array(dose_grid.shape)
    sp = np.array(dose_grid.spacing_mm)
    h = float(sp.min())
    bb = bounding_box(inside)
    assert bb is not None
    lo = np.array([b.start for b in bb])
    hi = np.array([b.stop for b in bb])
    pad = np.ceil(params.fine_reach_mm / sp).astype(int)
    blo = np.maximum(lo - pad, 0)
    bhi = np.minimum(hi + pad, shape)
    box = _slices(blo, bhi)
    fine = _fine_signed_mm(occ[box], inside[box], lo - blo, hi - blo, sp)
    factor = max(1, round(params.coarse_voxel_mm / h))
    signed = np.empty(dose_grid.shape, np.float32)
    if bool(np.all(blo == 0) and np.all(bhi == shape)):  # the box covers the whole grid
        signed[...] = fine
    else:
        signed[...] = _coarse_distance_mm(ptv, dose_grid, factor)
        # blend the fine values into the coarse ones over the outer 10 mm of the box
        w = _blend_weights(blo, bhi, shape, sp, min(10.0, params.fine_reach_mm))
        signed[box] = w * fine + (1 - w) * signed[box]
    return _TargetGeometry(signed, inside, float(occ.sum()) * dose_grid.voxel_volume_cc)


def _fine_signed_mm(
    occ_box: Float32Array,
    ins_box: BoolMask,
    lo: npt.NDArray[np.intp],
    hi: npt.NDArray[np.intp],
    sp: FloatArray,
) -> Float32Array:
    """Exact signed distance (mm) in a box around the PTV, whose voxels ``lo:hi`` hold it.

    Outside: the distance to the nearest PTV voxel less half a voxel; inside: minus the
    depth (a distance transform over the PTV's own bounding box plus one voxel is
    enough); partly occupied voxels: ``(0.5 - occupancy) * h``.
    """
    h = float(sp.min())
    fine = ndimage.distance_transform_edt(~ins_box, sampling=sp).astype(np.float32)
    fine -= np.float32(0.5 * h)
    ibox = _slices(np.maximum(lo - 1, 0), np.minimum(hi + 1, np.array(ins_box.shape)))
    in_sub = ins_box[ibox]
    in_d = ndimage.distance_transform_edt(in_sub, sampling=sp).astype(np.float32)
    depth_part = fine[ibox]
    depth_part[in_sub] = -(in_d[in_sub] - np.float32(0.5 * h))
    partial = (occ_box > 1e-3) & (occ_box < 0.999)
    return np.where(partial, (0.5 - occ_box) * h, fine).astype(np.float32)


def _coarse_distance_mm(ptv: Structure, dose_grid: ImageGrid, factor: int) -> Float32Array:
    """Distance (mm) outside the PTV on blocks of ``factor**3`` dose voxels, interpolated.

    The coarse grid has the dose grid's corner; its distances are linearly interpolated
    back to the dose voxels.
    """
    shape = np.array(dose_grid.shape)
    sp = np.array(dose_grid.spacing_mm)
    h = float(sp.min())
    x0, y0, z0 = dose_grid.origin_mm
    half = 0.5 * (factor - 1)
    nz, ny, nx = (int(n) for n in -(-shape // factor))
    cshape: Shape3 = (nz, ny, nx)
    csz, csy, csx = (float(v) for v in sp * factor)
    cspacing: Vec3 = (csz, csy, csx)
    coarse_grid = ImageGrid(
        shape=cshape,
        spacing_mm=cspacing,
        origin_mm=(x0 + half * sp[2], y0 + half * sp[1], z0 + half * sp[0]),
        frame_of_reference_uid=dose_grid.frame_of_reference_uid,
    )
    cin = _occupied(occupancy_on_grid(ptv, coarse_grid))
    cd = ndimage.distance_transform_edt(~cin, sampling=sp * factor).astype(np.float32)
    cd = np.maximum(cd - 0.5 * h * factor, 0.0)
    for ax in range(3):
        cd = _upsample_axis(cd, ax, factor, int(shape[ax]))
    return cd


def _blend_weights(
    blo: npt.NDArray[np.intp],
    bhi: npt.NDArray[np.intp],
    shape: npt.NDArray[np.intp],
    sp: FloatArray,
    blend_mm: float,
) -> Float32Array:
    """Weight of the fine distance in the box ``blo:bhi`` (1 deep inside).

    It is 0 at the faces of the box that lie inside the grid and rises linearly to 1 at
    ``blend_mm`` from them.
    """
    kk, jj, ii = (np.arange(a, b) for a, b in zip(blo, bhi))
    edge: list[FloatArray] = []
    for idx, a, b, n, s in zip((kk, jj, ii), blo, bhi, shape, sp):
        e = np.full(idx.shape, np.inf)
        if a > 0:
            e = np.minimum(e, (idx - a) * s)
        if b < n:
            e = np.minimum(e, (b - 1 - idx) * s)
        edge.append(e)
    dist_edge = np.minimum(
        np.minimum(edge[0][:, None, None], edge[1][None, :, None]), edge[2][None, None, :]
    )
    return np.clip(dist_edge / blend_mm, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------- profiles
def _profile(
    signed_mm: Float32Array,
    *,
    plateau: float,
    surface: float,
    inner_mm: float,
    penumbra_mm: float,
    tail_fraction: float,
    tail_mm: float,
    tail_weight: FloatArray | float = 1.0,
) -> Float32Array:
    """Relative dose as a function of the signed distance to the PTV surface.

    ``tail_weight`` (broadcastable) multiplies the low-dose tail (used for the sup-inf
    confinement of coplanar arcs).
    """
    r = np.asarray(signed_mm, dtype=np.float32)
    out = np.maximum(r, np.float32(0.0))
    tail = np.exp(out * np.float32(-1.0 / tail_mm))
    tail *= np.float32(tail_fraction)
    if np.ndim(tail_weight):
        tail *= np.asarray(tail_weight, dtype=np.float32)
    else:
        tail *= np.float32(tail_weight)
    out *= np.float32(-1.0 / penumbra_mm)
    np.exp(out, out=out)
    out *= np.float32(1 - tail_fraction)
    out += tail
    out *= np.float32(surface)
    inside = r <= 0
    ri = -r[inside]
    out[inside] = plateau - (plateau - surface) * np.exp(ri / -inner_mm)
    return out


def imrt_fall_off(volume_cc: float, params: DoseModelParameters) -> tuple[float, float]:
    """Penumbra length (mm) and tail share (fraction of the surface dose) of an IMRT target.

    ``volume_cc`` is the target's volume (cc).

    See ``imrt_penumbra_mm`` ... ``imrt_tail_reference_radius_mm`` of
    :class:`DoseModelParameters`: the volume laws act above ``imrt_reference_volume_cc``
    only, and the share is at most :data:`MAX_TAIL_SHARE`.

    Examples
    --------
    >>> p = DoseModelParameters(imrt_penumbra_mm=10.0, imrt_penumbra_volume_power=0.5,
    ...     imrt_tail_fraction=0.3, imrt_tail_volume_power=0.25,
    ...     imrt_tail_reference_radius_mm=0.0, imrt_reference_volume_cc=300.0)
    >>> [round(x, 3) for x in imrt_fall_off(1200.0, p)]
    [20.0, 0.424]
    >>> [round(x, 3) for x in imrt_fall_off(30.0, p)]
    [10.0, 0.3]
    """
    # the reference plans (188-1,230 cc) show how the fall-off widens with a large PTV;
    # below the reference volume it is held (a design choice, see imrt_penumbra_volume_power)
    ratio = max(1.0, volume_cc / params.imrt_reference_volume_cc)
    penumbra_mm = params.imrt_penumbra_mm * ratio**params.imrt_penumbra_volume_power
    share = params.imrt_tail_fraction * ratio**params.imrt_tail_volume_power
    if params.imrt_tail_reference_radius_mm > 0:
        r_eq = (3.0 * volume_cc * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        share *= min(1.0, math.sqrt(r_eq / params.imrt_tail_reference_radius_mm))
    return penumbra_mm, min(share, MAX_TAIL_SHARE)


#: Largest share of the surface dose the IMRT tail may carry, whatever the target's
#: volume (tool default: the steep part of the fall-off never vanishes).
MAX_TAIL_SHARE = 0.9


def _sbrt_penumbra_mm(
    geom: _TargetGeometry, dose_grid: ImageGrid, params: DoseModelParameters
) -> float:
    """Penumbra length that puts this PTV's R50% at the chosen fraction of the RTOG limit."""
    target_r50 = params.sbrt_r50_fraction_of_limit * rtog0813_r50_limit(geom.volume_cc)
    n_ptv = int(geom.inside.sum())
    outside = geom.signed_mm[~geom.inside]
    k = round((target_r50 - 1.0) * n_ptv)
    k = min(max(k, 0), outside.size - 2)
    # distance enclosing the wanted 50 % volume; voxels share distances on a grid, so put
    # the threshold between two distinct distances, on the side closer to the wanted count
    m = min(outside.size, 2 * k + 64)
    srt = np.sort(np.partition(outside, m - 1)[:m])
    below = int(np.searchsorted(srt, srt[k], side="left"))
    upto = int(np.searchsorted(srt, srt[k], side="right"))
    if k - below < upto - k and below > 0:
        d50 = 0.5 * float(srt[below - 1] + srt[k])
    else:
        nxt = float(srt[upto]) if upto < srt.size else float(srt[k]) + 1.0
        d50 = 0.5 * (float(srt[k]) + nxt)
    d50 = max(d50, 0.5 * min(dose_grid.spacing_mm))
    a, s = params.sbrt_tail_fraction, params.sbrt_surface
    rest = 0.5 / s - a * math.exp(-d50 / params.sbrt_tail_mm)
    if rest <= 0:
        raise InvalidInputError(
            "sbrt_tail_fraction is too large for the 50 % isodose to be reached; lower it"
        )
    ratio = rest / (1 - a)
    if ratio >= 1:
        return 1e-3
    return -d50 / math.log(ratio)


def _check_course(course: Course) -> None:
    for t in course.targets:
        rx = t.prescription_gy
        if not (math.isfinite(rx) and rx > 0):
            raise InvalidInputError(
                f"prescription of target {t.name!r} in course {course.name!r} must be a "
                f"positive number of Gy, got {rx!r}"
            )


def _present_sparing(
    organs: StructureSet | None, params: DoseModelParameters
) -> list[tuple[OrganSparing, str, Structure]]:
    """Each organ of ``params.imrt_sparing`` found (not empty) in ``organs``: its name there."""
    if organs is None:
        return []
    out = []
    for sp in params.imrt_sparing:
        key = organs.resolve(sp.organ)
        if key is not None and not organs[key].is_empty:
            out.append((sp, key, organs[key]))
    return out


def spared_organ_names(
    organs: StructureSet | None, params: DoseModelParameters | None = None
) -> tuple[str, ...]:
    """The organs (names as in ``organs``) whose dose IMRT/VMAT courses spare and hold.

    Parameters
    ----------
    organs : StructureSet or None
        The anatomy's structures, as passed to :func:`estimate_course_dose`.
    params : DoseModelParameters, optional
        The model; default the calibrated one.

    Returns
    -------
    tuple of str
        The organs of ``params.imrt_sparing`` present and not empty in ``organs``, in
        the model's order; empty without ``organs`` or without sparing.
    """
    params = DoseModelParameters() if params is None else params
    return tuple(key for _, key, _ in _present_sparing(organs, params))


def _spared_regions(
    organs: StructureSet | None, params: DoseModelParameters, dose_grid: ImageGrid
) -> dict[str, SparedRegion]:
    """The region each organ of ``params.imrt_sparing`` present in ``organs`` weighs.

    The organs are resampled by :func:`rtplan.dvh.structure_on_dose_grid`, whose results
    the comparison's DVHs share; the regions are shared by the options of a comparison.
    """
    out: dict[str, SparedRegion] = {}
    for sp, _, structure in _present_sparing(organs, params):
        region = _REGION_MEMO.get((structure,), (dose_grid, params.imrt_sparing_blend_mm))
        if region is None:
            resampled = structure_on_dose_grid(structure, dose_grid)
            region = spared_region(
                resampled.flat_index, resampled.occupancy, dose_grid, params.imrt_sparing_blend_mm
            )
            region.index.flags.writeable = False
            region.weight.flags.writeable = False
            _REGION_MEMO.put((structure,), (dose_grid, params.imrt_sparing_blend_mm), region)
        out[sp.organ] = region
    return out


#: Spared regions of the last organs (read-only; the options of a comparison share them).
_REGION_MEMO: IdentityMemo[SparedRegion] = IdentityMemo(48)


def _imrt_or_sbrt_dose(
    course: Course,
    dose_grid: ImageGrid,
    params: DoseModelParameters,
    organs: Mapping[str, SparedRegion],
) -> FloatArray:
    dose = np.zeros(dose_grid.shape, np.float32)
    geoms = [_target_geometry(t.ptv, dose_grid, params) for t in course.targets]
    # the volume of each dose level of the course (its PTVs' volumes, summed)
    level_cc: dict[float, float] = {}
    for t, geom in zip(course.targets, geoms, strict=True):
        level_cc[t.prescription_gy] = level_cc.get(t.prescription_gy, 0.0) + geom.volume_cc
    for t, geom in zip(course.targets, geoms, strict=True):
        if course.technique == "sbrt":
            rel = _profile(
                geom.signed_mm,
                plateau=params.sbrt_plateau,
                surface=params.sbrt_surface,
                inner_mm=params.sbrt_inner_mm,
                penumbra_mm=_sbrt_penumbra_mm(geom, dose_grid, params),
                tail_fraction=params.sbrt_tail_fraction,
                tail_mm=params.sbrt_tail_mm,
            )
        else:
            penumbra_mm, tail_share = imrt_fall_off(geom.volume_cc, params)
            # coplanar arcs: the tail fades beyond the PTV's superior-inferior extent, which
            # ends half a slice beyond its outermost slices (as r places the surface)
            slices = np.asarray(geom.inside.any(axis=(1, 2)))
            h = dose_grid.spacing_mm[0]
            dz_mm = np.maximum(ndimage.distance_transform_edt(~slices) * h - 0.5 * h, 0.0)
            floor = params.imrt_tail_z_floor
            z_weight = (floor + (1.0 - floor) * np.exp(-dz_mm / params.imrt_tail_z_mm))[
                :, None, None
            ]
            rel = _profile(
                geom.signed_mm,
                plateau=params.imrt_plateau,
                surface=params.imrt_surface,
                inner_mm=params.imrt_inner_mm,
                penumbra_mm=penumbra_mm,
                tail_fraction=tail_share,
                tail_mm=params.imrt_tail_mm,
                tail_weight=z_weight,
            )
            level_share = level_cc[t.prescription_gy] / params.imrt_reference_volume_cc
            apply_hot_spot_spread(
                rel,
                geom.signed_mm,
                dose_grid,
                spread=params.imrt_hot_spot_spread * level_share**params.imrt_hot_spot_volume_power,
                depth_mm=params.imrt_hot_spot_depth_mm,
                wavelength_mm=params.imrt_hot_spot_wavelength_mm,
            )
            apply_organ_sparing(rel, geom.signed_mm, organs, params.imrt_sparing)
            apply_organ_hold(rel, geom.signed_mm, organs, params.imrt_sparing)
            yields = {
                sp.organ: interface_yield(
                    sp.interface_yield,
                    level_cc[t.prescription_gy],
                    params.imrt_reference_volume_cc,
                )
                for sp in params.imrt_sparing
            }
            apply_interface_yield(rel, geom.signed_mm, organs, yields, params.imrt_yield_band_mm)
        rel *= np.float32(t.prescription_gy)
        np.maximum(dose, rel, out=dose)
    return dose.astype(np.float64)


def _edge_profile_2d(proj: BoolMask, sp2: FloatArray, params: DoseModelParameters) -> FloatArray:
    """In-field fraction of a beam whose aperture is ``proj`` grown by the block margin."""
    # one MLC leaf pair per row (slice): a single opening from the first to the last
    # projected PTV column of the row, so the gap between two nodal chains is open too
    proj = (
        np.maximum.accumulate(proj, axis=1) & np.maximum.accumulate(proj[:, ::-1], axis=1)[:, ::-1]
    )
    if proj.all():
        return np.ones(proj.shape)
    out_d = ndimage.distance_transform_edt(~proj, sampling=sp2)
    in_d = ndimage.distance_transform_edt(proj, sampling=sp2)
    signed = np.where(proj, -in_d, out_d) - params.crt_block_margin_mm  # < 0 inside field
    prof = ndtr(-signed / params.crt_penumbra_sigma_mm)
    scatter = params.crt_scatter_fraction * np.exp(
        -np.clip(signed, 0, None) / params.crt_scatter_mm
    )
    return prof + np.where(signed > 0, scatter, 0.0)


def _box_dose(
    course: Course,
    dose_grid: ImageGrid,
    body: BoolMask | None,
    params: DoseModelParameters,
) -> FloatArray:
    sz, sy, sx = dose_grid.spacing_mm
    tissue = np.ones(dose_grid.shape, np.float32) if body is None else body.astype(np.float32)
    dose = np.zeros(dose_grid.shape, np.float64)
    mu = params.crt_attenuation_per_mm
    for t in course.targets:
        if t.ptv.is_empty:
            raise GeometryError(f"PTV {t.name!r} is empty")
        ptv = _occupied(occupancy_on_grid(t.ptv, dose_grid))
        total = np.zeros(dose_grid.shape, np.float64)
        for beam in params.crt_beams:
            if beam in ("AP", "PA"):  # along +y (AP enters anteriorly) or -y
                axis, sp2 = 1, np.array([sz, sx])
                field = _edge_profile_2d(np.asarray(ptv.any(axis=1)), sp2, params)[:, None, :]
            else:  # RL enters on the patient's right (-x) and travels +x; LR the reverse
                axis, sp2 = 2, np.array([sz, sy])
                field = _edge_profile_2d(np.asarray(ptv.any(axis=2)), sp2, params)[:, :, None]
            step = sy if axis == 1 else sx
            if beam in ("AP", "RL"):
                depth = (np.cumsum(tissue, axis=axis) - 0.5 * tissue) * step
            else:
                rev = np.flip(tissue, axis=axis)
                depth = np.flip((np.cumsum(rev, axis=axis) - 0.5 * rev) * step, axis=axis)
            total += field * np.exp(-mu * depth) * tissue
        mean_in_ptv = float(total[ptv].mean())
        if not mean_in_ptv > 0:
            raise GeometryError(f"PTV {t.name!r} lies outside the body; no beam reaches it")
        np.maximum(dose, total * (t.prescription_gy / mean_in_ptv), out=dose)
    return dose


# ---------------------------------------------------------------------------- public API
def _checked_model_inputs(
    dose_grid: ImageGrid, params: DoseModelParameters | None
) -> DoseModelParameters:
    """The model parameters (defaults for None) after checking both arguments' types."""
    if not isinstance(dose_grid, ImageGrid):
        raise TypeError(
            f"dose_grid must be an rtplan.grid.ImageGrid, got {type(dose_grid).__name__}"
        )
    if params is None:
        return DoseModelParameters()
    if not isinstance(params, DoseModelParameters):
        raise TypeError(
            f"params must be rtplan.dose_estimate.DoseModelParameters or None, "
            f"got {type(params).__name__}"
        )
    return params


def estimate_course_dose(
    course: Course,
    dose_grid: ImageGrid,
    *,
    body: Structure | npt.ArrayLike | None = None,
    params: DoseModelParameters | None = None,
    organs: StructureSet | None = None,
) -> FloatArray:
    """Estimated physical dose (Gy) of one course on the dose grid.

    Parameters
    ----------
    course : Course
        Technique ``"imrt"`` (IMRT/VMAT), ``"sbrt"`` or ``"3dcrt"``; its targets' PTVs
        are Structures on the CT grid, inside the dose grid.
    dose_grid : ImageGrid
        From :func:`make_dose_grid` (standard axial orientation).
    body : Structure or array_like, optional
        External contour (on the CT grid), or a mask / occupancy already on the dose grid.
        The dose is zero outside it; 3D-CRT depths are measured in it (without it the
        whole grid counts as tissue).
    params : DoseModelParameters, optional
        Model parameters; defaults documented in :class:`DoseModelParameters`.
    organs : StructureSet, optional
        The anatomy's structures: the organs of ``params.imrt_sparing`` found in it are
        spared by IMRT courses (:mod:`rtplan.sparing`). Without it, no organ is spared.

    Returns
    -------
    ndarray of float64, shape ``dose_grid.shape``
        Dose in Gy.

    Raises
    ------
    GeometryError
        A PTV that is empty or extends outside the dose grid; a non-axial grid.
    GridMismatchError
        Frames of reference that differ; a body array of the wrong shape.
    ValueError
        A non-positive or NaN prescription; invalid parameters.
    TypeError
        ``course``, ``dose_grid`` or ``params`` of the wrong type.
    """
    if not isinstance(course, Course):
        raise TypeError(f"course must be an rtplan.plan.Course, got {type(course).__name__}")
    params = _checked_model_inputs(dose_grid, params)
    if not dose_grid.is_standard_orientation:
        raise GeometryError("the dose grid must have the standard axial orientation")
    _check_course(course)
    body_mask = _as_dose_grid_mask(body, dose_grid)
    if course.technique == "3dcrt":
        dose = _box_dose(course, dose_grid, body_mask, params)
    else:
        spared = _spared_regions(organs, params, dose_grid)
        dose = _imrt_or_sbrt_dose(course, dose_grid, params, spared)
    if body_mask is not None:
        dose *= body_mask
    return dose


@dataclass(frozen=True, eq=False)
class CourseDose:
    """Physical dose of one course.

    Attributes
    ----------
    name, technique : str
    fractions : int
    dose_gy : ndarray of float64
        Dose on the option's dose grid, Gy.
    prescriptions_gy : dict of str to float
        PTV name -> prescription of this course.
    """

    name: str
    technique: str
    fractions: int
    dose_gy: FloatArray
    prescriptions_gy: dict[str, float]


@dataclass(frozen=True, eq=False)
class OptionDose:
    """Dose estimate of a field option: per course, physical total and EQD2 composite.

    Attributes
    ----------
    option : str
        Option name.
    dose_grid : ImageGrid
    courses : tuple of CourseDose
    """

    option: str
    dose_grid: ImageGrid
    courses: tuple[CourseDose, ...]

    @property
    def total_gy(self) -> FloatArray:
        """Physical dose summed over courses, Gy (new array)."""
        out = np.zeros(self.dose_grid.shape, np.float64)
        for c in self.courses:
            out += c.dose_gy
        return out

    def eqd2_gy(self, alpha_beta_gy: float) -> FloatArray:
        """Voxel-wise EQD2 (Gy) summed over courses, each with its own fractionation."""
        out = np.zeros(self.dose_grid.shape, np.float64)
        for c in self.courses:
            out += eqd2_gy(c.dose_gy, c.fractions, alpha_beta_gy)
        return out

    def bed_gy(self, alpha_beta_gy: float) -> FloatArray:
        """Voxel-wise BED (Gy) summed over courses."""
        out = np.zeros(self.dose_grid.shape, np.float64)
        for c in self.courses:
            out += bed_gy(c.dose_gy, c.fractions, alpha_beta_gy)
        return out

    @property
    def prescriptions_gy(self) -> dict[str, float]:
        """PTV name -> total physical prescription over the courses that treat it."""
        out: dict[str, float] = {}
        for c in self.courses:
            for name, rx in c.prescriptions_gy.items():
                out[name] = out.get(name, 0.0) + rx
        return out


def estimate_option_dose(
    option: FieldOption,
    dose_grid: ImageGrid,
    *,
    body: Structure | npt.ArrayLike | None = None,
    params: DoseModelParameters | None = None,
    target_alpha_beta_gy: float | None = None,
    organs: StructureSet | None = None,
) -> OptionDose:
    """Estimate the dose of every course of a field option, planned on the sum.

    Each course is modelled on its own (:func:`estimate_course_dose`); then, when the
    option has several conventional (non-SBRT) courses, their sum is held under a
    ceiling, as a planner who crops the later phase's PTV
    (:func:`rtplan.plan.resolve_overlaps`) and optimises it on the plan sum would: in
    EQD2 at ``target_alpha_beta_gy``, a voxel inside conventional PTVs gets at most
    ``params.plan_sum_ceiling`` times the intended level governing it
    (:mod:`rtplan.level_zones`, the rule the hot-spot check reads it by: a PTV's own level,
    a higher PTV's within 5 mm of it, inside a PTV a boost overlaps the boost's), and a
    voxel outside them at most that factor times the highest conventional level. Where
    the courses would stack above the ceiling, the last IMRT/VMAT course gives less
    there, then the one before (optimised with the other courses as its base dose).
    3D-CRT courses are never changed: a box cannot be shaped so; when no IMRT course can
    give way the stacking stays and shows in the hot-spot check. SBRT courses are boosts
    that add to the elective dose by design: they are neither held nor counted.

    Parameters
    ----------
    option : FieldOption
    dose_grid : ImageGrid
    body : Structure or array_like, optional
        See :func:`estimate_course_dose`. Pass a dose-grid mask to avoid resampling the
        body for every option.
    params : DoseModelParameters, optional
    target_alpha_beta_gy : float, optional
        alpha/beta (Gy) of the targets for the ceiling; default
        ``ALPHA_BETA_GY["prostate"]`` (a protocol's ``[alpha_beta] prostate`` should be
        passed, as :func:`rtplan.compare.compare_options` does).
    organs : StructureSet, optional
        The anatomy's structures, for the organ sparing of IMRT courses (see
        :func:`estimate_course_dose`); :func:`rtplan.compare.compare_options` passes them.

    Returns
    -------
    OptionDose

    Raises
    ------
    TypeError
        ``option``, ``dose_grid`` or ``params`` of the wrong type.
    ValueError
        A non-positive ``target_alpha_beta_gy``.
    """
    if not isinstance(option, FieldOption):
        raise TypeError(
            f"option must be an rtplan.plan.FieldOption (rtplan.volumes.build_option), "
            f"got {type(option).__name__}"
        )
    params = _checked_model_inputs(dose_grid, params)
    body_mask = _as_dose_grid_mask(body, dose_grid)
    ab = ALPHA_BETA_GY["prostate"] if target_alpha_beta_gy is None else target_alpha_beta_gy
    if not (math.isfinite(ab) and ab > 0):
        raise InvalidInputError(f"target_alpha_beta_gy must be a positive number of Gy, got {ab!r}")
    doses = [
        estimate_course_dose(c, dose_grid, body=body_mask, params=params, organs=organs)
        for c in option.courses
    ]
    if sum(c.technique != "sbrt" for c in option.courses) > 1:
        ceiling = _plan_sum_ceiling_gy(option, dose_grid, params.plan_sum_ceiling, ab)
        doses = _held_under(doses, option.courses, ceiling, ab)
    courses = [
        CourseDose(
            c.name, c.technique, int(c.fractions), d, {t.name: t.prescription_gy for t in c.targets}
        )
        for c, d in zip(option.courses, doses)
    ]
    return OptionDose(option.name, dose_grid, tuple(courses))


# ---------------------------------------------------------------------------- plan sum
def _plan_sum_ceiling_gy(
    option: FieldOption, dose_grid: ImageGrid, factor: float, alpha_beta_gy: float
) -> FloatArray:
    """Ceiling (EQD2 at ``alpha_beta_gy``, Gy) of the conventional courses' sum per voxel.

    ``factor`` times the intended EQD2 of the level governing each voxel
    (:mod:`rtplan.level_zones`, the hot-spot check's rule too); SBRT targets take no part.
    """
    levels = [lv for lv in target_levels(option) if not lv.is_sbrt]
    return level_zones(levels, dose_grid, alpha_beta_gy).ceiling_eqd2_gy(factor)


def physical_dose_gy(
    eqd2_gy: npt.ArrayLike, fractions: int, alpha_beta_gy: float
) -> FloatArray | float:
    """Total physical dose in ``fractions`` equal fractions that has a given EQD2.

    The inverse of :func:`eqd2_gy`: ``D = n/2 (sqrt(a/b**2 + 4 EQD2 (2 + a/b) / n) - a/b)``.

    Parameters
    ----------
    eqd2_gy : float or array_like
        EQD2 in Gy (>= 0).
    fractions : int
        Number of fractions (>= 1).
    alpha_beta_gy : float
        alpha/beta in Gy (> 0).

    Returns
    -------
    float or ndarray
        Physical dose in Gy.

    Examples
    --------
    >>> round(float(physical_dose_gy(eqd2_gy(30.0, 5, 3.0), 3, 3.0)), 2)  # 30 Gy / 5 in 3 fx
    24.31
    >>> float(physical_dose_gy(70.0, 35, 3.0))
    70.0
    """
    e = np.asarray(eqd2_gy, dtype=np.float64)
    _check_radiobiology(e, fractions, alpha_beta_gy)
    n, ab = float(fractions), alpha_beta_gy
    out = 0.5 * n * (np.sqrt(ab * ab + 4.0 * e * (2.0 + ab) / n) - ab)
    return float(out) if out.ndim == 0 else out


def _held_under(
    doses: Sequence[FloatArray], courses: Sequence[Course], ceiling: FloatArray, ab: float
) -> list[FloatArray]:
    """Course doses, later IMRT courses lowered where the conventional sum tops ``ceiling``.

    SBRT courses are left out of the sum and never lowered.
    """
    out = [np.array(d, dtype=np.float64) for d in doses]
    parts = [
        np.asarray(eqd2_gy(d, c.fractions, ab), dtype=np.float64)
        if c.technique != "sbrt"
        else np.zeros(d.shape)
        for d, c in zip(out, courses)
    ]
    total = np.sum(parts, axis=0)
    for k in range(len(out) - 1, -1, -1):
        if courses[k].technique != "imrt":
            continue
        over = (total > ceiling + 1e-9) & (parts[k] > 0)
        if not over.any():
            break
        allowed = np.clip(ceiling[over] - (total[over] - parts[k][over]), 0.0, None)
        new_part = np.minimum(parts[k][over], allowed)
        total[over] += new_part - parts[k][over]
        parts[k][over] = new_part
        out[k][over] = physical_dose_gy(new_part, courses[k].fractions, ab)
    return out
