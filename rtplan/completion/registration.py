"""Registration of the shipped atlas to a patient CT with SimpleITK: rigid, affine, deformable.

The atlas is the *moving* image and the patient the *fixed* one, so the transform maps a
patient point to the atlas point that lands there: resampling an atlas mask through it
gives the mask on the patient grid (:meth:`Registration.warp_mask`), and atlas landmarks
are carried to the patient by inverting it (:meth:`Registration.map_points`).

Stages (every number is a tool default of :class:`RegistrationSettings`):

1. images: CT clipped to [-200, 1000] HU, cropped to the body with a margin, smoothed and
   resampled to isotropic voxels (``affine_spacing_mm`` for stages 2-3,
   ``deformable_spacing_mm`` for stage 4);
2. rigid (``Euler3DTransform``) started from the centres of mass of the bone (> 200 HU),
   Mattes mutual information, regular-step gradient descent, two resolutions;
3. affine (``AffineTransform``), the same metric and optimiser, composed after the rigid;
4. deformable: ITK's fast symmetric-forces demons (the demons family of
   ``@vercauteren2009_demons``) on *feature images*: the clipped CT with the organs both
   images have (the user's contours and the atlas's) painted as distinct values, so the
   organs drive the deformation along with the bones; three resolutions (12, 6, 3 mm), the
   displacement field smoothed by a Gaussian of ``field_smoothing_mm``.

SimpleITK (``@lowekamp2013_simpleitk``, ``@yaniv2018_simpleitk``; keys of
:mod:`rtplan.references`) does the work; nothing here optimises by hand. Mapping points
from the atlas to the patient needs the inverse of the transform, found per point by
fixed-point iteration (the affine part inverted exactly, the small deformable remainder
corrected iteratively).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from rtplan._typing import BoolMask, FloatArray
from rtplan.completion._images import (
    Box,
    array,
    box_corners_mm,
    box_image,
    box_of_points,
    box_slices,
    check_identity,
    image,
    mask_box,
)
from rtplan.completion._sitk import SitkImage, SitkTransform, sitk
from rtplan.errors import GeometryError, InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure

__all__ = ["Registration", "RegistrationSettings", "register"]

#: CT window of the registration images (HU): air, gas and metal do not dominate.
_CT_CLIP_HU = (-200.0, 1000.0)
#: Threshold (HU) of the bone images that start the rigid stage (centres of mass).
_INIT_BONE_HU = 200.0
#: Spacing between the painted values of shared organs in the feature images (HU units).
_ORGAN_PAINT_STEP = 250.0


@dataclass(frozen=True)
class RegistrationSettings:
    """Parameters of :func:`register` (all tool defaults, tuned on the shipped atlas).

    Attributes
    ----------
    affine_spacing_mm : float
        Voxel size of the rigid and affine stages (mm).
    deformable_spacing_mm : float
        Voxel size of the finest deformable level (mm).
    rigid_iterations, affine_iterations : int
        Optimiser iterations per resolution level.
    demons_iterations : tuple of int
        Demons iterations per level, coarse to fine; each level's voxels are twice the
        next one's, the last level's ``deformable_spacing_mm``.
    field_smoothing_mm : float
        Standard deviation of the Gaussian that regularises the displacement field (mm).
    sampling_fraction : float
        Fraction of voxels sampled by the mutual-information metric.
    seed : int
        Seed of the metric's random sampling (reproducible results).
    margin_mm : float
        Margin around the body kept in the registration images (mm).
    """

    affine_spacing_mm: float = 6.0
    deformable_spacing_mm: float = 3.0
    rigid_iterations: int = 200
    affine_iterations: int = 200
    demons_iterations: tuple[int, ...] = (40, 30, 20)
    field_smoothing_mm: float = 6.0
    sampling_fraction: float = 0.25
    seed: int = 1
    margin_mm: float = 10.0

    def __post_init__(self) -> None:
        for name in ("affine_spacing_mm", "deformable_spacing_mm", "field_smoothing_mm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise InvalidInputError(f"{name} must be a positive length in mm, got {value!r}")
        if not 0 < self.sampling_fraction <= 1:
            raise InvalidInputError(
                f"sampling_fraction must be in (0, 1], got {self.sampling_fraction!r}"
            )
        if any(n < 0 for n in self.demons_iterations):
            raise InvalidInputError(
                f"demons_iterations must be >= 0, got {self.demons_iterations!r}"
            )


@dataclass(frozen=True)
class Volume:
    """A CT on a grid with its body mask and the organ masks offered to the registration.

    Attributes
    ----------
    ct_hu : ndarray of float32, shape ``grid.shape``
        CT numbers (HU).
    grid : ImageGrid
        Identity-direction grid of ``ct_hu``.
    body : ndarray of bool, shape ``grid.shape``
        The patient (cropping region of the registration images).
    organs : dict of str to Structure
        Organs on ``grid`` by name; the names both volumes have are painted into the
        deformable stage's images.
    """

    ct_hu: npt.NDArray[np.float32]
    grid: ImageGrid
    body: BoolMask
    organs: Mapping[str, Structure] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """The transform from patient (fixed) points to atlas (moving) points, and its record.

    Attributes
    ----------
    transform : SimpleITK CompositeTransform
        Rigid, affine and displacement-field transforms; applied to a patient point it
        gives the atlas point.
    linear : SimpleITK CompositeTransform
        The rigid and affine part alone.
    metrics : dict of str to float
        Final metric value of each stage (mutual information is negative: lower is better;
        demons: mean squared difference of the feature images).
    seconds : dict of str to float
        Wall-clock time of each stage.
    shared_organs : tuple of str
        Organs painted into the deformable stage's images.
    """

    transform: SitkTransform
    linear: SitkTransform
    metrics: dict[str, float]
    seconds: dict[str, float]
    shared_organs: tuple[str, ...]

    def warp_mask(
        self, structure: Structure, target: ImageGrid, *, margin_mm: float = 20.0
    ) -> tuple[BoolMask, tuple[int, int, int]] | None:
        """An atlas structure carried onto the patient grid.

        The structure's mask (on the atlas grid) is resampled with linear interpolation
        through :attr:`transform` onto the voxels of ``target`` that the linear part maps
        it to (grown by ``margin_mm``) and thresholded at one half. Only the structure's
        box is handled, never the whole grid.

        Parameters
        ----------
        structure : Structure
            The atlas structure (identity-direction grid).
        target : ImageGrid
            The patient grid (identity direction).
        margin_mm : float
            Room left for the deformable part beyond the linear estimate of the box (mm).

        Returns
        -------
        (ndarray of bool, (k, j, i)) or None
            The warped mask on a box of ``target`` and the box's first index; ``None``
            when nothing lands on the patient grid.
        """
        if structure.bbox is None:
            return None
        source = structure.grid.crop(structure.bbox).pad(1)
        local = np.pad(structure.cropped_mask, 1).astype(np.float32)
        src = image(local, source)
        corners = self._linear_inverse(box_corners_mm(source, _whole(source)))
        out_box = box_of_points(target, corners, margin_mm)
        if out_box is None:
            return None
        warped = sitk.Resample(
            src, box_image(target, out_box), self.transform, sitk.sitkLinear, 0.0
        )
        mask: BoolMask = array(warped) >= 0.5
        if not mask.any():
            return None
        return mask, out_box[0]

    def map_points(self, points_mm: npt.ArrayLike, *, iterations: int = 30) -> FloatArray:
        """Atlas points carried to the patient: ``p`` with ``transform(p) = q``.

        Parameters
        ----------
        points_mm : array_like, shape (n, 3)
            Atlas points (LPS mm).
        iterations : int
            Fixed-point iterations (each corrects by the inverse linear part).

        Returns
        -------
        ndarray, shape (n, 3)
            Patient points (LPS mm).
        """
        q = np.atleast_2d(np.asarray(points_mm, dtype=float))
        p = self._linear_inverse(q)
        jac_inv = np.linalg.inv(self._linear_matrix())
        for _ in range(iterations):
            residual = q - self._apply(p)
            p = p + residual @ jac_inv.T
            if float(np.abs(residual).max(initial=0.0)) < 1e-3:
                break
        return p

    def map_points_linear(self, points_mm: npt.ArrayLike) -> FloatArray:
        """Atlas points carried to the patient by the rigid and affine part alone (exact).

        Parameters
        ----------
        points_mm : array_like, shape (n, 3)
            Atlas points (LPS mm).

        Returns
        -------
        ndarray, shape (n, 3)
            Patient points (LPS mm).
        """
        return self._linear_inverse(np.atleast_2d(np.asarray(points_mm, dtype=float)))

    def _apply(self, points: FloatArray) -> FloatArray:
        return np.array([self.transform.TransformPoint(tuple(map(float, pt))) for pt in points])

    def _linear_matrix(self) -> FloatArray:
        """The 3 x 3 matrix of the linear part (from finite differences, mm per mm)."""
        base = np.array(self.linear.TransformPoint((0.0, 0.0, 0.0)))
        cols = [np.array(self.linear.TransformPoint(tuple(e))) - base for e in np.eye(3) * 100.0]
        out: FloatArray = np.stack(cols, axis=1) / 100.0
        return out

    def _linear_inverse(self, points: FloatArray) -> FloatArray:
        """Points mapped by the inverse of the linear part (exact)."""
        m = self._linear_matrix()
        base = np.array(self.linear.TransformPoint((0.0, 0.0, 0.0)))
        out: FloatArray = (np.atleast_2d(points) - base) @ np.linalg.inv(m).T
        return out


# ====================================================================== images
def _whole(grid: ImageGrid) -> Box:
    return (0, 0, 0), grid.shape


def _cropped_image(
    ct_hu: npt.NDArray[np.float32], grid: ImageGrid, body: BoolMask, margin_mm: float
) -> SitkImage:
    """The clipped CT inside the body's box (grown by ``margin_mm``) as an image."""
    pad = int(np.ceil(margin_mm / min(grid.spacing_mm)))
    box = mask_box(body, pad=pad)
    if box is None:
        raise GeometryError(f"the body is empty on {grid.describe()}; nothing to register")
    sl = box_slices(box)
    clipped = np.clip(ct_hu[sl], *_CT_CLIP_HU)
    return image(clipped, grid.crop(sl))


