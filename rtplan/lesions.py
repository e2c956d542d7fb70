"""PSMA-positive lesions: from masks, label maps, RTSTRUCT ROIs or a PET SUV threshold.

A :class:`Lesion` is one connected lesion: a GTV :class:`~rtplan.structures.Structure`
on the atlas grid plus its volume, centroid and, when a PET is given, SUVmax, SUVmean
and SUVpeak and the PROMISE miPSMA expression score. :class:`Lesions` is an ordered,
immutable collection of them on one grid. The atlas region and the miTNM category of
each lesion are filled in by :func:`rtplan.staging.stage`.

Builders:

* :func:`lesions_from_mask`: a boolean mask (each connected component is a lesion) or an
  integer label map (each label is a lesion), on the atlas grid or on another grid;
* :func:`lesions_from_pet`: a PET SUV volume segmented by a fixed SUV threshold, a
  percentage of each lesion's own SUVmax, or a multiple of a reference region's SUVmean
  (CLINICAL.md section 3d);
* :func:`lesions_from_structures`: RTSTRUCT ROIs already read into structures (e.g.
  by ``rtplan.dicom_io.read_rtstruct``).

Connectivity: connected components use 26-connectivity by default (voxels touching by a
face, an edge or a corner belong to one lesion), the usual choice for PET lesion
labelling; 6 and 18 are available through ``connectivity``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypedDict, Unpack, overload

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import as_mask, bounding_box, check_choice
from rtplan.errors import (
    GridMismatchError,
    InvalidInputError,
    InvalidMaskError,
    MissingStructureError,
    RtplanWarning,
)
from rtplan.grid import ImageGrid, check_same_grid, resample_to_grid
from rtplan.structures import Structure, StructureSet

__all__ = [
    "CONNECTIVITIES",
    "LARGE_LESION_CC",
    "MAX_LESION_FRACTION",
    "MAX_LESION_FRACTION_OF_GRID",
    "MAX_PLAUSIBLE_SUV",
    "MIN_FRACTION_IN_BODY",
    "PET_METHODS",
    "REFERENCE_REGIONS",
    "SUVPEAK_VOLUME_CC",
    "Connectivity",
    "Lesion",
    "LesionRow",
    "Lesions",
    "PetMethod",
    "ReferenceRegion",
    "References",
    "StagingFields",
    "lesions_from_mask",
    "lesions_from_pet",
    "lesions_from_structures",
    "mipsma_score",
    "suv_peak",
]

PetMethod = Literal["fixed", "percent_max", "reference"]
PET_METHODS: tuple[str, ...] = ("fixed", "percent_max", "reference")

ReferenceRegion = Literal["blood_pool", "liver", "parotid"]
REFERENCE_REGIONS: tuple[str, ...] = ("blood_pool", "liver", "parotid")

Connectivity = Literal[6, 18, 26]
CONNECTIVITIES: tuple[int, ...] = (6, 18, 26)

#: Volume (cc) of the sphere whose mean SUV defines SUVpeak (PERCIST 1.0: Wahl et al.,
#: J Nucl Med 2009;50 Suppl 1:122S-150S, "1 cm^3 spherical volume of interest").
SUVPEAK_VOLUME_CC = 1.0

# Plausibility limits (tool defaults): a lesion mask or PET that breaks them is not a lesion
# but a wrong input (a Body or organ mask given as lesions, Bq/mL read as SUV, a threshold
# below the background), and is refused before it can be staged.

#: Highest SUVbw (g/mL) an SUV image may hold. PSMA-ligand uptake in tumour, kidneys or
#: urine is one to two orders of magnitude lower.
MAX_PLAUSIBLE_SUV = 1000.0
#: Largest fraction of the Body (or of the search region of a PET segmentation) the lesions
#: may cover together.
MAX_LESION_FRACTION = 0.10
#: The same limit when no Body is known, as a fraction of the whole grid (which is mostly
#: air and table around the patient).
MAX_LESION_FRACTION_OF_GRID = 0.5
#: A lesion larger than this (cc) is kept with an :class:`RtplanWarning` and a note.
LARGE_LESION_CC = 200.0
#: Smallest fraction of a lesion's voxels that must lie inside the Body.
MIN_FRACTION_IN_BODY = 0.5

#: Reference regions for the miPSMA score: ``"blood_pool"``, ``"liver"``, ``"parotid"``
#: mapped to a boolean mask on the image grid or to the region's SUVmean (a number).
References = Mapping[str, npt.ArrayLike]

#: Integer label map on a grid: 0 background, ``n`` the voxels of lesion ``n``.
LabelMap = npt.NDArray[np.int32]

_KindOfMask = Literal["auto", "mask", "labels"]


def _structure_element(connectivity: int) -> BoolMask:
    if connectivity not in CONNECTIVITIES:
        raise InvalidInputError(
            f"connectivity must be one of {', '.join(map(repr, CONNECTIVITIES))}; "
            f"got {connectivity!r}"
        )
    rank = {6: 1, 18: 2, 26: 3}[int(connectivity)]
    return ndimage.generate_binary_structure(3, rank)


def _find_objects(labels: LabelMap, n_labels: int) -> list[tuple[slice, ...] | None]:
    """Bounding boxes of labels ``1 .. n_labels``; ``None`` for a label that is absent.

    (scipy-stubs leave the ``None`` out of :func:`scipy.ndimage.find_objects`.)
    """
    return list(ndimage.find_objects(labels, max_label=n_labels))


def _check_grid(grid: ImageGrid | None, name: str, *, optional: bool = False) -> None:
    """Raise TypeError naming ``name`` unless ``grid`` is an ImageGrid (or None if optional)."""
    if grid is None and optional:
        return
    if not isinstance(grid, ImageGrid):
        kind = "an rtplan.grid.ImageGrid" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {kind}, got {type(grid).__name__}")


class StagingFields(TypedDict, total=False):
    """The fields of a :class:`Lesion` that staging fills in (see :meth:`Lesion.with_staging`)."""

    category: str | None
    region: str | None
    region_code: str | None
    side: str | None
    region_uncertain: bool
    notes: tuple[str, ...]


class LesionRow(TypedDict):
    """One row of the lesion table (:meth:`Lesion.row`, :meth:`Lesions.table`)."""

    id: int
    name: str
    category: str | None
    region: str | None
    region_code: str | None
    side: str | None
    region_uncertain: bool
    volume_cc: float
    suv_max: float | None
    suv_mean: float | None
    suv_peak: float | None
    mipsma_score: int | None
    centroid_mm: tuple[float, float, float]
    source: str
    notes: str


# ---------------------------------------------------------------------------- Lesion
@dataclass(frozen=True)
class Lesion:
    """One PSMA-positive lesion on the atlas grid.

    Built by the ``lesions_from_*`` functions; :func:`rtplan.staging.stage` returns
    copies with the staging fields (``category``, ``region``...) filled in.

    Parameters
    ----------
    id : int
        1-based number, unique within a :class:`Lesions` collection.
    name : str
        Display name, ``"L<id>"`` by default.
    structure : Structure
        The lesion as a GTV structure (role ``"gtv"``, named like the lesion).
    suv_max, suv_mean, suv_peak : float or None
        SUV statistics of the lesion voxels (g/mL body-weight SUV, whatever the PET
        was scaled to); ``None`` without a PET. SUVpeak: see :func:`suv_peak`.
    mipsma_score : int or None
        PROMISE miPSMA expression score 0-3 (see :func:`mipsma_score`), ``None`` without
        PET or reference regions.
    source : str
        Where the lesion came from (``"mask component"``, ``"label 3"``,
        ``"ROI 'GTVn1'"``, ``"PET percent_max 41%"``).
    category : str or None
        miTNM category set by staging: ``"Tr"``, ``"N1"``, ``"M1a"``, ``"M1b"``, ``"M1c"``.
    region : str or None
        Atlas region set by staging (e.g. ``"external iliac"``, ``"prostate bed"``,
        ``"Bone_Ilium_L"``).
    region_code : str or None
        PROMISE region code set by staging (``"EI"``, ``"II"``, ``"OB"``, ``"PS"``,
        ``"OP"``, ``"CI"``, ``"RP"``, ``"SD"``, ``"OE"``, ``"bone"``, ``"bed"``...).
    side : {"L", "R", "midline"} or None
        Patient side of the centroid, set by staging.
    region_uncertain : bool
        True when staging had to fall back on a rule of thumb.
    notes : tuple of str
        Remarks from segmentation and staging.
    """

    id: int
    name: str
    structure: Structure
    suv_max: float | None = None
    suv_mean: float | None = None
    suv_peak: float | None = None
    mipsma_score: int | None = None
    source: str = ""
    category: str | None = None
    region: str | None = None
    region_code: str | None = None
    side: str | None = None
    region_uncertain: bool = False
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int):
            raise TypeError(f"lesion id must be an int, got {type(self.id).__name__}")
        if not isinstance(self.name, str):
            raise TypeError(f"lesion name must be a str, got {type(self.name).__name__}")
        if not isinstance(self.structure, Structure):
            raise TypeError(f"lesion {self.name!r}: structure must be a Structure")
        if self.structure.is_empty:
            raise InvalidMaskError(f"lesion {self.name!r} has an empty mask")

    @property
    def grid(self) -> ImageGrid:
        """Grid of the lesion's mask (the atlas grid)."""
        return self.structure.grid

    @property
    def mask(self) -> BoolMask:
        """Full boolean mask on :attr:`grid` (a new array)."""
        return self.structure.mask

    @property
    def volume_cc(self) -> float:
        """Volume in cc (voxel count times voxel volume on :attr:`grid`)."""
        return self.structure.volume_cc

    @property
    def centroid_mm(self) -> tuple[float, float, float]:
        """LPS centre of mass ``(x, y, z)`` in mm."""
        return self.structure.centroid_mm

    def with_staging(self, **fields: Unpack[StagingFields]) -> Lesion:
        """A copy with staging fields replaced (``category``, ``region``, ``notes``...).

        Raises
        ------
        TypeError
            For a field that is not a staging field (see :class:`StagingFields`).
        """
        unknown = sorted(set(fields) - set(StagingFields.__annotations__))
        if unknown:
            raise TypeError(
                f"with_staging sets only the staging fields "
                f"({', '.join(StagingFields.__annotations__)}), not {', '.join(unknown)}"
            )
        return replace(self, **fields)

    def row(self) -> LesionRow:
        """One table row: id, name, category, region, side, volume, SUVs, centroid."""
        x, y, z = self.centroid_mm
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "region": self.region,
            "region_code": self.region_code,
            "side": self.side,
            "region_uncertain": self.region_uncertain,
            "volume_cc": round(self.volume_cc, 3),
            "suv_max": None if self.suv_max is None else round(self.suv_max, 2),
            "suv_mean": None if self.suv_mean is None else round(self.suv_mean, 2),
            "suv_peak": None if self.suv_peak is None else round(self.suv_peak, 2),
            "mipsma_score": self.mipsma_score,
            "centroid_mm": (round(x, 1), round(y, 1), round(z, 1)),
            "source": self.source,
            "notes": "; ".join(self.notes),
        }

    def __repr__(self) -> str:
        parts = [f"{self.name!r}", f"volume_cc={self.volume_cc:.2f}"]
        if self.suv_max is not None:
            parts.append(f"suv_max={self.suv_max:.1f}")
        if self.category is not None:
            parts.append(f"category={self.category!r}, region={self.region!r}")
        return f"Lesion({', '.join(parts)})"


