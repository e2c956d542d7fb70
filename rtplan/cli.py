"""The ``rtplan`` command: demo, plan, stage, atlas and protocol tools.

Run ``rtplan --help`` (or ``python -m rtplan --help``) for the synopsis and
``rtplan <command> --help`` for each command's options, units and examples.

Exit status: 0 on success; 1 when an input cannot be used or the system refuses (the
one-line message on ``stderr`` names the file, structure or parameter, or the cause: no
space left, a read-only file system, not enough memory; ``--debug`` adds the traceback);
2 for a command-line usage error; 3 for an unexpected internal error (a bug, to be
reported); 4 when ``plan`` wrote its outputs but some suggested options could not be built
on this anatomy ("partial": each is listed on ``stderr`` and in the report with what it
lacks); 130 when interrupted (Ctrl-C); 143 when terminated (SIGTERM, handled like Ctrl-C);
141 when standard output is a pipe that was closed (``rtplan ... | head``): the command
stops quietly, as a tool killed by SIGPIPE does.

Output folders are written into a temporary sibling folder and renamed into place at the
end, so a failed, interrupted or terminated run leaves no half-written ``--out`` folder
behind (see :mod:`rtplan._io` for concurrent runs and for what the next run cleans up
after a killed one). A run whose grids need more memory than is available is refused
before it starts (:mod:`rtplan._memory`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import math
import os
import re
import signal
import sys
import textwrap
import threading
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO, TypedDict, cast

import numpy as np
import numpy.typing as npt

from rtplan._clinical_args import (
    add_context_arguments,
    context_from_args,
    reference_values,
    tracer_from_args,
)
from rtplan._io import errno_of, name_max, staged_output
from rtplan._memory import check_memory, image_bytes, shipped_atlas_grid
from rtplan._progress import Progress
from rtplan._typing import BoolMask, FloatArray, Vec3
from rtplan.atlas import (
    Atlas,
    atlas_from_dicom,
    atlas_from_label_maps,
    complete_anatomy,
    list_atlases,
    load_atlas,
    read_landmarks,
)
from rtplan.cohort.cli import add_cohort_parser
from rtplan.context import scan_meaning, subgroup_lines
from rtplan.demo import plan_case, run_demo, write_case_outputs
from rtplan.dicom_io import read_pet_suv, read_rtstruct, write_rtstruct_with_points
from rtplan.errors import DicomInputError, InvalidInputError, RtplanError, RtplanWarning
from rtplan.figures import save_atlas_views
from rtplan.grid import ImageGrid, resample_to_grid
from rtplan.imported_dose import ImportedDose, check_same_frame, read_imported_dose
from rtplan.lesions import (
    LesionRow,
    Lesions,
    PetMethod,
    ReferenceRegion,
    lesions_from_mask,
    lesions_from_pet,
    lesions_from_structures,
)
from rtplan.protocol import (
    Protocol,
    ProtocolConstraint,
    list_protocols,
    load_protocol,
    protocol_text,
)
from rtplan.protocol_diff import diff_protocols, format_diff
from rtplan.report import DEFAULT_TRACER
from rtplan.staging import Stage
from rtplan.staging import stage as stage_lesions
from rtplan.tracers import Tracer, parse_reference

__all__ = [
    "PetMethodArgs",
    "build_parser",
    "lesion_table_text",
    "main",
    "parse_pet_method",
    "staged_output",
]

PROG = "rtplan"
DEFAULT_PROTOCOL = "nrg_salvage"
DEFAULT_ATLAS = "male_pelvis_postop"

#: Exceptions that mean "bad input": shown as one line, exit status 1.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    RtplanError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
    ValueError,
)

#: ... and those of the system (no space, read-only, permission...): also one line, exit 1.
_INPUT_OR_SYSTEM_ERRORS: tuple[type[BaseException], ...] = (*_INPUT_ERRORS, OSError)

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_PARTIAL = 4  # written, but some suggested options could not be built (listed on stderr)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for a tool killed by it
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143

#: What every command function takes and returns (the exit status).
_Command = Callable[[argparse.Namespace, Progress], int]


# ============================================================================ helpers
class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line: ``rtplan: error: ...``."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}{hint}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's examples as written; wider option column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _one_line(exc: BaseException) -> str:
    """The message of an exception on one line (KeyError quotes removed).

    An error of the system says what the system said (``No space left on device: PATH``)
    and what to do, and nothing of a library's own text; a fatal error does not end in
    "; skipped" (words of a reader that would have skipped the item when told to).
    """
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    elif isinstance(exc, OSError) and not isinstance(exc, RtplanError):
        text = _os_error_text(exc)
    else:
        text = str(exc) or type(exc).__name__
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return _SKIPPED.sub("", line)


#: "; skipped" (with a note in brackets) at the end of a message: dropped from fatal errors.
_SKIPPED = re.compile(r";\s*skipped\b(\s*\(.*\))?\s*$")

#: What to do about an error of the system, by errno (added to its one-line message).
_OS_ADVICE: Mapping[int, str] = {
    errno.ENOSPC: "free some space, or choose an --out on another disk",
    errno.EDQUOT: "the disk quota is used up: free some space, or choose another --out",
    errno.EROFS: "choose an --out on a writable file system",
    errno.EFBIG: "a file grew past the file system's limit; choose another --out",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def _os_error_text(exc: OSError) -> str:
    """``strerror: filename (advice)`` of an OSError, or its own message when it has no errno.

    The errno may sit on the OSError this one was raised from (a library that re-raised
    it with its own text); only the first line of such a text is kept.
    """
    code = errno_of(exc)
    if code is None:
        first = (str(exc) or type(exc).__name__).strip().splitlines()
        return first[0] if first else type(exc).__name__
    # the system's words (a library's re-raised text has none of its own)
    text = exc.strerror if exc.errno == code and exc.strerror else os.strerror(code)
    if exc.filename is not None:
        text += f": {os.fsdecode(exc.filename)}"
    advice = _OS_ADVICE.get(code)
    return f"{text} ({advice})" if advice else text


def _fail(message: str) -> NoReturn:
    """Raise the error the CLI shows as ``rtplan: error: <message>``."""
    raise RtplanError(message)


def _print_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """:func:`warnings.showwarning` replacement: one ``rtplan: warning: ...`` line."""
    stream = file if file is not None else sys.stderr
    text = " ".join(str(message).split())
    with contextlib.suppress(OSError, ValueError):  # stderr closed: the warning is lost
        stream.write(f"{PROG}: warning: {text}\n")


def _spacing(values: Sequence[float] | None) -> Vec3 | None:
    """``--spacing Z Y X`` in mm, checked to be 0.2-20 mm each (None when not given)."""
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if len(out) != 3 or any(not (0.2 <= v <= 20.0) for v in out):
        raise ValueError(f"--spacing must be three numbers between 0.2 and 20 mm, got {values}")
    return (out[0], out[1], out[2])


def _positive_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a distance in mm, got {text!r}") from None
    if not (0.5 <= value <= 10.0):
        raise argparse.ArgumentTypeError(f"expected 0.5-10 mm, got {text!r}")
    return value


# ============================================================================ inputs
def _require_dir(path: str, option: str) -> Path:
    """``path`` as an existing folder (the error names ``option``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{option} folder {path!r} does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"{option} {path!r} is not a folder")
    return p


