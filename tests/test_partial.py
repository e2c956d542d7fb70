"""Partial results: an option the anatomy cannot support is listed, the others proceed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_cli import run

from rtplan import report as rpt
from rtplan.atlas import Atlas
from rtplan.demo import plan_case
from rtplan.errors import MissingStructureError
from rtplan.lesions import Lesions
from rtplan.structures import StructureSet

#: Structures whose absence rules out the elective pelvic nodal CTV (RTOG 2009: vessels + 7 mm).
_VESSELS = ("A_Iliac_Int_L", "A_Iliac_Int_R", "V_Iliac_Int_L", "V_Iliac_Int_R")


def _without(atlas: Atlas, names: tuple[str, ...]) -> Atlas:
    kept = [s for s in atlas.structures.values() if s.name not in names]
    return dataclasses.replace(atlas, structures=StructureSet(kept, grid=atlas.grid))


def test_options_without_their_structures_are_listed_and_the_others_compared(coarse_atlas):
    anatomy = _without(coarse_atlas, _VESSELS)
    empty = Lesions([], grid=anatomy.grid)
    cmp = plan_case(anatomy, empty, case="partial", dose_spacing_mm=5.0)
    assert cmp.options and all("WPRT" not in name for name in cmp.options)
    assert [s.name for s in cmp.skipped] == ["PBRT+WPRT"]
    reason = cmp.skipped[0].reason
    assert any(v in reason for v in _VESSELS), reason
    html = rpt.render_report(cmp)
    assert "Options not built on this anatomy" in html and "PBRT+WPRT" in html


def test_no_option_at_all_is_an_error_naming_every_option(coarse_atlas):
    anatomy = _without(coarse_atlas, ("PubicSymphys", "Bladder", "Rectum", *_VESSELS))
    empty = Lesions([], grid=anatomy.grid)
    with pytest.raises(MissingStructureError, match="no option can be built") as info:
        plan_case(anatomy, empty, case="none", dose_spacing_mm=5.0)
    assert "PBRT:" in str(info.value) and "PBRT+WPRT:" in str(info.value)


def test_plan_exits_4_and_lists_the_skipped_option(coarse_atlas, tmp_path: Path, capsys):
    anatomy = _without(coarse_atlas, _VESSELS)
    out = tmp_path / "export"
    ct = anatomy.export_ct(out / "ct")
    from rtplan.dicom_io import write_rtstruct

    rs = write_rtstruct(list(anatomy.structures.values()), ct, out / "RS.dcm", label="partial")
    argv = ["plan", "--ct", ct, "--structures", rs, "--no-complete", "--dose-spacing", "5"]
    code, _, err = run([*argv, "--out", tmp_path / "plan", "-q"], capsys)
    assert code == 4, err
    assert "option not built: PBRT+WPRT" in err
    assert (tmp_path / "plan" / "report.html").exists()