class Lesions(Sequence[Lesion]):
    """Ordered, immutable collection of lesions on one grid.

    Indexing by position (``lesions[0]``), by name (``lesions["L2"]``) or by slice.

    Parameters
    ----------
    lesions : iterable of Lesion
        Lesions with unique names, all on the same grid.
    grid : ImageGrid, optional
        Grid of the collection; required when ``lesions`` is empty.

    Examples
    --------
    >>> g = ImageGrid(shape=(4, 4, 4), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> len(Lesions([], grid=g)), Lesions([], grid=g).table()
    (0, [])
    """

    def __init__(self, lesions: Iterable[Lesion] = (), *, grid: ImageGrid | None = None) -> None:
        _check_grid(grid, "grid", optional=True)
        items = tuple(lesions)
        for les in items:
            if not isinstance(les, Lesion):
                raise TypeError(f"Lesions holds Lesion objects, got {type(les).__name__}")
        names = [les.name for les in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInputError(f"lesion names must be unique; repeated: {', '.join(dupes)}")
        if grid is None:
            if not items:
                raise InvalidInputError("an empty Lesions collection needs a grid")
            grid = items[0].grid
        check_same_grid(
            grid, *(les.grid for les in items), names=["collection", *(n for n in names)]
        )
        self._items = items
        self._grid = grid

    @property
    def grid(self) -> ImageGrid:
        """Grid every lesion's mask lives on."""
        return self._grid

    @overload
    def __getitem__(self, key: int | str) -> Lesion: ...

    @overload
    def __getitem__(self, key: slice) -> Lesions: ...

    def __getitem__(self, key: int | str | slice) -> Lesion | Lesions:
        if isinstance(key, slice):
            return Lesions(self._items[key], grid=self._grid)
        if isinstance(key, str):
            for les in self._items:
                if les.name == key:
                    return les
            raise KeyError(f"no lesion named {key!r}; lesions: {', '.join(self.names)}")
        return self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Lesion]:
        return iter(self._items)

    @property
    def names(self) -> list[str]:
        """Lesion names in order."""
        return [les.name for les in self._items]

    @property
    def total_volume_cc(self) -> float:
        """Sum of the lesion volumes in cc."""
        return float(sum(les.volume_cc for les in self._items))

    def table(self) -> list[LesionRow]:
        """One dict per lesion (see :meth:`Lesion.row`)."""
        return [les.row() for les in self._items]

    def label_map(self) -> LabelMap:
        """int32 array on :attr:`grid`: 0 background, lesion ``n`` (position) is ``n + 1``."""
        out = np.zeros(self._grid.shape, np.int32)
        for n, les in enumerate(self._items, start=1):
            s = les.structure
            assert s.bbox is not None
            out[s.bbox][s.cropped_mask] = n
        return out

    def to_structure_set(self) -> StructureSet:
        """The lesion structures (role ``"gtv"``) as a structure set."""
        return StructureSet([les.structure for les in self._items], grid=self._grid)

    def __repr__(self) -> str:
        return f"Lesions({len(self)} lesions: {', '.join(self.names)})"


