"""Tests of the HTML report: self-contained, tables hold the Comparison, renders in Chromium."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rtplan import report as rpt
from rtplan.atlas import Atlas
from rtplan.compare import Comparison, ComparisonTable, MetricRow, OptionResult
from rtplan.dvh import LKB_PARAMETERS, compute_dvh, lkb_ntcp
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesion, Lesions
from rtplan.plan import Course, FieldOption, Target
from rtplan.protocol import Protocol, load_protocol
from rtplan.staging import Stage
from rtplan.structures import Structure, StructureSet

# ----------------------------------------------------------------------------- the phantom
CT_GRID = ImageGrid(
    shape=(20, 40, 40), spacing_mm=(3.0, 2.5, 2.5), origin_mm=(-48.75, -48.75, -28.5)
)
# a coarser dose grid covering the CT grid (edges -50..50 mm in x and y, -30..30 mm in z)
DOSE_GRID = ImageGrid(
    shape=(20, 20, 20), spacing_mm=(3.0, 5.0, 5.0), origin_mm=(-47.5, -47.5, -28.5)
)


def _dist(grid: ImageGrid, centre, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    z, y, x = grid.axis_coordinates_mm()
    cx, cy, cz = centre
    sx, sy, sz = scale
    return np.sqrt(
        ((z[:, None, None] - cz) / sz) ** 2
        + ((y[None, :, None] - cy) / sy) ** 2
        + ((x[None, None, :] - cx) / sx) ** 2
    )


def _sigmoid_dose(grid: ImageGrid, centre, radius_mm: float, dose_gy: float) -> np.ndarray:
    return dose_gy / (1.0 + np.exp((_dist(grid, centre) - radius_mm) / 2.0))


BED_CENTRE = (0.0, 0.0, 0.0)
NODES_CENTRE = (0.0, -5.0, 9.0)


def _structures() -> dict[str, Structure]:
    g = CT_GRID
    body = _dist(g, (0, 0, 0), (44.0, 36.0, 1e6)) <= 1.0
    return {
        "Body": Structure("Body", body, g, role="external"),
        "Bladder": Structure("Bladder", _dist(g, (0, -20, 6)) <= 10.0, g),
        "Rectum": Structure("Rectum", _dist(g, (0, 19, 0), (7, 7, 1e6)) <= 1.0, g),
        "Spc_Bowel": Structure("Spc_Bowel", _dist(g, (0, -8, 24), (30, 12, 8)) <= 1.0, g),
        "CTV_Bed": Structure("CTV_Bed", _dist(g, BED_CENTRE) <= 10.0, g, role="ctv"),
        "PTV_Bed": Structure("PTV_Bed", _dist(g, BED_CENTRE) <= 15.0, g, role="ptv"),
        "CTV_Pelvis": Structure(
            "CTV_Pelvis", _dist(g, NODES_CENTRE, (28, 18, 14)) <= 1.0, g, role="ctv"
        ),
        "PTV_Pelvis": Structure(
            "PTV_Pelvis", _dist(g, NODES_CENTRE, (33, 23, 18)) <= 1.0, g, role="ptv"
        ),
    }


def _ct(structures: dict[str, Structure]) -> np.ndarray:
    ct = np.full(CT_GRID.shape, -1000.0, np.float32)
    ct[structures["Body"].mask] = 30.0
    ct[structures["Bladder"].mask] = 10.0
    ct[_dist(CT_GRID, (0, 30, 0), (12, 5, 1e6)) <= 1.0] = 700.0  # a "sacrum"
    return ct


def _row(group, structure, metric, unit, values, limit=None, op=None, source="") -> MetricRow:
    status, headroom = {}, {}
    for o, v in values.items():
        if limit is None:
            status[o], headroom[o] = None, None
        else:
            margin = limit - v if op == "<=" else v - limit
            status[o] = "pass" if margin >= 0 else "fail"
            headroom[o] = margin
    text = None if limit is None else f"{op} {limit:g} {unit}".strip()
    return MetricRow(group, structure, metric, unit, values, text, status, headroom, source)


def build_comparison() -> Comparison:
    """Two options on a 40 x 40 x 20 phantom, a table computed from real DVHs."""
    s = _structures()
    atlas = Atlas(
        name="synthetic phantom",
        grid=CT_GRID,
        ct_hu=_ct(s),
        structures=StructureSet(
            [s[n] for n in ("Body", "Bladder", "Rectum", "Spc_Bowel")], grid=CT_GRID
        ),
        landmarks={},
    )
    bed = Target(s["PTV_Bed"], 66.6, ctv=s["CTV_Bed"])
    pbrt = FieldOption(
        "PBRT",
        (Course("Bed", "imrt", 37, (bed,)),),
        adt=False,
        description="Prostate bed alone",
        evidence="SPPORT arm 1 (test evidence line)",
    )
    pelvis = Target(s["PTV_Pelvis"], 45.0, ctv=s["CTV_Pelvis"])
    boost = Target(s["PTV_Bed"], 21.6, ctv=s["CTV_Bed"])
    wprt = FieldOption(
        "PBRT+WPRT",
        (Course("Pelvis", "imrt", 25, (pelvis,)), Course("Boost", "imrt", 12, (boost,))),
        adt=True,
        description="Whole pelvis then bed boost",
        evidence="SPPORT arm 3 (test)",
    )
    pelvis_edge = _dist(DOSE_GRID, NODES_CENTRE, (33, 23, 18))
    pelvis_dose = 45.0 * 1.03 / (1.0 + np.exp((pelvis_edge - 1.15) * 12.0))
    doses = {
        "PBRT": _sigmoid_dose(DOSE_GRID, BED_CENTRE, 19.0, 66.6 * 1.03),
        "PBRT+WPRT": pelvis_dose + _sigmoid_dose(DOSE_GRID, BED_CENTRE, 19.0, 21.6 * 1.03),
    }
    results = []
    for opt in (pbrt, wprt):
        names = ["Rectum", "Bladder", "Spc_Bowel", "Body"]
        names += [n for t in opt.targets for n in (t.ptv.name, t.ctv.name)]
        dvhs = {
            n: compute_dvh(doses[opt.name], DOSE_GRID, s[n], bin_width_gy=0.05)
            for n in dict.fromkeys(names)
        }
        results.append(
            OptionResult(
                opt,
                DOSE_GRID,
                doses[opt.name],
                dvhs=dvhs,
                structures=[s[n] for n in dict.fromkeys(names[4:])],
            )
        )
    options = ("PBRT", "PBRT+WPRT")
    by = {r.name: r for r in results}

    def vals(name, metric):
        return {
            o: (by[o].dvhs[name].metric(metric) if name in by[o].dvhs else None) for o in options
        }

    def mid(v):  # a limit between the two options' values, so that one fails
        a, b = sorted(x for x in v.values() if x is not None)
        return round(0.5 * (a + b), 1)

    rows = []
    d95 = vals("PTV_Bed", "D95%")
    rows.append(_row("Target", "PTV_Bed", "D95%", "Gy", d95, 0.95 * 66.6, ">=", "ICRU 83"))
    rows.append(_row("Target", "PTV_Pelvis", "D95%", "Gy", vals("PTV_Pelvis", "D95%")))
    for name, rx in (("PTV_Bed", 66.6), ("PTV_Pelvis", 45.0)):
        cov = {
            o: (
                by[o].dvhs[name].metric("V95%Rx", prescription_gy=rx)
                if name in by[o].dvhs
                else None
            )
            for o in options
        }
        rows.append(_row("Target", name, "V95%Rx", "%", cov))
    rows.append(
        _row("Target", "CTV_Bed", "Volume", "cc", {o: s["CTV_Bed"].volume_cc for o in options})
    )
    for name, metric, unit in (
        ("Rectum", "V40Gy", "%"),
        ("Bladder", "V40Gy", "%"),
        ("Spc_Bowel", "V45Gy[cc]", "cc"),
    ):
        v = vals(name, metric)
        rows.append(
            _row(
                "OAR",
                name,
                metric.replace("[cc]", ""),
                unit,
                v,
                mid(v),
                "<=",
                f"test source {name}",
            )
        )
    rows.append(_row("OAR", "Rectum", "Dmean", "Gy", vals("Rectum", "Dmean")))
    rows.append(
        _row(
            "NTCP",
            "Rectum",
            "NTCP",
            "%",
            {o: 100 * lkb_ntcp(by[o].dvhs["Rectum"], LKB_PARAMETERS["Rectum"]) for o in options},
            source=LKB_PARAMETERS["Rectum"].source,
        )
    )
    table = ComparisonTable(options, tuple(rows))
    return Comparison(
        "TrN1M0 test case",
        atlas,
        None,
        _stage(),
        _protocol(),
        results,
        table,
        dose_model="analytic test model (sigmoid spheres)",
    )


def _lesion(n: int, centre, half_mm, **staging) -> Lesion:
    """A box lesion on the CT grid; ``half_mm`` (x, y, z) are its half sizes."""
    z, y, x = CT_GRID.axis_coordinates_mm()
    cx, cy, cz = centre
    hx, hy, hz = half_mm
    mask = (
        (np.abs(z - cz) <= hz)[:, None, None]
        & (np.abs(y - cy) <= hy)[None, :, None]
        & (np.abs(x - cx) <= hx)[None, None, :]
    )
    name = f"L{n}"
    return Lesion(n, name, Structure(name, mask, CT_GRID, role="gtv"), **staging)


def _stage() -> Stage:
    """A staged TrN1M0 case: a bed recurrence and an external iliac node."""
    lesions = Lesions(
        [
            _lesion(1, (0.0, 10.0, 0.0), (5.0, 5.0, 5.0), suv_max=8.4, category="Tr", region="VUA"),
            _lesion(
                2,
                (-20.0, 0.0, 6.0),
                (2.5, 2.5, 2.0),
                suv_max=12.7,
                category="N1",
                region="Iliac_Ext_L",
            ),
        ],
        grid=CT_GRID,
    )
    return Stage(
        t="Tr",
        n="N1",
        m="M0",
        detailed="miTrN1aM0",
        n_detail="N1a",
        nodal_regions=("EI",),
        m_categories=(),
        n_distant_lesions=0,
        oligometastatic=False,
        max_oligo_lesions=5,
        bone_pattern=None,
        lesions=lesions,
        promise_version="v2",
        common_iliac="M1a",
    )


def _protocol() -> Protocol:
    """The shipped protocol under another name, one value with a test source."""
    shipped = load_protocol("nrg_salvage")
    protocol = Protocol(shipped.data, name="test_protocol", path="/nowhere/test.toml")
    return protocol.with_values(
        {"ctv.pelvic_nodes.vessel_margin_mm": 7.0}, source="Protocol source one"
    )


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    return build_comparison()


@pytest.fixture(scope="module")
def report_file(comparison, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert rpt.write_report(comparison, out) == out
    return out


# ----------------------------------------------------------------------------- HTML parsing
class _Collector(HTMLParser):
    """Collects URL attributes, tags, and the cells of every table row with data-row."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.tables: dict[str, dict[str, dict[str, dict]]] = {}
        self._table: list[str] = []
        self._row: str | None = None
        self._cell: dict | None = None
        self._span: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href", "data", "action", "poster"):
            if a.get(key):
                self.urls.append((tag, key, a[key]))
        if "style" in a and "url(" in a["style"]:
            self.urls.append((tag, "style", a["style"]))
        if tag == "table":
            self._table.append(a.get("id", ""))
            self.tables.setdefault(a.get("id", ""), {})
        elif tag == "tr" and self._table:
            self._row = a.get("data-row")
            if self._row is not None:
                self.tables[self._table[-1]].setdefault(self._row, {})
        elif tag == "td" and self._row is not None and "data-option" in a:
            self._cell = {
                "class": a.get("class", "").split(),
                "status": a.get("data-status"),
                "text": "",
                "v": "",
                "hr": "",
            }
            self.tables[self._table[-1]][self._row][a["data-option"]] = self._cell
        elif tag == "span" and self._cell is not None:
            self._span.append((a.get("class") or "").split()[0] if a.get("class") else "")

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table.pop()
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None
        elif tag == "span" and self._span:
            self._span.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
            if self._span and self._span[-1] in ("v", "hr"):
                self._cell[self._span[-1]] += data


