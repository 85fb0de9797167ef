"""LiveEdit: a generated low-rank mixture of experts with hard and soft routing.

Chen et al., "Lifelong Knowledge Editing for Vision Language Models with Low-Rank
Mixture-of-Experts", CVPR 2025. Reference code read (not copied): qizhou000/LiveEdit
``editor/vllm_editors/liveedit/{liveedit.py,modules.py}`` and ``configs/liveedit/*.yaml``.

Mechanics
---------
* **Edit signal.** Hidden states of decoder layer ``l_e`` (the layer's *output*, as the
  reference hooks ``layers.{l_e}``) on ``[image; prompt; target]``, split per sample into
  vision reps (``batch.image_mask``), query reps (prompt tokens after the image, up to
  ``batch.prompt_last``) and answer reps (``batch.target_mask()``).
* **Networks** (:class:`LiveEditNet`, trained once by ``python -m bench.train``):
  two feature extractors of the same shape, one for edits (``edit_ext``) and one for
  inputs (``inpt_ext``, which also owns the learned *vision sentinel*: pseudo vision reps);
  each has ``n_query`` learned query tokens that cross-attend (``heads`` heads, width
  ``module_dim``) to the query reps, giving the textual feature psi, and whose result
  cross-attends to the vision reps, giving the visual feature phi. Two expert generators
  (``rank`` learned tokens cross-attending to LN([vision; query; answer]) reps) give the
  expert ``U`` and ``V`` (``rank x d_llm``, scaled by ``1 / (lora_scale * sqrt(rank))``).
  The learned tokens (query tokens, sentinel, generator tokens) start as the reference's
  (``modules.py``: ``nn.init.kaiming_normal_``, std ``sqrt(2 / (n * d))`` for an ``[1, n, d]``
  tensor), or N(0, 1) with ``editor.train.token_init: standard_normal`` (:func:`learned_tokens`).
* **Edit.** One forward pass (stopped at layer ``l_e``) per batch of requests; each
  request adds ``(psi, phi, U, V)`` to four tensors. No gradient steps at edit time.
* **Inference** (forward hook on ``backbone.layer(l_e)``), per sample from its own tokens
  (``backbone.context``): features (psi_in, phi_in) from the input extractor; visual scores
  ``s_v[m] = mean_e <phi_in_e, phi_m_e> / sqrt(d_m)`` against all stored experts in one
  einsum; hard routing keeps experts with ``s_v[m] >`` the sentinel score (phi_in against
  the phi the input extractor gives for the sentinel); textual scores ``s`` likewise from
  psi; coefficients ``c = softmax_kept(s) * sigmoid(s)``; residual
  ``dh = sum_m c_m ReLU(LN(h) U_m^T) V_m`` added to the layer output at every position of
  the sample (two matmuls per block of experts, no [n, L, M, d] tensor; 10,000 experts run).
  A sample that keeps no expert, or has no image (the reference skips inputs
  without vision tokens), gets its layer output back bit for bit.
* **Ablations** (config): ``hard_routing: false`` keeps every stored expert (no sentinel
  filter); ``soft_routing: false`` replaces the soft weights by a plain mean over the kept
  experts (paper's "w/o soft routing" fuses without textual relevance; our reading).

Departures from the reference
-----------------------------
* The training losses are computed from one batched forward of [rel; t_gen; m_gen; m_loc]
  samples with per-sample expert masks (the reference loops one sample at a time and
  runs "forward from the middle layer"); same losses, same masks (own expert plus a random
  prefix of the batch's experts; locality samples get only the random prefix).
* Locality KL and the routing contrasts use the train split's m_loc samples (image
  locality), as the reference keeps only locality samples with an image.
* The checkpoint stores the backbone name, hidden size and layer index; a mismatch stops.
* The locality KL runs KL(unedited || edited) (the paper's Eq. 11 as the project reads it); the
  reference code computes KL(edited || unedited) (:mod:`editors.liveedit_train` module doc).
* Training length: ``editor.train.epochs`` as the reference's README, each epoch
  ``ceil(N / batch_size)`` steps of randomly drawn batches; ``max_steps`` caps it.

Precision and device: the backbone runs in ``model.dtype``; the networks (generator, extractors,
sentinel; training and Adam's state too) and the stored experts (psi, phi, U, V) are float32
(:data:`editors.base.STATE_DTYPE`), on the device of layer ``l_e``. Layer ``l_e``'s output is
cast to float32 for routing and the residual, and the edited output back to ``model.dtype``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from bench.backbones.base import Batch, Probe
from bench.errors import UserError

from .base import STATE_DTYPE, Editor, module_device
from .registry import register

log = logging.getLogger(__name__)

WEIGHTS_FILE = "liveedit.safetensors"
CONFIG_FILE = "config.json"
TRAINER_FILE = "trainer.pt"
#: architecture keys: taken from the checkpoint at edit time
ARCH_KEYS = ("module_dim", "heads", "n_query", "rank", "lora_scale", "sentinel_tokens")


# ----- networks -----------------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries [N, Lq, d_q] attend to keys/values [N, Lk, d_kv]."""

    def __init__(self, d_q: int, d_kv: int, d_qk: int, d_v: int, heads: int) -> None:
        super().__init__()
        if d_qk % heads or d_v % heads:
            raise ValueError(f"editor.heads={heads} must divide module_dim={d_qk} and the output width {d_v}")
        self.heads = heads
        self.q = nn.Linear(d_q, d_qk)
        self.k = nn.Linear(d_kv, d_qk)
        self.v = nn.Linear(d_kv, d_v)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        N, Lq, Lk, H = kv.shape[0], q.shape[1], kv.shape[1], self.heads
        qh = self.q(q).expand(N, -1, -1).reshape(N, Lq, H, -1)
        kh = self.k(kv).reshape(N, Lk, H, -1)
        vh = self.v(kv).reshape(N, Lk, H, -1)
        s = torch.einsum("nqhd,nkhd->nhqk", qh, kh) / math.sqrt(qh.shape[-1])
        if mask is not None:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        a = torch.softmax(s, -1)
        return torch.einsum("nhqk,nkhd->nqhd", a, vh).reshape(N, Lq, -1)