def _require_file(path: str, option: str) -> Path:
    """``path`` as an existing file (the error names ``option``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{option} file {path!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"{option} {path!r} is a folder, expected a file")
    return p


class _DoseAction(argparse.Action):
    """``--dose OPTION=FILE`` (repeatable): collected into a dict, option -> file."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        text = values if isinstance(values, str) else ""
        option, sep, path = text.partition("=")
        option = option.strip()
        if not sep or not option or not path:
            parser.error(
                f"{option_string or '--dose'}: expected OPTION=FILE (e.g. PBRT=RD_PBRT.dcm, "
                f"or PBRT+WPRT/Pelvis=RD_pelvis.dcm for one course), got {text!r}"
            )
        given: dict[str, str] | None = getattr(namespace, self.dest)
        doses = dict(given or {})
        if option in doses:
            parser.error(f"{option_string or '--dose'}: {option} is given twice")
        doses[option] = path
        setattr(namespace, self.dest, doses)


def _read_doses(doses: Mapping[str, str], progress: Progress) -> dict[str, ImportedDose]:
    """The ``--dose`` files, read and checked (before the options are planned)."""
    paths = {option: _require_file(path, f"--dose {option}=") for option, path in doses.items()}
    if not paths:
        return {}
    with progress.step("reading imported doses"):
        return {option: read_imported_dose(path) for option, path in paths.items()}


def _optional_dir(path: str | None, option: str) -> Path | None:
    return None if path is None else _require_dir(path, option)


def _optional_file(path: str | None, option: str) -> Path | None:
    return None if path is None else _require_file(path, option)


class _PetMethodName(TypedDict):
    method: PetMethod


class PetMethodArgs(_PetMethodName, total=False):
    """Keyword arguments of :func:`rtplan.lesions.lesions_from_pet` for one PET method.

    ``method`` is always there; ``references`` maps a reference region to its SUVmean
    (g/mL) or to the mask it is measured in.
    """

    threshold_suv: float
    percent: float
    reference: ReferenceRegion
    references: dict[str, float | BoolMask]


_REFERENCES: Mapping[str, ReferenceRegion] = {"liver": "liver", "blood": "blood_pool"}


def _pet_method(name: str, arg: str) -> PetMethodArgs | None:
    """The method of ``name:arg``, or None when the numbers are out of range.

    Raises ValueError when ``arg`` is not a number.
    """
    if name == "suv":
        value = float(arg)
        return {"method": "fixed", "threshold_suv": value} if 0 < value < 1000 else None
    if name == "pct":
        value = float(arg.rstrip("%"))
        return {"method": "percent_max", "percent": value} if 0 < value < 100 else None
    if name in _REFERENCES:
        ref = _REFERENCES[name]
        if not arg:
            return {"method": "reference", "reference": ref}
        try:  # MEAN or MEAN,SD: the threshold is the mean; the SD is checked, not used
            mean = parse_reference(f"{name}:{arg}").mean_suv
        except InvalidInputError:
            return None
        if mean is not None:
            return {"method": "reference", "reference": ref, "references": {ref: mean}}
    return None


def parse_pet_method(text: str) -> PetMethodArgs:
    """Keyword arguments of :func:`rtplan.lesions.lesions_from_pet` from a CLI method string.

    Parameters
    ----------
    text : str
        ``"suv:4"``: fixed threshold, voxels with SUV >= 4;
        ``"pct:41"``: per lesion, voxels >= 41 % of its own SUVmax (hot spots found above
        SUV 3 first);
        ``"liver"`` / ``"blood"``: SUV above the SUVmean of the liver / the blood pool
        (PROMISE miPSMA score >= 2 / >= 1), measured in the ``Liver`` / ``A_Aorta``
        structure; ``"liver:5.2"`` / ``"blood:1.8"`` give the SUVmean instead
        (``"liver:5.2,1.1"`` also gives its SD, which is checked but does not enter
        the threshold: the threshold is the SUVmean, PROMISE miPSMA).

    Returns
    -------
    PetMethodArgs
        A dict: ``method`` and its parameters; for a reference method ``reference`` and,
        when a number was given, ``references``.

    Raises
    ------
    ValueError
        Naming the method string and the accepted forms.

    Examples
    --------
    >>> parse_pet_method("suv:4")
    {'method': 'fixed', 'threshold_suv': 4.0}
    >>> parse_pet_method("pct:41")
    {'method': 'percent_max', 'percent': 41.0}
    >>> parse_pet_method("liver:5.2")
    {'method': 'reference', 'reference': 'liver', 'references': {'liver': 5.2}}
    """
    forms = (
        "suv:<SUV>, pct:<percent of SUVmax>, liver[:<SUVmean>[,<SD>]] or blood[:<SUVmean>[,<SD>]]"
    )
    problem = f"--lesions-from-pet {text!r} is not understood; expected {forms}"
    name, _, arg = text.strip().partition(":")
    try:
        method = _pet_method(name.strip().lower(), arg.strip())
    except ValueError:  # a number that is not one
        raise ValueError(problem) from None
    if method is None:
        raise ValueError(problem)
    return method


#: Where the reference SUVmean of ``--lesions-from-pet liver`` / ``blood`` is measured.
_REFERENCE_STRUCTURES: Mapping[str, str] = {"liver": "Liver", "blood_pool": "A_Aorta"}
#: Organs with physiological PSMA-ligand uptake or excretion, never counted as lesions.
_PHYSIOLOGICAL = ("Bladder", "Kidney_L", "Kidney_R", "Bowel", "Bowel_Small", "Colon")


def _load_atlas_from_patient(args: argparse.Namespace, progress: Progress) -> Atlas:
    """The patient's anatomy (an Atlas) from --ct with --structures or --labels.

    What the later steps need but the structures lack (bones, vessels, muscles, landmarks,
    the prostate-bed region) is derived by :func:`rtplan.atlas.complete_anatomy` unless
    ``--no-complete`` is given; ``--landmarks`` overrides derived landmarks.
    """
    landmarks = None
    if args.landmarks is not None:
        landmarks = read_landmarks(_require_file(args.landmarks, "--landmarks"))
    atlas = _read_patient_anatomy(args, landmarks, progress)
    if args.no_complete or not atlas.missing():
        return atlas
    with progress.step("deriving the missing anatomy (marked as derived)"):
        return complete_anatomy(atlas, landmarks=landmarks, progress=progress)


def _read_patient_anatomy(
    args: argparse.Namespace, landmarks: Mapping[str, Vec3] | None, progress: Progress
) -> Atlas:
    """The anatomy as given: --ct with --structures or --labels, and --landmarks."""
    ct_dir = _require_dir(args.ct, "--ct")
    structures = _optional_file(args.structures, "--structures")
    labels = _optional_dir(args.labels, "--labels")
    with progress.step("reading CT and structures"):
        if labels is not None:
            return _atlas_from_labels(labels, ct_dir, landmarks)
        try:
            with _cli_names(_CT_OPTIONS):
                return atlas_from_dicom(
                    ct_dir, rtstruct=structures, series_uid=args.series_uid, landmarks=landmarks
                )
        except DicomInputError as exc:
            if structures is None and "RTSTRUCT" in str(exc):
                raise DicomInputError(
                    f"{exc} (on the command line: --structures FILE or --labels DIR)"
                ) from None
            raise