def _isotropic(img: SitkImage, spacing_mm: float, default: float) -> SitkImage:
    """``img`` smoothed (anti-aliasing) and resampled to cubic voxels of ``spacing_mm``."""
    old = np.array(img.GetSpacing())
    sigma = np.sqrt(np.maximum(spacing_mm**2 - old**2, 0.0)) / 2.355
    if float(sigma.max()) > 0.05:
        img = sitk.SmoothingRecursiveGaussian(img, [float(max(s, 0.01)) for s in sigma])
    size = [max(2, int(np.ceil(n * s / spacing_mm))) for n, s in zip(img.GetSize(), old)]
    return sitk.Resample(
        img,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        (spacing_mm,) * 3,
        img.GetDirection(),
        default,
        sitk.sitkFloat32,
    )


def _feature_array(volume: Volume, shared: Sequence[str]) -> npt.NDArray[np.float32]:
    """The clipped CT with the shared organs painted as distinct values."""
    out = np.clip(volume.ct_hu, *_CT_CLIP_HU).astype(np.float32)
    for n, name in enumerate(shared, start=1):
        organ = volume.organs[name]
        if organ.bbox is not None:
            out[organ.bbox][organ.cropped_mask] = _CT_CLIP_HU[1] + n * _ORGAN_PAINT_STEP
    return out


