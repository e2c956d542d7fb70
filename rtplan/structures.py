"""Structures (named masks on a grid) and structure sets with TG-263 name lookup.

Names follow AAPM TG-263 (Mayo et al., IJROBP 2018;100:1057; the pelvic entries are
listed in CLINICAL.md section 8). User spellings are mapped to TG-263 through
:data:`TG263_SYNONYMS`: case, spaces, hyphens and underscores are ignored, and common
alternatives ("Urinary Bladder", "femur_left", TotalSegmentator class names, the
spellings of Eclipse, RayStation, Monaco and Pinnacle templates such as
"Femoral Head Lt" or "BowelBag") are known. A side written as a leading or trailing
word (``L``, ``Lt``, ``Left``, ``R``, ``Rt``, ``Right``) is moved to the end before the
lookup. A wall or a PRV is a structure of its own and never maps to the organ
(``Rectum_wall`` is ``Rectal_Wall``).

A :class:`Structure` carries its :attr:`~Structure.derivation`: empty for a structure
the user gave, otherwise how rtplan derived it (anatomy completion, a rule on another
structure); :attr:`~Structure.derived` says which.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

from rtplan._typing import BoolMask, Vec3
from rtplan._validation import (
    as_mask,
    bounding_box,
    check_choice,
    check_names,
    check_type,
    is_real,
)
from rtplan.errors import (
    GridMismatchError,
    InvalidInputError,
    InvalidMaskError,
    MissingStructureError,
)
from rtplan.grid import ImageGrid

__all__ = [
    "ROLES",
    "ROLE_TO_INTERPRETED_TYPE",
    "TG263_SYNONYMS",
    "Role",
    "Structure",
    "StructureSet",
    "canonical_name",
    "default_color",
]

Role = Literal["organ", "gtv", "ctv", "ptv", "landmark", "avoidance", "external"]
ROLES: tuple[str, ...] = ("organ", "gtv", "ctv", "ptv", "landmark", "avoidance", "external")

#: DICOM RT ROI Interpreted Type (3006,00A4) for each role.
ROLE_TO_INTERPRETED_TYPE: dict[str, str] = {
    "organ": "ORGAN",
    "gtv": "GTV",
    "ctv": "CTV",
    "ptv": "PTV",
    "landmark": "MARKER",
    "avoidance": "AVOIDANCE",
    "external": "EXTERNAL",
}

#: TG-263 name -> alternative spellings (compared after normalisation, see
#: :func:`canonical_name`). TotalSegmentator (Wasserthal et al., Radiol AI 2023) class
#: names are included so its label maps load with TG-263 names.
TG263_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Body": (
        "external",
        "body",
        "skin_outline",
        "outer_contour",
        "patient",
        "body_outline",
        "patient outline",
        "outline",
        "external contour",
        "body contour",
    ),
    "Bladder": ("urinary bladder", "bladder", "vessie", "blase", "urinary_bladder", "bldr"),
    "Rectum": ("rectum", "rect", "rectal"),
    "Rectal_Wall": ("rectal wall", "rectum wall", "wall rectum", "rectal_wall"),
    "Bladder_Wall": ("bladder wall", "wall bladder", "bladder_wall"),
    "Canal_Anal": ("anal canal", "anal_canal", "anus_canal", "analcanal", "canal anal"),
    "Colon_Sigmoid": ("sigmoid", "sigmoid colon", "colon_sigmoid", "sigmoidcolon", "sigmoid_colon"),
    "Colon": ("colon", "large bowel", "large_bowel", "bowel_large"),
    "Bowel_Small": (
        "small bowel",
        "small_bowel",
        "smallbowel",
        "small intestine",
        "sb",
        "bowel sm",
        "sm bowel",
        "small bowel loops",
    ),
    "Spc_Bowel": (
        "bowel bag",
        "bowel_bag",
        "bag_bowel",
        "bowelbag",
        "peritoneal cavity",
        "bowel space",
        "spc_bowel",
        "bowel cavity",
        "peritoneal space",
        "bowelspace",
    ),
    "Bowel": ("bowel", "intestine", "bowels", "bowel loops", "loops", "bowel_loops"),
    "PenileBulb": (
        "penile bulb",
        "penile_bulb",
        "bulb",
        "bulb of penis",
        "bulbus penis",
        "bulb penis",
        "penis bulb",
        "pbulb",
    ),
    "Urethra": ("urethra", "membranous urethra"),
    "Prostate": ("prostate", "prostate gland"),
    "ProstateBed": (
        "prostate bed",
        "prostate_bed",
        "prostatic fossa",
        "fossa",
        "prostatic bed",
        "pb",
        "sv bed",
        "seminal vesicle bed",
    ),
    "SeminalVes": ("seminal vesicles", "seminal_vesicles", "sv", "seminal vesicle"),
    "Levator_Ani": ("levator ani", "levator_ani", "levator"),
    "Obturator_Int_L": (
        "obturator internus l",
        "obturator_internus_left",
        "obturator int left",
        "l obturator internus",
    ),
    "Obturator_Int_R": (
        "obturator internus r",
        "obturator_internus_right",
        "obturator int right",
        "r obturator internus",
    ),
    "Iliopsoas_L": (
        "iliopsoas left",
        "iliopsoas_left",
        "psoas left",
        "psoas_l",
        "l psoas",
        "iliopsoas l",
    ),
    "Iliopsoas_R": (
        "iliopsoas right",
        "iliopsoas_right",
        "psoas right",
        "psoas_r",
        "r psoas",
        "iliopsoas r",
    ),
    "Femur_Head_L": (
        "femoral head l",
        "femoral head left",
        "femur_left",
        "femur left",
        "left femoral head",
        "l femoral head",
        "femoralhead_l",
        "fem head l",
        "femur_head_left",
        "femur l",
        "hip joint left",
        "femoral hd l",
        "head of femur l",
        "fem hd l",
    ),
    "Femur_Head_R": (
        "femoral head r",
        "femoral head right",
        "femur_right",
        "femur right",
        "right femoral head",
        "r femoral head",
        "femoralhead_r",
        "fem head r",
        "femur_head_right",
        "femur r",
        "hip joint right",
        "femoral hd r",
        "head of femur r",
        "fem hd r",
    ),
    "Bone_Ilium_L": ("hip_left", "ilium left", "ilium l", "left ilium", "iliac bone left"),
    "Bone_Ilium_R": ("hip_right", "ilium right", "ilium r", "right ilium", "iliac bone right"),
    "Bone_Ischium_L": ("ischium left", "ischium l", "left ischium"),
    "Bone_Ischium_R": ("ischium right", "ischium r", "right ischium"),
    "Bone_Pelvic": ("pelvic bones", "pelvis bone", "bony pelvis", "pelvis"),
    "PubicSymphys": (
        "pubic symphysis",
        "symphysis",
        "symphysis pubis",
        "pubis",
        "pubic_symphysis",
        "pubic symph",
    ),
    "Sacrum": ("sacrum", "os sacrum", "sacral bone"),
    "Coccyx": ("coccyx", "tailbone"),
    "VB_L4": ("l4", "vertebra l4", "vertebrae_l4", "l4 vertebra", "vb l4"),
    "VB_L5": ("l5", "vertebra l5", "vertebrae_l5", "l5 vertebra", "vb l5"),
    "VB_S1": ("s1", "vertebra s1", "vertebrae_s1", "vb s1"),
    "VB_S2": ("s2", "vertebrae_s2", "vb s2"),
    "VB_S3": ("s3", "vertebrae_s3", "vb s3"),
    "A_Aorta": ("aorta", "abdominal aorta", "a aorta"),
    "V_Venacava_I": (
        "ivc",
        "inferior vena cava",
        "inferior_vena_cava",
        "vena cava inferior",
        "vena cava",
    ),
    "A_Iliac_L": (
        "common iliac a l",
        "iliac a l",
        "common iliac artery l",
        "common iliac artery left",
        "iliac_artery_left",
        "l common iliac artery",
        "cia left",
        "cia_l",
        "a iliac common l",
        "a_iliac_common_l",
    ),
    "A_Iliac_R": (
        "common iliac a r",
        "iliac a r",
        "common iliac artery r",
        "common iliac artery right",
        "iliac_artery_right",
        "r common iliac artery",
        "cia right",
        "cia_r",
        "a iliac common r",
        "a_iliac_common_r",
    ),
    "V_Iliac_L": (
        "common iliac v l",
        "iliac v l",
        "common iliac vein l",
        "common iliac vein left",
        "iliac_vena_left",
        "l common iliac vein",
        "civ left",
        "civ_l",
        "v_iliac_common_l",
    ),
    "V_Iliac_R": (
        "common iliac v r",
        "iliac v r",
        "common iliac vein r",
        "common iliac vein right",
        "iliac_vena_right",
        "r common iliac vein",
        "civ right",
        "civ_r",
        "v_iliac_common_r",
    ),
    "A_Iliac_Ext_L": (
        "ext iliac a l",
        "ext iliac artery l",
        "external iliac artery l",
        "external iliac artery left",
        "l external iliac artery",
        "eia left",
        "eia_l",
    ),
    "A_Iliac_Ext_R": (
        "ext iliac a r",
        "ext iliac artery r",
        "external iliac artery r",
        "external iliac artery right",
        "r external iliac artery",
        "eia right",
        "eia_r",
    ),
    "V_Iliac_Ext_L": (
        "ext iliac v l",
        "ext iliac vein l",
        "external iliac vein l",
        "external iliac vein left",
        "l external iliac vein",
        "eiv left",
        "eiv_l",
    ),
    "V_Iliac_Ext_R": (
        "ext iliac v r",
        "ext iliac vein r",
        "external iliac vein r",
        "external iliac vein right",
        "r external iliac vein",
        "eiv right",
        "eiv_r",
    ),
    "A_Iliac_Int_L": (
        "int iliac a l",
        "int iliac artery l",
        "internal iliac artery l",
        "internal iliac artery left",
        "l internal iliac artery",
        "iia left",
        "iia_l",
        "hypogastric artery left",
    ),
    "A_Iliac_Int_R": (
        "int iliac a r",
        "int iliac artery r",
        "internal iliac artery r",
        "internal iliac artery right",
        "r internal iliac artery",
        "iia right",
        "iia_r",
        "hypogastric artery right",
    ),
    "V_Iliac_Int_L": (
        "int iliac v l",
        "int iliac vein l",
        "internal iliac vein l",
        "internal iliac vein left",
        "l internal iliac vein",
        "iiv left",
        "iiv_l",
    ),
    "V_Iliac_Int_R": (
        "int iliac v r",
        "int iliac vein r",
        "internal iliac vein r",
        "internal iliac vein right",
        "r internal iliac vein",
        "iiv right",
        "iiv_r",
    ),
    "SpinalCanal": ("spinal canal", "spinal_canal"),
    "SpinalCord": ("spinal cord", "spinal_cord", "cord"),
    "Duodenum": ("duodenum",),
    "VB_L3": ("l3", "vertebra l3", "vertebrae_l3", "vb l3"),
    "CaudaEquina": ("cauda equina", "cauda"),
    "Liver": ("liver",),
    "Kidney_L": ("kidney_left", "left kidney", "kidney l"),
    "Kidney_R": ("kidney_right", "right kidney", "kidney r"),
}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def _set_key(name: str) -> str:
    """A name as compared within a structure set: TG-263's ``!`` and ``^`` count.

    Like :func:`_normalise`, but ``!`` (a PTV with higher-dose PTVs removed) and ``^``
    (custom qualifier) are kept.
    """
    return re.sub(r"[^a-z0-9!^]+", "", name.lower())


_LOOKUP: dict[str, str] = {}
for _tg, _alts in TG263_SYNONYMS.items():
    for _alt in (_tg, *_alts):
        _LOOKUP.setdefault(_normalise(_alt), _tg)

#: Words that name a side, and the letter TG-263 puts at the end of the name.
_SIDE_WORDS: dict[str, str] = {"l": "l", "lt": "l", "left": "l", "r": "r", "rt": "r", "right": "r"}


def _words(name: str) -> list[str]:
    """Lower-case words of a name: split at non-alphanumerics and camel-case humps."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _side_last(name: str) -> str | None:
    """The normalised name with a leading or trailing side word moved to the end as l/r."""
    words = _words(name)
    if len(words) < 2:
        return None
    if words[-1] in _SIDE_WORDS:
        return "".join(words[:-1]) + _SIDE_WORDS[words[-1]]
    if words[0] in _SIDE_WORDS:
        return "".join(words[1:]) + _SIDE_WORDS[words[0]]
    return None