# ---------------------------------------------------------------------------- SUV helpers
def _peak_kernel(spacing_mm: Sequence[float], volume_cc: float) -> BoolMask:
    radius_mm = (3.0 * volume_cc * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    half = [math.floor(radius_mm / s) for s in spacing_mm]
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm)]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    return np.asarray(dz**2 + dy**2 + dx**2 <= radius_mm**2 + 1e-9, dtype=np.bool_)


def suv_peak(
    suv: npt.ArrayLike,
    mask: npt.ArrayLike,
    grid: ImageGrid,
    *,
    volume_cc: float = SUVPEAK_VOLUME_CC,
) -> float:
    """SUVpeak: the highest mean SUV in a sphere of ``volume_cc`` centred on a lesion voxel.

    Definition after PERCIST 1.0 (Wahl et al., J Nucl Med 2009;50 Suppl 1:122S-150S): a
    1 cm^3 sphere (radius 6.2 mm) placed so that its mean SUV is highest; here the sphere
    is centred on a voxel of the lesion and may extend beyond it. The sphere is the set
    of voxels whose centres lie within the radius, so its discrete volume differs from
    1 cc by the voxelisation error; voxels outside the grid are left out of the mean.

    Parameters
    ----------
    suv : array_like of float, shape ``grid.shape``
        SUV image.
    mask : array_like of bool, shape ``grid.shape``
        Lesion voxels (candidate sphere centres); must not be empty.
    grid : ImageGrid
        Geometry of both.
    volume_cc : float
        Sphere volume in cc (default 1).

    Returns
    -------
    float
        SUVpeak.

    Examples
    --------
    >>> g = ImageGrid(shape=(9, 9, 9), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0, 0, 0))
    >>> m = np.zeros(g.shape, bool); m[4, 4, 4] = True
    >>> suv_peak(np.full(g.shape, 3.0), m, g)
    3.0
    """
    _check_grid(grid, "grid")
    s = np.asarray(suv, dtype=np.float64)
    m = as_mask(mask, grid, name="lesion mask")
    if s.shape != grid.shape:
        raise GridMismatchError(f"suv has shape {s.shape} but the grid has shape {grid.shape}")
    bbox = bounding_box(m)
    if bbox is None:
        raise InvalidMaskError("suv_peak needs a non-empty lesion mask")
    return _suv_peak_local(s, m[bbox], bbox, grid, volume_cc)


def _suv_peak_local(
    s: FloatArray,
    local: BoolMask,
    bbox: tuple[slice, ...],
    grid: ImageGrid,
    volume_cc: float = SUVPEAK_VOLUME_CC,
) -> float:
    """SUVpeak of the lesion ``local`` (its mask inside ``bbox``); see :func:`suv_peak`."""
    kernel = _peak_kernel(grid.spacing_mm, volume_cc)
    half = [k // 2 for k in kernel.shape]
    crop = tuple(
        slice(max(b.start - h, 0), min(b.stop + h, n)) for b, h, n in zip(bbox, half, grid.shape)
    )
    sub = s[crop]
    kf = kernel.astype(np.float64)
    # the crop extends the bounding box by the kernel half-width wherever the grid
    # allows, so every lesion voxel sees its whole in-grid sphere; the count of in-grid
    # voxels normalises the mean at the grid edge
    total = ndimage.correlate(sub, kf, mode="constant", cval=0.0)
    count = ndimage.correlate(np.ones_like(sub), kf, mode="constant", cval=0.0)
    inner = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(bbox, crop))
    means = total[inner][local] / count[inner][local]
    return float(means.max())


def _reference_means(
    references: References | None, suv: FloatArray, grid: ImageGrid
) -> dict[str, float]:
    """SUVmean of each reference region (masks on ``grid``, or numbers as given)."""
    out: dict[str, float] = {}
    if not references:
        return out
    if not isinstance(references, Mapping):
        raise TypeError(
            f"references must map region names to masks or SUVmean numbers, "
            f"got {type(references).__name__}"
        )
    for key, value in references.items():
        check_choice(key, REFERENCE_REGIONS, name="reference region name")
        if np.ndim(value) == 0:
            v = float(np.asarray(value, dtype=np.float64))
            if not (v > 0 and math.isfinite(v)):
                raise InvalidInputError(
                    f"reference SUVmean of {key!r} must be positive, got {value!r}"
                )
            out[key] = v
            continue
        m = as_mask(value, grid, name=f"reference region {key!r}")
        if not m.any():
            raise InvalidMaskError(f"reference region {key!r} is empty")
        out[key] = float(suv[m].mean())
    return out


def mipsma_score(suv_max: float, references: Mapping[str, float]) -> tuple[int | None, str]:
    """PROMISE miPSMA expression score of a lesion from reference SUVmean values.

    Scores (CLINICAL.md section 3c, PROMISE V2 thresholds [V-3p]): 0 = uptake <= blood
    pool, 1 = > blood pool and <= liver, 2 = > liver and <= parotid, 3 = > parotid. The
    lesion's uptake is its SUVmax and each reference is the region's SUVmean (the usual
    automated reading [V-3p]). For 18F-PSMA-1007 pass the spleen as ``"liver"``.

    Parameters
    ----------
    suv_max : float
        Lesion SUVmax.
    references : mapping of str to float
        SUVmean of ``"blood_pool"``, ``"liver"`` and/or ``"parotid"``.

    Returns
    -------
    score : int or None
        The score; ``None`` when the references given cannot decide it (e.g. only a
        parotid reference and a lesion below it). Without a parotid reference a lesion
        above the liver gets 2, which then means "at least 2".
    note : str
        Empty, or why the score is capped or missing.

    Examples
    --------
    >>> mipsma_score(8.0, {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0})
    (2, '')
    >>> mipsma_score(20.0, {"blood_pool": 1.5, "liver": 5.0})
    (2, 'miPSMA score at least 2 (no parotid reference)')
    """
    levels = [(score, references.get(key)) for score, key in enumerate(REFERENCE_REGIONS)]
    lowest = 0  # the lesion's score is known to be at least this
    for score, ref in levels:
        if ref is None:
            continue
        if suv_max <= ref:
            if lowest == score:
                return score, ""
            return None, "miPSMA score undetermined (a lower reference region is missing)"
        lowest = score + 1
    if lowest == 3:
        return 3, ""
    if lowest == 2:
        return 2, "miPSMA score at least 2 (no parotid reference)"
    return None, "miPSMA score undetermined (references missing)" if lowest else ""


