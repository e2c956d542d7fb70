"""Tests of rtplan.protocol: loading, validation with key paths, sources, accessors."""

from __future__ import annotations

import copy
import re
from importlib import resources

import pytest

from rtplan.dvh import Constraint, evaluate_constraint
from rtplan.errors import ProtocolError
from rtplan.margins import Margin
from rtplan.protocol import (
    NtcpModel,
    Protocol,
    ProtocolConstraint,
    list_protocols,
    load_protocol,
)

if __import__("sys").version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _raw(name: str = "nrg_salvage") -> dict:
    text = resources.files("rtplan.protocols").joinpath(f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


@pytest.fixture(scope="module")
def proto() -> Protocol:
    return load_protocol("nrg_salvage")


def test_list_and_load_shipped():
    names = list_protocols()
    assert "nrg_salvage" in names and names == sorted(names)
    for n in names:
        p = load_protocol(n)
        assert p.name == n and p.title


def test_load_by_path_and_object(tmp_path, proto):
    text = resources.files("rtplan.protocols").joinpath("nrg_salvage.toml").read_text("utf-8")
    f = tmp_path / "mine.toml"
    f.write_text(text, encoding="utf-8")
    p = load_protocol(f)
    assert p.path == str(f) and p.keys() == proto.keys()
    assert load_protocol(p) is p
    assert load_protocol(str(f)).value("ptv.sbrt.uniform") == 5.0


def test_unknown_name_and_bad_toml(tmp_path):
    with pytest.raises(ProtocolError, match="no protocol 'nope'.*nrg_salvage"):
        load_protocol("nope")
    f = tmp_path / "bad.toml"
    f.write_text("[ptv\nuniform = ", encoding="utf-8")
    with pytest.raises(ProtocolError, match="not valid TOML"):
        load_protocol(f)


def test_values_sources_and_tool_defaults(proto):
    assert proto.value("ctv.pelvic_nodes.vessel_margin_mm") == 7.0
    assert "Lawton" in proto.source("ctv.pelvic_nodes.vessel_margin_mm")
    # an inline source overrides the table's
    assert "Taylor" in proto.source("ctv.pelvic_nodes.obturator_strip_width_mm")
    assert proto.is_tool_default("ctv.prostate_bed.lateral_halfwidth_mm")
    assert not proto.is_tool_default("ctv.prostate_bed.inferior_below_vua_mm")
    # every value has a source (the [protocol] metadata aside), tool defaults are marked
    for path, _value, source in proto.rows():
        if not path.startswith("protocol."):
            assert source.strip(), path
    assert set(proto.tool_defaults) <= set(proto.keys())
    assert "ptv.prostate_bed.posterior" in proto.tool_defaults
    with pytest.raises(ProtocolError, match="no value 'ptv.nodes.left'"):
        proto.value("ptv.nodes.left")


def test_shipped_clinical_values(proto):
    # CLINICAL.md sections 1a, 2a, 4b, 4d, 5
    assert proto.value("ctv.prostate_bed.inferior_below_vua_mm") in (8, 9, 10, 11, 12)
    assert 30 <= proto.value("ctv.prostate_bed.superior_above_symphysis_mm") <= 40
    assert 10 <= proto.value("ctv.prostate_bed.bladder_wall_band_mm") <= 20
    # the protocol says NRG 2021 (Hall et al., IJROBP 2021), so its border is the default
    assert proto.value("ctv.pelvic_nodes.superior_border") == "L4L5_Interspace"
    assert proto.value("ctv.pelvic_nodes.presacral_vertebrae") == ("VB_S1", "VB_S2", "VB_S3")
    pb = proto.prescription("prostate_bed")
    assert 64.8 <= pb.dose_gy <= 70.2 and pb.dose_per_fraction_gy == pytest.approx(1.8)
    pn = proto.prescription("pelvic_nodes")
    assert (pn.dose_gy, pn.fractions) == (45.0, 25)
    assert 60 <= proto.prescription("node_boost").dose_gy <= 66
    assert (proto.prescription("sbrt_node").dose_gy, proto.prescription("sbrt_node").fractions) == (
        30.0,
        5,
    )
    assert proto.prescription("sbrt_bone").fractions == 3
    assert proto.ptv_margin("sbrt") == Margin.uniform(5)
    m = proto.ptv_margin("prostate_bed")
    assert m.posterior == 5 and 5 <= m.anterior <= 8
    assert proto.prescription("prostate_bed").dose_cgy == 6660


def test_constraints(proto):
    cs = proto.constraints
    assert all(isinstance(c, ProtocolConstraint) and isinstance(c, Constraint) for c in cs)
    key = {(c.structure, c.metric, c.op, c.limit, c.unit) for c in cs}
    assert ("Rectum", "V65Gy", "<=", 35.0, "%") in key  # RTOG 0534
    assert ("Spc_Bowel", "V45Gy", "<", 195.0, "cc") in key  # QUANTEC Kavanagh
    assert {"Bladder", "Femur_Head_L", "Femur_Head_R", "PenileBulb"} <= {c.structure for c in cs}
    assert all(c.source for c in cs)
    conv = proto.constraints_for("imrt")
    sbrt5 = proto.constraints_for("sbrt", fractions=5)
    assert conv and sbrt5 and all(c.applies_to in ("conventional", "all") for c in conv)
    assert all(c.applies_to in ("sbrt", "all") and c.fractions in (5, None) for c in sbrt5)
    assert "TG-101" in sbrt5[0].source
    assert {c.fractions for c in proto.constraints_for("sbrt", fractions=3)} == {3}
    assert cs[0].text == "<= 35 %"


def test_constraint_evaluates_with_dvh():
    import numpy as np

    from rtplan.dvh import DVH

    c = load_protocol("nrg_salvage").constraints[0]
    # a rectum whose cumulative DVH falls linearly from 100 % at 0 Gy to 0 % at 100 Gy
    d = DVH("Rectum", np.array([0.0, 100.0]), np.array([10.0, 0.0]), 10.0, 50.0, 0.0, 100.0)
    r = evaluate_constraint(c, d)
    assert r.value == pytest.approx(100 - c.parsed.at, abs=0.5)
    assert r.passed == (r.value <= c.limit)


def test_ntcp_and_alpha_beta(proto):
    models = proto.ntcp_models
    assert isinstance(models["Rectum"], NtcpModel)
    r = models["Rectum"]
    assert (r.td50_gy, r.m, r.n) == (76.9, 0.13, 0.09)  # QUANTEC, CLINICAL.md 7
    assert r.to_lkb().td50_gy == 76.9
    assert proto.alpha_beta_gy["prostate"] == 1.5


def test_with_values_changes_and_revalidates(proto):
    p = proto.with_values({"ptv.pelvic_nodes.uniform": 5})
    assert p.ptv_margin("pelvic_nodes") == Margin.uniform(5)
    assert proto.ptv_margin("pelvic_nodes") == Margin.uniform(7)  # original untouched
    assert p.source("ptv.pelvic_nodes.uniform") == "user override"
    with pytest.raises(ProtocolError, match=re.escape("ptv.pelvic_nodes.uniform")):
        proto.with_values({"ptv.pelvic_nodes.uniform": -2})


def _bad(mutate) -> str:
    data = copy.deepcopy(_raw())
    mutate(data)
    with pytest.raises(ProtocolError) as info:
        Protocol(data)
    return str(info.value)


def test_unknown_key_named():
    msg = _bad(lambda d: d["ptv"]["pelvic_nodes"].update(posterier=5))
    assert "unknown key ptv.pelvic_nodes.posterier" in msg
    msg = _bad(lambda d: d["ctv"]["pelvic_nodes"].update(vessel_margin=7))
    assert "ctv.pelvic_nodes.vessel_margin" in msg and "vessel_margin_mm" in msg
    assert "unknown key margins" in _bad(lambda d: d.update(margins={}))
    assert "unknown key ctv.bed" in _bad(lambda d: d["ctv"].update(bed={}))
    msg = _bad(lambda d: d["ctv"]["pelvic_nodes"].update(vessel_margin_mm={"value": 7, "src": "x"}))
    assert "ctv.pelvic_nodes.vessel_margin_mm.src" in msg
    assert "constraints[0].limt" in _bad(lambda d: d["constraints"][0].update(limt=3))


def test_negative_margin_named():
    def neg(d):
        d["ptv"]["node_boost"] = {
            "right": 5,
            "left": 5,
            "anterior": 5,
            "posterior": -5,
            "superior": 5,
            "inferior": 5,
            "source": "test",
        }

    msg = _bad(neg)
    assert "ptv.node_boost.posterior" in msg and "-5" in msg
    msg = _bad(lambda d: d["ctv"]["pelvic_nodes"].update(vessel_margin_mm=-7))
    assert "ctv.pelvic_nodes.vessel_margin_mm" in msg


def test_missing_dose_named():
    msg = _bad(lambda d: d["prescription"]["prostate_bed"].pop("dose_gy"))
    assert "missing dose" in msg and "prescription.prostate_bed.dose_gy" in msg
    assert "prescription.sbrt_bone" in _bad(lambda d: d["prescription"].pop("sbrt_bone"))
    msg = _bad(lambda d: d["ptv"]["prostate_bed"].pop("posterior"))
    assert "ptv.prostate_bed.posterior" in msg
    assert "constraints[1]" in _bad(lambda d: d["constraints"][1].pop("limit"))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("prescription.prostate_bed.dose_gy", "66", "expected a number"),
        ("prescription.prostate_bed.fractions", 36.5, "whole number"),
        ("prescription.prostate_bed.fractions", True, "whole number"),
        ("ctv.pelvic_nodes.superior_border", "L3L4", "L5S1_Interspace"),
        ("ctv.pelvic_nodes.presacral_vertebrae", "VB_S1", "list of strings"),
        ("technique.wprt_mode", "both", "sequential"),
        ("ptv.sbrt.uniform", 80, "between 0 and 50"),
        ("prescription.sbrt_bone.dose_gy", 0, "dose"),
    ],
)
def test_wrong_type_or_range_named(path, value, expected):
    def set_value(d):
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node[p]
        node[leaf] = value

    msg = _bad(set_value)
    assert path in msg and expected in msg


