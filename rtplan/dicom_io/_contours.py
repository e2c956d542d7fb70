"""Contours along voxel edges and their even-odd fill (private to :mod:`rtplan.dicom_io`).

:func:`_trace_stack` turns a mask into closed loops along pixel edges, slice by slice;
:func:`_fill_polygons` fills polygons back into a slice. Filling the traced loops gives the
mask again exactly, so an RTSTRUCT written by rtplan reads back as the mask it was made of.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rtplan._typing import BoolMask, FloatArray
from rtplan.dicom_io._common import _ds_strs
from rtplan.grid import ImageGrid
from rtplan.structures import Structure

__all__: list[str] = []

IntArray = npt.NDArray[np.int64]


# ====================================================================== tracing
@dataclass(frozen=True)
class _Sides:
    """The boundary sides of the pixels of a padded stack, as directed corner-to-corner edges.

    Corner ``(cx, cy)`` of slice ``k`` (padded pixel-corner coordinates ``0..nx``,
    ``0..ny``) has the id ``k * plane + cy * width + cx``. Each side runs clockwise around
    its pixel (in ``(i, j)`` coordinates) so that the inside is on its right.
    """

    start: IntArray  # corner id where each side starts
    end: IntArray  # corner id where each side ends
    direction: IntArray  # 0 = +i top, 1 = +j right, 2 = -i bottom, 3 = -j left
    width: int  # corners per row
    plane: int  # corners per slice


def _trace_stack(mask3d: npt.ArrayLike) -> tuple[FloatArray, IntArray, IntArray]:
    """The loops of :func:`_trace_slice` for every slice of a ``[slice, row, col]`` mask.

    All slices are traced at once (one vectorised pass instead of one per slice). Returns
    ``(points, loop_slice, offsets)``: ``points`` ``(n, 2)`` of ``(i, j)`` pixel-corner
    coordinates of all loops end to end, ``loop_slice`` the slice index of every loop and
    ``offsets`` (one more than the loops) where each loop starts in ``points``. Loops are
    ordered by slice, then as :func:`_trace_slice` orders them within a slice.
    """
    sides = _boundary_sides(np.pad(np.asarray(mask3d, bool), ((0, 0), (1, 1), (1, 1))))
    n_edges = sides.start.size
    if n_edges == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(1, np.int64)
    succ = _successors(sides)
    pred, root_of, comp = _loops(succ)
    dist = _rank_along_loops(succ, pred, root_of)
    label = root_of[comp]
    loop_k = sides.start[root_of] // sides.plane
    # by slice, then loop (smallest edge first), root first, then along the loop
    order = np.lexsort((-dist, label, loop_k[comp]))
    # keep the points where the direction changes
    corner = sides.direction[order] != sides.direction[pred[order]]
    kept = order[corner]
    cy, cx = np.divmod(sides.start[kept] % sides.plane, sides.width)
    # padded corner (cx, cy) -> unpadded pixel-index coordinates (cx - 1.5, cy - 1.5)
    pts = np.column_stack([cx - 1.5, cy - 1.5]).astype(float)
    lab_kept = label[kept]
    breaks = np.flatnonzero(lab_kept[1:] != lab_kept[:-1]) + 1
    offsets = np.concatenate([[0], breaks, [len(kept)]]).astype(np.int64)
    loop_slice = sides.start[lab_kept[offsets[:-1]]] // sides.plane
    return pts, loop_slice, offsets


def _boundary_sides(m: BoolMask) -> _Sides:
    """The pixel sides between inside and outside of the padded stack ``m``.

    Within a direction the sides come in ``(k, j, i)`` order of their pixels, as
    :func:`_trace_slice` lists them.
    """
    _nz, ny, nx = m.shape
    w = nx + 1
    plane = (ny + 1) * w
    # boundary pixels (inside, with at least one of its 4 neighbours outside), in
    # (k, j, i) order, as flat indices of the padded mask
    inside = m[:, 1:-1, 1:-1]
    interior = inside & m[:, :-2, 1:-1]
    interior &= m[:, 2:, 1:-1]
    interior &= m[:, 1:-1, :-2]
    interior &= m[:, 1:-1, 2:]
    np.not_equal(inside, interior, out=interior)  # inside and not interior
    kk, rest = np.divmod(np.flatnonzero(interior), (ny - 2) * (nx - 2))
    jj, ii = np.divmod(rest, nx - 2)
    flat = (kk * ny + jj + 1) * nx + ii + 1
    base = kk * plane + (jj + 1) * w + (ii + 1)  # corner (ip, jp) of each pixel
    m_flat = m.reshape(-1)
    starts, ends = [], []
    for code, step in enumerate((-nx, 1, nx, -1)):
        b = base[~m_flat[flat + step]]
        if code == 0:  # top side, cy = jp, from cx = ip to ip + 1
            s, e = b, b + 1
        elif code == 1:  # right side, cx = ip + 1, cy jp -> jp + 1
            s, e = b + 1, b + w + 1
        elif code == 2:  # bottom side, cy = jp + 1, cx ip + 1 -> ip
            s, e = b + w + 1, b + w
        else:  # left side, cx = ip, cy jp + 1 -> jp
            s, e = b + w, b
        starts.append(s)
        ends.append(e)
    return _Sides(
        start=np.concatenate(starts),
        end=np.concatenate(ends),
        direction=np.repeat(np.arange(4), [len(s) for s in starts]),
        width=w,
        plane=plane,
    )


def _successors(sides: _Sides) -> IntArray:
    """The edge that follows each edge: the one leaving its end corner.

    At a saddle corner (two edges leave it) the one turning right, ``direction + 1``,
    which keeps to the same pixel: diagonal pixels stay apart.
    """
    start, end, dirn = sides.start, sides.end, sides.direction
    n_edges = start.size
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    first = np.searchsorted(sorted_start, end, side="left")
    cand1 = order[first]
    succ = cand1.copy()
    two = np.flatnonzero(first + 1 < n_edges)
    two = two[sorted_start[first[two] + 1] == end[two]]
    if two.size:
        cand2 = order[first[two] + 1]
        want = (dirn[two] + 1) % 4
        succ[two] = np.where(dirn[cand1[two]] == want, cand1[two], cand2)
    return succ


def _loops(succ: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """``(pred, root_of, comp)`` of the cycles of the successor permutation ``succ``.

    The cycles are the loops: ``comp`` numbers the cycle of each edge (connected
    components) and ``root_of[c]`` is the smallest edge of cycle ``c``; ``pred`` inverts
    ``succ``.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n_edges = succ.size
    idx_all = np.arange(n_edges)
    graph = csr_matrix((np.ones(n_edges, np.int8), (idx_all, succ)), shape=(n_edges, n_edges))
    n_comp, comp = connected_components(graph, directed=True, connection="weak")
    root_of = np.full(n_comp, n_edges, np.int64)
    np.minimum.at(root_of, comp, idx_all)
    pred = np.empty(n_edges, np.int64)
    pred[succ] = idx_all
    return pred, root_of, comp.astype(np.int64, copy=False)