# ---------------------------------------------------------------------------- building
def _build(
    labels: LabelMap,
    grid: ImageGrid,
    *,
    sources: Sequence[str],
    target_grid: ImageGrid | None,
    suv: FloatArray | None,
    ref_means: Mapping[str, float],
    min_volume_cc: float,
    notes: Sequence[Sequence[str]] | None = None,
    region: _Region | None = None,
) -> Lesions:
    """Lesions from a label map (labels 1..n, in order) on ``grid``.

    SUV statistics are computed on ``grid`` (the PET grid for PET input); the masks are
    then moved to ``target_grid`` by nearest-neighbour resampling. The lesions are then
    checked against ``region`` (see :func:`_check_plausible`; the whole output grid when
    None).
    """
    n_labels = len(sources)
    out_grid = grid if target_grid is None else target_grid
    if target_grid is not None and not grid.equals(target_grid):
        out_labels = np.asarray(resample_to_grid(labels, grid, target_grid, order=0), np.int32)
    else:
        out_labels = labels
    objects = _find_objects(out_labels, n_labels)
    src_objects = _find_objects(labels, n_labels)
    lesions: list[Lesion] = []
    for n in range(1, n_labels + 1):
        sl = objects[n - 1]
        if sl is None:
            if src_objects[n - 1] is not None:
                warnings.warn(
                    f"lesion from {sources[n - 1]} vanished when resampled onto the target "
                    "grid (smaller than a target voxel); it is dropped",
                    RtplanWarning,
                    stacklevel=3,
                )
            continue
        local = out_labels[sl] == n
        volume_cc = int(np.count_nonzero(local)) * out_grid.voxel_volume_cc
        if volume_cc < min_volume_cc:
            continue
        lesion_id = len(lesions) + 1
        name = f"L{lesion_id}"
        structure = Structure.from_cropped(
            name, local, tuple(s.start for s in sl), out_grid, role="gtv"
        )
        lesion = Lesion(
            id=lesion_id,
            name=name,
            structure=structure,
            source=sources[n - 1],
            notes=tuple(notes[n - 1]) if notes is not None else (),
        )
        if suv is not None:
            src_sl = src_objects[n - 1]
            assert src_sl is not None  # the label is on the output grid, so it was here
            lesion = _with_suv_statistics(lesion, suv, labels[src_sl] == n, src_sl, grid, ref_means)
        lesions.append(lesion)
    checked = _check_plausible(lesions, out_grid, region or _Region(None, "grid", "the mask"))
    return Lesions(checked, grid=out_grid)


_MASK_CHECK = "the lesion mask (a Body or organ mask given as lesions? its grid and orientation?)"


@dataclass(frozen=True, eq=False)
class _Region:
    """The region lesions must lie in and may fill only partly (see :func:`_check_plausible`).

    ``mask`` on the output grid (None: the whole grid), its ``name`` for messages
    (``"Body"``, ``"search region"``, ``"grid"``) and what to ``check`` when the lesions
    are implausible.
    """

    mask: BoolMask | None
    name: str
    check: str


def _region(
    body: npt.ArrayLike | None, grid: ImageGrid, check: str, fallback: _Region | None = None
) -> _Region:
    """The Body as a :class:`_Region` on ``grid``; ``fallback`` (else the grid) without one."""
    if body is None:
        return fallback or _Region(None, "grid", check)
    m = as_mask(body, grid, name="body")
    if not m.any():
        raise InvalidMaskError("body is empty; give the patient's Body mask or None")
    return _Region(m, "Body", check)


def _check_plausible(lesions: list[Lesion], grid: ImageGrid, region: _Region) -> list[Lesion]:
    """``lesions``, after refusing implausible ones and noting large ones (tool defaults).

    Refused (:class:`InvalidMaskError`): lesions covering together more than
    :data:`MAX_LESION_FRACTION` of the region (:data:`MAX_LESION_FRACTION_OF_GRID` of the
    whole grid when there is no region), and a lesion with less than
    :data:`MIN_FRACTION_IN_BODY` of its voxels inside the region (never a lesion in the
    air outside the patient). A lesion larger than :data:`LARGE_LESION_CC` is kept with an
    :class:`RtplanWarning` and a note (which the lesion table and the report show).
    """
    if not lesions:
        return lesions
    _check_total_fraction(lesions, grid, region)
    if region.mask is not None:
        for lesion in lesions:
            _check_inside(lesion, region)
    return [_noted_if_large(lesion) for lesion in lesions]


def _check_total_fraction(lesions: list[Lesion], grid: ImageGrid, region: _Region) -> None:
    """Refuse lesions covering too much of ``region`` (or of the grid)."""
    covered = np.zeros(grid.shape, bool)
    for lesion in lesions:
        s = lesion.structure
        assert s.bbox is not None  # a Lesion is never empty
        covered[s.bbox] |= s.cropped_mask
    if region.mask is None:
        fraction, limit = np.count_nonzero(covered) / grid.size, MAX_LESION_FRACTION_OF_GRID
    else:
        inside = np.count_nonzero(covered & region.mask)
        fraction, limit = inside / np.count_nonzero(region.mask), MAX_LESION_FRACTION
    if fraction > limit:
        volume = np.count_nonzero(covered) * grid.voxel_volume_cc
        raise InvalidMaskError(
            f"the lesions cover {100 * fraction:.0f} % of the {region.name} ({volume:.0f} cc "
            f"in {len(lesions)} lesion(s); at most {100 * limit:g} % is plausible, tool "
            f"default): that is not a lesion; check {region.check}"
        )


def _check_inside(lesion: Lesion, region: _Region) -> None:
    """Refuse a lesion lying mostly outside ``region`` (the Body)."""
    assert region.mask is not None
    s = lesion.structure
    assert s.bbox is not None
    n = np.count_nonzero(s.cropped_mask)
    inside = np.count_nonzero(s.cropped_mask & region.mask[s.bbox]) / n
    if inside < MIN_FRACTION_IN_BODY:
        x, y, z = lesion.centroid_mm
        raise InvalidMaskError(
            f"a lesion lies outside the {region.name}: {lesion.name} ({lesion.source}, "
            f"{lesion.volume_cc:.2f} cc at x {x:.0f}, y {y:.0f}, z {z:.0f} mm) has "
            f"{100 * inside:.0f} % of its voxels inside it (at least "
            f"{100 * MIN_FRACTION_IN_BODY:g} %, tool default); check {region.check}"
        )


def _noted_if_large(lesion: Lesion) -> Lesion:
    """``lesion``, with a warning and a note when it is larger than :data:`LARGE_LESION_CC`."""
    volume = lesion.volume_cc
    if volume <= LARGE_LESION_CC:
        return lesion
    note = (
        f"large for a lesion: {volume:.0f} cc (more than {LARGE_LESION_CC:g} cc, tool "
        "default); check the segmentation"
    )
    warnings.warn(
        f"lesion {lesion.name} ({lesion.source}) is {volume:.0f} cc, larger than "
        f"{LARGE_LESION_CC:g} cc (tool default): check the segmentation",
        RtplanWarning,
        stacklevel=5,  # the caller of lesions_from_*, through _build and _check_plausible
    )
    return replace(lesion, notes=(*lesion.notes, note))