def _nifti_errors() -> tuple[type[BaseException], ...]:
    """What nibabel raises on a file that is not (or no longer) a readable image.

    Unknown format or header, truncated data, a broken gzip stream.
    """
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError, ImageDataError

    return (ImageFileError, HeaderDataError, ImageDataError, OSError, EOFError, zlib.error)


def _atlas_from_labels(
    labels: Path, ct_dir: Path, landmarks: Mapping[str, Vec3] | None = None
) -> Atlas:
    """:func:`atlas_from_label_maps`, an unreadable label map named in a one-line error.

    The reader's own errors (RtplanError) pass as they are; what nibabel raises on a
    broken file is looked up (which file of the folder it was) and named.
    """
    _require_nibabel("reading NIfTI label maps")
    try:
        return atlas_from_label_maps(labels, ct=ct_dir, landmarks=landmarks)
    except RtplanError:
        raise
    except _nifti_errors() as exc:
        files = sorted(labels.glob("*.nii")) + sorted(labels.glob("*.nii.gz"))
        for path in files:  # the first file nibabel cannot read is the one
            _nifti_array_and_affine(path, "--labels")
        raise RtplanError(f"--labels {labels}: a label map could not be read ({exc})") from exc


def _require_nibabel(what: str) -> None:
    try:
        import nibabel  # noqa: F401
    except ImportError:  # pragma: no cover - nibabel is an optional dependency
        _fail(f"{what} needs nibabel: pip install 'rtplan[nifti]'")


def _nifti_array_and_affine(
    path: Path, option: str = "--lesions"
) -> tuple[npt.NDArray[np.generic], FloatArray]:
    """The voxel array (``[i, j, k]``) and the RAS affine of a NIfTI file.

    Raises
    ------
    RtplanError
        Naming ``option`` and the file, when nibabel is missing or cannot read it as an
        image.
    """
    _require_nibabel("reading NIfTI lesion masks")
    import nibabel
    from nibabel.spatialimages import SpatialImage

    unreadable: tuple[type[BaseException], ...] = (*_nifti_errors(), ValueError)
    try:
        img = nibabel.load(path)
        if not isinstance(img, SpatialImage) or img.affine is None:
            _fail(f"{option} {path}: not a NIfTI image with an affine ({type(img).__name__})")
        data: npt.NDArray[np.generic] = np.asanyarray(img.dataobj)
    except unreadable as exc:
        raise RtplanError(f"{option} {path}: not a readable NIfTI file ({exc})") from exc
    return data, np.asarray(img.affine, dtype=np.float64)