def canonical_name(name: str) -> str | None:
    """TG-263 name for a user spelling, or ``None`` if it is not a known synonym.

    The spelling is compared with :data:`TG263_SYNONYMS` ignoring case, spaces, hyphens,
    underscores and brackets; failing that, a leading or trailing side word (``Lt``,
    ``Left``, ``R``...) is moved to the end (``"LT FEMORAL HEAD"`` is looked up as
    ``"femoral head l"``).

    Raises
    ------
    TypeError
        When ``name`` is not a str.

    Examples
    --------
    >>> canonical_name("Urinary Bladder"), canonical_name("femur_left"), canonical_name("xyz")
    ('Bladder', 'Femur_Head_L', None)
    >>> canonical_name("Femoral Head Lt"), canonical_name("Rectum_wall"), canonical_name("Lt")
    ('Femur_Head_L', 'Rectal_Wall', None)
    """
    check_type(name, str, name="name")
    found = _LOOKUP.get(_normalise(name))
    if found is not None:
        return found
    sided = _side_last(name)
    return None if sided is None else _LOOKUP.get(sided)


# Colours (RGB 0-255) in the spirit of common TPS defaults; a tool default, not a standard.
_NAME_COLORS: dict[str, tuple[int, int, int]] = {
    "Body": (0, 200, 0),
    "Bladder": (255, 255, 0),
    "Rectum": (150, 75, 0),
    "Canal_Anal": (120, 60, 20),
    "Colon_Sigmoid": (200, 120, 40),
    "Spc_Bowel": (255, 170, 120),
    "PenileBulb": (255, 0, 255),
    "Urethra": (255, 120, 255),
    "Femur_Head_L": (0, 180, 255),
    "Femur_Head_R": (0, 120, 255),
    "PubicSymphys": (230, 230, 200),
}
_ROLE_COLORS: dict[str, tuple[int, int, int]] = {
    "organ": (0, 160, 255),
    "gtv": (255, 0, 0),
    "ctv": (255, 128, 0),
    "ptv": (0, 0, 255),
    "landmark": (128, 128, 128),
    "avoidance": (128, 0, 128),
    "external": (0, 200, 0),
}