def _with_suv_statistics(
    lesion: Lesion,
    suv: FloatArray,
    local: BoolMask,
    bbox: tuple[slice, ...],
    grid: ImageGrid,
    ref_means: Mapping[str, float],
) -> Lesion:
    """``lesion`` with SUVmax, SUVmean, SUVpeak and the miPSMA score of its voxels on ``grid``.

    ``local`` is the lesion's mask inside ``bbox`` of ``grid`` (the grid of ``suv``).
    """
    values = suv[bbox][local]
    suv_max = float(values.max())
    score: int | None = None
    notes = list(lesion.notes)
    if ref_means:
        score, note = mipsma_score(suv_max, ref_means)
        if note:
            notes.append(note)
    return replace(
        lesion,
        suv_max=suv_max,
        suv_mean=float(values.mean()),
        suv_peak=_suv_peak_local(suv, local, bbox, grid),
        mipsma_score=score,
        notes=tuple(notes),
    )


def _check_min_volume(min_volume_cc: float) -> float:
    v = float(min_volume_cc)
    if not (v >= 0 and math.isfinite(v)):
        raise InvalidInputError(f"min_volume_cc must be a number >= 0, got {min_volume_cc!r}")
    return v


def _prepare_suv(
    suv: npt.ArrayLike | None, suv_grid: ImageGrid | None, grid: ImageGrid
) -> FloatArray | None:
    if suv is None:
        return None
    _check_grid(suv_grid, "suv_grid", optional=True)
    s = np.asarray(suv, dtype=np.float64)
    sg = grid if suv_grid is None else suv_grid
    if s.ndim != 3 or s.shape != sg.shape:
        raise GridMismatchError(
            f"suv must be a 3-D array on its grid {sg.shape}, got shape {s.shape}"
        )
    _check_suv_values(s)
    if not sg.equals(grid):
        s = np.asarray(resample_to_grid(s, sg, grid, order=1), dtype=np.float64)
    return s


def _suv_and_references(
    suv: npt.ArrayLike | None,
    suv_grid: ImageGrid | None,
    grid: ImageGrid,
    references: References | None,
) -> tuple[FloatArray | None, dict[str, float]]:
    """The SUV image on ``grid`` (if any) and the SUVmean of each reference region."""
    s = _prepare_suv(suv, suv_grid, grid)
    if s is None:
        if references:
            raise InvalidInputError("references (for the miPSMA score) need an suv image")
        return None, {}
    return s, _reference_means(references, s, grid)


