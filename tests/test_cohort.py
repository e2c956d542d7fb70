"""Cohorts: manifest validation, lesion placement, virtual cohorts, Dask runs, resume, report.

Small grids throughout (atlas 5 x 3 x 3 mm), so a patient takes about a second. One real
Dask cluster (a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1) is
started for the module and shared by the distributed, resume, bad-row and CLI tests; the
embedded LocalCluster test starts its own.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest

import rtplan as rp
from rtplan.cohort import (
    ManifestError,
    RunSettings,
    input_hash,
    load_results,
    parse_lesion_items,
    place_lesions,
    read_manifest,
    run_cohort,
    run_patient,
    simulate_cohort,
    stage_counts,
    write_cohort_report,
)
from rtplan.cohort.cli import EXIT_OK, EXIT_PATIENTS_FAILED, add_cohort_parser
from rtplan.cohort.lesion_spec import lesion_item_problems
from rtplan.cohort.report import DOSE_STATEMENT
from rtplan.cohort.simulate import UCLA2026_STAGES

SPACING = (5.0, 3.0, 3.0)
ATLAS = "atlas:male_pelvis_postop"

MANIFEST6 = f"""\
# description: six patients covering the four UCLA groups
patient_id,anatomy,lesions,protocol,scale,bladder_filling,rectal_filling,seed,psa_ng_ml,tracer,x_site
P1,{ATLAS},none,nrg_salvage,,,,,0.2,68Ga-PSMA-11,a
P2,{ATLAS},local:VUA:12mm,nrg_salvage,1.05,1.3,,7,0.5,,b
P3,{ATLAS},node:external_iliac_L:10mm,nrg_salvage,0.95,0.8,1.2,11,1.1,,
P4,{ATLAS},node:internal_iliac_R:10mm;bone:VB_S1:14mm,nrg_salvage,,,,23,3.0,,
P5,{ATLAS},none,hypo_salvage,1.02,,0.9,5,,,
P6,{ATLAS},node:obturator_L:8mm;node:presacral:8mm,nrg_salvage;hypo_salvage,,,,31,,,
"""


# ============================================================================ fixtures
@pytest.fixture(scope="module")
def manifest6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "cohort.csv"
    path.write_text(MANIFEST6, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def serial(manifest6: Path) -> dict[str, rp.cohort.PatientOutcome]:
    """The six patients planned one after the other in this process."""
    settings = RunSettings(atlas_spacing_mm=SPACING)
    return {r.patient_id: run_patient(r, settings) for r in read_manifest(manifest6).rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dask_scheduler() -> Iterator[str]:
    """A real ``dask scheduler`` and two ``dask worker`` processes on loopback."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # the workers import the same rtplan as this process (not another installed copy)
    root = str(Path(rp.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    procs = [
        subprocess.Popen(
            ["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        "dask",
                        "worker",
                        address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--death-timeout",
                        "60",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


@pytest.fixture(scope="module")
def client(dask_scheduler: str) -> Iterator[object]:
    from distributed import Client

    with Client(dask_scheduler, timeout="60s") as c:
        yield c


def _metric_rows(table: object) -> list[tuple[object, ...]]:
    cols = table.to_pydict()  # type: ignore[attr-defined]
    keys = ("patient_id", "protocol", "option", "group", "structure", "metric", "unit")
    rows = zip(*(cols[k] for k in (*keys, "value", "status", "headroom")))
    return sorted(rows, key=lambda r: tuple(str(v) for v in r[: len(keys)]))


def _serial_rows(serial: dict[str, rp.cohort.PatientOutcome]) -> list[tuple[object, ...]]:
    import pyarrow as pa

    from rtplan.cohort.results import METRIC_COLUMNS

    cols = {k: [v for o in serial.values() for v in o.metrics[k]] for k, _ in METRIC_COLUMNS}
    return _metric_rows(pa.table(cols))


# ============================================================================ manifest
def test_manifest_reads_csv_with_metadata(manifest6: Path) -> None:
    m = read_manifest(manifest6)
    assert m.patient_ids == ["P1", "P2", "P3", "P4", "P5", "P6"]
    assert m.metadata == {"description": "six patients covering the four UCLA groups"}
    p2 = m.rows[1]
    assert (p2.anatomy.scale, p2.anatomy.bladder_filling, p2.anatomy.seed) == (1.05, 1.3, 7)
    assert p2.lesions.kind == "spec" and str(p2.lesions.items[0]) == "local:VUA:12mm"
    assert m.rows[5].protocols == ("nrg_salvage", "hypo_salvage")
    assert m.rows[0].extra == (("x_site", "a"),) and m.rows[0].psa_ng_ml == 0.2
    assert p2.where == "line 4"


def test_manifest_validator_lists_every_bad_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "ct").mkdir()
    text = textwrap.dedent(
        f"""\
        patient_id,anatomy,lesions,protocol,scale,seed,psa_ng_ml,colour
        P1,{ATLAS},none,nrg_salvage,1.5,,0.4,red
        P1,{ATLAS},node:iliac_L:8mm,,,,-2,
        P 3,dicom:ct,none,,,4,,
        P4,atlas:no_such_atlas,bone:Liver,no_such_protocol,,,,
        P5,dicom:missing,roi:GTV1,,,,,
        P6,{ATLAS},,,,x,,
        """
    )
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    err = info.value
    assert isinstance(err, rp.InvalidInputError)
    found = {(p.where, p.column) for p in err.problems}
    assert found == {
        ("header", "colour"),
        ("line 2", "scale"),
        ("line 3", "lesions"),
        ("line 3", "psa_ng_ml"),
        ("line 3", "patient_id"),
        ("line 4", "patient_id"),
        ("line 4", "seed"),
        ("line 5", "anatomy"),
        ("line 5", "lesions"),
        ("line 5", "protocol"),
        ("line 6", "anatomy"),
        ("line 7", "lesions"),
        ("line 7", "seed"),
    }
    message = str(err)
    assert message.startswith(f"manifest {path}: 13 problems: ")
    assert "line 3 (P1), patient_id: 'P1' repeats the patient of line 2" in message
    assert "unknown node site 'iliac_L'" in message
    assert "header, colour: unknown column" in message and "x_<name>" in message
    assert "\n" not in message


def test_manifest_toml_and_roundtrip(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(
        textwrap.dedent(
            f"""\
            [cohort]
            like = "ucla2026"
            seed = 3

            [[patient]]
            patient_id = "A"
            anatomy = "{ATLAS}"
            lesions = "node:Common_Iliac_R@0.4:9mm"
            protocol = ["nrg_salvage", "hypo_salvage"]
            scale = 1.1
            seed = 4

            [[patient]]
            patient_id = "B"
            anatomy = "{ATLAS}"
            lesions = "none"
            psa_ng_ml = 0.3
            """
        ),
        encoding="utf-8",
    )
    m = read_manifest(tmp_path / "m.toml")
    assert m.like == "ucla2026" and m.metadata["seed"] == "3"
    assert m.rows[0].lesions.text == "node:common_iliac_R@0.4:9mm"
    assert m.rows[0].protocols == ("nrg_salvage", "hypo_salvage")
    for suffix in (".csv", ".toml"):
        out = rp.cohort.write_manifest(m, tmp_path / f"copy{suffix}")
        again = read_manifest(out)
        assert [r.record() for r in again.rows] == [r.record() for r in m.rows]
        assert again.metadata == m.metadata
    with pytest.raises(rp.OutputExistsError):
        rp.cohort.write_manifest(m, tmp_path / "copy.csv")


def test_manifest_toml_problems_are_listed(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(
        '[cohort]\nlike = "nowhere"\n[[patient]]\npatient_id = "A"\nanatomy = true\n'
        'lesions = "none"\n[[patient]]\npatient_id = "B"\nlesions = "none"\n',
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "m.toml")
    found = {(p.where, p.column) for p in info.value.problems}
    assert ("metadata", "like") in found
    assert ("patient 1", "anatomy") in found
    assert ("patient 2", "anatomy") in found


# ============================================================================ lesions
def test_lesion_grammar() -> None:
    items = parse_lesion_items("node:External_Iliac_L:8mm; bone:VB_S1@0.3 ;local:vua")
    assert [str(i) for i in items] == [
        "node:external_iliac_L:8mm",
        "bone:VB_S1@0.3:16mm",
        "local:VUA:14mm",
    ]
    _, problems = lesion_item_problems(
        "node:nowhere;bone:Liver;local:VUA@0.5;node:presacral:2mm;;x"
    )
    assert len(problems) == 6
    with pytest.raises(rp.InvalidInputError, match="unknown node site 'nowhere'"):
        parse_lesion_items("node:nowhere")


@pytest.mark.parametrize(
    ("spec", "category", "code"),
    [
        ("local:VUA", "Tr", "bed"),
        ("local:bladder_neck", "Tr", "bed"),
        ("node:external_iliac_R", "N1", "EI"),
        ("node:internal_iliac_L", "N1", "II"),
        ("node:obturator_R", "N1", "OB"),
        ("node:presacral", "N1", "PS"),
        ("node:perirectal_L", "N1", "OP"),
        ("node:common_iliac_L", "M1a", "CI"),
        ("node:paraaortic", "M1a", "RP"),
        ("node:inguinal_R", "M1a", "OE"),
        ("bone:Bone_Ilium_L:12mm", "M1b", "bone"),
    ],
)
def test_placed_lesions_stage_as_written(
    coarse_atlas: rp.Atlas, spec: str, category: str, code: str
) -> None:
    lesions = place_lesions(parse_lesion_items(spec), coarse_atlas)
    staged = rp.stage(lesions, coarse_atlas).lesions[0]
    assert (staged.category, staged.region_code) == (category, code)
    assert lesions[0].structure.role == "gtv"


def test_placed_lesions_do_not_overlap(coarse_atlas: rp.Atlas) -> None:
    items = parse_lesion_items("node:external_iliac_L;node:external_iliac_L;bone:VB_S1;bone:VB_S1")
    lesions = place_lesions(items, coarse_atlas)
    total = sum(les.structure.voxel_count for les in lesions)
    assert int(lesions.label_map().astype(bool).sum()) == total
    assert [les.source.split()[-1] for les in lesions] == [
        "(GTVn1)",
        "(GTVn2)",
        "(GTVm1)",
        "(GTVm2)",
    ]


def test_lesion_on_missing_bone_fails_with_name(coarse_atlas: rp.Atlas) -> None:
    with pytest.raises(rp.cohort.LesionPlacementError, match="no bone 'VB_T12'"):
        place_lesions(parse_lesion_items("bone:VB_T12"), coarse_atlas)


# ============================================================================ simulate
def test_simulated_cohort_reproduces_the_ucla_mix(tmp_path: Path) -> None:
    assert stage_counts(UCLA2026_STAGES, 113) == UCLA2026_STAGES
    assert sum(stage_counts(UCLA2026_STAGES, 37).values()) == 37
    m = simulate_cohort("ucla2026", 113, 5, out=tmp_path / "ucla.csv")
    groups = [dict(r.extra)["x_simulated_group"] for r in m.rows]
    assert {g: groups.count(g) for g in UCLA2026_STAGES} == UCLA2026_STAGES
    lesions = {
        g: [r.lesions for r in m.rows if dict(r.extra)["x_simulated_group"] == g]
        for g in UCLA2026_STAGES
    }
    assert all(src.kind == "none" for src in lesions["T0N0M0"])
    assert all(src.items[0].kind == "local" for src in lesions["TrN0M0"])
    assert all(any(i.kind == "node" for i in src.items) for src in lesions["N1M0"])
    assert all(src.kind == "spec" for src in lesions["M1"])
    again = read_manifest(tmp_path / "ucla.csv")
    assert again.like == "ucla2026" and [r.record() for r in again.rows] == [
        r.record() for r in m.rows
    ]
    same = simulate_cohort("ucla2026", 113, 5)
    assert [r.record() for r in same.rows] == [r.record() for r in m.rows]
    other = simulate_cohort("ucla2026", 113, 6)
    assert [r.record() for r in other.rows] != [r.record() for r in m.rows]


def test_simulated_patients_stage_as_drawn() -> None:
    settings = RunSettings(atlas_spacing_mm=SPACING)
    m = simulate_cohort("ucla2026", 4, 2)
    from rtplan.cohort.patient import load_anatomy, load_lesions

    for row in m.rows:
        atlas = load_anatomy(row, settings)
        group = rp.stage(load_lesions(row, atlas), atlas).ucla_group
        assert group == dict(row.extra)["x_simulated_group"], row.lesions.text


# ============================================================================ hashing
def test_input_hash_follows_files_and_settings(tmp_path: Path) -> None:
    mask = tmp_path / "mask.npy"
    np.save(mask, np.zeros((2, 2, 2), bool))
    (tmp_path / "m.csv").write_text(
        f"patient_id,anatomy,lesions\nA,{ATLAS},mask:mask.npy\n", encoding="utf-8"
    )
    row = read_manifest(tmp_path / "m.csv").rows[0]
    coarse = RunSettings(atlas_spacing_mm=SPACING)
    h1 = input_hash(row, coarse)
    assert input_hash(row, coarse) == h1
    assert input_hash(row, RunSettings()) != h1
    np.save(mask, np.ones((2, 2, 2), bool))
    assert input_hash(row, coarse) != h1


# ============================================================================ runs
def test_run_patient_records_a_failing_step(manifest6: Path) -> None:
    row = read_manifest(manifest6).rows[0]
    bad = type(row)(
        patient_id="X",
        anatomy=row.anatomy,
        lesions=rp.cohort.LesionSource("spec", items=parse_lesion_items("bone:VB_T12")),
    )
    outcome = run_patient(bad, RunSettings(atlas_spacing_mm=SPACING))
    assert not outcome.ok and outcome.n_metric_rows == 0
    assert outcome.patient["failed_step"] == "lesions"
    assert "VB_T12" in outcome.patient["error"] and "\n" not in outcome.patient["error"]
    assert outcome.patient["seconds_atlas"] > 0


def test_patient_files_are_written(manifest6: Path, tmp_path: Path) -> None:
    row = read_manifest(manifest6).rows[1]  # TrN0M0: PBRT+LRboost, +STAD, +WPRT
    settings = RunSettings(
        atlas_spacing_mm=SPACING, write_patient_files=True, files_dir=str(tmp_path / "files")
    )
    outcome = run_patient(row, settings)
    assert outcome.ok, outcome.patient["error"]
    folder = tmp_path / "files" / "P2"
    names = sorted(p.name for p in folder.iterdir())
    assert "ct" in names and "report.html" in names and "metrics.csv" in names
    assert sum(n.startswith("RS") for n in names) == 1
    assert sum(n.startswith("RD") for n in names) == 3
    assert outcome.patient["seconds_files"] > 0
    assert not [p for p in (tmp_path / "files").iterdir() if p.name.startswith(".")]


def test_serial_patients(serial: dict[str, rp.cohort.PatientOutcome]) -> None:
    stages = {pid: (o.patient["status"], o.patient["ucla_group"]) for pid, o in serial.items()}
    assert stages == {
        "P1": ("ok", "T0N0M0"),
        "P2": ("ok", "TrN0M0"),
        "P3": ("ok", "N1M0"),
        "P4": ("ok", "M1"),
        "P5": ("ok", "T0N0M0"),
        "P6": ("ok", "N1M0"),
    }
    p6 = serial["P6"]
    assert set(p6.metrics["protocol"]) == {"nrg_salvage", "hypo_salvage"}
    assert {"PBRT", "PBRT+WPRT"} <= set(serial["P1"].metrics["option"])


def test_local_cluster_two_workers(
    manifest6: Path, tmp_path: Path, serial: dict[str, rp.cohort.PatientOutcome]
) -> None:
    messages: list[str] = []
    summary = run_cohort(
        manifest6,
        out=tmp_path / "out",
        n_workers=2,
        atlas_spacing_mm=SPACING,
        progress=messages.append,
    )
    assert (summary.n_patients, summary.n_ok, summary.n_failed, summary.workers) == (6, 6, 0, 2)
    assert any(m.startswith("[6/6]") for m in messages)
    results = load_results(tmp_path / "out")
    assert results.patients.column("patient_id").to_pylist() == ["P1", "P2", "P3", "P4", "P5", "P6"]
    assert len(set(results.patients.column("worker").to_pylist())) == 2
    assert _metric_rows(results.metrics) == _serial_rows(serial)
    for name in ("patients.csv", "metrics.csv", "patients.parquet", "metrics.parquet", "run.json"):
        assert (tmp_path / "out" / name).is_file()
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert html_escape(DOSE_STATEMENT) in html
    for bad in ('src="http', "href=", "<script", "@import", "url("):
        assert bad not in html
    assert "PBRT+WPRT minus PBRT" in html and "Spc_Bowel V45Gy [cc]: difference" in html


def test_real_distributed_run_matches_serial(
    manifest6: Path,
    tmp_path: Path,
    dask_scheduler: str,
    serial: dict[str, rp.cohort.PatientOutcome],
) -> None:
    summary = run_cohort(
        manifest6,
        out=tmp_path / "dist",
        scheduler=dask_scheduler,
        atlas_spacing_mm=SPACING,
        report=False,
        progress=False,
    )
    assert (summary.n_ok, summary.n_failed, summary.workers) == (6, 0, 2)
    results = load_results(tmp_path / "dist")
    assert _metric_rows(results.metrics) == _serial_rows(serial)
    stages = dict(
        zip(
            results.patients.column("patient_id").to_pylist(),
            results.patients.column("stage").to_pylist(),
        )
    )
    assert stages == {pid: o.patient["stage"] for pid, o in serial.items()}
    assert all(
        w.startswith("tcp://127.0.0.1:") for w in results.patients.column("worker").to_pylist()
    )


class _Killed(Exception):
    """Stands in for the run being killed."""


def test_killed_run_resumes_without_recomputing(tmp_path: Path, client: object) -> None:
    manifest = tmp_path / "four.csv"
    manifest.write_text("".join(MANIFEST6.splitlines(keepends=True)[:6]), encoding="utf-8")
    out = tmp_path / "res"
    stored: list[str] = []

    def kill_after_two(message: str) -> None:
        if message.startswith("["):
            stored.append(message.split()[1])
            if len(stored) == 2:
                raise _Killed

    with pytest.raises(_Killed):
        run_cohort(
            manifest, out=out, client=client, atlas_spacing_mm=SPACING, progress=kill_after_two
        )
    parts = {p: (out / "metrics" / f"{p}.parquet").stat().st_mtime_ns for p in stored}
    assert sorted(f.stem for f in (out / "patients").glob("*.parquet")) == sorted(stored)
    with pytest.raises(rp.OutputExistsError, match="resume"):
        run_cohort(manifest, out=out, client=client, atlas_spacing_mm=SPACING, progress=False)

    ran: list[str] = []

    def resume(path: Path) -> rp.cohort.CohortSummary:
        ran.clear()
        return run_cohort(
            path,
            out=out,
            client=client,
            atlas_spacing_mm=SPACING,
            resume=True,
            report=False,
            progress=lambda m: ran.extend([m.split()[1]] if m.startswith("[") else []),
        )

    summary = resume(manifest)
    assert (summary.n_skipped, summary.n_run, summary.n_ok) == (2, 2, 2)
    assert sorted(ran) == sorted({"P1", "P2", "P3", "P4"} - set(stored))
    assert {p: (out / "metrics" / f"{p}.parquet").stat().st_mtime_ns for p in stored} == parts
    assert load_results(out).n_patients == 4

    # a changed row (another anatomical variant) is recomputed, nothing else
    text = manifest.read_text(encoding="utf-8")
    changed = tmp_path / "changed.csv"
    changed.write_text(
        text.replace("nrg_salvage,,,,,0.2", "nrg_salvage,,,,9,0.2"), encoding="utf-8"
    )
    summary = resume(changed)
    assert (summary.n_skipped, summary.n_run) == (3, 1) and ran == ["P1"]


def test_bad_row_is_isolated(tmp_path: Path, client: object) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        f"patient_id,anatomy,lesions\nOK1,{ATLAS},none\nBAD,{ATLAS},bone:VB_T12:10mm\n"
        f"OK2,{ATLAS},local:VUA\n",
        encoding="utf-8",
    )
    summary = run_cohort(
        path, out=tmp_path / "out", client=client, atlas_spacing_mm=SPACING, progress=False
    )
    assert (summary.n_ok, summary.n_failed) == (2, 1) and not summary.all_ok
    assert summary.failed[0][0] == "BAD" and "VB_T12" in summary.failed[0][1]
    results = load_results(tmp_path / "out")
    rows = {r["patient_id"]: r for r in results.patient_rows()}
    assert rows["BAD"]["status"] == "failed" and rows["BAD"]["failed_step"] == "lesions"
    assert rows["OK2"]["stage"] == "TrN0M0"
    assert set(results.metrics.column("patient_id").to_pylist()) == {"OK1", "OK2"}
    csv_text = (tmp_path / "out" / "patients.csv").read_text(encoding="utf-8")
    assert "BAD,failed," in csv_text
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Failed patients (1)" in html and "VB_T12" in html


def test_run_refuses_a_folder_with_other_files(manifest6: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(rp.OutputExistsError, match="holds no cohort results"):
        run_cohort(manifest6, out=tmp_path, progress=False)
    with pytest.raises(rp.InvalidInputError, match="either client or scheduler"):
        run_cohort(manifest6, out=tmp_path / "x", client=object(), scheduler="tcp://h:1")


def test_report_side_by_side_with_ucla(tmp_path: Path, client: object) -> None:
    m = simulate_cohort("ucla2026", 2, 11, out=tmp_path / "sim.csv")
    run_cohort(
        m,
        out=tmp_path / "out",
        client=client,
        atlas_spacing_mm=SPACING,
        report=False,
        progress=False,
    )
    path = write_cohort_report(tmp_path / "out", out=tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    assert "ucla2026 n" in html and "<td>46</td><td>40.7%</td>" in html
    assert "<td>113</td>" in html and "Nikitas" in html
    assert "staging gave back the group each patient was drawn for in 2 of 2" in html


# ============================================================================ CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtplan")
    sub = parser.add_subparsers(dest="command")
    add_cohort_parser(sub)
    return parser


def _run_cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args, lambda _m: None))


def test_cli_simulate_run_report(
    tmp_path: Path, dask_scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "v.toml"
    argv = ["cohort", "simulate", "--n", "3", "--seed", "4", "--out", str(manifest)]
    assert _run_cli(argv) == EXIT_OK
    assert "wrote 3 patients like ucla2026" in capsys.readouterr().out
    assert read_manifest(manifest).like == "ucla2026" and len(read_manifest(manifest)) == 3
    with pytest.raises(rp.OutputExistsError):
        _run_cli(argv)

    two = tmp_path / "two.csv"
    two.write_text(
        f"patient_id,anatomy,lesions\nA,{ATLAS},none\nB,{ATLAS},bone:VB_T12\n", encoding="utf-8"
    )
    out = tmp_path / "r"
    run = ["cohort", "run", str(two), "--out", str(out), "--scheduler", dask_scheduler]
    assert _run_cli([*run, "--spacing", "5", "3", "3"]) == EXIT_PATIENTS_FAILED
    summary = capsys.readouterr().out
    assert "1 ok, 1 failed" in summary and "failed: B: " in summary
    assert (out / "report.html").is_file()
    assert _run_cli(["cohort", "report", str(out), "--out", str(tmp_path / "x.html")]) == EXIT_OK
    assert (tmp_path / "x.html").is_file()
    (tmp_path / "bad.csv").write_text("patient_id\nA\n", encoding="utf-8")
    with pytest.raises(ManifestError):
        _run_cli(["cohort", "run", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "z")])


def test_cli_usage() -> None:
    parser = _parser()
    args = parser.parse_args(["cohort", "run", "m.csv", "--out", "d", "--workers", "2", "--resume"])
    assert (args.workers, args.resume, args.write_patient_files, args.scheduler) == (
        2,
        True,
        False,
        None,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["cohort", "run", "m.csv"])  # --out is required
    with pytest.raises(SystemExit):
        parser.parse_args(["cohort", "simulate", "--out", "x.csv", "--like", "elsewhere"])


def test_unreachable_scheduler_is_one_line(
    manifest6: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtplan.cohort.run

    monkeypatch.setattr(rtplan.cohort.run, "_CONNECT_TIMEOUT", "2s")
    port = _free_port()
    t0 = time.perf_counter()
    with pytest.raises(rp.InvalidInputError, match="cannot reach the Dask scheduler"):
        run_cohort(
            manifest6,
            out=tmp_path / "o",
            scheduler=f"tcp://127.0.0.1:{port}",
            progress=False,
        )
    assert time.perf_counter() - t0 < 30


def test_input_hash_follows_the_code_that_makes_the_results(tmp_path: Path, monkeypatch) -> None:
    """The same version with other code or calibration (a working copy, a refit) is not
    resumed over: the patient's hash includes the digest of the package's files."""
    import rtplan.cohort.results as results
    import rtplan.cohort.run as run

    digest = results.code_digest()
    assert len(digest) == 64 and digest == results.code_digest()
    (tmp_path / "m.csv").write_text(
        f"patient_id,anatomy,lesions\nA,{ATLAS},none\n", encoding="utf-8"
    )
    row = read_manifest(tmp_path / "m.csv").rows[0]
    settings = RunSettings(atlas_spacing_mm=SPACING)
    h1 = input_hash(row, settings)
    monkeypatch.setattr(run, "code_digest", lambda: "0" * 64)
    assert input_hash(row, settings) != h1


def test_the_code_digest_follows_code_and_data_not_caches(tmp_path: Path) -> None:
    from rtplan.cohort.results import _tree_digest

    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n", encoding="utf-8")
    (root / "sub" / "model.toml").write_text("s = 0.5\n", encoding="utf-8")
    first = _tree_digest({"pkg": root})
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00\x01")
    (root / "notes.md").write_text("no result depends on this\n", encoding="utf-8")
    assert _tree_digest({"pkg": root}) == first
    (root / "sub" / "model.toml").write_text("s = 0.55\n", encoding="utf-8")
    assert _tree_digest({"pkg": root}) != first
    (root / "sub" / "model.toml").write_text("s = 0.5\n", encoding="utf-8")
    assert _tree_digest({"pkg": root}) == first
    (root / "sub" / "model.toml").rename(root / "model.toml")  # same bytes, other place
    assert _tree_digest({"pkg": root}) != first
