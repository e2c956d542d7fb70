"""Cohorts: manifests, virtual cohorts, runs on Dask, the results tables and the report.

>>> import rtplan.cohort as rc
>>> manifest = rc.simulate_cohort(like="ucla2026", n=113, seed=1)   # doctest: +SKIP
>>> summary = rc.run_cohort(manifest, out="ucla-results")           # doctest: +SKIP
>>> results = rc.load_results("ucla-results")                       # doctest: +SKIP

A manifest (CSV or TOML, :mod:`rtplan.cohort.manifest`) lists one patient per row: the
anatomy (the shipped atlas with variant parameters, a DICOM folder or label maps), the
lesions (a mask, RTSTRUCT ROIs, a PET method, or lesions placed by region and size,
:mod:`rtplan.cohort.lesion_spec`), the protocol(s) and clinical fields. It is validated
completely before anything runs. :func:`run_cohort` sends one task per patient to Dask
(an embedded LocalCluster, a scheduler address or a Client) and stores each patient's
results as it finishes (:mod:`rtplan.cohort.results`); ``resume=True`` skips patients
whose inputs are unchanged. :func:`simulate_cohort` writes a virtual cohort staged like
the UCLA series; :func:`write_cohort_report` writes the HTML report. The doses are the
analytic estimate for comparing options, never a treatment dose calculation.

Scripts that start a local cluster must guard their main code with
``if __name__ == "__main__":`` (Dask starts the workers as new Python processes that
import the script).
"""

from rtplan.cohort.lesion_spec import (
    LesionItem,
    LesionPlacementError,
    parse_lesion_items,
    place_lesions,
)
from rtplan.cohort.manifest import (
    Anatomy,
    LesionSource,
    Manifest,
    ManifestError,
    ManifestProblem,
    PatientRow,
    manifest_from_records,
    read_manifest,
    write_manifest,
)
from rtplan.cohort.patient import RunSettings, run_patient
from rtplan.cohort.report import render_cohort_report, write_cohort_report
from rtplan.cohort.results import CohortResults, PatientOutcome, load_results
from rtplan.cohort.run import CohortSummary, input_hash, run_cohort
from rtplan.cohort.simulate import UCLA2026_STAGES, simulate_cohort, stage_counts

__all__ = [
    "UCLA2026_STAGES",
    "Anatomy",
    "CohortResults",
    "CohortSummary",
    "LesionItem",
    "LesionPlacementError",
    "LesionSource",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "PatientOutcome",
    "PatientRow",
    "RunSettings",
    "input_hash",
    "load_results",
    "manifest_from_records",
    "parse_lesion_items",
    "place_lesions",
    "read_manifest",
    "render_cohort_report",
    "run_cohort",
    "run_patient",
    "simulate_cohort",
    "stage_counts",
    "write_cohort_report",
    "write_manifest",
]