def _read_nifti_labels(path: Path, grid: ImageGrid) -> npt.NDArray[np.generic]:
    """A NIfTI label map as an array on ``grid`` (resampled by nearest neighbour if needed)."""
    data, affine = _nifti_array_and_affine(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        _fail(f"--lesions {path}: expected a 3-D label map, got shape {data.shape}")
    source = ImageGrid.from_affine(affine, data.shape, convention="RAS")
    labels = ImageGrid.array_from_ijk(data)
    if source.equals(grid):
        return np.ascontiguousarray(labels)
    src_bounds, dst_bounds = source.bounds_mm, grid.bounds_mm
    overlap = all(min(a[1], b[1]) > max(a[0], b[0]) for a, b in zip(src_bounds, dst_bounds))
    if not overlap:
        _fail(
            f"--lesions {path}: the label map does not overlap the CT "
            f"({source.describe()} vs {grid.describe()}); is it in the CT's coordinates?"
        )
    warnings.warn(
        f"--lesions {path.name} is on another grid than the CT ({source.describe()}); "
        "resampled to the CT grid (nearest neighbour)",
        RtplanWarning,
        stacklevel=2,
    )
    return resample_to_grid(labels, source, grid, order=0)


def _read_lesions(
    path: Path,
    atlas: Atlas,
    rois: str | None,
    suv: FloatArray | None,
    references: Mapping[str, float | BoolMask] | None = None,
) -> Lesions:
    """Lesions from a NIfTI label map or an RTSTRUCT with lesion ROIs."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        labels = _read_nifti_labels(path, atlas.grid)
        return lesions_from_mask(
            labels, atlas.grid, suv=suv, references=references, body=_body_mask(atlas)
        )
    try:
        structures = read_rtstruct(path, atlas.grid, map_names=False)
    except DicomInputError as exc:
        raise DicomInputError(
            f"--lesions {path} is neither a NIfTI label map (.nii, .nii.gz) nor a usable "
            f"RTSTRUCT: {exc}"
        ) from None
    wanted = [r.strip() for r in rois.split(",") if r.strip()] if rois else None
    if wanted:
        missing = [r for r in wanted if r not in structures]
        if missing:
            _fail(
                f"--lesion-rois: {', '.join(missing)} not in {path.name}; it has "
                f"{', '.join(structures.names)}"
            )
        return lesions_from_structures(
            structures, names=wanted, suv=suv, references=references, body=_body_mask(atlas)
        )
    chosen = structures.by_role("gtv")
    if not chosen:
        _fail(
            f"{path.name} has no ROI of interpreted type GTV; name the lesion ROIs with "
            f"--lesion-rois (it has {', '.join(structures.names)})"
        )
    return lesions_from_structures(chosen, suv=suv, references=references, body=_body_mask(atlas))


def _body_mask(atlas: Atlas) -> BoolMask | None:
    """The patient's Body (lesions outside it are refused by the readers), if contoured."""
    return atlas.structures["Body"].mask if "Body" in atlas.structures else None


def _pet_lesions(
    suv: FloatArray | None,
    atlas: Atlas,
    method: PetMethodArgs,
    references: Mapping[str, float | BoolMask] | None = None,
) -> Lesions:
    """Lesions segmented on the PET (resampled to the CT grid)."""
    if suv is None:
        _fail("--lesions-from-pet needs the PET series: add --pet DIR")
    ss, grid = atlas.structures, atlas.grid
    kwargs = method.copy()
    if references:
        kwargs["references"] = {**references, **kwargs.get("references", {})}
    ref = kwargs.get("reference")
    if ref is not None and "references" not in kwargs:
        organ = _REFERENCE_STRUCTURES[ref]
        if organ not in ss:
            _fail(
                f"--lesions-from-pet {ref}: the structures have no {organ} to measure the "
                f"reference SUVmean in; give it as a number, e.g. "
                f"{'liver' if ref == 'liver' else 'blood'}:5.0"
            )
        kwargs["references"] = {ref: ss[organ].mask}
    exclude = np.zeros(grid.shape, bool)
    for name in _PHYSIOLOGICAL:
        if name in ss:
            exclude |= ss[name].mask
    body = ss["Body"].mask if "Body" in ss else None
    return lesions_from_pet(suv, grid, exclude=exclude, search_region=body, **kwargs)


def _check_lesion_options(args: argparse.Namespace) -> None:
    """Refuse contradictory lesion options of ``plan`` / ``stage``."""
    if args.lesions is not None and args.lesions_from_pet is not None:
        _fail("give either --lesions or --lesions-from-pet, not both")
    if args.lesions_from_pet is not None and args.pet is None:
        _fail("--lesions-from-pet needs the PET series: add --pet DIR")
    if args.lesion_rois is not None and args.lesions is None:
        _fail("--lesion-rois needs --lesions RTSTRUCT")


def _load_patient(
    args: argparse.Namespace, progress: Progress
) -> tuple[Atlas, Lesions, Tracer | None]:
    """(atlas, lesions, tracer) of a ``plan``/``stage`` run."""
    _check_lesion_options(args)
    pet_method = parse_pet_method(args.lesions_from_pet) if args.lesions_from_pet else None
    lesion_path = _optional_file(args.lesions, "--lesions")
    pet_dir = _optional_dir(args.pet, "--pet")
    with _cli_names(_PET_OPTIONS):
        tracer = tracer_from_args(args.tracer, pet_dir, series_uid=args.pet_series_uid)
    atlas = _load_atlas_from_patient(args, progress)
    references = (
        reference_values(args.reference, atlas.structures, tracer) if args.reference else None
    )
    suv: FloatArray | None = None
    if pet_dir is not None:
        with progress.step("reading PET (SUV)"):
            suv = _read_suv(pet_dir, atlas, args)
    if references is not None and suv is None:
        _fail("--reference needs the PET series: add --pet DIR")
    with progress.step("finding lesions"):
        if lesion_path is not None:
            lesions = _read_lesions(lesion_path, atlas, args.lesion_rois, suv, references)
        elif pet_method is not None:
            lesions = _pet_lesions(suv, atlas, pet_method, references)
        else:
            lesions = Lesions([], grid=atlas.grid)
    return atlas, lesions, tracer


# ============================================================================ DICOM overrides
#: Python arguments that messages of the readers name, and the CLI options that set them.
_CT_OPTIONS: Mapping[str, str] = {"series_uid": "--series-uid", "rtstruct": "--structures"}
_PET_OPTIONS: Mapping[str, str] = {
    "series_uid": "--pet-series-uid",
    "patient_weight_kg": "--patient-weight",
    "injected_dose_bq": "--injected-dose",
    "half_life_s": "--half-life",
    "suv_factor": "--suv-factor",
    "injection_datetime": "--injection-time",
    "scan_datetime": "--scan-time",
}
_PYTHON_ARGUMENT = re.compile(r"\b([a-z]+(?:_[a-z]+)*)=(?![\w'\"])")


def _cli_text(message: str, options: Mapping[str, str]) -> str:
    """``message`` with the Python arguments it names (``series_uid=``) as CLI options."""
    return _PYTHON_ARGUMENT.sub(lambda m: options.get(m[1], m[0]), message)


@contextlib.contextmanager
def _cli_names(options: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a reader's error naming the CLI options for the Python arguments it names."""
    try:
        yield
    except DicomInputError as exc:
        text = _cli_text(str(exc), options)
        if text == str(exc):
            raise
        raise DicomInputError(text) from exc


def _read_suv(pet_dir: Path, atlas: Atlas, args: argparse.Namespace) -> FloatArray:
    """SUVbw on the atlas grid with the PET overrides of the command line.

    The PET must cover the Body (the whole CT grid when no Body is contoured).
    """
    dose_mbq: float | None = args.injected_dose
    with _cli_names(_PET_OPTIONS):
        suv, _ = read_pet_suv(
            pet_dir,
            atlas.grid,
            require_cover=_body_mask(atlas),
            suv_factor=args.suv_factor,
            series_uid=args.pet_series_uid,
            patient_weight_kg=args.patient_weight,
            injected_dose_bq=None if dose_mbq is None else dose_mbq * 1e6,
            half_life_s=args.half_life,
            injection_datetime=args.injection_time,
            scan_datetime=args.scan_time,
        )
    return suv


def _positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _date_time(text: str) -> _dt.datetime:
    """An argparse type: a date and time (ISO 8601, ``2024-05-02 09:41[:30]``), naive."""
    try:
        value = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date and time like 2024-05-02 09:41, got {text!r}"
        ) from None
    if value.tzinfo is not None:
        raise argparse.ArgumentTypeError(
            f"give the local time of the scanner without a time zone, got {text!r}"
        )
    return value


def _add_dicom_overrides(p: argparse.ArgumentParser) -> None:
    """The options that choose a series and stand in for missing PET tags."""
    g = p.add_argument_group(
        "series and PET tags (when the folder holds several series, or a tag is missing)"
    )
    g.add_argument("--series-uid", metavar="UID", help="SeriesInstanceUID of the CT series")
    g.add_argument("--pet-series-uid", metavar="UID", help="SeriesInstanceUID of the PET series")
    g.add_argument(
        "--patient-weight",
        type=_positive_number,
        metavar="KG",
        help="patient weight in kg, for SUVbw (instead of PatientWeight)",
    )
    g.add_argument(
        "--injected-dose",
        type=_positive_number,
        metavar="MBQ",
        help="injected activity in MBq at the injection time (instead of RadionuclideTotalDose)",
    )
    g.add_argument(
        "--suv-factor",
        type=_positive_number,
        metavar="G_PER_BQ",
        help="SUV per rescaled pixel value (pixel x RescaleSlope + RescaleIntercept); "
        "overrides the Units, weight, dose and decay tags, e.g. a Philips SUV scale factor",
    )
    g.add_argument(
        "--half-life",
        type=_positive_number,
        metavar="S",
        help="half-life of the radionuclide in s (instead of RadionuclideHalfLife)",
    )
    g.add_argument(
        "--injection-time",
        type=_date_time,
        metavar="DATETIME",
        help="injection date and time, e.g. 2024-05-02 09:41 (instead of the "
        "radiopharmaceutical's start date and time)",
    )
    g.add_argument(
        "--scan-time",
        type=_date_time,
        metavar="DATETIME",
        help="date and time the decay correction refers to (instead of the series' "
        "acquisition time)",
    )


_LESION_TITLES = ("lesion", "miTNM", "region", "side", "volume [cc]", "SUVmax", "miPSMA", "source")


def _lesion_cells(row: LesionRow) -> list[str]:
    """The cells of one lesion under :data:`_LESION_TITLES`."""
    values = (
        row["name"],
        row["category"],
        row["region"],
        row["side"],
        row["volume_cc"],
        row["suv_max"],
        row["mipsma_score"],
        row["source"],
    )
    return [_cell(v) for v in values]


def lesion_table_text(stage: Stage) -> str:
    """The lesion table printed by ``rtplan stage``: one line per staged lesion.

    Parameters
    ----------
    stage : Stage
        A patient stage; its lesions carry the staging fields.

    Returns
    -------
    str
        A header and one line per lesion (name, miTNM category, region, side, volume in
        cc, SUVmax, miPSMA score, source), or ``"no PSMA-positive lesion"``.
    """
    rows = stage.table()
    if not rows:
        return "no PSMA-positive lesion"
    cells = [_lesion_cells(r) for r in rows]
    widths = [max(len(t), *(len(c[n]) for c in cells)) for n, t in enumerate(_LESION_TITLES)]
    lines = ["  ".join(title.ljust(w) for title, w in zip(_LESION_TITLES, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _stage_text(stage: Stage, *, detailed: bool = False) -> str:
    """``"TrN1M0"``, with the PROMISE form in brackets when ``detailed``."""
    if detailed and stage.detailed:
        return f"{stage.string} ({stage.detailed})"
    return stage.string


def _value_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(v) for v in value)
    return str(value)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


# ============================================================================ commands
def _cmd_demo(args: argparse.Namespace, progress: Progress) -> int:
    summary = run_demo(
        args.out,
        spacing_mm=_spacing(args.spacing),
        dose_spacing_mm=args.dose_spacing,
        cases=args.case or None,
        jobs=args.jobs,
        force=args.force,
        progress=progress,
    )
    if not args.quiet:
        _print(summary.text())
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace, progress: Progress) -> int:
    dose_files: dict[str, str] = args.dose or {}
    inputs = [args.ct, args.pet, args.structures, args.labels, args.lesions, *dose_files.values()]
    if args.protocol and Path(args.protocol).exists():
        inputs.append(args.protocol)
    _require_dir(args.ct, "--ct")
    protocol = _load_protocol(args.protocol)
    context = context_from_args(args)
    case = _case_label(args)
    with staged_output(args.out, force=args.force, inputs=inputs) as tmp:
        doses = _read_doses(dose_files, progress)
        atlas, lesions, tracer = _load_patient(args, progress)
        for dose in doses.values():  # before the options are planned
            check_same_frame(dose, atlas.grid)
        comparison = plan_case(
            atlas,
            lesions,
            protocol=protocol,
            case=case,
            dose_spacing_mm=args.dose_spacing,
            progress=progress,
            context=context,
            tracer=tracer,
            imported_doses=doses,
        )
        write_case_outputs(comparison, tmp, ct_folder=Path(args.ct), progress=progress)
    for skipped in comparison.skipped:  # listed even with --quiet
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"{PROG}: warning: option not built: {skipped.text}\n")
    for line in comparison.not_evaluated():  # listed even with --quiet
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"{PROG}: warning: {line}\n")
    if not args.quiet:
        if comparison.stage is not None:  # plan_case always stages
            _print(f"stage: {_stage_text(comparison.stage)}")
            for call in comparison.stage.uncertain:
                _print(f"uncertain: {call.text}")
        _print(f"options: {', '.join(comparison.options)}")
        _print(f"written: {args.out}")
    return EXIT_PARTIAL if comparison.skipped else EXIT_OK


