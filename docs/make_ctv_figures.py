"""Axial pictures of the prostate-bed and elective nodal CTVs at the standard levels.

Regenerates ``docs/ctv_bed_axial.png`` and ``docs/ctv_nodes_axial.png`` from the shipped
atlas with the default protocol (``nrg_salvage``): the RTOG 2010 bed CTV (Michalski et
al. 2010) and the NRG 2021 / RTOG 2009 nodal CTV (Hall et al. 2021; Lawton et al. 2009)
as rtplan builds them, over the CT with the organs that bound them. Levels are the ones
the consensus papers describe their borders at.

Run from the repository root::

    python docs/make_ctv_figures.py            # 2.5 x 1.5 x 1.5 mm atlas, about 30 s
    python docs/make_ctv_figures.py --spacing 3 2.5 2.5

Drawn with matplotlib's object API (no display needed).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rtplan.atlas import Atlas, load_atlas
from rtplan.protocol import load_protocol
from rtplan.structures import Structure
from rtplan.volumes import ctv_pelvic_nodes, ctv_prostate_bed, landmark_z_mm

DOCS = Path(__file__).resolve().parent

#: Organ outlines drawn on every panel (name -> colour).
ORGANS: dict[str, str] = {
    "Bladder": "#f2c14e",
    "Rectum": "#a0522d",
    "Canal_Anal": "#a0522d",
    "Colon_Sigmoid": "#c77dff",
    "Spc_Bowel": "#6c757d",
    "Levator_Ani": "#e76f51",
    "Obturator_Int_L": "#e76f51",
    "Obturator_Int_R": "#e76f51",
    "Iliopsoas_L": "#e76f51",
    "Iliopsoas_R": "#e76f51",
    "PubicSymphys": "#ffffff",
    "Sacrum": "#ffffff",
    "A_Iliac_L": "#d62828",
    "A_Iliac_R": "#d62828",
    "A_Iliac_Ext_L": "#d62828",
    "A_Iliac_Ext_R": "#d62828",
    "A_Iliac_Int_L": "#d62828",
    "A_Iliac_Int_R": "#d62828",
    "V_Iliac_L": "#277da1",
    "V_Iliac_R": "#277da1",
    "V_Iliac_Ext_L": "#277da1",
    "V_Iliac_Ext_R": "#277da1",
    "V_Iliac_Int_L": "#277da1",
    "V_Iliac_Int_R": "#277da1",
    "A_Aorta": "#d62828",
    "V_Venacava_I": "#277da1",
}
CTV_COLOUR = "#2ec4b6"


def _bed_levels(atlas: Atlas) -> list[tuple[str, float]]:
    """Bed levels (name, z mm): VUA, below and above the top of the symphysis, SV bed."""
    vua = landmark_z_mm(atlas, "VUA")
    ps = landmark_z_mm(atlas, "PubicSymphysis_Top")
    top = landmark_z_mm(atlas, "VasDeferens_CutEnd")
    return [
        ("8 mm below the VUA", vua - 8.0),
        ("VUA", vua),
        ("mid-symphysis", (vua + ps) / 2),
        ("just below the top of the symphysis", ps - 3.0),
        ("15 mm above the symphysis", ps + 15.0),
        ("seminal-vesicle bed (vas cut end - 5 mm)", top - 5.0),
    ]


def _node_levels(atlas: Atlas) -> list[tuple[str, float]]:
    """Nodal levels (name, z mm) from the superior border down to the symphysis."""
    lm = {
        k: landmark_z_mm(atlas, k)
        for k in (
            "L4L5_Interspace",
            "L5S1_Interspace",
            "SacralPromontory",
            "S3_Bottom",
            "FemurHead_Top_L",
            "PubicSymphysis_Top",
        )
    }
    return [
        ("L4/L5 (NRG 2021 superior border)", lm["L4L5_Interspace"] - 3.0),
        ("L5/S1 (RTOG 2009 superior border)", lm["L5S1_Interspace"] - 3.0),
        ("S1", lm["SacralPromontory"] - 12.0),
        ("S2-S3 (presacral)", (lm["SacralPromontory"] + lm["S3_Bottom"]) / 2 - 10.0),
        ("acetabular roof", lm["FemurHead_Top_L"] + 8.0),
        ("top of the femoral heads (external iliac ends)", lm["FemurHead_Top_L"] - 2.0),
        ("above the top of the symphysis (inferior border)", lm["PubicSymphysis_Top"] + 5.0),
    ]


def _outline(ax: Axes, mask2d: np.ndarray, x: np.ndarray, y: np.ndarray, **kw: object) -> None:
    if mask2d.any():
        ax.contour(x, y, mask2d.astype(float), levels=[0.5], **kw)


def _panel(
    ax: Axes,
    atlas: Atlas,
    ctv: Structure,
    z_mm: float,
    title: str,
    box: tuple[tuple[float, float], tuple[float, float]],
) -> None:
    grid = atlas.grid
    zs, ys, xs = grid.axis_coordinates_mm()
    k = int(np.argmin(np.abs(zs - z_mm)))
    (x0, x1), (y0, y1) = box
    ax.imshow(
        atlas.ct_hu[k],
        cmap="gray",
        vmin=-160,
        vmax=240,
        extent=(xs[0], xs[-1], ys[-1], ys[0]),
        interpolation="nearest",
    )
    for name, colour in ORGANS.items():
        if name in atlas.structures:
            _outline(ax, atlas.structures[name].mask[k], xs, ys, colors=colour, linewidths=0.7)
    part = ctv.mask[k]
    if part.any():
        ax.contourf(xs, ys, part.astype(float), levels=[0.5, 1.5], colors=CTV_COLOUR, alpha=0.35)
        _outline(ax, part, xs, ys, colors=CTV_COLOUR, linewidths=1.4)
    ax.set_xlim(x0, x1)  # radiological view: patient left (+x) on the image right
    ax.set_ylim(y1, y0)  # anterior up
    ax.set_title(f"{title}\nz = {zs[k]:.0f} mm", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _figure(
    atlas: Atlas,
    ctv: Structure,
    levels: Sequence[tuple[str, float]],
    box: tuple[tuple[float, float], tuple[float, float]],
    heading: str,
    path: Path,
) -> Path:
    ncol = 3 if len(levels) <= 6 else 4
    nrow = -(-len(levels) // ncol)
    fig = Figure(figsize=(3.3 * ncol, 3.4 * nrow + 0.8), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, (title, z) in zip(axes.ravel(), levels):
        _panel(ax, atlas, ctv, z, title, box)
    for ax in axes.ravel()[len(levels) :]:
        ax.set_axis_off()
    handles = [
        Line2D([], [], color=CTV_COLOUR, lw=3, label=f"{ctv.name} ({ctv.volume_cc:.0f} cc)"),
        Line2D([], [], color="#f2c14e", label="bladder"),
        Line2D([], [], color="#a0522d", label="rectum"),
        Line2D([], [], color="#c77dff", label="sigmoid"),
        Line2D([], [], color="#6c757d", label="peritoneal space (Spc_Bowel)"),
        Line2D([], [], color="#e76f51", label="muscles"),
        Line2D([], [], color="#d62828", label="arteries"),
        Line2D([], [], color="#277da1", label="veins"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(heading, fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Build the atlas and its CTVs and write both pictures; return their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", nargs=3, type=float, default=(2.5, 1.5, 1.5))
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    atlas = load_atlas("male_pelvis_postop", spacing_mm=tuple(args.spacing))
    protocol = load_protocol("nrg_salvage")
    bed = ctv_prostate_bed(atlas, protocol)
    nodes = ctv_pelvic_nodes(atlas, protocol)
    border = protocol.text("ctv.pelvic_nodes.superior_border")
    return [
        _figure(
            atlas,
            bed,
            _bed_levels(atlas),
            ((-70.0, 70.0), (-100.0, 40.0)),
            "Prostate-bed CTV, RTOG 2010 (Michalski et al.): levator ani / obturator internus "
            "laterally below the symphysis top",
            args.out / "ctv_bed_axial.png",
        ),
        _figure(
            atlas,
            nodes,
            _node_levels(atlas),
            ((-120.0, 120.0), (-110.0, 90.0)),
            f"Elective nodal CTV ({protocol.name}: superior border {border}); vessels + 7 mm, "
            "sidewall strip, presacral S1-S3, bowel loops cropped",
            args.out / "ctv_nodes_axial.png",
        ),
    ]


if __name__ == "__main__":
    for written in main():
        print(written)
