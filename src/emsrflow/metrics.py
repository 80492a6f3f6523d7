r"""Image-quality and segmentation metrics of one 2-D slice pair (EMSR paper, Sec. III.C).

Every function takes the *reference* (ground truth, HR image) first and the *prediction*
(restored, super-resolved image) second, checks that their shapes agree before anything
else (:class:`ValueError` naming both shapes) and computes in float64 whatever the input
dtype. Intensity metrics never guess the intensity scale: ``data_range`` (the ``L`` of
eqs. 17–18, e.g. ``255`` for 8-bit data, ``1`` for images scaled to [0, 1]) is required.

Intensity metrics
    :func:`psnr` (eq. 18), :func:`ssim` (eq. 17), the Fourier ring correlation
    :func:`frc_curve` (eq. 19) with its scalar summary :func:`frc_score` (the
    :math:`\overline{\text{FRC}}` reported in the paper's tables) and the resolution
    at a threshold crossing, :func:`frc_resolution`.
Segmentation metrics (phantom data with ground-truth labels, as in GPEMSR)
    :func:`membrane_watershed` segments a slice; :func:`voi` (split and merge
    variation of information, in bits) and :func:`adapted_rand_error` compare the
    segmentation with the ground-truth labels.
One slice pair
    :func:`slice_metrics` returns all of the above in one dict with a ``status`` that
    says whether the values may be averaged.
Aggregation
    :func:`finite_mean_std` averages a column of per-slice values and says how many
    entered the mean; non-finite values (the NaNs of excluded slices, the ``inf`` PSNR
    of identical images) are left out explicitly, never silently.

Conventions of the label images: label 0 of the *ground truth* is membrane/background
and is ignored by :func:`voi` and :func:`adapted_rand_error` (pixels the ground truth
does not assign to any object cannot count as split or merge errors). Label 0 of the
*prediction* is an ordinary segment; :func:`membrane_watershed` assigns every pixel to a
cell (labels 1, 2, …), so it produces no label 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import ndimage
from scipy.signal.windows import tukey
from skimage import filters, metrics, morphology, segmentation

__all__ = [
    "FRC_TUKEY_ALPHA",
    "SINGLE_IMAGE_FRC_CALIBRATION",
    "SINGLE_IMAGE_FRC_MIN_SIZE",
    "SSIM_SETTINGS",
    "adapted_rand_error",
    "finite_mean_std",
    "frc_curve",
    "frc_resolution",
    "frc_ring_sizes",
    "frc_score",
    "membrane_watershed",
    "psnr",
    "single_image_frc",
    "slice_metrics",
    "ssim",
    "voi",
]

#: Fraction of each axis covered by the cosine tapers of the FRC apodization window
#: (``scipy.signal.windows.tukey`` ``alpha``): 12.5 % on each side, flat in between.
FRC_TUKEY_ALPHA = 0.25

#: Keyword arguments passed to :func:`skimage.metrics.structural_similarity` by
#: :func:`ssim` (besides ``data_range``): the Gaussian-weighted SSIM of Wang et al. (2004).
SSIM_SETTINGS = {
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
    "K1": 0.01,
    "K2": 0.03,
}


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _check_pair(reference, prediction, *, ndim=None):
    """Return both images as float64 arrays after checking that their shapes agree."""
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(
            f"reference and prediction must have the same shape, got reference "
            f"{reference.shape} and prediction {prediction.shape}"
        )
    if ndim is not None and reference.ndim != ndim:
        raise ValueError(f"expected {ndim}-D images, got shape {reference.shape}")
    if reference.size == 0:
        raise ValueError(f"images must not be empty, got shape {reference.shape}")
    return reference.astype(np.float64), prediction.astype(np.float64)


def _check_positive(value, name):
    """Return ``value`` as a float after checking that it is finite and > 0."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _check_labels(labels_true, labels_pred):
    """Return both label images as integer arrays after checking their shapes."""
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape:
        raise ValueError(
            f"labels_true and labels_pred must have the same shape, got labels_true "
            f"{labels_true.shape} and labels_pred {labels_pred.shape}"
        )
    for name, lab in (("labels_true", labels_true), ("labels_pred", labels_pred)):
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{name} must be an integer label image, got dtype {lab.dtype}")
    return labels_true, labels_pred


