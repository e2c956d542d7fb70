"""Which intended level governs each dose voxel of an option's conventional targets.

One geometric rule, decided once on the dose grid, for two uses that must agree:

* the plan-sum ceiling of the dose estimate (:func:`rtplan.dose_estimate.estimate_option_dose`):
  where the conventional courses, each modelled on its own, would stack above
  ``plan_sum_ceiling`` times the EQD2 of the level governing a voxel, the later modulated
  course gives less there;
* the hot-spot check of the comparison (:func:`rtplan.compare.compare_options`): each part
  of a target is read against the level governing it, so that the estimate never fails its
  own ceiling's check and an imported plan is held to the same levels.

The rule (levels ranked by their intended EQD2 at the targets' alpha/beta):

* a *boost* of a PTV is a level intended higher than the PTV's hot-spot limit allows (107 %
  of its prescription in every course, :data:`HOT_SPOT_LIMIT_PCT`, read in EQD2) that is
  either a *SIB* nested in it or a *sequential boost* of it. A SIB is a level with a tenth
  of it at least inside a lower level, its *host*, whose courses give it all its dose (a
  node boost of the pelvic course in the pelvic nodes' PTV, a local SIB in the bed, even
  half out of it); it is a boost of a host it is nested in (half of its volume inside,
  :data:`NESTED_FRACTION`) and of no other PTV. A level
  without a host is a sequential boost of a PTV with a tenth of it inside
  (:data:`SEQUENTIAL_FRACTION`; a course of it does not treat that PTV: the bed's boost
  over the pelvic nodes' PTV, 17 % of the bed inside it on the shipped atlas). Volumes
  shared are counted on the PTVs' own grid;
* a PTV with a boost is a *container*: the boost's fall-off inside it (over tens of
  millimetres behind a sequential boost) belongs to the plan, so it is governed by the
  highest of its boosts, except within :data:`LEVEL_REACH_MM` of a PTV that is not a
  container, where the highest own level of those PTVs governs (no higher than the
  container's highest, no lower than its own): the bed's level around the bed, a node
  boost's around the node;
* any PTV is governed by its own level (a container: as above), except within
  :data:`LEVEL_REACH_MM` of a PTV intended higher that is not its boost, where the highest
  such level governs: the bed (62.8 Gy EQD2 at alpha/beta 1.5 Gy) beside a node boost of the
  same course that overlaps it in part (60 Gy in 25 fractions, 66.9 Gy EQD2, within the
  bed's 107 %, 69.8 Gy; or 62.5 Gy, 71.4 Gy EQD2, above it but not nested) is governed by the
  node's level around the node only;
* a voxel several PTVs touch takes the lowest of their governing levels, but never less
  than the highest own level among them, so that no PTV is held below its prescription.

For the check, a target's voxel is read against the highest level governing it or any of
its six face neighbours (outside every PTV counts as nothing): the DVH samples a voxel's
dose together with its neighbours' (:mod:`rtplan.dvh`), so a voxel next to a higher
governed one is read with it.

Every PTV's voxels are the dose voxels it touches at all (occupancy above zero), the same
voxels its DVH samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import bounding_box
from rtplan.dvh import (
    Float32Array,
    StructureOnDoseGrid,
    compute_dvh,
    occupancy_on_grid,
    restricted,
)
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.plan import TargetLevel
from rtplan.structures import Structure

__all__ = [
    "HOT_SPOT_LIMIT_PCT",
    "LEVEL_REACH_MM",
    "NESTED_FRACTION",
    "SEQUENTIAL_FRACTION",
    "LevelZones",
    "PartNearMax",
    "level_zones",
]

#: Hot-spot limit of conventional targets: the composite near-maximum (D0.03cc) at most
#: 107 % of the intended level governing each part of the target (ICRU 50: 95-107 % of the
#: prescribed dose, @icru50_1993 [V-3p]; target "never above 107 %",
#: @pmc8744000_constraints [V]). Also what makes a container (below).
HOT_SPOT_LIMIT_PCT = 107.0

#: How far (mm) a PTV's own level governs the dose voxels around it, beside a level intended
#: lower (tool default: two 2.5 mm dose voxels; a node boost's level reaches that far into the
#: bed beside it, the bed's that far into the nodal PTV around it).
LEVEL_REACH_MM = 5.0


#: Share of a SIB's volume inside its host that makes it nested there, a boost of it (tool
#: default).
NESTED_FRACTION = 0.5
#: Share of a level's volume inside a lower level that makes it a sequential boost of it, or
#: that level its host (a SIB's) when its courses give the level all its dose (tool default,
#: below the shipped atlas's 17 % of the bed PTV inside the pelvic nodes' PTV).
SEQUENTIAL_FRACTION = 0.1
_RankArray = npt.NDArray[np.int16]
_NONE = -1  # rank of "no level" (outside every PTV)
_CROSS = ndimage.generate_binary_structure(3, 1)  # a voxel and its six face neighbours


@dataclass(frozen=True, eq=False)
class PartNearMax:
    """Near-maximum of the part of a target governed by levels of one scheme.

    Attributes
    ----------
    levels : tuple of TargetLevel
        The governing levels (one scheme: the same parts, so the same intended dose).
    near_max_gy : float
        Near-maximum dose of the part (Gy, on the dose given).
    volume_cc : float
        Volume of the part (cc).
    """

    levels: tuple[TargetLevel, ...]
    near_max_gy: float
    volume_cc: float


@dataclass(frozen=True, eq=False)
class LevelZones:
    """Governing levels of an option's conventional targets on a dose grid.

    Build it with :func:`level_zones`.

    Attributes
    ----------
    levels : tuple of TargetLevel
        The conventional levels, ranked by intended EQD2 (rank = position, lowest first).
    eqd2_gy : ndarray of float64, shape (n_levels,)
        Intended EQD2 of each level (Gy, at ``alpha_beta_gy``).
    alpha_beta_gy : float
        alpha/beta of the ranking (Gy).
    reach_mm : float
        The reach used (mm).
    containers : frozenset of str
        Names of the levels that are containers.
    governing : ndarray of int16
        Rank of the level governing each dose voxel (-1 outside every PTV), dose-grid shape.
    footprints : tuple of BoolMask
        Dose voxels each level's PTV touches, in rank order.
    """

    levels: tuple[TargetLevel, ...]
    eqd2_gy: FloatArray
    alpha_beta_gy: float
    reach_mm: float
    containers: frozenset[str]
    governing: _RankArray
    footprints: tuple[BoolMask, ...]

    def rank(self, level: TargetLevel | str) -> int:
        """Rank of a level (by name)."""
        name = level if isinstance(level, str) else level.name
        for r, lv in enumerate(self.levels):
            if lv.name == name:
                return r
        raise InvalidInputError(f"no conventional level named {name!r}")

    def ceiling_eqd2_gy(self, factor: float) -> FloatArray:
        """``factor`` times the EQD2 of the governing level of each dose voxel (Gy).

        Outside every PTV: ``factor`` times the highest level (a boost's fall-off is free).
        """
        if not (math.isfinite(factor) and factor > 0):
            raise InvalidInputError(f"factor must be a positive number, got {factor!r}")
        caps = factor * self.eqd2_gy
        out = np.full(self.governing.shape, caps.max())
        inside = self.governing >= 0
        out[inside] = caps[self.governing[inside]]
        return out

    def check_zones(self, level: TargetLevel | str) -> list[tuple[TargetLevel, BoolMask]]:
        """The parts of a level's PTV read against each governing level, lowest first.

        A voxel's part is the highest governing level over the voxel and its six face
        neighbours; a level intended as high as the target's own (a tie) reads as its own.

        Parameters
        ----------
        level : TargetLevel or str
            One of :attr:`levels` (by name).

        Returns
        -------
        list of (TargetLevel, BoolMask)
            Each governing level present and the dose voxels read against it (dose-grid
            masks, disjoint, their union the PTV's footprint).
        """
        own = self.rank(level)
        fp = self.footprints[own]
        box = _padded_box(fp, 1)
        zone = ndimage.grey_dilation(self.governing[box], footprint=_CROSS, mode="nearest")
        zone = np.maximum(zone, own)  # never below the target's own level
        tie = self.eqd2_gy[zone] <= self.eqd2_gy[own] + 1e-9
        zone[tie] = own
        inside = fp[box]
        out = []
        for r in np.unique(zone[inside]).tolist():
            m = np.zeros(fp.shape, bool)
            m[box] = inside & (zone == r)
            out.append((self.levels[r], m))
        return out

    def near_maxima(
        self,
        level: TargetLevel | str,
        dose: FloatArray,
        whole: StructureOnDoseGrid,
        volume_cc: float = 0.03,
    ) -> tuple[list[PartNearMax], float]:
        """Near-maximum (D ``volume_cc``) of each part of a target, parts of one scheme together.

        The parts of :meth:`check_zones`; those governed by levels of one scheme (three node
        boosts of 60 Gy in 25 fractions) are read together. A part smaller than
        ``volume_cc`` has no near-maximum of its own (the metric leaves out the hottest
        ``volume_cc``) and is not read while some part is as large; when no part is (a
        small target, or one split into small parts) the target is read whole against the
        highest scheme governing it.

        Parameters
        ----------
        level : TargetLevel or str
            One of :attr:`levels` (by name).
        dose : ndarray
            Dose on the dose grid (Gy).
        whole : StructureOnDoseGrid
            The level's PTV on the dose grid (:func:`rtplan.dvh.structure_on_dose_grid`).
        volume_cc : float, optional
            Volume of the near-maximum (cc, > 0).

        Returns
        -------
        parts : list of PartNearMax
            The parts read, lowest level first.
        unread_cc : float
            Volume of the parts not read (cc).
        """
        if not (math.isfinite(volume_cc) and volume_cc > 0):
            raise InvalidInputError(f"volume_cc must be a positive number, got {volume_cc!r}")
        groups: dict[tuple[tuple[float, int], ...], tuple[list[TargetLevel], BoolMask]] = {}
        for governing, mask in self.check_zones(level):
            if governing.parts in groups:
                same, union = groups[governing.parts]
                same.append(governing)
                union |= mask
            else:
                groups[governing.parts] = ([governing], mask)
        pieces = [(tuple(same), restricted(whole, union)) for same, union in groups.values()]
        pieces = [(same, part) for same, part in pieces if part.flat_index.size]
        grid = whole.dose_grid

        def read(same: tuple[TargetLevel, ...], part: StructureOnDoseGrid) -> PartNearMax:
            near_max = compute_dvh(dose, grid, part).dose_at_volume_cc(volume_cc)
            return PartNearMax(same, near_max, part.total_volume_cc)

        large = [(same, part) for same, part in pieces if part.total_volume_cc >= volume_cc]
        if not large:
            top = pieces[-1][0] if pieces else (self.levels[self.rank(level)],)
            return [read(top, whole)], 0.0
        unread = sum(part.total_volume_cc for _, part in pieces if part.total_volume_cc < volume_cc)
        return [read(same, part) for same, part in large], unread


def level_zones(
    levels: Sequence[TargetLevel],
    dose_grid: ImageGrid,
    alpha_beta_gy: float,
    *,
    reach_mm: float = LEVEL_REACH_MM,
) -> LevelZones:
    """The level governing each dose voxel of the given conventional levels' PTVs.

    See the module docstring for the rule.

    Parameters
    ----------
    levels : sequence of TargetLevel
        Conventional (non-SBRT) levels of one option, names unique.
    dose_grid : ImageGrid
        The dose grid.
    alpha_beta_gy : float
        alpha/beta (Gy) at which the levels are ranked by intended EQD2.
    reach_mm : float, optional
        :data:`LEVEL_REACH_MM` by default; >= 0. At least the largest dose-grid spacing
        is used.

    Returns
    -------
    LevelZones

    Raises
    ------
    InvalidInputError
        No levels, an SBRT level, a repeated name, courses given for some levels only, or
        a bad alpha/beta or reach.

    Notes
    -----
    Levels built without the courses treating them (``TargetLevel.courses`` empty) are
    never sequential boosts: only nesting makes a container of them.
    """
    if not levels:
        raise InvalidInputError("level_zones needs at least one conventional level")
    if any(lv.is_sbrt for lv in levels):
        raise InvalidInputError("SBRT levels take no part in the plan-sum levels")
    if len({lv.name for lv in levels}) != len(levels):
        raise InvalidInputError("level names must be unique")
    if not (math.isfinite(alpha_beta_gy) and alpha_beta_gy > 0):
        raise InvalidInputError(f"alpha_beta_gy must be a positive number, got {alpha_beta_gy!r}")
    if not (math.isfinite(reach_mm) and reach_mm >= 0):
        raise InvalidInputError(f"reach_mm must be a number of mm >= 0, got {reach_mm!r}")
    if len({bool(lv.courses) for lv in levels}) > 1:
        raise InvalidInputError(
            "the courses treating each level are given for some levels only: give them for "
            "every level (rtplan.plan.target_levels does) or for none"
        )
    ranked = sorted(levels, key=lambda lv: (lv.eqd2_gy(alpha_beta_gy), lv.name))
    eqd2 = np.array([lv.eqd2_gy(alpha_beta_gy) for lv in ranked])
    occupancy = [occupancy_on_grid(lv.ptv, dose_grid) for lv in ranked]
    fps = tuple(occ > 0 for occ in occupancy)
    n = len(ranked)
    volume = [float(lv.ptv.volume_cc) for lv in ranked]  # > 0: occupancy refuses empty PTVs
    shared = np.zeros((n, n))  # volume two PTVs share, cc
    for a in range(n):
        for b in range(a + 1, n):
            shared[a, b] = shared[b, a] = _shared_cc(
                ranked[a].ptv, ranked[b].ptv, occupancy[a], occupancy[b], dose_grid
            )

    def higher(a: int, b: int) -> bool:
        return bool(eqd2[a] > eqd2[b] + 1e-9)

    limit = HOT_SPOT_LIMIT_PCT / 100.0

    def nested(q: int, p: int) -> bool:
        return q != p and shared[p, q] >= NESTED_FRACTION * volume[q]

    def share(q: int, p: int) -> bool:  # enough of q inside p for a sequential boost
        return q != p and shared[p, q] >= SEQUENTIAL_FRACTION * volume[q]

    def given_with(q: int, r: int) -> bool:  # every course treating q treats r too
        return set(ranked[q].courses) <= set(ranked[r].courses)

    # the hosts of a SIB: lower levels it lies in (a tenth of it at least) whose courses
    # give it all its dose (a local-boost SIB in the bed, a node boost in the pelvic PTV).
    # A SIB is a local feature of its hosts' plan: it is a boost of a host it is nested in,
    # of no other PTV (it lies within its host's fall-off); a level without hosts is a boost
    # of a PTV it lies in by a tenth (necessarily a sequential boost of it)
    hosts = [
        [r for r in range(n) if higher(q, r) and share(q, r) and given_with(q, r)] for q in range(n)
    ]

    def boost(q: int, p: int) -> bool:
        if q == p or ranked[p].scale_giving_eqd2(eqd2[q], alpha_beta_gy) <= limit:
            return False
        if hosts[q]:
            return p in hosts[q] and nested(q, p)
        # no host: q's courses do not all treat any lower level it lies in, so a PTV it
        # lies in by a tenth is one a course of q does not treat: a sequential boost
        return share(q, p)

    boosts = [[q for q in range(n) if boost(q, p)] for p in range(n)]
    container = [bool(b) for b in boosts]
    highest = [max([p, *boosts[p]], key=lambda r: eqd2[r]) for p in range(n)]
    # where each PTV's own level reaches: needed for the non-containers (into everything
    # around them) and for PTVs intended above a PTV they are no boost of
    needed = [
        not container[q] or any(higher(q, p) and q not in boosts[p] for p in range(n))
        for q in range(n)
    ]
    # at least one dose voxel, so that a voxel's face neighbours are within reach
    effective_mm = max(reach_mm, max(dose_grid.spacing_mm))
    near = [_within(fps[q], dose_grid, effective_mm) if needed[q] else None for q in range(n)]
    reach = np.full(dose_grid.shape, _NONE, np.int16)  # highest non-container within reach
    for q in range(n):
        nq = near[q]
        if not container[q] and nq is not None:
            reach[nq] = np.maximum(reach[nq], q)

    lowest = np.full(dose_grid.shape, n, np.int16)  # lowest governing level of the holders
    floor = np.full(dose_grid.shape, _NONE, np.int16)  # highest own level of the holders
    for p in range(n):
        fp = fps[p]
        if container[p]:
            r = reach[fp]
            g = np.where(r >= 0, np.maximum(p, np.minimum(highest[p], r)), highest[p])
        else:
            g = np.full(int(np.count_nonzero(fp)), p, np.int16)
        for q in range(n):  # a higher PTV p's boosts do not include: within reach only
            nq = near[q]
            if higher(q, p) and q not in boosts[p] and nq is not None:
                g = np.where(nq[fp], np.maximum(g, q), g)
        lowest[fp] = np.minimum(lowest[fp], g)
        floor[fp] = np.maximum(floor[fp], p)
    # a container near a lower non-container is governed by that one's level: where it holds
    # a voxel with a PTV intended higher, the floor keeps that PTV at its own level
    governing = np.where(floor >= 0, np.maximum(lowest, floor), _NONE).astype(np.int16)
    return LevelZones(
        levels=tuple(ranked),
        eqd2_gy=eqd2,
        alpha_beta_gy=float(alpha_beta_gy),
        reach_mm=float(effective_mm),
        containers=frozenset(ranked[p].name for p in range(n) if container[p]),
        governing=governing,
        footprints=fps,
    )


def _shared_cc(
    a: Structure,
    b: Structure,
    occ_a: Float32Array,
    occ_b: Float32Array,
    dose_grid: ImageGrid,
) -> float:
    """Volume (cc) two PTVs share.

    Exact on their own grid when they share one (the usual case: both drawn on the CT);
    otherwise the least their dose-grid occupancies allow, ``max(0, occ_a + occ_b - 1)``
    per voxel, so that PTVs that only abut share nothing whatever the dose grid's offset.
    """
    if a.grid.equals(b.grid):
        return float(a.shared_voxel_count(b)) * a.grid.voxel_volume_cc
    both = (occ_a > 0) & (occ_b > 0)
    least = np.clip(occ_a[both].astype(np.float64) + occ_b[both] - 1.0, 0.0, None)
    return float(least.sum()) * dose_grid.voxel_volume_cc


def _padded_box(mask: BoolMask, pad: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``pad`` voxels, clipped to the array."""
    box = bounding_box(mask)
    if box is None:
        return tuple(slice(0, 0) for _ in mask.shape)
    return tuple(
        slice(max(s.start - pad, 0), min(s.stop + pad, size)) for s, size in zip(box, mask.shape)
    )


def _within(mask: BoolMask, grid: ImageGrid, reach_mm: float) -> BoolMask:
    """Voxels whose centre lies within ``reach_mm`` of a voxel centre of ``mask``.

    Distances are exact within the box of ``mask`` grown by the reach (anything beyond is
    further away), so the transform runs on that box only.
    """
    out = np.zeros(mask.shape, bool)
    pad = math.ceil(reach_mm / min(grid.spacing_mm)) + 1
    box = _padded_box(mask, pad)
    sub = mask[box]
    if not sub.any():
        return out
    dist = ndimage.distance_transform_edt(~sub, sampling=grid.spacing_mm)
    out[box] = dist <= reach_mm + 1e-6
    return out
