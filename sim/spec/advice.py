"""What a scenario asks that deployments avoid because it is slow: warnings, not errors (the
run goes on, and the warning goes into summary.json `warnings` and the printed summary).

One rule today: attention tensor-parallel over more GPUs than its KV cache splits. Heads split
over the GPUs that share the dense part (`layout.dense: sharded`: the whole stage group), but
a KV cache splits only as far as it has heads of its own (GQA: kv_heads; MLA: one latent
shared by every head), so every GPU beyond that re-reads the same cache (sim/engine/kernels.py).
With MLA and expert parallelism this is the difference between a deployment and a mistake:
DeepSeek-V3 at EP 64 with its attention sharded reads every sequence's latent on all 64 GPUs.
Deployments run such attention data-parallel (`layout.dense: replicated`)."""

from __future__ import annotations

from .layout import Layout, dense_share
from .model import MLA, Model


def layout_warnings(model: Model, layout: Layout, op_timing: str) -> list[str]:
    """Sentences for summary.json `warnings` about the layout (empty when nothing to say).
    Only the per-kernel op timing reads the KV per GPU this way; the pooled rule spreads it."""
    arch = model.architecture
    if op_timing == "pooled" or arch is None:
        return []
    t = dense_share(layout)
    a = arch.attention
    split = 1 if isinstance(a, MLA) else a.kv_heads
    # only expert parallelism sharding the dense part: TP alone beyond the KV heads is how
    # tensor-parallel serving runs (each KV head's cache on the GPUs of its query heads)
    if layout.dense != "sharded" or layout.stage_gpus <= layout.tensor_parallel \
            or t <= split:
        return []
    what = ("its MLA latent cache is shared by every head" if isinstance(a, MLA)
            else f"it has {a.kv_heads} KV heads")
    return [f"attention is tensor-parallel over the {t} GPUs of a stage (layout.dense: "
            f"sharded), but {what}, so each sequence's KV cache is read by "
            f"{t // max(split, 1)} GPUs at once; deployments run such attention data-parallel "
            "beside expert parallelism: set layout.dense: replicated"]