# --------------------------------------------------------------------------------------
# PSNR and SSIM
# --------------------------------------------------------------------------------------


def psnr(reference, prediction, *, data_range):
    r"""Peak signal-to-noise ratio in dB (EMSR paper, eq. 18).

    .. math:: \text{PSNR} = 10 \log_{10} \frac{L^2}{\text{MSE}(x, \hat{x})}

    Parameters
    ----------
    reference, prediction : array_like
        Reference ``x`` and prediction ``x̂``; same shape, any dimensionality.
    data_range : float
        ``L``, the range of the intensity scale (``255`` for 8-bit data). Required.

    Returns
    -------
    float
        The PSNR in dB; ``inf`` for identical images (zero MSE), NaN if either image
        holds NaN. Equals :func:`skimage.metrics.peak_signal_noise_ratio` with the same
        ``data_range`` (computed here in float64 for every input dtype).

    Raises
    ------
    ValueError
        If the shapes differ or ``data_range`` is not a finite number > 0.
    """
    reference, prediction = _check_pair(reference, prediction)
    data_range = _check_positive(data_range, "data_range")
    mse = float(np.mean((reference - prediction) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(reference, prediction, *, data_range):
    r"""Mean structural similarity index of a 2-D slice (EMSR paper, eq. 17).

    .. math::

        \text{SSIM}(x, \hat{x}) = \frac{(2\mu_x\mu_{\hat{x}} + c_1)
        (2\sigma_{x\hat{x}} + c_2)}{(\mu_x^2 + \mu_{\hat{x}}^2 + c_1)
        (\sigma_x^2 + \sigma_{\hat{x}}^2 + c_2)}

    evaluated in local windows and averaged, as in Wang et al. (2004): the local means,
    variances and covariance are Gaussian-weighted (σ = 1.5 pixels, truncated at 3.5 σ,
    i.e. an 11 × 11 window, ``reflect`` boundary), population (not sample) covariance,
    ``c1 = (0.01 L)²`` and ``c2 = (0.03 L)²``. The SSIM map is averaged over the pixels
    at least 5 pixels (the window radius) from the border. This is exactly
    ``skimage.metrics.structural_similarity(reference, prediction,
    data_range=data_range, **SSIM_SETTINGS)`` on float64 copies of the images, which is
    what this function calls.

    Parameters
    ----------
    reference, prediction : array_like
        Reference ``x`` and prediction ``x̂``; same 2-D shape, at least 11 × 11.
    data_range : float
        ``L``, the range of the intensity scale (``255`` for 8-bit data). Required.

    Returns
    -------
    float
        The mean SSIM, at most 1. Constant images have no structure to compare, and
        the formula reduces to the luminance term: two equal constant images give 1,
        two different constants ``a``, ``b`` give ``(2ab + c1) / (a² + b² + c1)``.
        :func:`slice_metrics` reports such slices as ``"constant slice"`` with SSIM NaN.

    Raises
    ------
    ValueError
        If the shapes differ, the images are not 2-D or smaller than 11 × 11, or
        ``data_range`` is not a finite number > 0.
    """
    reference, prediction = _check_pair(reference, prediction, ndim=2)
    data_range = _check_positive(data_range, "data_range")
    if min(reference.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11 × 11 pixels, got {reference.shape}")
    return float(
        metrics.structural_similarity(reference, prediction, data_range=data_range, **SSIM_SETTINGS)
    )


# --------------------------------------------------------------------------------------
# Fourier ring correlation
# --------------------------------------------------------------------------------------


def _rings(shape):
    """Ring index of every FFT pixel (``-1`` beyond Nyquist) and the number of rings."""
    ny, nx = shape
    n = min(ny, nx)
    # Radius in cycles per pixel, normalised per axis, in units of one frequency bin of
    # the shorter axis; ring k holds the radii in [k - 1/2, k + 1/2).
    radius = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]) * n
    index = np.floor(radius + 0.5).astype(np.intp)
    n_rings = n // 2 + 1
    index[index >= n_rings] = -1
    return index, n_rings


def frc_ring_sizes(shape):
    """Count the Fourier pixels in each ring of :func:`frc_curve` for images of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        The 2-D image shape.

    Returns
    -------
    numpy.ndarray of int
        Pixel count ``n_k`` per ring, aligned with the frequencies of :func:`frc_curve`.
        Two independent noise images have FRC ≈ N(0, 1/n_k) in ring ``k`` (before
        apodization), which gives the 3σ curve ``3 / sqrt(n_k)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 2:
        raise ValueError(f"expected a 2-D shape of at least 2 × 2, got {shape}")
    index, n_rings = _rings(shape)
    return np.bincount(index[index >= 0], minlength=n_rings)


def _spectrum(image, window):
    """FFT of the apodized image with its weighted mean removed and its DC term kept."""
    weighted_sum = float(np.sum(image * window))
    mean = weighted_sum / float(np.sum(window))
    spectrum = np.fft.fft2((image - mean) * window)
    spectrum[0, 0] = weighted_sum
    return spectrum


def frc_curve(reference, prediction, *, apodize=True):
    r"""Fourier ring correlation of two 2-D images (EMSR paper, eq. 19).

    .. math::

        \text{FRC}(r_i) = \frac{\text{Re} \sum_{r_i} F_x \overline{F_{\hat{x}}}}
        {\sqrt{\sum_{r_i} |F_x|^2 \sum_{r_i} |F_{\hat{x}}|^2}}

    Each image is apodized, Fourier transformed, and the cross- and auto-spectra are
    summed over concentric rings.

    Apodization (``apodize=True``)
        Both images are multiplied by the same separable Tukey window,
        ``scipy.signal.windows.tukey(n, alpha=FRC_TUKEY_ALPHA)`` along each axis: flat
        over the central 75 %, a raised-cosine (Hann) taper over the outer 12.5 % on
        each side, zero at the outermost pixels. This removes the edge discontinuity of
        the periodic FFT, whose cross-shaped spectrum would otherwise correlate any two
        images.
    Mean removal
        Before apodization the window-weighted mean is subtracted from each image, so
        that the window's own spectrum (times the mean, common to both images) does not
        leak into the lowest rings and correlate them spuriously. The zero-frequency
        (DC) term is then set back to the weighted sum of the image, so ring 0 reports
        the correlation of the image means: 1 for two positive images, as in the usual
        FRC plots. Without apodization, the spectra are exactly those of the raw images.
    Rings
        The frequency of a Fourier pixel is normalised per axis (cycles per pixel,
        ``numpy.fft.fftfreq``), so rings are circles in cycles per pixel also for
        non-square images. Rings are one frequency bin of the shorter axis ``n`` wide:
        ring ``k`` holds the radii in ``[(k - 1/2) / n, (k + 1/2) / n)``, for
        ``k = 0, …, n // 2`` (the last ring reaches Nyquist, 0.5 cycles per pixel; the
        corners beyond it are not used).

    Parameters
    ----------
    reference, prediction : array_like
        Reference and prediction; same 2-D shape, at least 2 × 2.
    apodize : bool, optional
        Apply the Tukey window (default). Without it the FFT sees the edges.

    Returns
    -------
    frequencies : numpy.ndarray
        Ring centres ``k / n`` in cycles per pixel, from 0 to (about) 0.5.
    correlation : numpy.ndarray
        FRC per ring, in [-1, 1]; 1 on every ring for identical images (with non-zero
        mean). NaN on a ring where either image has no power (e.g. a constant image) or
        where an input is not finite.

    Raises
    ------
    ValueError
        If the shapes differ or the images are not 2-D of at least 2 × 2 pixels.
    """
    reference, prediction = _check_pair(reference, prediction, ndim=2)
    if min(reference.shape) < 2:
        raise ValueError(f"FRC needs images of at least 2 × 2 pixels, got {reference.shape}")
    ny, nx = reference.shape
    if apodize:
        window = np.outer(tukey(ny, FRC_TUKEY_ALPHA), tukey(nx, FRC_TUKEY_ALPHA))
    else:
        window = np.ones(reference.shape)
    f_ref = _spectrum(reference, window)
    f_pred = _spectrum(prediction, window)

    index, n_rings = _rings(reference.shape)
    inside = index >= 0
    ring = index[inside]

    def ring_sum(values):
        return np.bincount(ring, weights=values[inside], minlength=n_rings)

    cross = ring_sum((f_ref * np.conj(f_pred)).real)
    power_ref = ring_sum(np.abs(f_ref) ** 2)
    power_pred = ring_sum(np.abs(f_pred) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = cross / np.sqrt(power_ref * power_pred)
    correlation[~(power_ref * power_pred > 0)] = np.nan
    frequencies = np.arange(n_rings) / min(ny, nx)
    return frequencies, np.clip(correlation, -1.0, 1.0)


def frc_score(reference, prediction, *, apodize=True):
    r"""Mean FRC over all rings from 0 up to Nyquist: the paper's scalar FRC.

    The EMSR paper (Sec. III.C.3) defines the FRC curve of eq. 19 and reports "the
    average correlation across the spectra", :math:`\overline{\text{FRC}}`, as one number
    per image (0.19–0.37 on its data; higher is better). Accordingly this is the
    unweighted mean of :func:`frc_curve` over all its rings, ``k = 0, …, n // 2``
    (DC ring included; every ring counts once whatever its pixel count).

    Parameters
    ----------
    reference, prediction : array_like
        Reference and prediction; same 2-D shape.
    apodize : bool, optional
        Passed to :func:`frc_curve` (default ``True``).

    Returns
    -------
    float
        The mean FRC: 1 for identical images, about ``1 / (n // 2 + 1)`` (the DC ring)
        for independent noise images. NaN if any ring is NaN (an image without power
        in a ring, e.g. a constant image, or non-finite input).
    """
    _, correlation = frc_curve(reference, prediction, apodize=apodize)
    return float(np.mean(correlation))


def frc_resolution(frequencies, correlation, *, pixel_nm, threshold=1 / 7):
    """Resolution in nm where an FRC curve first drops below a threshold.

    The curve is scanned from its first non-zero frequency (ring 0, the DC term, carries
    no spatial information). At the first ring ``k`` whose correlation is below
    ``threshold`` the crossing frequency ``f`` is linearly interpolated between rings
    ``k - 1`` and ``k``, and the resolution is the period ``pixel_nm / f``. The curve is
    not smoothed: on small images its noise may trigger an early crossing.

    Parameters
    ----------
    frequencies, correlation : array_like
        An FRC curve as returned by :func:`frc_curve`: increasing frequencies in cycles
        per pixel starting at 0, and the correlation per ring.
    pixel_nm : float
        Pixel size in nanometres.
    threshold : float, optional
        The FRC threshold; the fixed 1/7 criterion by default.

    Returns
    -------
    float
        The resolution in nm (larger is worse). Special cases:

        * the curve never drops below ``threshold``: ``2 * pixel_nm``, the Nyquist
          limit of the pixel grid (resolution limited by sampling);
        * the first non-zero-frequency ring is already below: ``inf`` (nothing
          resolved, not even the coarsest ring);
        * a NaN ring is reached before any crossing: NaN.

    Raises
    ------
    ValueError
        If the arrays are not 1-D of equal length ≥ 2 or ``pixel_nm`` is not > 0.
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    correlation = np.asarray(correlation, dtype=np.float64)
    if frequencies.shape != correlation.shape or frequencies.ndim != 1:
        raise ValueError(
            f"frequencies and correlation must be 1-D of equal length, got shapes "
            f"{frequencies.shape} and {correlation.shape}"
        )
    if frequencies.size < 2:
        raise ValueError(f"an FRC curve needs at least 2 rings, got {frequencies.size}")
    pixel_nm = _check_positive(pixel_nm, "pixel_nm")
    threshold = float(threshold)

    start = int(np.argmax(frequencies > 0)) if np.any(frequencies > 0) else frequencies.size
    for k in range(start, frequencies.size):
        c = correlation[k]
        if np.isnan(c):
            return math.nan
        if c < threshold:
            if k == start:
                return math.inf
            c0, f0, f1 = correlation[k - 1], frequencies[k - 1], frequencies[k]
            f = f0 + (c0 - threshold) / (c0 - c) * (f1 - f0)
            return pixel_nm / f if f > 0 else math.inf
    return 2.0 * pixel_nm


#: Parameters ``(a, b, c, d)`` of the empirical calibration ``L(x) = a·exp(c·(x − b)) + d``
#: of the one-image FRC (Koho et al., Nat. Commun. 10, 3103, 2019; the values of their
#: miplib, ``miplib/analysis/resolution/fourier_ring_correlation.py``).
SINGLE_IMAGE_FRC_CALIBRATION = (0.95988146, 0.97979108, 13.90441896, 0.55146136)

#: Smallest image side accepted by :func:`single_image_frc` (sub-images of 8 × 8 pixels).
SINGLE_IMAGE_FRC_MIN_SIZE = 16


def _single_image_correction(x):
    """Koho et al.'s calibration ``L(x)`` at the crossing ``x`` (fraction of sub-Nyquist)."""
    a, b, c, d = SINGLE_IMAGE_FRC_CALIBRATION
    return a * math.exp(c * (x - b)) + d


def single_image_frc(image, *, pixel_nm, threshold=1 / 7, apodize=True):
    r"""Resolution of one 2-D image by the one-image FRC of Koho et al. (2019).

    Koho et al., "Fourier ring correlation simplifies image restoration in fluorescence
    microscopy", Nat. Commun. 10, 3103 (2019), split one image into two sub-images whose
    noise is independent (one pixel each out of every 2 × 2 block) and correlate them.

    Split
        The image is cropped to even sizes (the last row/column of an odd axis is
        dropped). Pixels ``(2i, 2j)`` form one sub-image and ``(2i + 1, 2j + 1)`` the
        other; the other diagonal, ``(2i, 2j + 1)`` and ``(2i + 1, 2j)``, forms a second
        pair. Each pair is correlated with :func:`frc_curve` (same apodization, rings and
        mean handling as the two-image FRC) and the two curves are averaged ring by ring,
        as miplib's ``calculate_single_image_frc(average=True)`` does.
    Raw resolution
        The sub-images sample the field on a grid of ``2 · pixel_nm``; the averaged curve
        is converted with :func:`frc_resolution` at that pixel size, giving the period
        ``R_sub = 4 · pixel_nm / x`` where ``x`` is the crossing frequency as a fraction of
        the sub-images' Nyquist frequency (``x = 1`` at 1 / (4 · pixel_nm) cycles/nm).
    Correction (Koho et al., Supplementary Notes 1–2; miplib)
        The two sub-images of a pair are shifted by one pixel along both axes, ``√2 ·
        pixel_nm`` diagonally. By the Fourier shift theorem this multiplies their cross
        spectrum by a phase ramp, so even two noise-free copies of one band-limited field
        decorrelate towards high frequencies: on a ring the real part averages to
        ``J0(2π f √2 pixel_nm) = J0(2.22 x)``, which falls to 1/7 at ``x ≈ 0.93``. The
        one-image curve therefore crosses the threshold early. Koho et al. calibrated
        this against the two-image FRC of image pairs of the same fields of view taken
        at several pixel sizes and fitted the exponential
        ``L(x) = a · exp(c · (x − b)) + d`` with the parameters
        :data:`SINGLE_IMAGE_FRC_CALIBRATION`. Their miplib code gives the sub-images the
        pixel size of the *full* image (a ``√2`` rescaling is left commented out in
        ``checkerboard_split``), reports ``2 · pixel_nm / x`` and divides it by
        ``L(x)``; this function returns exactly that number:

        .. math:: R = \frac{2\,p / x}{L(x)} = \frac{R_\text{sub}}{2\,L(x)}

        For crossings well below the sub-Nyquist frequency ``L ≈ 0.551``, so ``R ≈ 0.91 ·
        R_sub``; near ``x → 1`` the correction grows steeply and cancels the shift: a
        noise-free image whose curve falls only because of the shift (``x ≈ 0.93``) gets
        ``R ≈ 2.1 · pixel_nm``, about the Nyquist limit of the full grid. The calibration
        was made with miplib's pipeline (Hamming window, modulus of the cross spectrum,
        spline fit of the curve); here the Tukey window and real part of
        :func:`frc_curve` and the linear interpolation of :func:`frc_resolution` are
        used, so the correction is transferred, not re-calibrated.

    Limitations: the measurement assumes that the noise of neighbouring pixels is
    independent, as in a raw acquisition. Filtering, denoising or interpolation
    correlates the noise of neighbouring pixels, and the sub-images then agree far
    beyond the real resolution: a Gaussian-blurred copy of a noisy image gets a
    *smaller* (better) value than the image itself, and a bicubic upsampling usually
    never crosses the threshold at all. Compare such images after adding independent
    noise (as :func:`emsrflow.qc.volume_qc` does) or with the two-image FRC.

    Parameters
    ----------
    image : array_like
        2-D image, at least 16 × 16 pixels (after cropping to even sizes), any dtype.
    pixel_nm : float
        Pixel size of ``image`` in nm.
    threshold : float, optional
        FRC threshold, the fixed 1/7 criterion by default (Koho et al.'s choice).
    apodize : bool, optional
        Passed to :func:`frc_curve`: Tukey window on each sub-image (default).

    Returns
    -------
    dict
        ``resolution_nm``
            Corrected resolution in nm (larger is worse): NaN if the curve never drops
            below ``threshold`` (not limited by noise up to the sub-images' Nyquist
            frequency) or reaches a NaN ring first (constant or non-finite image);
            ``inf`` if even the first ring is below it.
        ``raw_resolution_nm``
            ``R_sub``, the uncorrected period on the sub-image grid
            (:func:`frc_resolution` with ``2 · pixel_nm``; ``4 · pixel_nm`` without a
            crossing).
        ``crossing``
            ``x``, the crossing frequency as a fraction of the sub-images' Nyquist
            frequency (NaN without a finite crossing).
        ``correction``
            ``2 · L(x)``, the divisor applied to ``R_sub`` (NaN without a crossing).
        ``frequencies``
            Ring centres in cycles/nm (the sub-images' rings, up to 1 / (4 · pixel_nm)).
        ``correlation``
            The averaged FRC of the two diagonal pairs per ring.

    Raises
    ------
    ValueError
        If the image is not 2-D, smaller than 16 × 16 pixels, or ``pixel_nm`` is not a
        finite number > 0.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"single-image FRC needs a 2-D image, got shape {image.shape}")
    pixel_nm = _check_positive(pixel_nm, "pixel_nm")
    ny, nx = (n - n % 2 for n in image.shape)
    if min(ny, nx) < SINGLE_IMAGE_FRC_MIN_SIZE:
        raise ValueError(
            f"single-image FRC needs an image of at least {SINGLE_IMAGE_FRC_MIN_SIZE} × "
            f"{SINGLE_IMAGE_FRC_MIN_SIZE} pixels, got shape {image.shape}"
        )
    image = image[:ny, :nx].astype(np.float64)
    frequencies, first = frc_curve(image[0::2, 0::2], image[1::2, 1::2], apodize=apodize)
    _, second = frc_curve(image[0::2, 1::2], image[1::2, 0::2], apodize=apodize)
    correlation = 0.5 * (first + second)
    sub_pixel = 2.0 * pixel_nm
    raw = frc_resolution(frequencies, correlation, pixel_nm=sub_pixel, threshold=threshold)
    crossed = bool(np.any(correlation[1:] < threshold))
    result = {
        "resolution_nm": float(raw) if not math.isfinite(raw) else math.nan,
        "raw_resolution_nm": float(raw),
        "crossing": math.nan,
        "correction": math.nan,
        "frequencies": frequencies / sub_pixel,
        "correlation": correlation,
    }
    if math.isfinite(raw) and crossed:
        x = float(2.0 * sub_pixel / raw)  # crossing frequency / sub-image Nyquist
        correction = 2.0 * _single_image_correction(x)
        result.update(resolution_nm=float(raw / correction), crossing=x, correction=correction)
    return result


# --------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------


def membrane_watershed(image, *, sigma=1.0, h=2.0, threshold=None):
    """Segment a 2-D EM slice into cells separated by dark membranes.

    A deliberately simple, parameter-light segmentation, so that segmentation metrics
    compare image quality rather than segmentation skill:

    1. smooth with a Gaussian of standard deviation ``sigma`` pixels;
    2. membrane mask = smoothed pixels darker than ``threshold`` (Otsu's threshold of
       the smoothed slice by default); everything brighter is cell interior;
    3. seeds = the regional maxima of the Euclidean distance transform of the cell
       interior that stand at least ``h`` pixels above their surroundings
       (h-maxima), one seed per connected maximum;
    4. seeded watershed (:func:`skimage.segmentation.watershed`) of the *smoothed*
       intensity with inverted sign, i.e. flooding from the bright cell interiors
       towards the dark membranes; no mask, so every pixel, membranes included, joins
       the cell it is flooded from.

    Parameters
    ----------
    image : array_like
        2-D slice; membranes darker than cell interiors. Any intensity scale.
    sigma : float, optional
        Gaussian smoothing in pixels (0 disables it).
    h : float, optional
        Minimum depth in pixels of a distance-transform maximum to seed a cell;
        larger merges more.
    threshold : float, optional
        Membrane threshold on the smoothed intensity; Otsu's by default.

    Returns
    -------
    numpy.ndarray of int32
        Labels 1, 2, … of the segments (no label 0). A constant slice, or one without
        any seed, is a single segment (all ones).

    Raises
    ------
    ValueError
        If the image is not 2-D or not finite everywhere.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image must be finite everywhere")
    smooth = ndimage.gaussian_filter(image, sigma) if sigma > 0 else image
    if np.ptp(smooth) == 0:
        return np.ones(image.shape, np.int32)
    if threshold is None:
        threshold = filters.threshold_otsu(smooth)
    interior = smooth > threshold
    distance = ndimage.distance_transform_edt(interior)
    seeds = morphology.h_maxima(distance, h) if h > 0 else morphology.local_maxima(distance)
    markers, n_seeds = ndimage.label(seeds & interior)
    if n_seeds == 0:
        return np.ones(image.shape, np.int32)
    return segmentation.watershed(-smooth, markers).astype(np.int32)


def voi(labels_true, labels_pred, *, ignore_labels=(0,)):
    """Variation of information between two segmentations, split and merge parts, in bits.

    ``split = H(pred | true)`` (over-segmentation: true objects cut into pieces) and
    ``merge = H(true | pred)`` (under-segmentation: true objects fused); VOI is their
    sum. Entropies use log base 2 (bits), as
    :func:`skimage.metrics.variation_of_information`, which computes them.

    Parameters
    ----------
    labels_true, labels_pred : array_like of int
        Ground-truth and predicted label images of the same shape.
    ignore_labels : sequence of int, optional
        Ground-truth labels whose pixels are left out (default: 0, membrane and
        background). Predicted label 0 is an ordinary segment.

    Returns
    -------
    split, merge : float
        Conditional entropies in bits; 0, 0 for identical segmentations.
    """
    labels_true, labels_pred = _check_labels(labels_true, labels_pred)
    split, merge = metrics.variation_of_information(
        labels_true, labels_pred, ignore_labels=tuple(ignore_labels)
    )
    return float(split), float(merge)


def adapted_rand_error(labels_true, labels_pred, *, ignore_labels=(0,)):
    """Adapted Rand error (ARAND, 1 − Rand F-score) of a segmentation, in [0, 1].

    Computed by :func:`skimage.metrics.adapted_rand_error` (α = 0.5); 0 is a perfect
    segmentation.

    Parameters
    ----------
    labels_true, labels_pred : array_like of int
        Ground-truth and predicted label images of the same shape.
    ignore_labels : sequence of int, optional
        Ground-truth labels whose pixels are left out (default: 0, membrane and
        background). Predicted label 0 is an ordinary segment.

    Returns
    -------
    float
        The adapted Rand error.
    """
    labels_true, labels_pred = _check_labels(labels_true, labels_pred)
    error, _, _ = metrics.adapted_rand_error(
        labels_true, labels_pred, ignore_labels=tuple(ignore_labels)
    )
    return float(error)


# --------------------------------------------------------------------------------------
# One slice pair and aggregation
# --------------------------------------------------------------------------------------


def slice_metrics(
    reference,
    prediction,
    *,
    data_range,
    pixel_nm,
    labels=None,
    segmentation=None,
    frc_threshold=1 / 7,
):
    """All metrics of one 2-D slice pair, with a status saying whether to use them.

    Parameters
    ----------
    reference, prediction : array_like
        Reference and prediction; same 2-D shape, at least 11 × 11 (SSIM window).
    data_range : float
        ``L`` of PSNR and SSIM, the range of the intensity scale. Required.
    pixel_nm : float
        Pixel size in nm, for the FRC resolution.
    labels : array_like of int, optional
        Ground-truth labels of the slice (0 = membrane/background, ignored). When given,
        the prediction's segmentation is compared with them.
    segmentation : array_like of int, optional
        The prediction's segmentation (e.g. a section of
        :func:`emsrflow.segment.segment_volume` of the predicted volume); default: the
        prediction segmented by :func:`membrane_watershed` (default settings).
    frc_threshold : float, optional
        Threshold of :func:`frc_resolution` (1/7 by default).

    Returns
    -------
    dict
        ``status``
            ``"ok"``; ``"non-finite reference"`` or ``"non-finite prediction"`` (NaN or
            inf pixels; every metric NaN); ``"constant slice"`` (the reference or the
            prediction is constant; PSNR, SSIM, ``frc`` and ``frc_resolution_nm`` NaN
            as they are meaningless or infinite, while the segmentation metrics, when
            requested, are still computed: a blank prediction is a complete merge).
        ``psnr``, ``ssim``
            :func:`psnr` and :func:`ssim` (``psnr`` is ``inf`` for identical images).
        ``frc``
            :func:`frc_score`, the mean FRC over the rings.
        ``frc_resolution_nm``
            :func:`frc_resolution` of the apodized :func:`frc_curve`.
        ``voi_split``, ``voi_merge``, ``voi``, ``arand``
            Only when ``labels`` is given: :func:`voi` (bits; ``voi`` is their sum, the
            variation of information) and :func:`adapted_rand_error`.

        Slices whose status is not ``"ok"`` should be excluded when averaging;
        :func:`finite_mean_std` does so for the NaNs.

    Raises
    ------
    ValueError
        If the shapes of reference, prediction (and labels) differ (the message names
        them), the images are not 2-D, or ``data_range``/``pixel_nm`` are not > 0.
    """
    reference, prediction = _check_pair(reference, prediction, ndim=2)
    data_range = _check_positive(data_range, "data_range")
    pixel_nm = _check_positive(pixel_nm, "pixel_nm")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != reference.shape:
            raise ValueError(
                f"labels must have the shape of the images, got labels {labels.shape} "
                f"and reference/prediction {reference.shape}"
            )

    nan = math.nan
    result = {"status": "ok", "psnr": nan, "ssim": nan, "frc": nan, "frc_resolution_nm": nan}
    if labels is not None:
        result.update(voi_split=nan, voi_merge=nan, voi=nan, arand=nan)

    if not np.all(np.isfinite(reference)):
        result["status"] = "non-finite reference"
        return result
    if not np.all(np.isfinite(prediction)):
        result["status"] = "non-finite prediction"
        return result

    if np.ptp(reference) == 0 or np.ptp(prediction) == 0:
        result["status"] = "constant slice"
    else:
        result["psnr"] = psnr(reference, prediction, data_range=data_range)
        result["ssim"] = ssim(reference, prediction, data_range=data_range)
        frequencies, correlation = frc_curve(reference, prediction)
        result["frc"] = float(np.mean(correlation))
        result["frc_resolution_nm"] = frc_resolution(
            frequencies, correlation, pixel_nm=pixel_nm, threshold=frc_threshold
        )

    if labels is not None:
        segments = membrane_watershed(prediction) if segmentation is None else segmentation
        result["voi_split"], result["voi_merge"] = voi(labels, segments)
        result["voi"] = result["voi_split"] + result["voi_merge"]
        result["arand"] = adapted_rand_error(labels, segments)
    return result


def finite_mean_std(values: Iterable[float], *, ddof: int = 0) -> tuple[float, float, int]:
    """Mean and standard deviation of the finite values, and how many there were.

    NaN and ±inf (e.g. metrics of excluded slices, or the infinite PSNR of identical
    images) are left out; ``len(values) - n`` of them were excluded.

    Parameters
    ----------
    values : iterable of float
        Per-slice values of one metric.
    ddof : int, optional
        Delta degrees of freedom of the standard deviation: 0 (default) for the
        population standard deviation, 1 for the sample one.

    Returns
    -------
    mean, std : float
        Over the finite values; NaN when there are none (std also NaN when
        ``n <= ddof``).
    n : int
        Number of finite values used.
    """
    values = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    values = values.astype(np.float64).ravel()
    finite = values[np.isfinite(values)]
    n = int(finite.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=ddof)) if n > ddof else math.nan
    return mean, std, n
