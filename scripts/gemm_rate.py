"""GFLOP/s of one linear layer's matmul on this CPU by the number of rows (tokens) it gets at once.

Why batched scoring gains little over a per-sample loop on a CPU: a probe of ~20 tokens already
gives each matmul ~20 rows, and the rate at 20 rows is most of the rate at hundreds. Shapes default
to ``smol_llava``'s FFN (hidden 576, intermediate 1536)::

    OMP_NUM_THREADS=1 python scripts/gemm_rate.py
    OMP_NUM_THREADS=1 python scripts/gemm_rate.py --k 2560 --n 10240 --rows 1,20,320   # OPT-2.7B FFN
"""

from __future__ import annotations

import argparse
import time

import torch


def rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` in float32, the best of repeated timings over ~``seconds``."""
    x, w = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        x @ w
    reps = max(1, int(seconds * 2e10 / (2 * m * k * n)) // 5)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        t0 = time.perf_counter()
        for _ in range(reps):
            x @ w
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=576, help="input features (default 576)")
    p.add_argument("--n", type=int, default=1536, help="output features (default 1536)")
    p.add_argument("--rows", default="1,4,10,20,40,80,160,320,640", help="row counts (tokens per matmul)")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), [rows, {a.k}] @ [{a.k}, {a.n}] float32")
    print("| rows | GFLOP/s |\n|--:|--:|")
    for m in (int(r) for r in a.rows.split(",")):
        print(f"| {m} | {rate(m, a.k, a.n):.1f} |")


if __name__ == "__main__":
    main()
