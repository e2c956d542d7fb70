"""The ``rtplan cohort`` command: run a manifest on Dask, simulate a virtual cohort, report.

Wired into ``rtplan`` by :func:`add_cohort_parser`; each action's handler takes the
parsed arguments and a progress callable and returns the exit status:

* ``0``: success (for ``run``: every patient succeeded);
* ``4``: ``run`` finished but one or more patients failed; their one-line errors are
  in the summary, ``patients.csv`` and the report, and the other patients' results
  are complete.

Bad input (an invalid manifest, an unreachable scheduler, a results folder in the way)
raises an :class:`~rtplan.RtplanError`, which ``rtplan`` shows as one line
``rtplan: error: ...`` with exit status 1.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "EXIT_OK",
    "EXIT_PATIENTS_FAILED",
    "add_cohort_parser",
    "cmd_cohort_report",
    "cmd_cohort_run",
    "cmd_cohort_simulate",
]

EXIT_OK = 0
#: ``rtplan cohort run`` finished, but some patients failed (see the summary).
EXIT_PATIENTS_FAILED = 4

Progress = Callable[[str], object]

_RUN_EPILOG = """\
examples:
  rtplan cohort simulate --like ucla2026 --n 113 --seed 1 --out ucla.csv
  rtplan cohort run ucla.csv --out ucla-results --spacing 5 3 3
  rtplan cohort run ucla.csv --out ucla-results --resume        # after an interruption
  rtplan cohort run cohort.toml --out results --scheduler tcp://10.0.0.5:8786

