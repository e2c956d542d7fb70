"""The side-by-side comparison on the shipped atlas (coarse grid for speed)."""

import dataclasses
import json
import sys
import types

import numpy as np
import pytest
from phantoms import sphere_mask

from rtplan.compare import compare_options
from rtplan.lesions import lesions_from_mask
from rtplan.staging import stage
from rtplan.volumes import OptionSpec, build_options, suggest_options


def _compare(atlas, lesion_mask):
    lesions = lesions_from_mask(lesion_mask, atlas.grid)
    st = stage(lesions, atlas)
    options = build_options(suggest_options(st), atlas, lesions)
    return st, options, compare_options(atlas, lesions, options, stage=st, case=st.string)


@pytest.fixture(scope="module")
def t0(coarse_atlas):
    return _compare(coarse_atlas, np.zeros(coarse_atlas.grid.shape, bool))


@pytest.fixture(scope="module")
def tr(coarse_atlas):
    """A local recurrence just posterior of the VUA: PBRT with and without its boost."""
    x, y, z = coarse_atlas.landmarks["VUA"]
    lesions = lesions_from_mask(
        sphere_mask(coarse_atlas.grid, (x, y + 4.0, z), 7.0), coarse_atlas.grid
    )
    st = stage(lesions, coarse_atlas)
    lesion_id = st.table()[0]["id"]
    specs = [OptionSpec("PBRT"), OptionSpec("PBRT+LRboost", local_boost=(lesion_id,))]
    options = build_options(specs, coarse_atlas, lesions)
    return st, options, compare_options(coarse_atlas, lesions, options, stage=st, case=st.string)


def test_table_has_the_options_as_columns_and_is_tidy(t0):
    _, options, cmp = t0
    assert list(cmp.table.options) == [o.name for o in options]
    assert len(cmp.table.options) >= 2
    header = cmp.table.to_csv().splitlines()[0].split(",")
    for name in cmp.table.options:
        assert name in header
    data = json.loads(cmp.table.to_json())
    assert data["options"] == list(cmp.table.options)
    assert len(data["rows"]) == len(cmp.table.rows)
    # every constraint row has a status for every option that has a value
    for row in cmp.table.rows:
        if row.limit:
            for o, v in row.values.items():
                if v is not None:
                    assert row.status[o] in ("pass", "fail")
                    assert (row.status[o] == "pass") == (row.headroom[o] >= -1e-6)


def test_every_ptv_is_covered_by_its_prescription(t0):
    _, _, cmp = t0
    for row in cmp.table.rows:
        if row.group == "Target" and row.metric == "V95%Rx":
            for o, v in row.values.items():
                if v is not None:
                    assert v >= 90.0, (row.structure, o, v)


def test_whole_pelvis_costs_more_bowel_dose_than_prostate_bed_alone(t0):
    _, options, cmp = t0
    names = [o.name for o in options]
    pb = next(n for n in names if "WPRT" not in n)
    wp = next(n for n in names if "WPRT" in n)
    bowel = cmp.table.row("Spc_Bowel", "Dmean")
    assert bowel.values[wp] > bowel.values[pb] + 3.0
    v45 = cmp.result(wp).dvhs["Spc_Bowel"].volume_at_dose_cc(45.0)
    assert v45 > cmp.result(pb).dvhs["Spc_Bowel"].volume_at_dose_cc(45.0)
    # Deville et al., IJROBP 2012 (CLINICAL.md 11d): whole pelvis raised the bladder mean
    # dose and its low-dose volumes (V20) compared with the prostate bed alone
    bladder = cmp.table.row("Bladder", "Dmean")
    assert bladder.values[wp] > bladder.values[pb]
    v20 = [cmp.result(o).dvhs["Bladder"].volume_at_dose_pct(20.0) for o in (pb, wp)]
    assert v20[1] > v20[0]


