"""Plan the courses of one option with pyRadPlan: photon pencil beams, fluence optimisation.

The only module of ``calibration/`` that imports pyRadPlan (``pip install -e
.[calibration]`` in a separate environment; never a dependency of rtplan).

One option is planned on one set of beams (:class:`BeamSetup`: 9 equispaced coplanar
6 MV beams, isocentre at the targets' centre of mass, 5 mm bixels over every target of
every course). The dose influence matrix is computed once, with a lateral cutoff of
:attr:`Cutoffs.optimisation_mm` (30 mm); each course's fluence is optimised on it with
the course's own objectives (:func:`calibration.objectives.course_structures`); then
each course's dose is recomputed with the default cutoff :attr:`Cutoffs.final_mm`
(50 mm) by a forward calculation of the bixels that course uses (weight above zero),
which needs no influence matrix and so no more memory for the whole pelvis.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from pyRadPlan import (
    CT,
    OptInfo,
    PhotonPlan,
    SteeringInformation,
    calc_dose_forward,
    calc_dose_influence,
    fluence_optimization,
    generate_stf,
)
from pyRadPlan.cst import StructureSet, create_voi
from pyRadPlan.optimization.objectives import SquaredOverdosing, SquaredUnderdosing

from calibration.objectives import ObjectiveSpec, OptStructure
from calibration.store import JsonValue
from rtplan.grid import ImageGrid

__all__ = [
    "BeamSetup",
    "CourseFluence",
    "Cutoffs",
    "OptimiserSettings",
    "PlannedOption",
    "plan_courses",
]

FloatArray = npt.NDArray[np.float64]
Report = Callable[[str], None]


@dataclass(frozen=True)
class BeamSetup:
    """The beams of every reference plan.

    Parameters
    ----------
    count : int
        Number of equispaced coplanar beams (gantry 0, 360/count, ... degrees; couch 0).
    bixel_width_mm : float
        Bixel size at the isocentre, mm.
    machine : str
        pyRadPlan machine (``"Generic"``: matRad's generic 6 MV photon linac).
    energy_mv : float
        Nominal photon energy, MV.
    """

    count: int = 9
    bixel_width_mm: float = 5.0
    machine: str = "Generic"
    energy_mv: float = 6.0

    @property
    def gantry_angles_deg(self) -> list[float]:
        """Gantry angles, degrees."""
        return [360.0 * k / self.count for k in range(self.count)]

    def as_json(self) -> dict[str, JsonValue]:
        """The setup as a JSON object."""
        angles: list[JsonValue] = [round(a, 4) for a in self.gantry_angles_deg]
        return {
            "count": self.count,
            "gantry_angles_deg": angles,
            "couch_angles_deg": [0.0] * self.count,
            "bixel_width_mm": self.bixel_width_mm,
            "machine": self.machine,
            "energy_MV": self.energy_mv,
            "engine": "SVDPB (photon singular-value-decomposition pencil beam)",
        }


@dataclass(frozen=True)
class Cutoffs:
    """Lateral geometric cutoffs of the pencil-beam kernel, mm."""

    optimisation_mm: float = 30.0
    final_mm: float = 50.0


@dataclass(frozen=True)
class OptimiserSettings:
    """The fluence optimiser: SciPy L-BFGS-B (pyRadPlan's ``scipy`` solver)."""

    solver: str = "scipy"
    max_iter: int = 500


@dataclass(frozen=True, eq=False)
class CourseFluence:
    """One optimised course.

    Attributes
    ----------
    weights : ndarray of float64
        Bixel weights (all bixels of the option's beams, this course's fluence).
    dose_opt_gy : ndarray of float64, shape ``dose_grid.shape``
        Dose of the weights with the optimisation cutoff (before normalisation), Gy.
    dose_final_gy : ndarray of float64, shape ``dose_grid.shape``
        Dose recomputed with the final cutoff (before normalisation), Gy.
    iterations : int
        Optimiser iterations.
    message : str
        The optimiser's closing message.
    objective : float
        Final objective value.
    bixels_used : int
        Bixels of weight above zero (the ones recomputed).
    """

    weights: FloatArray
    dose_opt_gy: FloatArray
    dose_final_gy: FloatArray
    iterations: int
    message: str
    objective: float
    bixels_used: int


@dataclass(frozen=True, eq=False)
class PlannedOption:
    """The courses of one option, planned.

    Attributes
    ----------
    courses : list of CourseFluence
        In course order.
    isocenter_mm : list of float
        The isocentre (LPS x, y, z), mm.
    bixels : int
        Bixels of the beams.
    dij_nonzeros : int
        Non-zero entries of the influence matrix (optimisation cutoff).
    step_seconds : dict of str to float
        Wall time of each step.
    """

    courses: list[CourseFluence]
    isocenter_mm: list[float]
    bixels: int
    dij_nonzeros: int
    step_seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what pyRadPlan reports on every run.

    Its ray tracer divides by the zero components of axis-parallel rays on purpose
    (NumPy floating-point warnings), it says on every call that no GPU is available, and
    it logs each step at INFO level.
    """
    logger = logging.getLogger("pyRadPlan")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requested GPU device is not available")
            yield
    finally:
        logger.setLevel(level)


def _ct(ct_hu: npt.NDArray[np.float32], dose_grid: ImageGrid) -> CT:
    """A pyRadPlan CT on the dose grid (pyRadPlan reads arrays as [z, y, x], LPS)."""
    sz, sy, sx = dose_grid.spacing_mm
    return CT(
        cube_hu=np.ascontiguousarray(ct_hu, dtype=np.float32),
        resolution={"x": sx, "y": sy, "z": sz},
        origin=tuple(float(v) for v in dose_grid.origin_mm),
    )


def _objective(spec: ObjectiveSpec) -> SquaredUnderdosing | SquaredOverdosing:
    if spec.kind == "squared_underdosing":
        return SquaredUnderdosing(priority=spec.priority, d_min=spec.dose_gy)
    return SquaredOverdosing(priority=spec.priority, d_max=spec.dose_gy)


def _cst(ct: CT, structures: Sequence[OptStructure]) -> StructureSet:
    vois = [
        create_voi(
            name=s.name,
            mask=s.mask.astype(np.uint8),
            ct_image=ct,
            voi_type=s.voi_type,
            objectives=[_objective(o) for o in s.objectives],
        )
        for s in structures
    ]
    return StructureSet(vois=vois, ct_image=ct)


def _plan(beams: BeamSetup, *, cutoff_mm: float, ct: CT, settings: OptimiserSettings) -> PhotonPlan:
    pln = PhotonPlan(machine=beams.machine)
    pln.prop_stf = {
        "generator": "photonIMRT",
        "gantry_angles": beams.gantry_angles_deg,
        "couch_angles": [0.0] * beams.count,
        "bixel_width": beams.bixel_width_mm,
        "energy": beams.energy_mv,
    }
    pln.prop_dose_calc = {
        "engine": "SVDPB",
        "dose_grid": ct.grid,
        "geometric_lateral_cutoff": cutoff_mm,
    }
    pln.prop_opt = {
        "solver": settings.solver,
        "apply_overlap": False,
        "max_iter": settings.max_iter,
    }
    return pln


def _dose_array(image: sitk.Image, dose_grid: ImageGrid) -> FloatArray:
    dose = sitk.GetArrayFromImage(image).astype(np.float64)
    if dose.shape != dose_grid.shape:
        raise ValueError(f"pyRadPlan returned dose of shape {dose.shape}, not {dose_grid.shape}")
    return dose


def _used_bixels(
    stf: SteeringInformation, weights: FloatArray
) -> tuple[SteeringInformation, FloatArray]:
    """The beams reduced to the rays of weight above zero, and their weights.

    A photon ray carries one bixel, so rays and weights match one to one.
    """
    kept_beams = []
    kept_weights = []
    n = 0
    for beam in stf.beams:
        rays = []
        for ray in beam.rays:
            w = weights[n : n + len(ray.beamlets)]
            n += len(ray.beamlets)
            if np.any(w > 0):
                rays.append(ray)
                kept_weights.append(w)
        if rays:
            kept_beams.append(beam.model_copy(update={"rays": rays}, deep=True))
    if n != weights.size:
        raise ValueError(f"{weights.size} weights for {n} bixels")
    return SteeringInformation(beams=kept_beams), np.concatenate(kept_weights)


@_quiet()  # a fresh context for each call (contextlib's ContextDecorator)
def plan_courses(
    ct_hu: npt.NDArray[np.float32],
    dose_grid: ImageGrid,
    beam_structures: Sequence[OptStructure],
    course_structures: Sequence[Sequence[OptStructure]],
    *,
    beams: BeamSetup,
    cutoffs: Cutoffs,
    settings: OptimiserSettings,
    report: Report,
) -> PlannedOption:
    """Optimise and recompute every course of an option on one set of beams.

    Parameters
    ----------
    ct_hu : ndarray of float32, shape ``dose_grid.shape``
        CT on the dose grid, HU.
    dose_grid : ImageGrid
        rtplan's dose grid (the grid of pyRadPlan's CT and dose).
    beam_structures : sequence of OptStructure
        What the beams are fitted to and the dose is computed in: the union of every
        course's targets (TARGET) and the body (EXTERNAL), without objectives.
    course_structures : sequence of sequences of OptStructure
        The optimisation structures of each course.
    beams, cutoffs, settings
        Beams, kernel cutoffs and optimiser.
    report : callable
        Told each step (a line of text).

    Returns
    -------
    PlannedOption
    """
    steps: dict[str, float] = {}
    t = time.perf_counter()
    ct = _ct(ct_hu, dose_grid)
    beam_cst = _cst(ct, beam_structures)
    pln = _plan(beams, cutoff_mm=cutoffs.optimisation_mm, ct=ct, settings=settings)
    stf = generate_stf(ct, beam_cst, pln)
    isocenter = [float(v) for v in np.asarray(stf.beams[0].iso_center).ravel()]
    report(
        f"beams: {len(stf.beams)} x {stf.total_number_of_bixels} bixels in all; dose influence "
        f"({cutoffs.optimisation_mm:g} mm cutoff)"
    )
    dij = calc_dose_influence(ct, beam_cst, stf, pln)
    nonzeros = int(dij.physical_dose.flat[0].nnz)
    steps["dose_influence"] = time.perf_counter() - t
    optimised: list[tuple[FloatArray, FloatArray, OptInfo]] = []
    for n, structures in enumerate(course_structures, start=1):
        t = time.perf_counter()
        report(f"course {n}/{len(course_structures)}: fluence optimisation")
        info: OptInfo = {}
        weights = np.asarray(
            fluence_optimization(ct, _cst(ct, structures), stf, dij, pln, opt_info=info),
            dtype=np.float64,
        )
        dose = np.asarray(
            dij.get_result_arrays_from_intensity(weights)["physical_dose"], dtype=np.float64
        ).reshape(dose_grid.shape)
        optimised.append((weights, dose, info))
        steps[f"optimisation_{n}"] = time.perf_counter() - t
    del dij
    gc.collect()
    courses = []
    final = _plan(beams, cutoff_mm=cutoffs.final_mm, ct=ct, settings=settings)
    for n, (weights, dose_opt, info) in enumerate(optimised, start=1):
        t = time.perf_counter()
        used_stf, used_weights = _used_bixels(stf, weights)
        report(
            f"course {n}/{len(optimised)}: dose of {used_weights.size} bixels "
            f"({cutoffs.final_mm:g} mm cutoff)"
        )
        result = calc_dose_forward(ct, beam_cst, used_stf, final, used_weights)
        result_info = info["result_info"]
        courses.append(
            CourseFluence(
                weights=weights,
                dose_opt_gy=dose_opt,
                dose_final_gy=_dose_array(result["physical_dose"], dose_grid),
                iterations=int(info["num_iter"]),
                message=str(result_info["message"]),
                objective=float(result_info["fun"]),
                bixels_used=int(used_weights.size),
            )
        )
        steps[f"final_dose_{n}"] = time.perf_counter() - t
    return PlannedOption(
        courses=courses,
        isocenter_mm=isocenter,
        bixels=int(stf.total_number_of_bixels),
        dij_nonzeros=nonzeros,
        step_seconds=steps,
    )
