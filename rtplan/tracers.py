"""PSMA PET tracer presets: names, nuclide half-life, miPSMA reference organs, SUV defaults.

Four tracers are known (:data:`TRACER_NAMES`):

==================  =============================================  =======  =================
tracer              also called                                    nuclide  miPSMA references
==================  =============================================  =======  =================
68Ga-PSMA-11        gozetotide (Illuccix, Locametz, Gozellix)      Ga-68    blood pool, liver,
                                                                            parotid
18F-DCFPyL          piflufolastat F 18 (Pylarify)                  F-18     blood pool, liver,
                                                                            parotid
18F-rhPSMA-7.3      flotufolastat F 18 (Posluma)                   F-18     blood pool, liver,
                                                                            parotid
18F-PSMA-1007       --                                             F-18     blood pool,
                                                                            **spleen**, parotid
==================  =============================================  =======  =================

The miPSMA expression score (PROMISE V2, @seifert2023_promise2; thresholds via open-source
calculators [V-3p]) compares a lesion's uptake with the blood pool, the liver and the
parotid glands. For 18F-PSMA-1007, which is excreted mainly through the liver, the spleen
takes the liver's place: **unverified** against PROMISE V2 itself; an abstract on
18F-PSMA-1007 reference tissue says "it is suggested to use spleen as reference tissue
instead of liver" (@abrahamsen2026_psma1007_reference).

Half-lives (for decay correction when a PET series does not record RadionuclideHalfLife):
Ga-68 67.83 min (evaluated value, @kuzmenko2019_ga68 [V-3p]), F-18 109.734 min
(NUBASE2020, @kondev2021_nubase2020 [V-3p]). Scanners often write slightly different values
(e.g. 6586.2 s for F-18); the header's own value, when present, is the one the images were
corrected with and should be preferred.

:func:`tracer_from_dataset` identifies the tracer from a PET dataset's
RadiopharmaceuticalInformationSequence: the RadiopharmaceuticalCodeSequence (DICOM
CID 4021: NCIt C118961 "PSMA-11 Ga^68^", NCIt C116352 "Piflufolastat F^18^", DCM 126758
"PSMA-1007 F^18^"; CID 4021 has no code for rhPSMA-7.3 in the version read,
@dicom_cid4021), the Radiopharmaceutical name, and the RadionuclideHalfLife.
:func:`resolve_tracer` combines a tracer the user gave with the recorded one and refuses a
mismatch. :func:`parse_reference` reads the CLI's reference-region forms.

Examples
--------
>>> get_tracer("Pylarify").name
'18F-DCFPyL'
>>> get_tracer("18F-PSMA-1007").mipsma_organ("liver")
'spleen'
>>> round(get_tracer("68Ga-PSMA-11").half_life_s)
4070
>>> parse_reference("liver:5.2,1.1")
ReferenceValue(organ='liver', mean_suv=5.2, sd_suv=1.1)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from pydicom.dataset import Dataset

from rtplan.errors import InvalidInputError

__all__ = [
    "F18",
    "GA68",
    "PROMISE_SLOTS",
    "REFERENCE_ORGANS",
    "REFERENCE_STRUCTURES",
    "TRACERS",
    "TRACER_NAMES",
    "Nuclide",
    "RecordedRadiopharmaceutical",
    "ReferenceValue",
    "SegmentationDefaults",
    "Tracer",
    "get_tracer",
    "parse_reference",
    "promise_references",
    "read_radiopharmaceutical",
    "resolve_tracer",
    "tracer_from_dataset",
]

T = TypeVar("T")

#: Relative tolerance when matching a recorded RadionuclideHalfLife to a nuclide (tool
#: default: scanners write e.g. 4062.6 or 4080 s for Ga-68, 6586.2 s for F-18).
HALF_LIFE_TOLERANCE = 0.02


@dataclass(frozen=True)
class Nuclide:
    """A positron-emitting nuclide.

    Attributes
    ----------
    name : str
        ``"Ga-68"`` or ``"F-18"``.
    half_life_s : float
        Physical half-life in seconds.
    source : str
        Where the half-life comes from (``@key`` of rtplan/references.toml).
    """

    name: str
    half_life_s: float
    source: str

    def matches_half_life(self, half_life_s: float) -> bool:
        """Whether a recorded half-life (s) is this nuclide's, within 2 %."""
        return abs(half_life_s - self.half_life_s) <= HALF_LIFE_TOLERANCE * self.half_life_s


