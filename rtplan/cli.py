"""The ``rtplan`` command: demo, plan, stage, atlas and protocol tools.

Run ``rtplan --help`` (or ``python -m rtplan --help``) for the synopsis and
``rtplan <command> --help`` for each command's options, units and examples.

Exit status: 0 on success; 1 when an input cannot be used (the one-line message on
``stderr`` names the file, structure or parameter; ``--debug`` adds the traceback);
2 for a command-line usage error; 3 for an unexpected internal error; 130 when
interrupted. Output folders are written into a temporary sibling folder and renamed into
place at the end, so a failed run leaves no half-written ``--out`` folder behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import textwrap
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from rtplan._progress import Progress
from rtplan.errors import RtplanError, RtplanWarning

__all__ = ["build_parser", "lesion_table_text", "main", "parse_pet_method", "staged_output"]

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

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


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
    """The message of an exception on one line (KeyError quotes removed)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _fail(message: str) -> NoReturn:
    """Raise the error the CLI shows as ``rtplan: error: <message>``."""
    raise RtplanError(message)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


@contextlib.contextmanager
def staged_output(
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Write an output folder all at once: into a temporary sibling, renamed at the end.

    Parameters
    ----------
    out : path
        The output folder to create. It must not exist, or be an empty folder, unless
        ``force`` is given (then it is replaced, after the new one is complete).
    force : bool
        Replace an existing non-empty ``out``.
    inputs : iterable of path
        Input files and folders of the run: ``out`` may neither lie inside an input
        folder (never write into an input folder) nor be or contain an input (``force``
        would delete it).

    Yields
    ------
    Path
        The temporary folder to write into (same parent as ``out``, so the final rename
        is atomic on one file system). If the block raises, the temporary folder is
        removed and ``out`` is left as it was.

    Raises
    ------
    RtplanError
        If ``out`` is a file, a non-empty folder without ``force``, or overlaps an input.
    """
    target = _resolved(out)
    if target.exists() and not target.is_dir():
        _fail(f"output {str(out)!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        _fail(f"output folder {str(out)!r} exists and is not empty; use --force to replace it")
    for item in inputs:
        if item is None:
            continue
        src = _resolved(item)
        if src.is_dir() and _is_within(target, src):
            _fail(
                f"output folder {str(out)!r} is inside the input folder {str(item)!r}; "
                "choose an --out outside the inputs"
            )
        if _is_within(src, target):
            _fail(
                f"output folder {str(out)!r} contains the input {str(item)!r}; choose another --out"
            )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if target.exists():
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    stream = file if file is not None else sys.stderr
    text = " ".join(str(message).split())
    with contextlib.suppress(OSError, ValueError):
        stream.write(f"{PROG}: warning: {text}\n")


def _spacing(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if any(not (0.2 <= v <= 20.0) for v in out):
        raise ValueError(f"--spacing must be three numbers between 0.2 and 20 mm, got {values}")
    return out  # type: ignore[return-value]


def _positive_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a distance in mm, got {text!r}") from None
    if not (0.5 <= value <= 10.0):
        raise argparse.ArgumentTypeError(f"expected 0.5-10 mm, got {text!r}")
    return value


# ============================================================================ inputs
def _require_dir(path: str | None, option: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{option} folder {path!r} does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"{option} {path!r} is not a folder")
    return p


def _require_file(path: str | None, option: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{option} file {path!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"{option} {path!r} is a folder, expected a file")
    return p


def parse_pet_method(text: str) -> dict[str, Any]:
    """Keyword arguments of :func:`rtplan.lesions.lesions_from_pet` from a CLI method string.

    Parameters
    ----------
    text : str
        ``"suv:4"``: fixed threshold, voxels with SUV >= 4;
        ``"pct:41"``: per lesion, voxels >= 41 % of its own SUVmax (hot spots found above
        SUV 3 first);
        ``"liver"`` / ``"blood"``: SUV above the SUVmean of the liver / the blood pool
        (PROMISE miPSMA score >= 2 / >= 1), measured in the ``Liver`` / ``A_Aorta``
        structure; ``"liver:5.2"`` / ``"blood:1.8"`` give the SUVmean instead.

    Returns
    -------
    dict
        ``method`` and its parameters; for a reference method ``reference`` and, when a
        number was given, ``references``.

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
    forms = "suv:<SUV>, pct:<percent of SUVmax>, liver[:<SUVmean>] or blood[:<SUVmean>]"
    name, _, arg = text.strip().partition(":")
    name = name.strip().lower()
    arg = arg.strip()
    try:
        if name == "suv":
            value = float(arg)
            if value > 0 and value < 1000:
                return {"method": "fixed", "threshold_suv": value}
        elif name == "pct":
            value = float(arg.rstrip("%"))
            if 0 < value < 100:
                return {"method": "percent_max", "percent": value}
        elif name in ("liver", "blood"):
            ref = "liver" if name == "liver" else "blood_pool"
            if not arg:
                return {"method": "reference", "reference": ref}
            value = float(arg)
            if value > 0 and value < 1000:
                return {"method": "reference", "reference": ref, "references": {ref: value}}
    except ValueError:
        pass
    raise ValueError(f"--lesions-from-pet {text!r} is not understood; expected {forms}")


_REFERENCE_STRUCTURES = {"liver": "Liver", "blood_pool": "A_Aorta"}
#: Organs with physiological PSMA-ligand uptake or excretion, never counted as lesions.
_PHYSIOLOGICAL = ("Bladder", "Kidney_L", "Kidney_R", "Bowel", "Bowel_Small", "Colon")


def _load_atlas_from_patient(args: argparse.Namespace, progress: Progress) -> Any:
    """The patient's anatomy (an Atlas) from --ct with --structures or --labels."""
    from rtplan import atlas as atlas_mod

    ct_dir = _require_dir(args.ct, "--ct")
    structures = _require_file(args.structures, "--structures")
    labels = _require_dir(args.labels, "--labels")
    from rtplan.errors import DicomInputError

    with progress.step("reading CT and structures"):
        if labels is not None:
            return atlas_mod.atlas_from_label_maps(labels, ct=ct_dir)
        try:
            return atlas_mod.atlas_from_dicom(ct_dir, rtstruct=structures)
        except DicomInputError as exc:
            if structures is None and "RTSTRUCT" in str(exc):
                raise DicomInputError(
                    f"{exc} (on the command line: --structures FILE or --labels DIR)"
                ) from None
            raise


def _read_nifti_labels(path: Path, grid: Any) -> Any:
    """A NIfTI label map as an array on ``grid`` (resampled by nearest neighbour if needed)."""
    try:
        import nibabel
    except ImportError:  # pragma: no cover - nibabel is an optional dependency
        _fail("reading NIfTI lesion masks needs nibabel: pip install 'rtplan[nifti]'")
    from rtplan.grid import ImageGrid, resample_to_grid

    try:
        img = nibabel.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise RtplanError(f"--lesions {path}: not a readable NIfTI file ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        _fail(f"--lesions {path}: expected a 3-D label map, got shape {data.shape}")
    source = ImageGrid.from_affine(img.affine, data.shape, convention="RAS")
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


def _read_lesions(path: Path, atlas: Any, rois: str | None, suv: Any) -> Any:
    """Lesions from a NIfTI label map or an RTSTRUCT with lesion ROIs."""
    from rtplan.lesions import lesions_from_mask, lesions_from_structures

    if path.name.lower().endswith((".nii", ".nii.gz")):
        labels = _read_nifti_labels(path, atlas.grid)
        return lesions_from_mask(labels, atlas.grid, suv=suv)
    from rtplan import dicom_io
    from rtplan.errors import DicomInputError

    try:
        structures = dicom_io.read_rtstruct(path, atlas.grid, map_names=False)
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
        return lesions_from_structures(structures, names=wanted, suv=suv)
    chosen = structures.by_role("gtv")
    if not chosen:
        _fail(
            f"{path.name} has no ROI of interpreted type GTV; name the lesion ROIs with "
            f"--lesion-rois (it has {', '.join(structures.names)})"
        )
    return lesions_from_structures(chosen, suv=suv)


def _pet_lesions(suv: Any, atlas: Any, method: dict[str, Any]) -> Any:
    """Lesions segmented on the PET (resampled to the CT grid)."""
    from rtplan.lesions import lesions_from_pet

    ss, grid = atlas.structures, atlas.grid
    kwargs = dict(method)
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


def _load_patient(args: argparse.Namespace, progress: Progress) -> tuple[Any, Any]:
    """(atlas, lesions) of a ``plan``/``stage`` run."""
    from rtplan.lesions import Lesions

    if args.lesions is not None and args.lesions_from_pet is not None:
        _fail("give either --lesions or --lesions-from-pet, not both")
    if args.lesions_from_pet is not None and args.pet is None:
        _fail("--lesions-from-pet needs the PET series: add --pet DIR")
    if args.lesion_rois is not None and args.lesions is None:
        _fail("--lesion-rois needs --lesions RTSTRUCT")
    pet_method = parse_pet_method(args.lesions_from_pet) if args.lesions_from_pet else None
    lesion_path = _require_file(args.lesions, "--lesions")
    pet_dir = _require_dir(args.pet, "--pet")
    atlas = _load_atlas_from_patient(args, progress)
    suv = None
    if pet_dir is not None:
        from rtplan import dicom_io

        with progress.step("reading PET (SUV)"):
            suv, _ = dicom_io.read_pet_suv(pet_dir, atlas.grid)
    with progress.step("finding lesions"):
        if lesion_path is not None:
            lesions = _read_lesions(lesion_path, atlas, args.lesion_rois, suv)
        elif pet_method is not None:
            lesions = _pet_lesions(suv, atlas, pet_method)
        else:
            lesions = Lesions([], grid=atlas.grid)
    return atlas, lesions


_LESION_COLUMNS = (
    ("name", "lesion"),
    ("category", "miTNM"),
    ("region", "region"),
    ("side", "side"),
    ("volume_cc", "volume [cc]"),
    ("suv_max", "SUVmax"),
    ("mipsma_score", "miPSMA"),
    ("source", "source"),
)


def _lesion_rows(stage: Any, lesions: Any) -> list[dict[str, Any]]:
    """Per-lesion rows of the staged lesions (falls back to the unstaged lesions)."""
    staged = getattr(stage, "lesions", None)
    for candidate in (staged, lesions):
        table = getattr(candidate, "table", None)
        if callable(table):
            return list(table())
        if isinstance(candidate, (list, tuple)) and candidate:
            return [r if isinstance(r, dict) else r.row() for r in candidate]
    return []


def lesion_table_text(stage: Any, lesions: Any) -> str:
    """The lesion table printed by ``rtplan stage``: one line per lesion."""
    rows = _lesion_rows(stage, lesions)
    if not rows:
        return "no PSMA-positive lesion"
    cols = [(key, title) for key, title in _LESION_COLUMNS if any(key in r for r in rows)]
    cells = [[_cell(r.get(key)) for key, _ in cols] for r in rows]
    widths = [max(len(title), *(len(c[n]) for c in cells)) for n, (_, title) in enumerate(cols)]
    lines = ["  ".join(title.ljust(w) for (_, title), w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _stage_text(stage: Any, *, detailed: bool = False) -> str:
    text = str(getattr(stage, "string", None) or stage)
    extra = getattr(stage, "detailed", None) if detailed else None
    return f"{text} ({extra})" if extra else text


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


# ============================================================================ commands
def _cmd_demo(args: argparse.Namespace, progress: Progress) -> int:
    from rtplan.demo import run_demo

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
        print(summary.text())
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace, progress: Progress) -> int:
    from rtplan.demo import plan_case, write_case_outputs
    from rtplan.protocol import load_protocol

    inputs = [args.ct, args.pet, args.structures, args.labels, args.lesions]
    if args.protocol and Path(args.protocol).exists():
        inputs.append(args.protocol)
    _require_dir(args.ct, "--ct")
    protocol = load_protocol(args.protocol or DEFAULT_PROTOCOL)
    case = args.case or _default_case(Path(args.ct))
    with staged_output(args.out, force=args.force, inputs=inputs) as tmp:
        atlas, lesions = _load_patient(args, progress)
        comparison = plan_case(
            atlas,
            lesions,
            protocol=protocol,
            case=case,
            dose_spacing_mm=args.dose_spacing,
            progress=progress,
        )
        write_case_outputs(comparison, tmp, ct_folder=Path(args.ct), progress=progress)
    if not args.quiet:
        print(f"stage: {_stage_text(comparison.stage)}")
        print(f"options: {', '.join(comparison.options)}")
        print(f"written: {args.out}")
    return EXIT_OK


def _cmd_stage(args: argparse.Namespace, progress: Progress) -> int:
    from rtplan.staging import stage as stage_fn

    atlas, lesions = _load_patient(args, progress)
    with progress.step("staging"):
        stage = stage_fn(lesions, atlas)
    print(f"stage: {_stage_text(stage, detailed=True)}")
    print(lesion_table_text(stage, lesions))
    for note in getattr(stage, "notes", ()):
        print(f"note: {note}")
    return EXIT_OK


_GENERIC_FOLDERS = {"ct", "dicom", "images", "image", "series", "data", "input"}


def _default_case(ct: Path) -> str:
    """Case label from the CT folder: its name, or its parent's when generic (``CT``)."""
    folder = ct.resolve()
    if folder.name.lower() in _GENERIC_FOLDERS and folder.parent.name:
        return folder.parent.name
    return folder.name or "rtplan"


def _load_protocol(name_or_path: str | None) -> Any:
    from rtplan.protocol import load_protocol

    return load_protocol(name_or_path or DEFAULT_PROTOCOL)


def _cmd_atlas_list(args: argparse.Namespace, progress: Progress) -> int:
    from rtplan.atlas import list_atlases

    for name in list_atlases():
        print(name)
    return EXIT_OK


def _load_named_atlas(args: argparse.Namespace, progress: Progress) -> Any:
    from rtplan.atlas import load_atlas

    with progress.step(f"building atlas {args.name}"):
        return load_atlas(args.name, spacing_mm=_spacing(args.spacing))


def _cmd_atlas_export(args: argparse.Namespace, progress: Progress) -> int:
    from rtplan import dicom_io

    with staged_output(args.out, force=args.force) as tmp:
        atlas = _load_named_atlas(args, progress)
        with progress.step("writing CT series"):
            ct_dir = atlas.export_ct(
                tmp / "ct",
                patient_name=f"RTPLAN^{atlas.name}"[:64],
                patient_id=f"RTPLAN-{atlas.name}"[:64],
            )
        if not args.no_structures:
            with progress.step("writing RTSTRUCT"):
                dicom_io.write_rtstruct(
                    list(atlas.structures.values()),
                    ct_dir,
                    tmp / f"RS_{atlas.name}.dcm",
                    label=atlas.name[:16],
                )
    if not args.quiet:
        print(f"written: {args.out}")
    return EXIT_OK


def _cmd_atlas_show(args: argparse.Namespace, progress: Progress) -> int:
    from rtplan import figures

    with staged_output(args.out, force=args.force) as tmp:
        atlas = _load_named_atlas(args, progress)
        with progress.step("drawing views"):
            written = figures.save_atlas_views(atlas, tmp)
    if not args.quiet:
        for path in written:
            print(Path(args.out) / Path(path).name)
    return EXIT_OK


def _cmd_protocol_list(args: argparse.Namespace, progress: Progress) -> int:
    from rtplan.protocol import list_protocols, load_protocol

    for name in list_protocols():
        print(f"{name}  {load_protocol(name).title}")
    return EXIT_OK


def _cmd_protocol_show(args: argparse.Namespace, progress: Progress) -> int:
    protocol = _load_protocol(args.protocol)
    if args.toml:
        from rtplan.protocol import protocol_text

        sys.stdout.write(protocol_text(args.protocol or DEFAULT_PROTOCOL))
        return EXIT_OK
    print(f"{protocol.name}: {protocol.title}")
    if protocol.path:
        print(f"file: {protocol.path}")
    rows = [(p, _value_text(v), s) for p, v, s in protocol.rows() if not p.startswith("protocol.")]
    width = max((len(p) for p, _, _ in rows), default=4)
    vwidth = min(max((len(v) for _, v, _ in rows), default=5), 24)
    print()
    print(f"{'key'.ljust(width)}  {'value'.ljust(vwidth)}  source")
    for path, value, source in rows:
        print(f"{path.ljust(width)}  {value.ljust(vwidth)}  {source}")
    if protocol.constraints:
        print()
        print("constraints")
        for c in protocol.constraints:
            print(f"  {_constraint_text(c)}")
    tool = protocol.tool_defaults
    if tool:
        print()
        print(f"{len(tool)} values are tool defaults (no guideline behind the exact number).")
    return EXIT_OK


def _constraint_text(c: Any) -> str:
    """``Rectum V65Gy <= 35 %  [conventional, 5 fx]  source`` for one protocol constraint."""
    limit = f"{c.op} {c.limit:g} {c.unit}"
    scope = getattr(c, "applies_to", "all")
    fractions = getattr(c, "fractions", None)
    if fractions is not None:
        scope += f", {fractions} fx"
    return f"{c.structure} {c.metric} {limit}  [{scope}]  {getattr(c, 'source', '')}".rstrip()


def _cmd_protocol_validate(args: argparse.Namespace, progress: Progress) -> int:
    protocol = _load_protocol(args.protocol)
    n_tool = len(protocol.tool_defaults)
    print(
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
                     blood[:1.8]   SUV above the blood-pool SUVmean (miPSMA >= 1),
                                   measured in A_Aorta or given
                     Urinary activity (Bladder, kidneys, bowel where contoured) and
                     voxels outside Body are never lesion.
  neither            no lesion: the PSMA-negative case (T0N0M0).
"""

_PLAN_EPILOG = (
    _INPUT_HELP
    + """
outputs (in --out, written all at once at the end):
  RS_<case>.dcm      one RTSTRUCT: the organs and the GTV/CTV/PTV of every option,
                     referencing the input CT series (imports on top of it in a TPS)
  RD_<option>.dcm    one RTDOSE per option (total physical dose, Gy; an ESTIMATE)
  report.html        the options side by side (open in a browser, prints to PDF)
  metrics.csv/.json  one row per metric, one column per option

examples:
  rtplan plan --ct pt01/CT --structures pt01/RS.dcm --lesions pt01/psma_lesions.nii.gz \\
              --out pt01_plan
  rtplan plan --ct pt01/CT --pet pt01/PET --lesions-from-pet suv:4 --protocol my.toml \\
              --dose-spacing 3 --out pt01_plan --force
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rtplan`` command (all subcommands)."""
    from rtplan import __version__

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

    # demo
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
    p.add_argument(
        "--dose-spacing",
        type=_positive_mm,
        default=2.5,
        metavar="MM",
        help="voxel size of the dose grid in mm, cubic (default 2.5)",
    )
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
    _add_common(p)
    p.set_defaults(func=_cmd_demo)

    # plan
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
    g = p.add_argument_group("planning")
    g.add_argument(
        "--protocol",
        metavar="FILE",
        help=f"protocol TOML file or shipped name (default {DEFAULT_PROTOCOL}; "
        "see 'rtplan protocol list')",
    )
    g.add_argument(
        "--dose-spacing",
        type=_positive_mm,
        default=2.5,
        metavar="MM",
        help="voxel size of the dose grid in mm, cubic (default 2.5)",
    )
    g.add_argument(
        "--case",
        metavar="LABEL",
        help="case label in the report and file names (default: the CT folder's name, or "
        "its parent's when it is called CT, DICOM...)",
    )
    _add_out(p)
    _add_common(p)
    p.set_defaults(func=_cmd_plan)

    # stage
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
    _add_common(p)
    p.set_defaults(func=_cmd_stage)

    # atlas
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
    _add_common(q)
    q.set_defaults(func=_cmd_atlas_list)
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
        _add_common(q)
        q.set_defaults(func=func)

    # protocol
    p = sub.add_parser(
        "protocol",
        help="list, show or validate protocols",
        description=_wrap(
            "Treatment protocols: margins, prescriptions and constraints with sources."
        ),
        epilog=_PROTOCOL_EPILOG,
        formatter_class=_Formatter,
    )
    psub = p.add_subparsers(dest="protocol_command", metavar="ACTION", parser_class=_Parser)
    psub.required = True
    q = psub.add_parser("list", help="the shipped protocols", formatter_class=_Formatter)
    _add_common(q)
    q.set_defaults(func=_cmd_protocol_list)
    q = psub.add_parser(
        "show",
        help="every value of a protocol with its source",
        formatter_class=_Formatter,
        epilog=_PROTOCOL_EPILOG,
    )
    q.add_argument(
        "protocol",
        nargs="?",
        metavar="FILE",
        help=f"TOML file or name (default {DEFAULT_PROTOCOL})",
    )
    q.add_argument(
        "--toml",
        action="store_true",
        help="print the protocol file itself, to copy and edit "
        "(rtplan protocol show --toml nrg_salvage > mine.toml)",
    )
    _add_common(q)
    q.set_defaults(func=_cmd_protocol_show)
    q = psub.add_parser(
        "validate",
        help="check a protocol file (keys, units, ranges, sources)",
        formatter_class=_Formatter,
        epilog=_PROTOCOL_EPILOG,
    )
    q.add_argument(
        "protocol",
        nargs="?",
        metavar="FILE",
        help=f"TOML file or name (default {DEFAULT_PROTOCOL})",
    )
    _add_common(q)
    q.set_defaults(func=_cmd_protocol_validate)
    return parser


# ============================================================================ main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rtplan`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 success, 1 bad input, 2 usage error, 3 internal error,
        130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    progress = Progress(enabled=False if getattr(args, "quiet", False) else None)
    func: Callable[[argparse.Namespace, Progress], int] = args.func
    with warnings.catch_warnings():
        # rtplan's warnings are shown (once each) as "rtplan: warning: ..." lines; those of
        # the libraries underneath (pydicom, matplotlib...) only with --debug
        warnings.simplefilter("default" if debug else "ignore")
        warnings.simplefilter("default", RtplanWarning)
        if not debug:
            warnings.showwarning = _print_warning
        try:
            return func(args, progress)
        except KeyboardInterrupt:
            sys.stderr.write(f"{PROG}: interrupted\n")
            return EXIT_INTERRUPTED
        except _INPUT_ERRORS as exc:
            if debug:
                traceback.print_exc()
            sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")
            return EXIT_INPUT
        except Exception as exc:
            if debug:
                traceback.print_exc()
            sys.stderr.write(
                f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
                "(run again with --debug for the traceback, and please report it)\n"
            )
            return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
