"""The trial and guideline protocol presets: they load, cite their sources, build every option
on the atlas; and ``protocol diff`` between them."""

from __future__ import annotations

import warnings

import pytest

from rtplan.errors import ProtocolError
from rtplan.protocol import list_protocols, load_protocol
from rtplan.protocol_diff import diff_protocols, format_diff
from rtplan.references import check_keys, keys_in

# The presets of issue 17 (the two original protocols cite CLINICAL.md, not @keys, yet).
PRESETS = (
    "spport_arm1_pbrt",
    "spport_arm2_pbrt_stad",
    "spport_arm3_plnrt_pbrt_stad",
    "gu003_hyport",
    "gu003_coport",
    "psma_srt_standard",
    "psma_srt_pet",
    "psmaisrt_intensified",
    "patron_salvage",
    "rtog2009_nodes",
    "nrg2021_nodes",
)


def test_presets_are_shipped():
    assert set(PRESETS) <= set(list_protocols())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_validates_and_every_value_cites_a_key_or_is_a_tool_default(name):
    p = load_protocol(name).validate()
    assert p.name == name
    for path, _, source in p.rows():
        if path.startswith("protocol."):
            continue
        assert source, path
        assert p.is_tool_default(path) or keys_in(source), f"{name}: {path}: {source}"
    for c in p.constraints:
        assert keys_in(c.source), f"{name}: {c.structure} {c.metric}"
    sources = [s for _, _, s in p.rows()] + [c.source for c in p.constraints]
    assert check_keys(sources, where=name)
    assert p.tool_defaults  # every preset has values rtplan chose, and says so


def test_preset_values_from_their_trials():
    hyport, coport = load_protocol("gu003_hyport"), load_protocol("gu003_coport")
    assert (
        hyport.prescription("prostate_bed").dose_gy,
        hyport.prescription("prostate_bed").fractions,
    ) == (62.5, 25)
    assert (
        coport.prescription("prostate_bed").dose_gy,
        coport.prescription("prostate_bed").fractions,
    ) == (66.6, 37)
    assert "buyyounouski2024_gu003" in keys_in(hyport.source("prescription.prostate_bed.dose_gy"))
    arm3 = load_protocol("spport_arm3_plnrt_pbrt_stad")
    pn = arm3.prescription("pelvic_nodes")
    assert (pn.dose_gy, pn.fractions, pn.dose_per_fraction_gy) == (45.0, 25, pytest.approx(1.8))
    assert arm3.prescription("prostate_bed").dose_per_fraction_gy == pytest.approx(1.8)
    assert arm3.value("technique.wprt_mode") == "sequential"
    assert (
        load_protocol("nrg2021_nodes").value("ctv.pelvic_nodes.superior_border")
        == "L4L5_Interspace"
    )
    assert load_protocol("nrg2021_nodes").is_tool_default("ctv.pelvic_nodes.superior_border")
    assert (
        load_protocol("rtog2009_nodes").value("ctv.pelvic_nodes.superior_border")
        == "L5S1_Interspace"
    )
    # trials that specify no dose mark every dose as a tool default
    for name in ("psma_srt_standard", "psmaisrt_intensified", "patron_salvage"):
        assert load_protocol(name).is_tool_default("prescription.prostate_bed.dose_gy")


@pytest.fixture(scope="module")
def demo_cases_on_atlas(coarse_atlas):
    from rtplan.demo import case_lesions, demo_cases
    from rtplan.staging import stage

    out = []
    for case in demo_cases(coarse_atlas):
        lesions = case_lesions(case, coarse_atlas)
        out.append((stage(lesions, coarse_atlas), lesions))
    return out


