"""Protocol values that steer staging and the bed CTV: [staging] and the bed's lateral cap."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from phantoms import sphere_mask

from rtplan.errors import ProtocolError
from rtplan.lesions import lesions_from_mask
from rtplan.protocol import load_protocol
from rtplan.staging import OLIGOMETASTATIC_MAX_LESIONS, stage
from rtplan.volumes import ctv_prostate_bed


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = resources.files("rtplan.protocols").joinpath("nrg_salvage.toml").read_text("utf-8")
    assert old in text
    path = tmp_path / "edited.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _four_bone_lesions(atlas):
    """Four lesions in the sacrum and ilia: M1b, oligometastatic only when the cut-off >= 4."""
    mask = None
    for name in ("VB_S1", "VB_S2", "Bone_Ilium_L", "Bone_Ilium_R"):
        s = atlas.structures[name]
        ball = sphere_mask(atlas.grid, s.centroid_mm, 6.0) & s.mask
        mask = ball if mask is None else mask | ball
    return lesions_from_mask(mask, atlas.grid)


def test_the_oligometastatic_cut_off_is_a_protocol_value(coarse_atlas, tmp_path):
    lesions = _four_bone_lesions(coarse_atlas)
    assert len(lesions) == 4
    default = stage(lesions, coarse_atlas)
    assert default.m == "M1b" and default.max_oligo_lesions == OLIGOMETASTATIC_MAX_LESIONS == 3
    assert not default.oligometastatic
    five = _edited(tmp_path, "max_oligo_lesions = 3", "max_oligo_lesions = 5")
    sabr_comet = stage(lesions, coarse_atlas, protocol=load_protocol(five))
    assert sabr_comet.max_oligo_lesions == 5 and sabr_comet.oligometastatic
    # an explicit argument still wins over the protocol
    assert not stage(
        lesions, coarse_atlas, protocol=load_protocol(five), max_oligo_lesions=3
    ).oligometastatic


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("min_mipsma_score = 2", "min_mipsma_score = 5", "staging.min_mipsma_score"),
        ("max_oligo_lesions = 3", "max_oligo_lesions = 0", "staging.max_oligo_lesions"),
        ("max_oligo_lesions = 3", "max_oligo_lesions = 2.5", "staging.max_oligo_lesions"),
    ],
)
def test_staging_values_are_checked(tmp_path, old, new, needle):
    with pytest.raises(ProtocolError, match=needle):
        load_protocol(_edited(tmp_path, old, new))


def test_a_protocol_without_a_staging_table_takes_the_defaults(tmp_path):
    text = resources.files("rtplan.protocols").joinpath("nrg_salvage.toml").read_text("utf-8")
    start = text.index("[staging]")
    end = text.index("\n\n", start)
    path = tmp_path / "no_staging.toml"
    path.write_text(text[:start] + text[end + 2 :], encoding="utf-8")
    proto = load_protocol(path)
    assert proto.get("staging.max_oligo_lesions") is None


def test_the_bed_lateral_cap_is_a_protocol_option(coarse_atlas, tmp_path):
    default = ctv_prostate_bed(coarse_atlas, load_protocol("nrg_salvage"))
    capped_path = _edited(
        tmp_path, "mesorectal_offset_mm", "lateral_cap_mm = 10\nmesorectal_offset_mm"
    )
    capped = ctv_prostate_bed(coarse_atlas, load_protocol(capped_path))
    assert capped.volume_cc < default.volume_cc
    # the cap only takes away (a voxel or two may move with the final smoothing)
    assert (capped.mask & ~default.mask).sum() <= 0.01 * capped.mask.sum()
