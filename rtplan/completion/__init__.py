"""Anatomy completion: what a clinical structure set lacks, derived from the CT and the atlas.

A clinical prostate structure set has the organs at risk (bladder, rectum, femoral heads,
bowel, penile bulb, body) but not the bones, vessels, muscles and landmarks that the
target volumes and the staging need. This package derives them:

* :mod:`~rtplan.completion.bones`: the body and the bones from CT numbers, named by the
  registered atlas and by shape rules (pieces, stacked levels, left and right);
* :mod:`~rtplan.completion.registration`: the shipped atlas registered to the patient
  with SimpleITK (rigid, affine, deformable on the CT and the organs both have);
* :mod:`~rtplan.completion.split`: a given label holding two segments (TotalSegmentator's
  common+external iliac vessels) shared out between them at the registered bifurcation;
* :mod:`~rtplan.completion.landmarks`: atlas landmarks carried with the patient's own
  structures of their variation group (the pelvic floor's with the penile bulb);
* :mod:`~rtplan.completion.core`: the steps together (:func:`complete_structures`).

The entry point for users is :func:`rtplan.atlas.complete_anatomy` (an
:class:`~rtplan.atlas.Atlas` in, a completed one out), also reached through
``atlas_from_dicom(..., complete=True)``. Everything derived is marked
(:attr:`rtplan.structures.Structure.derivation`, :attr:`rtplan.atlas.Atlas.landmark_derivations`).
"""

from rtplan.completion.bones import (
    BoneLabels,
    BoneRules,
    body_from_ct,
    bone_mask_from_ct,
    label_bones,
    levels_between,
)
from rtplan.completion.core import (
    BONE_NAMES,
    AnatomyLike,
    CompletionResult,
    CompletionSettings,
    complete_structures,
    structures_to_derive,
)
from rtplan.completion.registration import Registration, RegistrationSettings, Volume, register

__all__ = [
    "BONE_NAMES",
    "AnatomyLike",
    "BoneLabels",
    "BoneRules",
    "CompletionResult",
    "CompletionSettings",
    "Registration",
    "RegistrationSettings",
    "Volume",
    "body_from_ct",
    "bone_mask_from_ct",
    "complete_structures",
    "label_bones",
    "levels_between",
    "register",
    "structures_to_derive",
]