def _single_voxel_grid(grid: ImageGrid) -> ImageGrid:
    return ImageGrid((1, 1, 1), grid.spacing_mm, grid.origin_mm, grid.direction)


def _check_color(color: object, name: str) -> tuple[int, int, int]:
    """``color`` as three ints 0-255 (numbers are truncated to int, as before)."""
    if isinstance(color, (str, bytes)) or not isinstance(color, Iterable):
        raise TypeError(f"color of {name!r} must be three ints 0-255, got {color!r}")
    values = list(color)
    if not all(is_real(c) for c in values):
        raise TypeError(f"color of {name!r} must be three ints 0-255, got {color!r}")
    rgb = [int(c) for c in values]
    if len(rgb) != 3 or min(rgb) < 0 or max(rgb) > 255:
        raise InvalidInputError(f"color of {name!r} must be three ints 0-255, got {color!r}")
    return (rgb[0], rgb[1], rgb[2])


def default_color(name: str, role: str = "organ") -> tuple[int, int, int]:
    """Display colour (RGB 0-255) for a structure: by TG-263 name, else by role."""
    check_type(name, str, name="name")
    if name in _NAME_COLORS:
        return _NAME_COLORS[name]
    if name.startswith(("A_", "V_")):
        return (220, 0, 0) if name.startswith("A_") else (0, 0, 200)
    if name.startswith(("Bone", "VB_", "Sacrum", "Coccyx")):
        return (240, 240, 210)
    return _ROLE_COLORS.get(role, (0, 160, 255))


