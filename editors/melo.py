"""MELO: dynamic LoRA blocks indexed by a vector database (Yu et al., AAAI 2024).

Reference: ECNU-ICALK/MELO (``peft_egg/src/peft/tuners/melo.py``: ``VecDB``,
``GraceLinear``, ``dynamic``, LoRA ``Linear``; ``melo/algs/lora.py``: the edit
loop). Written from the paper and that code; nothing is copied.

Mechanics
---------
* **Key.** The output of one FFN matrix (``key_layer``/``key_role``, the
  reference's ``grace_layer``) at each sample's last prompt token
  (``backbone.context.prompt_last``; the reference uses ``key_id: -1``, the last
  input token). The key layer must come strictly before every LoRA layer, so a
  key never depends on the LoRA it selects.
* **Vector database.** Clusters (centre, radius, target label), each holding
  points (key, LoRA block id). A query routes to the nearest cluster; if it lies
  within that cluster's radius, it uses the block of the cluster's nearest point,
  otherwise no block (exact original output). Exact ``torch.cdist`` distances to
  the centres (found by one matmul screen and exact ``cdist`` on the few candidates:
  ``nearest.py``), then to the points of the chosen cluster only; no loop over
  stored edits.
* **Dynamic LoRA.** Each target FFN matrix gets LoRA factors of total rank
  ``num_block * rank_per_block``; block ``k`` is ranks
  ``[k*rank_per_block, (k+1)*rank_per_block)``. Every sample of a batch gathers
  its own block (``torch.bmm``); samples with no block get the base output
  unchanged (``torch.where``). Scaling as in the reference: ``lora_alpha`` = total
  rank, and the ``dynamic`` module multiplies A and B by
  ``sqrt(total_rank / rank_per_block)``, so the delta is
  ``num_block * x A_k B_k``.
* **Blocks** (``num_edit_per_block``, reference 4). The reference's data loader
  hands its trainer batches of ``num_edit_per_block`` edits and each batch gets
  the next block (``GraceLayer.init_key_value``/``block_id += 1`` once per
  batch, ``run.py``: ``batch_size = num_edit_per_block``), so 4 successive edits
  of the stream share one block. Here edits fill the current block in stream
  order until it holds ``num_edit_per_block``; an edit (batch) that would
  overflow it opens the next block, and a batch is never split across blocks (a
  batch larger than ``num_edit_per_block`` gets a block of its own, as a
  reference batch does). With edit_batch_size 1 edit ``i`` of the stream is in
  block ``i // num_edit_per_block``, so 350 blocks hold 1,400 edits.
* **Edit.** For each new request's key:
  if the database is empty or the nearest centre is farther than
  ``radius + init_radius``: new cluster (radius ``init_radius``); else if the
  target matches the cluster's label: join (centre = mean of the cluster's keys,
  radius = max(farthest key, ``init_radius``)); else conflict: new cluster, and
  both radii set to half the distance (-/+ 1e-5); the old cluster's keys now
  outside its radius are forgotten (if none remain its centre is kept pointing
  to no block). Then the block is trained ``n_iter`` Adam steps (StepLR
  halving) on the target cross-entropy of EVERY request it holds (the earlier
  requests of the block and the new ones, all forced onto it), starting from its
  current factors: after the block's last edit it has been trained on its
  ``num_edit_per_block`` edits together, as the reference trains one block on its
  batch of 4. Training on the new edit alone would move the shared block away
  from the block's earlier edits. The requests of the block being filled are
  kept (and saved in ``state_dict``) until it is full.
* When all ``num_block`` blocks are used the reference indexes past the end of
  its LoRA factors (a crash); here ``edit`` raises and names ``editor.num_block``.
* Layers are relative depths (``Backbone.layer_index``); several depths that land
  on the same layer of a shallow model name it once.

Departures: targets "match" when their token ids are equal (the reference
compares the SUM of the label ids, which collides); the requests of one batch are
inserted one after another (the reference adds every request of the very first
batch as a new cluster without checks); LoRA factors are kept in float32 and
applied outside the base matrix (a wrapper with ``base_layer``), which is removed
by ``reset``.

Generation
----------
At generation time (``Backbone.generate``: a prompt pass, then KV-cached decode forwards of one new token
each) the reference routes on the last token of whatever the key layer sees (ECNU-ICALK/MELO
``peft_egg/src/peft/tuners/melo.py`` ``GraceLinear.forward``: ``key_id = min(self.key_id, T - 1)``,
``key_id: -1``; ``melo/algs/lora.py`` ``LORA.generate`` calls the model's ``generate``): on a decoder-only
model with a KV cache every decode step re-routes on its one new token and overwrites the global
``LORA_BLOCK_MAPPING`` (on T5 the key layer is in the encoder, so the prompt's routing persists for all
decoder steps). Here, by default (``generation_key: prompt``), the routing is decided ONCE on the prompt (the
key at the last prompt token, as teacher forcing) and kept for every generated token (``Batch.memo``): the
chosen block applies to a generated token as it applies to the target tokens in teacher forcing (a block
applies to every position of its sample). ``generation_key: each_token`` is the decoder-only reference with
a KV cache: each decode forward routes on the key layer's output at its one new token.

Precision: the backbone runs in ``model.dtype``; the LoRA factors (and Adam's state), the
keys and the vector database are float32 (:data:`bench.core.inject.STATE_DTYPE`). A LoRA matrix's
input is cast to float32 for the low-rank product and the delta is cast back to ``model.dtype``
before it is added. Each LoRA sits on the device of the matrix it wraps, the database on the
key matrix's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from bench.core.backbone import EditableBackbone
from bench.core.editor import Choice, Editor, EditorConfig, grow_rows
from bench.core.inject import STATE_DTYPE, LinearWrapper, as_sequence, module_device
from bench.core.optim import Steps, loss_forward, optimizer_update, run_steps
from bench.core.types import Probe

from .nearest import NearestIndex, exact_cdist
from .registry import register

NO_BLOCK = -1
_SPLIT_EPS = 1e-5  # reference split_cluster_radii_in_half: d/2 -/+ 1e-5


class GenerationKey(Choice):
    prompt = "prompt"  # route on the prompt's last token, keep the block for every generated token
    each_token = "each_token"  # the decoder-only reference with a KV cache: re-route on each new token


class MeloLinear(LinearWrapper):
    """Wraps one ``nn.Linear`` (kept as ``base_layer``) with MELO's dynamic LoRA.

    The LoRA factors live in the editor (``lora_A`` [in, R], ``lora_B`` [R, out])
    and are not registered as parameters of the backbone; the wrapper reads the
    per-sample block ids the editor's key hook set for the current forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out0, route, x, out = self.base_forward(x)
        if route is None:
            return out0
        ed = self._editor
        if route.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"MELO: routing holds {route.shape[0]} samples but a LoRA layer got a batch of {x.shape[0]}; "
                "the key layer must run before every LoRA layer in the same forward"
            )
        route = route.to(x.device)  # the key layer may sit on another device
        active = route >= 0
        if not bool(active.any()):
            return out0
        A, B = ed.lora_A[self.index], ed.lora_B[self.index]
        rpb, nb = ed.rank_per_block, ed.num_block
        live = ed.training_factors()
        if live is not None:  # an edit trains one block: every sample is routed to it
            a = live[0][self.index][None].expand(x.shape[0], -1, -1).contiguous()  # [b, in, rpb]
            b = live[1][self.index][None].expand(x.shape[0], -1, -1).contiguous()  # [b, rpb, out]
        else:
            idx = route.clamp(min=0)
            a = A.view(A.shape[0], nb, rpb).permute(1, 0, 2)[idx]  # [b, in, rpb]
            b = B.view(nb, rpb, B.shape[1])[idx]  # [b, rpb, out]
        shape = x.shape
        xs = x.reshape(shape[0], -1, shape[-1]).to(A.dtype)
        delta = torch.bmm(torch.bmm(xs, a), b) * ed.scale
        delta = delta.reshape(*shape[:-1], B.shape[1]).to(out.dtype)
        mask = active.view(-1, *([1] * (out.dim() - 1)))
        return torch.where(mask, out + delta, out).reshape(out0.shape)