def _parse(path: Path) -> _Collector:
    p = _Collector()
    p.feed(path.read_text(encoding="utf-8"))
    return p


# ----------------------------------------------------------------------------- tests
def test_report_is_self_contained(report_file):
    text = report_file.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    p = _parse(report_file)
    assert p.urls, "the report should embed its images"
    for tag, key, url in p.urls:
        assert not re.search(r"(https?:)?//", url[:10]), f"<{tag} {key}> refers to {url[:60]}"
        assert url.startswith("data:"), f"<{tag} {key}> is not embedded: {url[:60]}"
    assert "script" not in p.tags and "link" not in p.tags
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text)
    imgs = [u for t, k, u in p.urls if t == "img"]
    # one DVH figure + one image figure per option
    assert len(imgs) == 3
    assert any(u.startswith("data:image/svg+xml;base64,") for u in imgs)
    assert sum(u.startswith("data:image/png;base64,") for u in imgs) == 2
    assert not list(report_file.parent.glob(".*.tmp")), "temporary file left behind"


def test_metric_table_holds_the_comparison_numbers(comparison, report_file):
    metrics = _parse(report_file).tables["metrics"]
    table = comparison.table
    assert set(metrics) == {r.label for r in table.rows}
    for r in table.rows:
        cells = metrics[r.label]
        assert list(cells) == list(table.options)
        for o in table.options:
            shown = cells[o]["v"]
            v = r.values[o]
            if v is None:
                assert shown == "\u2014"
                continue
            assert shown == rpt._format_value(v, r.unit)
            # independent of the formatter: the shown number is the value, rounded
            tol = 0.005 if abs(v) < 1 else 0.05
            assert abs(float(shown) - v) <= tol + 1e-9, (r.label, o, shown, v)


