"""Atlas landmarks carried with the patient's own structures of the same variation group.

The deformable registration carries an atlas landmark with the tissue around it. A
landmark in soft tissue that the CT barely shows (the vesico-urethral anastomosis, the
cut end of the vas deferens) then follows the bladder and rectum around it, although in
the atlas's variation model (:attr:`rtplan.atlas.Atlas.variation_groups`) it moves with
its own group, the pelvic floor, whose only member a clinical set usually has is the
penile bulb. When the patient's set has structures of the landmark's group, the landmark
is carried with them instead: the rigid and affine part of the registration (the
patient's overall size, posture and table position) places the atlas landmark, and the
mean displacement of the group's given structures beyond that part (centroid of the
patient's structure minus the affinely carried centroid of the atlas's) moves it::

    p_patient = A(p_atlas) + mean over s [ c_patient(s) - A(c_atlas(s)) ]

Groups holding bones are left to the registration: the CT shows the bones, and the
registration follows them. A structure cut by the scan's edge is not used (its centroid
is not the structure's).

This is exact for the atlas's own variants, whose groups move rigidly; in real patients
the pelvic floor does not move as one block, so the landmarks remain estimates to review.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rtplan._typing import Vec3
from rtplan.completion.core import BONE_NAMES
from rtplan.completion.registration import Registration
from rtplan.structures import Structure, StructureSet

__all__ = ["carry_with_group", "group_anchors"]

#: Structures the CT shows by itself: a group holding one is left to the registration.
_CT_VISIBLE: frozenset[str] = frozenset({*BONE_NAMES, "VB_S1", "VB_S2", "VB_S3"})


def group_anchors(
    groups: Mapping[str, str], landmarks: Iterable[str], given: Iterable[str]
) -> dict[str, tuple[str, ...]]:
    """For each landmark, the given structures of its variation group.

    Parameters
    ----------
    groups : mapping of str to str
        Variation group of each structure and landmark of the reference atlas
        (:attr:`rtplan.atlas.Atlas.variation_groups`).
    landmarks : iterable of str
        The landmarks to place.
    given : iterable of str
        TG-263 names of the structures the patient's set has (given, not derived).

    Returns
    -------
    dict of str to tuple of str
        Only landmarks whose group has given structures and no bone.

    Examples
    --------
    >>> groups = {"PenileBulb": "pf", "VUA": "pf", "Femur_Head_L": "bones", "S3_Bottom": "bones"}
    >>> group_anchors(groups, ["VUA", "S3_Bottom"], ["PenileBulb", "Femur_Head_L"])
    {'VUA': ('PenileBulb',)}
    """
    given_set = set(given)
    members: dict[str, list[str]] = {}
    for name, group in groups.items():
        members.setdefault(group, []).append(name)
    out: dict[str, tuple[str, ...]] = {}
    for key in landmarks:
        if key not in groups or any(m in _CT_VISIBLE for m in members[groups[key]]):
            continue
        group = groups[key]
        anchors = tuple(m for m in members[group] if m in given_set and m != key)
        if anchors:
            out[key] = anchors
    return out


def _cut_by_scan(s: Structure) -> bool:
    """True when the structure reaches the first or last slice (its centroid is biased)."""
    assert s.bbox is not None
    return int(s.bbox[0].start) == 0 or int(s.bbox[0].stop) == s.grid.shape[0]


def carry_with_group(
    reg: Registration,
    reference: StructureSet,
    reference_points: Mapping[str, Vec3],
    patient: StructureSet,
    anchors: Mapping[str, Sequence[str]],
) -> dict[str, tuple[Vec3, tuple[str, ...]]]:
    """Reference landmarks carried with the patient's structures of their group.

    Parameters
    ----------
    reg : Registration
        The atlas registered to the patient.
    reference : StructureSet
        The atlas's structures (the frame of ``reference_points``).
    reference_points : mapping of str to (x, y, z)
        The atlas's landmarks (LPS mm).
    patient : StructureSet
        The patient's structures (the anchors are looked up by TG-263 name).
    anchors : mapping of str to sequence of str
        Landmark -> the structures that carry it (:func:`group_anchors`).

    Returns
    -------
    dict of str to ((x, y, z), tuple of str)
        Each landmark carried (patient LPS mm) and the structures used. A landmark is
        left out when none of its anchors is usable (absent or empty in either set, or
        cut by the patient scan's edge).
    """
    out: dict[str, tuple[Vec3, tuple[str, ...]]] = {}
    for key, names in anchors.items():
        if key not in reference_points:
            continue
        used = [
            n
            for n in names
            if n in patient
            and n in reference
            and not patient[n].is_empty
            and not reference[n].is_empty
            and not _cut_by_scan(patient[n])
        ]
        if not used:
            continue
        atlas_centroids = reg.map_points_linear([reference[n].centroid_mm for n in used])
        patient_centroids = np.array([patient[n].centroid_mm for n in used])
        shift = (patient_centroids - atlas_centroids).mean(axis=0)
        p = reg.map_points_linear([reference_points[key]])[0] + shift
        out[key] = ((float(p[0]), float(p[1]), float(p[2])), tuple(used))
    return out
