"""Landmark metrics: heatmap decoding, NME, failure rate, AUC and the CED curve.

Conventions (shared by the whole package):

* Continuous pixel coordinates: pixel index i covers [i, i + 1), its centre is i + 0.5.
* Points are float arrays (N, K, 2) with columns (x, y).
* `affine` is a (N, 2, 3) matrix mapping ORIGINAL-image coords -> HEATMAP coords.
* An NME is a fraction of the inter-ocular distance ||g36 - g45|| (outer eye corners,
  0-based iBUG-68 indices); `summarize` and `evaluate_subsets` report percentages, as
  the seed tables do.

Everything here is vectorised over images and points (no Python loops over either).

Failure rate and AUC
    FR@t  = fraction of images whose NME is strictly greater than t.
    CED(e) = fraction of images whose NME is <= e (cumulative error distribution).
    AUC@t = (1 / t) * integral_0^t CED(e) de, integrated with the trapezoidal rule on a
            uniform grid of `AUC_STEPS` intervals over [0, t]. The grid is fine enough
            that the result is within 1 / AUC_STEPS of the exact area of the step
            function (which equals mean(max(0, t - nme)) / t).
"""
from __future__ import annotations

import numpy as np
import torch

# 0-based iBUG-68 indices of the outer eye corners (the inter-ocular normaliser).
INTEROCULAR_INDICES = (36, 45)
# Thresholds reported by `summarize`, as fractions of the inter-ocular distance.
THRESHOLDS = (0.08, 0.10)
# Intervals of the uniform grid the AUC is integrated on.
AUC_STEPS = 10_000


# --------------------------------------------------------------------------- decoding