class VecDB:
    """MELO's vector database in tensors: clusters and the points (key -> block) inside them."""

    def __init__(self, dim: int, init_radius: float, device: torch.device) -> None:
        self.dim, self.init_radius, self.device = dim, float(init_radius), device
        self._index = NearestIndex()  # cached centres for the matmul screen
        self.clear()

    def clear(self) -> None:
        z = dict(device=self.device)
        self.centers = torch.zeros(0, self.dim, dtype=torch.float32, **z)
        self.radii = torch.zeros(0, dtype=torch.float32, **z)
        self.labels: list[tuple[int, ...]] = []
        self.point_keys = torch.zeros(0, self.dim, dtype=torch.float32, **z)
        self.point_cluster = torch.zeros(0, dtype=torch.long, **z)
        self.point_block = torch.zeros(0, dtype=torch.long, **z)
        self.conflicts = 0
        self.forgotten = 0
        self._all: tuple | None = None  # cached grouping of the points by cluster
        self._index.clear()

    def __len__(self) -> int:
        return self.centers.shape[0]

    # ----- lookup (every forward) -----------------------------------------------------
    def route(self, q: torch.Tensor) -> torch.Tensor:
        """Block id per query ([B, d] -> [B] long, ``NO_BLOCK`` outside every cluster)."""
        C = len(self)
        if C == 0:
            return torch.full((q.shape[0],), NO_BLOCK, dtype=torch.long, device=q.device)
        if self._all is None:  # points grouped by cluster (ascending index within each), rebuilt after changes
            order = torch.sort(self.point_cluster, stable=True).indices
            ends = torch.bincount(self.point_cluster, minlength=C).cumsum(0).tolist()
            self._all = (order, [0] + ends[:-1], ends)
        order, starts, ends = self._all
        # the same (distance, index) as the exact cdist's min, screened by one matmul
        dmin, near = self._index.nearest(q, self.centers)
        inside = dmin <= self.radii[near]
        block = torch.full((q.shape[0],), NO_BLOCK, dtype=torch.long, device=q.device)
        for b in inside.nonzero()[:, 0].tolist():  # only the queries inside a cluster read its points
            c = int(near[b])
            members = order[starts[c] : ends[c]]
            if members.numel():
                j = exact_cdist(q[b : b + 1].float(), self.point_keys[members])[0].argmin()
                block[b] = self.point_block[members[j]]
        return block

    # ----- updates (at edit time) -----------------------------------------------------
    def nearest(self, q: torch.Tensor) -> tuple[float, int]:
        d = exact_cdist(q[None], self.centers)[0]
        i = int(d.argmin())
        return float(d[i]), i

    def _add_points(self, keys: torch.Tensor, cluster: int, block: int) -> None:
        n = keys.shape[0]
        self.point_keys = torch.cat([self.point_keys, keys])

        def ids(v: int) -> torch.Tensor:
            return torch.full((n,), v, dtype=torch.long, device=self.device)

        self.point_cluster = torch.cat([self.point_cluster, ids(cluster)])
        self.point_block = torch.cat([self.point_block, ids(block)])
        self._all = None

    def add_cluster(self, q: torch.Tensor, label: tuple[int, ...], block: int) -> int:
        self.centers = torch.cat([self.centers, q[None]])
        self.radii = torch.cat([self.radii, torch.tensor([self.init_radius], device=self.device)])
        self.labels.append(tuple(label))
        self._add_points(q[None], len(self) - 1, block)
        return len(self) - 1

    def join(self, c: int, q: torch.Tensor, block: int) -> None:
        """Same target: add the key to cluster ``c``, move its centre, expand its radius."""
        self._add_points(q[None], c, block)
        keys = self.point_keys[self.point_cluster == c]
        center = keys.mean(0)
        self.centers[c] = center
        far = float(exact_cdist(keys, center[None]).max())
        self.radii[c] = max(far, self.init_radius)
        self._all = None

    def split(self, old: int, new: int, dist: float) -> None:
        """Conflict: halve the distance between the two radii; forget old keys now outside."""
        self.radii[old] = dist / 2 - _SPLIT_EPS
        self.radii[new] = dist / 2 + _SPLIT_EPS
        mine = self.point_cluster == old
        d = exact_cdist(self.point_keys, self.centers[old][None])[:, 0]
        drop = mine & (d > self.radii[old])
        n_drop = int(drop.sum())
        if n_drop:
            keep = ~drop
            self.point_keys = self.point_keys[keep]
            self.point_cluster = self.point_cluster[keep]
            self.point_block = self.point_block[keep]
            if not bool((self.point_cluster == old).any()):
                self._add_points(self.centers[old][None].clone(), old, NO_BLOCK)
        self.forgotten += n_drop
        self.conflicts += 1
        self._all = None

    # ----- serialisation ---------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        width = max((len(lb) for lb in self.labels), default=0)
        labels = torch.full((len(self.labels), width), -1, dtype=torch.long)
        for i, lb in enumerate(self.labels):
            labels[i, : len(lb)] = torch.tensor(lb, dtype=torch.long)
        return {
            "db.centers": self.centers.clone(),
            "db.radii": self.radii.clone(),
            "db.labels": labels,
            "db.point_keys": self.point_keys.clone(),
            "db.point_cluster": self.point_cluster.clone(),
            "db.point_block": self.point_block.clone(),
            "db.counts": torch.tensor([self.conflicts, self.forgotten], dtype=torch.long),
        }

    def load(self, s: dict[str, torch.Tensor]) -> None:
        dev = self.device
        self.centers = s["db.centers"].to(dev, torch.float32).clone()
        self.radii = s["db.radii"].to(dev, torch.float32).clone()
        self.labels = [tuple(int(t) for t in row if int(t) >= 0) for row in s["db.labels"]]
        self.point_keys = s["db.point_keys"].to(dev, torch.float32).clone()
        self.point_cluster = s["db.point_cluster"].to(dev).clone()
        self.point_block = s["db.point_block"].to(dev).clone()
        self._index.clear()
        self.conflicts, self.forgotten = (int(x) for x in s["db.counts"])
        self._all = None