def _cmd_stage(args: argparse.Namespace, progress: Progress) -> int:
    context = context_from_args(args)
    atlas, lesions, tracer = _load_patient(args, progress)
    with progress.step("staging"):
        stage = stage_lesions(lesions, atlas)
    _print(f"stage: {_stage_text(stage, detailed=True)}")
    _print(lesion_table_text(stage))
    for call in stage.uncertain:
        _print(f"uncertain: {call.text}")
    for note in stage.notes:
        _print(f"note: {note}")
    if context is not None:
        tracer_name = tracer.name if tracer is not None else DEFAULT_TRACER
        for line in scan_meaning(stage.string, context, tracer_name):
            _print(f"context: {line}")
        for line in subgroup_lines(stage.string, context):
            _print(f"evidence: {line}")
    return EXIT_OK


_GENERIC_FOLDERS = {"ct", "dicom", "images", "image", "series", "data", "input"}


def _default_case(ct: Path) -> str:
    """Case label from the CT folder: its name, or its parent's when generic (``CT``)."""
    folder = ct.resolve()
    if folder.name.lower() in _GENERIC_FOLDERS and folder.parent.name:
        return folder.parent.name
    return folder.name or "rtplan"


def _case_label(args: argparse.Namespace) -> str:
    """``--case``, or the CT folder's name: short enough for ``RS_<case>.dcm`` in ``--out``.

    A default label (from a folder name) is cut to fit; a given ``--case`` that does not
    fit is refused before any work.
    """
    label: str = args.case or _default_case(Path(args.ct))
    room = name_max(Path(args.out).expanduser().resolve().parent) - len("RS_.dcm")
    raw = label.encode("utf-8", errors="surrogateescape")
    if len(raw) <= room:
        return label
    if args.case:
        _fail(
            f"--case is {len(raw)} bytes; the file name RS_<case>.dcm must fit the file "
            f"system's limit of {room + len('RS_.dcm')} bytes (NAME_MAX): give a shorter --case"
        )
    return raw[:room].decode("utf-8", errors="ignore")


def _load_protocol(name_or_path: str | None) -> Protocol:
    return load_protocol(name_or_path or DEFAULT_PROTOCOL)


def _cmd_atlas_list(args: argparse.Namespace, progress: Progress) -> int:
    for name in list_atlases():
        _print(name)
    return EXIT_OK


def _load_named_atlas(args: argparse.Namespace, progress: Progress) -> Atlas:
    spacing = _spacing(args.spacing)
    if args.name in list_atlases():
        _check_atlas_memory(args.name, spacing)
    with progress.step(f"building atlas {args.name}"):
        return load_atlas(args.name, spacing_mm=spacing)


def _check_atlas_memory(name: str, spacing: Vec3 | None) -> None:
    """Refuse to build and write a shipped atlas on a grid beyond the available memory."""
    shape, used = shipped_atlas_grid(name, spacing)
    n_ct = math.prod(shape)
    check_memory(
        image_bytes(n_ct),
        f"atlas {name} on a {' x '.join(f'{s:g}' for s in used)} mm grid "
        f"({' x '.join(map(str, shape))} voxels)",
        advice="a coarser --spacing needs less",
    )


def _cmd_atlas_export(args: argparse.Namespace, progress: Progress) -> int:
    with staged_output(args.out, force=args.force) as tmp:
        atlas = _load_named_atlas(args, progress)
        with progress.step("writing CT series"):
            ct_dir = atlas.export_ct(
                tmp / "ct",
                patient_name=f"RTPLAN^{atlas.name}"[:64],
                patient_id=f"RTPLAN-{atlas.name}"[:64],
            )
        if not args.no_structures:
            with progress.step("writing RTSTRUCT (structures and landmark points)"):
                write_rtstruct_with_points(
                    atlas.structures,
                    ct_dir,
                    tmp / f"RS_{atlas.name}.dcm",
                    points=atlas.landmarks,
                    point_derivations=atlas.landmark_derivations,
                    label=atlas.name[:16],
                )
    if not args.quiet:
        _print(f"written: {args.out}")
    return EXIT_OK


def _cmd_atlas_show(args: argparse.Namespace, progress: Progress) -> int:
    with staged_output(args.out, force=args.force) as tmp:
        atlas = _load_named_atlas(args, progress)
        with progress.step("drawing views"):
            written = save_atlas_views(atlas, tmp)
    if not args.quiet:
        for path in written:
            _print(Path(args.out) / Path(path).name)
    return EXIT_OK


def _cmd_protocol_list(args: argparse.Namespace, progress: Progress) -> int:
    names = list_protocols()
    width = max(len(n) for n in names)
    for name in names:
        _print(f"{name:<{width}}  {load_protocol(name).title}")
    return EXIT_OK


def _print_protocol_values(protocol: Protocol) -> None:
    """Every value of ``protocol`` (but its name and title) with its source, as a table."""
    rows = [(p, _value_text(v), s) for p, v, s in protocol.rows() if not p.startswith("protocol.")]
    width = max((len(p) for p, _, _ in rows), default=4)
    vwidth = min(max((len(v) for _, v, _ in rows), default=5), 24)
    _print()
    _print(f"{'key'.ljust(width)}  {'value'.ljust(vwidth)}  source")
    for path, value, source in rows:
        _print(f"{path.ljust(width)}  {value.ljust(vwidth)}  {source}")