def _rank_along_loops(succ: IntArray, pred: IntArray, root_of: IntArray) -> IntArray:
    """Each edge's number of steps to the end of its loop (opened just before its root).

    Pointer jumping, vectorised: ``log2`` of the longest loop passes.
    """
    nxt = succ.copy()
    nxt[pred[root_of]] = -1  # open each cycle just before its root
    dist: IntArray = (nxt != -1).astype(np.int64)
    ptr = nxt
    sel = np.flatnonzero(ptr != -1)
    while sel.size:
        p = ptr[sel]
        dist[sel] += dist[p]
        ptr[sel] = ptr[p]
        sel = sel[ptr[sel] != -1]
    return dist


def _trace_slice(mask2d: npt.ArrayLike) -> list[FloatArray]:
    """Closed loops along the pixel edges of a 2-D mask, as ``(n, 2)`` arrays of ``(i, j)``.

    Coordinates are fractional column/row indices of pixel corners (``-0.5`` = the left
    edge of column 0). Outer boundaries, holes and islands are separate loops; filling
    them even-odd gives the mask back exactly (pixel centres are never on a loop). Two
    pixels touching only at a corner belong to different loops. Collinear points are
    dropped.

    Examples
    --------
    >>> import numpy as np
    >>> [loop.tolist() for loop in _trace_slice(np.ones((1, 2), bool))]
    [[[-0.5, -0.5], [1.5, -0.5], [1.5, 0.5], [-0.5, 0.5]]]
    >>> _trace_slice(np.zeros((2, 2), bool))
    []
    """
    pts, _, offsets = _trace_stack(np.asarray(mask2d, bool)[None])
    return np.split(pts, offsets[1:-1]) if len(offsets) > 1 else []