def test_pass_fail_marks_match_statuses(comparison, report_file):
    parsed = _parse(report_file)
    metrics = parsed.tables["metrics"]
    n_fail = dict.fromkeys(comparison.table.options, 0)
    seen = set()
    for r in comparison.table.rows:
        for o in comparison.table.options:
            cell = metrics[r.label][o]
            status = r.status.get(o)
            seen.add(status)
            assert cell["status"] == status
            if status == "pass":
                assert "pass" in cell["class"] and "\u2713" in cell["text"]
                assert "\u2717" not in cell["text"] and cell["hr"].startswith("+")
            elif status == "fail":
                n_fail[o] += 1
                assert "fail" in cell["class"] and "\u2717" in cell["text"]
                assert "\u2713" not in cell["text"] and cell["hr"].startswith("\u2212")
            else:
                assert not {"pass", "fail"} & set(cell["class"])
                assert "\u2713" not in cell["text"] and "\u2717" not in cell["text"]
            if status in ("pass", "fail"):  # headroom shown is |limit - value| with its sign
                h = float(cell["hr"].replace("\u2212", "-"))
                assert abs(h - r.headroom[o]) <= 0.05 + 1e-9
    assert {"pass", "fail", None} <= seen, "the phantom should exercise every status"
    # the at-a-glance summary counts the failures per option
    text = report_file.read_text(encoding="utf-8")
    glance = re.search(r'<tr id="glance-failed">(.*?)</tr>', text, re.S).group(1)
    counts = [int(c) for c in re.findall(r'data-failed="(\d+)"', glance)]
    assert counts == [n_fail[o] for o in comparison.table.options]


def test_glance_and_case_sections(comparison, report_file):
    parsed = _parse(report_file)
    glance = parsed.tables["glance-table"]
    # Rectum V40Gy is not a key metric but bowel V45 is; its numbers match the table
    bowel = comparison.table.row("Spc_Bowel", "V45Gy")
    assert bowel.label in glance
    for o in comparison.table.options:
        assert glance[bowel.label][o]["v"] == rpt._format_value(bowel.values[o])
    # coverage: the lowest V95%Rx of the option's PTVs, with the PTV named
    for o in comparison.table.options:
        cov = [
            (r.values[o], r.structure)
            for r in comparison.table.rows
            if r.metric == "V95%Rx" and r.values[o] is not None
        ]
        value, name = min(cov)
        cell = glance["PTV coverage"][o]
        assert cell["v"] == rpt._format_value(value) and cell["hr"] == name
    text = report_file.read_text(encoding="utf-8")
    for needle in (
        "TrN1M0",
        "miTrN1aM0",
        "Iliac_Ext_L",
        "12.7",
        "1.2",
        "SPPORT arm 3 (test)",
        "Protocol source one",
        "test source Rectum",
        "analytic test model",
        "not a treatment plan",
        rpt.MODEL_LIMITS[:60],
    ):
        assert needle in text, needle
    import rtplan

    assert f"rtplan {rtplan.__version__}" in text
    # targets with prescriptions and volumes
    assert "66.6 Gy / 37 fx" in text and "21.6 Gy / 12 fx" in text
    assert f"PTV {comparison.result('PBRT').option.targets[0].ptv.volume_cc:.1f} cc" in text