@pytest.mark.parametrize("name", list_protocols())
def test_every_protocol_builds_every_option_on_the_atlas(name, coarse_atlas, demo_cases_on_atlas):
    from rtplan.volumes import build_options, suggest_options

    built = set()
    for st, lesions in demo_cases_on_atlas:
        specs = suggest_options(st, protocol=name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            options = build_options(specs, coarse_atlas, lesions, protocol=name)
        assert [o.name for o in options] == [s.name for s in specs]
        for o in options:
            assert o.targets and all(t.ptv.mask.any() for t in o.targets), (name, o.name)
        built |= {o.name for o in options}
    # the demo stages exercise the bed, the pelvis, both boosts and SBRT
    assert {"PBRT", "PBRT+WPRT", "PBRT+LRboost", "PBRT+WPRT+Nboost+SBRT+ADT"} <= built


def test_nodal_ctv_variants_differ_in_extent(coarse_atlas):
    from rtplan.volumes import ctv_pelvic_nodes

    rtog = ctv_pelvic_nodes(coarse_atlas, load_protocol("rtog2009_nodes"))
    nrg = ctv_pelvic_nodes(coarse_atlas, load_protocol("nrg2021_nodes"))
    assert nrg.mask.sum() > rtog.mask.sum()


# ---------------------------------------------------------------------------- protocol diff
def test_diff_of_two_presets():
    rows = dict((k, (a, b)) for k, a, b in diff_protocols("gu003_coport", "gu003_hyport"))
    assert rows["prescription.prostate_bed.dose_gy"] == (66.6, 62.5)
    assert rows["prescription.prostate_bed.fractions"] == (37, 25)
    assert rows["technique.wprt_mode"] == ("sequential", "sib")
    assert rows["constraints[Rectum V40Gy (%), conventional]"] == ("<= 55 %", None)
    # HYPORT's constraints: the 37-fraction post-op set converted to 25 fractions (same EQD2)
    assert rows["constraints[Rectum V58.1Gy (%), conventional, 25 fx]"] == (None, "<= 35 %")
    assert "ctv.pelvic_nodes.vessel_margin_mm" not in rows


def test_diff_of_nodal_variants_and_of_the_spport_arms():
    keys = [k for k, _, _ in diff_protocols("rtog2009_nodes", "nrg2021_nodes")]
    assert keys == [
        "protocol.name",
        "protocol.title",
        "protocol.description",
        "ctv.pelvic_nodes.superior_border",
    ]
    arm_keys = {k for k, _, _ in diff_protocols("spport_arm1_pbrt", "spport_arm3_plnrt_pbrt_stad")}
    assert arm_keys == {"protocol.name", "protocol.title", "protocol.description"}
    with_sources = [
        k
        for k, _, _ in diff_protocols(
            "spport_arm1_pbrt", "spport_arm3_plnrt_pbrt_stad", sources=True
        )
    ]
    assert "prescription.pelvic_nodes.dose_gy (source)" in with_sources


def test_diff_accepts_loaded_protocols_and_reports_no_difference():
    p = load_protocol("rtog2009_nodes")
    assert diff_protocols(p, "rtog2009_nodes") == []
    changed = p.with_values({"ptv.sbrt.uniform": 3})
    assert diff_protocols(p, changed) == [("ptv.sbrt.uniform", 5.0, 3.0)]
    assert format_diff([], "a", "b") == "a and b do not differ"
    with pytest.raises(ProtocolError, match="no protocol 'nope'"):
        diff_protocols("nope", p)


def test_format_diff_aligns_and_cuts_long_text():
    text = format_diff(
        diff_protocols("rtog2009_nodes", "nrg2021_nodes"),
        "rtog2009_nodes",
        "nrg2021_nodes",
        width=20,
    )
    lines = text.splitlines()
    assert lines[0].split() == ["key", "rtog2009_nodes", "nrg2021_nodes"]
    assert lines[-1].split() == [
        "ctv.pelvic_nodes.superior_border",
        "L5S1_Interspace",
        "L4L5_Interspace",
    ]
    assert all(len(line) <= 32 + 2 + 20 + 2 + 20 for line in lines)
    assert "..." in text
