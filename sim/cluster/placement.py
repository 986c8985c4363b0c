"""Placement: which GPUs hold which replica and stage.

Stage groups (EP x TP GPUs) are laid out in order replica by replica, stage by stage:
- a group that fits in a scale-up domain is placed inside one (never split across two);
- a larger group spans the fewest whole domains, spread evenly over them in whole TP groups
  (a TP group never crosses a domain: its all-reduces stay on the scale-up fabric);
so pipeline stages land on consecutive domains (racks, when a stage fills one) and
data-parallel replicas side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..spec.errors import SpecError
from ..spec.layout import Layout
from .topology import Cluster


@dataclass(frozen=True)
class Placement:
    gpus: np.ndarray  # [replica, stage, rank] -> global GPU id

    @property
    def replicas(self) -> int:
        return self.gpus.shape[0]

    @property
    def stages(self) -> int:
        return self.gpus.shape[1]

    def group(self, replica: int, stage: int) -> np.ndarray:
        return self.gpus[replica, stage]

    def used(self) -> np.ndarray:
        return np.sort(self.gpus.ravel())


def place(cluster: Cluster, layout: Layout, file: str | None = None) -> Placement:
    per_dom = cluster.hardware.domain_gpus
    n_dom = cluster.n_gpus // per_dom
    size = layout.stage_gpus
    span = math.ceil(size / per_dom)
    tp, ep = layout.tensor_parallel, layout.expert_parallel
    while span < ep and math.ceil(ep / span) * tp > per_dom:
        span += 1  # whole TP groups per domain must fit in a domain
    per = math.ceil(ep / span) * tp
    free = np.full(n_dom, per_dom)  # free GPUs left in each domain (filled in order)
    out = np.empty((layout.data_parallel, layout.pipeline_parallel, size), dtype=np.int64)
    d = 0
    for r in range(layout.data_parallel):
        for s in range(layout.pipeline_parallel):
            if span == 1:
                while d < n_dom and free[d] < size:
                    d += 1
                doms = [d]
            else:
                while d < n_dom and free[d] < per_dom:
                    d += 1
                doms = list(range(d, d + span))
            if doms[-1] >= n_dom:
                raise SpecError(
                    f"cannot place {layout.describe()} on {cluster.racks} rack(s): stage groups "
                    f"of {size} GPUs do not pack into {n_dom} scale-up domains of {per_dom}",
                    file=file, key="layout",
                    fix="add racks, or choose EP x TP that divides or is a multiple of "
                        f"{per_dom}")
            ranks = []
            left = size
            for dom in doms:
                take = min(per, left)
                start = dom * per_dom + (per_dom - free[dom])
                ranks.extend(range(start, start + take))
                free[dom] -= take
                left -= take
            out[r, s] = ranks
    return Placement(out)