#: how learned tokens (query tokens, vision sentinel, expert-generator tokens) start: ``editor.train.token_init``
TOKEN_INITS = ("kaiming_normal", "standard_normal")


def learned_tokens(shape: tuple[int, ...], init: str) -> nn.Parameter:
    """A learned-token tensor ``[1, n, d]``. ``kaiming_normal`` (the reference: ``nn.init.kaiming_normal_``
    with its defaults, fan_in = n * d for this shape, gain sqrt(2)): N(0, 2 / (n d)); ``standard_normal``:
    N(0, 1), the harness's init before issue 10 (the shipped smol_llava checkpoint was trained from it)."""
    if init == "kaiming_normal":
        t = torch.empty(shape)
        nn.init.kaiming_normal_(t)
    elif init == "standard_normal":
        t = torch.randn(shape)
    else:
        raise ValueError(f"editor.train.token_init: {init!r} is not one of {list(TOKEN_INITS)}")
    return nn.Parameter(t)


class FeatureExtractor(nn.Module):
    """Textual feature psi (query tokens -> query reps) and visual feature phi (-> vision reps)."""

    def __init__(self, d_llm: int, d_m: int, heads: int, n_query: int, sentinel_tokens: int = 0,
                 token_init: str = "kaiming_normal") -> None:
        super().__init__()
        self.norm_v = nn.LayerNorm(d_llm)
        self.tok_v = learned_tokens((1, n_query, d_m), token_init)
        self.att_vq = CrossAttention(d_m, d_llm, d_m, d_m, heads)
        self.att_vv = CrossAttention(d_m, d_llm, d_m, d_m, heads)
        self.norm_t = nn.LayerNorm(d_llm)
        self.tok_t = learned_tokens((1, n_query, d_m), token_init)
        self.att_t = CrossAttention(d_m, d_llm, d_m, d_m, heads)
        if sentinel_tokens:
            self.sentinel = learned_tokens((1, sentinel_tokens, d_llm), token_init)

    def textual(self, query: torch.Tensor, qmask: torch.Tensor | None = None) -> torch.Tensor:
        return self.att_t(self.tok_t, self.norm_t(query), qmask)

    def visual(self, query, qmask, vision, vmask) -> torch.Tensor:
        q = self.att_vq(self.tok_v, self.norm_v(query), qmask)
        return self.att_vv(q, self.norm_v(vision), vmask)

    def sentinel_visual(self, query, qmask) -> torch.Tensor:
        """phi of the vision sentinel seen with this input's query."""
        s = self.sentinel.expand(query.shape[0], -1, -1)
        return self.visual(query, qmask, s, None)


