"""The four demo cases on the shipped atlas, and the end-to-end demo run.

The cases cover the PSMA PET staging categories of the UCLA PSMA-guided salvage RT series
(Nikitas et al., JNCCN 2026; CLINICAL.md section 10a: T0N0M0 40.7 %, TrN0M0 16.8 %,
N1M0 28.3 %, M1 14.2 % of 113 patients):

========  =================================================================
T0N0M0    no PSMA-positive lesion (the largest group)
TrN0M0    a local recurrence (~1.4 cc) at the vesicourethral anastomosis
N1M0      two pelvic nodes (~0.6 cc) by the left external and right internal iliac
M1b       one bone lesion (right ilium, ~2 cc) and one node by the left internal iliac
========  =================================================================

Every lesion is placed from the atlas's own geometry (landmarks and structure
centrelines), never from hard-coded coordinates, so the cases follow the atlas when it is
built on another grid or scaled. Lesion sizes and SUVmax values are illustrative tool
defaults, not patient data.

:func:`run_demo` stages each case, suggests and builds its field options, compares them
and writes, per case: the CT series (``ct/``), one RTSTRUCT with the structures of all
options (``RS_<case>.dcm``), one RTDOSE per option (``RD_<option>.dcm``),
``report.html``, ``metrics.csv`` and ``metrics.json``. The atlas is built once, its CT
written once (one demo patient, four scenarios; the series is hard-linked into each case
folder) and the cases run in two worker processes on a machine with two or more cores.
Measured on the 2-core development machine (default atlas grid 512 x 512 x 105, dose
grid 2.5 mm): about 46 s for the four cases with other jobs running, 60 CPU-seconds in
all, more than half of it in writing the four RTSTRUCTs.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._io import staged_output
from rtplan._masks import Box, largest_component, union_in_box
from rtplan._memory import (
    DOSE_BYTES_PER_VOXEL,
    DOSE_BYTES_PER_VOXEL_PER_OPTION,
    available_bytes,
    check_memory,
    coarser_spacing,
    demo_bytes,
    dose_voxels,
    plan_bytes,
    positive_real,
    shipped_atlas_grid,
)
from rtplan._progress import Progress, ProgressLike, as_progress
from rtplan._typing import BoolMask, FloatArray, Vec3
from rtplan.atlas import Atlas, load_atlas
from rtplan.compare import Comparison, ImportedDoseInput, compare_options
from rtplan.context import ClinicalContext
from rtplan.dicom_io import write_ct_series
from rtplan.dose_estimate import make_dose_grid
from rtplan.errors import InvalidInputError, MissingStructureError
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesions, lesions_from_structures
from rtplan.protocol import Protocol, load_protocol
from rtplan.staging import BONE_STRUCTURES
from rtplan.staging import stage as stage_lesions
from rtplan.structures import Structure
from rtplan.tracers import Tracer
from rtplan.volumes import build_options_partial, suggest_options

__all__ = [
    "DEMO_ATLAS",
    "DEMO_CASE_NAMES",
    "Case",
    "CaseOutputs",
    "CaseSummary",
    "DemoSummary",
    "case_lesions",
    "demo_cases",
    "plan_case",
    "run_case",
    "run_demo",
    "write_case_outputs",
]

#: The atlas the demo runs on.
DEMO_ATLAS = "male_pelvis_postop"
#: Case names, in the order they run.
DEMO_CASE_NAMES: tuple[str, ...] = ("T0N0M0", "TrN0M0", "N1M0", "M1b")

# Lesion geometry: tool defaults chosen to be typical of PSMA-positive findings at
# salvage (small local recurrences and nodes, sub-centimetre to ~1.5 cm), not data.
_LOCAL_RADIUS_MM = 7.0  # sphere of 1.44 cc
_LOCAL_POSTERIOR_SHIFT_MM = 3.0
_NODE_RADIUS_MM = 5.5  # sphere of 0.70 cc
_NODE_OFFSET_MM = (9.0, 8.0, 10.0)  # centre to vessel centreline, tried in this order
_BONE_RADIUS_MM = 8.0  # sphere of 2.14 cc, cut to the bone
_MIN_BONE_DEPTH_MM = 5.0
# Illustrative SUVmax of the demo lesions (tool default; typical PSMA-11 values).
_SUV = {"local": 8.5, "node": 6.0, "bone": 12.0}
_SUV_BACKGROUND = 0.5

_VESSEL_PREFIXES = ("A_", "V_")
_NODE_AVOID = (
    "Bladder",
    "Rectum",
    "Canal_Anal",
    "Colon_Sigmoid",
    "Obturator_Int_L",
    "Obturator_Int_R",
    "Iliopsoas_L",
    "Iliopsoas_R",
    "Levator_Ani",
)


# ============================================================================ cases
@dataclass(frozen=True)
class Case:
    """One demo case: its lesions as GTV structures on the atlas grid.

    Attributes
    ----------
    name : str
        Short label and output folder name (``"TrN0M0"``).
    title : str
        One line for the report.
    description : str
        Where the lesions are and why the case is in the demo.
    gtvs : tuple of Structure
        The lesions (role ``"gtv"``) on the atlas grid; empty for T0N0M0.
    suv_max : tuple of float
        Illustrative SUVmax of each lesion (g/mL), same order as ``gtvs``.
    expected_stage : str
        The miTNM category the case is built to show (``"TrN0M0"``; ``"M1b"`` stands for
        any N with M1b).
    """

    name: str
    title: str
    description: str
    gtvs: tuple[Structure, ...]
    suv_max: tuple[float, ...]
    expected_stage: str

    @property
    def label_map(self) -> npt.NDArray[np.int16]:
        """Lesion label map on the atlas grid: 0 background, lesion ``n`` has value ``n``."""
        if not self.gtvs:
            raise InvalidInputError(f"case {self.name} has no lesion")
        out = np.zeros(self.gtvs[0].grid.shape, np.int16)
        for n, g in enumerate(self.gtvs, start=1):
            out[g.mask] = n
        return out

    def suv_image(self, grid: ImageGrid) -> npt.NDArray[np.float32]:
        """A synthetic PSMA PET SUV image on ``grid``: background plus the lesions.

        Each lesion is its :attr:`suv_max` at the voxel deepest inside it, falling off
        towards its edge (to about half at the edge); elsewhere SUV
        ``0.5`` (tool default). Illustrative only.
        """
        suv = np.full(grid.shape, _SUV_BACKGROUND, np.float32)
        for gtv, peak in zip(self.gtvs, self.suv_max):
            box = gtv.bbox
            if box is None:
                continue
            local = gtv.cropped_mask
            depth = ndimage.distance_transform_edt(np.pad(local, 1), sampling=grid.spacing_mm)[
                1:-1, 1:-1, 1:-1
            ]
            rel = depth / max(float(depth.max()), 1e-6)
            values = (peak * (0.5 + 0.5 * rel)).astype(np.float32)
            sub = suv[box]
            sub[local] = np.maximum(sub[local], values[local])
        return suv


def _box_around(grid: ImageGrid, centre_mm: npt.ArrayLike, reach_mm: float) -> Box:
    """Index box ``(k, j, i)`` covering ``reach_mm`` around an LPS point (clipped to the grid)."""
    centre = np.asarray(centre_mm, dtype=np.float64)
    idx = grid.lps_to_index(centre)
    out = []
    for c, sp, n in zip(idx, grid.spacing_mm, grid.shape):
        half = math.ceil(reach_mm / sp) + 1
        lo = max(0, math.floor(c) - half)
        hi = min(n, math.ceil(c) + half + 1)
        if hi <= lo:
            raise MissingStructureError(
                f"demo: the point {tuple(np.round(centre, 1))} mm lies outside the grid"
            )
        out.append(slice(lo, hi))
    return (out[0], out[1], out[2])


def _sphere(grid: ImageGrid, centre_mm: npt.ArrayLike, radius_mm: float) -> BoolMask:
    """Voxels of ``grid`` whose centre lies within ``radius_mm`` of ``centre_mm`` (LPS)."""
    z_mm, y_mm, x_mm = grid.axis_coordinates_mm()
    cx, cy, cz = (float(c) for c in np.asarray(centre_mm, dtype=np.float64))
    dz = ((z_mm - cz) ** 2)[:, None, None]
    dy = ((y_mm - cy) ** 2)[None, :, None]
    dx = ((x_mm - cx) ** 2)[None, None, :]
    return (dz + dy + dx) <= radius_mm**2


def _named(atlas: Atlas, names: Iterable[str]) -> list[Structure]:
    """The structures of ``names`` that the atlas has."""
    return [atlas.structures[n] for n in names if n in atlas.structures]


def _bone_names(atlas: Atlas) -> list[str]:
    """The atlas's bone structures (by the staging module's bone name prefixes)."""
    return [n for n in atlas.structures if n.startswith(BONE_STRUCTURES)]


def _vessel_names(atlas: Atlas) -> list[str]:
    return [n for n in atlas.structures.names if n.startswith(_VESSEL_PREFIXES)]


def _gtv(name: str, local: BoolMask, box: Box, grid: ImageGrid) -> Structure:
    offset = (box[0].start, box[1].start, box[2].start)
    return Structure.from_cropped(name, local, offset, grid, role="gtv")


def _centreline_point(atlas: Atlas, vessel: str, fraction: float = 0.5) -> FloatArray:
    """LPS point on the centreline of ``vessel`` at ``fraction`` of its cranio-caudal extent.

    The centre of the vessel's cross-section on the axial slice at that height.
    """
    s = atlas.structures[vessel]
    if s.bbox is None:
        raise MissingStructureError(f"demo: the atlas structure {vessel!r} is empty")
    local = s.cropped_mask
    rows = np.flatnonzero(local.any(axis=(1, 2)))
    k_local = int(rows[round(fraction * (len(rows) - 1))])
    jj, ii = np.nonzero(local[k_local])
    k0, j0, i0 = (sl.start for sl in s.bbox)
    idx = (k0 + k_local, j0 + jj.mean(), i0 + ii.mean())
    return np.asarray(atlas.grid.index_to_lps(idx), dtype=np.float64)


def _place_node(
    atlas: Atlas,
    vessel: str,
    preferred: Sequence[tuple[float, float, float]],
    *,
    taken: Sequence[Structure] = (),
) -> Structure:
    """A ~0.5-1 cc node next to ``vessel``: a sphere centred 8-10 mm from its centreline.

    Candidate centres lie ``_NODE_OFFSET_MM`` from the centreline point at mid-height
    (:func:`_centreline_point`) along the eight in-plane directions (``preferred`` LPS
    unit vectors first). Each sphere is cut away from vessels, bones, muscles, bladder,
    sigmoid and rectum (and the ``taken`` lesions) and kept inside ``Body``. The bowel
    space (``Spc_Bowel``) may be overlapped (it stands in for the peritoneal loops and
    touches the vessels in the atlas) but is avoided where possible: the candidate with
    the largest kept fraction minus half its bowel-space fraction wins (ties: the
    earlier).
    """
    grid = atlas.grid
    centre0 = _centreline_point(atlas, vessel)
    box = _box_around(grid, centre0, max(_NODE_OFFSET_MM) + _NODE_RADIUS_MM)
    local_grid = grid.crop(box)
    if "Body" in atlas.structures:
        body = union_in_box(_named(atlas, ["Body"]), box)
    else:
        body = np.ones(local_grid.shape, bool)
    avoid = union_in_box(
        [*_named(atlas, [*_vessel_names(atlas), *_bone_names(atlas), *_NODE_AVOID]), *taken], box
    )
    bowel = union_in_box(_named(atlas, ["Spc_Bowel"]), box)
    directions = [*preferred, *(d for d in _IN_PLANE if d not in preferred)]
    best: tuple[float, BoolMask] | None = None
    for direction in directions:
        unit = np.asarray(direction, float)
        unit /= np.linalg.norm(unit)
        for offset in _NODE_OFFSET_MM:
            sphere = _sphere(local_grid, centre0 + offset * unit, _NODE_RADIUS_MM)
            n_sphere = int(sphere.sum())
            if n_sphere == 0:
                continue
            kept = sphere & body & ~avoid
            score = (float(kept.sum()) - 0.5 * float((kept & bowel).sum())) / n_sphere
            if best is None or score > best[0] + 1e-9:
                best = (score, kept)
    if best is None or best[0] < 0.3:
        raise MissingStructureError(
            f"demo: found no free space for a node next to {vessel!r} in atlas {atlas.name!r}"
        )
    side = vessel.rsplit("_", 1)[-1]
    kind = "ExtIliac" if "_Ext_" in vessel else "IntIliac" if "_Int_" in vessel else "Iliac"
    return _gtv(f"GTVn_{kind}_{side}", largest_component(best[1]), box, grid)


def _local_recurrence(atlas: Atlas) -> Structure:
    """A ~1.4 cc sphere at the vesicourethral anastomosis, 3 mm posterior of it.

    Kept out of the rectum, anal canal and bone (a soft-tissue nodule in the bed).
    """
    if "VUA" not in atlas.landmarks:
        raise MissingStructureError(f"demo: atlas {atlas.name!r} has no 'VUA' landmark")
    grid = atlas.grid
    centre = np.add(atlas.landmarks["VUA"], (0.0, _LOCAL_POSTERIOR_SHIFT_MM, 0.0))
    box = _box_around(grid, centre, _LOCAL_RADIUS_MM)
    sphere = _sphere(grid.crop(box), centre, _LOCAL_RADIUS_MM)
    avoid = union_in_box(_named(atlas, ("Rectum", "Canal_Anal", *_bone_names(atlas))), box)
    return _gtv("GTVp_VUA", largest_component(sphere & ~avoid), box, grid)


def _bone_lesion(atlas: Atlas) -> Structure:
    """A ~2 cc lesion in the right ilium (or the S1 body if the ilium is too thin).

    Centred at the point of the bone farthest from its surface; the sphere is cut to the
    bone (a lesion confined to the marrow).
    """
    grid = atlas.grid
    for bone in ("Bone_Ilium_R", "VB_S1", "Sacrum"):
        if bone not in atlas.structures:
            continue
        s = atlas.structures[bone]
        if s.bbox is None:
            continue
        local = np.pad(s.cropped_mask, 1)
        depth = ndimage.distance_transform_edt(local, sampling=grid.spacing_mm)[1:-1, 1:-1, 1:-1]
        if depth.max() < _MIN_BONE_DEPTH_MM:
            continue
        peak = np.unravel_index(int(np.argmax(depth)), depth.shape)
        centre = grid.index_to_lps([p + sl.start for p, sl in zip(peak, s.bbox)])
        box = _box_around(grid, centre, _BONE_RADIUS_MM)
        lesion = _sphere(grid.crop(box), centre, _BONE_RADIUS_MM)
        lesion &= union_in_box([s], box)
        short = {"Bone_Ilium_R": "Ilium_R", "VB_S1": "S1", "Sacrum": "Sacrum"}[bone]
        return _gtv(f"GTVm_{short}", lesion, box, grid)
    raise MissingStructureError(
        f"demo: atlas {atlas.name!r} has no bone thick enough for a bone lesion "
        "(Bone_Ilium_R, VB_S1 or Sacrum)"
    )


# LPS unit vectors: +x left, +y posterior.
_LEFT, _RIGHT = (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)
_POST, _ANT = (0.0, 1.0, 0.0), (0.0, -1.0, 0.0)


def _diag(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float]:
    v = np.add(a, b) / math.sqrt(2.0)
    return (float(v[0]), float(v[1]), float(v[2]))


_IN_PLANE: tuple[tuple[float, float, float], ...] = (
    _LEFT,
    _RIGHT,
    _POST,
    _ANT,
    _diag(_LEFT, _POST),
    _diag(_RIGHT, _POST),
    _diag(_LEFT, _ANT),
    _diag(_RIGHT, _ANT),
)


def demo_cases(atlas: Atlas) -> list[Case]:
    """The four demo cases (T0N0M0, TrN0M0, N1M0, M1b) on ``atlas``.

    Parameters
    ----------
    atlas : Atlas
        The shipped male-pelvis atlas (any grid); needs the ``VUA`` landmark and the
        structures ``A_Iliac_Ext_L``, ``A_Iliac_Int_R``, ``A_Iliac_Int_L`` and
        ``Bone_Ilium_R`` (or ``VB_S1``).

    Returns
    -------
    list of Case
        In the order of :data:`DEMO_CASE_NAMES`.

    Raises
    ------
    MissingStructureError
        If the atlas lacks a landmark or structure a lesion is placed from.
    """
    local = _local_recurrence(atlas)
    # External iliac nodes lie lateral (or anterolateral) of the artery, internal iliac
    # nodes lateral/posterior of it.
    n_ext_l = _place_node(atlas, "A_Iliac_Ext_L", [_LEFT, _diag(_LEFT, _POST), _diag(_LEFT, _ANT)])
    n_int_r = _place_node(
        atlas, "A_Iliac_Int_R", [_diag(_RIGHT, _POST), _POST, _RIGHT], taken=[n_ext_l]
    )
    bone = _bone_lesion(atlas)
    n_int_l = _place_node(atlas, "A_Iliac_Int_L", [_diag(_LEFT, _POST), _POST, _LEFT], taken=[bone])
    return [
        Case(
            "T0N0M0",
            "PSMA-negative: no PSMA-positive lesion",
            "Biochemical recurrence without a PSMA-positive lesion (40.7 % of the UCLA "
            "series); the options are prostate-bed RT with or without the pelvic nodes.",
            (),
            (),
            "T0N0M0",
        ),
        Case(
            "TrN0M0",
            "Local recurrence at the vesicourethral anastomosis",
            f"A {local.volume_cc:.1f} cc PSMA-positive nodule at the vesicourethral "
            "anastomosis (16.8 % of the UCLA series, where WPRT improved PFS, aHR 0.12).",
            (local,),
            (_SUV["local"],),
            "TrN0M0",
        ),
        Case(
            "N1M0",
            "Two PSMA-positive pelvic nodes",
            f"Nodes next to the left external iliac ({n_ext_l.volume_cc:.2f} cc) and the "
            f"right internal iliac artery ({n_int_r.volume_cc:.2f} cc) (28.3 % of the UCLA "
            "series, where ADT improved PFS, aHR 0.37).",
            (n_ext_l, n_int_r),
            (_SUV["node"], _SUV["node"] * 0.8),
            "T0N1M0",
        ),
        Case(
            "M1b",
            "Oligometastatic: one bone lesion and one pelvic node",
            f"A {bone.volume_cc:.1f} cc bone lesion ({bone.name[5:]}) and a "
            f"{n_int_l.volume_cc:.2f} cc node next to the left internal iliac artery "
            "(M1: 14.2 % of the UCLA series).",
            (bone, n_int_l),
            (_SUV["bone"], _SUV["node"]),
            "M1b",
        ),
    ]


def case_lesions(case: Case, atlas: Atlas) -> Lesions:
    """The :class:`rtplan.lesions.Lesions` of a demo case, with SUVs from its synthetic PET.

    Lesion ``L<n>`` is ``case.gtvs[n - 1]`` (its ``source`` names the GTV).
    """
    if not case.gtvs:
        return Lesions([], grid=atlas.grid)
    return lesions_from_structures(case.gtvs, suv=case.suv_image(atlas.grid))


def plan_case(
    atlas: Atlas,
    lesions: Lesions,
    *,
    protocol: str | Path | Protocol = "nrg_salvage",
    case: str = "",
    dose_spacing_mm: float = 2.5,
    progress: Progress | ProgressLike | bool | None = False,
    context: ClinicalContext | None = None,
    tracer: Tracer | None = None,
    imported_doses: Mapping[str, ImportedDoseInput] | None = None,
) -> Comparison:
    """Stage the lesions, suggest and build the options, and compare them.

    Parameters
    ----------
    atlas : Atlas
        Anatomy (CT, structures, landmarks).
    lesions : Lesions
        PSMA-positive lesions on ``atlas.grid`` (possibly none).
    protocol : str or path or Protocol
        Margins, prescriptions and constraints.
    case : str
        Case label for the comparison and its report.
    dose_spacing_mm : float
        Cubic voxel size of the dose grid, mm.
    progress : Progress, callable or bool
        Where to report the steps.
    context : ClinicalContext, optional
        PSA and pathology, shown in the report with what the PET result means at that PSA.
    tracer : Tracer, optional
        The PET tracer.
    imported_doses : mapping of str to RTDOSE path or ImportedDose, optional
        Real plan doses by option name (or ``"<option>/<course>"``), compared in their own
        columns beside the estimates (see :func:`rtplan.compare.compare_options`).

    Returns
    -------
    Comparison
        With the stage (``comparison.stage``) and one result per suggested option (and
        per imported dose).

    Raises
    ------
    rtplan._memory.MemoryLimitError
        When the options' target volumes and dose need more memory than is available
        (estimated once the options are known, before they are built; an
        :class:`~rtplan.errors.InvalidInputError`).
    """
    prog = as_progress(progress)
    proto = load_protocol(protocol)
    with prog.step("staging"):
        stage = stage_lesions(lesions, atlas, protocol=proto)
    with prog.step("target volumes"):
        specs = suggest_options(stage, proto)
        _check_plan_memory(atlas, len(specs), dose_spacing_mm)
        options, skipped = build_options_partial(specs, atlas, lesions, proto)
    if not options:
        raise MissingStructureError(
            "no option can be built on this anatomy: " + "; ".join(s.text for s in skipped)
        )
    with prog.step("dose estimate and metrics"):
        return compare_options(
            atlas,
            lesions,
            options,
            protocol=proto,
            stage=stage,
            case=case,
            dose_spacing_mm=dose_spacing_mm,
            progress=prog,
            context=context,
            tracer=tracer,
            skipped=skipped,
            imported_doses=imported_doses,
        )


def _check_plan_memory(atlas: Atlas, n_options: int, dose_spacing_mm: float) -> None:
    """Refuse a case whose CT and dose grids need more memory than is available.

    A spacing that is not a positive number is left to :func:`compare_options` to refuse.
    """
    if not positive_real(dose_spacing_mm):
        return
    body = atlas.structures["Body"] if "Body" in atlas.structures else None
    dose_grid = make_dose_grid(atlas.grid, spacing_mm=dose_spacing_mm, body=body)
    n_ct, n_dose = math.prod(atlas.grid.shape), math.prod(dose_grid.shape)
    need = plan_bytes(n_ct, n_dose, n_options)
    per_dose_voxel = DOSE_BYTES_PER_VOXEL + DOSE_BYTES_PER_VOXEL_PER_OPTION * n_options
    room = (available_bytes().bytes - plan_bytes(n_ct, 0, 0)) / per_dose_voxel
    fits = coarser_spacing(dose_spacing_mm, n_dose, room)
    advice = (
        f"a dose grid of {math.ceil(fits * 10) / 10:g} mm or coarser would fit"
        if math.isfinite(fits)
        else "the CT grid alone needs more"
    )
    check_memory(
        need,
        f"the dose estimate of {n_options} option(s) on a {dose_spacing_mm:g} mm dose grid "
        f"({' x '.join(map(str, dose_grid.shape))} voxels; CT grid "
        f"{' x '.join(map(str, atlas.grid.shape))})",
        advice=advice,
    )


# ============================================================================ outputs
def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder of files, hard-linking where the file system allows (no extra space)."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_dir():
            _link_or_copy_tree(f, dst / f.name)
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:  # another file system, or no hard links: a copy does the same
            shutil.copy2(f, dst / f.name)


class CaseOutputs(TypedDict):
    """The files :func:`write_case_outputs` wrote for one case.

    Attributes
    ----------
    ct : Path
        The CT series folder the RTSTRUCT and RTDOSE files refer to.
    rtstruct : Path
        The RTSTRUCT of the anatomy and the targets of every option.
    rtdose : list of Path
        One RTDOSE per option, in the order of the options.
    csv, json : Path
        The metrics table.
    report : Path
        The HTML report.
    """

    ct: Path
    rtstruct: Path
    rtdose: list[Path]
    csv: Path
    json: Path
    report: Path


def _case_ct(
    atlas: Atlas,
    out: Path,
    ct_folder: str | os.PathLike[str] | None,
    *,
    copy_ct: bool,
    patient_name: str,
    patient_id: str,
    prog: Progress,
) -> Path:
    """The CT series of a case folder: written anew, linked in from ``ct_folder``, or that."""
    if ct_folder is None:
        with prog.step("writing CT series"):
            return write_ct_series(
                atlas.ct_hu,
                atlas.grid,
                out / "ct",
                patient_name=patient_name,
                patient_id=patient_id,
                series_description=f"rtplan {atlas.name}"[:64],
            )
    if copy_ct:
        with prog.step("linking CT series"):
            _link_or_copy_tree(Path(ct_folder), out / "ct")
        return out / "ct"
    return Path(ct_folder)


def write_case_outputs(
    comparison: Comparison,
    folder: str | os.PathLike[str],
    *,
    ct_folder: str | os.PathLike[str] | None = None,
    copy_ct: bool = False,
    patient_name: str = "RTPLAN^DEMO",
    patient_id: str = "RTPLAN-DEMO",
    progress: Progress | ProgressLike | bool | None = False,
) -> CaseOutputs:
    """Write the DICOM files, metrics and report of one case into ``folder`` (existing).

    Parameters
    ----------
    comparison : Comparison
        The compared options of the case.
    folder : path
        Destination folder.
    ct_folder : path, optional
        The CT series the RTSTRUCT and RTDOSE refer to. Default: the atlas CT is written
        to ``folder/ct`` (with ``patient_name`` / ``patient_id``) and used.
    copy_ct : bool
        With ``ct_folder``: put a copy of it (hard links where possible) in ``folder/ct``
        and refer to the copy, so the case folder is complete on its own.
    patient_name, patient_id : str
        PatientName / PatientID of a CT written here (obviously not a person).
    progress : Progress, callable or bool
        Where to report the steps.

    Returns
    -------
    CaseOutputs
        A dict: ``"ct"`` (Path), ``"rtstruct"`` (Path), ``"rtdose"`` (list of Path, one
        per option), ``"csv"``, ``"json"``, ``"report"`` (Path).
    """
    prog = as_progress(progress)
    out = Path(folder)
    ct = _case_ct(
        comparison.atlas,
        out,
        ct_folder,
        copy_ct=copy_ct,
        patient_name=patient_name,
        patient_id=patient_id,
        prog=prog,
    )
    with prog.step("writing RTSTRUCT"):
        rtstruct = Path(comparison.write_rtstruct(out, ct_folder=ct))
    with prog.step("writing RTDOSE"):
        rtdose = [Path(p) for p in comparison.write_rtdose(out, ct_folder=ct)]
    with prog.step("writing metrics"):
        csv_path, json_path = comparison.write_metrics(out)
    with prog.step("writing report"):
        report = Path(comparison.write_report(out / "report.html"))
    return CaseOutputs(
        ct=ct,
        rtstruct=rtstruct,
        rtdose=rtdose,
        csv=Path(csv_path),
        json=Path(json_path),
        report=report,
    )


# ============================================================================ running
@dataclass
class CaseSummary:
    """What one demo case produced.

    Attributes
    ----------
    name : str
        Case name.
    stage : str
        The miTNM stage found.
    options : list of str
        The options compared.
    seconds : float
        Wall time of the case (staging to written files), s.
    bytes_written : int
        Size of the case folder, bytes.
    folder : Path
        The case folder (final location).
    """

    name: str
    stage: str
    options: list[str]
    seconds: float
    bytes_written: int
    folder: Path


@dataclass
class DemoSummary:
    """Result of :func:`run_demo`: the cases and where the time went.

    Attributes
    ----------
    out_dir : Path
        The output folder.
    cases : list of CaseSummary
        One per case, in order.
    seconds : float
        Wall time of the whole run, s.
    timings : list of (str, float)
        Every timed step (atlas, per case, per output) and its duration in s (wall
        time; with parallel workers the per-case steps overlap).
    cpu_timings : list of (str, float)
        The same steps' CPU time in s (of the process that ran them; on a busy machine
        this, not the wall time, says what the work costs).
    jobs : int
        Worker processes used.
    disk_bytes : int
        Space the outputs take, bytes (the CT series is hard-linked between the case
        folders where the file system allows, and counted once here).
    """

    out_dir: Path
    cases: list[CaseSummary] = field(default_factory=list)
    seconds: float = 0.0
    timings: list[tuple[str, float]] = field(default_factory=list)
    cpu_timings: list[tuple[str, float]] = field(default_factory=list)
    jobs: int = 1
    disk_bytes: int = 0

    @property
    def bytes_written(self) -> int:
        """Total size of the outputs, bytes."""
        return sum(c.bytes_written for c in self.cases)

    def time_by_step(self, *, cpu: bool = False) -> dict[str, float]:
        """Seconds per kind of step, summed over the cases (wall, or CPU with ``cpu``)."""
        out: dict[str, float] = {}
        for name, seconds in self.cpu_timings if cpu else self.timings:
            if name.startswith("case "):
                continue
            out[name] = out.get(name, 0.0) + seconds
        return out

    def text(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"demo written to {self.out_dir} in {self.seconds:.1f} s with {self.jobs} "
            f"worker(s): {self.bytes_written / 1e6:.0f} MB in the case folders, "
            f"{self.disk_bytes / 1e6:.0f} MB on disk (CT series hard-linked)"
        ]
        for c in self.cases:
            lines.append(
                f"  {c.name:<7} stage {c.stage:<10} {c.seconds:5.1f} s  "
                f"options: {', '.join(c.options)}"
            )
        lines.append("time by step, summed over the cases:      wall      CPU")
        wall, cpu = self.time_by_step(), self.time_by_step(cpu=True)
        for name, seconds in sorted(wall.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<36} {seconds:6.1f} s {cpu.get(name, 0.0):6.1f} s")
        return "\n".join(lines)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_case(
    case: Case,
    atlas: Atlas,
    folder: str | os.PathLike[str],
    *,
    protocol: str | Path | Protocol = "nrg_salvage",
    dose_spacing_mm: float = 2.5,
    ct_folder: str | os.PathLike[str] | None = None,
    progress: Progress | ProgressLike | bool | None = False,
) -> tuple[Comparison, CaseOutputs]:
    """Stage, suggest, build, compare and write one case into ``folder``.

    Parameters
    ----------
    case : Case
        A demo case (from :func:`demo_cases` on ``atlas``).
    atlas : Atlas
        The atlas the case was built on.
    folder : path
        The case folder (created).
    protocol : str or path or Protocol
        Protocol of the options.
    dose_spacing_mm : float
        Cubic dose-grid voxel size, mm.
    ct_folder : path, optional
        An already written CT series of ``atlas`` to reuse (hard-linked into
        ``folder/ct``); default: the CT is written anew.
    progress : Progress, callable or bool
        Where to report the steps.

    Returns
    -------
    (Comparison, CaseOutputs)
        The comparison and the written files (see :func:`write_case_outputs`).
    """
    prog = as_progress(progress)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with prog.step("lesions"):
        lesions = case_lesions(case, atlas)
    comparison = plan_case(
        atlas,
        lesions,
        protocol=protocol,
        case=case.name,
        dose_spacing_mm=dose_spacing_mm,
        progress=prog,
    )
    written = write_case_outputs(
        comparison, out, ct_folder=ct_folder, copy_ct=ct_folder is not None, progress=prog
    )
    return comparison, written


@dataclass(frozen=True)
class _CaseJob:
    """Everything one case of a demo run needs (handed to a forked worker by name).

    ``tmp`` is the run's temporary output folder, ``out_dir`` its final place, ``ct``
    the CT series written once for all cases; ``parallel`` says the cases run in
    worker processes (their messages then carry the case name).
    """

    case: Case
    atlas: Atlas
    protocol: Protocol
    dose_spacing_mm: float
    tmp: Path
    out_dir: Path
    ct: Path
    progress: Progress
    parallel: bool


#: The jobs of the demo run in progress, by case name: set in the parent just before the
#: worker pool is forked (a forked worker sees them without pickling the atlas), cleared
#: when the run ends.
_JOBS: dict[str, _CaseJob] = {}

#: What a case job sends back: its summary, and its steps' wall and CPU times (s).
_JobResult = tuple[CaseSummary, list[tuple[str, float]], list[tuple[str, float]]]


def _case_job(name: str) -> _JobResult:
    """Run one case (in the parent or a forked worker): summary, wall and CPU step times."""
    job = _JOBS[name]
    prog = job.progress.child(f"[{name}] ") if job.parallel else job.progress
    n_before, n_cpu_before = len(prog.timings), len(prog.cpu_timings)
    t0 = time.perf_counter()
    folder = job.tmp / name
    with prog.step(f"case {name}"):
        comparison, _ = run_case(
            job.case,
            job.atlas,
            folder,
            protocol=job.protocol,
            dose_spacing_mm=job.dose_spacing_mm,
            ct_folder=job.ct,
            progress=prog,
        )
    summary = CaseSummary(
        name=name,
        stage="" if comparison.stage is None else comparison.stage.string,
        options=list(comparison.options),
        seconds=time.perf_counter() - t0,
        bytes_written=_folder_bytes(folder),
        folder=job.out_dir / name,
    )
    return summary, prog.timings[n_before:], prog.cpu_timings[n_cpu_before:]


#: prctl(2) option: the signal a process gets when the thread that forked it ends (Linux).
_PR_SET_PDEATHSIG = 1


def _worker_init(parent_pid: int) -> None:
    """Set up a forked worker: it dies with the parent, and leaves signals to it.

    Ctrl-C (SIGINT, sent to the whole process group) is ignored: the parent stops the
    pool. SIGTERM, which the pool sends to stop its workers, ends a worker at once and
    quietly (not the parent's handler, which the fork copied). When the parent is killed
    (SIGKILL), the kernel kills the worker (``PR_SET_PDEATHSIG``), so no orphan writes on
    into the abandoned output folder or prints broken-pipe tracebacks.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """Have this process killed when ``parent_pid`` ends (prctl, else a watching thread)."""
    if not _set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the call above
        os._exit(1)


def _set_parent_death_signal() -> bool:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``; False where it cannot be set."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)
    except (OSError, AttributeError):  # no C library to ask, or no prctl in it
        return False


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Kill this process once its parent is no longer ``parent_pid`` (polled)."""
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os.kill(os.getpid(), signal.SIGKILL)


def _preload() -> None:
    """Import what the cases load on first use once, before the workers are forked."""
    import rtplan.report  # noqa: F401

    with contextlib.suppress(ImportError):  # rt-utils (opencv) is imported on use
        import rt_utils  # noqa: F401


def _can_fork() -> bool:
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


def _default_jobs(n_cases: int) -> int:
    if not _can_fork():
        return 1
    return max(1, min(2, os.cpu_count() or 1, n_cases))


def _disk_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _case_names(cases: Sequence[str] | None) -> list[str]:
    """The demo cases to run, by their canonical names, each once, in the order given."""
    wanted = list(cases) if cases else list(DEMO_CASE_NAMES)
    lookup = {n.lower(): n for n in DEMO_CASE_NAMES}
    unknown = [c for c in wanted if c.lower() not in lookup]
    if unknown:
        raise InvalidInputError(
            f"unknown demo case {', '.join(map(repr, unknown))}; the cases are "
            f"{', '.join(DEMO_CASE_NAMES)}"
        )
    return list(dict.fromkeys(lookup[c.lower()] for c in wanted))


def _worker_count(jobs: int | None, n_cases: int, prog: Progress) -> int:
    """Worker processes for ``n_cases`` cases (1: the cases run in this process)."""
    if jobs is not None and (int(jobs) != jobs or jobs < 1):
        raise InvalidInputError(f"jobs must be a positive integer, got {jobs!r}")
    n_jobs = _default_jobs(n_cases) if jobs is None else min(int(jobs), n_cases)
    if type(prog) is not Progress or not _can_fork():
        return 1  # a callback cannot be called from worker processes; no fork: serial
    return n_jobs


def _demo_ct(atlas: Atlas, folder: Path) -> Path:
    """The demo patient's CT series, written once for all cases."""
    return write_ct_series(
        atlas.ct_hu,
        atlas.grid,
        folder,
        patient_name="RTPLAN^DEMO",
        patient_id="RTPLAN-DEMO",
        series_description=f"rtplan demo {atlas.name}"[:64],
    )


def _run_jobs(names: Sequence[str], n_jobs: int) -> list[_JobResult]:
    """Run the cases of :data:`_JOBS` named ``names``, in ``n_jobs`` forked workers."""
    if n_jobs == 1:
        return [_case_job(name) for name in names]
    _preload()
    pool = multiprocessing.get_context("fork").Pool(
        n_jobs, initializer=_worker_init, initargs=(os.getpid(),)
    )
    with pool:
        return pool.map(_case_job, names, chunksize=1)


def _spacing_of(spacing_mm: Sequence[float] | None) -> Vec3 | None:
    """``spacing_mm`` as three floats (None stays None: the atlas's default grid)."""
    if spacing_mm is None:
        return None
    z_mm, y_mm, x_mm = (float(s) for s in spacing_mm)
    return (z_mm, y_mm, x_mm)


#: Options every demo case compares at least (the estimate before the cases are staged).
_MIN_OPTIONS = 2


def _check_demo_memory(spacing: Vec3 | None, dose_spacing_mm: float, jobs: int) -> None:
    """Refuse a demo run whose grids need more memory than is available, before any work.

    The dose grid is taken over the whole atlas grid (an upper bound of the Body's box);
    each case checks again with its own options (:func:`plan_case`).
    """
    shape, used = shipped_atlas_grid(DEMO_ATLAS, spacing)
    extent = [n * s for n, s in zip(shape, used)]
    n_dose = dose_voxels(extent, dose_spacing_mm) if positive_real(dose_spacing_mm) else 0
    check_memory(
        demo_bytes(math.prod(shape), n_dose, _MIN_OPTIONS, jobs),
        f"the demo on a {' x '.join(f'{s:g}' for s in used)} mm CT grid "
        f"({' x '.join(map(str, shape))} voxels) with a {dose_spacing_mm:g} mm dose grid and "
        f"{jobs} worker process(es)",
        advice="a coarser CT grid (spacing), a coarser dose grid or fewer workers needs less",
    )


def run_demo(
    out_dir: str | os.PathLike[str] = "rtplan-demo",
    *,
    spacing_mm: Sequence[float] | None = None,
    cases: Sequence[str] | None = None,
    protocol: str | Path | Protocol = "nrg_salvage",
    dose_spacing_mm: float = 2.5,
    jobs: int | None = None,
    force: bool = False,
    progress: Progress | ProgressLike | bool | None = None,
) -> DemoSummary:
    """Run the demo cases end to end and write their outputs under ``out_dir``.

    The atlas is built once (at its default grid unless ``spacing_mm`` is given), its CT
    series written once and hard-linked into every case folder (one demo patient, four
    scenarios), and the cases run in ``jobs`` worker processes.

    Parameters
    ----------
    out_dir : path
        Output folder; ``out_dir/<case>/`` per case. Written into a temporary sibling
        folder and renamed at the end (nothing is left behind on failure).
    spacing_mm : (z, y, x) mm, optional
        Grid of the atlas (default: its own default grid). Coarser is faster.
    cases : sequence of str, optional
        Names from :data:`DEMO_CASE_NAMES` (default all four).
    protocol : str or path or Protocol
        Protocol of the options (default ``"nrg_salvage"``).
    dose_spacing_mm : float
        Cubic dose-grid voxel size, mm (default 2.5).
    jobs : int, optional
        Worker processes (forked; Linux only). Default: 2 where the machine has two or
        more cores (a tool default sized for a 2-core machine), else 1. A callable
        ``progress`` forces 1.
    force : bool
        Replace an existing non-empty ``out_dir``.
    progress : Progress, callable or bool, optional
        Progress reporting; default: shown on a terminal (stderr), silent otherwise.

    Returns
    -------
    DemoSummary
        Stages, options, times and sizes per case.

    Raises
    ------
    ValueError
        On an unknown case name or ``jobs`` < 1.
    RtplanError
        If ``out_dir`` exists and is not empty (without ``force``), or a step fails.
    rtplan._memory.MemoryLimitError
        When the grids need more memory than is available (checked before any work; an
        :class:`~rtplan.errors.InvalidInputError`).
    """
    wanted = _case_names(cases)
    prog = as_progress(progress)
    n_jobs = _worker_count(jobs, len(wanted), prog)
    spacing = _spacing_of(spacing_mm)
    _check_demo_memory(spacing, dose_spacing_mm, n_jobs)
    t0 = time.perf_counter()
    summary = DemoSummary(out_dir=Path(out_dir))
    proto = load_protocol(protocol)
    with staged_output(out_dir, force=force) as tmp:
        with prog.step("building atlas"):
            atlas = load_atlas(DEMO_ATLAS, spacing_mm=spacing)
        with prog.step("placing demo lesions"):
            all_cases = {c.name: c for c in demo_cases(atlas)}
        with prog.step("writing CT series"):
            ct = _demo_ct(atlas, tmp / ".ct")
        for name in wanted:
            _JOBS[name] = _CaseJob(
                case=all_cases[name],
                atlas=atlas,
                protocol=proto,
                dose_spacing_mm=dose_spacing_mm,
                tmp=tmp,
                out_dir=Path(out_dir),
                ct=ct,
                progress=prog,
                parallel=n_jobs > 1,
            )
        try:
            results = _run_jobs(wanted, n_jobs)
        finally:
            _JOBS.clear()
        shutil.rmtree(ct)
        summary.disk_bytes = _disk_bytes(tmp)
        for case_summary, timings, cpu_timings in results:
            summary.cases.append(case_summary)
            if n_jobs > 1:
                prog.timings.extend(timings)
                prog.cpu_timings.extend(cpu_timings)
    summary.seconds = time.perf_counter() - t0
    summary.timings = list(prog.timings)
    summary.cpu_timings = list(prog.cpu_timings)
    summary.jobs = n_jobs
    return summary