manifest columns (CSV header, or keys of [[patient]] tables in TOML):
  patient_id, anatomy (atlas:NAME | dicom:FOLDER | labels:FOLDER), lesions (none |
  mask:FILE | rtstruct:FILE[#ROI,..] | roi:ROI,.. | pet:METHOD | node:SITE:8mm;bone:VB_S1),
  optional protocol, scale, bladder_filling, rectal_filling, seed, pet, psa_ng_ml,
  tracer, x_<field>. Full format: docs/cohort.md.

exit status: 0 all patients ok; 4 some patients failed (results of the others are
complete); 1 bad input (every bad manifest row and column is listed); 2 usage error.
"""

_SIMULATE_EPILOG = """\
The stage mix reproduces the UCLA series (Nikitas et al., JNCCN 2026: T0N0M0 46,
TrN0M0 19, N1M0 32, M1 16 of 113); node sites follow Trapp et al., J Nucl Med 2023;
other distributions are tool defaults listed in docs/cohort.md. The same --like, --n
and --seed always give the same manifest.
"""


def _wrap(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=92)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's examples as written; wider option column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument(
        "-q", "--quiet", action="store_true", help="no progress and no summary on the terminal"
    )
    g.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _dose_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a distance in mm, got {text!r}") from None
    if not 0.5 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"expected 0.5-10 mm, got {text!r}")
    return value


def _add_run(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="plan every patient of a manifest on Dask and write the results",
        description=_wrap(
            "Plan every patient of a manifest (stage, suggest and build the options, "
            "estimate their dose, compare them) as one Dask task per patient, on an "
            "embedded local cluster or an existing one. Results are written as patients "
            "finish: Parquet and CSV tables, then the cohort report."
        ),
        epilog=_RUN_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("manifest", metavar="MANIFEST", help="the manifest, .csv or .toml")
    p.add_argument(
        "--out", metavar="DIR", required=True, help="results folder (new or empty, or --resume)"
    )
    g = p.add_argument_group("cluster")
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (default: a local "
        "cluster of worker processes on this machine)",
    )
    g.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes of the local cluster (default: one per core)",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue in --out: skip patients whose inputs and settings are unchanged",
    )
    g.add_argument(
        "--write-patient-files",
        action="store_true",
        help="also write each patient's CT (atlas), RTSTRUCT, RTDOSE and report to "
        "DIR/files/<patient>/",
    )
    g.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("Z", "Y", "X"),
        help="grid of atlas anatomies in mm (e.g. 5 3 3 for a fast coarse run; default: the "
        "atlas's own grid)",
    )
    g.add_argument(
        "--dose-spacing",
        type=_dose_mm,
        default=2.5,
        metavar="MM",
        help="voxel size of the dose grid in mm, cubic (default 2.5)",
    )
    g.add_argument("--no-report", action="store_true", help="do not write DIR/report.html")
    _add_common(p)
    p.set_defaults(func=cmd_cohort_run)


def _add_simulate(sub: _Subparsers) -> None:
    from rtplan.cohort.manifest import DEFAULT_PROTOCOL, LIKE_COHORTS

    p = sub.add_parser(
        "simulate",
        help="write the manifest of a virtual cohort staged like a published series",
        description=_wrap(
            "Write a manifest of atlas variants with PSMA-positive lesions placed by region "
            "and size, so that the stage mix reproduces a published cohort."
        ),
        epilog=_SIMULATE_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--like", choices=LIKE_COHORTS, default="ucla2026", help="default ucla2026")
    p.add_argument("--n", type=_positive_int, default=113, metavar="N", help="patients (113)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="random seed (0)")
    p.add_argument(
        "--protocol",
        action="append",
        metavar="NAME",
        help=f"protocol of every patient, repeatable (default {DEFAULT_PROTOCOL})",
    )
    p.add_argument("--out", metavar="FILE", required=True, help="manifest to write, .csv or .toml")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    _add_common(p)
    p.set_defaults(func=cmd_cohort_simulate)


def _add_report(sub: _Subparsers) -> None:
    from rtplan.cohort.manifest import LIKE_COHORTS

    p = sub.add_parser(
        "report",
        help="write the HTML report of a results folder",
        description=_wrap(
            "Write the self-contained HTML cohort report of a results folder (stage "
            "distribution, options, constraint pass rates, metric distributions, paired "
            "differences, NTCP)."
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("results", metavar="RESULTS_DIR", help="the --out folder of 'cohort run'")
    p.add_argument("--out", metavar="FILE", help="HTML file (default RESULTS_DIR/report.html)")
    p.add_argument(
        "--like",
        choices=LIKE_COHORTS,
        help="compare the stage mix with this series (default: from the manifest)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_cohort_report)


def add_cohort_parser(subparsers: _Subparsers) -> argparse.ArgumentParser:
    """Add ``cohort run|simulate|report`` to the ``rtplan`` command's subparsers.

    Parameters
    ----------
    subparsers : argparse subparsers action
        What ``parser.add_subparsers(...)`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``cohort`` parser.
    """
    p: argparse.ArgumentParser = subparsers.add_parser(
        "cohort",
        help="run a cohort of patients on Dask, simulate a virtual cohort, report",
        description=_wrap(
            "Cohorts: plan every patient of a manifest on Dask (run), write a virtual "
            "cohort staged like a published series (simulate), write the cohort report "
            "(report)."
        ),
        epilog=_RUN_EPILOG,
        formatter_class=_Formatter,
    )
    sub = p.add_subparsers(dest="cohort_command", metavar="ACTION", parser_class=type(p))
    sub.required = True
    _add_run(sub)
    _add_simulate(sub)
    _add_report(sub)
    return p


# ============================================================================ handlers
def cmd_cohort_run(args: argparse.Namespace, progress: Progress) -> int:
    """``rtplan cohort run``: 0 when every patient succeeded, 4 when some failed."""
    from rtplan.cohort.run import run_cohort

    summary = run_cohort(
        args.manifest,
        out=args.out,
        scheduler=args.scheduler,
        n_workers=args.workers,
        resume=args.resume,
        write_patient_files=args.write_patient_files,
        atlas_spacing_mm=tuple(args.spacing) if args.spacing else None,
        dose_spacing_mm=args.dose_spacing,
        report=not args.no_report,
        progress=(lambda _m: None) if args.quiet else progress,
    )
    if not args.quiet:
        print(summary.text())
    return EXIT_OK if summary.all_ok else EXIT_PATIENTS_FAILED


def cmd_cohort_simulate(args: argparse.Namespace, progress: Progress) -> int:
    """``rtplan cohort simulate``: write the manifest; 0."""
    from collections import Counter

    from rtplan.cohort.manifest import DEFAULT_PROTOCOL
    from rtplan.cohort.simulate import simulate_cohort

    manifest = simulate_cohort(
        args.like,
        args.n,
        args.seed,
        protocol=args.protocol or DEFAULT_PROTOCOL,
        out=args.out,
        force=args.force,
    )
    if not args.quiet:
        groups = Counter(dict(r.extra).get("x_simulated_group", "") for r in manifest.rows)
        order = ("T0N0M0", "TrN0M0", "N1M0", "M1")
        mix = ", ".join(f"{g} {groups[g]}" for g in order if g in groups)
        print(f"wrote {len(manifest)} patients like {args.like} to {Path(args.out)} ({mix})")
    return EXIT_OK


def cmd_cohort_report(args: argparse.Namespace, progress: Progress) -> int:
    """``rtplan cohort report``: write the HTML report; 0."""
    from rtplan.cohort.report import write_cohort_report

    path = write_cohort_report(args.results, out=args.out, like=args.like)
    if not args.quiet:
        print(f"report: {path}")
    return EXIT_OK