def test_a_local_boost_raises_the_lesion_dose_and_little_else(tr, coarse_atlas):
    st, options, cmp = tr
    assert st.t == "Tr"
    boosted = [o for o in options if any(t.gtv is not None for t in o.targets)]
    plain = [o for o in options if o not in boosted and "WPRT" not in o.name]
    assert boosted and plain
    b, p = cmp.result(boosted[0].name), cmp.result(plain[0].name)
    gtv = next(t.gtv for t in boosted[0].targets if t.gtv is not None)
    from rtplan.dvh import compute_dvh

    d_boost = compute_dvh(b.dose_gy, b.dose_grid, gtv).mean_gy
    d_plain = compute_dvh(p.dose_gy, p.dose_grid, gtv).mean_gy
    boost_rx = max(t.prescription_gy for t in boosted[0].targets if t.gtv is not None)
    assert d_boost > d_plain + 3.0
    assert d_boost >= 0.95 * boost_rx
    # far organs: unchanged; near organs: mean dose up by a few Gy at most
    for organ, tol_gy in (("Femur_Head_L", 1.0), ("Spc_Bowel", 1.0), ("Bladder", 5.0)):
        a = cmp.table.row(organ, "Dmean").values
        assert abs(a[b.name] - a[p.name]) < tol_gy, organ


def test_duplicate_option_names_are_refused(t0, coarse_atlas):
    _, options, _ = t0
    with pytest.raises(ValueError, match="unique"):
        compare_options(coarse_atlas, None, [options[0], options[0]])


def test_option_specs_are_built_and_bad_options_refused(coarse_atlas):
    lesions = lesions_from_mask(np.zeros(coarse_atlas.grid.shape, bool), coarse_atlas.grid)
    st = stage(lesions, coarse_atlas)
    specs = suggest_options(st)
    cmp = compare_options(coarse_atlas, lesions, specs[:1], stage=st)
    assert cmp.options == [specs[0].name]
    with pytest.raises(TypeError, match="FieldOptions"):
        compare_options(coarse_atlas, lesions, [cmp.results[0].option, specs[0]])


def test_metrics_files_are_written_whole(t0, tmp_path):
    _, _, cmp = t0
    csv_path, json_path = cmp.write_metrics(tmp_path)
    assert csv_path.read_text().splitlines()[0].startswith("group,structure,metric")
    assert json.loads(json_path.read_text())["options"] == list(cmp.table.options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.json"]


def test_progress_callback_hears_each_option(coarse_atlas, t0):
    _, options, _ = t0
    heard = []
    compare_options(coarse_atlas, None, options[:1], case="T0", progress=heard.append)
    assert len(heard) == 1 and options[0].name in heard[0] and heard[0].startswith("T0")


# ---------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"options": "foo"}, TypeError, "options"),
        ({"options": [1, 2]}, TypeError, "options"),
        ({"options": {"PBRT": None}}, TypeError, "options"),
        ({"atlas": "male_pelvis_postop"}, TypeError, "atlas"),
        ({"lesions": [1]}, TypeError, "lesions"),
        ({"stage": "TrN1M0"}, TypeError, "stage"),
        ({"protocol": 3}, TypeError, "protocol"),
        ({"case": 3}, TypeError, "case"),
        ({"dose_spacing_mm": "2.5"}, TypeError, "dose_spacing_mm"),
        ({"dose_spacing_mm": -1.0}, ValueError, "dose_spacing_mm"),
        ({"oars": "Rectum"}, TypeError, "oars"),
        ({"oars": [1]}, TypeError, "oars"),
        ({"dose_parameters": {"imrt_plateau": 1.0}}, TypeError, "dose_parameters"),
    ],
)
def test_arguments_of_the_wrong_type_are_refused_by_name(t0, coarse_atlas, kwargs, error, name):
    _, options, _ = t0
    args = {"atlas": coarse_atlas, "lesions": None, "options": options[:1], **kwargs}
    with pytest.raises(error, match=name):
        compare_options(args.pop("atlas"), args.pop("lesions"), args.pop("options"), **args)


def test_comparison_and_option_results_are_frozen(t0):
    _, _, cmp = t0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmp.case = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmp.results[0].dose_gy = np.zeros(1)  # type: ignore[misc]


def test_to_pandas_without_pandas_says_how_to_install_it(t0, monkeypatch):
    _, _, cmp = t0
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes "import pandas" fail
    with pytest.raises(ImportError, match="pip install pandas"):
        cmp.table.to_pandas()


def test_to_pandas_builds_a_frame_with_options_as_columns(t0, monkeypatch):
    _, _, cmp = t0
    fake = types.ModuleType("pandas")

    def data_frame(data, index):
        return {"data": data, "index": index}

    fake.DataFrame = data_frame  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pandas", fake)
    frame = cmp.table.to_pandas()
    assert list(frame["data"]) == list(cmp.table.options)
    assert frame["index"] == [r.label for r in cmp.table.rows]