class Structure:
    """A named region of interest: a boolean mask on an :class:`ImageGrid`.

    Immutable. The mask is stored cropped to its bounding box, so memory and most
    operations scale with the structure, not the grid; :attr:`mask` rebuilds the full
    array.

    Parameters
    ----------
    name : str
        Structure name (TG-263 where one exists).
    mask : array_like of bool, shape ``grid.shape``
        Voxels inside the structure. Strict 0/1 numbers are accepted.
    grid : ImageGrid
        Geometry of ``mask``.
    role : {"organ", "gtv", "ctv", "ptv", "landmark", "avoidance", "external"}
        What the structure is; sets the DICOM RT ROI Interpreted Type.
    color : (r, g, b), optional
        Display colour 0-255; default from :func:`default_color`.
    derivation : str
        How rtplan derived the structure (e.g. ``"atlas registration (rigid, affine,
        deformable)"``); empty (the default) for a structure the user gave. Written to
        RTSTRUCT as ROIGenerationDescription with ROIGenerationAlgorithm ``AUTOMATIC``.

    Examples
    --------
    >>> g = ImageGrid(shape=(3, 3, 3), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> m = np.zeros(g.shape, bool); m[1, 1, 1] = True
    >>> s = Structure("GTVn1", m, g, role="gtv")
    >>> s.volume_cc, s.centroid_mm
    (0.002, (1.0, 1.0, 2.0))
    >>> Structure("empty", np.zeros(g.shape, bool), g).is_empty
    True
    >>> s.derived, Structure("Sacrum", m, g, derivation="bone from CT").derived
    (False, True)
    """

    __slots__ = ("_bbox", "_local", "color", "derivation", "grid", "name", "role")

    name: str
    grid: ImageGrid
    role: str
    color: tuple[int, int, int]
    derivation: str
    _bbox: tuple[slice, slice, slice] | None
    _local: BoolMask

    def __init__(
        self,
        name: str,
        mask: npt.ArrayLike,
        grid: ImageGrid,
        *,
        role: str = "organ",
        color: tuple[int, int, int] | None = None,
        derivation: str = "",
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"structure name must be a non-empty string, got {name!r}")
        check_type(grid, ImageGrid, name=f"grid of structure {name!r}")
        check_choice(role, ROLES, name=f"role of structure {name!r}")
        check_type(derivation, str, name=f"derivation of structure {name!r}")
        full = as_mask(mask, grid, name=f"mask of structure {name!r}")
        bbox = bounding_box(full)
        local = np.zeros((0, 0, 0), bool) if bbox is None else full[bbox].copy()
        local.flags.writeable = False
        rgb = default_color(name, role) if color is None else _check_color(color, name)
        for attr, value in (
            ("name", name),
            ("grid", grid),
            ("role", role),
            ("color", rgb),
            ("derivation", derivation),
            ("_bbox", bbox),
            ("_local", local),
        ):
            object.__setattr__(self, attr, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Structure is immutable; use renamed() or build a new one")

    def __getstate__(self) -> dict[str, object]:
        return {k: object.__getattribute__(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, object]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @property
    def mask(self) -> BoolMask:
        """The full boolean mask on :attr:`grid` (a new array)."""
        return self.to_mask()

    @classmethod
    def from_cropped(
        cls,
        name: str,
        local_mask: npt.ArrayLike,
        offset: tuple[int, int, int],
        grid: ImageGrid,
        *,
        role: str = "organ",
        color: tuple[int, int, int] | None = None,
        derivation: str = "",
    ) -> Structure:
        """Build a structure from the mask of a sub-box starting at index ``offset`` (k, j, i).

        Costs follow the sub-box, not the grid: no full-grid array is made.

        Raises
        ------
        InvalidMaskError
            When the sub-box does not fit in ``grid``.
        TypeError
            When ``grid`` is not an :class:`ImageGrid`.
        """
        check_type(grid, ImageGrid, name=f"grid of structure {name!r}")
        local = as_mask(local_mask, None, name=f"mask of structure {name!r}")
        off = np.asarray(offset, dtype=int).reshape(-1)
        if off.shape != (3,) or np.any(off < 0) or np.any(off + local.shape > np.array(grid.shape)):
            raise InvalidMaskError(
                f"sub-box of structure {name!r} at {off.tolist()} with shape {local.shape} does "
                f"not fit in the grid of shape {grid.shape}"
            )
        out = cls(
            name,
            np.zeros((1, 1, 1), bool),
            _single_voxel_grid(grid),
            role=role,
            color=color,
            derivation=derivation,
        )
        tight = bounding_box(local)
        bbox: tuple[slice, slice, slice] | None = None
        cropped: BoolMask = np.zeros((0, 0, 0), bool)
        if tight is not None:
            k0, j0, i0 = (int(v) for v in off)
            tk, tj, ti = tight
            bbox = (
                slice(k0 + tk.start, k0 + tk.stop),
                slice(j0 + tj.start, j0 + tj.stop),
                slice(i0 + ti.start, i0 + ti.stop),
            )
            cropped = local[tight].copy()
        cropped.flags.writeable = False
        object.__setattr__(out, "grid", grid)
        object.__setattr__(out, "_bbox", bbox)
        object.__setattr__(out, "_local", cropped)
        return out

    # ------------------------------------------------------------------ masks
    def to_mask(self) -> BoolMask:
        """The full boolean mask on :attr:`grid` (a new writable array)."""
        out = np.zeros(self.grid.shape, bool)
        if self._bbox is not None:
            out[self._bbox] = self._local
        return out

    @property
    def bbox(self) -> tuple[slice, slice, slice] | None:
        """Tight bounding box ``(k, j, i)`` slices, or ``None`` when empty."""
        return self._bbox

    @property
    def cropped_mask(self) -> BoolMask:
        """The mask inside :attr:`bbox` (read-only)."""
        return self._local

    @property
    def is_empty(self) -> bool:
        """True when no voxel is inside."""
        return self._bbox is None

    @property
    def voxel_count(self) -> int:
        """Number of voxels inside."""
        return int(np.count_nonzero(self._local))

    @property
    def volume_cc(self) -> float:
        """Volume in cc (voxel count times voxel volume)."""
        return self.voxel_count * self.grid.voxel_volume_cc

    def shared_voxel_count(self, other: Structure) -> int:
        """Number of voxels inside both this structure and ``other`` (on their bounding boxes).

        Raises
        ------
        GridMismatchError
            ``other`` is on another grid.
        """
        if not self.grid.equals(other.grid):
            raise GridMismatchError(
                f"{self.name} and {other.name} are on different grids: no voxel to compare"
            )
        a, b = self._bbox, other._bbox
        if a is None or b is None:
            return 0
        lo = [max(p.start, q.start) for p, q in zip(a, b)]
        hi = [min(p.stop, q.stop) for p, q in zip(a, b)]
        if any(h <= low for low, h in zip(lo, hi)):
            return 0
        mine = self._local[tuple(slice(x - p.start, y - p.start) for x, y, p in zip(lo, hi, a))]
        theirs = other._local[tuple(slice(x - q.start, y - q.start) for x, y, q in zip(lo, hi, b))]
        return int(np.count_nonzero(mine & theirs))

    @property
    def centroid_mm(self) -> Vec3:
        """LPS centre of mass ``(x, y, z)`` in mm; NaNs when empty."""
        if self._bbox is None:
            nan = float("nan")
            return (nan, nan, nan)
        idx = np.argwhere(self._local).mean(axis=0) + [s.start for s in self._bbox]
        x, y, z = (float(v) for v in self.grid.index_to_lps(idx))
        return (x, y, z)

    @property
    def bounds_mm(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """LPS bounds ``((xmin, xmax), (ymin, ymax), (zmin, zmax))`` of the voxel edges."""
        if self._bbox is None:
            nan = float("nan")
            return ((nan, nan), (nan, nan), (nan, nan))
        return self.grid.crop(self._bbox).bounds_mm

    @property
    def extent_mm(self) -> Vec3:
        """Size ``(x, y, z)`` of the bounding box in mm (left-right, ant-post, sup-inf)."""
        (x0, x1), (y0, y1), (z0, z1) = self.bounds_mm
        return (x1 - x0, y1 - y0, z1 - z0)

    @property
    def interpreted_type(self) -> str:
        """DICOM RT ROI Interpreted Type for :attr:`role`."""
        return ROLE_TO_INTERPRETED_TYPE[self.role]

    @property
    def derived(self) -> bool:
        """True when rtplan derived the structure (see :attr:`derivation`)."""
        return bool(self.derivation)

    def renamed(self, name: str, *, role: str | None = None) -> Structure:
        """A copy with another name (and optionally role); the derivation is kept."""
        return self._copy(name, role or self.role, self.derivation)

    def with_derivation(self, derivation: str) -> Structure:
        """A copy marked with ``derivation`` (``""`` marks it as given by the user)."""
        check_type(derivation, str, name=f"derivation of structure {self.name!r}")
        return self._copy(self.name, self.role, derivation)

    def _copy(self, name: str, role: str, derivation: str) -> Structure:
        if self._bbox is None:
            return Structure(
                name,
                np.zeros(self.grid.shape, bool),
                self.grid,
                role=role,
                color=self.color,
                derivation=derivation,
            )
        offset = (self._bbox[0].start, self._bbox[1].start, self._bbox[2].start)
        return Structure.from_cropped(
            name,
            self._local,
            offset,
            self.grid,
            role=role,
            color=self.color,
            derivation=derivation,
        )

    def __repr__(self) -> str:
        mark = f", derivation={self.derivation!r}" if self.derived else ""
        return f"Structure({self.name!r}, role={self.role!r}, volume_cc={self.volume_cc:.2f}{mark})"


class StructureSet(Mapping[str, Structure]):
    """Ordered structures on one grid, looked up by name, case and synonym tolerant.

    ``ss["bladder"]``, ``ss["Urinary Bladder"]`` and ``ss["Bladder"]`` all return the
    structure stored as ``Bladder``.

    Parameters
    ----------
    structures : iterable of Structure
        Structures, all on the same grid (within :data:`~rtplan.grid.GRID_ATOL_MM`).
    grid : ImageGrid, optional
        The grid; required for an empty set. Default: the grid of the first structure.

    Raises
    ------
    TypeError
        When an item is not a :class:`Structure` or ``grid`` is not an :class:`ImageGrid`.
    InvalidInputError
        When the set is empty and no grid is given, or two structures share a name.
    GridMismatchError
        When a structure is not on the set's grid.
    """

    def __init__(
        self, structures: Iterable[Structure] = (), *, grid: ImageGrid | None = None
    ) -> None:
        check_type(
            structures, Iterable, name="structures", expected_text="an iterable of Structure"
        )
        items = list(structures)
        for n, s in enumerate(items):
            check_type(s, Structure, name=f"structures[{n}]")
        if grid is None:
            if not items:
                raise InvalidInputError("an empty StructureSet needs a grid")
            grid = items[0].grid
        check_type(grid, ImageGrid, name="grid")
        self._grid: ImageGrid = grid
        self._items: dict[str, Structure] = {}
        for s in items:
            self.add(s)

    @property
    def grid(self) -> ImageGrid:
        """The grid every structure of the set is on."""
        return self._grid

    # ------------------------------------------------------------------ mapping
    def add(self, structure: Structure, *, replace: bool = False) -> None:
        """Add a structure; a duplicate name (ignoring case) raises unless ``replace``."""
        check_type(structure, Structure, name="structure")
        if not self.grid.equals(structure.grid):
            raise GridMismatchError(
                f"structure {structure.name!r} is on {structure.grid.describe()} but the set is "
                f"on {self.grid.describe()}"
            )
        existing = self._find(structure.name)
        if existing is not None and not replace:
            raise InvalidInputError(f"the structure set already has a structure named {existing!r}")
        if existing is not None:
            del self._items[existing]
        self._items[structure.name] = structure

    def _find(self, name: str) -> str | None:
        if name in self._items:
            return name
        norm = _set_key(name)
        for key in self._items:
            if _set_key(key) == norm:
                return key
        tg = canonical_name(name)
        if tg is not None:
            for key in self._items:
                if key == tg or canonical_name(key) == tg:
                    return key
        return None

    def resolve(self, name: str) -> str | None:
        """Stored name that ``name`` refers to, or ``None``."""
        return self._find(name)

    def __getitem__(self, name: str) -> Structure:
        check_type(name, str, name="structure name")
        key = self._find(name)
        if key is None:
            raise MissingStructureError(
                f"no structure {name!r} in the structure set; it has: {', '.join(self._items)}"
            )
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def names(self) -> list[str]:
        """Structure names in order."""
        return list(self._items)

    def require(self, names: Iterable[str], *, purpose: str = "this step") -> None:
        """Raise :class:`MissingStructureError` naming every one of ``names`` that is missing."""
        check_names(names, name="names")
        missing = [n for n in names if n not in self]
        if missing:
            raise MissingStructureError(
                f"{purpose} needs structures that are missing: {', '.join(missing)}"
            )

    def select(self, names: Iterable[str]) -> StructureSet:
        """A new set with only the named structures (in the order given)."""
        check_names(names, name="names")
        return StructureSet([self[n] for n in names], grid=self.grid)

    def by_role(self, role: str) -> list[Structure]:
        """Structures of one role, in order."""
        check_choice(role, ROLES, name="role")
        return [s for s in self._items.values() if s.role == role]

    def __repr__(self) -> str:
        return f"StructureSet({len(self)} structures: {', '.join(self._items)})"