def test_dvh_curve_adapter(comparison):
    dvh = comparison.result("PBRT").dvhs["Rectum"]
    d, v = rpt._dvh_curve(dvh)
    assert d.shape == v.shape and np.all(np.diff(d) > 0)
    assert v.max() <= 100.0 + 1e-9 and np.all(np.diff(v) <= 1e-9)
    for dose in (10.0, 30.0, 50.0):
        assert np.interp(dose, d, v) == pytest.approx(dvh.volume_at_dose_pct(dose), abs=1e-6)
    # a stand-in without the DVH's attributes fails instead of being guessed at
    stand_in = SimpleNamespace(dose_gy=np.array([0.0, 10.0]), volume_pct=np.array([100.0, 0.0]))
    with pytest.raises(AttributeError, match="cumulative_pct"):
        rpt._dvh_curve(stand_in)


def test_inputs_of_the_wrong_type_fail_instead_of_leaving_cells_empty(comparison):
    # a stand-in stage with the old loose shape (no nodal regions, notes, lesions...)
    loose_stage = SimpleNamespace(string="TrN1M0", detailed="miTrN1aM0", table=lambda: [])
    with pytest.raises(TypeError, match=r"comparison\.stage must be an rtplan\.staging\.Stage"):
        rpt.render_report(dataclasses.replace(comparison, stage=loose_stage))
    loose_atlas = SimpleNamespace(name="x", grid=CT_GRID, ct_hu=comparison.atlas.ct_hu)
    with pytest.raises(TypeError, match=r"comparison\.atlas must be an rtplan\.atlas\.Atlas"):
        rpt.render_report(dataclasses.replace(comparison, atlas=loose_atlas))
    with pytest.raises(TypeError, match=r"comparison\.protocol"):
        rpt.render_report(dataclasses.replace(comparison, protocol="nrg_salvage"))
    with pytest.raises(TypeError, match=r"comparison\.lesions"):
        rpt.render_report(dataclasses.replace(comparison, lesions=[]))
    # the section itself reads the contract's attributes: a missing one raises
    with pytest.raises(AttributeError, match="ucla_group"):
        rpt._stage_block(loose_stage)
    with pytest.raises(AttributeError, match="region_uncertain"):
        rpt._fmt_region(SimpleNamespace(region="VUA", side="L"))


def test_lesion_table_reads_the_staged_lesions(comparison, report_file):
    text = report_file.read_text(encoding="utf-8")
    table = re.search(r'<table id="lesions">(.*?)</table>', text, re.S).group(1)
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    # columns without a value in any lesion (SUVpeak, miPSMA, notes) are left out
    assert headers == [
        "Lesion",
        "miTNM",
        "Region",
        "Volume (cc)",
        "SUVmax",
        "Centroid x, y, z (mm)",
    ]
    body = table.split("<tbody>")[1]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", body)]
    for lesion, cells in zip(comparison.stage.lesions, rows, strict=True):
        assert cells[:3] == [lesion.name, lesion.category, lesion.region]
        assert cells[3] == rpt._fmt_number(round(lesion.volume_cc, 3))
        assert cells[4] == rpt._fmt_number(lesion.suv_max)
    assert rows[0][3] == "1.2"  # 64 voxels of 2.5 x 2.5 x 3 mm
    # the stage's details are shown next to its code
    for needle in ("UCLA group", "N1M0", "Nodal regions", "EI", "PROMISE version", "v2"):
        assert f">{needle}<" in text, needle


def test_planes_sample_the_right_voxels():
    # a linear dose field is reproduced exactly by the trilinear sampling
    z, y, x = DOSE_GRID.axis_coordinates_mm()
    lin = 2.0 * x[None, None, :] + 0.5 * y[None, :, None] - 1.0 * z[:, None, None] + 100.0
    window = [np.sort(c) for c in CT_GRID.axis_coordinates_mm()[::-1]]
    ct = np.arange(CT_GRID.size, dtype=np.float32).reshape(CT_GRID.shape)
    for view in ("axial", "coronal", "sagittal"):
        plane = rpt._make_plane(view, window, (3.0, -6.0, 4.0))
        got = rpt._sample_linear(lin, DOSE_GRID, plane)
        coords = {
            plane.axes[0]: plane.rows_mm[:, None],
            plane.axes[1]: plane.cols_mm[None, :],
            plane.axes[2]: plane.normal_mm,
        }
        want = 2.0 * coords[0] + 0.5 * coords[1] - 1.0 * coords[2] + 100.0
        inside = np.ones(got.shape, bool)  # keep pixels within the dose grid's voxel centres
        for ax, arr in (
            (plane.axes[0], plane.rows_mm[:, None]),
            (plane.axes[1], plane.cols_mm[None, :]),
        ):
            c = DOSE_GRID.axis_coordinates_mm()[2 - ax]
            inside &= (arr >= c.min()) & (arr <= c.max())
        np.testing.assert_allclose(got[inside], np.broadcast_to(want, got.shape)[inside], rtol=1e-5)
        # nearest sampling of the CT returns the CT voxels of the plane
        k, j, i = CT_GRID.lps_to_nearest_index((3.0, -6.0, 4.0))
        expect = {"axial": ct[k], "coronal": ct[:, j, :], "sagittal": ct[:, :, i]}[view]
        np.testing.assert_array_equal(rpt._sample_nearest(ct, CT_GRID, plane), expect)


