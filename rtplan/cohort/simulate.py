"""Virtual cohorts: manifests of atlas variants with PSMA lesions placed like a published series.

:func:`simulate_cohort` writes a manifest whose patients are seeded variants of the
shipped atlas with lesions placed by region and size
(:mod:`rtplan.cohort.lesion_spec`), so that the stage mix reproduces a published
cohort. ``like="ucla2026"`` is the UCLA 5-year PSMA-PET-guided salvage RT series
(Nikitas et al., JNCCN 2026; CLINICAL.md section 10a): 113 patients, T0N0M0 46, TrN0M0
19, N1M0 32, M1 16. For ``n`` other than 113 the group sizes are the published
proportions rounded by largest remainder, so the mix is as close as ``n`` allows.

Everything else is drawn from distributions that are either sourced or marked **tool
default** (a choice of rtplan, to be replaced when data are at hand):

* pelvic node sites (N1M0 and the pelvic nodes of M1): Trapp et al., J Nucl Med
  2023;64:918 (335 PSMA-positive nodes, 105 post-RP patients; CLINICAL.md section 2d):
  internal iliac 28.1 %, external iliac 17.9 %, perirectal 7.8 %, presacral 5.7 % [V];
  obturator 6.8 % is a **tool default** (the share Trapp's list leaves unattributed);
* extrapelvic node sites (M1a): the same series, periaortic 17.3 % and common iliac
  16.4 % [V], plus inguinal at 3 % (**tool default**);
* number of pelvic nodes per node-positive patient 1 / 2 / 3 with probability
  0.5 / 0.3 / 0.2; a local recurrence besides the nodes in 20 % of N1M0 patients; the
  M1 pattern bone only / extrapelvic nodes only / both 50 / 30 / 20 %, pelvic nodes as
  well in 50 % of M1 patients; 1 / 2 / 3 bone lesions with probability 0.6 / 0.3 / 0.1
  in ilium 30 %, sacrum 20 %, L4-L5 20 %, pubis 10 %, ischium 10 %, femoral head 10 %;
  local recurrences at the anastomosis 70 % and the bladder neck 30 % (all **tool
  defaults**);
* lesion diameters uniform in whole mm: nodes 6-12 mm, local recurrences 8-16 mm, bone
  lesions 10-20 mm (**tool default**);
* side of sided sites left or right with equal probability (**tool default**);
* PSA at PET log-normal with the series' median 0.4 ng/mL (Nikitas et al. [V]) and a
  log standard deviation of 0.8 (**tool default**); tracer ``68Ga-PSMA-11`` (**tool
  default**);
* anatomy: ``atlas:male_pelvis_postop`` with a seeded random variant, scale normal
  (mean 1, SD 0.04, clipped to 0.9-1.12), bladder filling log-normal (SD 0.3, clipped
  to 0.5-2.0), rectal filling log-normal (SD 0.2, clipped to 0.6-1.6) (**tool
  defaults**).

The group each patient was drawn for is stored in the ``x_simulated_group`` column, so
the report can check that staging gives it back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtplan.cohort.lesion_spec import NODE_SITES, LesionItem, format_lesion_items
from rtplan.cohort.manifest import (
    DEFAULT_PROTOCOL,
    LIKE_COHORTS,
    Manifest,
    manifest_from_records,
    write_manifest,
)
from rtplan.errors import InvalidInputError

__all__ = [
    "PUBLISHED_STAGES",
    "UCLA2026_SOURCE",
    "UCLA2026_STAGES",
    "simulate_cohort",
    "stage_counts",
]

#: Stage groups of the UCLA series (Nikitas et al., JNCCN 2026; CLINICAL.md 10a).
UCLA2026_STAGES: dict[str, int] = {"T0N0M0": 46, "TrN0M0": 19, "N1M0": 32, "M1": 16}
#: Citation of the UCLA series.
UCLA2026_SOURCE = (
    "Nikitas J, ..., Calais J. PSMA PET-guided salvage radiotherapy, 5-year outcomes "
    "(113 patients). JNCCN, Feb 2026"
)
#: Published stage counts and their source, by ``like`` name.
PUBLISHED_STAGES: dict[str, tuple[dict[str, int], str]] = {
    "ucla2026": (UCLA2026_STAGES, UCLA2026_SOURCE)
}

_ATLAS = "male_pelvis_postop"
# Trapp et al., J Nucl Med 2023;64:918 [V], obturator share a tool default (see above)
_PELVIC_NODE_SITES: dict[str, float] = {
    "internal_iliac": 28.1,
    "external_iliac": 17.9,
    "perirectal": 7.8,
    "obturator": 6.8,
    "presacral": 5.7,
}
_EXTRAPELVIC_NODE_SITES: dict[str, float] = {
    "paraaortic": 17.3,
    "common_iliac": 16.4,
    "inguinal": 3.0,
}
_N_NODES = {1: 0.5, 2: 0.3, 3: 0.2}
_N_BONES = {1: 0.6, 2: 0.3, 3: 0.1}
_BONE_SITES: dict[tuple[str, ...], float] = {
    ("Bone_Ilium_L", "Bone_Ilium_R"): 30.0,
    ("VB_S1", "VB_S2"): 20.0,
    ("VB_L4", "VB_L5"): 20.0,
    ("PubicSymphys",): 10.0,
    ("Bone_Ischium_L", "Bone_Ischium_R"): 10.0,
    ("Femur_Head_L", "Femur_Head_R"): 10.0,
}
_M1_PATTERN = {"bone": 0.5, "nodes": 0.3, "both": 0.2}
_LOCAL_SITES = {"VUA": 0.7, "bladder_neck": 0.3}
_P_LOCAL_WITH_NODES = 0.2
_P_PELVIC_WITH_M1 = 0.5
_DIAMETER_MM = {"node": (6, 12), "local": (8, 16), "bone": (10, 20)}
_PSA_MEDIAN_NG_ML = 0.4  # Nikitas et al., JNCCN 2026 [V]
_PSA_LOG_SD = 0.8
_TRACER = "68Ga-PSMA-11"


def stage_counts(published: dict[str, int], n: int) -> dict[str, int]:
    """Group sizes for ``n`` patients in the published proportions (largest remainder).

    Parameters
    ----------
    published : dict of str to int
        Published counts per group.
    n : int
        Cohort size.

    Returns
    -------
    dict of str to int
        Counts summing to ``n``.

    Examples
    --------
    >>> stage_counts(UCLA2026_STAGES, 113)
    {'T0N0M0': 46, 'TrN0M0': 19, 'N1M0': 32, 'M1': 16}
    >>> stage_counts(UCLA2026_STAGES, 10)
    {'T0N0M0': 4, 'TrN0M0': 2, 'N1M0': 3, 'M1': 1}
    """
    total = sum(published.values())
    exact = {k: n * v / total for k, v in published.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    left = n - sum(counts.values())
    by_remainder = sorted(
        published, key=lambda k: (-(exact[k] - counts[k]), list(published).index(k))
    )
    for k in by_remainder[:left]:
        counts[k] += 1
    return counts


@dataclass
class _Draw:
    """Random draws for one virtual patient."""

    rng: np.random.Generator

    def choice(self, weights: dict[str, float]) -> str:
        keys = list(weights)
        p = np.asarray([weights[k] for k in keys], float)
        return keys[int(self.rng.choice(len(keys), p=p / p.sum()))]

    def count(self, weights: dict[int, float]) -> int:
        keys = list(weights)
        p = np.asarray([weights[k] for k in keys], float)
        return keys[int(self.rng.choice(len(keys), p=p / p.sum()))]

    def diameter(self, kind: str) -> float:
        lo, hi = _DIAMETER_MM[kind]
        return float(self.rng.integers(lo, hi + 1))

    def side(self) -> str:
        return "L" if self.rng.random() < 0.5 else "R"

    def nodes(self, sites: dict[str, float], k: int, taken: set[str]) -> list[LesionItem]:
        out = []
        for _ in range(k):
            for _attempt in range(20):
                stem = self.choice(sites)
                site = stem if stem in NODE_SITES else f"{stem}_{self.side()}"
                if site not in taken:
                    break
            else:
                continue
            taken.add(site)
            out.append(LesionItem("node", site, self.diameter("node")))
        return out

    def bones(self, k: int) -> list[LesionItem]:
        out: list[LesionItem] = []
        used: set[str] = set()
        keys = list(_BONE_SITES)
        p = np.asarray([_BONE_SITES[g] for g in keys], float)
        for _ in range(k):
            for _attempt in range(20):
                group = keys[int(self.rng.choice(len(keys), p=p / p.sum()))]
                bone = group[int(self.rng.integers(len(group)))]
                if bone not in used:
                    break
            else:
                continue
            used.add(bone)
            out.append(LesionItem("bone", bone, self.diameter("bone")))
        return out

    def local(self) -> LesionItem:
        return LesionItem("local", self.choice(_LOCAL_SITES), self.diameter("local"))


def _lesions_for(group: str, d: _Draw) -> list[LesionItem]:
    """The lesions of a patient drawn for a UCLA stage group."""
    if group == "T0N0M0":
        return []
    if group == "TrN0M0":
        return [d.local()]
    taken: set[str] = set()
    if group == "N1M0":
        items = d.nodes(_PELVIC_NODE_SITES, d.count(_N_NODES), taken)
        if d.rng.random() < _P_LOCAL_WITH_NODES:
            items.insert(0, d.local())
        return items
    # M1
    pattern = d.choice(_M1_PATTERN)
    items = []
    if d.rng.random() < _P_PELVIC_WITH_M1:
        items += d.nodes(_PELVIC_NODE_SITES, d.count({1: 0.6, 2: 0.4}), taken)
    if pattern in ("nodes", "both"):
        items += d.nodes(_EXTRAPELVIC_NODE_SITES, d.count({1: 0.7, 2: 0.3}), taken)
    if pattern in ("bone", "both"):
        items += d.bones(d.count(_N_BONES))
    return items


def _anatomy(d: _Draw) -> dict[str, str]:
    scale = float(np.clip(d.rng.normal(1.0, 0.04), 0.9, 1.12))
    bladder = float(np.clip(d.rng.lognormal(0.0, 0.3), 0.5, 2.0))
    rectal = float(np.clip(d.rng.lognormal(0.0, 0.2), 0.6, 1.6))
    return {
        "anatomy": f"atlas:{_ATLAS}",
        "scale": f"{scale:.3f}",
        "bladder_filling": f"{bladder:.3f}",
        "rectal_filling": f"{rectal:.3f}",
        "seed": str(int(d.rng.integers(0, 2**31 - 1))),
    }


def simulate_cohort(
    like: str = "ucla2026",
    n: int = 113,
    seed: int = 0,
    *,
    protocol: str | Sequence[str] = DEFAULT_PROTOCOL,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Manifest:
    """A virtual cohort staged like a published series (see the module notes).

    Parameters
    ----------
    like : {"ucla2026"}
        The published cohort whose stage mix is reproduced.
    n : int
        Number of patients (113 gives the published counts exactly).
    seed : int
        Seed of every random draw; the same ``(like, n, seed)`` gives the same manifest.
    protocol : str or sequence of str
        Protocol(s) of every patient (shipped names or files).
    out : path, optional
        Write the manifest there (``.csv`` or ``.toml``).
    force : bool
        Replace an existing ``out``.

    Returns
    -------
    Manifest
        Patients ``V001``... with metadata ``like``, ``seed``, ``n``, ``description``.

    Raises
    ------
    InvalidInputError
        On an unknown ``like``, ``n`` < 1 or a negative seed.

    Examples
    --------
    >>> m = simulate_cohort(n=6, seed=1)
    >>> len(m), m.like
    (6, 'ucla2026')
    >>> sorted(dict(r.extra)["x_simulated_group"] for r in m.rows)
    ['M1', 'N1M0', 'N1M0', 'T0N0M0', 'T0N0M0', 'TrN0M0']
    """
    if like not in PUBLISHED_STAGES:
        raise InvalidInputError(f"like must be one of {', '.join(LIKE_COHORTS)}, got {like!r}")
    if int(n) != n or n < 1:
        raise InvalidInputError(f"n must be a positive whole number, got {n!r}")
    if int(seed) != seed or seed < 0:
        raise InvalidInputError(f"seed must be a whole number >= 0, got {seed!r}")
    published, _ = PUBLISHED_STAGES[like]
    counts = stage_counts(published, int(n))
    d = _Draw(np.random.default_rng(int(seed)))
    groups = [g for g, c in counts.items() for _ in range(c)]
    groups = [groups[i] for i in d.rng.permutation(len(groups))]
    protocols = [protocol] if isinstance(protocol, str) else list(protocol)
    width = max(3, len(str(n)))
    records = []
    for i, group in enumerate(groups, start=1):
        rec = {"patient_id": f"V{i:0{width}d}", **_anatomy(d)}
        rec["lesions"] = format_lesion_items(_lesions_for(group, d))
        rec["protocol"] = ";".join(protocols)
        psa = _PSA_MEDIAN_NG_ML * math.exp(_PSA_LOG_SD * float(d.rng.standard_normal()))
        rec["psa_ng_ml"] = f"{max(psa, 0.05):.2f}"
        rec["tracer"] = _TRACER
        rec["x_simulated_group"] = group
        records.append(rec)
    metadata = {
        "like": like,
        "seed": str(int(seed)),
        "n": str(int(n)),
        "description": f"virtual cohort simulated like {like} by rtplan (tool defaults, "
        "see docs/cohort.md)",
    }
    manifest = manifest_from_records(records, metadata=metadata, source=f"simulated {like}")
    if out is not None:
        path = write_manifest(manifest, out, force=force)
        manifest = Manifest(manifest.rows, manifest.metadata, Path(path))
    return manifest
