"""What differs between two protocols, value by value (``rtplan protocol diff A B``).

:func:`diff_protocols` compares two protocols (shipped names, TOML paths or loaded
:class:`~rtplan.protocol.Protocol` objects) by dotted key path
(``"prescription.prostate_bed.dose_gy"``) and by constraint (structure, metric, course,
fractions); :func:`format_diff` prints the result as an aligned text table.

Examples
--------
>>> rows = diff_protocols("gu003_coport", "gu003_hyport")
>>> [r for r in rows if r[0] == "prescription.prostate_bed.fractions"]
[('prescription.prostate_bed.fractions', 37, 25)]
>>> diff_protocols("nrg_salvage", "nrg_salvage")
[]
"""

from __future__ import annotations

from pathlib import Path

from rtplan.protocol import Protocol, ProtocolConstraint, load_protocol

__all__ = ["DiffRow", "diff_protocols", "format_diff"]

#: ``(key, value in A, value in B)``; a value is ``None`` where the protocol lacks the key.
DiffRow = tuple[str, object, object]

_MISSING = "(absent)"


def _constraint_key(c: ProtocolConstraint) -> str:
    fx = f", {c.fractions} fx" if c.fractions is not None else ""
    return f"constraints[{c.structure} {c.metric} ({c.unit}), {c.applies_to}{fx}]"


def _flatten(p: Protocol, *, sources: bool) -> dict[str, object]:
    """Dotted path -> value of every value and constraint (and source, if asked)."""
    out: dict[str, object] = {}
    for path, value, source in p.rows():
        out[path] = value
        if sources and source:
            out[f"{path} (source)"] = source
    for c in p.constraints:
        key = _constraint_key(c)
        n = 2
        while key in out:  # the same limit kind twice: number the repeats
            key = f"{_constraint_key(c)} #{n}"
            n += 1
        out[key] = c.text
        if sources:
            out[f"{key} (source)"] = c.source
    return out


def diff_protocols(
    a: str | Path | Protocol, b: str | Path | Protocol, *, sources: bool = False
) -> list[DiffRow]:
    """The values that differ between two protocols.

    Parameters
    ----------
    a, b : str or path or Protocol
        Shipped protocol names (``rtplan.protocol.list_protocols()``), TOML files or
        loaded protocols.
    sources : bool
        Also compare the source of every value (keys ending in ``" (source)"``).

    Returns
    -------
    list of (str, value, value)
        ``(key, value in a, value in b)`` for every key whose values differ, in the order
        of ``a`` then the keys only ``b`` has; ``None`` stands for a key the protocol does
        not have. Constraints are keyed ``"constraints[Rectum V65Gy (%), conventional]"`` with
        their limit as text (``"<= 35 %"``). An empty list when the protocols agree.

    Raises
    ------
    ProtocolError
        If either protocol cannot be loaded.
    """
    va = _flatten(load_protocol(a), sources=sources)
    vb = _flatten(load_protocol(b), sources=sources)
    rows: list[DiffRow] = []
    for key in [*va, *(k for k in vb if k not in va)]:
        x, y = va.get(key), vb.get(key)
        if x != y:
            rows.append((key, x, y))
    return rows


def _cell(value: object, width: int) -> str:
    text = _MISSING if value is None else str(value)
    if isinstance(value, tuple):
        text = ", ".join(map(str, value))
    return text if len(text) <= width else text[: width - 3] + "..."


def format_diff(
    rows: list[DiffRow], name_a: str = "A", name_b: str = "B", *, width: int = 40
) -> str:
    """The rows of :func:`diff_protocols` as an aligned text table for the terminal.

    Parameters
    ----------
    rows : list of (str, value, value)
        From :func:`diff_protocols`.
    name_a, name_b : str
        Column headings (the protocol names).
    width : int
        Longest value shown per column; longer text is cut with ``"..."``.

    Examples
    --------
    >>> print(format_diff([("prescription.prostate_bed.dose_gy", 66.6, 62.5)], "coport", "hyport"))
    key                                coport  hyport
    prescription.prostate_bed.dose_gy  66.6    62.5
    >>> format_diff([], "a", "b")
    'a and b do not differ'
    """
    if not rows:
        return f"{name_a} and {name_b} do not differ"
    table = [("key", name_a, name_b)]
    table += [(key, _cell(x, width), _cell(y, width)) for key, x, y in rows]
    w0 = max(len(r[0]) for r in table)
    w1 = max(len(r[1]) for r in table)
    return "\n".join(f"{k:<{w0}}  {x:<{w1}}  {y}".rstrip() for k, x, y in table)
