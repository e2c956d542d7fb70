"""Time cohort runs: one atlas patient, the virtual UCLA cohort on 1 and 2 workers, Dask overhead.

Run: ``python benchmarks/bench_cohort.py patient`` (one patient, all its options, no
DICOM written, on the atlas's default grid: wall time per step over a few repeats and
the top cProfile entries), ``python benchmarks/bench_cohort.py cohort --n 113 --workers
1 2`` (the virtual UCLA cohort on an embedded LocalCluster with 1 and 2 worker processes:
wall time, speed-up, peak memory per worker, time per step summed over the patients)
and ``python benchmarks/bench_cohort.py overhead`` (scheduler overhead per task, bytes
moved per patient task, result bytes stored per patient).

``--spacing Z Y X`` uses a coarser atlas grid (default: the atlas's own 512 x 512 x 105
grid of 0.98 x 0.98 x 2.5 mm). ``--out DIR`` keeps the results folders (and their
reports) instead of a temporary folder.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import operator
import pickle
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import rtplan as rp
from rtplan.cohort import (
    RunSettings,
    load_results,
    manifest_from_records,
    run_cohort,
    run_patient,
    simulate_cohort,
)
from rtplan.cohort.patient import STEPS
from rtplan.cohort.results import ResultsStore

PATIENT = {
    "patient_id": "bench",
    "anatomy": "atlas:male_pelvis_postop",
    "lesions": "node:external_iliac_L:10mm;node:internal_iliac_R:10mm",
}


def bench_patient(spacing: tuple[float, float, float] | None, repeat: int, top: int) -> None:
    row = manifest_from_records([PATIENT]).rows[0]
    settings = RunSettings(atlas_spacing_mm=spacing)
    run_patient(row, settings)  # warm-up: imports, caches
    walls, cpus, steps = [], [], {s: [] for s in STEPS}
    outcome = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        outcome = run_patient(row, settings)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        for s in STEPS:
            steps[s].append(outcome.patient[f"seconds_{s}"])
    assert outcome is not None and outcome.ok, outcome.patient["error"] if outcome else ""
    p = outcome.patient
    print(f"patient {PATIENT['lesions']} -> {p['stage']}; options {p['options']}")
    grid = "default atlas grid" if spacing is None else f"atlas grid {spacing} mm"
    print(f"{grid}, dose grid 2.5 mm, {repeat} runs after a warm-up")
    print(f"wall  median {statistics.median(walls):.2f} s (min {min(walls):.2f} s)")
    print(f"CPU   median {statistics.median(cpus):.2f} s (min {min(cpus):.2f} s)")
    for s in STEPS:
        print(f"  {s:<8} {statistics.median(steps[s]):6.2f} s")
    print(f"metric rows {outcome.n_metric_rows}; peak RSS {p['peak_rss_mb']:.0f} MB")
    prof = cProfile.Profile()
    prof.enable()
    run_patient(row, settings)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(r"rtplan/", top)
    print("\ncProfile, rtplan functions by cumulative time:")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip()))
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    print("\ncProfile, top entries by own time:")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip()))


def bench_cohort(
    n: int, seed: int, workers: list[int], spacing: tuple[float, float, float] | None, out: Path
) -> None:
    manifest = simulate_cohort("ucla2026", n, seed)
    walls: dict[int, float] = {}
    for w in workers:
        folder = out / f"ucla{n}-w{w}"
        t0 = time.perf_counter()
        summary = run_cohort(
            manifest,
            out=folder,
            n_workers=w,
            atlas_spacing_mm=spacing,
            report=w == max(workers),
            progress=False,
        )
        walls[w] = time.perf_counter() - t0
        results = load_results(folder)
        rows = results.patient_rows()
        ok = [r for r in rows if r["status"] == "ok"]
        per_worker: dict[str, float] = {}
        for r in ok:
            per_worker[r["worker"]] = max(per_worker.get(r["worker"], 0.0), r["peak_rss_mb"])
        total = sum(r["seconds_total"] for r in ok)
        print(
            f"{n} patients, {w} worker(s): wall {walls[w]:.1f} s ({summary.n_ok} ok, "
            f"{summary.n_failed} failed); patient time summed {total:.1f} s, "
            f"median {statistics.median(r['seconds_total'] for r in ok):.2f} s"
        )
        print("  peak memory per worker: " + ", ".join(f"{v:.0f} MB" for v in per_worker.values()))
        for s in STEPS:
            print(f"  {s:<8} {sum(r[f'seconds_{s}'] for r in ok):8.1f} s summed")
        if summary.report is not None:
            print(f"  report: {summary.report}")
    if 1 in walls and 2 in walls:
        print(f"speed-up 2 vs 1 worker: {walls[1] / walls[2]:.2f}x")


def bench_overhead(spacing: tuple[float, float, float] | None, out: Path) -> None:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    start_s = time.perf_counter() - t0
    client.submit(operator.add, 1, 1, pure=False).result()
    n_tasks = 2000
    t0 = time.perf_counter()
    futures = [client.submit(operator.add, i, 1, pure=False) for i in range(n_tasks)]
    client.gather(futures)
    per_task_ms = (time.perf_counter() - t0) / n_tasks * 1e3
    del futures
    client.close()
    cluster.close()
    row = manifest_from_records([PATIENT]).rows[0]
    settings = RunSettings(atlas_spacing_mm=spacing)
    task_in = len(pickle.dumps((row, settings, "0" * 64)))
    outcome = run_patient(row, settings)
    task_out = len(pickle.dumps(outcome))
    folder = out / "one"
    run_cohort(
        manifest_from_records([PATIENT]),
        out=folder,
        n_workers=1,
        atlas_spacing_mm=spacing,
        report=False,
        progress=False,
    )
    stored = sum(f.stat().st_size for f in (folder / "patients").glob("*") if f.is_file()) + sum(
        f.stat().st_size for f in (folder / "metrics").glob("*") if f.is_file()
    )
    store = ResultsStore(out / "store")
    store.create()
    t0 = time.perf_counter()
    for i in range(50):
        outcome.patient["patient_id"] = f"p{i}"
        outcome.metrics["patient_id"] = [f"p{i}"] * outcome.n_metric_rows
        store.write(outcome)
    write_ms = (time.perf_counter() - t0) / 50 * 1e3
    print(f"LocalCluster start (2 workers): {start_s:.1f} s")
    print(f"driver time to store one patient (2 Parquet parts + CSV rows): {write_ms:.1f} ms")
    print(f"scheduler overhead per trivial task ({n_tasks} tasks, 2 workers): {per_task_ms:.2f} ms")
    print(f"bytes to a worker per patient task (pickled row, settings, hash): {task_in}")
    print(
        f"bytes back per patient task (pickled outcome, {outcome.n_metric_rows} rows): {task_out}"
    )
    print(f"bytes stored per patient (two Parquet part files): {stored}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("patient", "cohort", "overhead"))
    parser.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--n", type=int, default=113)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spacing = tuple(args.spacing) if args.spacing else None
    print(f"rtplan {rp.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.what == "patient":
            bench_patient(spacing, args.repeat, args.top)
        elif args.what == "cohort":
            bench_cohort(args.n, args.seed, args.workers, spacing, out)
        else:
            bench_overhead(spacing, out)


if __name__ == "__main__":
    main()