# ====================================================================== stages
def _registration_method(settings: RegistrationSettings, iterations: int) -> SitkTransform:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([1.0, 0.0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return r


def _linear_stages(
    fixed: SitkImage, moving: SitkImage, settings: RegistrationSettings
) -> tuple[SitkTransform, dict[str, float]]:
    """Rigid then affine registration; the composite of both and the final metrics."""
    f_bone = sitk.BinaryThreshold(fixed, _INIT_BONE_HU, 1e9, 1, 0)
    m_bone = sitk.BinaryThreshold(moving, _INIT_BONE_HU, 1e9, 1, 0)
    init = sitk.CenteredTransformInitializer(
        f_bone, m_bone, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    rigid_method = _registration_method(settings, settings.rigid_iterations)
    rigid_method.SetInitialTransform(sitk.Euler3DTransform(init), inPlace=False)
    rigid = rigid_method.Execute(fixed, moving)
    metrics = {"rigid": float(rigid_method.GetMetricValue())}
    affine0 = sitk.AffineTransform(3)
    affine0.SetCenter(sitk.Euler3DTransform(init).GetCenter())
    affine_method = _registration_method(settings, settings.affine_iterations)
    affine_method.SetMovingInitialTransform(rigid)
    affine_method.SetInitialTransform(affine0, inPlace=False)
    affine = affine_method.Execute(fixed, moving)
    metrics["affine"] = float(affine_method.GetMetricValue())
    return sitk.CompositeTransform([rigid, affine]), metrics


def _demons(
    fixed: SitkImage,
    moving: SitkImage,
    linear: SitkTransform,
    settings: RegistrationSettings,
) -> tuple[SitkTransform, float]:
    """Multi-resolution symmetric-forces demons after the linear transform."""
    levels = len(settings.demons_iterations)
    field_img: SitkImage | None = None
    metric = float("nan")
    for level, iterations in enumerate(settings.demons_iterations):
        factor = 2 ** (levels - 1 - level)
        spacing = settings.deformable_spacing_mm * factor
        f = _isotropic(fixed, spacing, _CT_CLIP_HU[0])
        m = sitk.Resample(moving, f, linear, sitk.sitkLinear, _CT_CLIP_HU[0])
        if field_img is None:
            init = sitk.Image(f.GetSize(), sitk.sitkVectorFloat64, 3)
            init.CopyInformation(f)
        else:
            init = sitk.Resample(
                field_img, f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64
            )
        if iterations == 0:
            field_img = init
            continue
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations))
        demons.SetStandardDeviations(settings.field_smoothing_mm / spacing)
        demons.SetSmoothDisplacementField(True)
        field_img = demons.Execute(f, m, init)
        metric = float(demons.GetMetric())
    assert field_img is not None  # demons_iterations is never empty after the check
    field_t = sitk.DisplacementFieldTransform(sitk.Cast(field_img, sitk.sitkVectorFloat64))
    return field_t, metric


def register(
    fixed: Volume,
    moving: Volume,
    *,
    settings: RegistrationSettings | None = None,
) -> Registration:
    """Register the ``moving`` volume (the atlas) to the ``fixed`` one (the patient).

    Parameters
    ----------
    fixed, moving : Volume
        Patient and atlas: CT, grid (identity direction), body and organ masks.
    settings : RegistrationSettings, optional
        Tool defaults when omitted.

    Returns
    -------
    Registration

    Raises
    ------
    GeometryError
        When a grid is not in the identity direction or a body is empty.
    """
    s = settings or RegistrationSettings()
    if not s.demons_iterations:
        raise InvalidInputError("demons_iterations needs at least one level")
    check_identity(fixed.grid, "the patient CT")
    check_identity(moving.grid, "the atlas CT")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    f_img = _cropped_image(fixed.ct_hu, fixed.grid, fixed.body, s.margin_mm)
    m_img = _cropped_image(moving.ct_hu, moving.grid, moving.body, s.margin_mm)
    f_lin = _isotropic(f_img, s.affine_spacing_mm, _CT_CLIP_HU[0])
    m_lin = _isotropic(m_img, s.affine_spacing_mm, _CT_CLIP_HU[0])
    seconds["images"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    linear, metrics = _linear_stages(f_lin, m_lin, s)
    seconds["rigid+affine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = tuple(sorted(set(fixed.organs) & set(moving.organs)))
    f_feat = _cropped_image(_feature_array(fixed, shared), fixed.grid, fixed.body, s.margin_mm)
    m_feat = _cropped_image(_feature_array(moving, shared), moving.grid, moving.body, s.margin_mm)
    field_t, metrics["demons"] = _demons(f_feat, m_feat, linear, s)
    seconds["deformable"] = time.perf_counter() - t0
    full = sitk.CompositeTransform([linear, field_t])
    full.FlattenTransform()
    return Registration(
        transform=full,
        linear=linear,
        metrics=metrics,
        seconds=seconds,
        shared_organs=shared,
    )