GA68 = Nuclide(
    "Ga-68",
    67.83 * 60.0,
    "67.83 (20) min, evaluated value @kuzmenko2019_ga68 [V-3p] (NPL 2023 abstract)",
)
F18 = Nuclide(
    "F-18",
    109.734 * 60.0,
    "109.734 (8) min, NUBASE2020 @kondev2021_nubase2020 [V-3p] (isotope table)",
)
_NUCLIDES = (GA68, F18)

#: The PROMISE miPSMA reference levels, lowest first (as rtplan.lesions.REFERENCE_REGIONS).
PROMISE_SLOTS: tuple[str, ...] = ("blood_pool", "liver", "parotid")
#: Reference organs a user can give (``--reference ORGAN:MEAN``).
REFERENCE_ORGANS: tuple[str, ...] = ("blood_pool", "liver", "parotid", "spleen")
#: TG-263 structures whose SUVmean stands for each reference organ (automated readings use
#: the aorta for the blood pool, CLINICAL.md 3c [V-3p]; both parotids are pooled).
REFERENCE_STRUCTURES: dict[str, tuple[str, ...]] = {
    "blood_pool": ("A_Aorta",),
    "liver": ("Liver",),
    "parotid": ("Parotid_L", "Parotid_R"),
    "spleen": ("Spleen",),
}
_ORGAN_ALIASES = {
    "blood": "blood_pool",
    "blood_pool": "blood_pool",
    "bloodpool": "blood_pool",
    "aorta": "blood_pool",
    "liver": "liver",
    "parotid": "parotid",
    "parotids": "parotid",
    "spleen": "spleen",
}


@dataclass(frozen=True)
class SegmentationDefaults:
    """Default PET lesion segmentation for a tracer (keywords of ``lesions_from_pet``).

    Attributes
    ----------
    method : {"percent_max", "fixed", "reference"}
        Segmentation method.
    percent : float
        Percentage of each lesion's SUVmax (``"percent_max"``).
    floor_suv : float
        Candidate hot-spot threshold of ``"percent_max"`` (SUV).
    threshold_suv : float
        Fixed SUV threshold of ``"fixed"``.
    sources : tuple of (str, str)
        ``(parameter, source)`` for every value; a source beginning "tool default" is a
        value rtplan chose.
    """

    method: str
    percent: float
    floor_suv: float
    threshold_suv: float
    sources: tuple[tuple[str, str], ...]

    def source(self, parameter: str) -> str:
        """The source of one parameter (``"percent"``, ``"floor_suv"``...)."""
        for name, text in self.sources:
            if name == parameter:
                return text
        raise InvalidInputError(
            f"no segmentation parameter {parameter!r}; valid: "
            f"{', '.join(n for n, _ in self.sources)}"
        )

    def as_kwargs(self) -> dict[str, str | float]:
        """``method``, ``percent``, ``floor_suv``, ``threshold_suv`` for ``lesions_from_pet``."""
        return {
            "method": self.method,
            "percent": self.percent,
            "floor_suv": self.floor_suv,
            "threshold_suv": self.threshold_suv,
        }


