"""Tests of rtplan.context: clinical inputs, detection rates, what a scan means, subgroups."""

from __future__ import annotations

import itertools
import math

import pytest

from rtplan.context import (
    FENDLER2019_BANDS,
    ClinicalContext,
    detection_rate,
    grade_group_from_gleason,
    grade_group_from_gleason_sum,
    parse_gleason,
    scan_meaning,
    subgroup_lines,
)
from rtplan.errors import InvalidInputError


# ---------------------------------------------------------------------------- inputs
def test_empty_context_is_valid():
    ctx = ClinicalContext()
    assert ctx.is_empty and ctx.lines() == []


def test_inputs_are_normalised():
    ctx = ClinicalContext(
        psa_ng_ml=0.3,
        psa_doubling_time_months=9,
        pathological_t="t3B",
        pathological_n="pNX",
        margin="r1",
        isup_grade_group=3,
        months_since_prostatectomy=20,
    )
    assert (ctx.pathological_t, ctx.pathological_n, ctx.margin) == ("pT3b", "pNx", "R1")
    assert isinstance(ctx.psa_doubling_time_months, float)
    assert ctx.lines() == [
        "PSA at PET 0.3 ng/mL",
        "PSA doubling time 9 months",
        "pT3b pNx R1",
        "ISUP grade group 3",
        "20 months after prostatectomy",
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"psa_ng_ml": -0.1}, r"psa_ng_ml.*\[0, 10000\]"),
        ({"psa_ng_ml": math.nan}, r"psa_ng_ml.*\[0, 10000\]"),
        ({"psa_ng_ml": 20000}, r"psa_ng_ml.*\[0, 10000\]"),
        ({"psa_ng_ml": "0.3"}, r"psa_ng_ml \(PSA at PET, ng/mL\) must be a number"),
        ({"psa_doubling_time_months": 0}, r"psa_doubling_time_months must be in \(0, 1200\]"),
        ({"months_since_prostatectomy": -1}, r"months_since_prostatectomy must be in \[0, 600\]"),
        ({"pathological_t": "pT1c"}, "pathological_t must be one of pT2, pT2a"),
        ({"pathological_n": "N2"}, "pathological_n must be one of pN0, pN1, pNx"),
        ({"margin": "R2"}, "margin must be one of R0, R1"),
        ({"isup_grade_group": 6}, "isup_grade_group must be a whole number from 1 to 5"),
        ({"isup_grade_group": 2.5}, "isup_grade_group"),
        ({"isup_grade_group": True}, "isup_grade_group"),
    ],
)
def test_invalid_inputs_name_field_and_range(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        ClinicalContext(**kwargs)


def test_psa_zero_and_limits_are_allowed():
    assert ClinicalContext(psa_ng_ml=0).psa_ng_ml == 0.0
    assert ClinicalContext(months_since_prostatectomy=0).months_since_prostatectomy == 0.0


def test_from_mapping_reads_manifest_cells():
    ctx = ClinicalContext.from_mapping(
        {
            "psa_ng_ml": "0.35",
            "psa_doubling_time_months": " 7.5 ",
            "pathological_t": "pT3a",
            "pathological_n": "",
            "margin": None,
            "gleason": "3+4",
            "months_since_prostatectomy": 12,
        }
    )
    assert ctx == ClinicalContext(
        psa_ng_ml=0.35,
        psa_doubling_time_months=7.5,
        pathological_t="pT3a",
        isup_grade_group=2,
        months_since_prostatectomy=12,
    )
    assert ClinicalContext.from_mapping({"isup_grade_group": "4"}).isup_grade_group == 4
    with pytest.raises(InvalidInputError, match="unknown clinical input.*'psa'"):
        ClinicalContext.from_mapping({"psa": "0.3"})
    with pytest.raises(InvalidInputError, match="psa_ng_ml must be a number"):
        ClinicalContext.from_mapping({"psa_ng_ml": "0,3"})
    with pytest.raises(InvalidInputError, match="grade group 3, but isup_grade_group is 2"):
        ClinicalContext.from_mapping({"isup_grade_group": 2, "gleason": "4+3"})


def test_gleason_to_grade_group():
    assert [
        grade_group_from_gleason(p, s) for p, s in [(3, 3), (3, 4), (4, 3), (4, 4), (3, 5)]
    ] == [
        1,
        2,
        3,
        4,
        4,
    ]
    assert [grade_group_from_gleason(p, s) for p, s in [(4, 5), (5, 4), (5, 5)]] == [5, 5, 5]
    assert [grade_group_from_gleason_sum(s) for s in (2, 6, 8, 9, 10)] == [1, 1, 4, 5, 5]
    with pytest.raises(InvalidInputError, match="3\\+4 = grade group 2"):
        grade_group_from_gleason_sum(7)
    with pytest.raises(InvalidInputError, match="from 2 to 10"):
        grade_group_from_gleason_sum(11)
    with pytest.raises(InvalidInputError, match="primary pattern"):
        grade_group_from_gleason(6, 3)
    assert parse_gleason(" 4 + 4 = 8 ") == 4
    with pytest.raises(InvalidInputError, match="4\\+3 is not 8"):
        parse_gleason("4+3=8")
    with pytest.raises(InvalidInputError, match="not understood"):
        parse_gleason("high")


# ---------------------------------------------------------------------------- detection rate
@pytest.mark.parametrize(
    ("psa", "rate", "n"),
    [
        (0.0, 38, 136),
        (0.3, 38, 136),
        (0.499, 38, 136),
        (0.5, 57, 79),
        (0.999, 57, 79),
        (1.0, 84, 89),
        (1.999, 84, 89),
        (2.0, 86, 158),
        (4.999, 86, 158),
        (5.0, 97, 173),
        (250.0, 97, 173),
    ],
)
def test_fendler_bands_at_the_edges(psa, rate, n):
    d = detection_rate(psa)
    assert (d.rate_low_pct, d.rate_high_pct, d.n_patients) == (rate, rate, n)
    assert d.reference == "fendler2019" and d.by_psa and d.data_tracer == "68Ga-PSMA-11"


def test_band_table_is_contiguous():
    for (lo, hi, _, _), (lo2, _, _, _) in itertools.pairwise(FENDLER2019_BANDS):
        assert hi == lo2 and lo < hi
    assert sum(n for *_, n in FENDLER2019_BANDS) == 635


def test_other_tracers():
    condor = detection_rate(0.3, "18F-DCFPyL")
    assert (condor.rate_low_pct, condor.rate_high_pct, condor.by_psa) == (59, 66, False)
    assert condor.reference == "morris2021_condor" and condor.rate_text == "59-66 %"
    spotlight = detection_rate(1.2, "Posluma")
    assert spotlight.rate_text == "83 %" and spotlight.reference == "jani2023_spotlight"
    psma1007 = detection_rate(0.7, "18F-PSMA-1007")
    assert psma1007.tracer == "18F-PSMA-1007" and psma1007.data_tracer == "68Ga-PSMA-11"
    assert psma1007.rate_text == "57 %"
    with pytest.raises(InvalidInputError, match="psa_ng_ml"):
        detection_rate(-1)
    with pytest.raises(InvalidInputError, match="unknown tracer"):
        detection_rate(1, "FDG")


# ---------------------------------------------------------------------------- scan meaning
def test_negative_scan_at_psa_0_3_states_38_percent():
    lines = scan_meaning("T0N0M0", ClinicalContext(psa_ng_ml=0.3))
    assert "does not exclude nodal disease" in lines[0]
    assert "38 %" in lines[0] and "PSA 0.3 ng/mL" in lines[0]
    assert "Fendler et al., JAMA Oncol 2019" in lines[0]


def test_negative_scan_with_an_18f_tracer_labels_the_data():
    lines = scan_meaning("T0N0M0", ClinicalContext(psa_ng_ml=0.3), tracer="pylarify")
    assert "38 %" in lines[0] and "68Ga-PSMA-11 PET" in lines[0]
    assert "59-66 %" in lines[1] and "CONDOR" in lines[1]


def test_positive_scans():
    tr = scan_meaning("TrN0M0", ClinicalContext(psa_ng_ml=1.5))
    assert tr[0].startswith("PSMA PET was positive (TrN0M0) at PSA 1.5 ng/mL") and "84 %" in tr[0]
    assert any("does not exclude nodal disease" in s for s in tr)
    m1 = scan_meaning("T0N1M1b", ClinicalContext(psa_ng_ml=6))
    assert "97 %" in m1[0] and not any("No PSMA-positive node" in s for s in m1)
    assert any("0.84" in s for s in m1)


def test_without_psa_only_that_is_said():
    (line,) = scan_meaning("T0N0M0", ClinicalContext())
    assert "not given" in line


@pytest.mark.parametrize("bad", ["", "T1N0M0", "T0N2M0", "stage", "T0N0M0x"])
def test_bad_stage_strings(bad):
    with pytest.raises(InvalidInputError, match="not a PSMA PET stage"):
        scan_meaning(bad, ClinicalContext(psa_ng_ml=1.0))


# ---------------------------------------------------------------------------- subgroups
def test_ucla_groups():
    t0 = subgroup_lines("T0N0M0", ClinicalContext())
    assert len(t0) == 1 and "78.3 % / 62.4 %" in t0[0] and "40.7 %" in t0[0]
    assert "Nikitas et al., JNCCN 2026" in t0[0]
    assert "aHR 0.12" in subgroup_lines("TrN0M0", ClinicalContext())[0]
    assert "aHR 0.37" in subgroup_lines("TrN1M0", ClinicalContext())[0]
    assert "M1 was 14.2 %" in subgroup_lines("T0N1M1b", ClinicalContext())[0]
    assert "N1M0 was 28.3 %" in subgroup_lines("N1M0", ClinicalContext())[0]


def test_psa_0_3_subgroup_of_the_intensification_trial():
    below = subgroup_lines("T0N0M0", ClinicalContext(psa_ng_ml=0.29))
    assert not any("HR 0.17" in s for s in below)
    at = subgroup_lines("T0N0M0", ClinicalContext(psa_ng_ml=0.3))
    assert any("HR 0.17" in s and "NCT03525288" in s for s in at)


def test_spport_eligibility_line():
    inside = subgroup_lines(
        "T0N0M0", ClinicalContext(psa_ng_ml=0.5, pathological_t="pT3a", pathological_n="pN0")
    )
    assert any("SPPORT" in s and "89.1 %" in s for s in inside)
    for ctx, stage in [
        (ClinicalContext(psa_ng_ml=2.5), "T0N0M0"),
        (ClinicalContext(psa_ng_ml=0.05), "T0N0M0"),
        (ClinicalContext(psa_ng_ml=0.5, pathological_t="pT4"), "T0N0M0"),
        (ClinicalContext(psa_ng_ml=0.5, pathological_n="pN1"), "T0N0M0"),
        (ClinicalContext(psa_ng_ml=0.5), "T0N1M0"),
        (ClinicalContext(psa_ng_ml=0.5), "TrN0M1a"),
    ]:
        assert not any("SPPORT" in s for s in subgroup_lines(stage, ctx)), (ctx, stage)
