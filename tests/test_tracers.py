"""Tests of rtplan.tracers: presets, the tracer recorded in a PET header, reference regions."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from rtplan.errors import InvalidInputError
from rtplan.tracers import (
    F18,
    GA68,
    PROMISE_SLOTS,
    TRACER_NAMES,
    TRACERS,
    ReferenceValue,
    get_tracer,
    parse_reference,
    promise_references,
    read_radiopharmaceutical,
    resolve_tracer,
    tracer_from_dataset,
)

# What each tracer's PET header records: (code scheme, value, meaning) or None, name, half-life.
HEADERS = {
    "68Ga-PSMA-11": {
        "code": ("NCIt", "C118961", "PSMA-11 Ga^68^"),
        "name": "Ga-68 PSMA-11",
        "half_life_s": "4062.6",
    },
    "18F-DCFPyL": {
        "code": ("NCIt", "C116352", "Piflufolastat F^18^"),
        "name": "PYLARIFY",
        "half_life_s": "6586.2",
    },
    "18F-rhPSMA-7.3": {"code": None, "name": "F-18 flotufolastat (Posluma)", "half_life_s": "6588"},
    "18F-PSMA-1007": {
        "code": ("DCM", "126758", "PSMA-1007 F^18^"),
        "name": "18F-PSMA-1007",
        "half_life_s": "6586.2",
    },
}


def pet_dataset(header: dict[str, object]) -> Dataset:
    """A one-slice PET dataset (no pixels) with the RadiopharmaceuticalInformationSequence."""
    ds = Dataset()
    ds.SOPClassUID = PositronEmissionTomographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "PT"
    ds.PatientName = "Test^PET"
    item = Dataset()
    if header.get("name"):
        item.Radiopharmaceutical = header["name"]
    if header.get("half_life_s"):
        item.RadionuclideHalfLife = header["half_life_s"]
    item.RadionuclideTotalDose = "250000000"
    code = header.get("code")
    if code:
        c = Dataset()
        c.CodingSchemeDesignator, c.CodeValue, c.CodeMeaning = code
        item.RadiopharmaceuticalCodeSequence = [c]
    ds.RadiopharmaceuticalInformationSequence = [item]
    return ds


def written_and_read(ds: Dataset, tmp_path) -> Dataset:
    """Write ``ds`` as a DICOM file and read it back (the values come back as DS/LO text)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = tmp_path / "pt.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


def test_presets_have_names_nuclides_and_references():
    assert TRACER_NAMES == ("68Ga-PSMA-11", "18F-DCFPyL", "18F-rhPSMA-7.3", "18F-PSMA-1007")
    assert TRACERS["68Ga-PSMA-11"].nuclide is GA68
    assert all(TRACERS[n].nuclide is F18 for n in TRACER_NAMES[1:])
    assert GA68.half_life_s == pytest.approx(67.83 * 60)
    assert F18.half_life_s == pytest.approx(109.734 * 60)
    for t in TRACERS.values():
        assert tuple(slot for slot, _ in t.mipsma_organs) == PROMISE_SLOTS
        assert t.segmentation.as_kwargs()["method"] == "percent_max"
        for parameter in ("method", "percent", "floor_suv", "threshold_suv"):
            assert t.segmentation.source(parameter)
    assert TRACERS["18F-PSMA-1007"].reference_organs == ("blood_pool", "spleen", "parotid")
    assert "unverified" in TRACERS["18F-PSMA-1007"].mipsma_source
    assert TRACERS["18F-DCFPyL"].reference_organs == ("blood_pool", "liver", "parotid")


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("pylarify", "18F-DCFPyL"),
        ("Piflufolastat F 18", "18F-DCFPyL"),
        ("POSLUMA", "18F-rhPSMA-7.3"),
        ("flotufolastat", "18F-rhPSMA-7.3"),
        ("Locametz", "68Ga-PSMA-11"),
        ("gozetotide", "68Ga-PSMA-11"),
        ("[18F]PSMA-1007", "18F-PSMA-1007"),
        ("68ga-psma-11", "68Ga-PSMA-11"),
    ],
)
def test_aliases(alias, name):
    assert get_tracer(alias).name == name


def test_unknown_tracer_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="unknown tracer 'FDG'.*68Ga-PSMA-11"):
        get_tracer("FDG")


@pytest.mark.parametrize("name", TRACER_NAMES)
def test_tracer_read_from_a_written_pet_header(name, tmp_path):
    ds = written_and_read(pet_dataset(HEADERS[name]), tmp_path)
    assert tracer_from_dataset(ds) is TRACERS[name]
    assert resolve_tracer(None, ds) is TRACERS[name]
    assert resolve_tracer(name, ds) is TRACERS[name]


@pytest.mark.parametrize("name", ["68Ga-PSMA-11", "18F-DCFPyL", "18F-PSMA-1007"])
def test_code_alone_is_enough(name):
    code = HEADERS[name]["code"]
    assert tracer_from_dataset(pet_dataset({"code": code})) is TRACERS[name]