@dataclass(frozen=True)
class Tracer:
    """A PSMA PET tracer preset.

    Attributes
    ----------
    name : str
        Canonical name, e.g. ``"68Ga-PSMA-11"``.
    aliases : tuple of str
        Other names (generic, brand, chemical) it is recognised by.
    nuclide : Nuclide
        Its positron emitter.
    codes : tuple of (str, str, str)
        DICOM ``(CodingSchemeDesignator, CodeValue, CodeMeaning)`` of CID 4021.
    mipsma_organs : tuple of (str, str)
        PROMISE slot -> organ measured for it, in :data:`PROMISE_SLOTS` order.
    mipsma_source : str
        Source of the reference organs.
    segmentation : SegmentationDefaults
        Default lesion segmentation and its sources.
    detection_reference : str
        Key of the study whose detection rate applies to this tracer ("" if none).
    name_tokens : tuple of str
        Normalised tokens that identify the tracer inside a free-text name.
    notes : tuple of str
        Caveats shown with the tracer.
    """

    name: str
    aliases: tuple[str, ...]
    nuclide: Nuclide
    codes: tuple[tuple[str, str, str], ...]
    mipsma_organs: tuple[tuple[str, str], ...]
    mipsma_source: str
    segmentation: SegmentationDefaults
    detection_reference: str
    name_tokens: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def half_life_s(self) -> float:
        """Physical half-life of the nuclide in seconds."""
        return self.nuclide.half_life_s

    def mipsma_organ(self, slot: str) -> str:
        """The organ measured for a PROMISE slot (``"liver"`` -> ``"spleen"`` for PSMA-1007)."""
        for s, organ in self.mipsma_organs:
            if s == slot:
                return organ
        raise InvalidInputError(
            f"PROMISE slot must be one of {', '.join(PROMISE_SLOTS)}; got {slot!r}"
        )

    @property
    def reference_organs(self) -> tuple[str, ...]:
        """The organs measured for the miPSMA score, lowest level first."""
        return tuple(organ for _, organ in self.mipsma_organs)


def _segmentation(*, nuclide_note: str, percent_source: str) -> SegmentationDefaults:
    return SegmentationDefaults(
        method="percent_max",
        percent=41.0,
        floor_suv=3.0,
        threshold_suv=3.0,
        sources=(
            (
                "method",
                "tool default: per-lesion percentage of SUVmax; no PSMA-specific threshold is "
                "recommended (@fendler2023_eanm_snmmi, CLINICAL.md 3d)",
            ),
            ("percent", percent_source),
            (
                "floor_suv",
                "tool default: SUV 3, the qPSMA bone-lesion threshold for 68Ga-PSMA-11 "
                f"(@gafita2019_qpsma [V]){nuclide_note}",
            ),
            (
                "threshold_suv",
                "qPSMA bone-lesion threshold SUV >= 3 for 68Ga-PSMA-11 (@gafita2019_qpsma [V])"
                f"{nuclide_note}",
            ),
        ),
    )


_PERCENT_41 = (
    "tool default: 41 % of SUVmax, the EANM FDG convention (@boellaard2015_eanm [U]); "
    "40 / 45 / 50 % gave no relevant change in PSMA semiquantification (@mihatsch2022 [V])"
)
_REUSED = "; reused unchanged for this 18F tracer (no tracer-specific value in rtplan's references)"
_PROMISE = "PROMISE V2 miPSMA score: blood pool, liver, parotid (@seifert2023_promise2 [V-3p])"
_STANDARD_ORGANS = (("blood_pool", "blood_pool"), ("liver", "liver"), ("parotid", "parotid"))

