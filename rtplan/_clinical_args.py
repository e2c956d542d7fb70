"""Command-line inputs that set the scan in its clinical context: PSA, pathology, tracer.

The ``plan`` and ``stage`` commands share these options; this module adds them to a parser
and turns the parsed values into the contracts of :mod:`rtplan.context` and
:mod:`rtplan.tracers`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

from rtplan._typing import BoolMask
from rtplan.context import ClinicalContext
from rtplan.dicom_io import read_pet_header
from rtplan.errors import InvalidInputError
from rtplan.structures import StructureSet
from rtplan.tracers import (
    REFERENCE_STRUCTURES,
    TRACER_NAMES,
    Tracer,
    get_tracer,
    parse_reference,
    promise_references,
    resolve_tracer,
    tracer_from_dataset,
)

__all__ = [
    "add_context_arguments",
    "context_from_args",
    "reference_values",
    "tracer_from_args",
]

#: The tracer whose PROMISE reference organs apply when none is known (tool default).
_DEFAULT_REFERENCE_TRACER = "68Ga-PSMA-11"


def add_context_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``clinical context`` option group (PSA, pathology, tracer, references)."""
    g = p.add_argument_group("clinical context (optional; shown in the report)")
    g.add_argument("--psa", type=float, metavar="NG_ML", help="PSA at the PET, ng/mL")
    g.add_argument(
        "--psa-doubling-time", type=float, metavar="MONTHS", help="PSA doubling time, months"
    )
    g.add_argument("--pt", metavar="PT", help="pathological T of the prostatectomy (pT2..pT4)")
    g.add_argument("--pn", metavar="PN", help="pathological N: pN0, pN1 or pNx")
    g.add_argument("--margin", metavar="R", help="surgical margin status: R0 or R1")
    grade = g.add_mutually_exclusive_group()
    grade.add_argument("--isup", type=int, metavar="GG", help="ISUP grade group 1-5")
    grade.add_argument("--gleason", metavar="SCORE", help="Gleason score, e.g. 4+3")
    g.add_argument(
        "--months-since-rp",
        type=float,
        metavar="MONTHS",
        help="time from the prostatectomy to the PET, months",
    )
    g.add_argument(
        "--tracer",
        metavar="NAME",
        help=f"PET tracer: {', '.join(TRACER_NAMES)} (default: what the PET series records; "
        "a tracer that differs from the recorded one is refused)",
    )
    g.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="ORGAN[:MEAN[,SD]]",
        help="reference region for the miPSMA score: liver, blood, parotid or spleen, with "
        "its SUVmean (and SD) or alone to measure it in the structures; repeatable",
    )


def context_from_args(args: argparse.Namespace) -> ClinicalContext | None:
    """The :class:`~rtplan.context.ClinicalContext` of the options, or None when none given.

    Raises
    ------
    InvalidInputError
        A value out of range, or a Gleason score that does not parse (the message names
        the field).
    """
    values: dict[str, str | float | int | None] = {
        "psa_ng_ml": args.psa,
        "psa_doubling_time_months": args.psa_doubling_time,
        "pathological_t": args.pt,
        "pathological_n": args.pn,
        "margin": args.margin,
        "isup_grade_group": args.isup,
        "months_since_prostatectomy": args.months_since_rp,
        "gleason": args.gleason,
    }
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return None
    return ClinicalContext.from_mapping(given)


def tracer_from_args(
    tracer: str | None, pet_dir: Path | None, *, series_uid: str | None = None
) -> Tracer | None:
    """The tracer: the one given (checked against the PET's record), else the recorded one.

    Returns None when neither names one. ``series_uid`` chooses the PET series when
    ``pet_dir`` holds several.

    Raises
    ------
    InvalidInputError
        The given tracer is unknown or differs from the one the PET series records.
    DicomInputError
        No PET series in ``pet_dir``, or several and no ``series_uid``.
    """
    header = read_pet_header(pet_dir, series_uid=series_uid) if pet_dir is not None else None
    if tracer is not None:
        return resolve_tracer(tracer, header)
    return tracer_from_dataset(header) if header is not None else None


def reference_values(
    texts: Sequence[str], structures: StructureSet, tracer: Tracer | None
) -> dict[str, float | BoolMask]:
    """``--reference`` options as the ``references`` of :mod:`rtplan.lesions` (by PROMISE slot).

    A given SUVmean is used as is; a bare organ is measured in the first structure of
    :data:`rtplan.tracers.REFERENCE_STRUCTURES` the anatomy has.

    Raises
    ------
    InvalidInputError
        A form that does not parse, an organ given twice, an organ that is not a reference of
        the tracer, or a bare organ that the structures lack.
    """
    by_organ: dict[str, float | BoolMask] = {}
    for text in texts:
        ref = parse_reference(text)
        if ref.organ in by_organ:
            raise InvalidInputError(f"--reference {ref.organ} is given twice")
        if ref.mean_suv is not None:
            by_organ[ref.organ] = ref.mean_suv
        else:
            by_organ[ref.organ] = _reference_mask(ref.organ, structures, text)
    used = tracer if tracer is not None else get_tracer(_DEFAULT_REFERENCE_TRACER)
    return promise_references(used, by_organ)


def _reference_mask(organ: str, structures: StructureSet, text: str) -> BoolMask:
    """The mask of the first structure named for ``organ`` that the anatomy has."""
    names: Mapping[str, tuple[str, ...]] = REFERENCE_STRUCTURES
    for name in names.get(organ, ()):
        if name in structures:
            return structures[name].mask
    raise InvalidInputError(
        f"--reference {text!r}: the structures have no {' or '.join(names.get(organ, (organ,)))} "
        f"to measure the {organ} SUVmean in; give the value, e.g. {organ}:5.0"
    )
