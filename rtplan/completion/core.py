"""Anatomy completion: the structures a patient's set lacks, derived and marked.

:func:`complete_structures` is the engine behind :func:`rtplan.atlas.complete_anatomy`
(which builds the reference atlas, places the landmarks and returns an
:class:`~rtplan.atlas.Atlas`). Given the patient's CT and structures and the shipped
atlas on two grids (a coarse one to register, a fine one to carry structures over):

1. the body, when the user has none, from the CT (:func:`~rtplan.completion.bones.body_from_ct`);
2. the atlas registered to the patient (:func:`~rtplan.completion.registration.register`:
   rigid, affine, then deformable on the CT with the organs both sets have);
3. bones from the CT (:func:`~rtplan.completion.bones.bone_mask_from_ct`), named by the
   registered atlas bones and shape rules (:func:`~rtplan.completion.bones.label_bones`),
   the sacrum split into stacked levels S1-S3;
4. every other missing structure (vessels, muscles, pelvic-floor organs, the
   prostate-bed region) carried over from the atlas, kept inside the body and out of the
   bones and of every structure the user gave;
5. the atlas landmarks carried to the patient (the caller decides which to use).

A user label that holds two segments (``combined``: TotalSegmentator's common+external
iliac vessels) is shared out between them at the registered atlas's bifurcation
(:func:`~rtplan.completion.split.split_label`); every voxel the user gave is kept.

User structures always win: they are returned unchanged, and no derived structure
overlaps them. Every derived structure carries its :attr:`~rtplan.structures.Structure.derivation`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from rtplan._progress import Progress
from rtplan._typing import BoolMask, FloatArray, Vec3
from rtplan.completion.bones import (
    BoneLabels,
    BoneRules,
    body_from_ct,
    bone_mask_from_ct,
    label_bones,
    levels_between,
)
from rtplan.completion.registration import (
    Registration,
    RegistrationSettings,
    Volume,
    register,
)
from rtplan.completion.split import split_label
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

__all__ = [
    "BONE_NAMES",
    "DERIVATION_BODY",
    "DERIVATION_BONE",
    "DERIVATION_REGISTRATION",
    "DERIVATION_SPLIT",
    "AnatomyLike",
    "CompletionResult",
    "CompletionSettings",
    "complete_structures",
    "structures_to_derive",
]

#: Bones the completion derives from the CT (TG-263), in the order they are named.
BONE_NAMES: tuple[str, ...] = (
    "VB_L4",
    "VB_L5",
    "Sacrum",
    "Coccyx",
    "PubicSymphys",
    "Bone_Ilium_L",
    "Bone_Ilium_R",
    "Bone_Ischium_L",
    "Bone_Ischium_R",
    "Femur_Head_L",
    "Femur_Head_R",
)
#: Sacral levels: stacked slabs inside the sacrum.
_SACRAL_LEVELS: tuple[str, ...] = ("VB_S1", "VB_S2", "VB_S3")
#: The rest of the sacrum (S4-S5) while the levels are named.
_SACRUM_REST = "Sacrum"

#: A structure is not derived when the user has one of these instead (the same space
#: drawn another way): bowel loops instead of the bowel bag, a colon instead of the sigmoid.
_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "Spc_Bowel": ("Bowel", "Bowel_Small", "Bowel_Large", "Colon"),
    "Colon_Sigmoid": ("Colon", "Bowel_Large"),
    "Bone_Ilium_L": ("Bone_Pelvic",),
    "Bone_Ilium_R": ("Bone_Pelvic",),
    "Bone_Ischium_L": ("Bone_Pelvic",),
    "Bone_Ischium_R": ("Bone_Pelvic",),
}

#: Derivation texts (ROIGenerationDescription: at most 48 characters after the prefix).
DERIVATION_BODY = "CT above -400 HU, largest piece, holes filled"
DERIVATION_BONE = "CT bone (HU) named by registered atlas + rules"
DERIVATION_REGISTRATION = "atlas structure, rigid+affine+deformable reg."
DERIVATION_SPLIT = "given CI+EI label split at derived bifurcation"


class AnatomyLike(Protocol):
    """What completion reads of an anatomy (an :class:`rtplan.atlas.Atlas` is one)."""

    @property
    def grid(self) -> ImageGrid:
        """Identity-direction grid of the CT and the structures."""

    @property
    def ct_hu(self) -> npt.NDArray[np.float32]:
        """CT numbers (HU), shape ``grid.shape``."""

    @property
    def structures(self) -> StructureSet:
        """TG-263 structures on ``grid``."""

    @property
    def landmarks(self) -> Mapping[str, Vec3]:
        """Named points (LPS mm)."""


@dataclass(frozen=True)
class CompletionSettings:
    """Parameters of anatomy completion (tool defaults).

    Attributes
    ----------
    registration : RegistrationSettings
        The registration stages.
    bones : BoneRules
        Bone thresholds and shape rules.
    warp_margin_mm : float
        Room left for the deformation around each carried structure's box (mm).
    """

    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    bones: BoneRules = field(default_factory=BoneRules)
    warp_margin_mm: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.registration, RegistrationSettings):
            raise TypeError("registration must be a RegistrationSettings")
        if not isinstance(self.bones, BoneRules):
            raise TypeError("bones must be a BoneRules")
        if not self.warp_margin_mm >= 0:
            raise InvalidInputError(f"warp_margin_mm must be >= 0, got {self.warp_margin_mm!r}")


@dataclass(frozen=True)
class CompletionResult:
    """What :func:`complete_structures` derived.

    Attributes
    ----------
    structures : StructureSet
        The user's structures (unchanged, in their order) then the derived ones.
    derived : dict of str to str
        Derived structure name -> how it was derived.
    atlas_landmarks : dict of str to (x, y, z)
        The reference atlas's landmarks carried to the patient (LPS mm).
    registration : Registration
        The transform and its record (metrics, stage times).
    seconds : dict of str to float
        Wall-clock time of each step.
    """

    structures: StructureSet
    derived: dict[str, str]
    atlas_landmarks: dict[str, Vec3]
    registration: Registration
    seconds: dict[str, float]


def structures_to_derive(structures: StructureSet, wanted: Sequence[str]) -> list[str]:
    """The names of ``wanted`` the user's set lacks (absent or empty, no alternative).

    Examples
    --------
    >>> g = ImageGrid(shape=(2, 2, 2), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> ss = StructureSet([Structure("Bowel_Small", np.ones(g.shape, bool), g)])
    >>> structures_to_derive(ss, ["Spc_Bowel", "Rectum"])
    ['Rectum']
    """

    def has(name: str) -> bool:
        return name in structures and not structures[name].is_empty

    return [n for n in wanted if not has(n) and not any(has(a) for a in _ALTERNATIVES.get(n, ()))]


# ====================================================================== the steps
def _given_or_derived_body(
    patient: AnatomyLike, rules: BoneRules
) -> tuple[BoolMask, Structure | None]:
    """The body mask: the user's ``Body``, else one derived from the CT (also returned)."""
    ss = patient.structures
    if "Body" in ss and not ss["Body"].is_empty:
        return ss["Body"].mask, None
    body = body_from_ct(patient.ct_hu, patient.grid, threshold_hu=rules.body_threshold_hu)
    if not body.any():
        raise InvalidInputError(
            f"the CT has no voxel above {rules.body_threshold_hu} HU: no patient to complete"
        )
    return body, Structure("Body", body, patient.grid, role="external", derivation=DERIVATION_BODY)


def _organs(ss: StructureSet, names: Sequence[str]) -> dict[str, Structure]:
    """Organs offered to the deformable stage: non-empty, role organ, not the body."""
    out = {}
    for n in names:
        key = ss.resolve(n)
        if key is not None and ss[key].role == "organ" and not ss[key].is_empty and n != "Body":
            out[n] = ss[key]
    return out


def _volume(anatomy: AnatomyLike, body: BoolMask, organs: Mapping[str, Structure]) -> Volume:
    return Volume(
        ct_hu=np.asarray(anatomy.ct_hu, np.float32), grid=anatomy.grid, body=body, organs=organs
    )


def _warp(
    reg: Registration, s: Structure, grid: ImageGrid, margin_mm: float, derivation: str
) -> Structure:
    """The reference structure ``s`` on the patient grid (possibly empty)."""
    warped = reg.warp_mask(s, grid, margin_mm=margin_mm)
    if warped is None:
        return Structure(
            s.name, np.zeros(grid.shape, bool), grid, role=s.role, derivation=derivation
        )
    local, offset = warped
    return Structure.from_cropped(s.name, local, offset, grid, role=s.role, derivation=derivation)


def _bone_candidates(
    reference: AnatomyLike, reg: Registration, grid: ImageGrid, margin_mm: float
) -> dict[str, Structure]:
    """The reference bones carried to the patient: exclusive classes, sacral levels first.

    The sacrum is offered as its levels S1-S3 and the rest of it, so that the sacral
    levels can be told apart afterwards.
    """
    ref = reference.structures
    out: dict[str, Structure] = {}
    level_union = np.zeros(reference.grid.shape, bool)
    for name in _SACRAL_LEVELS:
        if name in ref and not ref[name].is_empty:
            out[name] = _warp(reg, ref[name], grid, margin_mm, DERIVATION_BONE)
            level_union |= ref[name].mask
    for name in BONE_NAMES:
        if name not in ref or ref[name].is_empty:
            continue
        s = ref[name]
        if name == "Sacrum" and level_union.any():
            s = Structure(name, s.mask & ~level_union, reference.grid, role=s.role)
        out[name] = _warp(reg, s, grid, margin_mm, DERIVATION_BONE)
    return out


def _midline_x(ss: StructureSet, body: BoolMask, grid: ImageGrid) -> float:
    """The midline (LPS x, mm): mean x of the midline bones present, else of the body."""
    xs = [ss[n].centroid_mm[0] for n in ("Sacrum", "PubicSymphys", "VB_L5") if n in ss]
    xs = [x for x in xs if np.isfinite(x)]
    if xs:
        return float(np.mean(xs))
    x_mm = grid.axis_coordinates_mm()[2]
    return float(np.mean(x_mm[body.any(axis=(0, 1))]))


def _structure_from_labels(
    labels: BoneLabels, name: str, grid: ImageGrid, derivation: str
) -> Structure:
    return Structure.from_cropped(
        name, labels.local(name), labels.offset, grid, derivation=derivation
    )


def _derive_bones(
    patient: AnatomyLike,
    reference: AnatomyLike,
    reg: Registration,
    body: BoolMask,
    wanted: Sequence[str],
    settings: CompletionSettings,
) -> list[Structure]:
    """The wanted bones, from the CT's bone voxels named by the registered atlas.

    The sacral levels are named inside the sacrum (the user's, or the derived one).
    """
    grid, ss = patient.grid, patient.structures
    bone = bone_mask_from_ct(patient.ct_hu, grid, body=body, rules=settings.bones)
    candidates = _bone_candidates(reference, reg, grid, settings.warp_margin_mm)
    given_bones = [*BONE_NAMES, *_SACRAL_LEVELS, "Bone_Pelvic"]
    fixed = {n: ss[n] for n in given_bones if n in ss and not ss[n].is_empty}
    labels = label_bones(
        bone,
        grid,
        candidates,
        fixed=fixed,
        midline_x_mm=_midline_x(ss, body, grid),
        rules=settings.bones,
    )
    out = [
        _structure_from_labels(labels, name, grid, DERIVATION_BONE)
        for name in wanted
        if name in BONE_NAMES and name != "Sacrum" and name in labels.names and name not in fixed
    ]
    sacrum = fixed.get("Sacrum")
    if sacrum is None:
        local = np.zeros(labels.labels.shape, bool)
        for n in (*_SACRAL_LEVELS, _SACRUM_REST):
            if n in labels.names:
                local |= labels.local(n)
        sacrum = Structure.from_cropped(
            "Sacrum", local, labels.offset, grid, derivation=DERIVATION_BONE
        )
        if "Sacrum" in wanted:
            out.append(sacrum)
    planes = _reference_levels(reference, [n for n in _SACRAL_LEVELS if n in wanted])
    levels = list(planes)
    if sacrum.bbox is not None and levels:
        split = _sacral_levels(sacrum, reg, planes)
        start = (sacrum.bbox[0].start, sacrum.bbox[1].start, sacrum.bbox[2].start)
        out += [
            Structure.from_cropped(n, split[n], start, grid, derivation=DERIVATION_BONE)
            for n in levels
        ]
    return out


def _reference_levels(
    reference: AnatomyLike, levels: Sequence[str]
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Each reference sacral level's bottom and top plane, as a point on its axis (LPS mm).

    The point is the level's centroid moved to the plane's z (slice edges).
    """
    ref = reference.structures
    out: dict[str, tuple[FloatArray, FloatArray]] = {}
    for n in levels:
        if n not in ref or ref[n].is_empty:
            continue
        x, y, _ = ref[n].centroid_mm
        z_lo, z_hi = ref[n].bounds_mm[2]
        out[n] = (np.array([x, y, z_lo]), np.array([x, y, z_hi]))
    return out


def _sacral_levels(
    sacrum: Structure,
    reg: Registration,
    planes: Mapping[str, tuple[FloatArray, FloatArray]],
) -> dict[str, BoolMask]:
    """The sacral levels inside the sacrum, on the sacrum's box: stacked axial slabs.

    The reference's level boundaries are carried to the patient by the registration (at
    the level's axis) and each slice of the sacrum goes to the level whose slab holds its
    centre (sub-slice boundaries, so no slice-by-slice vote).
    """
    assert sacrum.bbox is not None
    z_mm = sacrum.grid.crop(sacrum.bbox).axis_coordinates_mm()[0]
    names = list(planes)
    mapped = reg.map_points(np.array([p for n in names for p in planes[n]]))
    bounds = {
        n: (float(mapped[2 * i][2]), float(mapped[2 * i + 1][2])) for i, n in enumerate(names)
    }
    return levels_between(sacrum.cropped_mask, z_mm, bounds)


def _derive_soft_tissue(
    patient: AnatomyLike,
    reference: AnatomyLike,
    reg: Registration,
    body: BoolMask,
    wanted: Sequence[str],
    bones: Sequence[Structure],
    settings: CompletionSettings,
) -> list[Structure]:
    """The wanted non-bone structures carried over, inside the body, out of bone and user's."""
    grid, ss = patient.grid, patient.structures
    keep_out = np.zeros(grid.shape, bool)
    for s in [*bones, *(ss[n] for n in ss.names if n != "Body")]:
        if s.bbox is not None and s.role not in ("gtv", "ctv", "ptv"):
            keep_out[s.bbox] |= s.cropped_mask
    bone_ct = bone_mask_from_ct(patient.ct_hu, grid, body=body, rules=settings.bones)
    keep_out |= bone_ct
    out = []
    for name in wanted:
        if name in BONE_NAMES or name in _SACRAL_LEVELS or name == "Body":
            continue
        if name not in reference.structures or reference.structures[name].is_empty:
            continue
        warped = _warp(
            reg, reference.structures[name], grid, settings.warp_margin_mm, DERIVATION_REGISTRATION
        )
        if warped.bbox is None:
            out.append(warped)
            continue
        allowed = body[warped.bbox] & ~keep_out[warped.bbox]
        local = warped.cropped_mask & allowed
        start = (warped.bbox[0].start, warped.bbox[1].start, warped.bbox[2].start)
        out.append(
            Structure.from_cropped(
                name, local, start, grid, role=warped.role, derivation=DERIVATION_REGISTRATION
            )
        )
    return out


def _split_combined(
    patient: AnatomyLike,
    reference: AnatomyLike,
    reg: Registration,
    combined: Mapping[str, Sequence[str]],
    margin_mm: float,
) -> dict[str, Structure]:
    """The user's combined labels shared out between the segments they hold.

    ``combined`` maps a user structure to the segments it holds (itself first), e.g.
    ``A_Iliac_L -> (A_Iliac_L, A_Iliac_Ext_L)``; each of its voxels goes to the nearest
    segment of the registered atlas (:func:`~rtplan.completion.split.split_label`).
    Labels the user lacks, whose segments the reference lacks, or whose own segment
    would get nothing, are left alone.
    """
    grid, ss, ref = patient.grid, patient.structures, reference.structures
    out: dict[str, Structure] = {}
    for name, segments in combined.items():
        if name not in ss or ss[name].is_empty or any(n not in ref for n in segments):
            continue
        label = ss[name]
        assert label.bbox is not None
        parts = {n: _warp(reg, ref[n], grid, margin_mm, DERIVATION_SPLIT) for n in segments}
        shares = split_label(label, parts)
        if not shares[segments[0]].any():  # nothing of the label's own segment: keep it
            continue
        start = (label.bbox[0].start, label.bbox[1].start, label.bbox[2].start)
        for n, share in shares.items():
            out[n] = Structure.from_cropped(
                n, share, start, grid, role=label.role, derivation=DERIVATION_SPLIT
            )
    return out


#: Derived structures that lie inside a user structure by design (nested levels).
_NESTED_IN: dict[str, str] = {"VB_S1": "Sacrum", "VB_S2": "Sacrum", "VB_S3": "Sacrum"}


def _outside_user(derived: Sequence[Structure], ss: StructureSet) -> list[Structure]:
    """Derived structures minus the voxels of every user structure (but the body).

    User structures always win; only the sacral levels stay inside the user's sacrum.
    """
    users = [ss[n] for n in ss.names if n != "Body" and ss[n].role not in ("gtv", "ctv", "ptv")]
    out = []
    for d in derived:
        if d.bbox is None:
            out.append(d)
            continue
        local = d.cropped_mask.copy()
        for u in users:
            if u.bbox is None or _NESTED_IN.get(d.name) == u.name:
                continue
            lo = [max(a.start, b.start) for a, b in zip(d.bbox, u.bbox)]
            hi = [min(a.stop, b.stop) for a, b in zip(d.bbox, u.bbox)]
            if any(h <= lo_ for lo_, h in zip(lo, hi)):
                continue
            in_d = tuple(slice(a - b.start, c - b.start) for a, c, b in zip(lo, hi, d.bbox))
            in_u = tuple(slice(a - b.start, c - b.start) for a, c, b in zip(lo, hi, u.bbox))
            local[in_d] &= ~u.cropped_mask[in_u]
        start = (d.bbox[0].start, d.bbox[1].start, d.bbox[2].start)
        out.append(
            Structure.from_cropped(
                d.name, local, start, d.grid, role=d.role, derivation=d.derivation
            )
        )
    return out


def complete_structures(
    patient: AnatomyLike,
    reference: AnatomyLike,
    fine_reference: AnatomyLike,
    *,
    wanted: Sequence[str],
    settings: CompletionSettings | None = None,
    progress: Progress | None = None,
    combined: Mapping[str, Sequence[str]] | None = None,
) -> CompletionResult:
    """Derive the structures of ``wanted`` that the patient's set lacks.

    Parameters
    ----------
    patient : AnatomyLike
        The patient: CT (HU) and the user's structures on an identity-direction grid.
    reference : AnatomyLike
        The shipped atlas on the registration grid (about ``deformable_spacing_mm``).
    fine_reference : AnatomyLike
        The same atlas on a grid about as fine as the patient's: the source of the
        structures carried over (same frame as ``reference``).
    wanted : sequence of str
        TG-263 names the completed set should have.
    settings : CompletionSettings, optional
        Tool defaults when omitted.
    progress : Progress, optional
        Receives the steps.
    combined : mapping of str to sequence of str, optional
        User labels that hold several segments (itself first), e.g. TotalSegmentator's
        iliac artery read as ``A_Iliac_L`` holds ``("A_Iliac_L", "A_Iliac_Ext_L")``.
        Each voxel of such a label goes to the nearest segment of the registered atlas;
        the shares replace the label and the derived segments (marked
        :data:`DERIVATION_SPLIT`). Every voxel the user gave stays in one of them.

    Returns
    -------
    CompletionResult

    Raises
    ------
    InvalidInputError
        When the CT shows no patient, or a setting is invalid.
    GeometryError
        When a grid is not in the identity direction.
    """
    s = settings or CompletionSettings()
    p = progress or Progress(enabled=False)
    seconds: dict[str, float] = {}
    ss = patient.structures
    missing = structures_to_derive(ss, wanted)
    t0 = time.perf_counter()
    body, derived_body = _given_or_derived_body(patient, s.bones)
    seconds["body"] = time.perf_counter() - t0
    with p.step("registering the atlas to the patient (rigid, affine, deformable)"):
        t0 = time.perf_counter()
        organs = [n for n in ss.names if n in reference.structures]
        reg = register(
            _volume(patient, body, _organs(ss, organs)),
            _volume(
                reference, reference.structures["Body"].mask, _organs(reference.structures, organs)
            ),
            settings=s.registration,
        )
        seconds["registration"] = time.perf_counter() - t0
    with p.step("bones from the CT"):
        t0 = time.perf_counter()
        bones = _derive_bones(patient, fine_reference, reg, body, missing, s)
        seconds["bones"] = time.perf_counter() - t0
    with p.step("carrying the other structures over"):
        t0 = time.perf_counter()
        soft = _derive_soft_tissue(patient, fine_reference, reg, body, missing, bones, s)
        seconds["soft tissue"] = time.perf_counter() - t0
    split = _split_combined(patient, fine_reference, reg, combined or {}, s.warp_margin_mm)
    derived = [
        *([derived_body] if derived_body is not None and "Body" in missing else []),
        *_outside_user([*bones, *soft], ss),
    ]
    derived = [d for d in derived if not d.is_empty]
    by_name = {d.name: d for d in derived}
    by_name.update({n: d for n, d in split.items() if not d.is_empty and n not in ss})
    out = StructureSet([split.get(n, ss[n]) for n in ss.names], grid=patient.grid)
    for name in missing:
        if name in by_name:
            out.add(by_name[name])
    names = list(fine_reference.landmarks)
    mapped = (
        reg.map_points(np.array([fine_reference.landmarks[n] for n in names]))
        if names
        else np.zeros((0, 3))
    )
    atlas_landmarks: dict[str, Vec3] = {
        n: (float(q[0]), float(q[1]), float(q[2])) for n, q in zip(names, mapped)
    }
    return CompletionResult(
        structures=out,
        derived={n: out[n].derivation for n in out.names if out[n].derived},
        atlas_landmarks=atlas_landmarks,
        registration=reg,
        seconds=seconds,
    )