def test_constraint_checks_named():
    assert "constraints[0]" in _bad(lambda d: d["constraints"][0].update(metric="V65"))
    assert "unit" in _bad(lambda d: d["constraints"][0].update(unit="Gy"))  # V in % or cc
    assert "op" in _bad(lambda d: d["constraints"][0].update(op="=="))
    assert "<= 100" in _bad(lambda d: d["constraints"][0].update(limit=135))
    assert "applies_to" in _bad(lambda d: d["constraints"][0].update(applies_to="sometimes"))


def test_missing_source_named():
    def drop(d):
        del d["ctv"]["prostate_bed"]["source"]

    msg = _bad(drop)
    assert "ctv.prostate_bed.inferior_below_vua_mm: no source" in msg


def test_fractionation_consistency():
    msg = _bad(lambda d: d["prescription"]["pelvic_nodes"].update(fractions=40))
    assert "prescription.pelvic_nodes" in msg and "sequential" in msg
    msg = _bad(lambda d: d["technique"].update(wprt_mode="sib"))
    assert "prescription.pelvic_nodes.fractions" in msg
    msg = _bad(lambda d: d["prescription"]["local_boost"].update(dose_gy=60.0))
    assert "prescription.local_boost.dose_gy" in msg


def test_ptv_uniform_and_directions_exclusive():
    msg = _bad(lambda d: d["ptv"]["sbrt"].update(left={"value": 3, "source": "test"}))
    assert "ptv.sbrt" in msg and "not both" in msg


