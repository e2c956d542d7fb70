"""Pictures of a CT with structure outlines: axial, coronal and sagittal slices (PNG).

Drawn with matplotlib's object API (no pyplot, no display, no change to the global
matplotlib backend). Display conventions are the radiological ones: axial and coronal
views show the patient's left on the image right, anterior is up in the axial view,
superior is up in the coronal and sagittal views, and anterior is on the left of the
sagittal view. Axes are in LPS mm,
with the true aspect ratio of the voxels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rtplan._io import atomic_path
from rtplan._typing import FloatArray, Vec3
from rtplan._validation import check_type
from rtplan.atlas import Atlas
from rtplan.errors import GeometryError, MissingStructureError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

__all__ = ["VIEWS", "plot_ct_views", "save_atlas_views"]

View = Literal["axial", "coronal", "sagittal"]
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

#: Soft-tissue window (level, width) in HU; tool default.
_WINDOW_HU = (40.0, 400.0)

#: Array axis (k, j, i) each view slices along.
_VIEW_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
_X_LABELS = {
    "axial": "x (mm, patient left →)",
    "coronal": "x (mm, patient left →)",
    "sagittal": "y (mm, posterior →)",
}
_Y_LABELS = {
    "axial": "y (mm, posterior ↓)",
    "coronal": "z (mm, superior ↑)",
    "sagittal": "z (mm, superior ↑)",
}

# LPS box ((xmin, xmax), (ymin, ymax), (zmin, zmax)) in mm
_Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def _standardise(
    ct: npt.NDArray[_ScalarT], grid: ImageGrid
) -> tuple[npt.NDArray[_ScalarT], ImageGrid, bool]:
    """Flip to the identity direction for display (returns whether a flip happened)."""
    signs = grid.axis_signs
    if all(s > 0 for s in signs):
        return ct, grid, False
    axes = tuple(n for n, s in enumerate(signs) if s < 0)
    last = [(n - 1) if s < 0 else 0 for n, s in zip(grid.shape, signs)]
    x0, y0, z0 = (float(v) for v in grid.index_to_lps(last))
    g = ImageGrid(shape=grid.shape, spacing_mm=grid.spacing_mm, origin_mm=(x0, y0, z0))
    return np.flip(ct, axis=axes), g, True


def _slice_arrays(
    volume: npt.NDArray[_ScalarT], grid: ImageGrid, view: str, index: int
) -> tuple[npt.NDArray[_ScalarT], list[float], FloatArray, FloatArray]:
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
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.uint8]] | None:
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


def _structure_list(structures: StructureSet | Iterable[Structure] | None) -> list[Structure]:
    if isinstance(structures, StructureSet):
        return list(structures.values())
    return list(structures or [])


def _shown_box(grid: ImageGrid, items: Sequence[Structure], zoom_to_body: bool) -> _Box | None:
    """The grid's box cut to the external structure + 10 mm, or ``None`` without zoom.

    The external structure is the first non-empty one of role ``"external"`` in ``items``.
    """
    if not zoom_to_body:
        return None
    body = next((s for s in items if s.role == "external" and not s.is_empty), None)
    if body is None:
        return None
    (zx0, zx1), (zy0, zy1), (zz0, zz1) = ((lo - 10.0, hi + 10.0) for lo, hi in body.bounds_mm)
    (gx0, gx1), (gy0, gy1), (gz0, gz1) = grid.bounds_mm
    return (
        (max(gx0, zx0), min(gx1, zx1)),
        (max(gy0, zy0), min(gy1, zy1)),
        (max(gz0, zz0), min(gz1, zz1)),
    )


def _panel_ratios(box: _Box, views: Sequence[str]) -> list[float]:
    """Width / height of each view's panel showing ``box``."""
    (x0, x1), (y0, y1), (z0, z1) = box
    ext_mm = {
        "axial": (x1 - x0, y1 - y0),
        "coronal": (x1 - x0, z1 - z0),
        "sagittal": (y1 - y0, z1 - z0),
    }
    return [ext_mm[v][0] / ext_mm[v][1] for v in views]


