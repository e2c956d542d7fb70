"""Pictures of a CT with structure outlines: axial, coronal and sagittal slices (PNG).

Drawn with matplotlib's object API (no pyplot, no display, no change to the global
matplotlib backend). Display conventions are the radiological ones: axial and coronal
views show the patient's left on the image right, anterior is up in the axial view,
superior is up in the coronal and sagittal views, and anterior is on the left of the
sagittal view. Axes are in LPS mm,
with the true aspect ratio of the voxels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rtplan._io import atomic_path
from rtplan.errors import GeometryError, MissingStructureError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

__all__ = ["VIEWS", "plot_ct_views", "save_atlas_views"]

View = Literal["axial", "coronal", "sagittal"]
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

#: Soft-tissue window (level, width) in HU; tool default.
_WINDOW_HU = (40.0, 400.0)


def _standardise(ct: np.ndarray, grid: ImageGrid) -> tuple[np.ndarray, ImageGrid, bool]:
    """Flip to the identity direction for display (returns whether a flip happened)."""
    signs = grid.axis_signs
    if all(s > 0 for s in signs):
        return ct, grid, False
    axes = tuple(n for n, s in enumerate(signs) if s < 0)
    last = [(n - 1) if s < 0 else 0 for n, s in zip(grid.shape, signs)]
    g = ImageGrid(
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=tuple(float(v) for v in grid.index_to_lps(last)),  # type: ignore[arg-type]
    )
    return np.flip(ct, axis=axes), g, True


def _slice_arrays(
    volume: np.ndarray, grid: ImageGrid, view: str, index: int
) -> tuple[np.ndarray, list[float], np.ndarray, np.ndarray]:
    """2-D slice, imshow extent (mm) and the coordinates of its columns and rows."""
    z, y, x = grid.axis_coordinates_mm()
    sz, sy, sx = grid.spacing_mm
    if view == "axial":
        img = volume[index]
        cols, rows = x, y
        extent = [x[0] - sx / 2, x[-1] + sx / 2, y[-1] + sy / 2, y[0] - sy / 2]
    elif view == "coronal":
        img = volume[:, index, :]
        cols, rows = x, z
        extent = [x[0] - sx / 2, x[-1] + sx / 2, z[0] - sz / 2, z[-1] + sz / 2]
    else:
        img = volume[:, :, index]
        cols, rows = y, z
        extent = [y[0] - sy / 2, y[-1] + sy / 2, z[0] - sz / 2, z[-1] + sz / 2]
    return img, extent, cols, rows


def _structure_outline_data(
    s: Structure, axis: int, index: int, signs: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """2-D mask of a structure on a displayed slice with its column and row coordinates.

    ``index`` is the slice index along array ``axis`` in the display (identity) frame;
    only the structure's bounding box is touched.
    """
    if s.bbox is None:
        return None
    n = s.grid.shape[axis]
    orig = index if signs[axis] > 0 else n - 1 - index
    box = s.bbox[axis]
    if not box.start <= orig < box.stop:
        return None
    local = np.take(s.cropped_mask, orig - box.start, axis=axis)
    if not local.any():
        return None
    coords = s.grid.axis_coordinates_mm()  # (z, y, x), in the structure's own order
    rest = [a for a in range(3) if a != axis]  # (row axis, column axis) of the 2-D slice
    rows = coords[rest[0]][s.bbox[rest[0]]]
    cols = coords[rest[1]][s.bbox[rest[1]]]
    if rows.size > 1 and rows[1] < rows[0]:
        rows, local = rows[::-1], local[::-1, :]
    if cols.size > 1 and cols[1] < cols[0]:
        cols, local = cols[::-1], local[:, ::-1]
    # pad by one empty voxel so that outlines touching the box edge close
    sp = np.array(s.grid.spacing_mm)[rest]
    rows = np.concatenate([[rows[0] - sp[0]], rows, [rows[-1] + sp[0]]])
    cols = np.concatenate([[cols[0] - sp[1]], cols, [cols[-1] + sp[1]]])
    return cols, rows, np.pad(local, 1).astype(np.uint8)


def plot_ct_views(
    ct_hu: np.ndarray,
    grid: ImageGrid,
    *,
    structures: StructureSet | Iterable[Structure] | None = None,
    center_mm: Sequence[float] | None = None,
    views: Sequence[str] = VIEWS,
    window_hu: tuple[float, float] = _WINDOW_HU,
    landmarks: dict[str, tuple[float, float, float]] | None = None,
    title: str | None = None,
    legend: bool = True,
    zoom_to_body: bool = True,
) -> Figure:
    """A matplotlib figure with CT slices through one point and structure outlines.

    Parameters
    ----------
    ct_hu : ndarray, shape ``grid.shape``
        CT numbers (HU).
    grid : ImageGrid
        Geometry of ``ct_hu`` (any axial direction).
    structures : StructureSet or iterable of Structure, optional
        Outlines to draw (their own colours).
    center_mm : (x, y, z), optional
        LPS point the three slices pass through; default the grid centre.
    views : sequence of {"axial", "coronal", "sagittal"}
        Panels, left to right.
    window_hu : (level, width)
        Display window in HU.
    landmarks : dict of str to (x, y, z), optional
        Points to mark (drawn on the panels whose slice passes within one voxel).
    title : str, optional
        Figure title.
    legend : bool
        Whether to add a legend of the drawn structures.
    zoom_to_body : bool
        Limit the panels to the external structure (role ``"external"``, e.g. ``Body``)
        plus 10 mm, when one is drawn.

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas; save it with ``fig.savefig``.

    Raises
    ------
    GeometryError
        When ``ct_hu`` does not have the grid's shape, a view is unknown or the centre
        lies outside the grid.
    """
    ct = np.asarray(ct_hu)
    if ct.shape != grid.shape:
        raise GeometryError(f"ct_hu has shape {ct.shape} but the grid has shape {grid.shape}")
    for v in views:
        if v not in VIEWS:
            raise GeometryError(f"unknown view {v!r}; expected one of {', '.join(VIEWS)}")
    signs = grid.axis_signs
    ct, g, _ = _standardise(ct, grid)
    center = np.asarray(grid.center_mm if center_mm is None else center_mm, float)
    idx = np.rint(g.lps_to_index(center)).astype(int)
    if not np.all((idx >= 0) & (idx < np.array(g.shape))):
        raise GeometryError(
            f"center_mm {tuple(center.round(1))} lies outside the grid {grid.describe()}"
        )
    items = (
        list(structures.values())
        if isinstance(structures, StructureSet)
        else list(structures or [])
    )
    zoom = None
    if zoom_to_body:
        body = next((s for s in items if s.role == "external" and not s.is_empty), None)
        if body is not None:
            zoom = tuple((lo - 10.0, hi + 10.0) for lo, hi in body.bounds_mm)
    level, width = window_hu
    z, y, x = g.axis_coordinates_mm()
    (gx0, gx1), (gy0, gy1), (gz0, gz1) = g.bounds_mm
    if zoom is not None:  # the panels show the intersection of the grid and the zoom box
        (zx0, zx1), (zy0, zy1), (zz0, zz1) = zoom
        gx0, gx1, gy0, gy1 = max(gx0, zx0), min(gx1, zx1), max(gy0, zy0), min(gy1, zy1)
        gz0, gz1 = max(gz0, zz0), min(gz1, zz1)
        zoom = ((gx0, gx1), (gy0, gy1), (gz0, gz1))
    ext_mm = {
        "axial": (gx1 - gx0, gy1 - gy0),
        "coronal": (gx1 - gx0, gz1 - gz0),
        "sagittal": (gy1 - gy0, gz1 - gz0),
    }
    ratios = [ext_mm[v][0] / ext_mm[v][1] for v in views]
    fig_h = 5.0
    fig = Figure(figsize=(fig_h * sum(ratios) + (2.2 if legend and items else 0.4), fig_h + 0.6))
    axes = fig.subplots(1, len(views), gridspec_kw={"width_ratios": ratios}, squeeze=False)[0]
    handles: dict[str, Any] = {}
    for ax, view in zip(axes, views):
        index = {"axial": idx[0], "coronal": idx[1], "sagittal": idx[2]}[view]
        img, extent, _, _ = _slice_arrays(ct, g, view, int(index))
        origin = "upper" if view == "axial" else "lower"
        ax.imshow(
            img,
            cmap="gray",
            vmin=level - width / 2,
            vmax=level + width / 2,
            extent=extent,
            origin=origin,
            interpolation="nearest",
        )
        for s in items:
            if s.is_empty:
                continue
            axis = {"axial": 0, "coronal": 1, "sagittal": 2}[view]
            data = _structure_outline_data(s, axis, int(index), signs)
            if data is None:
                continue
            color = tuple(c / 255 for c in s.color)
            ax.contour(*data, levels=[0.5], colors=[color], linewidths=0.8)
            handles.setdefault(s.name, Line2D([], [], color=color, lw=1.5))
        for key, p in (landmarks or {}).items():
            p = np.asarray(p, float)
            axis = {"axial": 0, "coronal": 1, "sagittal": 2}[view]
            here = (z[idx[0]], y[idx[1]], x[idx[2]])[axis]
            if abs(p[2 - axis] - here) > max(g.spacing_mm[axis], 3.0):
                continue
            u, v = {"axial": (p[0], p[1]), "coronal": (p[0], p[2]), "sagittal": (p[1], p[2])}[view]
            ax.plot([u], [v], marker="+", color="cyan", ms=8, mew=1.5)
            ax.annotate(
                key, (u, v), color="cyan", fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        label = {
            "axial": f"axial z = {z[idx[0]]:.1f} mm",
            "coronal": f"coronal y = {y[idx[1]]:.1f} mm",
            "sagittal": f"sagittal x = {x[idx[2]]:.1f} mm",
        }[view]
        if zoom is not None:
            (x0, x1), (y0, y1), (z0, z1) = zoom
            lims = {
                "axial": ((x0, x1), (y1, y0)),
                "coronal": ((x0, x1), (z0, z1)),
                "sagittal": ((y0, y1), (z0, z1)),
            }[view]
            ax.set_xlim(*lims[0])
            ax.set_ylim(*lims[1])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(
            {
                "axial": "x (mm, patient left →)",
                "coronal": "x (mm, patient left →)",
                "sagittal": "y (mm, posterior →)",
            }[view],
            fontsize=8,
        )
        ax.set_ylabel(
            {
                "axial": "y (mm, posterior ↓)",
                "coronal": "z (mm, superior ↑)",
                "sagittal": "z (mm, superior ↑)",
            }[view],
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
    if legend and handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="center right",
            fontsize=6,
            frameon=False,
            ncol=1 if len(handles) <= 30 else 2,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - (2.0 / fig.get_figwidth() if legend and handles else 0), 1))
    return fig


def _atomic_savefig(fig: Figure, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def save_atlas_views(
    atlas: Any,
    path: str | Path,
    *,
    structures: Iterable[str] | None = None,
    center_mm: Sequence[float] | str | None = None,
    window_hu: tuple[float, float] = _WINDOW_HU,
    show_landmarks: bool = True,
    dpi: int = 110,
) -> list[Path]:
    """Write PNG pictures of an atlas: axial, coronal and sagittal slices with outlines.

    Parameters
    ----------
    atlas : Atlas
        Anything with ``name``, ``grid``, ``ct_hu``, ``structures`` and ``landmarks``.
    path : str or Path
        A ``.png`` file: one picture with the three views side by side. Otherwise a
        folder: ``<name>_axial.png``, ``<name>_coronal.png``, ``<name>_sagittal.png`` and
        ``<name>_views.png`` (all three) are written into it.
    structures : iterable of str, optional
        Names of the structures to outline; default all.
    center_mm : (x, y, z) or str, optional
        The point the slices pass through, or a landmark / structure name (its
        position / centroid). Default: the landmark ``PubicSymphysis_Top`` moved to the
        midline and 30 mm up if present, else the grid centre.
    window_hu : (level, width)
        Display window in HU (default soft tissue 40/400).
    show_landmarks : bool
        Mark the atlas's landmarks that lie on the drawn slices.
    dpi : int
        Resolution of the PNG files.

    Returns
    -------
    list of Path
        The files written (each written to a temporary file, then renamed).

    Raises
    ------
    MissingStructureError
        When a named structure or centre is not in the atlas.
    """
    ss: StructureSet = atlas.structures
    names = list(ss.names) if structures is None else list(structures)
    missing = [n for n in names if n not in ss]
    if missing:
        raise MissingStructureError(
            f"cannot outline {', '.join(missing)}: not in atlas {atlas.name!r}"
        )
    chosen = [ss[n] for n in names]
    if isinstance(center_mm, str):
        if center_mm in atlas.landmarks:
            center = tuple(atlas.landmarks[center_mm])
        elif center_mm in ss and not ss[center_mm].is_empty:
            center = ss[center_mm].centroid_mm
        else:
            raise MissingStructureError(
                f"center {center_mm!r} is neither a landmark nor a structure of atlas "
                f"{atlas.name!r}"
            )
    elif center_mm is None:
        if "PubicSymphysis_Top" in atlas.landmarks:
            p = atlas.landmarks["PubicSymphysis_Top"]
            center = (p[0], p[1] + 80.0, p[2] + 30.0)
            # keep the point on the grid (y + 80 mm lands in the pelvis centre)
            if not atlas.grid.contains_index(atlas.grid.lps_to_nearest_index(center)):
                center = atlas.grid.center_mm
        else:
            center = atlas.grid.center_mm
    else:
        center = tuple(float(v) for v in center_mm)
    marks = dict(atlas.landmarks) if show_landmarks else None
    out = Path(path)
    written: list[Path] = []
    title = f"{atlas.name}: CT with structure outlines"
    if out.suffix.lower() == ".png":
        fig = plot_ct_views(
            atlas.ct_hu,
            atlas.grid,
            structures=chosen,
            center_mm=center,
            window_hu=window_hu,
            landmarks=marks,
            title=title,
        )
        written.append(_atomic_savefig(fig, out, dpi))
        return written
    out.mkdir(parents=True, exist_ok=True)
    for view in VIEWS:
        fig = plot_ct_views(
            atlas.ct_hu,
            atlas.grid,
            structures=chosen,
            center_mm=center,
            views=[view],
            window_hu=window_hu,
            landmarks=marks,
            title=f"{atlas.name}: {view}",
        )
        written.append(_atomic_savefig(fig, out / f"{atlas.name}_{view}.png", dpi))
    fig = plot_ct_views(
        atlas.ct_hu,
        atlas.grid,
        structures=chosen,
        center_mm=center,
        window_hu=window_hu,
        landmarks=marks,
        title=title,
    )
    written.append(_atomic_savefig(fig, out / f"{atlas.name}_views.png", dpi))
    return written