TRACERS: dict[str, Tracer] = {
    t.name: t
    for t in (
        Tracer(
            name="68Ga-PSMA-11",
            aliases=(
                "Ga-68 PSMA-11",
                "[68Ga]Ga-PSMA-11",
                "PSMA-11 Ga^68^",
                "68Ga-PSMA-HBED-CC",
                "gozetotide",
                "Ga 68 gozetotide",
                "Illuccix",
                "Locametz",
                "Gozellix",
            ),
            nuclide=GA68,
            codes=(("NCIt", "C118961", "PSMA-11 Ga^68^"),),
            mipsma_organs=_STANDARD_ORGANS,
            mipsma_source=_PROMISE,
            segmentation=_segmentation(nuclide_note="", percent_source=_PERCENT_41),
            detection_reference="fendler2019",
            name_tokens=("psma11", "gozetotide", "illuccix", "locametz", "gozellix", "hbedcc"),
        ),
        Tracer(
            name="18F-DCFPyL",
            aliases=(
                "piflufolastat",
                "piflufolastat F 18",
                "Piflufolastat F^18^",
                "Pylarify",
                "Pylarify TruVu",
                "[18F]DCFPyL",
                "DCFPyL",
            ),
            nuclide=F18,
            codes=(("NCIt", "C116352", "Piflufolastat F^18^"),),
            mipsma_organs=_STANDARD_ORGANS,
            mipsma_source=_PROMISE,
            segmentation=_segmentation(nuclide_note=_REUSED, percent_source=_PERCENT_41),
            detection_reference="morris2021_condor",
            name_tokens=("dcfpyl", "piflufolastat", "pylarify"),
        ),
        Tracer(
            name="18F-rhPSMA-7.3",
            aliases=(
                "flotufolastat",
                "flotufolastat F 18",
                "Posluma",
                "rhPSMA-7.3",
                "[18F]rhPSMA-7.3",
            ),
            nuclide=F18,
            codes=(),
            mipsma_organs=_STANDARD_ORGANS,
            mipsma_source=_PROMISE,
            segmentation=_segmentation(nuclide_note=_REUSED, percent_source=_PERCENT_41),
            detection_reference="jani2023_spotlight",
            name_tokens=("rhpsma73", "flotufolastat", "posluma"),
            notes=("DICOM CID 4021 has no code for it in the version read: recognised by name",),
        ),
        Tracer(
            name="18F-PSMA-1007",
            aliases=("PSMA-1007 F^18^", "[18F]PSMA-1007", "PSMA-1007"),
            nuclide=F18,
            codes=(("DCM", "126758", "PSMA-1007 F^18^"),),
            mipsma_organs=(
                ("blood_pool", "blood_pool"),
                ("liver", "spleen"),
                ("parotid", "parotid"),
            ),
            mipsma_source=(
                "unverified: spleen in place of the liver for 18F-PSMA-1007 (hepatobiliary "
                "excretion), as suggested in @abrahamsen2026_psma1007_reference; not read in "
                "PROMISE V2 (@seifert2023_promise2) itself (CLINICAL.md 3c [U])"
            ),
            segmentation=_segmentation(
                nuclide_note=_REUSED,
                percent_source=(
                    "tool default: 41 % of SUVmax; 40 / 45 / 50 % gave no relevant change in "
                    "semiquantification for 18F-PSMA-1007 (@mihatsch2022 [V])"
                ),
            ),
            detection_reference="",
            name_tokens=("psma1007",),
            notes=(
                "spleen as the second miPSMA reference is unverified against PROMISE V2",
                "no detection-rate data for this tracer in rtplan's references",
            ),
        ),
    )
}
#: Canonical tracer names, in table order.
TRACER_NAMES: tuple[str, ...] = tuple(TRACERS)


