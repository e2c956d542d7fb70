"""The fixed, versioned list of reference plans and how each plan's option is built.

Each :class:`PlanSpec` names an anatomy (:func:`rtplan.load_atlas` keyword arguments),
the demo case whose lesions it carries (:func:`rtplan.demo.demo_cases`, lesions placed
from the atlas's own geometry) and the option of that case
(:func:`rtplan.volumes.suggest_options`). :func:`build_plan_option` builds the option
exactly as :func:`rtplan.compare.compare_options` doses it: built with
:func:`rtplan.volumes.build_options` and resolved with :func:`rtplan.plan.resolve_overlaps`
at the protocol's prostate alpha/beta, sparing the protocol's ``boost_spare_organs``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtplan.atlas import Atlas, load_atlas
from rtplan.compare import boost_spared_organs
from rtplan.demo import DEMO_ATLAS, case_lesions, demo_cases
from rtplan.dose_estimate import ALPHA_BETA_GY
from rtplan.lesions import Lesions
from rtplan.plan import FieldOption, resolve_overlaps
from rtplan.protocol import load_protocol
from rtplan.staging import stage
from rtplan.volumes import build_options, suggest_options

__all__ = [
    "ANATOMIES",
    "PLANS",
    "PLAN_LIST_VERSION",
    "PROTOCOL",
    "Anatomy",
    "PlanSpec",
    "build_plan_option",
    "load_plan_atlas",
    "plan_by_id",
]

#: Version of :data:`PLANS`: bumped whenever a plan's definition changes (a stored plan
#: records the version it was made with).
PLAN_LIST_VERSION = 1
#: The protocol every reference plan uses.
PROTOCOL = "nrg_salvage"


@dataclass(frozen=True)
class Anatomy:
    """The :func:`rtplan.load_atlas` arguments of one anatomy (defaults: the atlas itself)."""

    scale: float = 1.0
    bladder_filling: float = 1.0
    rectal_filling: float = 1.0
    seed: int | None = None

    def kwargs(self) -> dict[str, float | int]:
        """The arguments that differ from the atlas's, for the plan record."""
        out: dict[str, float | int] = {}
        for name, value, default in (
            ("scale", self.scale, 1.0),
            ("bladder_filling", self.bladder_filling, 1.0),
            ("rectal_filling", self.rectal_filling, 1.0),
        ):
            if value != default:
                out[name] = value
        if self.seed is not None:
            out["seed"] = self.seed
        return out


#: The anatomies, by case label.
ANATOMIES: dict[str, Anatomy] = {
    "atlas": Anatomy(),
    "scale0.85": Anatomy(scale=0.85),
    "scale1.15": Anatomy(scale=1.15),
    "bladder0.5": Anatomy(bladder_filling=0.5),
    "bladder2.0": Anatomy(bladder_filling=2.0),
    "rectal1.8": Anatomy(rectal_filling=1.8),
    "seed3": Anatomy(seed=3),
    "seed5": Anatomy(seed=5),
    "seed7": Anatomy(seed=7),
}


@dataclass(frozen=True)
class PlanSpec:
    """One reference plan: an anatomy, a demo case's lesions and one of its options.

    Parameters
    ----------
    plan_id : str
        Unique id, also the dose file name (``<plan_id>.npz``).
    case : str
        Anatomy label (a key of the anatomy table, e.g. ``"scale0.85"``).
    lesion_case : str
        The demo case whose lesions are placed (``"T0N0M0"``, ``"TrN0M0"``, ``"N1M0"``).
    option : str
        The option of that case to plan (a :func:`rtplan.volumes.suggest_options` name).
    anatomy : Anatomy
        The :func:`rtplan.load_atlas` arguments of the anatomy.
    weight_changes : tuple of (str, float)
        Fields of :class:`calibration.objectives.ObjectiveWeights` this plan sets otherwise
        (empty: the common objective set).
    """

    plan_id: str
    case: str
    lesion_case: str
    option: str
    anatomy: Anatomy = Anatomy()
    weight_changes: tuple[tuple[str, float], ...] = ()

    @property
    def atlas_kwargs(self) -> dict[str, float | int]:
        """The :func:`rtplan.load_atlas` arguments that differ from the atlas's."""
        return self.anatomy.kwargs()


def _plan(
    prefix: str,
    case: str,
    lesion_case: str,
    option: str,
    weight_changes: tuple[tuple[str, float], ...] = (),
) -> PlanSpec:
    return PlanSpec(
        plan_id=f"{prefix}__{case}",
        case=case,
        lesion_case=lesion_case,
        option=option,
        anatomy=ANATOMIES[case],
        weight_changes=weight_changes,
    )


