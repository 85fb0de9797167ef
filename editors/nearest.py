"""Exact nearest stored key at matmul speed (GRACE's codebook, MELO's vector database).

The editors route with exact pairwise distances (``torch.cdist(...,
compute_mode="donot_use_mm_for_euclid_dist")``): batch-independent, but no BLAS, so at
10,000 keys the lookup costs as much as half a forward. :class:`NearestIndex` gives the
same ``(distance, index)`` as ``cdist(q, keys, exact).min(1)``, bit for bit:

1. screen: squared distances by one float64 matmul of query and keys centred on the
   keys' mean (cached: a float64 copy of the keys);
2. keep, per query, every key whose screened distance is within a rigorous rounding
   bound (float64 screen + the float32 cdist's relative error) of the screened minimum:
   the exact minimum is always among them;
3. exact ``cdist`` on those candidates only; the first minimum wins, as in ``min``.

The cache (keys centred on their mean in float64, their norms) is keyed by the keys
tensor object and its in-place version counter, so it is rebuilt after any edit,
``load_state_dict`` or ``reset``; :meth:`NearestIndex.clear` frees it.
"""

from __future__ import annotations

import torch

#: float32 unit roundoff
_U = 2.0**-24


def exact_cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact (non-matmul) Euclidean distances: no batch-dependent rounding."""
    return torch.cdist(a, b, p=2, compute_mode="donot_use_mm_for_euclid_dist")


class NearestIndex:
    """Exact nearest-key lookup over a keys tensor that changes rarely."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Drop the cache (it is rebuilt on the next lookup)."""
        self._keys: torch.Tensor | None = None
        self._mean = self._centred = None
        self._version = -1
        self._norms: torch.Tensor | None = None
        self._max_norm = 0.0

    def _prepare(self, keys: torch.Tensor) -> None:
        if keys is self._keys and keys._version == self._version:
            return
        self._keys, self._version = keys, keys._version
        k = keys.double()
        self._mean = k.mean(0)
        self._centred = k - self._mean
        self._norms = (self._centred * self._centred).sum(1)
        self._max_norm = float(self._norms.max()) if keys.shape[0] else 0.0

    def nearest(self, q: torch.Tensor, keys: torch.Tensor, small: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance [B], index [B]) of each query's nearest key, equal to
        ``exact_cdist(q, keys).min(1)``. ``q`` [B, d] and ``keys`` [K, d] float32, K >= 1."""
        q = q.float()
        K, d = keys.shape
        if K <= small or not torch.isfinite(q).all():
            return exact_cdist(q, keys).min(1)
        self._prepare(keys)
        if not self._max_norm < float("inf"):  # non-finite keys: no rounding bound, exact path
            return exact_cdist(q, keys).min(1)
        # float64, centred on the keys' mean: the screen's own rounding is negligible, so the
        # candidates are the keys within the exact float32 cdist's relative rounding of the minimum
        qc = q.double() - self._mean
        q2 = (qc * qc).sum(1)
        approx = (q2[:, None] + self._norms[None, :]) - 2.0 * (qc @ self._centred.T)  # [B, K] squared distances
        g64 = (d + 4) * 2.0**-53 / (1 - (d + 4) * 2.0**-53)
        g32 = (d + 4) * _U / (1 - (d + 4) * _U)
        lo = approx.min(1).values
        # screen error <= 2 g64 (|qc|^2 + |kc|^2), on both sides; cdist's float32 result is within
        # a relative g32 (+ sqrt rounding) of the true distance, on both sides
        margin = 8.0 * g64 * (q2 + self._max_norm) + 8.0 * g32 * lo.abs() + 1e-30
        cand = approx <= (lo + margin)[:, None]
        dist, idx = q.new_empty(q.shape[0]), torch.empty(q.shape[0], dtype=torch.long, device=q.device)
        for b in range(q.shape[0]):  # exact distances to each query's own candidates only
            cols = cand[b].nonzero()[:, 0]  # ascending: ties resolve to the first key, as min() does
            db, j = exact_cdist(q[b : b + 1], keys.index_select(0, cols))[0].min(0)
            dist[b], idx[b] = db, cols[j]
        return dist, idx