def test_write_is_atomic(comparison, tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    out.write_text("previous report", encoding="utf-8")
    real_replace = os.replace

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(rpt, "render_report", lambda c, title=None: "<!DOCTYPE html><p>new</p>")
    monkeypatch.setattr(rpt.os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        rpt.write_report(comparison, out)
    assert out.read_text(encoding="utf-8") == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rpt.write_report(comparison, tmp_path / "missing" / "r.html")
    monkeypatch.setattr(rpt.os, "replace", real_replace)
    assert rpt.write_report(comparison, tmp_path) == out  # a folder: report.html inside
    assert out.read_text(encoding="utf-8") == "<!DOCTYPE html><p>new</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# ----------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_file, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed but CI is set: the browser test must run")
        pytest.skip("chromium not installed")
    common = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = report_file.resolve().as_uri()
    png, pdf = tmp_path / "shot.png", tmp_path / "report.pdf"
    for extra in (
        [f"--screenshot={png}", "--window-size=1280,2000"],
        [f"--print-to-pdf={pdf}", "--no-pdf-header-footer"],
    ):
        proc = subprocess.run([*common, *extra, url], capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.05, "the screenshot is blank"
    assert (gray < 0.5).mean() > 0.01, "no dark pixels (text, images) in the screenshot"
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?![a-z])", data))
    assert pages >= 4, f"expected one page per section, got {pages}"
    keep = os.environ.get("RTPLAN_REPORT_SHOT")
    if keep:  # for a human to look at
        shutil.copy(png, keep)


def test_total_prescription_of_nested_ptvs(comparison):
    s = _structures()
    bed, pelvis = s["PTV_Bed"], s["PTV_Pelvis"]
    wprt = comparison.result("PBRT+WPRT").option
    inside = np.count_nonzero(bed.mask & pelvis.mask) / np.count_nonzero(bed.mask)
    totals = rpt._total_rx_by_ptv(wprt)
    # the bed is credited with the pelvic course when at least half of it lies in the pelvic PTV
    assert totals["PTV_Bed"] == pytest.approx(21.6 + (45.0 if inside >= 0.5 else 0.0))
    assert totals["PTV_Pelvis"] == pytest.approx(45.0)
    assert rpt._main_ptv(wprt).name == ("PTV_Bed" if inside >= 0.5 else "PTV_Pelvis")
    # a simultaneous integrated boost: the nested level keeps its own (higher) dose
    node = Structure("PTV_Node", _dist(CT_GRID, NODES_CENTRE) <= 5.0, CT_GRID, role="ptv")
    sib = FieldOption(
        "SIB", (Course("Pelvis", "imrt", 25, (Target(pelvis, 45.0), Target(node, 55.0))),)
    )
    assert rpt._total_rx_by_ptv(sib) == {"PTV_Pelvis": 45.0, "PTV_Node": 55.0}
    assert rpt._main_ptv(sib).name == "PTV_Node"


def test_targets_off_the_main_planes_get_their_own_images(comparison):
    # a small SBRT target in a corner: no plane through the bed's centroid crosses it
    corner = (35.0, 35.0, 21.0)
    ptv = Structure("PTV_SBRT", _dist(CT_GRID, corner) <= 4.0, CT_GRID, role="ptv")
    base = comparison.result("PBRT")
    option = FieldOption(
        "PBRT+SBRT", (*base.option.courses, Course("SBRT_1", "sbrt", 3, (Target(ptv, 21.0),)))
    )
    window = [np.sort(c) for c in CT_GRID.axis_coordinates_mm()[::-1]]
    planes = rpt._three_planes(window, rpt._main_ptv(option).centroid_mm)
    assert [p.name for p in rpt._unseen_ptvs(option, planes)] == ["PTV_SBRT"]
    assert rpt._unseen_ptvs(base.option, planes) == []
    result = OptionResult(option, base.dose_grid, base.dose_gy, dvhs=base.dvhs)
    one = Comparison(
        "corner",
        comparison.atlas,
        None,
        None,
        comparison.protocol,
        [result],
        ComparisonTable(("PBRT+SBRT",), ()),
        dose_model="test",
    )
    text = rpt.render_report(one)
    assert text.count("<img ") == 3  # DVHs, the three main planes, the extra axial
    assert "through the centroids of the targets the planes above miss (PTV_SBRT)" in text
    assert "No stage was given" in text and "No PSMA-positive lesion" in text


def test_report_of_a_real_comparison_shows_stage_evidence_sources_and_suv(coarse_atlas, tmp_path):
    """End to end on the shipped atlas: what compare_options computed is what the report says."""
    from phantoms import sphere_mask

    from rtplan.compare import compare_options
    from rtplan.lesions import lesions_from_mask
    from rtplan.staging import stage
    from rtplan.volumes import suggest_options

    a = coarse_atlas
    x, y, z = a.landmarks["VUA"]
    mask = sphere_mask(a.grid, (x, y + 4.0, z), 7.0)
    suv = np.where(mask, 7.25, 0.5)
    lesions = lesions_from_mask(mask, a.grid, suv=suv, suv_grid=a.grid)
    st = stage(lesions, a)
    cmp = compare_options(a, lesions, suggest_options(st), stage=st, case=st.string)
    html = rpt.write_report(cmp, tmp_path / "report.html").read_text(encoding="utf-8")
    assert st.string == "TrN0M0" and "TrN0M0" in html
    # the lesion table's SUVmax cell holds the SUVmax the lesion was given
    suv_cell = rpt._fmt_number(st.table()[0]["suv_max"])
    assert st.table()[0]["suv_max"] == pytest.approx(7.25)
    assert re.search(r"<td[^>]*>\s*" + re.escape(suv_cell) + r"\s*</td>", html)
    for r in cmp.results:
        assert r.option.evidence[:60] in html.replace("\n", " ")
    for c in cmp.protocol.constraints[:5]:
        assert c.source.split(",")[0] in html
    assert "not a treatment plan" in html
    # the calibrated model spared the atlas's organs, and the report says which
    assert cmp.spared_organs and "no OAR sparing" not in html
    assert f"told to spare ({', '.join(cmp.spared_organs)}) by" in html


# ----------------------------------------------------------------------------- issue 12
class _DomText(HTMLParser):
    """Text of the DOM, and per element id / data-row the text inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self._stack: list[tuple[str, str | None]] = []
        self.by_key: dict[str, list[str]] = {}
        self.cells: dict[str, dict[str, str]] = {}  # data-row -> class of cell -> text

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        key = a.get("id") or (
            f"row:{a['data-row']}|{a.get('data-group', '')}|{a.get('data-basis', '')}"
            if "data-row" in a
            else None
        )
        cls = a.get("class")
        self._stack.append((tag, key if key else cls))

    def handle_endtag(self, tag):
        while self._stack:
            t, _ = self._stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        keys = [k for _, k in self._stack if k]
        for k in keys:
            if k.startswith("row:") or not k.startswith(("num", "src", "basis", "lim")):
                self.by_key.setdefault(k, []).append(data)
        row = next((k for _, k in reversed(self._stack) if k and k.startswith("row:")), None)
        cls = self._stack[-1][1] if self._stack else None
        if row is not None:
            inner = next(
                (k for _, k in reversed(self._stack) if k in ("basis", "src", "lim")), None
            )
            if inner:
                self.cells.setdefault(row, {}).setdefault(inner, "")
                self.cells[row][inner] += data
        del cls

    def of(self, key: str) -> str:
        return " ".join(" ".join(self.by_key.get(key, [])).split())


@pytest.fixture(scope="module")
def real_case(coarse_atlas, tmp_path_factory):
    """An obturator node and an L4 vertebral lesion: SBRT, nodal boosts, ADT twins."""
    from phantoms import sphere_mask

    from rtplan.compare import compare_options
    from rtplan.lesions import lesions_from_mask
    from rtplan.staging import stage
    from rtplan.volumes import suggest_options

    a = coarse_atlas
    mask = (sphere_mask(a.grid, (0.0, 20.0, 150.0), 8.0) & a.structures["VB_L4"].mask) | (
        sphere_mask(a.grid, (30.0, -15.0, -5.0), 5.5)
    )
    lesions = lesions_from_mask(mask, a.grid)
    st = stage(lesions, a)
    cmp = compare_options(a, lesions, suggest_options(st), stage=st, case=st.string)
    path = rpt.write_report(cmp, tmp_path_factory.mktemp("real") / "report.html")
    return st, cmp, path


def _dom_text(path: Path, tmp_path: Path) -> str:
    """The DOM of the report as headless Chromium renders it (--dump-dom)."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed but CI is set: the browser test must run")
        pytest.skip("chromium not installed")
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode("utf-8")