def decode_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """Landmark positions from heatmaps, by the reference HRNet rule.

    For each map: take the argmax pixel (i = column, j = row; the first maximum on
    ties); when that pixel is not on the map border, move a quarter pixel toward the
    larger of its left/right neighbours and toward the larger of its up/down
    neighbours (no move on equal neighbours); add 0.5 to land on continuous coords.
    As in the reference, a border argmax is left unshifted on both axes.

    Args:
        heatmaps: (N, K, H, W) tensor, any float dtype.
    Returns:
        (N, K, 2) float32 tensor of (x, y) in heatmap continuous pixel coords.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"decode_heatmaps expects (N, K, H, W) heatmaps, got shape {tuple(heatmaps.shape)}")
    n, k, height, width = heatmaps.shape
    flat = heatmaps.detach().float().reshape(n, k, height * width)
    index = flat.argmax(dim=-1)
    x = index % width
    y = index // width

    def value_at(xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return flat.gather(-1, (yy * width + xx).unsqueeze(-1)).squeeze(-1)

    # Clamping keeps the gathers in range; border points get no shift anyway.
    left, right = (x - 1).clamp(min=0), (x + 1).clamp(max=width - 1)
    up, down = (y - 1).clamp(min=0), (y + 1).clamp(max=height - 1)
    interior = ((x > 0) & (x < width - 1) & (y > 0) & (y < height - 1)).float()
    shift_x = torch.sign(value_at(right, y) - value_at(left, y)) * 0.25 * interior
    shift_y = torch.sign(value_at(x, down) - value_at(x, up)) * 0.25 * interior
    return torch.stack((x.float() + shift_x + 0.5, y.float() + shift_y + 0.5), dim=-1)


def apply_affine(points, affine) -> torch.Tensor:
    """Map (N, K, 2) points through (N, 2, 3) affine matrices; float64 tensor (N, K, 2)."""
    points = torch.as_tensor(points, dtype=torch.float64)
    affine = torch.as_tensor(affine, dtype=torch.float64)
    return points @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]


def heatmap_to_image(coords, affine) -> torch.Tensor:
    """Heatmap continuous coords -> original-image continuous pixel coords.

    Args:
        coords: (N, K, 2) points in heatmap pixels (e.g. from `decode_heatmaps`).
        affine: (N, 2, 3) matrices mapping original-image coords -> heatmap coords.
    Returns:
        (N, K, 2) float64 tensor of points in original-image pixels (inverse affine).
    """
    coords = torch.as_tensor(coords, dtype=torch.float64)
    affine = torch.as_tensor(affine, dtype=torch.float64).to(coords.device)
    if coords.ndim != 3 or affine.ndim != 3 or affine.shape[1:] != (2, 3) or affine.shape[0] != coords.shape[0]:
        raise ValueError(f"heatmap_to_image expects coords (N, K, 2) and affine (N, 2, 3), "
                         f"got {tuple(coords.shape)} and {tuple(affine.shape)}")
    linear_inverse = torch.linalg.inv(affine[:, :, :2])
    return (coords - affine[:, None, :, 2]) @ linear_inverse.transpose(1, 2)


def flip_heatmaps(heatmaps: torch.Tensor, permutation=None) -> torch.Tensor:
    """Heatmaps of the horizontally mirrored image, from those of the image (or back).

    Mirrors every map left-right (x -> W - x in continuous coords, i.e. column i -> W - 1 - i)
    and reorders the channels so that each landmark takes its mirror partner's map.
    Used by the flip test: average(model(img), flip_heatmaps(model(flipped img))).

    Args:
        heatmaps: (N, K, H, W) tensor.
        permutation: (K,) 0-based channel order; defaults to nbutils.data.FLIP_PERMUTATION (iBUG-68).
    """
    if permutation is None:
        from nbutils.data import FLIP_PERMUTATION as permutation
    permutation = torch.as_tensor(np.asarray(permutation), dtype=torch.long, device=heatmaps.device)
    if heatmaps.ndim != 4 or heatmaps.shape[1] != permutation.numel():
        raise ValueError(f"flip_heatmaps: heatmaps of shape {tuple(heatmaps.shape)} do not match a "
                         f"flip permutation of {permutation.numel()} landmarks")
    return torch.flip(heatmaps, dims=(-1,))[:, permutation]


# --------------------------------------------------------------------------- errors

def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def nme_per_image(pred, gt, normaliser_indices=INTEROCULAR_INDICES) -> np.ndarray:
    """Normalised mean error of each image.

    Args:
        pred, gt: (N, K, 2) points in original-image pixels (tensors or arrays).
        normaliser_indices: the two gt landmarks whose distance normalises the error
            (default: outer eye corners 36 and 45 -> inter-ocular NME).
    Returns:
        (N,) float64 array: mean over landmarks of ||pred - gt||, as a fraction of ||g_a - g_b||.
    """
    pred, gt = _as_numpy(pred), _as_numpy(gt)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"nme_per_image expects pred and gt of the same shape (N, K, 2), "
                         f"got {pred.shape} and {gt.shape}")
    a, b = normaliser_indices
    if max(a, b) >= gt.shape[1]:
        raise ValueError(f"nme_per_image: normaliser indices {normaliser_indices} need more than "
                         f"{gt.shape[1]} landmarks")
    normaliser = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
    degenerate = np.flatnonzero(~(normaliser > 0))
    if degenerate.size:
        raise ValueError(f"nme_per_image: zero inter-ocular distance (landmarks {a} and {b} coincide) "
                         f"for image(s) at batch position {degenerate.tolist()}")
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) / normaliser


def _checked_nmes(nmes) -> np.ndarray:
    nmes = _as_numpy(nmes).reshape(-1)
    if nmes.size == 0:
        raise ValueError("no images: cannot compute a metric over an empty set of NMEs")
    return nmes


def failure_rate(nmes, threshold: float = 0.08) -> float:
    """Fraction of images whose NME (fraction of inter-ocular distance) exceeds `threshold`."""
    return float((_checked_nmes(nmes) > threshold).mean())


def ced_curve(nmes, threshold: float = 0.10, steps: int = 1000):
    """Cumulative error distribution on a uniform grid.

    Returns:
        (errors, fractions): `errors` is the (steps + 1,) grid 0..threshold (fractions of the
        inter-ocular distance), `fractions[i]` the fraction of images with NME <= errors[i].
    """
    nmes = np.sort(_checked_nmes(nmes))
    errors = np.linspace(0.0, threshold, steps + 1)
    fractions = np.searchsorted(nmes, errors, side="right") / nmes.size
    return errors, fractions


def auc(nmes, threshold: float = 0.08, steps: int = AUC_STEPS) -> float:
    """Area under the CED curve on [0, threshold], divided by threshold: a fraction in [0, 1].

    Trapezoidal rule on a uniform grid of `steps` intervals (see the module docstring).
    """
    errors, fractions = ced_curve(nmes, threshold, steps)
    return float(np.trapezoid(fractions, errors) / threshold)


def summarize(nmes) -> dict:
    """Seed-style summary of one subset's per-image NMEs (fractions of inter-ocular distance).

    Returns:
        {"nme": mean NME in %, "fr_0.08", "fr_0.10": failure rates in %,
         "auc_0.08", "auc_0.10": AUC in %, "n": number of images}.
    """
    nmes = _checked_nmes(nmes)
    summary = {"nme": float(nmes.mean() * 100.0)}
    for threshold in THRESHOLDS:
        summary[f"fr_{threshold:.2f}"] = failure_rate(nmes, threshold) * 100.0
    for threshold in THRESHOLDS:
        summary[f"auc_{threshold:.2f}"] = auc(nmes, threshold) * 100.0
    summary["n"] = int(nmes.size)
    return summary


def evaluate_subsets(nmes_by_subset: dict) -> dict:
    """Summaries in the seed's column order: common, challenge, full, test.

    When both common and challenge are given, `full` is summarised over the union of their
    images (the concatenation of their per-image NMEs, so it is weighted by image counts, not
    a mean of the two means), replacing any `full` entry of the input.
    Other subset names (e.g. other datasets' splits) are summarised as given, after these.
    """
    return {name: summarize(nmes) for name, nmes in with_full_set(nmes_by_subset).items()}


def with_full_set(nmes_by_subset: dict) -> dict:
    """Per-image NMEs per subset in the seed's column order (common, challenge, full, test, then any
    others), with `full` = the union of common and challenge images when both are given."""
    per_subset = {name: _checked_nmes(nmes) for name, nmes in nmes_by_subset.items()}
    if "common" in per_subset and "challenge" in per_subset:
        per_subset["full"] = np.concatenate([per_subset["common"], per_subset["challenge"]])
    order = [name for name in ("common", "challenge", "full", "test") if name in per_subset]
    order += [name for name in per_subset if name not in order]
    return {name: per_subset[name] for name in order}