def _cmd_protocol_show(args: argparse.Namespace, progress: Progress) -> int:
    protocol = _load_protocol(args.protocol)
    if args.toml:
        _print(protocol_text(args.protocol or DEFAULT_PROTOCOL), end="")
        return EXIT_OK
    _print(f"{protocol.name}: {protocol.title}")
    if protocol.path:
        _print(f"file: {protocol.path}")
    _print_protocol_values(protocol)
    if protocol.constraints:
        _print()
        _print("constraints")
        for c in protocol.constraints:
            _print(f"  {_constraint_text(c)}")
    tool = protocol.tool_defaults
    if tool:
        _print()
        _print(f"{len(tool)} values are tool defaults (no guideline behind the exact number).")
    return EXIT_OK


def _constraint_text(c: ProtocolConstraint) -> str:
    """``Rectum V65Gy <= 35 %  [conventional, 5 fx]  source`` for one protocol constraint."""
    scope = c.applies_to
    if c.fractions is not None:
        scope += f", {c.fractions} fx"
    return f"{c.structure} {c.metric} {c.text}  [{scope}]  {c.source}".rstrip()


def _cmd_protocol_diff(args: argparse.Namespace, progress: Progress) -> int:
    a, b = _load_protocol(args.protocol_a), _load_protocol(args.protocol_b)
    rows = diff_protocols(a, b, sources=args.sources)
    _print(format_diff(rows, args.protocol_a, args.protocol_b))
    return EXIT_OK


def _cmd_protocol_validate(args: argparse.Namespace, progress: Progress) -> int:
    protocol = _load_protocol(args.protocol)
    n_tool = len(protocol.tool_defaults)
    _print(
        f"{protocol.path or protocol.name}: valid ({len(protocol.keys())} values, "
        f"{len(protocol.constraints)} constraints, {n_tool} tool defaults)"
    )
    return EXIT_OK


# ============================================================================ parser
_MAIN_EPILOG = """\
examples:
  rtplan demo --out rtplan-demo
      four example cases (T0N0M0, TrN0M0, N1M0, M1b) on the shipped atlas: CT, RTSTRUCT,
      one RTDOSE per option, report.html and metrics.csv/json per case
  rtplan stage --ct patient/CT --structures patient/RS.dcm --lesions patient/lesions.nii.gz
  rtplan plan --ct patient/CT --pet patient/PET --lesions-from-pet pct:41 --out plan1
  rtplan atlas export --out atlas_dicom
  rtplan protocol show nrg_salvage

The dose estimate is an approximation for comparing options, never a dose calculation
for treatment. Coordinates are DICOM patient coordinates (LPS), distances in mm, doses in Gy.
"""

_INPUT_HELP = """\
inputs:
  The CT is a DICOM series folder (one series; other files are ignored). Organs come from
  an RTSTRUCT (--structures FILE; default: an RTSTRUCT found in the CT folder) or from
  NIfTI label maps on the CT grid (--labels DIR). Names are mapped to AAPM TG-263 through
  a synonym table ("Urinary Bladder" -> Bladder, "femur_left" -> Femur_Head_L).

lesions (PSMA-positive, each becomes a GTV):
  --lesions FILE     a NIfTI label map (.nii/.nii.gz; 0 = background, each other value
                     one lesion) on the CT grid, or an RTSTRUCT (.dcm) with lesion ROIs:
                     those named by --lesion-rois, else every ROI of interpreted type GTV.
  --lesions-from-pet METHOD   segment the PET (needs --pet); METHOD is one of
                     suv:4         voxels with SUV >= 4 (fixed threshold; SUVbw, g/mL)
                     pct:41        per lesion, voxels >= 41 % of its own SUVmax (hot
                                   spots are first found above SUV 3)
                     liver         SUV above the liver SUVmean (PROMISE miPSMA score
                                   >= 2), measured in the Liver structure
                     liver:5.2     the same with the liver SUVmean given
                     liver:5.2,1.1 the same with its SD (recorded; the threshold is
                                   the mean)
                     blood[:1.8]   SUV above the blood-pool SUVmean (miPSMA >= 1),
                                   measured in A_Aorta or given
                     Urinary activity (Bladder, kidneys, bowel where contoured) and
                     voxels outside Body are never lesion.
  neither            no lesion: the PSMA-negative case (T0N0M0).
"""

_PLAN_EPILOG = (
    _INPUT_HELP
    + """
imported plan doses (--dose OPTION=FILE, repeatable):
  Compare a real plan with the estimate: FILE is an RTDOSE (DoseUnits GY, DoseSummationType
  PLAN or MULTI_PLAN, an axial grid, the CT's FrameOfReferenceUID) of the option named
  OPTION, e.g. from a planning system that optimised the targets of RS_<case>.dcm. The
  option gets a second column "OPTION [imported]" next to its estimate, in the report and
  the metrics; every column says whether its dose is estimated or imported (and from which
  file). The dose is interpolated onto rtplan's dose grid; a structure the RTDOSE grid
  does not cover counts as 0 Gy outside it, with a warning. For an option of several
  courses, give the plan sum (its split over the courses is then approximated from the
  estimate, and the rows that depend on it say so) or one file per course:
  --dose OPTION/COURSE=FILE for each course. The option names are those of the report
  (e.g. PBRT, PBRT+WPRT); a name that is not one of the case's options is an input error.

outputs (in --out, written all at once at the end):
  RS_<case>.dcm      one RTSTRUCT: the organs and the GTV/CTV/PTV of every option,
                     referencing the input CT series (imports on top of it in a TPS)
  RD_<option>.dcm    one RTDOSE per option (total physical dose, Gy; an ESTIMATE)
  report.html        the options side by side (open in a browser, prints to PDF)
  metrics.csv/.json  one row per metric, one column per option (and per imported dose)

examples:
  rtplan plan --ct pt01/CT --structures pt01/RS.dcm --lesions pt01/psma_lesions.nii.gz \\
              --out pt01_plan
  rtplan plan --ct pt01/CT --pet pt01/PET --lesions-from-pet suv:4 --protocol my.toml \\
              --dose-spacing 3 --out pt01_plan --force
  rtplan plan --ct pt01/CT --structures pt01/RS.dcm --lesions pt01/psma_lesions.nii.gz \\
              --dose PBRT=tps/RD_PBRT.dcm --dose PBRT+WPRT=tps/RD_WPRT_sum.dcm --out pt01_real
"""
)

_STAGE_EPILOG = (
    _INPUT_HELP
    + """
output: the PROMISE miTNM stage (e.g. "TrN1M0") and one line per lesion (region, volume
in cc, SUVmax, category) on stdout.

examples:
  rtplan stage --ct pt01/CT --structures pt01/RS.dcm --lesions pt01/RS_lesions.dcm \\
               --lesion-rois GTV_node1,GTV_node2
  rtplan stage --ct pt01/CT --labels pt01/labels --pet pt01/PET --lesions-from-pet pct:41
"""
)

_DEMO_EPILOG = """\
cases (PSMA PET staging categories of the UCLA series, Nikitas et al., JNCCN 2026):
  T0N0M0   no PSMA-positive lesion
  TrN0M0   a local recurrence at the vesicourethral anastomosis
  N1M0     two pelvic nodes (left external iliac, right internal iliac)
  M1b      one bone lesion (right ilium) and one pelvic node

Each case folder holds ct/ (CT series), RS_<case>.dcm (all structures of all options),
RD_<option>.dcm (one RTDOSE per option), report.html, metrics.csv and metrics.json.

examples:
  rtplan demo                          # into ./rtplan-demo
  rtplan demo --out /tmp/demo --spacing 5 3 3 --force    # coarser CT grid, faster
  rtplan demo --case TrN0M0 --case N1M0
"""