@pytest.mark.browser
def test_rendered_report_says_which_dose_each_number_is(real_case, tmp_path):
    from rtplan.references import cite, keys_in

    st, cmp, path = real_case
    dom = _DomText()
    dom.feed(_dom_text(path, tmp_path))
    text = " ".join(" ".join(dom.text).split())
    # no pointer to a file the reader does not have
    assert "CLINICAL.md" not in text and "CLINICAL" not in text
    # the staging headline names both forms, consistently with the stage block
    assert f"stage {st.string} (PROMISE miTNM: {st.detailed})" in text
    assert "PROMISE miTNM" in dom.of("stage-forms") or "miN2 two or more" in text
    # every metric row names its dose basis
    rows = [k for k in dom.cells if k.startswith("row:")]
    assert len(rows) == len(cmp.table.rows)
    for row in cmp.table.rows:
        key = f"row:{row.label}|{row.group}|{row.basis}"
        if row.metric == "Volume":
            continue
        assert dom.cells[key]["basis"].strip() == row.basis, row.label
        if row.note:
            assert "Note:" in dom.cells[key]["src"], row.label  # notes beside their limits
    assert any(r.basis == "SBRT course, physical (3 fx)" for r in cmp.table.rows)
    assert any("EQD2 (alpha/beta 3 Gy)" in r.basis for r in cmp.table.rows)
    # citations written out in full, evidence tags explained
    cited = {k for r in cmp.table.rows for k in keys_in(r.source)}
    assert cited
    refs = dom.of("references")
    for key in cited:
        assert " ".join(cite(key).split()) in refs, key
    tags = dom.of("evidence-tags")
    for tag in ("[V]", "[V-3p]", "[U]", "tool default"):
        assert tag in tags
    # the constraints that could not be evaluated, and why
    assert "not evaluated: SacralPlex missing" in text
    assert "SacralPlex" in dom.of("glance-not-evaluated")
    # the at-a-glance block sets the options apart
    worst = dom.of("glance-worst")
    assert worst and "of the limit" in worst
    assert "only here" in dom.of("glance-failed") or "not in every option" in dom.of(
        "glance-failed"
    )
    assert "Hot spot" in dom.of("glance-hot-spot")


def test_isodose_lines_are_drawn_on_the_dose_they_refer_to(real_case):
    _, cmp, _ = real_case
    r = next(r for r in cmp.results if any(c.technique == "sbrt" for c in r.option.courses))
    lines = rpt._isodose_lines(r)
    sbrt = next(line for line in lines if "SBRT" in line.label)
    course = next(c.name for c in r.option.courses if c.technique == "sbrt")
    np.testing.assert_array_equal(sbrt.dose_gy, r.course_doses_gy[course])
    assert sbrt.level_gy == pytest.approx(0.95 * 21.0)
    assert f"({course})" in sbrt.label
    bed = next(line for line in lines if "PTVsb" in line.label and "95 %" in line.label)
    np.testing.assert_allclose(
        bed.dose_gy, r.course_doses_gy["Pelvis"] + r.course_doses_gy["ProstateBedBoost"]
    )
    # on the total dose the SBRT 95 % line would enclose most of the pelvis
    assert np.count_nonzero(r.dose_gy >= sbrt.level_gy) > 20 * np.count_nonzero(
        sbrt.dose_gy >= sbrt.level_gy
    )