def _draw_structures(
    ax: Axes,
    items: Sequence[Structure],
    view: str,
    index: int,
    signs: tuple[int, int, int],
    handles: dict[str, Line2D],
) -> None:
    """Outline the structures cut by the slice in their colours; add their legend handles."""
    for s in items:
        if s.is_empty:
            continue
        data = _structure_outline_data(s, _VIEW_AXIS[view], index, signs)
        if data is None:
            continue
        r, g, b = s.color
        color = (r / 255, g / 255, b / 255)
        ax.contour(*data, levels=[0.5], colors=[color], linewidths=0.8)
        handles.setdefault(s.name, Line2D([], [], color=color, lw=1.5))


def _draw_landmarks(
    ax: Axes, landmarks: Mapping[str, Sequence[float]], view: str, here_mm: float, grid: ImageGrid
) -> None:
    """Mark the landmarks within one voxel (at least 3 mm) of the slice at ``here_mm``."""
    axis = _VIEW_AXIS[view]
    for key, p in landmarks.items():
        point = np.asarray(p, float)
        if abs(point[2 - axis] - here_mm) > max(grid.spacing_mm[axis], 3.0):
            continue
        u, w = {
            "axial": (point[0], point[1]),
            "coronal": (point[0], point[2]),
            "sagittal": (point[1], point[2]),
        }[view]
        ax.plot([u], [w], marker="+", color="cyan", ms=8, mew=1.5)
        ax.annotate(
            key, (u, w), color="cyan", fontsize=6, xytext=(3, 3), textcoords="offset points"
        )


def _label_panel(ax: Axes, view: str, here_mm: float, box: _Box | None) -> None:
    """Limits (when zoomed), title with the slice position, axis labels."""
    label = f"{view} {'zyx'[_VIEW_AXIS[view]]} = {here_mm:.1f} mm"
    if box is not None:
        (x0, x1), (y0, y1), (z0, z1) = box
        lims = {
            "axial": ((x0, x1), (y1, y0)),
            "coronal": ((x0, x1), (z0, z1)),
            "sagittal": ((y0, y1), (z0, z1)),
        }[view]
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
    ax.set_title(label, fontsize=9)
    ax.set_xlabel(_X_LABELS[view], fontsize=8)
    ax.set_ylabel(_Y_LABELS[view], fontsize=8)
    ax.tick_params(labelsize=7)