_ATLAS_EPILOG = """\
examples:
  rtplan atlas list
  rtplan atlas export --out atlas_dicom                 # CT series + RTSTRUCT
  rtplan atlas export male_pelvis_postop --spacing 2.5 1.5 1.5 --out atlas_fine
  rtplan atlas show --out atlas_png                     # axial/coronal/sagittal PNGs
"""

_PROTOCOL_EPILOG = """\
A protocol is a TOML file of margins (mm), borders, prescriptions (Gy, fractions) and
OAR constraints, each value with its source; see the module rtplan.protocol for the
format. Start from a shipped one: rtplan protocol show nrg_salvage.

examples:
  rtplan protocol list
  rtplan protocol show nrg_salvage
  rtplan protocol validate my_protocol.toml
"""


def _wrap(text: str) -> str:
    """A description paragraph wrapped for the help screen."""
    return textwrap.fill(" ".join(text.split()), width=92)


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument(
        "-q", "--quiet", action="store_true", help="no progress and no summary on the terminal"
    )
    g.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )


def _add_out(p: argparse.ArgumentParser, default: str | None = None) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        metavar="DIR",
        required=default is None,
        default=default,
        help="output folder (created; must not exist or be empty)"
        + (f"; default {default}" if default else ""),
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="replace an existing non-empty --out (only once the new one is complete)",
    )


def _add_spacing(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("Z", "Y", "X"),
        help=f"{what} voxel size in mm: slice thickness, row, column "
        "(e.g. 5 3 3 for a fast coarse run; default: the atlas's own grid)",
    )


def _add_patient_inputs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("patient inputs")
    g.add_argument("--ct", metavar="DIR", required=True, help="CT series folder (DICOM)")
    g.add_argument(
        "--landmarks",
        metavar="TOML",
        help="landmarks in LPS mm (name = [x, y, z]) that override the derived ones",
    )
    g.add_argument(
        "--no-complete",
        action="store_true",
        help="do not derive missing bones, vessels, muscles, landmarks and the prostate-bed "
        "region from the CT and the registered atlas (default: derive them, marked as derived)",
    )
    g.add_argument(
        "--pet",
        metavar="DIR",
        help="PSMA PET series folder (DICOM); SUVbw is computed from the DICOM tags and "
        "resampled to the CT grid",
    )
    s = g.add_mutually_exclusive_group()
    s.add_argument(
        "--structures", metavar="RTSTRUCT", help="RTSTRUCT file of the organs on this CT"
    )
    s.add_argument(
        "--labels", metavar="DIR", help="folder of NIfTI label maps of the organs (CT grid)"
    )
    g.add_argument(
        "--lesions",
        metavar="MASK",
        help="lesion mask: NIfTI label map or RTSTRUCT with lesion ROIs (see below)",
    )
    g.add_argument(
        "--lesion-rois",
        metavar="NAMES",
        help="comma-separated ROI names of the lesions in a --lesions RTSTRUCT "
        "(default: ROIs of interpreted type GTV)",
    )
    g.add_argument(
        "--lesions-from-pet",
        metavar="METHOD",
        help="segment lesions on the PET: suv:<SUV>, pct:<percent>, liver or "
        "liver:<mean>,<sd> (see below)",
    )
    _add_dicom_overrides(p)


def _add_dose_spacing(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--dose-spacing",
        type=_positive_mm,
        default=2.5,
        metavar="MM",
        help="voxel size of the dose grid in mm, cubic (default 2.5)",
    )


def _add_protocol_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "protocol",
        nargs="?",
        metavar="FILE",
        help=f"TOML file or name (default {DEFAULT_PROTOCOL})",
    )


def _leaf(p: argparse.ArgumentParser, func: _Command) -> None:
    """Finish a command's parser: the general options, and the function it runs."""
    _add_common(p)
    p.set_defaults(func=func)


def _add_demo_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the four example cases on the shipped atlas",
        description=_wrap(
            "Run four example cases on the shipped male-pelvis atlas: stage, suggest "
            "and build the field options, compare them, write DICOM and reports."
        ),
        epilog=_DEMO_EPILOG,
        formatter_class=_Formatter,
    )
    _add_out(p, default="rtplan-demo")
    _add_spacing(p, "CT")
    _add_dose_spacing(p)
    p.add_argument(
        "--case",
        action="append",
        metavar="NAME",
        help="run only this case (repeatable): T0N0M0, TrN0M0, N1M0, M1b",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="cases run in N worker processes (default 2 on a machine with 2+ cores)",
    )
    _leaf(p, _cmd_demo)


def _add_plan_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "plan",
        help="stage, build and compare the options for your own patient",
        description=_wrap(
            "Stage the patient's PSMA-positive lesions, suggest and build the field "
            "options of the protocol, estimate their dose and compare them."
        ),
        epilog=_PLAN_EPILOG,
        formatter_class=_Formatter,
    )
    _add_patient_inputs(p)
    add_context_arguments(p)
    g = p.add_argument_group("planning")
    g.add_argument(
        "--protocol",
        metavar="FILE",
        help=f"protocol TOML file or shipped name (default {DEFAULT_PROTOCOL}; "
        "see 'rtplan protocol list')",
    )
    _add_dose_spacing(g)
    g.add_argument(
        "--case",
        metavar="LABEL",
        help="case label in the report and file names (default: the CT folder's name, or "
        "its parent's when it is called CT, DICOM...)",
    )
    g.add_argument(
        "--dose",
        action=_DoseAction,
        metavar="OPTION=FILE",
        help="an RTDOSE of the option OPTION (a real plan, e.g. from a TPS) compared with its "
        "estimate in a column of its own (repeatable; OPTION/COURSE=FILE for one course; "
        "see below)",
    )
    _add_out(p)
    _leaf(p, _cmd_plan)


def _add_stage_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "stage",
        help="print the miTNM stage and the lesion table",
        description=_wrap(
            "Locate the lesions in the patient's anatomy and print the PROMISE "
            "miTNM stage and one line per lesion."
        ),
        epilog=_STAGE_EPILOG,
        formatter_class=_Formatter,
    )
    _add_patient_inputs(p)
    add_context_arguments(p)
    _leaf(p, _cmd_stage)


def _add_atlas_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "atlas",
        help="list, export or show the shipped atlases",
        description=_wrap("The shipped anatomical atlases (synthetic post-prostatectomy pelvis)."),
        epilog=_ATLAS_EPILOG,
        formatter_class=_Formatter,
    )
    asub = p.add_subparsers(dest="atlas_command", metavar="ACTION", parser_class=_Parser)
    asub.required = True
    q = asub.add_parser("list", help="names of the shipped atlases", formatter_class=_Formatter)
    _leaf(q, _cmd_atlas_list)
    for action, helptext, func in (
        ("export", "Write the atlas CT series (+ RTSTRUCT) to a folder.", _cmd_atlas_export),
        ("show", "Write axial, coronal and sagittal PNG views.", _cmd_atlas_show),
    ):
        q = asub.add_parser(
            action,
            help=helptext[0].lower() + helptext[1:].rstrip("."),
            description=helptext,
            formatter_class=_Formatter,
            epilog=_ATLAS_EPILOG,
        )
        q.add_argument(
            "name", nargs="?", default=DEFAULT_ATLAS, help=f"atlas name (default {DEFAULT_ATLAS})"
        )
        _add_spacing(q, "CT")
        if action == "export":
            q.add_argument("--no-structures", action="store_true", help="write the CT series only")
        _add_out(q)
        _leaf(q, func)


