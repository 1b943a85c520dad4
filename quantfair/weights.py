"""Weight statistics of a model's FP tensors: per-layer variance, shape of the distribution,
quantization error, value/query scale, and overlap of two protected sets."""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Iterator

import numpy as np
import torch

from quantfair.quantize import Protection, QuantScheme, WeightBank

CHUNK = 1 << 20  # entries per float64 chunk of the passes of `weight_statistics`


def weight_statistics(weights: np.ndarray | list[np.ndarray]) -> dict[str, float]:
    """Variance, excess kurtosis (Fisher's, biased: the default of `scipy.stats.kurtosis`,
    m4 / m2^2 - 3 of the central moments), outlier share (|z| > 3) and near-zero share
    (|w| < 0.1 sd) of every entry of `weights` (one array or several taken together).

    Three passes over float64 chunks of a million entries (mean; m2 and m4; the shares), not
    a float64 copy of a layer with its temporaries (~4x a layer's parameters, in bytes x 8)."""
    arrays = [np.asarray(w).ravel() for w in (weights if isinstance(weights, list)
                                              else [weights])]
    count = sum(a.size for a in arrays)

    def chunks() -> Iterator[np.ndarray]:
        for a in arrays:
            for start in range(0, a.size, CHUNK):
                yield a[start:start + CHUNK].astype(np.float64)

    mean = sum(float(c.sum()) for c in chunks()) / count
    m2 = m4 = 0.0
    for c in chunks():
        c -= mean
        c *= c
        m2, m4 = m2 + float(c.sum()), m4 + float(np.dot(c, c))
    variance = m2 / count
    std = math.sqrt(variance)
    if std == 0:
        return {"variance": 0.0, "kurtosis": math.nan, "outlier_share": 0.0, "sparsity": 1.0}
    outliers = near_zero = 0
    for c in chunks():
        near_zero += np.count_nonzero(np.abs(c) < 0.1 * std)
        c -= mean
        outliers += np.count_nonzero(np.abs(c, out=c) > 3 * std)
    return {"variance": variance, "kurtosis": m4 / count / variance ** 2 - 3,
            "outlier_share": outliers / count, "sparsity": near_zero / count}


def layer_statistics(bank: WeightBank) -> dict[int, dict[str, float]]:
    """`weight_statistics` of each layer's matrix weights, by layer index (read from the
    bank's FP tensors in place)."""
    return {layer: weight_statistics(
                [bank.fp[c.name].detach().flatten().float().cpu().numpy() for c in parts])
            for layer, parts in bank.layer_matrices().items()}


# Part of the key of stored statistics: a change to how they are computed is never served
# the old numbers.
STATISTICS_DIGEST = hashlib.sha256("".join(
    inspect.getsource(f) for f in (weight_statistics, layer_statistics,
                                   WeightBank.layer_matrices)).encode()).hexdigest()[:12]


def layer_quant_error(bank: WeightBank, scheme: QuantScheme) -> dict[int, float]:
    """Relative Frobenius error ||w - q(w)|| / ||w|| of each layer's matrices."""
    error = {}
    quantized = bank.quantized(scheme)
    for layer, parts in bank.layer_matrices().items():
        diff = norm = 0.0
        for c in parts:
            w = bank.fp[c.name].float()
            diff += (w - quantized.get(c.name, w).float()).pow(2).sum().item()
            norm += w.pow(2).sum().item()
        error[layer] = math.sqrt(diff / norm) if norm else 0.0
    return error


def layer_variance_ranking(bank: WeightBank) -> list[int]:
    """Layers ordered by the variance of their matrix weights, highest first."""
    variances = layer_weight_variance(bank)
    return sorted(variances, key=lambda layer: -variances[layer])


def layer_weight_variance(bank: WeightBank) -> dict[int, float]:
    """Per layer index: the variance of every entry of its weight matrices taken together
    (torch's unbiased, n - 1; `weight_statistics` divides by n, the same to 1/n for layers
    of thousands of entries and more)."""
    return {layer: torch.cat([bank.fp[c.name].flatten().float() for c in parts]).var().item()
            for layer, parts in bank.layer_matrices().items()}


def value_weight_ratio(bank: WeightBank) -> float:
    """Mean |w| of the last layer's V projection over that of its Q and K projections (a
    fused projection's rows split as its transformers forward splits them: GPT-2's c_attn
    into three along the outputs, GPT-NeoX's and BLOOM's query_key_value per head,
    [heads, 3, head_dim])."""
    last = max(c.layer for c in bank.parts.values() if c.layer is not None)
    q, k, v = [], [], []
    for c in bank.parts.values():
        if c.layer != last or c.block != "attn" or c.kind != "weight":
            continue
        w = bank.fp[c.name].t() if c.transposed else bank.fp[c.name]  # (out, in)
        if c.role == "qkv":
            parts = (w.chunk(3, dim=0) if c.transposed else w.reshape(
                bank.model.config.num_attention_heads, 3, -1, w.shape[-1]).unbind(1))
            q.append(parts[0]), k.append(parts[1]), v.append(parts[2])
        elif c.role in ("q", "k", "v"):
            {"q": q, "k": k, "v": v}[c.role].append(w)
    mean = lambda ws: torch.cat([w.abs().flatten() for w in ws]).mean().item()  # noqa: E731
    return mean(v) / mean(q + k)


def overlap(bank: WeightBank, a: Protection, b: Protection) -> float:
    """Jaccard index of two protected sets, element by element."""
    inter = union = 0
    for name in set(a) | set(b):
        numel = bank.parts[name].numel
        mask_a, mask_b = _mask(a.get(name, False), numel), _mask(b.get(name, False), numel)
        inter += int(torch.count_nonzero(mask_a & mask_b))  # sum() would cast to int64
        union += int(torch.count_nonzero(mask_a | mask_b))
    return inter / union if union else 0.0


def _mask(keep: bool | torch.Tensor, numel: int) -> torch.Tensor:
    if isinstance(keep, torch.Tensor):
        return keep.flatten().cpu()
    return torch.full((numel,), bool(keep))