def _encode_probes(probes: Sequence[Probe]) -> torch.Tensor:
    """Probes as a uint8 tensor (UTF-8 JSON), so a state_dict of tensors can hold them."""
    rows = [[p.prompt, p.target, p.image, p.kind, p.record] for p in probes]
    return torch.tensor(list(json.dumps(rows).encode()), dtype=torch.uint8)


def _decode_probes(t: torch.Tensor) -> list[Probe]:
    rows = json.loads(bytes(t.cpu().tolist()).decode()) if t.numel() else []
    return [Probe(prompt=a, target=b, image=c, kind=d, record=e) for a, b, c, d, e in rows]


@dataclass
class MELOConfig(EditorConfig):
    key_layer: Any = MISSING  # int index or relative depth in [0, 1)
    key_role: str = MISSING
    lora_layers: list[Any] = MISSING
    lora_roles: list[str] = MISSING
    init_radius: float = MISSING
    num_block: int = MISSING
    num_edit_per_block: int = MISSING
    rank_per_block: int = MISSING
    lora_alpha: float | None = None  # None: the total rank (scaling 1)
    n_iter: int = MISSING
    lr: float = MISSING
    lr_step: int = MISSING
    lr_gamma: float = MISSING
    seed: int = 0
    early_stop_loss: float | None = None
    generation_key: GenerationKey = GenerationKey.prompt