def test_name_alone_is_enough_and_half_life_is_checked():
    ds = pet_dataset({"name": "Ga68-PSMA-11 (Illuccix)"})
    assert tracer_from_dataset(ds).name == "68Ga-PSMA-11"
    with pytest.raises(InvalidInputError, match="contradicts itself.*68Ga-PSMA-11.*6586.2"):
        tracer_from_dataset(pet_dataset({"name": "Ga-68 PSMA-11", "half_life_s": "6586.2"}))


def test_contradicting_code_and_name():
    ds = pet_dataset({"code": HEADERS["18F-DCFPyL"]["code"], "name": "PSMA-1007"})
    with pytest.raises(InvalidInputError, match="18F-DCFPyL.*18F-PSMA-1007"):
        tracer_from_dataset(ds)


def test_mismatch_between_given_and_recorded_names_both(tmp_path):
    ds = written_and_read(pet_dataset(HEADERS["18F-DCFPyL"]), tmp_path)
    with pytest.raises(InvalidInputError, match="mismatch: 68Ga-PSMA-11 was given.*18F-DCFPyL"):
        resolve_tracer("68Ga-PSMA-11", ds)


def test_given_tracer_against_a_half_life_only_header():
    ds = pet_dataset({"half_life_s": "6586.2"})
    assert tracer_from_dataset(ds) is None
    assert resolve_tracer("18F-PSMA-1007", ds).name == "18F-PSMA-1007"
    with pytest.raises(InvalidInputError, match="mismatch: 68Ga-PSMA-11.*6586.2 s"):
        resolve_tracer("68Ga-PSMA-11", ds)


def test_unknown_or_missing_radiopharmaceutical():
    fdg = pet_dataset(
        {"code": ("SCT", "35321007", "Fluorodeoxyglucose F^18^"), "half_life_s": "6586.2"}
    )
    assert tracer_from_dataset(fdg) is None
    with pytest.raises(InvalidInputError, match="Fluorodeoxyglucose.*not one of the tracers"):
        resolve_tracer(None, fdg)
    empty = Dataset()
    assert read_radiopharmaceutical(empty) is None
    with pytest.raises(InvalidInputError, match="no tracer"):
        resolve_tracer(None, empty)
    assert resolve_tracer(None, empty, default="68Ga-PSMA-11").name == "68Ga-PSMA-11"
    assert resolve_tracer("posluma").name == "18F-rhPSMA-7.3"


def test_same_ligand_other_nuclide_is_not_recognised():
    # Al[18F]F-PSMA-11 is another tracer than 68Ga-PSMA-11
    assert tracer_from_dataset(pet_dataset({"name": "Al18F-PSMA-11"})) is None


def test_bad_half_life_is_refused():
    with pytest.raises(InvalidInputError, match="RadionuclideHalfLife"):
        read_radiopharmaceutical(pet_dataset({"name": "PSMA-1007", "half_life_s": "-5"}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("liver:5.2", ReferenceValue("liver", 5.2, None)),
        ("liver:5.2,1.1", ReferenceValue("liver", 5.2, 1.1)),
        ("liver: 5.2 , 1.1", ReferenceValue("liver", 5.2, 1.1)),
        ("blood:1.8", ReferenceValue("blood_pool", 1.8, None)),
        ("blood_pool:1.8", ReferenceValue("blood_pool", 1.8, None)),
        ("aorta:1.8,0.3", ReferenceValue("blood_pool", 1.8, 0.3)),
        ("parotid:12", ReferenceValue("parotid", 12.0, None)),
        ("spleen:6.5", ReferenceValue("spleen", 6.5, None)),
        ("Liver", ReferenceValue("liver", None, None)),
    ],
)
def test_parse_reference_forms(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("kidney:3", "unknown organ 'kidney'"),
        ("liver:abc", "mean must be an SUV"),
        ("liver:-1", "mean must be an SUV"),
        ("liver:5,0", "standard deviation must be an SUV"),
        ("liver:5,1,2", "not understood"),
        ("liver:", "not understood"),
    ],
)
def test_parse_reference_refuses_with_the_forms(text, match):
    with pytest.raises(InvalidInputError, match=match) as err:
        parse_reference(text)
    assert "liver:5.2,1.1" in str(err.value)


def test_promise_references_map_organs_to_slots():
    assert promise_references("68Ga-PSMA-11", {"parotid": 10.0, "liver": 5.0}) == {
        "liver": 5.0,
        "parotid": 10.0,
    }
    assert promise_references("18F-PSMA-1007", {"spleen": 6.0}) == {"liver": 6.0}
    with pytest.raises(InvalidInputError, match="18F-PSMA-1007 does not use the liver.*spleen"):
        promise_references("18F-PSMA-1007", {"liver": 5.0})
    with pytest.raises(InvalidInputError, match="68Ga-PSMA-11 does not use the spleen"):
        promise_references("68Ga-PSMA-11", {"spleen": 5.0})
