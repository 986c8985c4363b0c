"""Model shapes: the architecture (or the totals) and the parameter/KV derivation.

A model file gives either the architecture, from which total parameters, active parameters
and KV bytes per token are derived (rules in docs/presets.md), or the totals directly. Either
way the result is a `Model`: the figures the roofline and the engine need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import Bytes, NonNegativeInt, PositiveInt, PositiveNumber, Spec
from .precision import BYTES_PER_ELEMENT, Precision, precision_for_bytes

# --------------------------------------------------------------------------- architecture


class GQA(Spec):
    """Grouped-query attention (multi-head when kv_heads == heads)."""

    kind: Literal["gqa"]
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    qkv_bias: bool = False

    def params(self, hidden: int) -> int:
        q = hidden * self.heads * self.head_dim
        kv = 2 * hidden * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * hidden
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return q + kv + o + bias

    def kv_elements_per_token_per_layer(self) -> int:
        return 2 * self.kv_heads * self.head_dim

    def attention_flops_per_context_token(self) -> int:
        """Multiply-adds x 2 of QK^T and PV for one query token against one context token."""
        return 2 * 2 * self.heads * self.head_dim

    def prefill_attention_flops_per_context_token(self) -> int:
        """The same in a prompt's (context) attention kernel."""
        return self.attention_flops_per_context_token()