class ExpertGenerator(nn.Module):
    """``rank`` learned tokens attend to LN(edit reps): one rank x d_llm factor of an expert."""

    def __init__(self, d_llm: int, d_m: int, heads: int, rank: int, lora_scale: float,
                 token_init: str = "kaiming_normal") -> None:
        super().__init__()
        self.tok = learned_tokens((1, rank, d_m), token_init)
        self.norm = nn.LayerNorm(d_llm)
        self.att = CrossAttention(d_m, d_llm, d_m, d_llm, heads)
        self.scale = 1.0 / (lora_scale * math.sqrt(rank))

    def forward(self, reps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.att(self.tok, self.norm(reps), mask) * self.scale


class LiveEditNet(nn.Module):
    def __init__(self, d_llm: int, module_dim: int, heads: int, n_query: int, rank: int, lora_scale: float,
                 sentinel_tokens: int, token_init: str = "kaiming_normal") -> None:
        super().__init__()
        if sentinel_tokens < 1:
            raise ValueError(f"sentinel_tokens must be >= 1, got {sentinel_tokens}")
        self.scale = 1.0 / math.sqrt(module_dim)
        self.edit_ext = FeatureExtractor(d_llm, module_dim, heads, n_query, token_init=token_init)
        self.inpt_ext = FeatureExtractor(d_llm, module_dim, heads, n_query, sentinel_tokens, token_init)
        self.gen_u = ExpertGenerator(d_llm, module_dim, heads, rank, lora_scale, token_init)
        self.gen_v = ExpertGenerator(d_llm, module_dim, heads, rank, lora_scale, token_init)
        self.res_norm = nn.LayerNorm(d_llm)

    def sim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[N, e, d] x [M, e, d] -> [N, M]: mean over the e feature tokens of <a, b> / sqrt(d_m)."""
        # one [N, e*d] x [e*d, M] matmul on views (an einsum here copied all M stored features per call)
        n, e, d = a.shape
        return (a.reshape(n, e * d) @ b.reshape(b.shape[0], e * d).T) * (self.scale / e)

    def new_experts(self, vision, vmask, query, qmask, edit, emask):
        """Edit features and expert: (psi [N,e,dm], phi [N,e,dm], U [N,r,d], V [N,r,d])."""
        e = self.edit_ext
        return (e.textual(query, qmask), e.visual(query, qmask, vision, vmask),
                self.gen_u(edit, emask), self.gen_v(edit, emask))

    def input_features(self, vision, vmask, query, qmask):
        """Input features: psi_in, phi_in and the sentinel's visual score [N]."""
        e = self.inpt_ext
        psi, phi = e.textual(query, qmask), e.visual(query, qmask, vision, vmask)
        phi0 = e.sentinel_visual(query, qmask)
        s0 = (phi * phi0).sum(-1).mean(-1) * self.scale
        return psi, phi, s0

    @staticmethod
    def coefficients(s: torch.Tensor, keep: torch.Tensor, soft: bool = True) -> torch.Tensor:
        """[N, M] expert weights: softmax over kept experts x sigmoid (or a plain mean)."""
        keep_f = keep.to(s.dtype)
        if not soft:
            return keep_f / keep_f.sum(1, keepdim=True).clamp(min=1.0)
        any_kept = keep.any(1, keepdim=True)
        masked = s.masked_fill(~keep, float("-inf")).masked_fill(~any_kept, 0.0)
        return torch.softmax(masked, 1) * torch.sigmoid(s) * keep_f

    #: at most this many elements in one [n, L, m * r] block of low-rank activations (64 MB in float32)
    RESIDUAL_BLOCK = 1 << 24
    #: kept experts gathered per block at inference (U and V rows of a block stay in cache for their matmuls)
    GATHER_BLOCK = 128

    def residual(self, h: torch.Tensor, U: torch.Tensor, V: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """dh[n, l] = sum_m c[n, m] ReLU(LN(h[n, l]) U_m^T) V_m, as two matmuls per block of experts:
        ``a = ReLU(LN(h) @ U.reshape(M*r, d)^T)`` [n, L, M*r], weighted by c per expert, then
        ``@ V.reshape(M*r, d)``. No [n, L, M, d] tensor: memory O(n L (m r + d)) with m the block
        size (blocks keep n L m r under RESIDUAL_BLOCK elements). Without autograd on ``c``, experts
        whose weight is 0 for every row (dropped by the hard routing) are skipped: they add nothing."""
        x = self.res_norm(h)
        n, L, d = x.shape
        cols = None
        if not c.requires_grad:
            cols = c.ne(0).any(0).nonzero()[:, 0]
            if cols.numel() == c.shape[1]:
                cols = None
        M, r = (U.shape[0] if cols is None else cols.numel()), U.shape[1]
        out = x.new_zeros(n, L, d)
        if M == 0:
            return out
        step = max(1, self.RESIDUAL_BLOCK // max(1, n * L * r))
        if cols is not None:  # kept experts gathered a cache-sized block at a time, right before their matmuls
            step = min(step, self.GATHER_BLOCK)
        for s in range(0, M, step):
            if cols is None:
                u, v, cc = U[s : s + step], V[s : s + step], c[:, s : s + step]
            else:
                sel = cols[s : s + step]
                u, v, cc = U.index_select(0, sel), V.index_select(0, sel), c.index_select(1, sel)
            m = u.shape[0]
            a = torch.relu(x @ u.reshape(m * r, d).T.to(x.dtype))  # [n, L, m*r]
            a = (a.view(n, L, m, r) * cc[:, None, :, None].to(a.dtype)).view(n, L, m * r)
            out = out + a @ v.reshape(m * r, d).to(a.dtype)
        return out


# ----- token groups -------------------------------------------------------------------------------
def token_masks(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L] bool masks: vision tokens, query tokens (prompt after the image), answer tokens."""
    vis = batch.image_mask.bool()
    B, L = vis.shape
    pos = torch.arange(L, device=vis.device)[None, :].expand(B, L)
    last_img = torch.where(vis, pos, torch.full_like(pos, -1)).max(1).values
    query = (pos > last_img[:, None]) & (pos <= batch.prompt_last[:, None]) & batch.attention_mask.bool()
    return vis, query, batch.target_mask()


def resolve_layer(spec, num_layers: int) -> int:
    """Same convention as WISE: an int is a layer index (negative allowed); a float in [0, 1)
    a relative depth floor(f * num_layers)."""
    if isinstance(spec, bool) or not isinstance(spec, int | float):
        raise ValueError(f"editor.layer: expected an int index or a float depth in [0, 1), got {spec!r}")
    if isinstance(spec, float):
        if not 0.0 <= spec < 1.0:
            raise ValueError(f"editor.layer: relative depth {spec} not in [0, 1)")
        return math.floor(spec * num_layers)
    j = spec + num_layers if spec < 0 else spec
    if not 0 <= j < num_layers:
        raise ValueError(f"editor.layer: {spec} out of range for {num_layers} decoder layers")
    return j


class _Captured(Exception):
    """Stops a forward once layer l_e's output has been read."""


# ----- checkpoint -----------------------------------------------------------------------------------
def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    from bench.data import resolve

    p = resolve(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    return p, p.with_name(CONFIG_FILE)


def read_checkpoint_meta(path: str | Path) -> dict:
    """The metadata ``bench.train`` wrote into a checkpoint (its tensors are not read)."""
    from safetensors import safe_open

    weights, _ = checkpoint_files(path)
    if not weights.is_file():
        raise UserError(f"editor.checkpoint: no LiveEdit checkpoint at {weights}; train one with "
                        "`python -m bench.train +editor=liveedit +model=<model> data=<dataset>`")
    with safe_open(str(weights), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("liveedit", "{}"))
    if not meta:
        raise ValueError(f"editor.checkpoint: {weights} has no LiveEdit metadata (not written by bench.train?)")
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    meta = read_checkpoint_meta(path)
    return load_file(str(checkpoint_files(path)[0])), meta


def save_checkpoint(net: LiveEditNet, meta: dict, out_dir: Path, config: dict) -> Path:
    import os

    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_FILE
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp),
              metadata={"liveedit": json.dumps(meta)})
    os.replace(tmp, path)
    (out_dir / CONFIG_FILE).write_text(json.dumps({"meta": meta, "config": config}, indent=1, default=str) + "\n")
    return path


# ----- editor -----------------------------------------------------------------------------------------
@register("liveedit")
class LiveEdit(Editor):
    can_batch_edit = True  # a batch of requests is one forward; each request still adds its own expert
    needs_training = False  # trained beforehand by `python -m bench.train`; edits need a checkpoint

    @classmethod
    def preflight(cls, cfg, arch) -> None:
        """The checkpoint exists, was written by ``bench.train`` and fits the model (name, hidden size,
        layer), all from its metadata and the model config: before the backbone loads."""
        cls._checked_meta(cfg, arch, read_checkpoint_meta(cls._checkpoint(cfg, arch.name if arch else None)))

    @staticmethod
    def _checkpoint(cfg, model: str | None) -> str:
        ckpt = cfg.get("checkpoint")
        if not ckpt:
            raise ValueError(
                "editor.checkpoint: LiveEdit needs a trained expert generator. Train one with "
                f"`python -m bench.train +editor=liveedit +model={model or '<model>'} data=<dataset>` and pass "
                "editor.checkpoint=<its folder or .safetensors file>")
        return str(ckpt)

    @staticmethod
    def _checked_meta(cfg, bb, meta: dict) -> dict:
        """``meta`` when it fits ``bb`` (a backbone or its Arch; None: nothing to compare)."""
        if bb is None:
            return meta
        ckpt = cfg.get("checkpoint")
        if meta.get("backbone") != bb.name or int(meta.get("hidden_size", -1)) != bb.hidden_size:
            raise ValueError(
                f"editor.checkpoint: {ckpt} was trained for backbone {meta.get('backbone')!r} "
                f"(hidden size {meta.get('hidden_size')}), but this run uses {bb.name!r} "
                f"(hidden size {bb.hidden_size}); train one for this backbone with "
                f"`python -m bench.train +editor=liveedit +model={bb.name}`")
        if int(meta["layer"]) >= bb.num_layers:
            raise ValueError(f"editor.checkpoint: layer {meta['layer']} does not exist in {bb.name}")
        return meta

    def __init__(self, backbone, cfg) -> None:
        super().__init__(backbone, cfg)
        ckpt = self._checkpoint(cfg, backbone.name)
        state, meta = load_checkpoint(ckpt)
        self._checked_meta(cfg, backbone, meta)
        net = build_net(backbone, meta)
        net.load_state_dict(state)
        net.requires_grad_(False).eval()
        self._setup(net, meta)

    @classmethod
    def with_net(cls, backbone, cfg, net: LiveEditNet, meta: dict) -> LiveEdit:
        """An editor around a given (e.g. training) network, without a checkpoint file."""
        obj = cls.__new__(cls)
        Editor.__init__(obj, backbone, cfg)
        obj._setup(net, meta)
        return obj

    def _setup(self, net: LiveEditNet, meta: dict) -> None:
        backbone, cfg = self.backbone, self.cfg
        self.meta = meta
        self.layer_idx = int(meta["layer"])
        self.device = module_device(backbone.layer(self.layer_idx))  # not backbone.device (device_map=auto)
        self.net = net
        self.hard = bool(cfg.get("hard_routing", True))
        self.soft = bool(cfg.get("soft_routing", True))
        self._capture: dict | None = None
        self._train_fn = None  # set by the trainer: h -> residual-added h
        self._warned = False
        self._clear()
        self._handle = backbone.layer(self.layer_idx).register_forward_hook(self._hook)

    @staticmethod
    def train_offline(backbone, cfg, train_set, out_dir, tracker, resume: bool = False, progress: bool = True) -> dict:
        """The separate training stage (``python -m bench.train``): see :mod:`editors.liveedit_train`."""
        from .liveedit_train import train

        return train(backbone, cfg, train_set, out_dir, tracker, resume, progress)

    # ----- memory ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        m = self.meta
        dev, d, dm, e, r = self.device, self.backbone.hidden_size, m["module_dim"], m["n_query"], m["rank"]
        z = dict(dtype=STATE_DTYPE, device=dev)
        self.psi = torch.zeros(0, e, dm, **z)
        self.phi = torch.zeros(0, e, dm, **z)
        self.U = torch.zeros(0, r, d, **z)
        self.V = torch.zeros(0, r, d, **z)
        self.n_edits = 0

    @property
    def n_experts(self) -> int:
        return int(self.U.shape[0])

    def reset(self) -> None:
        self._capture, self._train_fn = None, None
        self._clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"psi": self.psi.clone(), "phi": self.phi.clone(), "U": self.U.clone(), "V": self.V.clone(),
                "n_edits": torch.tensor([self.n_edits], dtype=torch.long)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"psi", "phi", "U", "V"} - set(state)
        if missing:
            raise KeyError(f"LiveEdit state_dict lacks {sorted(missing)}")
        z = dict(device=self.device, dtype=STATE_DTYPE)
        self.psi, self.phi = state["psi"].to(**z).clone(), state["phi"].to(**z).clone()
        self.U, self.V = state["U"].to(**z).clone(), state["V"].to(**z).clone()
        self.n_edits = int(state["n_edits"][0]) if "n_edits" in state else self.n_experts

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.psi, self.phi, self.U, self.V))

    def remove(self) -> None:
        """Detach the hook (the editor is unusable afterwards)."""
        self._handle.remove()

    # ----- reps at layer l_e ------------------------------------------------------------------------
    @torch.no_grad()
    def layer_reps(self, batch: Batch, full: bool = False):
        """Layer l_e's output [B, L, d] without edits (and the logits when ``full``)."""
        self._capture = {"full": full}
        try:
            out = self.backbone.forward(batch)
        except _Captured:
            out = None
        finally:
            cap, self._capture = self._capture, None
        return (cap["h"], out.logits) if full else cap["h"]

    # ----- editing ------------------------------------------------------------------------------------
    def edit(self, request: Probe) -> dict:
        return self.edit_batch([request])

    @torch.no_grad()
    def edit_batch(self, requests: Sequence[Probe]) -> dict:
        requests = list(requests)
        for r in requests:
            if r.image is None:
                raise ValueError("LiveEdit edits need an image (its hard routing compares vision features); "
                                 f"request {r.prompt!r} has none")
        batch = self.backbone.prepare(requests)
        h = self.layer_reps(batch).float()
        vis, query, ans = token_masks(batch)
        new = []
        for b in range(batch.size):  # each request alone: its expert does not depend on its company
            hb = h[b : b + 1]
            new.append(self.net.new_experts(hb[:, vis[b]], None, hb[:, query[b]], None,
                                            hb[:, vis[b] | query[b] | ans[b]], None))
        psi, phi, U, V = (torch.cat(t, 0) for t in zip(*new, strict=True))
        self.psi, self.phi = torch.cat([self.psi, psi]), torch.cat([self.phi, phi])
        self.U, self.V = torch.cat([self.U, U]), torch.cat([self.V, V])
        self.n_edits += len(requests)
        return {"experts": self.n_experts}

    # ----- routing ------------------------------------------------------------------------------------
    @torch.no_grad()
    def route(self, batch: Batch, h: torch.Tensor):
        """Per-sample routing of a batch: (rows with an image [n], c [n, M], keep [n, M],
        visual scores [n, M], sentinel scores [n])."""
        vis, query, _ = token_masks(batch)
        rows = [b for b in range(batch.size) if bool(vis[b].any()) and bool(query[b].any())]
        M = self.n_experts
        if not rows or not M:
            z = h.new_zeros(0, M)
            return rows, z, z.bool(), z, h.new_zeros(0)
        feats = [self.net.input_features(h[b : b + 1, vis[b]], None, h[b : b + 1, query[b]], None) for b in rows]
        psi_in, phi_in, s0 = (torch.cat(t, 0) for t in zip(*feats, strict=True))
        s_vis = self.net.sim(phi_in, self.phi)  # [n, M]: one op against every stored expert
        keep = s_vis > s0[:, None] if self.hard else torch.ones_like(s_vis, dtype=torch.bool)
        c = self.net.coefficients(self.net.sim(psi_in, self.psi), keep, self.soft)
        return rows, c, keep, s_vis, s0

    @torch.no_grad()
    def routing_stats(self, batch: Batch) -> dict:
        """What the hard routing keeps for ``batch``: probes routed (with an image and a query),
        and stored experts kept per routed probe (mean, max). The residual's cost at inference is
        linear in the kept experts, not in the stored ones."""
        _, _, keep, _, _ = self.route(batch, self.layer_reps(batch).float())
        kept = keep.sum(1).float() if keep.shape[0] else torch.zeros(1)  # no experts: nothing routed
        return {"experts": self.n_experts, "routed": int(keep.shape[0]), "kept_mean": round(float(kept.mean()), 2),
                "kept_max": int(kept.max())}

    def _hook(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if self._capture is not None:
            self._capture["h"] = h.detach()
            if not self._capture["full"]:
                raise _Captured
            return output
        if self._train_fn is not None:
            new = self._train_fn(h)
        elif self.n_experts:
            new = self._apply(h)
        else:
            return output
        if new is h:
            return output
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _apply(self, h: torch.Tensor) -> torch.Tensor:
        ctx = self.backbone.context
        if ctx is None or tuple(ctx.attention_mask.shape) != tuple(h.shape[:2]):
            if not self._warned:
                log.warning("LiveEdit: layer %d ran outside backbone.forward; no experts applied", self.layer_idx)
                self._warned = True
            return h
        hf = h.float()
        rows, c, keep, _, _ = self.route(ctx, hf)
        live = [i for i, b in enumerate(rows) if bool(keep[i].any())]
        if not live:
            return h
        idx = torch.tensor([rows[i] for i in live], device=h.device)
        dh = self.net.residual(hf[idx], self.U, self.V, c[live])
        out = h.clone()
        out[idx] = (hf[idx] + dh).to(h.dtype)
        return out


def build_net(backbone, arch: dict, token_init: str = "kaiming_normal") -> LiveEditNet:
    """The network of ``arch`` in float32 on the device of layer ``arch["layer"]`` (default: the
    backbone's first device); ``token_init`` only matters when training from scratch (a checkpoint
    overwrites every parameter)."""
    dev = module_device(backbone.layer(int(arch["layer"]))) if "layer" in arch else backbone.device
    return LiveEditNet(backbone.hidden_size, int(arch["module_dim"]), int(arch["heads"]), int(arch["n_query"]),
                       int(arch["rank"]), float(arch["lora_scale"]), int(arch["sentinel_tokens"]), token_init
                       ).to(device=dev, dtype=STATE_DTYPE)