def test_path_in_message(tmp_path):
    text = resources.files("rtplan.protocols").joinpath("nrg_salvage.toml").read_text("utf-8")
    f = tmp_path / "p.toml"
    f.write_text(text.replace("vessel_margin_mm = 7", "vessel_margin_mm = -7"), "utf-8")
    with pytest.raises(ProtocolError, match=r"ctv\.pelvic_nodes\.vessel_margin_mm.*p\.toml"):
        load_protocol(f)


def test_typed_accessors(proto):
    assert proto.number("ctv.pelvic_nodes.vessel_margin_mm") == 7.0
    assert isinstance(proto.value("prescription.pelvic_nodes.fractions"), int)
    assert proto.number("prescription.pelvic_nodes.fractions") == 25.0
    assert proto.text("technique.wprt_mode") == "sequential"
    assert proto.names("ctv.pelvic_nodes.presacral_vertebrae") == ("VB_S1", "VB_S2", "VB_S3")
    # defaults stand in for absent optional keys only
    assert proto.number("ctv.prostate_bed.no_such_mm", 0.0) == 0.0
    assert proto.text("ctv.prostate_bed.no_such_choice", "fascia") == "fascia"
    assert proto.number("ctv.pelvic_nodes.vessel_margin_mm", 3.0) == 7.0
    with pytest.raises(ProtocolError, match="no value 'ctv.prostate_bed.no_such_mm'"):
        proto.number("ctv.prostate_bed.no_such_mm")
    with pytest.raises(ProtocolError, match="superior_border: expected a number"):
        proto.number("ctv.pelvic_nodes.superior_border")
    with pytest.raises(ProtocolError, match="vessel_margin_mm: expected a string"):
        proto.text("ctv.pelvic_nodes.vessel_margin_mm")
    with pytest.raises(ProtocolError, match="wprt_mode: expected a list of names"):
        proto.names("technique.wprt_mode")


def test_constraint_structure_names_are_checked():
    data = _raw()
    rectum = next(c for c in data["constraints"] if c["structure"] == "Rectum")
    for name in ("Rectum_PRV05", "Bladder-CTV", "PTV_6660", "SacralPlex", "rectum"):
        Protocol({**data, "constraints": [{**rectum, "structure": name}]})
    with pytest.raises(ProtocolError, match=r"'Rectum_PRV05x'"):
        Protocol({**data, "constraints": [{**rectum, "structure": "Rectum_PRV05x"}]})
    ntcp = copy.deepcopy(data["ntcp"])
    ntcp["Rectun"] = ntcp.pop("Rectum")
    with pytest.raises(ProtocolError, match=r"ntcp\.Rectun.*did you mean 'Rectum'"):
        Protocol({**data, "ntcp": ntcp})


def test_deeply_nested_protocol_data_is_refused():
    deep: list = []
    node = deep
    for _ in range(2000):
        node.append([])
        node = node[0]
    with pytest.raises(ProtocolError, match="nested more than 16"):
        Protocol({**_raw(), "protocol": {"name": "x", "title": "x", "deep": deep}})