class MLA(Spec):
    """Multi-head latent attention (DeepSeek-V2/V3): a compressed KV latent is cached."""

    kind: Literal["mla"]
    heads: PositiveInt
    q_lora_rank: NonNegativeInt
    kv_lora_rank: PositiveInt
    qk_nope_head_dim: PositiveInt
    qk_rope_head_dim: PositiveInt
    v_head_dim: PositiveInt

    def params(self, hidden: int) -> int:
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank:
            q = hidden * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.heads * qk
        else:
            q = hidden * self.heads * qk
        kv_a = hidden * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
        kv_b = self.kv_lora_rank * self.heads * (self.qk_nope_head_dim + self.v_head_dim)
        o = self.heads * self.v_head_dim * hidden
        return q + kv_a + kv_b + o

    def kv_elements_per_token_per_layer(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    def attention_flops_per_context_token(self) -> int:
        """Absorbed MLA decode: scores over (latent + rope) and values over the latent."""
        return 2 * self.heads * (2 * self.kv_lora_rank + self.qk_rope_head_dim)

    def prefill_attention_flops_per_context_token(self) -> int:
        """MLA context attention runs up-projected (K and V per head from the latent, as
        FlashMLA's and TensorRT-LLM's context kernels do): scores over qk_nope + qk_rope,
        values over v_head, 3.4x fewer FLOPs per pair than the absorbed form for
        DeepSeek-V3."""
        return 2 * self.heads * (self.qk_nope_head_dim + self.qk_rope_head_dim
                                 + self.v_head_dim)


Attention = Annotated[GQA | MLA, Field(discriminator="kind")]


class MoEArch(Spec):
    experts: PositiveInt
    top_k: PositiveInt
    shared_experts: NonNegativeInt = 0
    expert_ffn_hidden: PositiveInt
    shared_ffn_hidden: PositiveInt | None = Field(
        None, description="width of a shared expert when it differs from expert_ffn_hidden")
    groups: PositiveInt = Field(
        1, description="expert groups for group-limited routing (DeepSeek-V3 n_group)")
    topk_groups: PositiveInt | None = Field(
        None, description="groups a token may route into (DeepSeek-V3 topk_group); "
                          "default: all groups (unlimited)")

    @model_validator(mode="after")
    def _k_within_e(self) -> MoEArch:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds experts ({self.experts})")
        if self.experts % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide experts ({self.experts})")
        if self.topk_groups is not None and self.topk_groups > self.groups:
            raise ValueError(f"topk_groups ({self.topk_groups}) exceeds groups ({self.groups})")
        return self


class Architecture(Spec):
    layers: PositiveInt
    hidden: PositiveInt
    vocab: PositiveInt
    tied_embeddings: bool = False
    attention: Attention
    ffn_hidden: NonNegativeInt = Field(0, description="dense MLP width (0: no dense MLP)")
    dense_layers: NonNegativeInt = Field(description="the first N layers are dense")
    moe: MoEArch | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        if self.dense_layers > self.layers:
            raise ValueError(f"dense_layers ({self.dense_layers}) exceeds layers ({self.layers})")
        if self.moe is None and self.dense_layers != self.layers:
            raise ValueError("a model without `moe` must have dense_layers == layers")
        if self.dense_layers and not self.ffn_hidden:
            raise ValueError("dense layers need ffn_hidden > 0")
        return self


# --------------------------------------------------------------------------- file format


class MoETotals(Spec):
    experts: PositiveInt
    top_k: PositiveInt
    moe_layers: PositiveInt
    shared_experts: NonNegativeInt = 0
    groups: PositiveInt = 1
    topk_groups: PositiveInt | None = None


class Published(Spec):
    """What the model card states, for checking the derivation (not used in modelling)."""

    total_params: PositiveNumber
    active_params: PositiveNumber


class ModelFile(Spec):
    name: str
    description: str = ""
    sources: dict[str, str] = Field(default_factory=dict)
    published: Published | None = None
    weight_precision: Precision | None = Field(
        None, description="precision of the weights; sets bytes_per_param")
    bytes_per_param: PositiveNumber | None = Field(
        None, description="explicit bytes per parameter (overrides weight_precision)")
    compute_precision: Precision | None = Field(
        None, description="matmul precision; default: the weight precision")
    attention_precision: Precision | None = Field(
        None, description="weights of the attention projections; default: weight_precision")
    moe_precision: Precision | None = Field(
        None, description="weights of the routed experts; default: weight_precision")
    dense_precision: Precision | None = Field(
        None, description="weights of the dense MLPs, shared experts, routers, embedding and "
                          "output head; default: weight_precision")
    kv_precision: Precision = "bf16"
    architecture: Architecture | None = None
    # totals form (scenario-format.md "Inline model")
    layers: PositiveInt | None = None
    hidden: PositiveInt | None = None
    total_params: PositiveNumber | None = None
    active_params: PositiveNumber | None = None
    kv_bytes_per_token: Bytes | None = None
    moe: MoETotals | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ModelFile:
        totals = ("layers", "hidden", "total_params", "active_params", "kv_bytes_per_token", "moe")
        given = [k for k in totals if getattr(self, k) is not None]
        if self.architecture is not None and given:
            raise ValueError(
                f"give either `architecture` or the totals, not both (also given: {given})")
        if self.architecture is None:
            missing = [k for k in totals[:5] if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    "a model without `architecture` needs " + ", ".join(missing))
            if self.active_params > self.total_params:
                raise ValueError("active_params exceeds total_params")
        if self.weight_precision is None and self.bytes_per_param is None:
            raise ValueError("give weight_precision (e.g. fp8) or bytes_per_param")
        return self


# --------------------------------------------------------------------------- resolved model


@dataclass(frozen=True)
class Part:
    """One row of the derivation table printed by `racksim show model`."""

    name: str
    total: float
    active: float
    rule: str


@dataclass(frozen=True)
class MoE:
    experts: int
    top_k: int
    shared_experts: int
    moe_layers: int
    groups: int = 1          # group-limited routing: a token picks its experts from
    topk_groups: int = 1     # `topk_groups` of `groups` equal groups (equal: unlimited)

    @property
    def group_limited(self) -> bool:
        return self.topk_groups < self.groups


@dataclass(frozen=True)
class Model:
    """Everything the roofline and engine need about a model, in plain numbers."""

    name: str
    layers: int
    hidden: int
    total_params: float
    active_params: float
    routed_expert_params: float          # all routed experts of all MoE layers together
    bytes_per_param: float
    compute_precision: str
    kv_bytes_per_token: float            # all layers together
    kv_bytes_per_element: float
    attention_flops_per_context_token: float  # all layers, per query token per context token
    moe: MoE | None
    parts: tuple[Part, ...] = ()
    published: Published | None = None
    sources: dict[str, str] = field(default_factory=dict)
    architecture: Architecture | None = None   # the shapes, when the file gives them
    # per component (COMPONENTS): bytes per parameter and matmul precision
    component_bytes: dict[str, float] = field(default_factory=dict)
    component_precision: dict[str, str] = field(default_factory=dict)

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def bytes_of(self, component: str) -> float:
        """Bytes per parameter of a component ("attention", "moe", "dense")."""
        return self.component_bytes.get(component, self.bytes_per_param)

    def precision_of(self, component: str) -> str:
        """Matmul precision of a component's GEMMs."""
        return self.component_precision.get(component, self.compute_precision)

    @property
    def routed_weight_bytes(self) -> float:
        return self.routed_expert_params * self.bytes_of("moe")

    @property
    def weight_bytes(self) -> float:
        """All weights, each part at its component's precision."""
        if not self.parts:   # totals form: routed experts, and the rest as dense
            return self.routed_weight_bytes + (self.total_params - self.routed_expert_params
                                               ) * self.bytes_of("dense")
        return sum(p.total * self.bytes_of(PART_COMPONENT.get(p.name, "dense"))
                   for p in self.parts)

    @property
    def sparsity(self) -> float:
        return self.total_params / self.active_params


COMPONENTS = ("attention", "moe", "dense")
PART_COMPONENT = {"attention": "attention", "routed experts": "moe"}   # the rest: dense


def resolve(spec: ModelFile) -> Model:
    """Derive the totals (or take them as given) and return the resolved `Model`."""
    bpp = spec.bytes_per_param or BYTES_PER_ELEMENT[spec.weight_precision]
    compute = spec.compute_precision or spec.weight_precision or precision_for_bytes(bpp)
    if compute is None:
        raise ValueError(f"bytes_per_param {bpp} is not a standard precision; "
                         "set compute_precision (e.g. fp8)")
    kv_b = BYTES_PER_ELEMENT[spec.kv_precision]
    cbytes, cprec = {}, {}
    for c in COMPONENTS:
        p = getattr(spec, f"{c}_precision")
        if p is not None:   # matmuls at the component's precision unless one is forced
            cbytes[c], cprec[c] = BYTES_PER_ELEMENT[p], spec.compute_precision or p
    common = dict(name=spec.name, bytes_per_param=bpp, compute_precision=compute,
                  kv_bytes_per_element=kv_b, published=spec.published,
                  sources=dict(spec.sources), component_bytes=cbytes,
                  component_precision=cprec)
    if spec.architecture is None:
        moe = None
        routed = 0.0
        if spec.moe is not None:
            m = spec.moe
            moe = MoE(m.experts, m.top_k, m.shared_experts, m.moe_layers, m.groups,
                      m.topk_groups or m.groups)
            # total = rest + routed; active = rest + routed * k/E  =>  routed below
            if m.experts > m.top_k:
                routed = (spec.total_params - spec.active_params) * m.experts / (m.experts - m.top_k)
        return Model(layers=spec.layers, hidden=spec.hidden, total_params=spec.total_params,
                     active_params=spec.active_params, routed_expert_params=routed,
                     kv_bytes_per_token=spec.kv_bytes_per_token,
                     attention_flops_per_context_token=0.0, moe=moe, **common)
    return _derive(spec.architecture, common, kv_b)


def _derive(a: Architecture, common: dict, kv_b: float) -> Model:
    h, n_moe = a.hidden, a.layers - a.dense_layers
    parts: list[Part] = []

    def add(name: str, total: float, active: float, rule: str) -> None:
        parts.append(Part(name, float(total), float(active), rule))

    attn = a.attention.params(h)
    add("attention", a.layers * attn, a.layers * attn, f"{a.layers} layers x {attn:,}")
    add("norms", a.layers * 2 * h + h, a.layers * 2 * h + h, "2 x hidden per layer + final")
    if a.dense_layers:
        mlp = 3 * h * a.ffn_hidden
        add("dense MLP", a.dense_layers * mlp, a.dense_layers * mlp,
            f"{a.dense_layers} layers x 3 x {h} x {a.ffn_hidden}")
    routed = 0.0
    moe = None
    if a.moe is not None and n_moe:
        m = a.moe
        expert = 3 * h * m.expert_ffn_hidden
        routed = n_moe * m.experts * expert
        add("routed experts", routed, n_moe * m.top_k * expert,
            f"{n_moe} layers x {m.experts} experts x 3 x {h} x {m.expert_ffn_hidden} "
            f"(active: top {m.top_k})")
        if m.shared_experts:
            shared = 3 * h * (m.shared_ffn_hidden or m.expert_ffn_hidden)
            add("shared experts", n_moe * m.shared_experts * shared,
                n_moe * m.shared_experts * shared,
                f"{n_moe} layers x {m.shared_experts} x 3 x {h} x "
                f"{m.shared_ffn_hidden or m.expert_ffn_hidden}")
        add("routers", n_moe * h * m.experts, n_moe * h * m.experts,
            f"{n_moe} layers x {h} x {m.experts}")
        moe = MoE(m.experts, m.top_k, m.shared_experts, n_moe, m.groups,
                  m.topk_groups or m.groups)
    emb = a.vocab * h
    add("embedding", emb, 0.0, f"{a.vocab} x {h} (a lookup: not active)")
    if not a.tied_embeddings:
        add("output head", emb, emb, f"{a.vocab} x {h}")
    else:
        parts[-1] = Part("embedding (tied head)", emb, emb, f"{a.vocab} x {h}")
    kv_elems = a.attention.kv_elements_per_token_per_layer()
    return Model(
        layers=a.layers, hidden=h,
        total_params=sum(p.total for p in parts),
        active_params=sum(p.active for p in parts),
        routed_expert_params=routed,
        kv_bytes_per_token=a.layers * kv_elems * kv_b,
        attention_flops_per_context_token=float(
            a.layers * a.attention.attention_flops_per_context_token()),
        moe=moe, parts=tuple(parts), architecture=a, **common)