def _normalise(text: str) -> str:
    """Lower case, letters and digits only (``"[68Ga]Ga-PSMA-11"`` -> ``"68gagapsma11"``)."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _nuclides_named(norm: str) -> set[str]:
    """Nuclides a normalised name mentions (``"68ga"``, ``"ga68"``, ``"18f"``, ``"f18"``)."""
    found = set()
    if "68ga" in norm or "ga68" in norm:
        found.add("Ga-68")
    if "18f" in norm or "f18" in norm:
        found.add("F-18")
    return found


def get_tracer(name: str | Tracer) -> Tracer:
    """The preset of a tracer name or alias (case, spaces and punctuation ignored).

    Raises
    ------
    InvalidInputError
        If the name is not one of the known tracers (the message lists them).

    Examples
    --------
    >>> get_tracer("posluma").name
    '18F-rhPSMA-7.3'
    """
    if isinstance(name, Tracer):
        return name
    norm = _normalise(name)
    for tracer in TRACERS.values():
        if norm in {_normalise(n) for n in (tracer.name, *tracer.aliases)}:
            return tracer
    raise InvalidInputError(
        f"unknown tracer {name!r}; rtplan knows {', '.join(TRACER_NAMES)} (and their generic "
        "and brand names: gozetotide, Illuccix, Locametz; piflufolastat, Pylarify; "
        "flotufolastat, Posluma)"
    )


def _match_text(text: str) -> Tracer | None:
    """The tracer a free-text radiopharmaceutical name or code meaning names, if any."""
    norm = _normalise(text)
    if not norm:
        return None
    named = _nuclides_named(norm)
    for tracer in TRACERS.values():
        if any(tok in norm for tok in tracer.name_tokens):
            if named and tracer.nuclide.name not in named:
                return None  # e.g. Al[18F]F-PSMA-11: another tracer with the same ligand
            return tracer
    return None


# ---------------------------------------------------------------------------- DICOM
@dataclass(frozen=True)
class RecordedRadiopharmaceutical:
    """What a PET dataset records about its radiopharmaceutical.

    Attributes
    ----------
    name : str
        Radiopharmaceutical (0018,0031), ``""`` if absent.
    code_scheme, code_value, code_meaning : str
        First item of RadiopharmaceuticalCodeSequence, ``""`` if absent.
    half_life_s : float or None
        RadionuclideHalfLife (s).
    """

    name: str
    code_scheme: str
    code_value: str
    code_meaning: str
    half_life_s: float | None

    @property
    def text(self) -> str:
        """A readable description, e.g. ``"code NCIt C118961 'PSMA-11 Ga^68^'"``."""
        parts = []
        if self.code_value:
            parts.append(f"code {self.code_scheme} {self.code_value} {self.code_meaning!r}")
        if self.name:
            parts.append(f"Radiopharmaceutical {self.name!r}")
        if self.half_life_s is not None:
            parts.append(f"RadionuclideHalfLife {self.half_life_s:g} s")
        return ", ".join(parts) or "nothing"

    @property
    def nuclide(self) -> Nuclide | None:
        """The nuclide whose half-life matches the recorded one, if any."""
        if self.half_life_s is None:
            return None
        for nuclide in _NUCLIDES:
            if nuclide.matches_half_life(self.half_life_s):
                return nuclide
        return None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, None)
    return "" if value is None else str(value).strip()


def read_radiopharmaceutical(ds: Dataset) -> RecordedRadiopharmaceutical | None:
    """The radiopharmaceutical recorded in a PET dataset, or ``None`` if nothing is.

    Reads the first item of RadiopharmaceuticalInformationSequence: its
    RadiopharmaceuticalCodeSequence, Radiopharmaceutical and RadionuclideHalfLife.

    Raises
    ------
    InvalidInputError
        If RadionuclideHalfLife is present but not a positive number.
    """
    seq = ds.get("RadiopharmaceuticalInformationSequence", None)
    if not seq:
        return None
    item = seq[0]
    codes = item.get("RadiopharmaceuticalCodeSequence", None)
    code = codes[0] if codes else Dataset()
    half_life_s = None
    raw = _text(item, "RadionuclideHalfLife")
    if raw:
        try:
            half_life_s = float(raw)
        except ValueError:
            half_life_s = math.nan
        if not (math.isfinite(half_life_s) and half_life_s > 0):
            raise InvalidInputError(
                f"RadionuclideHalfLife in RadiopharmaceuticalInformationSequence is {raw!r}; "
                "expected a positive number of seconds"
            )
    recorded = RecordedRadiopharmaceutical(
        name=_text(item, "Radiopharmaceutical"),
        code_scheme=_text(code, "CodingSchemeDesignator"),
        code_value=_text(code, "CodeValue"),
        code_meaning=_text(code, "CodeMeaning"),
        half_life_s=half_life_s,
    )
    if not (recorded.name or recorded.code_value or recorded.code_meaning):
        if recorded.half_life_s is None:
            return None
    return recorded


def _tracer_of_code(recorded: RecordedRadiopharmaceutical) -> Tracer | None:
    for tracer in TRACERS.values():
        for scheme, value, _ in tracer.codes:
            if recorded.code_value == value and recorded.code_scheme in (scheme, ""):
                return tracer
    return _match_text(recorded.code_meaning)


def _identify(recorded: RecordedRadiopharmaceutical) -> Tracer | None:
    """The tracer the recorded attributes name, checked against each other."""
    by_code = _tracer_of_code(recorded) if (recorded.code_value or recorded.code_meaning) else None
    by_name = _match_text(recorded.name)
    if by_code is not None and by_name is not None and by_code is not by_name:
        raise InvalidInputError(
            f"the PET series contradicts itself: its RadiopharmaceuticalCodeSequence names "
            f"{by_code.name} but its Radiopharmaceutical names {by_name.name} ({recorded.text})"
        )
    tracer = by_code or by_name
    nuclide = recorded.nuclide
    if tracer is not None and recorded.half_life_s is not None and nuclide is not tracer.nuclide:
        raise InvalidInputError(
            f"the PET series contradicts itself: it names {tracer.name} ({tracer.nuclide.name}, "
            f"half-life {tracer.half_life_s:.0f} s) but records RadionuclideHalfLife "
            f"{recorded.half_life_s:g} s ({recorded.text})"
        )
    return tracer


def tracer_from_dataset(ds: Dataset) -> Tracer | None:
    """The tracer a PET dataset records, or ``None`` if it records none rtplan knows.

    Parameters
    ----------
    ds : pydicom.Dataset
        A PET image dataset (one slice of the series).

    Returns
    -------
    Tracer or None
        ``None`` when the dataset has no RadiopharmaceuticalInformationSequence, or names
        a radiopharmaceutical that is not one of :data:`TRACER_NAMES`.

    Raises
    ------
    InvalidInputError
        If the code, the name and the half-life recorded name different tracers or nuclides.
    """
    recorded = read_radiopharmaceutical(ds)
    return None if recorded is None else _identify(recorded)


def resolve_tracer(
    given: str | Tracer | None, ds: Dataset | None = None, *, default: str | None = None
) -> Tracer:
    """The tracer to use: the one given, checked against the one the PET records.

    Parameters
    ----------
    given : str or Tracer or None
        Tracer named by the user (``--tracer``), or ``None`` to take the recorded one.
    ds : pydicom.Dataset, optional
        A PET dataset whose RadiopharmaceuticalInformationSequence is read.
    default : str, optional
        Tracer to use when none is given and none is recorded; without it that is an error.

    Returns
    -------
    Tracer

    Raises
    ------
    InvalidInputError
        If the given tracer and the recorded one differ (both are named), if the recorded
        half-life is another nuclide's, if the PET records a radiopharmaceutical rtplan does
        not know and none is given, or if there is no tracer at all and no ``default``.
    """
    recorded = read_radiopharmaceutical(ds) if ds is not None else None
    found = _identify(recorded) if recorded is not None else None
    if given is not None:
        tracer = get_tracer(given)
        if found is not None and found is not tracer:
            raise InvalidInputError(
                f"tracer mismatch: {tracer.name} was given but the PET series records "
                f"{found.name} ({recorded.text if recorded else ''}); give the right tracer "
                "or correct the header"
            )
        nuclide = recorded.nuclide if recorded is not None else None
        if (
            recorded is not None
            and recorded.half_life_s is not None
            and nuclide is not tracer.nuclide
        ):
            raise InvalidInputError(
                f"tracer mismatch: {tracer.name} ({tracer.nuclide.name}) was given but the PET "
                f"series records RadionuclideHalfLife {recorded.half_life_s:g} s, which is not "
                f"{tracer.nuclide.name}'s {tracer.half_life_s:.0f} s"
            )
        return tracer
    if found is not None:
        return found
    if recorded is not None and (recorded.name or recorded.code_value or recorded.code_meaning):
        raise InvalidInputError(
            f"the PET series records {recorded.text}, not one of the tracers rtplan knows "
            f"({', '.join(TRACER_NAMES)}); name the tracer (e.g. --tracer 68Ga-PSMA-11)"
        )
    if default is not None:
        return get_tracer(default)
    raise InvalidInputError(
        "no tracer: the PET series records none and none was given; name it "
        f"(one of {', '.join(TRACER_NAMES)})"
    )


# ---------------------------------------------------------------------------- references
@dataclass(frozen=True)
class ReferenceValue:
    """A reference region given on the command line.

    Attributes
    ----------
    organ : str
        One of :data:`REFERENCE_ORGANS`.
    mean_suv : float or None
        SUVmean of the region; ``None`` to measure it in the anatomy
        (:data:`REFERENCE_STRUCTURES`).
    sd_suv : float or None
        Its standard deviation, when given.
    """

    organ: str
    mean_suv: float | None = None
    sd_suv: float | None = None


_REFERENCE_FORMS = (
    "ORGAN, ORGAN:MEAN or ORGAN:MEAN,SD with ORGAN one of liver, blood (or blood_pool, "
    "aorta), parotid, spleen, e.g. liver:5.2 or liver:5.2,1.1"
)


def _positive(text: str, what: str, original: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value < 1000):
        raise InvalidInputError(
            f"--reference {original!r}: the {what} must be an SUV in (0, 1000), got {text!r}; "
            f"expected {_REFERENCE_FORMS}"
        )
    return value


def parse_reference(text: str) -> ReferenceValue:
    """Read a reference region as given on the command line (``--reference``).

    Forms: ``liver``, ``liver:MEAN``, ``liver:MEAN,SD``; the same for ``blood`` (also
    ``blood_pool`` or ``aorta``), ``parotid`` and ``spleen``. A bare organ means "measure
    it in the anatomy".

    Raises
    ------
    InvalidInputError
        Naming the text and the accepted forms.

    Examples
    --------
    >>> parse_reference("blood:1.8")
    ReferenceValue(organ='blood_pool', mean_suv=1.8, sd_suv=None)
    >>> parse_reference("spleen")
    ReferenceValue(organ='spleen', mean_suv=None, sd_suv=None)
    """
    name, sep, numbers = text.strip().partition(":")
    organ = _ORGAN_ALIASES.get(name.strip().lower())
    if organ is None:
        raise InvalidInputError(
            f"--reference {text!r}: unknown organ {name.strip()!r}; expected {_REFERENCE_FORMS}"
        )
    if not sep:
        return ReferenceValue(organ)
    values = [v.strip() for v in numbers.split(",")]
    if len(values) > 2 or not values[0]:
        raise InvalidInputError(
            f"--reference {text!r} is not understood; expected {_REFERENCE_FORMS}"
        )
    mean = _positive(values[0], "mean", text)
    sd = _positive(values[1], "standard deviation", text) if len(values) == 2 else None
    return ReferenceValue(organ, mean, sd)


def promise_references(tracer: str | Tracer, by_organ: Mapping[str, T]) -> dict[str, T]:
    """Reference values keyed by organ -> keyed by PROMISE slot, for a tracer.

    ``rtplan.lesions`` scores miPSMA against ``"blood_pool"``, ``"liver"`` and
    ``"parotid"``; for 18F-PSMA-1007 the spleen fills the ``"liver"`` slot.

    Parameters
    ----------
    tracer : str or Tracer
        The tracer.
    by_organ : mapping
        Organ (one of :data:`REFERENCE_ORGANS`) -> value (a mask or an SUVmean).

    Raises
    ------
    InvalidInputError
        If an organ is not a reference of this tracer (e.g. the liver for 18F-PSMA-1007),
        naming the organ the tracer uses instead.

    Examples
    --------
    >>> promise_references("18F-PSMA-1007", {"spleen": 6.1, "blood_pool": 1.4})
    {'blood_pool': 1.4, 'liver': 6.1}
    """
    t = get_tracer(tracer)
    slot_of = {organ: slot for slot, organ in t.mipsma_organs}
    out: dict[str, T] = {}
    for organ, value in by_organ.items():
        if organ not in REFERENCE_ORGANS:
            raise InvalidInputError(
                f"reference organ must be one of {', '.join(REFERENCE_ORGANS)}; got {organ!r}"
            )
        if organ not in slot_of:
            used = ", ".join(t.reference_organs)
            raise InvalidInputError(
                f"{t.name} does not use the {organ} as a miPSMA reference (it uses {used}; "
                f"{t.mipsma_source})"
            )
        out[slot_of[organ]] = value
    return {slot: out[slot] for slot in PROMISE_SLOTS if slot in out}
