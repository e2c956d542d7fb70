"""Score reference doses with rtplan's own DVH code, voxel for voxel on rtplan's dose grid.

Everything here uses rtplan alone (no pyRadPlan), so the store and the scoring can be
tested on a small grid with a dose of closed form.

The reference engine gets the CT and the masks on rtplan's dose grid
(:func:`dose_grid_for`, 2.5 mm cubic over the body): the CT averaged over 3 x 3 CT
pixels in-plane and sampled trilinearly at the dose voxel centres
(:func:`ct_on_dose_grid`), each structure as the dose voxels it occupies at least half
(:func:`mask_on_dose_grid`). Its dose is then scored like rtplan's estimate: DVHs from
the structures' fractional occupancy of the dose voxels
(:func:`rtplan.dvh.structure_on_dose_grid`, :func:`rtplan.dvh.compute_dvh`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan.atlas import Atlas
from rtplan.dose_estimate import make_dose_grid
from rtplan.dvh import DVH, StructureOnDoseGrid, compute_dvh, occupancy_on_grid
from rtplan.grid import ImageGrid, resample_to_grid
from rtplan.structures import Structure, StructureSet

__all__ = [
    "BOWEL_NAMES",
    "DISTANCE_BIN_EDGES_MM",
    "DOSE_SPACING_MM",
    "OAR_NAMES",
    "OAR_V_DOSES_GY",
    "OCCUPANCY_THRESHOLD",
    "TARGET_D_PCTS",
    "MetricValue",
    "ScoredTarget",
    "ct_on_dose_grid",
    "distance_bin_label",
    "distance_metrics",
    "dose_grid_for",
    "mask_on_dose_grid",
    "normalisation_factor",
    "oar_metrics",
    "present_oars",
    "signed_distance_mm",
    "target_metrics",
    "union_structure",
]

#: Dose grid spacing of the reference plans, mm (rtplan's default).
DOSE_SPACING_MM = 2.5
#: A structure covers a dose voxel for the reference engine when it occupies at least
#: this fraction of it.
OCCUPANCY_THRESHOLD = 0.5
#: Bowel structures (TG-263 names) scored when the anatomy has them; they also get
#: V45Gy in cc.
BOWEL_NAMES: tuple[str, ...] = ("Spc_Bowel", "Bag_Bowel", "Bowel", "Bowel_Small", "Bowel_Large")
#: Organs scored when the anatomy has them (``Body`` last).
OAR_NAMES: tuple[str, ...] = (
    "Rectum",
    "Bladder",
    *BOWEL_NAMES,
    "Colon_Sigmoid",
    "Canal_Anal",
    "PenileBulb",
    "Femur_Head_L",
    "Femur_Head_R",
    "Body",
)
#: Doses of the organs' V metrics, Gy (20 to 70 every 5).
OAR_V_DOSES_GY: tuple[float, ...] = tuple(float(d) for d in range(20, 71, 5))
#: Volumes of the targets' D metrics, % (D98, D95, D50, D2).
TARGET_D_PCTS: tuple[float, ...] = (98.0, 95.0, 50.0, 2.0)
#: Edges of the signed-distance bins, mm: -10 to +60 every 2.5 mm (plus the open bins
#: below and above, see :func:`distance_metrics`).
DISTANCE_BIN_EDGES_MM: tuple[float, ...] = tuple(-10.0 + 2.5 * k for k in range(29))


@dataclass(frozen=True)
class MetricValue:
    """A metric of one structure: name (rtplan metric syntax where possible), value, unit."""

    metric: str
    value: float
    unit: str


@dataclass(frozen=True)
class ScoredTarget:
    """A target to score with the prescription its metrics are relative to.

    Parameters
    ----------
    structure : Structure
        The PTV or CTV on the CT grid.
    prescription_gy : float
        The dose the metrics in %Rx refer to, Gy (> 0).
    """

    structure: Structure
    prescription_gy: float


def dose_grid_for(atlas: Atlas) -> ImageGrid:
    """The rtplan dose grid of the anatomy: 2.5 mm cubic over the body's bounding box.

    The grid :func:`rtplan.compare.compare_options` doses on
    (:func:`rtplan.dose_estimate.make_dose_grid` with ``body=Body``).
    """
    body = atlas.structures["Body"] if "Body" in atlas.structures else None
    return make_dose_grid(atlas.grid, spacing_mm=DOSE_SPACING_MM, body=body)


def ct_on_dose_grid(atlas: Atlas, dose_grid: ImageGrid) -> npt.NDArray[np.float32]:
    """The CT numbers on the dose grid, HU.

    Each CT slice is first averaged over 3 x 3 pixels (about a dose voxel at the atlas's
    0.98 mm pixels), then sampled trilinearly at the dose voxel centres; outside the CT
    -1000 HU (air).

    Returns
    -------
    ndarray of float32, shape ``dose_grid.shape``
    """
    smooth = ndimage.uniform_filter(atlas.ct_hu.astype(np.float32), size=(1, 3, 3))
    out = resample_to_grid(smooth, atlas.grid, dose_grid, order=1, fill_value=-1000.0)
    return out.astype(np.float32)


def mask_on_dose_grid(structure: Structure, dose_grid: ImageGrid) -> npt.NDArray[np.bool_]:
    """The dose voxels the structure occupies at least :data:`OCCUPANCY_THRESHOLD`.

    Examples
    --------
    >>> g = ImageGrid(shape=(4, 4, 4), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> m = np.zeros(g.shape, bool); m[0:2, 0:2, 0:2] = True
    >>> dg = ImageGrid(shape=(2, 2, 2), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.5, 0.5, 0.5))
    >>> int(mask_on_dose_grid(Structure("cube", m, g), dg).sum())
    1
    """
    return occupancy_on_grid(structure, dose_grid) >= OCCUPANCY_THRESHOLD


def union_structure(name: str, structures: Sequence[Structure], *, role: str) -> Structure:
    """One structure covering all of ``structures`` (on their common CT grid).

    Raises
    ------
    ValueError
        When ``structures`` is empty.
    """
    if not structures:
        raise ValueError(f"union {name!r} of no structure")
    mask = np.zeros(structures[0].grid.shape, bool)
    for s in structures:
        mask |= s.mask
    return Structure(name, mask, structures[0].grid, role=role)


def present_oars(structures: StructureSet) -> list[Structure]:
    """The organs of :data:`OAR_NAMES` the anatomy has (non-empty), in that order."""
    names = set(structures.names)
    return [structures[n] for n in OAR_NAMES if n in names and not structures[n].is_empty]


def normalisation_factor(
    dose_gy: npt.NDArray[np.float64],
    dose_grid: ImageGrid,
    ptv: StructureOnDoseGrid,
    prescription_gy: float,
    *,
    d95_pct_of_rx: float = 100.0,
) -> float:
    """The factor that brings the PTV's D95% to ``d95_pct_of_rx`` % of the prescription.

    The DVH is recomputed after scaling (its dose bins are fixed in Gy) and the factor
    corrected twice more, so the scaled D95% matches to well under 0.1 %.

    Raises
    ------
    ValueError
        When the PTV gets no dose to speak of (D95% below 0.1 % of the target).

    Examples
    --------
    >>> g = ImageGrid(shape=(1, 1, 4), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> from rtplan.dvh import structure_on_dose_grid
    >>> s = structure_on_dose_grid(Structure("PTV", np.ones(g.shape, bool), g), g)
    >>> round(normalisation_factor(np.full(g.shape, 30.0), g, s, 60.0), 3)
    2.0
    """
    target_gy = d95_pct_of_rx / 100.0 * prescription_gy
    factor = 1.0
    for _ in range(3):
        d95 = compute_dvh(factor * dose_gy, dose_grid, ptv).dose_at_volume_pct(95.0)
        if not d95 > 1e-3 * target_gy:  # no dose to speak of (or NaN)
            raise ValueError(f"{ptv.name}: D95% is {d95:g} Gy, cannot normalise")
        factor *= target_gy / d95
    return factor


def target_metrics(dvh: DVH, prescription_gy: float) -> list[MetricValue]:
    """D98/D95/D50/D2 (Gy and %Rx), V95%Rx (%), Dmean and D0.03cc (Gy) of a target.

    Examples
    --------
    >>> d = DVH("PTV", np.array([0.0, 50.0, 60.0]), np.array([10.0, 10.0, 0.0]),
    ...         10.0, 55.0, 50.0, 60.0)
    >>> [(m.metric, round(m.value, 1)) for m in target_metrics(d, 60.0)][:2]
    [('D98%', 50.2), ('D98%[%Rx]', 83.7)]
    """
    out: list[MetricValue] = []
    for pct in TARGET_D_PCTS:
        d = dvh.dose_at_volume_pct(pct)
        out.append(MetricValue(f"D{pct:g}%", d, "Gy"))
        out.append(MetricValue(f"D{pct:g}%[%Rx]", 100.0 * d / prescription_gy, "%Rx"))
    out.append(MetricValue("V95%Rx", dvh.volume_at_dose_pct(0.95 * prescription_gy), "%"))
    out.append(MetricValue("Dmean", dvh.mean_gy, "Gy"))
    out.append(MetricValue("D0.03cc", dvh.dose_at_volume_cc(0.03), "Gy"))
    out.append(MetricValue("Volume", dvh.volume_cc, "cc"))
    return out


def oar_metrics(dvh: DVH, *, bowel: bool) -> list[MetricValue]:
    """Dmean, D0.03cc, D2% (Gy) and V20Gy..V70Gy (%) of an organ; V45Gy in cc for bowel.

    Examples
    --------
    >>> d = DVH("Rectum", np.array([0.0, 40.0, 80.0]), np.array([50.0, 25.0, 0.0]),
    ...         50.0, 30.0, 0.0, 80.0)
    >>> {m.metric: m.value for m in oar_metrics(d, bowel=False)}["V40Gy"]
    50.0
    """
    out = [
        MetricValue("Dmean", dvh.mean_gy, "Gy"),
        MetricValue("D0.03cc", dvh.dose_at_volume_cc(0.03), "Gy"),
        MetricValue("D2%", dvh.dose_at_volume_pct(2.0), "Gy"),
    ]
    out += [MetricValue(f"V{d:g}Gy", dvh.volume_at_dose_pct(d), "%") for d in OAR_V_DOSES_GY]
    if bowel:
        out.append(MetricValue("V45Gy[cc]", dvh.volume_at_dose_cc(45.0), "cc"))
    out.append(MetricValue("Volume", dvh.volume_cc, "cc"))
    return out


def signed_distance_mm(
    mask: npt.NDArray[np.bool_], dose_grid: ImageGrid
) -> npt.NDArray[np.float64]:
    """Signed distance of every dose voxel centre to the surface of ``mask``, mm.

    Negative inside, positive outside. The surface lies half a voxel beyond the outermost
    voxel centres: a voxel centre outside is at its Euclidean distance to the nearest
    voxel centre inside minus half the smallest spacing; inside, likewise, with the sign
    turned.

    Raises
    ------
    ValueError
        When ``mask`` is empty, fills the grid (it has no surface) or has another shape
        than the grid.

    Examples
    --------
    >>> g = ImageGrid(shape=(1, 1, 5), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(0, 0, 0))
    >>> m = np.zeros(g.shape, bool); m[0, 0, :2] = True
    >>> signed_distance_mm(m, g)[0, 0].tolist()
    [-3.75, -1.25, 1.25, 3.75, 6.25]
    """
    if mask.shape != dose_grid.shape:
        raise ValueError(f"mask shape {mask.shape} is not the dose grid's {dose_grid.shape}")
    if not mask.any() or mask.all():
        raise ValueError("signed distance to a mask that is empty or fills the grid")
    spacing = dose_grid.spacing_mm
    half = 0.5 * min(spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return np.where(mask, -(inside - half), outside - half).astype(np.float64)


def distance_bin_label(low_mm: float, high_mm: float) -> str:
    """``"[5.0,7.5)"``-style label of a distance bin (``-inf``/``inf`` for open ends)."""
    return f"[{low_mm:.1f},{high_mm:.1f})"


def distance_metrics(
    dose_gy: npt.NDArray[np.float64],
    organ: StructureOnDoseGrid,
    signed_mm: npt.NDArray[np.float64],
    *,
    prefix: str = "dist",
) -> list[MetricValue]:
    """The organ's mean dose and volume in signed-distance bins to a PTV surface.

    Bins are :data:`DISTANCE_BIN_EDGES_MM` (2.5 mm wide, -10 to +60 mm) plus one bin
    below -10 mm and one from +60 mm on. Each dose voxel counts with the volume of the
    organ inside it (its fractional occupancy), at the distance of its centre.

    Returns
    -------
    list of MetricValue
        ``<prefix>_volume_cc[lo,hi)`` (cc) for every bin, and ``<prefix>_mean_Gy[lo,hi)``
        (Gy) for every bin the organ reaches (a mean over no volume does not exist).

    Examples
    --------
    >>> g = ImageGrid(shape=(1, 1, 3), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(0, 0, 0))
    >>> from rtplan.dvh import structure_on_dose_grid
    >>> s = structure_on_dose_grid(Structure("R", np.ones(g.shape, bool), g), g)
    >>> dist = np.array([[[1.0, 1.5, 61.0]]]); dose = np.array([[[40.0, 20.0, 1.0]]])
    >>> {m.metric: m.value for m in distance_metrics(dose, s, dist)}["dist_mean_Gy[0.0,2.5)"]
    30.0
    """
    edges = np.array([-np.inf, *DISTANCE_BIN_EDGES_MM, np.inf])
    dist = signed_mm.ravel()[organ.flat_index]
    dose = dose_gy.ravel()[organ.flat_index]
    which = np.searchsorted(edges, dist, side="right") - 1
    volume = np.bincount(which, weights=organ.volume_cc, minlength=len(edges) - 1)
    dose_volume = np.bincount(which, weights=organ.volume_cc * dose, minlength=len(edges) - 1)
    out: list[MetricValue] = []
    for k in range(len(edges) - 1):
        label = distance_bin_label(float(edges[k]), float(edges[k + 1]))
        out.append(MetricValue(f"{prefix}_volume_cc{label}", float(volume[k]), "cc"))
        if volume[k] > 0:
            out.append(
                MetricValue(f"{prefix}_mean_Gy{label}", float(dose_volume[k] / volume[k]), "Gy")
            )
    return out
