"""PSA, pathology and tracer from the command line and the API into the stage and the report."""

from __future__ import annotations

import dataclasses
import html as html_mod
import re
from pathlib import Path

import numpy as np
import pytest
from test_cli import SMALL_SPACING, assert_one_line_error, run

from rtplan import cli
from rtplan import report as rpt
from rtplan.context import ClinicalContext
from rtplan.tracers import get_tracer


def _text(page: str) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    return " ".join(html_mod.unescape(re.sub(r"<[^>]+>", " ", page)).split())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctx") / "export"
    code = cli.main(["atlas", "export", "--spacing", *SMALL_SPACING, "--out", str(folder), "-q"])
    assert code == 0
    (rs,) = sorted(folder.glob("RS_*.dcm"))
    return folder / "ct", rs


def _pet_like(folder: Path, ct_dir: Path, tracer_code: tuple[str, str, str] | None) -> Path:
    """A flat PET series over the exported CT recording ``(scheme, value, meaning)`` or none."""
    from dicom_fixtures import write_pet
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from rtplan.dicom_io import read_ct_series

    g = read_ct_series(ct_dir).grid
    write_pet(
        folder,
        activity_bqml=np.full(g.shape, 1000.0),
        z0=g.origin_mm[2],
        slice_mm=g.spacing_mm[0],
        origin_xy=g.origin_mm[:2],
        pixel_spacing=g.spacing_mm[1:],
        for_uid=g.frame_of_reference_uid,
    )
    if tracer_code is not None:
        import pydicom

        for f in sorted(folder.iterdir()):
            ds = pydicom.dcmread(f)
            code = Dataset()
            code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = tracer_code
            ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence = Sequence(
                [code]
            )
            ds.save_as(f, enforce_file_format=True)
    return folder


def test_pet_method_takes_the_mean_and_sd_form_the_help_shows():
    assert cli.parse_pet_method("liver:5.2,1.1") == {
        "method": "reference",
        "reference": "liver",
        "references": {"liver": 5.2},
    }
    with pytest.raises(ValueError, match="liver"):
        cli.parse_pet_method("liver:5.2,-1")


def test_stage_with_a_psa_says_what_a_negative_scan_means(exported, capsys):
    ct, rs = exported
    code, out, err = run(["stage", "--ct", ct, "--structures", rs, "--psa", "0.3", "-q"], capsys)
    assert code == 0, err
    assert "stage: T0N0M0" in out
    context = [line for line in out.splitlines() if line.startswith("context: ")]
    assert any("does not exclude nodal disease" in line and "38 %" in line for line in context)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--psa", "-1"], "psa"),
        (["--gleason", "4+9"], "Gleason"),
        (["--isup", "7"], "isup"),
        (["--margin", "R5"], "margin"),
        (["--tracer", "FDG"], "FDG"),
        (["--reference", "kidney:3"], "kidney"),
    ],
)
def test_bad_clinical_inputs_are_one_line_errors(exported, argv, needle, capsys):
    ct, rs = exported
    code, _, err = run(["stage", "--ct", ct, "--structures", rs, *argv, "-q"], capsys)
    assert code != 0
    assert_one_line_error(err, needle)


def test_given_tracer_that_differs_from_the_recorded_one_is_refused(exported, tmp_path, capsys):
    ct, rs = exported
    ga = get_tracer("68Ga-PSMA-11")
    pet = _pet_like(tmp_path / "pet", ct, ga.codes[0])
    base = ["stage", "--ct", ct, "--structures", rs, "--pet", pet, "-q"]
    code, _, err = run([*base, "--tracer", "18F-DCFPyL"], capsys)
    assert code == 1
    assert_one_line_error(err, "18F-DCFPyL", "68Ga-PSMA-11")
    code, out, err = run([*base, "--tracer", "68Ga-PSMA-11", "--psa", "0.7"], capsys)
    assert code == 0, err
    assert "57 %" in out  # the 0.5-<1.0 band of Fendler 2019


def test_report_of_a_negative_scan_at_psa_0_3_states_the_detection_rate(coarse_atlas, tmp_path):
    from rtplan.demo import plan_case
    from rtplan.lesions import Lesions

    empty = Lesions([], grid=coarse_atlas.grid)
    cmp = plan_case(
        coarse_atlas,
        empty,
        case="neg",
        dose_spacing_mm=5.0,
        context=ClinicalContext(psa_ng_ml=0.3, pathological_t="pT3a"),
    )
    text = _text(rpt.render_report(cmp))
    assert "The scan in its clinical context" in text
    assert "PSA at PET 0.3 ng/mL" in text
    assert "does not exclude nodal disease" in text and "38 %" in text
    assert "Fendler" in text
    # without a context the report says the PSA is missing rather than inventing one
    bare = _text(rpt.render_report(dataclasses.replace(cmp, context=None)))
    assert "PSA at PET not given" in bare and "38 %" not in bare


def test_compare_options_refuses_a_context_of_the_wrong_type(coarse_atlas):
    from rtplan.compare import compare_options
    from rtplan.lesions import Lesions

    empty = Lesions([], grid=coarse_atlas.grid)
    with pytest.raises(TypeError, match="context"):
        compare_options(coarse_atlas, empty, [], context={"psa_ng_ml": 0.3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tracer"):
        compare_options(coarse_atlas, empty, [], tracer="68Ga-PSMA-11")  # type: ignore[arg-type]


def test_protocol_diff_of_two_presets(capsys):
    code, out, err = run(["protocol", "diff", "gu003_hyport", "gu003_coport"], capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if "prostate_bed.dose_gy" in line)
    assert "62.5" in row and "66.6" in row
    code, out, _ = run(["protocol", "diff", "nrg_salvage", "nrg_salvage"], capsys)
    assert code == 0
    assert "dose_gy" not in out


def test_protocol_list_shows_every_preset_with_one_line(capsys):
    code, out, _ = run(["protocol", "list"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    for preset in ("spport_arm3_plnrt_pbrt_stad", "gu003_hyport", "psma_srt_pet", "rtog2009_nodes"):
        assert preset in names
