"""LiveEdit's networks (cross-attention feature extractors, expert generator, :class:`LiveEditNet`),
its token masks and layer spec, and its checkpoint files: what :mod:`editors.liveedit` (the editor)
and :mod:`editors.liveedit_train` (its training stage) share. See :mod:`editors.liveedit` for the
method and its departures from the reference."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import nn

from bench.core.backbone import EditableBackbone
from bench.core.editor import Choice
from bench.core.errors import UserError
from bench.core.inject import STATE_DTYPE, module_device
from bench.core.io import dumps
from bench.core.types import Batch

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


class TokenInit(Choice):
    """How learned tokens (query tokens, vision sentinel, expert-generator tokens) start:
    ``editor.train.token_init`` (:func:`learned_tokens`)."""

    kaiming_normal = "kaiming_normal"
    standard_normal = "standard_normal"


TOKEN_INITS = tuple(m.value for m in TokenInit)


class TrainForward(Choice):
    """The forward of the training losses: ``editor.train.forward`` (``editors.liveedit_train.step_losses``)."""

    reference = "reference"
    inference = "inference"


def learned_tokens(shape: tuple[int, ...], init: str) -> nn.Parameter:
    """A learned-token tensor ``[1, n, d]``. ``kaiming_normal`` (the reference: ``nn.init.kaiming_normal_``
    with its defaults, fan_in = n * d for this shape, gain sqrt(2)): N(0, 2 / (n d)); ``standard_normal``:
    N(0, 1), the harness's earlier init, before the round that set every editor as its paper specifies
    it (the shipped smol_llava checkpoint was trained from it)."""
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

    def __init__(
        self,
        d_llm: int,
        d_m: int,
        heads: int,
        n_query: int,
        sentinel_tokens: int = 0,
        token_init: str = "kaiming_normal",
    ) -> None:
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

    def __init__(
        self, d_llm: int, d_m: int, heads: int, rank: int, lora_scale: float, token_init: str = "kaiming_normal"
    ) -> None:
        super().__init__()
        self.tok = learned_tokens((1, rank, d_m), token_init)
        self.norm = nn.LayerNorm(d_llm)
        self.att = CrossAttention(d_m, d_llm, d_m, d_llm, heads)
        self.scale = 1.0 / (lora_scale * math.sqrt(rank))

    def forward(self, reps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.att(self.tok, self.norm(reps), mask) * self.scale


class LiveEditNet(nn.Module):
    def __init__(
        self,
        d_llm: int,
        module_dim: int,
        heads: int,
        n_query: int,
        rank: int,
        lora_scale: float,
        sentinel_tokens: int,
        token_init: str = "kaiming_normal",
    ) -> None:
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
        return (
            e.textual(query, qmask),
            e.visual(query, qmask, vision, vmask),
            self.gen_u(edit, emask),
            self.gen_v(edit, emask),
        )

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
    from bench.core.paths import resolve

    p = resolve(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    return p, p.with_name(CONFIG_FILE)


def read_checkpoint_meta(path: str | Path) -> dict:
    """The metadata ``bench.train`` wrote into a checkpoint (its tensors are not read)."""
    from safetensors import safe_open

    weights, _ = checkpoint_files(path)
    if not weights.is_file():
        raise UserError(
            f"editor.checkpoint: no LiveEdit checkpoint at {weights}; train one with "
            "`python -m bench.train +editor=liveedit +model=<model> data=<dataset>`"
        )
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
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()},
        str(tmp),
        metadata={"liveedit": dumps(meta)},
    )
    os.replace(tmp, path)
    (out_dir / CONFIG_FILE).write_text(dumps({"meta": meta, "config": config}, indent=1, default=str) + "\n")
    return path


# ----- network construction ----------------------------------------------------------------------
def build_net(backbone: EditableBackbone, arch: dict, token_init: str = "kaiming_normal") -> LiveEditNet:
    """The network of ``arch`` in float32 on the device of layer ``arch["layer"]`` (default: the
    backbone's first device); ``token_init`` only matters when training from scratch (a checkpoint
    overwrites every parameter)."""
    dev = module_device(backbone.layer(int(arch["layer"]))) if "layer" in arch else backbone.device
    return LiveEditNet(
        backbone.hidden_size,
        int(arch["module_dim"]),
        int(arch["heads"]),
        int(arch["n_query"]),
        int(arch["rank"]),
        float(arch["lora_scale"]),
        int(arch["sentinel_tokens"]),
        token_init,
    ).to(device=dev, dtype=STATE_DTYPE)