def _array_labels(
    mask_or_labels: npt.ArrayLike, grid: ImageGrid, kind: _KindOfMask, element: BoolMask
) -> tuple[LabelMap, list[str]]:
    """Label map (labels 1..n) and the source of each label, of a mask or label-map array."""
    a = np.asarray(mask_or_labels)
    if a.ndim != 3:
        raise InvalidMaskError(f"lesion mask must be a 3-D array [slice, row, col], got {a.ndim}-D")
    if a.shape != grid.shape:
        raise InvalidMaskError(
            f"lesion mask has shape {a.shape} but its grid has shape {grid.shape}"
        )
    if a.dtype != np.bool_:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise InvalidMaskError(f"lesion mask must be bool or integer, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a) & (a == np.round(a))):
            raise InvalidMaskError("lesion label map holds non-integer values")
        if np.any(a < 0):
            raise InvalidMaskError("lesion label map holds negative labels")
    binary = a.dtype == np.bool_ or bool(np.all((a == 0) | (a == 1)))
    if kind == "mask" and not binary:
        raise InvalidMaskError(
            "lesion mask holds values other than 0 and 1; pass kind='labels' for a label map"
        )
    if kind == "labels" or (kind == "auto" and not binary):
        values = np.unique(a)
        values = values[values != 0]
        lut = np.zeros(int(values.max()) + 1 if values.size else 1, np.int32)
        lut[values.astype(np.int64)] = np.arange(1, values.size + 1)
        return lut[a.astype(np.int64)], [f"label {int(v)}" for v in values]
    components, n = ndimage.label(a.astype(bool), structure=element)
    return components.astype(np.int32), ["mask component"] * n


def lesions_from_mask(
    mask_or_labels: npt.ArrayLike,
    grid: ImageGrid,
    *,
    target_grid: ImageGrid | None = None,
    kind: _KindOfMask = "auto",
    min_volume_cc: float = 0.0,
    connectivity: Connectivity = 26,
    suv: npt.ArrayLike | None = None,
    suv_grid: ImageGrid | None = None,
    references: References | None = None,
    body: npt.ArrayLike | None = None,
) -> Lesions:
    """Lesions from a boolean mask (one lesion per connected component) or a label map.

    Parameters
    ----------
    mask_or_labels : array_like, shape ``grid.shape``
        Boolean mask, or integer label map (0 = background, each positive label one
        lesion, even when its voxels are not connected).
    grid : ImageGrid
        Geometry of ``mask_or_labels``.
    target_grid : ImageGrid, optional
        Grid the lesions should live on (the atlas grid). When it differs from ``grid``
        the label map is resampled onto it by nearest neighbour
        (:func:`rtplan.grid.resample_to_grid`, ``order=0``); a lesion smaller than a
        target voxel can vanish and is dropped with a warning.
    kind : {"auto", "mask", "labels"}
        How to read the array. ``"auto"``: bool arrays and arrays holding only 0 and 1
        are masks, other non-negative integer arrays are label maps.
    min_volume_cc : float
        Lesions smaller than this (on the target grid) are dropped. Default 0: every
        component of a user-drawn mask is kept.
    connectivity : {6, 18, 26}
        Neighbourhood for connected components of a mask (default 26, see module notes).
    suv : array_like of float, optional
        PET SUV image, for SUVmax / SUVmean / SUVpeak and the miPSMA score. Statistics
        are computed on ``grid`` (SUV resampled trilinearly onto it if needed).
    suv_grid : ImageGrid, optional
        Grid of ``suv``; default ``grid``.
    references : mapping, optional
        Reference regions for the miPSMA score: ``"blood_pool"``, ``"liver"``,
        ``"parotid"`` mapped to a mask on ``grid`` or to a SUVmean number.
    body : array_like of bool, optional
        The patient's Body on the output grid (``target_grid``, else ``grid``). A lesion
        with less than :data:`MIN_FRACTION_IN_BODY` of its voxels inside it is refused,
        and so are lesions covering more than :data:`MAX_LESION_FRACTION` of it (without
        a Body: more than :data:`MAX_LESION_FRACTION_OF_GRID` of the grid).

    Returns
    -------
    Lesions
        Mask components in raster order (slice, row, column of their first voxel),
        label-map lesions in increasing label order; numbered ``L1``, ``L2``... A lesion
        larger than :data:`LARGE_LESION_CC` is kept with an :class:`RtplanWarning` and a
        note.

    Raises
    ------
    InvalidMaskError
        On an array that is not 3-D, has the wrong shape, negative or non-integer labels;
        on implausible lesions (outside the Body, or covering too much of it, see
        ``body``), naming the lesion or the fraction.
    InvalidInputError
        When ``suv`` holds values above :data:`MAX_PLAUSIBLE_SUV` (tool default).
    GridMismatchError
        When ``suv`` is not on its grid.
    ValueError
        On a bad ``kind``, ``connectivity`` or ``min_volume_cc``.
    TypeError
        When ``grid``, ``target_grid`` or ``suv_grid`` is not an ImageGrid.

    Examples
    --------
    >>> g = ImageGrid(shape=(5, 5, 5), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0, 0, 0))
    >>> m = np.zeros(g.shape, bool); m[1, 1, 1] = m[3, 3, 3] = True
    >>> [les.name for les in lesions_from_mask(m, g, connectivity=6)]
    ['L1', 'L2']
    >>> len(lesions_from_mask(np.zeros(g.shape, bool), g))
    0
    """
    _check_grid(grid, "grid")
    _check_grid(target_grid, "target_grid", optional=True)
    check_choice(kind, ("auto", "mask", "labels"), name="kind")
    min_volume_cc = _check_min_volume(min_volume_cc)
    element = _structure_element(connectivity)
    labels, sources = _array_labels(mask_or_labels, grid, kind, element)
    s, ref_means = _suv_and_references(suv, suv_grid, grid, references)
    region = _region(body, target_grid or grid, _MASK_CHECK)
    return _build(
        labels,
        grid,
        sources=sources,
        target_grid=target_grid,
        suv=s,
        ref_means=ref_means,
        min_volume_cc=min_volume_cc,
        region=region,
    )


def _chosen_structures(
    structures: StructureSet | Iterable[Structure],
    names: Iterable[str] | None,
    target_grid: ImageGrid | None,
) -> tuple[list[Structure], ImageGrid]:
    """The structures to turn into lesions, in order, and their common grid."""
    if isinstance(structures, StructureSet):
        ss = structures
        chosen = [ss[n] for n in names] if names is not None else list(ss.values())
        return chosen, ss.grid
    if isinstance(structures, (str, Structure)) or not isinstance(structures, Iterable):
        raise TypeError(
            f"structures must be a StructureSet or an iterable of Structure, "
            f"got {type(structures).__name__}"
        )
    items = list(structures)
    for s in items:
        if not isinstance(s, Structure):
            raise TypeError(f"expected Structure objects, got {type(s).__name__}")
    if names is not None:
        wanted = list(names)
        by_name = {s.name: s for s in items}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise MissingStructureError(
                f"no structure named {', '.join(map(repr, missing))}; have {', '.join(by_name)}"
            )
        chosen = [by_name[n] for n in wanted]
    else:
        chosen = items
    if chosen:
        check_same_grid(*(s.grid for s in chosen), names=[s.name for s in chosen])
        return chosen, chosen[0].grid
    if target_grid is None:
        raise InvalidInputError("no structures given and no target_grid: cannot tell the grid")
    return chosen, target_grid


def _structure_labels(chosen: Sequence[Structure], grid: ImageGrid) -> tuple[LabelMap, list[str]]:
    """Label map of the non-empty structures (an earlier one keeps shared voxels)."""
    labels = np.zeros(grid.shape, np.int32)
    sources: list[str] = []
    for s in chosen:
        if s.is_empty:
            warnings.warn(f"structure {s.name!r} is empty; skipped", RtplanWarning, stacklevel=3)
            continue
        sub = labels[s.bbox]
        overlap = sub[s.cropped_mask]
        if np.any(overlap):
            warnings.warn(
                f"structure {s.name!r} overlaps an earlier lesion structure; the shared "
                "voxels stay with the earlier one",
                RtplanWarning,
                stacklevel=3,
            )
        sub[s.cropped_mask & (sub == 0)] = len(sources) + 1
        sources.append(f"ROI {s.name!r}")
    return labels, sources


def lesions_from_structures(
    structures: StructureSet | Iterable[Structure],
    *,
    names: Iterable[str] | None = None,
    target_grid: ImageGrid | None = None,
    min_volume_cc: float = 0.0,
    suv: npt.ArrayLike | None = None,
    suv_grid: ImageGrid | None = None,
    references: References | None = None,
    body: npt.ArrayLike | None = None,
) -> Lesions:
    """Lesions from structures (e.g. RTSTRUCT ROIs): each structure is one lesion.

    Parameters
    ----------
    structures : StructureSet or iterable of Structure
        Lesion contours, all on one grid (e.g. from ``rtplan.dicom_io.read_rtstruct``).
    names : iterable of str, optional
        Only these structures (looked up by name, synonym tolerant in a
        StructureSet), in this order. Default: all, in order.
    target_grid, min_volume_cc, suv, suv_grid, references, body
        As in :func:`lesions_from_mask` (the same plausibility checks apply).

    Returns
    -------
    Lesions
        Named ``L1``, ``L2``... in structure order; ``source`` keeps the ROI name. Empty
        structures are skipped with a warning.

    Raises
    ------
    GridMismatchError
        When the structures are not on one grid.
    MissingStructureError
        When a name in ``names`` is not in the set.
    TypeError
        When ``structures`` is not a StructureSet or an iterable of Structure, or
        ``target_grid`` / ``suv_grid`` is not an ImageGrid.
    """
    _check_grid(target_grid, "target_grid", optional=True)
    min_volume_cc = _check_min_volume(min_volume_cc)
    chosen, grid = _chosen_structures(structures, names, target_grid)
    labels, sources = _structure_labels(chosen, grid)
    sv, ref_means = _suv_and_references(suv, suv_grid, grid, references)
    region = _region(body, target_grid or grid, "the lesion structures (a Body or organ ROI?)")
    return _build(
        labels,
        grid,
        sources=sources,
        target_grid=target_grid,
        suv=sv,
        ref_means=ref_means,
        min_volume_cc=min_volume_cc,
        region=region,
    )


def _positive(value: float, name: str) -> float:
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
    return v


@dataclass(frozen=True, eq=False)
class _Segmentation:
    """Lesion labels 1..count on the PET grid, with notes per label and how they were found."""

    labels: LabelMap
    count: int
    notes: list[list[str]]  # per label, or empty when no label has notes
    description: str


@dataclass(frozen=True)
class _Thresholds:
    """The threshold settings of :func:`lesions_from_pet`, as the caller gave them."""

    method: PetMethod
    threshold_suv: float
    percent: float
    reference: ReferenceRegion
    reference_factor: float
    floor_suv: float
    neighbourhood_mm: float


def lesions_from_pet(
    suv: npt.ArrayLike,
    grid: ImageGrid,
    *,
    method: PetMethod = "percent_max",
    threshold_suv: float = 3.0,
    percent: float = 41.0,
    references: References | None = None,
    reference: ReferenceRegion = "liver",
    reference_factor: float = 1.0,
    floor_suv: float = 3.0,
    neighbourhood_mm: float = 20.0,
    seeds_mm: Sequence[Sequence[float]] | None = None,
    seed_tolerance_mm: float = 5.0,
    search_region: npt.ArrayLike | None = None,
    exclude: npt.ArrayLike | None = None,
    min_volume_cc: float = 0.1,
    connectivity: Connectivity = 26,
    target_grid: ImageGrid | None = None,
    body: npt.ArrayLike | None = None,
) -> Lesions:
    """Segment PSMA-positive lesions in a PET SUV image.

    Methods (CLINICAL.md section 3d):

    * ``"fixed"``: voxels with SUV >= ``threshold_suv``. Default 3.0, the qPSMA bone
      threshold (Gafita et al., J Nucl Med 2019;60:1277 [V]); SUV >= 4 is also used in
      PSMA tumour-volume work [U].
    * ``"percent_max"``: candidate hot spots are connected components of
      SUV >= ``floor_suv`` (tool default 3.0, the same qPSMA number); each candidate is
      then re-thresholded at ``percent`` % of its own SUVmax within its neighbourhood
      (voxels within ``neighbourhood_mm`` of the candidate that are nearer to it than to
      any other candidate), keeping the component that contains its hottest voxel.
      Default 41 %, the EANM FDG convention (Boellaard 2015 [U]); 40 / 45 / 50 % gave no
      relevant change in PSMA semiquantification (Mihatsch et al., Cancers 2022;14:270
      [V]). Two lesions whose candidates touch above the floor become one.
    * ``"reference"``: voxels with SUV > ``reference_factor`` x SUVmean of a reference
      region (``references[reference]``). Default: 1.0 x the liver, i.e. the uptake
      above which PROMISE calls a lesion PSMA-positive (miPSMA score >= 2, CLINICAL.md
      section 3c [V-3p]); ``reference="blood_pool"`` selects every lesion with score >= 1.

    Then: connected components, ``min_volume_cc``, ``seeds_mm`` / ``search_region`` /
    ``exclude`` to keep physiological uptake (bladder, kidneys, bowel) out.

    Parameters
    ----------
    suv : array_like of float, shape ``grid.shape``
        SUV image (e.g. from ``rtplan.dicom_io.read_pet_suv``).
    grid : ImageGrid
        PET grid. Segmentation and SUV statistics happen on it.
    method : {"fixed", "percent_max", "reference"}
        Threshold method (above).
    threshold_suv : float
        SUV threshold of ``"fixed"``.
    percent : float
        Percentage (0-100) of each lesion's SUVmax for ``"percent_max"``.
    references : mapping, optional
        ``"blood_pool"``, ``"liver"``, ``"parotid"`` mapped to masks on ``grid`` (or to
        SUVmean numbers); used by ``"reference"`` and, when given, for the miPSMA score
        of every lesion.
    reference : {"liver", "blood_pool", "parotid"}
        Reference region of ``"reference"``.
    reference_factor : float
        Multiple of the reference SUVmean used as threshold (tool default 1.0).
    floor_suv : float
        Candidate threshold of ``"percent_max"`` (tool default 3.0).
    neighbourhood_mm : float
        How far a ``"percent_max"`` lesion may reach from its candidate (tool default
        20 mm); a lesion that reaches the limit gets a note.
    seeds_mm : sequence of (x, y, z), optional
        LPS points in mm; only lesions within ``seed_tolerance_mm`` of a seed are kept.
    seed_tolerance_mm : float
        Tool default 5 mm (about one PET voxel plus partial-volume blur).
    search_region : array_like of bool, optional
        Mask on ``grid``; voxels outside it are never lesion.
    exclude : array_like of bool, optional
        Mask on ``grid`` of physiological uptake (bladder, kidneys, bowel); never lesion.
    min_volume_cc : float
        Smallest lesion kept, measured on the output grid (tool default 0.1 cc, which
        drops one-voxel noise at 4 mm PET voxels).
    connectivity : {6, 18, 26}
        Connected-component neighbourhood (default 26).
    target_grid : ImageGrid, optional
        Atlas grid to move the lesion masks to (nearest neighbour); default ``grid``.
    body : array_like of bool, optional
        The patient's Body on the output grid, for the plausibility checks of
        :func:`lesions_from_mask`; without it ``search_region`` stands for it (and
        without either, the grid).

    Returns
    -------
    Lesions
        Ordered by decreasing SUVmax, named ``L1``, ``L2``...; ``volume_cc`` is measured
        on the output grid, the SUV statistics on the PET grid. A lesion larger than
        :data:`LARGE_LESION_CC` is kept with an :class:`RtplanWarning` and a note.

    Raises
    ------
    ValueError
        On a bad method, a threshold that is not positive, ``percent`` outside (0, 100),
        a ``"reference"`` method without that reference region, or an SUV image above
        :data:`MAX_PLAUSIBLE_SUV` (tool default).
    InvalidMaskError
        On a region mask of the wrong shape, or lesions covering more than
        :data:`MAX_LESION_FRACTION` of the Body (search region; a uniformly hot PET, a
        threshold below the background).
    TypeError
        When ``grid`` or ``target_grid`` is not an ImageGrid.
    """
    check_choice(method, PET_METHODS, name="method")
    check_choice(reference, REFERENCE_REGIONS, name="reference")
    _check_grid(grid, "grid")
    _check_grid(target_grid, "target_grid", optional=True)
    min_volume_cc = _check_min_volume(min_volume_cc)
    structure = _structure_element(connectivity)
    s = _pet_suv(suv, grid)
    allowed = _allowed_voxels(grid, search_region, exclude)
    ref_means = _reference_means(references, s, grid)
    thresholds = _Thresholds(
        method,
        threshold_suv,
        percent,
        reference,
        reference_factor,
        floor_suv,
        neighbourhood_mm,
    )
    seg = _segment(s, grid, allowed, structure, thresholds, ref_means)
    if seeds_mm is not None:  # keep only components near a seed
        labels, n, notes = _keep_seeded(
            seg.labels, seg.count, seg.notes, grid, seeds_mm, seed_tolerance_mm
        )
        seg = _Segmentation(labels, n, notes, seg.description)
    seg = _by_decreasing_suv_max(seg, s)
    return _build(
        seg.labels,
        grid,
        sources=[seg.description] * seg.count,
        target_grid=target_grid,
        suv=s,
        ref_means=ref_means,
        min_volume_cc=min_volume_cc,
        notes=seg.notes or None,
        region=_pet_region(body, search_region, grid, target_grid),
    )


_PET_CHECK = (
    "the threshold (a fixed SUV below the background? the method) and the PET's SUV scale "
    "(Units, PatientWeight, RadionuclideTotalDose)"
)


def _pet_region(
    body: npt.ArrayLike | None,
    search_region: npt.ArrayLike | None,
    grid: ImageGrid,
    target_grid: ImageGrid | None,
) -> _Region:
    """The region PET lesions are checked against: the Body, else the search region."""
    out_grid = target_grid or grid
    fallback = None
    if search_region is not None:
        m = as_mask(search_region, grid, name="search_region")
        if not grid.equals(out_grid):
            m = np.asarray(resample_to_grid(m, grid, out_grid, order=0), dtype=bool)
        if m.any():
            fallback = _Region(m, "search region", _PET_CHECK)
    return _region(body, out_grid, _PET_CHECK, fallback)


def _pet_suv(suv: npt.ArrayLike, grid: ImageGrid) -> FloatArray:
    """The SUV image as float64, checked against its grid and for finite values."""
    s = np.asarray(suv, dtype=np.float64)
    if s.ndim != 3 or s.shape != grid.shape:
        raise GridMismatchError(f"suv has shape {s.shape} but its grid has shape {grid.shape}")
    _check_suv_values(s)
    return s


def _check_suv_values(s: FloatArray) -> None:
    """Refuse an SUV image with NaN, infinite or implausibly high values."""
    if not np.all(np.isfinite(s)):
        raise InvalidInputError("suv contains NaN or infinite values")
    peak = float(s.max()) if s.size else 0.0
    if peak > MAX_PLAUSIBLE_SUV:
        raise InvalidInputError(
            f"suv: SUVmax {peak:.3g} g/mL is implausible (more than {MAX_PLAUSIBLE_SUV:g}, "
            "tool default); check the PET's SUV scale (Units, PatientWeight, "
            "RadionuclideTotalDose)"
        )


def _allowed_voxels(
    grid: ImageGrid, search_region: npt.ArrayLike | None, exclude: npt.ArrayLike | None
) -> BoolMask:
    """Voxels that may be lesion: inside ``search_region`` and outside ``exclude``."""
    allowed = np.ones(grid.shape, bool)
    if search_region is not None:
        allowed &= as_mask(search_region, grid, name="search_region")
    if exclude is not None:
        allowed &= ~as_mask(exclude, grid, name="exclude")
    return allowed


def _segment(
    s: FloatArray,
    grid: ImageGrid,
    allowed: BoolMask,
    structure: BoolMask,
    th: _Thresholds,
    ref_means: Mapping[str, float],
) -> _Segmentation:
    """Connected lesion components by the threshold method of ``th``."""
    if th.method == "fixed":
        thr = _positive(th.threshold_suv, "threshold_suv")
        labels, n = ndimage.label((s >= thr) & allowed, structure=structure)
        return _Segmentation(labels.astype(np.int32), n, [], f"PET fixed SUV>={thr:g}")
    if th.method == "reference":
        if th.reference not in ref_means:
            raise InvalidInputError(
                f"method 'reference' needs references[{th.reference!r}] (a mask of the "
                "reference region or its SUVmean)"
            )
        thr = _positive(th.reference_factor, "reference_factor") * ref_means[th.reference]
        labels, n = ndimage.label((s > thr) & allowed, structure=structure)
        desc = f"PET {th.reference_factor:g} x {th.reference} SUVmean (SUV>{thr:.2f})"
        return _Segmentation(labels.astype(np.int32), n, [], desc)
    p = float(th.percent)
    if not 0 < p < 100:
        raise InvalidInputError(f"percent must lie strictly between 0 and 100, got {th.percent!r}")
    floor = _positive(th.floor_suv, "floor_suv")
    reach = _positive(th.neighbourhood_mm, "neighbourhood_mm")
    labels_pm, n, notes = _percent_max_labels(s, grid, allowed, p / 100.0, floor, reach, structure)
    return _Segmentation(labels_pm, n, notes, f"PET percent_max {p:g}%")


def _by_decreasing_suv_max(seg: _Segmentation, s: FloatArray) -> _Segmentation:
    """The labels renumbered by decreasing SUVmax (ties keep their order)."""
    n = seg.count
    if not n:
        return seg
    maxima = [
        float(s[sl][seg.labels[sl] == k].max()) if sl is not None else -np.inf
        for k, sl in enumerate(_find_objects(seg.labels, n), start=1)
    ]
    order = np.argsort(-np.asarray(maxima), kind="stable")
    lut = np.zeros(n + 1, np.int32)
    lut[order + 1] = np.arange(1, n + 1)
    notes = [seg.notes[k] for k in order] if seg.notes else seg.notes
    return _Segmentation(lut[seg.labels], n, notes, seg.description)


def _percent_max_labels(
    s: FloatArray,
    grid: ImageGrid,
    allowed: BoolMask,
    fraction: float,
    floor: float,
    reach_mm: float,
    structure: BoolMask,
) -> tuple[LabelMap, int, list[list[str]]]:
    """Per-lesion threshold at ``fraction`` of each candidate's own SUVmax."""
    cand, n_cand = ndimage.label((s >= floor) & allowed, structure=structure)
    out = np.zeros(grid.shape, np.int32)
    notes: list[list[str]] = []
    if n_cand == 0:
        return out, 0, notes
    pad = [math.ceil(reach_mm / sp) + 1 for sp in grid.spacing_mm]
    n_out = 0
    for c, sl in enumerate(_find_objects(cand.astype(np.int32), n_cand), start=1):
        if sl is None:
            continue
        crop = tuple(
            slice(max(a.start - p, 0), min(a.stop + p, nn)) for a, p, nn in zip(sl, pad, grid.shape)
        )
        cand_c = cand[crop]
        s_c = s[crop]
        own = cand_c == c
        suv_max = float(s_c[own].max())
        # nearest candidate of every voxel in the crop, and the distance to it
        dist, idx = ndimage.distance_transform_edt(
            cand_c == 0, sampling=grid.spacing_mm, return_indices=True
        )
        nearest = cand_c[tuple(idx)]
        cell = (nearest == c) & (dist <= reach_mm) & allowed[crop]
        above = cell & (s_c >= fraction * suv_max)
        comp, _ = ndimage.label(above, structure=structure)
        peak = np.unravel_index(np.argmax(np.where(own, s_c, -np.inf)), s_c.shape)
        keep = comp == comp[peak]
        n_out += 1
        sub = out[crop]
        sub[keep] = n_out
        lesion_notes: list[str] = []
        shell = ndimage.binary_dilation(keep, structure=structure) & ~keep
        beyond = (nearest == c) & (dist > reach_mm) & allowed[crop]
        if np.any(shell & beyond & (s_c >= fraction * suv_max)):
            lesion_notes.append(
                f"threshold region reached the {reach_mm:g} mm neighbourhood limit; the "
                "volume may be cut"
            )
        notes.append(lesion_notes)
    return out, n_out, notes


def _keep_seeded(
    labels: LabelMap,
    n: int,
    notes: list[list[str]],
    grid: ImageGrid,
    seeds_mm: Sequence[Sequence[float]],
    tolerance_mm: float,
) -> tuple[LabelMap, int, list[list[str]]]:
    pts = np.asarray(seeds_mm, dtype=float).reshape(-1, 3)
    tol = float(tolerance_mm)
    if not (tol >= 0 and math.isfinite(tol)):
        raise InvalidInputError(f"seed_tolerance_mm must be >= 0, got {tolerance_mm!r}")
    half = [math.ceil(tol / sp) for sp in grid.spacing_mm]
    axes = [np.arange(-h, h + 1) * sp for h, sp in zip(half, grid.spacing_mm)]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    ball = dz**2 + dy**2 + dx**2 <= tol**2 + 1e-9
    offsets = np.argwhere(ball) - np.asarray(half)
    keep: set[int] = set()
    for p in pts:
        centre = grid.lps_to_nearest_index(p)
        idx = centre + offsets
        ok = grid.contains_index(idx)
        if not np.any(ok):
            raise InvalidInputError(f"seed {tuple(p.tolist())} mm lies outside the PET grid")
        found = set(np.unique(labels[tuple(idx[ok].T)]).tolist()) - {0}
        if not found:
            warnings.warn(
                f"no lesion within {tol:g} mm of seed {tuple(np.round(p, 1).tolist())} mm",
                RtplanWarning,
                stacklevel=3,
            )
        keep |= found
    kept = sorted(keep)
    lut = np.zeros(n + 1, np.int32)
    for new, old in enumerate(kept, start=1):
        lut[old] = new
    new_notes = [notes[old - 1] for old in kept] if notes else []
    return lut[labels], len(kept), new_notes
