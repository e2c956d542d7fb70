"""The sources rtplan cites, read from ``rtplan/references.toml``.

Every clinical number in rtplan's code, reports and shipped protocols names its source by a
short key (``fendler2019``, ``pollack2022_spport``). The keys, with the full citation of
each source, live in one TOML file shipped with the package; this module reads it and
formats citations. A protocol ``source`` string cites a key as ``@key``
(``"... 45 Gy at 1.8 Gy @pollack2022_spport [V]"``); :func:`keys_in` finds them and
:func:`check_keys` refuses unknown ones.

Examples
--------
>>> short("fendler2019")
'Fendler et al., JAMA Oncol 2019'
>>> cite("calais2019_psmasrt")[:40]
'Calais J, Czernin J, Fendler WP, Elashof'
>>> keys_in("SPPORT arms @pollack2022_spport and @akthar2018 [V]")
['pollack2022_spport', 'akthar2018']
>>> keys_in("tool default: no source")
[]
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from rtplan.errors import RtplanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "Reference",
    "check_keys",
    "cite",
    "keys_in",
    "reference",
    "reference_keys",
    "short",
]

_FILE = "references.toml"
_KEY_PATTERN = re.compile(r"@([a-z][a-z0-9_]*[a-z0-9])")
_TEXT_FIELDS = (
    "short",
    "authors",
    "title",
    "journal",
    "volume",
    "issue",
    "pages",
    "doi",
    "pmid",
    "pmcid",
    "nct",
    "url",
    "note",
    "verified",
)


@dataclass(frozen=True)
class Reference:
    """One source, as written in ``references.toml``.

    Attributes
    ----------
    key : str
        The short id, e.g. ``"fendler2019"``.
    short : str
        In-line form, e.g. ``"Fendler et al., JAMA Oncol 2019"``.
    authors, title, journal : str
        ``""`` when not read (never guessed).
    year : int or None
        Publication year.
    volume, issue, pages, doi, pmid, pmcid, nct, url : str
        Bibliographic identifiers; ``""`` when unknown.
    note : str
        What rtplan takes from the source.
    verified : str
        What of the citation and its numbers was read (CLINICAL.md tags).
    aliases : tuple of str
        Other keys that resolve to this entry.
    """

    key: str
    short: str
    authors: str = ""
    title: str = ""
    journal: str = ""
    year: int | None = None
    volume: str = ""
    issue: str = ""
    pages: str = ""
    doi: str = ""
    pmid: str = ""
    pmcid: str = ""
    nct: str = ""
    url: str = ""
    note: str = ""
    verified: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def citation(self) -> str:
        """The full citation: authors, title, journal year;volume(issue):pages, ids."""
        parts = [p.rstrip(".") + "." for p in (self.authors, self.title) if p]
        source = self.journal
        if self.year is not None:
            source = f"{source} {self.year}".strip()
        locator = self.volume + (f"({self.issue})" if self.issue else "")
        if self.pages:
            locator = f"{locator}:{self.pages}" if locator else self.pages
        if locator:
            source = f"{source};{locator}"
        if source:
            parts.append(source + ".")
        ids = [
            f"{label}{value}"
            for label, value in (
                ("doi:", self.doi),
                ("PMID ", self.pmid),
                (" ", self.pmcid),
                (" ", self.nct),
                (" ", self.url),
            )
            if value
        ]
        parts.extend(i.strip() + "." for i in ids)
        return " ".join(parts) if parts else self.short


def _as_reference(key: str, entry: object) -> Reference:
    if not isinstance(entry, Mapping):
        raise RtplanError(f"{_FILE}: [{key}] must be a table")
    unknown = set(entry) - {*_TEXT_FIELDS, "year", "aliases"}
    if unknown:
        raise RtplanError(f"{_FILE}: [{key}] has unknown fields {sorted(unknown)}")
    text: dict[str, str] = {}
    for name in _TEXT_FIELDS:
        value = entry.get(name, "")
        if not isinstance(value, str):
            raise RtplanError(f"{_FILE}: [{key}].{name} must be a string, got {value!r}")
        text[name] = value
    if not text["short"]:
        raise RtplanError(f"{_FILE}: [{key}] needs a `short` form")
    year = entry.get("year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
        raise RtplanError(f"{_FILE}: [{key}].year must be a whole number, got {year!r}")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise RtplanError(f"{_FILE}: [{key}].aliases must be a list of strings")
    return Reference(key=key, year=year, aliases=tuple(aliases), **text)


@cache
def _table() -> dict[str, Reference]:
    """Key (and alias) -> Reference, read once from the packaged TOML file."""
    text = resources.files("rtplan").joinpath(_FILE).read_text(encoding="utf-8")
    data = tomllib.loads(text)
    table: dict[str, Reference] = {}
    for key, entry in data.items():
        ref = _as_reference(key, entry)
        for name in (key, *ref.aliases):
            if name in table:
                raise RtplanError(f"{_FILE}: key {name!r} is defined twice")
            table[name] = ref
    return table


def reference_keys() -> list[str]:
    """Every key of ``references.toml`` (aliases not included), sorted.

    Examples
    --------
    >>> "lawton2009" in reference_keys()
    True
    """
    return sorted({ref.key for ref in _table().values()})


def reference(key: str) -> Reference:
    """The :class:`Reference` of ``key`` (or of one of its aliases).

    Raises
    ------
    RtplanError
        If ``key`` is not in ``references.toml`` (the message names it).

    Examples
    --------
    >>> reference("calais2026_ucla").key
    'nikitas2026_ucla'
    """
    try:
        return _table()[key]
    except KeyError:
        raise RtplanError(
            f"unknown reference key {key!r}: not in rtplan/{_FILE} "
            "(add the source there, with its full citation)"
        ) from None


def cite(key: str) -> str:
    """The full citation of ``key``: authors, title, journal, year, volume, pages, ids.

    Raises
    ------
    RtplanError
        If ``key`` is unknown.
    """
    return reference(key).citation


def short(key: str) -> str:
    """The in-line citation of ``key``, e.g. ``"Fendler et al., JAMA Oncol 2019"``.

    Raises
    ------
    RtplanError
        If ``key`` is unknown.
    """
    return reference(key).short


def keys_in(text: str) -> list[str]:
    """The ``@key`` citations in a source string, in order, without repeats."""
    seen: dict[str, None] = {}
    for match in _KEY_PATTERN.finditer(text):
        seen.setdefault(match.group(1), None)
    return list(seen)


def check_keys(texts: Iterable[str], *, where: str = "") -> list[str]:
    """Every ``@key`` cited in ``texts``; raise if one is not in ``references.toml``.

    Parameters
    ----------
    texts : iterable of str
        Source strings (e.g. every source of a protocol).
    where : str
        What the texts are, for the message (e.g. ``"protocol spport_pbrt"``).

    Raises
    ------
    RtplanError
        Naming the unknown key(s) and ``where``.
    """
    keys: dict[str, None] = {}
    for text in texts:
        for key in keys_in(text):
            keys.setdefault(key, None)
    unknown = [k for k in keys if k not in _table()]
    if unknown:
        place = f" in {where}" if where else ""
        raise RtplanError(
            f"unknown reference key(s){place}: {', '.join(unknown)} (not in rtplan/{_FILE})"
        )
    return list(keys)