def _inside_figure(fig, artist) -> bool:
    fig.canvas.draw()  # Agg canvas of a plain Figure
    box = artist.get_window_extent(fig.canvas.get_renderer())
    fb = fig.bbox
    return (
        box.x0 >= fb.x0 - 1 and box.x1 <= fb.x1 + 1 and box.y0 >= fb.y0 - 1 and box.y1 <= fb.y1 + 1
    )


def test_plots_keep_their_legends_inside_and_their_organs_apart(real_case):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    _, cmp, _ = real_case
    colors = rpt._option_colors(cmp.options)
    fig = rpt._dvh_figure_object(cmp, colors)
    FigureCanvasAgg(fig)
    assert fig.legends and all(_inside_figure(fig, leg) for leg in fig.legends)
    window = rpt._display_window(cmp, cmp.atlas.grid)
    for r in cmp.results:
        centre = rpt._image_centre(r, cmp.atlas.grid)[0]
        planes = rpt._three_planes(window, centre)
        extra = rpt._unseen_ptvs(r.option, planes)
        for ps in (
            planes,
            [
                rpt._make_plane("axial", rpt._subsample(window), p.centroid_mm, window)
                for p in extra[:1]
            ],
        ):
            if not ps:
                continue
            fig = rpt._option_images_figure(cmp, r, window, ps, max_height_in=3.2)
            FigureCanvasAgg(fig)
            (leg,) = fig.legends
            assert _inside_figure(fig, leg), r.name
            oars = [h for h in leg.legend_handles if h.get_linestyle() == ":"]
            colours = [h.get_color() for h in oars]
            assert len(set(map(str, colours))) == len(colours)  # one colour per organ


def test_dvh_limits_identical_curves_and_labels(real_case):
    _, cmp, _ = real_case
    # no cc limit on the % axis, no limit of another dose on the physical DVH
    for row in cmp.table.rows:
        for _, _, label, _ in rpt._limit_markers(cmp, row.structure):
            src = next(
                r
                for r in cmp.table.rows
                if r.structure == row.structure
                and r.metric == label
                and r.group == "OAR"
                and r.basis == "composite physical"
            )
            assert src.unit != "cc"
    groups = rpt._same_dose_groups(cmp)
    twins = [g for g in groups if len(g) > 1]
    assert twins  # the ADT and no-ADT variants of the SBRT option have the same dose
    assert "Identical doses" in rpt._same_dose_caption(cmp)
    handles = rpt._dvh_legend_handles(cmp, rpt._option_colors(cmp.options), {"-"}, groups)
    assert any("(= " in h.get_label() for h in handles)
    # crowded markers: every label placed lies clear of the others
    points = [(60.0 + i, 35.0 - i, f"V{60 + i}Gy") for i in range(6)]
    spots = [s for s in rpt._place_labels(points, 80.0) if s is not None]
    assert spots and len(spots) < len(points) + 1
    ys = sorted((s[1], s[0]) for s in spots)
    for (y0, x0), (y1, x1) in itertools.pairwise(ys):
        assert abs(y1 - y0) >= 3.0 or abs(x1 - x0) >= 5.0


# ----------------------------------------------------------------------------- imported doses
def _with_imported_twin(comparison: Comparison) -> Comparison:
    """The phantom comparison with PBRT's dose also as an imported column."""
    pbrt = comparison.result("PBRT")
    name = "PBRT [imported]"
    twin = dataclasses.replace(
        pbrt,
        option=dataclasses.replace(pbrt.option, name=name),
        dose_source="imported",
        dose_file="RD_tps.dcm",
        dose_note="dose imported from RD_tps.dcm (PLAN), not checked by rtplan",
        uncovered_pct={"Rectum": 12.5},
    )
    options = (*comparison.table.options, name)
    rows = tuple(
        dataclasses.replace(
            r,
            values={**r.values, name: r.values["PBRT"]},
            status={**r.status, name: r.status.get("PBRT")},
            headroom={**r.headroom, name: r.headroom.get("PBRT")},
        )
        for r in comparison.table.rows
    )
    table = ComparisonTable(
        options,
        rows,
        dose_sources={name: "imported"},
        dose_files={name: "RD_tps.dcm"},
    )
    return dataclasses.replace(comparison, results=[*comparison.results, twin], table=table)


def test_every_column_header_says_estimated_or_imported(comparison):
    text = rpt.render_report(_with_imported_twin(comparison))
    for table_id in ("glance-table", "options-table", "metrics"):
        table = re.search(rf'<table id="{table_id}"[^>]*>(.*?)</thead>', text, re.S).group(1)
        heads = re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)
        marks = [re.findall(r'class="hr dose-(\w+)">([^<]*)<', h) for h in heads]
        marks = [m[0] for m in marks if m]
        assert marks == [
            ("estimated", "estimated"),
            ("estimated", "estimated"),
            ("imported", "imported: RD_tps.dcm"),
        ], table_id
    # the images of the imported column say where the dose comes from
    assert "PBRT [imported] (imported: RD_tps.dcm): planes" in text


def test_the_model_limits_say_what_the_estimate_did_in_the_organs(comparison):
    plain = rpt.render_report(comparison)  # the test comparison spared no organ
    assert "The estimate has no OAR sparing here: IMRT/VMAT doses fall off" in plain
    assert "The estimate has no OAR sparing here: intermediate-dose metrics" in plain
    assert "told to spare" not in plain
    spared = rpt.render_report(dataclasses.replace(comparison, spared_organs=("Rectum", "Bladder")))
    assert "no OAR sparing" not in spared
    assert "organs an optimiser is told to spare (Rectum, Bladder) by the sparing" in spared
    assert "SBRT and 3D-CRT courses are not spared" in spared
    assert "Organ values of IMRT/VMAT options are estimated with the calibrated sparing" in spared
    assert rpt.MODEL_LIMITS in spared