def _add_protocol_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "protocol",
        help="list, show, validate or diff protocols",
        description=_wrap(
            "Treatment protocols: margins, prescriptions and constraints with sources."
        ),
        epilog=_PROTOCOL_EPILOG,
        formatter_class=_Formatter,
    )
    psub = p.add_subparsers(dest="protocol_command", metavar="ACTION", parser_class=_Parser)
    psub.required = True
    q = psub.add_parser("list", help="the shipped protocols", formatter_class=_Formatter)
    _leaf(q, _cmd_protocol_list)
    q = psub.add_parser(
        "show",
        help="every value of a protocol with its source",
        formatter_class=_Formatter,
        epilog=_PROTOCOL_EPILOG,
    )
    _add_protocol_argument(q)
    q.add_argument(
        "--toml",
        action="store_true",
        help="print the protocol file itself, to copy and edit "
        "(rtplan protocol show --toml nrg_salvage > mine.toml)",
    )
    _leaf(q, _cmd_protocol_show)
    q = psub.add_parser(
        "validate",
        help="check a protocol file (keys, units, ranges, sources)",
        formatter_class=_Formatter,
        epilog=_PROTOCOL_EPILOG,
    )
    _add_protocol_argument(q)
    _leaf(q, _cmd_protocol_validate)
    q = psub.add_parser(
        "diff",
        help="what differs between two protocols, value by value",
        formatter_class=_Formatter,
        epilog=_PROTOCOL_EPILOG,
    )
    q.add_argument("protocol_a", metavar="A", help="TOML file or shipped name")
    q.add_argument("protocol_b", metavar="B", help="TOML file or shipped name")
    q.add_argument("--sources", action="store_true", help="also compare every value's source")
    _leaf(q, _cmd_protocol_diff)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rtplan`` command (all subcommands).

    Every command's parser sets ``func`` (the function that runs it), ``quiet`` and
    ``debug``.
    """
    from rtplan import __version__  # the package root: imported once it is complete

    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description=_wrap(
            "PSMA PET/CT-guided salvage radiotherapy planning after prostatectomy: "
            "stage the lesions (PROMISE miTNM), build the target volumes of every sensible field "
            "option, estimate dose and compare the options; write RTSTRUCT, RTDOSE and a report."
        ),
        epilog=_MAIN_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_demo_parser(sub)
    _add_plan_parser(sub)
    _add_stage_parser(sub)
    _add_atlas_parser(sub)
    _add_protocol_parser(sub)
    # the cohort parsers take any ArgumentParser subclass; _Parser is one
    add_cohort_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    return parser


# ============================================================================ stdout
class _StdoutError(Exception):
    """Standard output refused a write (a closed pipe, a full disk): its errno."""

    def __init__(self, code: int | None) -> None:
        super().__init__(os.strerror(code) if code is not None else "write error")
        self.code = code


def _print(*parts: object, end: str = "\n") -> None:
    """:func:`print` to standard output; its failure raised as :class:`_StdoutError`."""
    try:
        print(*parts, end=end)
    except OSError as exc:
        raise _StdoutError(errno_of(exc)) from exc


def _flush_stdout() -> None:
    """Flush standard output (a pipe or file is block-buffered: errors surface here)."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise _StdoutError(errno_of(exc)) from exc


def _discard_stdout() -> None:
    """Point the standard output descriptor at /dev/null.

    What is still buffered (and Python flushes at exit) then goes nowhere instead of
    failing again with a second error at exit.
    """
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (captured, replaced): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _stdout_failed(exc: _StdoutError) -> int:
    """The exit status after standard output failed: quiet for a closed pipe, else one line."""
    _discard_stdout()
    if exc.code == errno.EPIPE:  # the reader is gone (``| head``): stop quietly
        return EXIT_BROKEN_PIPE
    _error_line(f"{PROG}: error: cannot write to standard output: {exc}")
    return EXIT_INPUT


def _error_line(text: str) -> None:
    """Write one line to stderr (lost if stderr itself is closed)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


# ============================================================================ signals
class _Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt.

    A BaseException, so that what cleans up after an interruption (the temporary output
    folder) cleans up after it too.
    """


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up is not cut short again
    raise _Terminated


@contextlib.contextmanager
def _sigterm_handled() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C while a command runs (main thread only; then restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# ============================================================================ main
@contextlib.contextmanager
def _warnings_as_lines(debug: bool) -> Iterator[None]:
    """Show rtplan's warnings (once each) as ``rtplan: warning: ...`` lines.

    Those of the libraries underneath (pydicom, matplotlib...) are shown only with
    ``--debug`` (and then, like rtplan's, with their source line).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("default" if debug else "ignore")
        warnings.simplefilter("default", RtplanWarning)
        if not debug:
            warnings.showwarning = _print_warning
        yield


def _run(func: _Command, args: argparse.Namespace, progress: Progress, *, debug: bool) -> int:
    """Run a command; turn what it raises into a message on stderr and an exit status."""
    try:
        status = func(args, progress)
        _flush_stdout()
        return status
    except KeyboardInterrupt:
        _error_line(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except _Terminated:
        _error_line(f"{PROG}: terminated")
        return EXIT_TERMINATED
    except _StdoutError as exc:
        return _stdout_failed(exc)
    except MemoryError as exc:
        return _input_error(
            f"out of memory: {_one_line(exc)} (a coarser --spacing or --dose-spacing needs less)",
            debug=debug,
        )
    except _INPUT_OR_SYSTEM_ERRORS as exc:  # bad input, or the system refused
        return _input_error(_one_line(exc), debug=debug)
    except Exception as exc:  # the last resort: a bug in rtplan, to be reported
        if debug:
            traceback.print_exc()
        _error_line(
            f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(run again with --debug for the traceback, and please report it)"
        )
        return EXIT_INTERNAL


def _input_error(message: str, *, debug: bool) -> int:
    """Show ``rtplan: error: message`` (after the traceback with ``--debug``); exit 1."""
    if debug:
        traceback.print_exc()
    _error_line(f"{PROG}: error: {message}")
    return EXIT_INPUT


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status of ``--help``, ``--version`` or a usage error.

    Help and version text go to standard output, which may be a closed pipe or a full disk.
    """
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, --version and usage errors
        status = int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    except OSError as exc:  # writing the help text failed
        return _stdout_failed(_StdoutError(errno_of(exc)))
    else:
        return args
    try:
        _flush_stdout()
    except _StdoutError as exc:
        return _stdout_failed(exc)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rtplan`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 success, 1 bad input or a refusal of the system, 2 usage error,
        3 internal error, 4 partial (some options not built), 130 interrupted, 141
        standard output closed (a pipe), 143 terminated (SIGTERM).
    """
    parsed = _parse(build_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    args = parsed
    debug: bool = args.debug
    progress = Progress(enabled=False if args.quiet else None)
    func: _Command = args.func
    with _warnings_as_lines(debug), _sigterm_handled():
        return _run(func, args, progress, debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
