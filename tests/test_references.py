"""Tests of rtplan.references: the citation table and the @key citations of protocols."""

from __future__ import annotations

import sys

import pytest

from rtplan.errors import RtplanError
from rtplan.protocol import list_protocols, protocol_text
from rtplan.references import (
    Reference,
    check_keys,
    cite,
    keys_in,
    reference,
    reference_keys,
    short,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _strings(node: object) -> list[str]:
    """Every string in a parsed TOML document (sources, notes, descriptions)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def test_every_entry_has_a_short_form_and_a_citation():
    keys = reference_keys()
    assert len(keys) > 80
    for key in keys:
        ref = reference(key)
        assert isinstance(ref, Reference) and ref.key == key
        assert ref.short
        assert cite(key)
        assert ref.verified, f"{key}: say what of the citation was read"


def test_full_citation_has_authors_title_journal_and_ids():
    text = cite("calais2019_psmasrt")
    assert text.startswith("Calais J, Czernin J, Fendler WP, Elashoff D, Nickols NG.")
    assert "BMC Cancer 2019;19:18." in text
    assert "doi:10.1186/s12885-018-5200-1" in text and "PMID 30616601" in text
    assert "NCT03582774" in text
    assert short("fendler2019") == "Fendler et al., JAMA Oncol 2019"
    assert "JAMA Oncol 2019;5:856-863" in cite("fendler2019")


def test_alias_resolves_to_the_same_entry():
    assert reference("calais2026_ucla") is reference("nikitas2026_ucla")
    assert "calais2026_ucla" not in reference_keys()


def test_unknown_key_names_it():
    with pytest.raises(RtplanError, match="no_such_paper2020"):
        cite("no_such_paper2020")
    with pytest.raises(RtplanError, match="no_such_paper2020"):
        short("no_such_paper2020")


def test_keys_in_and_check_keys():
    assert keys_in("a @fendler2019 b @lawton2009; again @fendler2019.") == [
        "fendler2019",
        "lawton2009",
    ]
    assert keys_in("e-mail x@ or tool default") == []
    assert check_keys(["@hall2021", "no key"]) == ["hall2021"]
    with pytest.raises(RtplanError, match=r"unknown reference key.*in protocol x: nope2001"):
        check_keys(["@hall2021 @nope2001"], where="protocol x")


@pytest.mark.parametrize("name", list_protocols())
def test_every_key_cited_by_a_shipped_protocol_exists(name):
    data = tomllib.loads(protocol_text(name))
    check_keys(_strings(data), where=f"protocol {name}")


def test_every_key_cited_by_the_clinical_modules_exists():
    from rtplan import context, tracers

    texts = [tracers.__doc__ or "", context.__doc__ or ""]
    for t in tracers.TRACERS.values():
        texts += [t.nuclide.source, t.mipsma_source]
        texts += [src for _, src in t.segmentation.sources]
        if t.detection_reference:
            texts.append("@" + t.detection_reference)
    assert len(check_keys(texts)) >= 10
