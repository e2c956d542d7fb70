"""Test-data generator: "clinical" DICOM cases made from variants of the shipped atlas.

A clinical prostate structure set holds the organs at risk and the body, not the bones,
vessels, muscles and landmarks that rtplan's targets and staging need. This module writes
such cases from atlas variants (no patient data), so that anatomy completion can be
tested against the full truth:

* the CT of the variant made to look more like a scanner's: blurred by a Gaussian point
  spread (about 1.2 mm FWHM in-plane, tool default), with added noise and a couch under
  the patient, written as a DICOM CT series;
* patient coordinates moved by a table offset (scanners put z = 0 anywhere);
* only the clinical subset of structures (:data:`CLINICAL_SUBSET`), under the spellings
  of one of the vendor-style templates (:data:`VENDOR_NAMES`), in an RTSTRUCT without
  landmarks.

:func:`write_clinical_case` returns the folder and the *truth*: the full variant (every
structure and landmark) in the case's coordinates. :data:`BENCHMARK_VARIANTS` lists the
atlas and the variants the completion benchmark runs (random seeds and the extremes of
scale and filling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from rtplan.atlas import Atlas, load_atlas
from rtplan.dicom_io import write_rtstruct
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

#: What a clinical post-prostatectomy structure set usually holds (TG-263 names).
CLINICAL_SUBSET: tuple[str, ...] = (
    "Body",
    "Bladder",
    "Rectum",
    "Femur_Head_L",
    "Femur_Head_R",
    "Spc_Bowel",
    "PenileBulb",
)

#: Spellings in the style of common planning-system templates (TG-263 -> ROI name). They
#: are examples of what clinics send, not any vendor's documented defaults.
VENDOR_NAMES: dict[str, dict[str, str]] = {
    "eclipse": {
        "Body": "BODY",
        "Bladder": "Bladder",
        "Rectum": "Rectum",
        "Femur_Head_L": "Femur_Head_L",
        "Femur_Head_R": "Femur_Head_R",
        "Spc_Bowel": "Bowel_Bag",
        "PenileBulb": "PenileBulb",
        "Sacrum": "Sacrum",
    },
    "raystation": {
        "Body": "External",
        "Bladder": "Bladder",
        "Rectum": "Rectum",
        "Femur_Head_L": "FemoralHead_L",
        "Femur_Head_R": "FemoralHead_R",
        "Spc_Bowel": "BowelBag",
        "PenileBulb": "Penile_Bulb",
        "Sacrum": "Sacrum",
    },
    "monaco": {
        "Body": "Patient",
        "Bladder": "BLADDER",
        "Rectum": "RECTUM",
        "Femur_Head_L": "Femoral Head Lt",
        "Femur_Head_R": "Femoral Head Rt",
        "Spc_Bowel": "Bowel Space",
        "PenileBulb": "Penile Bulb",
        "Sacrum": "SACRUM",
    },
    "pinnacle": {
        "Body": "Patient Outline",
        "Bladder": "bladder",
        "Rectum": "rectum",
        "Femur_Head_L": "Fem_Head_L",
        "Femur_Head_R": "Fem_Head_R",
        "Spc_Bowel": "bowel bag",
        "PenileBulb": "Bulb_Penis",
        "Sacrum": "sacrum",
    },
}

#: Couch under the patient: HU and thickness (mm); carbon-fibre couches are a few
#: hundred HU below water (tool default).
_COUCH_HU = -300.0
_COUCH_MM = 12.0


@dataclass(frozen=True)
class Variant:
    """Parameters of one atlas variant (see :func:`rtplan.atlas.load_atlas`)."""

    label: str
    seed: int | None = None
    scale: float | tuple[float, float, float] = 1.0
    bladder_filling: float = 1.0
    rectal_filling: float = 1.0
    vendor: str = "eclipse"
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


#: The atlas and ten variants: random seeds and the extremes of scale and filling.
BENCHMARK_VARIANTS: tuple[Variant, ...] = (
    Variant("atlas"),
    Variant("seed1", seed=1, vendor="raystation", shift_mm=(3.0, -160.0, -610.0)),
    Variant("seed2", seed=2, vendor="monaco", shift_mm=(-8.0, 40.0, 245.0)),
    Variant("seed3", seed=3, vendor="pinnacle"),
    Variant("seed4", seed=4, vendor="raystation", shift_mm=(0.0, 0.0, -1200.0)),
    Variant("seed5", seed=5, vendor="monaco"),
    Variant("small", scale=0.85, vendor="pinnacle", shift_mm=(5.0, -150.0, -400.0)),
    Variant("large", scale=1.2, vendor="eclipse"),
    Variant("empty_bladder", seed=6, bladder_filling=0.35, rectal_filling=0.5),
    Variant("full_bladder", seed=7, bladder_filling=2.2, vendor="raystation"),
    Variant("full_rectum", seed=9, rectal_filling=2.0, scale=(1.1, 0.95, 1.05), vendor="monaco"),
)


def seeded_variant(seed: int) -> Variant:
    """A random variant of the atlas for ``seed``, with a vendor and table offset of its own.

    For checks beyond :data:`BENCHMARK_VARIANTS` (whose seeds are 1-7 and 9): the vendor
    spellings cycle with the seed and the table offset is drawn from it.

    Examples
    --------
    >>> v = seeded_variant(12)
    >>> v.label, v.seed, v.vendor in VENDOR_NAMES
    ('seed12', 12, True)
    """
    rng = np.random.default_rng(seed)
    offset = rng.uniform(-300.0, 300.0, 3).round(1)
    return Variant(
        f"seed{seed}",
        seed=seed,
        vendor=sorted(VENDOR_NAMES)[seed % len(VENDOR_NAMES)],
        shift_mm=(float(offset[0]), float(offset[1]), float(offset[2])),
    )


@dataclass(frozen=True)
class ClinicalCase:
    """A written case and its truth.

    Attributes
    ----------
    folder : Path
        Holds ``CT/`` (the series) and ``RS.dcm`` (the clinical structure set).
    truth : Atlas
        The full variant in the case's coordinates (every structure and landmark).
    names : dict of str to str
        TG-263 name -> ROI name written.
    """

    folder: Path
    truth: Atlas
    names: dict[str, str] = field(default_factory=dict)


def shifted(atlas: Atlas, shift_mm: Sequence[float]) -> Atlas:
    """The same anatomy with patient coordinates moved by ``shift_mm`` (x, y, z)."""
    dx, dy, dz = (float(v) for v in shift_mm)
    g = atlas.grid
    grid = ImageGrid(
        g.shape, g.spacing_mm, (g.origin_mm[0] + dx, g.origin_mm[1] + dy, g.origin_mm[2] + dz)
    )
    structures = StructureSet(grid=grid)
    for s in atlas.structures.values():
        if s.bbox is None:
            continue
        offset = (s.bbox[0].start, s.bbox[1].start, s.bbox[2].start)
        structures.add(Structure.from_cropped(s.name, s.cropped_mask, offset, grid, role=s.role))
    landmarks = {k: (p[0] + dx, p[1] + dy, p[2] + dz) for k, p in atlas.landmarks.items()}
    return Atlas(
        name=atlas.name,
        grid=grid,
        ct_hu=atlas.ct_hu,
        structures=structures,
        landmarks=landmarks,
        source=atlas.source,
        parameters=dict(atlas.parameters),
    )


def scanner_ct(atlas: Atlas, *, seed: int = 0, noise_hu: float = 12.0) -> np.ndarray:
    """The atlas CT blurred by a scanner-like point spread, with a couch and noise (HU)."""
    sz, sy, sx = atlas.grid.spacing_mm
    fwhm_mm = np.array([max(sz, 2.0), 1.2, 1.2])  # slice profile, in-plane PSF (tool default)
    sigma_vox = fwhm_mm / 2.355 / np.array([sz, sy, sx])
    ct = ndimage.gaussian_filter(atlas.ct_hu.astype(np.float32), sigma_vox)
    body = atlas.structures["Body"]
    y_mm = atlas.grid.axis_coordinates_mm()[1]
    y_back = body.bounds_mm[1][1] + 5.0
    couch = (y_mm >= y_back) & (y_mm <= y_back + _COUCH_MM)
    ct[:, couch, :] = np.maximum(ct[:, couch, :], _COUCH_HU)
    rng = np.random.default_rng(seed)
    ct += rng.normal(0.0, noise_hu, ct.shape).astype(np.float32)
    return np.clip(ct, -1024.0, 3071.0)


def build_truth(variant: Variant, *, spacing_mm: Sequence[float] | None = None) -> Atlas:
    """The full variant (every structure and landmark) in the case's coordinates."""
    atlas = load_atlas(
        "male_pelvis_postop",
        spacing_mm=spacing_mm,
        seed=variant.seed,
        scale=variant.scale,
        bladder_filling=variant.bladder_filling,
        rectal_filling=variant.rectal_filling,
    )
    return shifted(atlas, variant.shift_mm)