#: The reference plans in order of priority: prostate-bed RT on the atlas and six
#: variants spanning size (scale 0.85, 1.15), bladder filling (0.5, 2.0), rectal filling
#: (1.8) and a random variant (seed 3); prostate bed + pelvis (with its sequential bed
#: boost) on the atlas and three of those variants; one node-boost option (N1M0, SIB to
#: the two nodes) and one local-boost option (TrN0M0, SIB to the recurrence) on the atlas;
#: then prostate bed + pelvis on two more variants whose prostate-bed plan is held out
#: (seed 3, bladder 2.0), so that held-out pairs of options can be ranked; then the
#: node-boost option again with the PTV overdose priority doubled (1000 -> 2000), because
#: ``nboost__atlas`` missed the D2 <= 110 % rule by 0.03 points at the 98 % floor; then the
#: two boost options on bladder filling 0.5 and rectal filling 1.8; then, with the PTV
#: overdose priority doubled as the node-boost plans have it, prostate bed + pelvis on
#: bladder filling 0.5 and the local boost on the atlas, the node boosts' partners; then
#: the local boost on the three anatomies whose PBRT and PBRT+WPRT plans are held out; then
#: PBRT, PBRT+WPRT and the local boost on two new random anatomies (seeds 5, 7), a test set.
PLANS: tuple[PlanSpec, ...] = (
    *(
        _plan("pbrt", case, "T0N0M0", "PBRT")
        for case in (
            "atlas",
            "scale0.85",
            "scale1.15",
            "bladder0.5",
            "bladder2.0",
            "rectal1.8",
            "seed3",
        )
    ),
    *(
        _plan("wprt", case, "T0N0M0", "PBRT+WPRT")
        for case in ("atlas", "scale0.85", "bladder0.5", "rectal1.8")
    ),
    _plan("nboost", "atlas", "N1M0", "PBRT+WPRT+Nboost+ADT"),
    _plan("lrboost", "atlas", "TrN0M0", "PBRT+LRboost"),
    *(_plan("wprt", case, "T0N0M0", "PBRT+WPRT") for case in ("seed3", "bladder2.0")),
    _plan(
        "nboost_homog",
        "atlas",
        "N1M0",
        "PBRT+WPRT+Nboost+ADT",
        weight_changes=(("ptv_max_priority", 2000.0),),
    ),
    # the boost options on two training anatomies (added 2026-12-05, third list), planned to
    # fit the boosts' small levels on; that fit was worse on the held-out plans and was not
    # kept (docs/dose_model.md 4.7), so they are held out
    _plan(
        "nboost_homog",
        "bladder0.5",
        "N1M0",
        "PBRT+WPRT+Nboost+ADT",
        weight_changes=(("ptv_max_priority", 2000.0),),
    ),
    _plan("lrboost", "rectal1.8", "TrN0M0", "PBRT+LRboost"),
    # the partners of two held-out node-boost plans under their objective set (added
    # 2026-12-05, ninth session): options are ranked only against options planned with the
    # same objectives (calibration/fit_model.py, ranking_agreement), and the node boost was
    # planned with the PTV overdose priority doubled; held out
    _plan(
        "wprt_homog",
        "bladder0.5",
        "T0N0M0",
        "PBRT+WPRT",
        weight_changes=(("ptv_max_priority", 2000.0),),
    ),
    _plan(
        "lrboost_homog",
        "atlas",
        "TrN0M0",
        "PBRT+LRboost",
        weight_changes=(("ptv_max_priority", 2000.0),),
    ),
    # the local boost on the three anatomies whose prostate-bed and whole-pelvis plans are
    # both held out (added 2026-12-05, ninth session, with the two above): more held-out
    # pairs of options to rank
    *(
        _plan("lrboost", case, "TrN0M0", "PBRT+LRboost")
        for case in ("scale0.85", "bladder2.0", "seed3")
    ),
    # two new random anatomies (added 2026-12-05, tenth session), listed before any of them
    # was planned or any model was scored on them: a test set untouched by every choice of
    # model made so far, the same three options and pairs as on seed 3
    *(
        _plan(name, case, lesions, option)
        for case in ("seed5", "seed7")
        for name, lesions, option in (
            ("pbrt", "T0N0M0", "PBRT"),
            ("wprt", "T0N0M0", "PBRT+WPRT"),
            ("lrboost", "TrN0M0", "PBRT+LRboost"),
        )
    ),
)


def plan_by_id(plan_id: str) -> PlanSpec:
    """The plan of :data:`PLANS` with this id.

    Raises
    ------
    KeyError
        When no plan has that id; the message lists the ids.
    """
    for spec in PLANS:
        if spec.plan_id == plan_id:
            return spec
    raise KeyError(f"no plan {plan_id!r}; plans are {', '.join(s.plan_id for s in PLANS)}")


def load_plan_atlas(spec: PlanSpec) -> Atlas:
    """The plan's anatomy: the demo atlas built with the plan's keyword arguments."""
    a = spec.anatomy
    return load_atlas(
        DEMO_ATLAS,
        scale=a.scale,
        bladder_filling=a.bladder_filling,
        rectal_filling=a.rectal_filling,
        seed=a.seed,
    )


def _lesions(spec: PlanSpec, atlas: Atlas) -> Lesions:
    for case in demo_cases(atlas):
        if case.name == spec.lesion_case:
            return case_lesions(case, atlas)
    raise KeyError(f"plan {spec.plan_id}: no demo case {spec.lesion_case!r}")


def build_plan_option(spec: PlanSpec, atlas: Atlas) -> FieldOption:
    """The plan's option, built and resolved as :func:`rtplan.compare_options` doses it.

    Parameters
    ----------
    spec : PlanSpec
        The plan.
    atlas : Atlas
        Its anatomy (:func:`load_plan_atlas`).

    Returns
    -------
    FieldOption
        With later phases' PTVs cropped by earlier higher targets
        (:func:`rtplan.plan.resolve_overlaps`).

    Raises
    ------
    KeyError
        When the case does not suggest the plan's option on this anatomy (the message
        lists the options it does suggest).
    """
    proto = load_protocol(PROTOCOL)
    lesions = _lesions(spec, atlas)
    staged = stage(lesions, atlas, protocol=proto)
    specs = suggest_options(staged, proto)
    chosen = [s for s in specs if s.name == spec.option]
    if not chosen:
        names = ", ".join(s.name for s in specs)
        raise KeyError(f"plan {spec.plan_id}: case suggests {names}, not {spec.option!r}")
    option = build_options(chosen, atlas, lesions, proto)[0]
    alpha_beta_gy = proto.alpha_beta_gy.get("prostate", ALPHA_BETA_GY["prostate"])
    spare = boost_spared_organs(atlas, proto, strict=True)
    return resolve_overlaps(option, alpha_beta_gy=alpha_beta_gy, spare=spare)