@register("melo")
class MELO(Editor):
    Config = MELOConfig
    config_aliases = {"num_iter": "n_iter"}
    can_batch_edit = True  # edits fill blocks num_edit_per_block at a time (reference: one block per batch of 4)
    display_order = 30
    latency_fill = "one cluster per edit: the real keys repeated + noise, real radii/labels/blocks; LoRA pool as edited"
    layer_keys = ("key_layer", "lora_layers")

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        super().__init__(backbone, cfg)
        self.num_block = cfg.num_block
        self.rank_per_block = cfg.rank_per_block
        if self.num_block < 1 or self.rank_per_block < 1:
            raise ValueError("editor.num_block and editor.rank_per_block must be >= 1")
        self.per_block = cfg.num_edit_per_block
        if self.per_block < 1:
            raise ValueError(f"editor.num_edit_per_block must be >= 1, got {self.per_block}")
        self.rank = self.num_block * self.rank_per_block
        lora_alpha = self.rank if cfg.lora_alpha is None else cfg.lora_alpha
        # reference: scaling lora_alpha / r, times sqrt(r / rank_per_block) on each of A and B
        self.scale = (lora_alpha / self.rank) * (self.rank / self.rank_per_block)
        try:
            self.key_layer = backbone.layer_index(cfg.key_layer, "editor.key_layer")
            # depths that land on the same layer of a shallow model name it once
            lora_layers = list(
                dict.fromkeys(
                    backbone.layer_index(i, f"editor.lora_layers[{n}]") for n, i in enumerate(cfg.lora_layers)
                )
            )
        except IndexError as e:
            raise IndexError(
                f"editor.key_layer={cfg.key_layer} / editor.lora_layers={list(cfg.lora_layers)}: {e}; "
                "set them for this backbone (relative depths in [0, 1) fit every depth)"
            ) from e
        self.key_role = cfg.key_role
        roles = list(cfg.lora_roles)
        self.targets = [(i, r) for i in lora_layers for r in roles]
        if not self.targets:
            raise ValueError("editor.lora_layers / editor.lora_roles select no FFN matrix")
        if min(i for i, _ in self.targets) <= self.key_layer:
            raise ValueError(
                f"editor.key_layer ({cfg.key_layer} -> layer {self.key_layer} of {backbone.num_layers}) must come "
                f"before every editor.lora_layers entry ({list(cfg.lora_layers)} -> layers "
                f"{sorted({i for i, _ in self.targets})}), so keys do not depend on the LoRA they select"
            )
        self.key_module = backbone.ffn(self.key_layer, self.key_role)
        self.originals: list[nn.Linear] = [backbone.ffn(i, r) for i, r in self.targets]
        for m in self.originals:
            if not isinstance(m, nn.Linear):
                raise TypeError(f"MELO wraps nn.Linear FFN matrices; got {type(m).__name__}")
        # every LoRA on its own matrix's device, the database on the key matrix's (device_map=auto)
        self.lora_A = [
            torch.zeros(m.in_features, self.rank, dtype=STATE_DTYPE, device=module_device(m)) for m in self.originals
        ]
        self.lora_B = [
            torch.zeros(self.rank, m.out_features, dtype=STATE_DTYPE, device=module_device(m)) for m in self.originals
        ]
        self.db = VecDB(self.key_module.out_features, cfg.init_radius, module_device(self.key_module))
        self.next_block = 0
        self.block_requests: list[Probe] = []  # the requests of the block being filled (next_block - 1)
        self._route: torch.Tensor | None = None
        self.generation_key = cfg.generation_key
        self._memo_key = ("melo", id(self))  # this editor's prompt-pass routing in Batch.memo
        self._keys: torch.Tensor | None = None
        self._force_block: int | None = None
        self._live: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # the block being trained
        # layers below the first LoRA layer (the key layer included) are frozen: run once per edit
        self.prefix_layer = min(i for i, _ in self.targets)
        self._wrappers: list[MeloLinear] = []
        self._init_lora()

    # ----- LoRA factors and installation ------------------------------------------------------
    @torch.no_grad()
    def _init_lora(self) -> None:
        """A: kaiming-uniform(a=sqrt 5) on the [in, R] tensor (bound 1/sqrt(R)), as PEFT/MELO; B: zero."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        bound = 1.0 / math.sqrt(self.rank)
        for A, B in zip(self.lora_A, self.lora_B, strict=True):
            A.copy_((torch.rand(A.shape, generator=g) * 2 - 1) * bound)
            B.zero_()

    def on_attach(self, at) -> None:
        for k, ((i, role), orig) in enumerate(zip(self.targets, self.originals, strict=True)):
            self._wrappers.append(at.swap(self.backbone, i, role, MeloLinear(orig, self, k), expect=orig))
        at.forward_hook(self.key_module, self._key_hook)

    def on_detach(self) -> None:
        self._wrappers = []
        self._route = None

    def forward_route(self):
        """The per-sample block ids the key hook set for the current forward (None: add nothing)."""
        return self._route

    def training_factors(self):
        """``(A blocks, B blocks)`` of the block an edit is training (every sample routes to it), else None."""
        return self._live

    def _key_hook(self, module, inputs, out) -> None:
        """Per-sample query at the last prompt token; routes every sample of the batch.

        In a generation's decode forward (one new token per row): ``generation_key: prompt`` keeps the
        routing of the prompt pass (``ctx.memo``); ``each_token`` routes on the new token (the reference's
        ``key_id -1`` with a KV cache)."""
        ctx = self.backbone.context
        out = as_sequence(out, self.backbone)
        Bsz = out.shape[0]
        decoding = ctx is not None and ctx.decoding
        if decoding and self._force_block is None and self.generation_key == GenerationKey.prompt:
            self._route = ctx.memo.get(self._memo_key)  # None (no LoRA) if the prompt pass was not routed here
            return
        if decoding or ctx is None or ctx.size != Bsz or out.dim() != 3:
            # a decode forward's one new token, or outside backbone.forward: the reference's key_id -1
            pos = torch.full((Bsz,), out.shape[1] - 1, dtype=torch.long, device=out.device)
        else:
            pos = ctx.prompt_last.to(out.device)
        q = out[torch.arange(Bsz, device=out.device), pos].detach().float()
        self._keys = q
        if self._force_block is not None:
            self._route = torch.full((Bsz,), self._force_block, dtype=torch.long, device=out.device)
        else:
            self._route = self.db.route(q)
        if ctx is not None and not decoding:
            ctx.memo[self._memo_key] = self._route  # kept by a generation's decode forwards

    # ----- editing -----------------------------------------------------------------------------
    def _edit(self, request: Probe) -> dict:
        return self._edit_batch([request])

    def _insert(self, q: torch.Tensor, label: tuple[int, ...], block: int) -> tuple[str, float | None]:
        db = self.db
        if len(db) == 0:
            db.add_cluster(q, label, block)
            return "new", None
        d, c = db.nearest(q)
        if d > float(db.radii[c]) + db.init_radius:
            db.add_cluster(q, label, block)
            return "new", d
        if db.labels[c] == tuple(label):
            db.join(c, q, block)
            return "join", d
        new = db.add_cluster(q, label, block)
        db.split(c, new, d)
        return "conflict", d

    def _place(self, n: int) -> tuple[int, list[Probe]]:
        """(block, earlier requests it holds) for ``n`` new requests: the block being filled if they
        fit in it, else the next block."""
        held = len(self.block_requests)
        if held and held + n <= self.per_block:
            return self.next_block - 1, list(self.block_requests)
        if self.next_block >= self.num_block:
            raise RuntimeError(
                f"MELO: all editor.num_block={self.num_block} LoRA blocks are used ({self.n_edits} edits, "
                f"editor.num_edit_per_block={self.per_block} per block); raise editor.num_block"
            )
        return self.next_block, []

    def _edit_batch(self, requests: Sequence[Probe]) -> dict:
        requests = list(requests)
        block, earlier = self._place(len(requests))
        batch = self.backbone.prepare(earlier + requests)  # the block trains on every request it holds
        sl = slice(block * self.rank_per_block, (block + 1) * self.rank_per_block)
        live_A = [A[:, sl].clone().requires_grad_(True) for A in self.lora_A]
        live_B = [B[sl].clone().requires_grad_(True) for B in self.lora_B]
        params = live_A + live_B
        opt = torch.optim.Adam(params, lr=self.cfg.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.cfg.lr_step, gamma=self.cfg.lr_gamma)
        actions: list[str] = []
        dists: list[float] = []
        res = Steps()  # no step ran (n_iter 0): loss None
        self._force_block = block
        self._live = (live_A, live_B)
        try:
            # the frozen layers below the first LoRA layer run once; the key hook fires there, so the
            # keys (which do not depend on LoRA: key layer first) are read and inserted once
            prefix = self.backbone.prefix(batch, self.prefix_layer)
            if prefix.k == 0:  # nothing precomputed (the reference path): one forward reads the keys
                with torch.no_grad():
                    self.backbone.forward_from(0, prefix, batch, head=False)
            keys = self._keys.clone()
            for b in range(len(earlier), len(batch.target_ids)):  # only the new requests' keys are inserted
                act, d = self._insert(keys[b], tuple(batch.target_ids[b]), block)
                actions.append(act)
                if d is not None:
                    dists.append(d)
            res = run_steps(
                self.cfg.n_iter,
                loss_forward(lambda: self.backbone.target_loss(batch, h=prefix)),
                optimizer_update(opt, sched),
                stop_below=self.cfg.early_stop_loss,
            )
        finally:
            self._force_block = None
            self._live = None
            with torch.no_grad():
                for A, a in zip(self.lora_A, live_A, strict=True):
                    A[:, sl] = a.detach()
                for B, b in zip(self.lora_B, live_B, strict=True):
                    B[sl] = b.detach()
        if block == self.next_block:
            self.next_block += 1
        held = earlier + requests
        self.block_requests = held if len(held) < self.per_block else []  # a full block is never trained again
        self.n_edits += len(requests)
        return {
            "loss": res.get(),
            "steps": res.steps,
            "block": block,
            "block_size": len(held),
            "clusters": len(self.db),
            "new": actions.count("new"),
            "join": actions.count("join"),
            "conflict": actions.count("conflict"),
            "nearest_dist": min(dists) if dists else None,
        }

    # ----- state ----------------------------------------------------------------------------------
    def synthetic_state(self, real, n, g):
        s = {k: v.clone() for k, v in real.items()}
        cl = real["db.point_cluster"].cpu()
        keys = grow_rows(real["db.point_keys"], n, g, 0.01)
        pick = torch.arange(n) % max(1, cl.shape[0])
        s.update(
            {
                "db.centers": keys,
                "db.point_keys": keys.clone(),
                "db.radii": real["db.radii"].cpu()[cl[pick]],
                "db.labels": real["db.labels"].cpu()[cl[pick]],
                "db.point_cluster": torch.arange(n),
                "db.point_block": real["db.point_block"].cpu()[pick],
                "next_block": real["next_block"].clone(),
                "n_edits": torch.tensor(n, dtype=torch.long),
            }
        )
        return s

    def reset(self) -> None:
        self.detach()
        self.db.clear()
        self._init_lora()
        self.next_block = 0
        self.block_requests = []
        self._keys = None
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        s = self.db.state()
        for k, (A, B) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            s[f"lora.{k}.A"] = A.detach().clone()
            s[f"lora.{k}.B"] = B.detach().clone()
        s["next_block"] = torch.tensor(self.next_block, dtype=torch.long)
        s["block_requests"] = _encode_probes(self.block_requests)
        s["n_edits"] = torch.tensor(self.n_edits, dtype=torch.long)
        return s

    @torch.no_grad()
    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, (A, B) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            A.copy_(state[f"lora.{k}.A"])
            B.copy_(state[f"lora.{k}.B"])
        self.db.load(state)
        self.next_block = int(state["next_block"])
        self.block_requests = _decode_probes(state["block_requests"]) if "block_requests" in state else []
        self.n_edits = int(state["n_edits"])

    def memory_bytes(self) -> int:
        """LoRA factors of all blocks (allocated up front) + the vector database (the few held requests
        of the block being filled are text, not counted)."""
        lora = sum(t.numel() * t.element_size() for t in self.lora_A + self.lora_B)
        db = self.db.state()
        return lora + sum(t.numel() * t.element_size() for t in db.values())