def write_clinical_case(
    folder: Path,
    variant: Variant,
    *,
    spacing_mm: Sequence[float] | None = None,
    subset: Sequence[str] = CLINICAL_SUBSET,
    truth: Atlas | None = None,
) -> ClinicalCase:
    """Write one clinical case: a scanner-like CT and the clinical structure subset.

    Parameters
    ----------
    folder : Path
        Output folder (created; ``CT/`` and ``RS.dcm`` go inside).
    variant : Variant
        The atlas variant, vendor spellings and table offset.
    spacing_mm : (sz, sy, sx), optional
        Voxel size; default the atlas's (512 x 512, 2.5 mm slices).
    subset : sequence of str
        TG-263 names of the structures written (each must have a vendor spelling).
    truth : Atlas, optional
        The variant already built by :func:`build_truth` (saves building it again).
    """
    truth = truth if truth is not None else build_truth(variant, spacing_mm=spacing_mm)
    names = {n: VENDOR_NAMES[variant.vendor][n] for n in subset}
    ct = scanner_ct(truth, seed=variant.seed or 0)
    scanned = Atlas(
        name=variant.label,
        grid=truth.grid,
        ct_hu=ct,
        structures=truth.structures,
        landmarks={},
    )
    ct_dir = scanned.export_ct(
        folder / "CT",
        patient_name=f"RTPLAN^CLINICAL{variant.label.upper()}"[:64],
        patient_id=f"RTPLAN-CASE-{variant.label}"[:64],
        series_description=f"synthetic clinical case {variant.label}",
    )
    rois = [truth.structures[n].renamed(names[n]) for n in subset]
    write_rtstruct(rois, ct_dir, folder / "RS.dcm", label=variant.label[:16])
    return ClinicalCase(folder=folder, truth=truth, names=names)