def plot_ct_views(
    ct_hu: npt.ArrayLike,
    grid: ImageGrid,
    *,
    structures: StructureSet | Iterable[Structure] | None = None,
    center_mm: Sequence[float] | None = None,
    views: Sequence[str] = VIEWS,
    window_hu: tuple[float, float] = _WINDOW_HU,
    landmarks: Mapping[str, Sequence[float]] | None = None,
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
    ct_in = np.asarray(ct_hu)
    if ct_in.shape != grid.shape:
        raise GeometryError(f"ct_hu has shape {ct_in.shape} but the grid has shape {grid.shape}")
    for v in views:
        if v not in VIEWS:
            raise GeometryError(f"unknown view {v!r}; expected one of {', '.join(VIEWS)}")
    signs = grid.axis_signs
    ct, g, _ = _standardise(ct_in, grid)
    center = np.asarray(grid.center_mm if center_mm is None else center_mm, float)
    idx = np.rint(g.lps_to_index(center)).astype(int)
    if not np.all((idx >= 0) & (idx < np.array(g.shape))):
        raise GeometryError(
            f"center_mm {tuple(center.round(1))} lies outside the grid {grid.describe()}"
        )
    items = _structure_list(structures)
    box = _shown_box(g, items, zoom_to_body)
    level, width = window_hu
    coords = g.axis_coordinates_mm()  # (z, y, x)
    ratios = _panel_ratios(g.bounds_mm if box is None else box, views)
    fig_h = 5.0
    fig = Figure(figsize=(fig_h * sum(ratios) + (2.2 if legend and items else 0.4), fig_h + 0.6))
    axes = fig.subplots(1, len(views), gridspec_kw={"width_ratios": ratios}, squeeze=False)[0]
    handles: dict[str, Line2D] = {}
    for ax, view in zip(axes, views):
        axis = _VIEW_AXIS[view]
        index = int(idx[axis])
        here_mm = float(coords[axis][index])
        img, extent, _, _ = _slice_arrays(ct, g, view, index)
        ax.imshow(
            img,
            cmap="gray",
            vmin=level - width / 2,
            vmax=level + width / 2,
            extent=extent,
            origin="upper" if view == "axial" else "lower",
            interpolation="nearest",
        )
        _draw_structures(ax, items, view, index, signs, handles)
        _draw_landmarks(ax, landmarks or {}, view, here_mm, g)
        _label_panel(ax, view, here_mm, box)
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


def _views_centre(atlas: Atlas, center_mm: Sequence[float] | str | None) -> Vec3:
    """The LPS point (mm) the slices of :func:`save_atlas_views` pass through."""
    ss = atlas.structures
    if isinstance(center_mm, str):
        if center_mm in atlas.landmarks:
            x, y, z = atlas.landmarks[center_mm]
            return (x, y, z)
        if center_mm in ss and not ss[center_mm].is_empty:
            return ss[center_mm].centroid_mm
        raise MissingStructureError(
            f"center {center_mm!r} is neither a landmark nor a structure of atlas {atlas.name!r}"
        )
    if center_mm is None:
        if "PubicSymphysis_Top" not in atlas.landmarks:
            return atlas.grid.center_mm
        p = atlas.landmarks["PubicSymphysis_Top"]
        center = (p[0], p[1] + 80.0, p[2] + 30.0)
        # keep the point on the grid (y + 80 mm lands in the pelvis centre)
        if not atlas.grid.contains_index(atlas.grid.lps_to_nearest_index(center)):
            return atlas.grid.center_mm
        return center
    x, y, z = (float(v) for v in center_mm)
    return (x, y, z)


def save_atlas_views(
    atlas: Atlas,
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
        The anatomy (:class:`rtplan.atlas.Atlas`): its CT, structures and landmarks.
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
    TypeError
        When ``atlas`` is not an :class:`~rtplan.atlas.Atlas`.
    MissingStructureError
        When a named structure or centre is not in the atlas.
    """
    check_type(atlas, Atlas, name="atlas", expected_text="an rtplan.atlas.Atlas")
    ss = atlas.structures
    names = list(ss.names) if structures is None else list(structures)
    missing = [n for n in names if n not in ss]
    if missing:
        raise MissingStructureError(
            f"cannot outline {', '.join(missing)}: not in atlas {atlas.name!r}"
        )
    chosen = [ss[n] for n in names]
    center = _views_centre(atlas, center_mm)
    marks = dict(atlas.landmarks) if show_landmarks else None
    out = Path(path)
    title = f"{atlas.name}: CT with structure outlines"

    def views_figure(views: Sequence[str], title: str) -> Figure:
        return plot_ct_views(
            atlas.ct_hu,
            atlas.grid,
            structures=chosen,
            center_mm=center,
            views=views,
            window_hu=window_hu,
            landmarks=marks,
            title=title,
        )

    if out.suffix.lower() == ".png":
        return [_atomic_savefig(views_figure(VIEWS, title), out, dpi)]
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _atomic_savefig(
            views_figure([view], f"{atlas.name}: {view}"), out / f"{atlas.name}_{view}.png", dpi
        )
        for view in VIEWS
    ]
    written.append(
        _atomic_savefig(views_figure(VIEWS, title), out / f"{atlas.name}_views.png", dpi)
    )
    return written