def test_without_an_imrt_course_the_report_claims_no_sparing_either_way():
    from types import SimpleNamespace as NS

    def only(technique):
        option = NS(techniques=frozenset({technique}))
        return NS(results=[NS(option=option)], spared_organs=())

    for technique in ("sbrt", "3dcrt"):
        assert rpt._glance_organ_sentence(only(technique)) == ""
        text = rpt._sparing_sentence(only(technique))
        assert text.startswith("No option has an IMRT/VMAT course") and "pessimistic" not in text
    assert rpt._sparing_sentence(only("imrt")).startswith("The estimate has no OAR sparing here")


def test_the_model_disclaimer_applies_to_estimated_columns_only(comparison):
    plain = rpt.render_report(comparison)
    assert "Imported doses" not in plain and "<i>imported</i>" not in plain
    assert "<b>Estimate for comparing options, not a treatment plan.</b>" in plain
    text = rpt.render_report(_with_imported_twin(comparison))
    assert "<b>Estimated columns: an estimate for comparing options, not a treatment plan." in text
    section = re.search(r"<h3>Imported doses</h3>(.*?)</ul>", text, re.S).group(1)
    assert "apply to the estimated columns only" in section
    assert "<b>PBRT [imported]</b>: dose imported from RD_tps.dcm (PLAN), not checked by" in section
    assert "does not cover all of Rectum 12.5 %" in section and "counts as 0 Gy" in section
    assert rpt.MODEL_LIMITS[:60] in text  # still there, for the estimated columns


def test_estimated_organ_metrics_show_their_calibration_spread(comparison, monkeypatch):
    """Issue 15.3: each estimated OAR metric with its calibration uncertainty, not imported."""
    from rtplan.sparing import parse_calibration

    rows = [r for r in comparison.table.rows if r.group == "OAR" and r.structure == "Rectum"]
    target = rows[0]
    calibration = parse_calibration(
        'source = "test"\n[[uncertainty]]\n'
        f'structure = "Rectum"\nmetric = "{target.metric}"\nunit = "{target.unit}"\n'
        "bias = -1.5\nspread = 6.1\nn = 5\n"
    )
    monkeypatch.setattr(rpt, "CALIBRATION", calibration)
    twin = _with_imported_twin(comparison)
    physical = tuple(
        dataclasses.replace(r, basis="composite physical") if r.label == target.label else r
        for r in twin.table.rows
    )
    twin = dataclasses.replace(twin, table=dataclasses.replace(twin.table, rows=physical))
    text = rpt.render_report(twin)
    metrics = re.search(r'<table id="metrics".*?</table>', text, re.S).group(0)
    row = re.search(rf'<tr data-row="{re.escape(target.label)}".*?</tr>', metrics, re.S).group(0)
    cells = re.findall(r'<td class="num[^"]*" data-option="([^"]+)".*?</td>', row, re.S)
    marks = re.findall(r'data-option="([^"]+)"[^>]*>(?:(?!</td>).)*?class="unc"', row, re.S)
    assert sorted(marks) == sorted(o for o in cells if not o.endswith("[imported]"))
    assert "\u00b16.1 % (n=5)" in row or "\u00b16.1 (n=5)" in row
    assert "root-mean-square difference" in text
    # an estimated option without an IMRT/VMAT course carries none (the calibration is of
    # IMRT plans)
    first = twin.results[0]
    boxes = dataclasses.replace(
        first.option,
        courses=tuple(dataclasses.replace(c, technique="3dcrt") for c in first.option.courses),
    )
    no_imrt = dataclasses.replace(
        twin, results=[dataclasses.replace(first, option=boxes), *twin.results[1:]]
    )
    row3 = re.search(
        rf'<tr data-row="{re.escape(target.label)}".*?</tr>',
        re.search(r'<table id="metrics".*?</table>', rpt.render_report(no_imrt), re.S).group(0),
        re.S,
    ).group(0)
    marks3 = re.findall(r'data-option="([^"]+)"[^>]*>(?:(?!</td>).)*?class="unc"', row3, re.S)
    assert first.name in marks and first.name not in marks3
    assert set(marks3) == set(marks) - {first.name}
    # no option with an IMRT course: no +- anywhere, and no legend for it
    boxed = [
        dataclasses.replace(
            r,
            option=dataclasses.replace(
                r.option,
                courses=tuple(dataclasses.replace(c, technique="3dcrt") for c in r.option.courses),
            ),
        )
        for r in twin.results
    ]
    text3 = rpt.render_report(dataclasses.replace(twin, results=boxed))
    assert 'class="unc"' not in text3 and "root-mean-square difference" not in text3
    # rows on another basis (EQD2) carry none
    other = next(r for r in rows if r is not target) if len(rows) > 1 else None
    if other is not None:
        other_row = re.search(rf'<tr data-row="{re.escape(other.label)}".*?</tr>', metrics, re.S)
        assert 'class="unc"' not in other_row.group(0)
    # an estimate of exactly 0 carries none: the calibration rows leave out plans that both
    # doses put at zero (the bowel's V45 of a prostate-bed option)
    zeroed = tuple(
        dataclasses.replace(r, values={**r.values, first.name: 0.0})
        if r.label == target.label
        else r
        for r in twin.table.rows
    )
    text0 = rpt.render_report(
        dataclasses.replace(twin, table=dataclasses.replace(twin.table, rows=zeroed))
    )
    row0 = re.search(
        rf'<tr data-row="{re.escape(target.label)}".*?</tr>',
        re.search(r'<table id="metrics".*?</table>', text0, re.S).group(0),
        re.S,
    ).group(0)
    marks0 = re.findall(r'data-option="([^"]+)"[^>]*>(?:(?!</td>).)*?class="unc"', row0, re.S)
    assert set(marks0) == set(marks) - {first.name}