def _contours_of(
    structure: Structure, grid: ImageGrid, slice_z_mm: FloatArray
) -> list[tuple[int, int, bytes]]:
    """``(slice k, number of points, ContourData bytes)`` for every loop of a structure.

    The loops of all slices are traced at once (:func:`_trace_stack`, on the structure's
    bounding box), mapped to LPS together, with z from the referenced slice's own
    ImagePositionPatient, and formatted as DS text (:func:`_ds_str` rules) in one pass:
    the coordinates of voxel corners take few distinct values, so each distinct value is
    formatted once.
    """
    bbox = structure.bbox
    if bbox is None:  # an empty structure
        return []
    k0, j0, i0 = bbox[0].start, bbox[1].start, bbox[2].start
    pts, loop_slice, offsets = _trace_stack(structure.cropped_mask)
    if not len(loop_slice):
        return []
    lengths = np.diff(offsets)
    k_pts = np.repeat(loop_slice + k0, lengths)
    idx = np.column_stack([k_pts.astype(float), pts[:, 1] + j0, pts[:, 0] + i0])
    xyz = grid.index_to_lps(idx)
    xyz[:, 2] = slice_z_mm[k_pts]  # the referenced slice's own ImagePositionPatient
    unique, inverse = np.unique(xyz.reshape(-1), return_inverse=True)
    texts = np.array(_ds_strs(unique), dtype=object)[inverse.reshape(-1)].tolist()
    bounds = (3 * offsets).tolist()
    return [
        (k0 + k, (b - a) // 3, "\\".join(texts[a:b]).encode("ascii"))
        for k, a, b in zip(loop_slice.tolist(), bounds[:-1], bounds[1:])
    ]


# ====================================================================== filling
def _fill_polygons(polys_ji: list[FloatArray], ny: int, nx: int) -> BoolMask:
    """Even-odd scanline fill of polygons given as ``(n, 2)`` arrays of ``(j, i)`` indices.

    A pixel ``(j, i)`` is inside when its centre lies inside an odd number of polygons.
    Only the rows each edge spans are visited.

    Examples
    --------
    >>> import numpy as np
    >>> square = np.array([[-0.5, -0.5], [-0.5, 1.5], [1.5, 1.5], [1.5, -0.5]])
    >>> _fill_polygons([square], 3, 3).astype(int).tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    >>> _fill_polygons([], 2, 2).any()
    np.False_
    """
    rows, xs = _row_crossings(polys_ji, ny)
    out = np.zeros((ny, nx), bool)
    if rows.size == 0:
        return out
    a_rows, a = rows[0::2], xs[0::2]
    b = xs[1::2]
    ia = np.clip(np.ceil(a), 0, nx).astype(np.int64)  # first centre with i >= a
    ib = np.clip(np.ceil(b), 0, nx).astype(np.int64)  # first centre with i >= b
    # fill only the bounding box of the spans
    r0, r1 = int(a_rows.min()), int(a_rows.max()) + 1
    c0, c1 = int(ia.min()), int(ib.max())
    if c1 <= c0:
        return out
    diff = np.zeros((r1 - r0, c1 - c0 + 1), np.int32)
    np.add.at(diff, (a_rows - r0, ia - c0), 1)
    np.add.at(diff, (a_rows - r0, ib - c0), -1)
    out[r0:r1, c0:c1] = np.cumsum(diff[:, :-1], axis=1) > 0
    return out


def _row_crossings(polys_ji: list[FloatArray], ny: int) -> tuple[IntArray, FloatArray]:
    """``(rows, xs)``: where the polygons' edges cross the pixel-centre rows ``0..ny-1``.

    Sorted by row, then ``x``; every row has an even number of crossings, so consecutive
    pairs are the spans inside.
    """
    y0s, x0s, y1s, x1s = [], [], [], []
    for p in polys_ji:
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        y0s.append(p[:, 0])
        x0s.append(p[:, 1])
        y1s.append(q[:, 0])
        x1s.append(q[:, 1])
    if not y0s:
        return np.zeros(0, np.int64), np.zeros(0)
    y0, x0 = np.concatenate(y0s), np.concatenate(x0s)
    y1, x1 = np.concatenate(y1s), np.concatenate(x1s)
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    # rows j with ylo <= j < yhi, clipped to the image
    jstart = np.clip(np.ceil(ylo), 0, ny).astype(np.int64)
    jstop = np.clip(np.ceil(yhi), 0, ny).astype(np.int64)
    counts = np.maximum(jstop - jstart, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    edge = np.repeat(np.arange(len(y0)), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = jstart[edge] + offsets
    t = (rows - y0[edge]) / (y1[edge] - y0[edge])
    xs = x0[edge] + t * (x1[edge] - x0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # crossings per row are even for closed polygons; pair them up row by row
    _row_ids, row_start, row_count = np.unique(rows, return_index=True, return_counts=True)
    if np.any(row_count % 2):
        # cannot happen for closed polygons; drop the unmatched last crossing of such rows
        keep = np.ones(len(rows), bool)
        keep[(row_start + row_count - 1)[row_count % 2 == 1]] = False
        rows, xs = rows[keep], xs[keep]
    return rows, xs
