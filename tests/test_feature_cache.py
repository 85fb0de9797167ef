"""Frozen image features cached on disk: a second run reads them instead of encoding."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from bench.backbones.vision import DiskFeatureCache, FeatureCache, feature_cache_dir


def _image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def counted(tiny, monkeypatch, tmp_path):
    """tiny with a fresh disk cache folder, empty memory cache and a counter of encoder calls."""
    monkeypatch.setenv("BENCH_FEATURE_CACHE", str(tmp_path / "features"))
    monkeypatch.setattr(tiny, "features", FeatureCache())
    monkeypatch.setattr(tiny, "_disk", None)
    monkeypatch.setattr(tiny, "_disk_on", True)
    calls = []
    fwd = tiny.vision.forward
    monkeypatch.setattr(tiny.vision, "forward", lambda x, *a: calls.append(x.shape[0]) or fwd(x, *a))
    return tiny, calls


def test_second_run_reads_disk_not_encoder(counted, tmp_path, monkeypatch):
    bb, calls = counted
    imgs = [_image(tmp_path / f"im{i}.png", i) for i in range(3)]
    first = bb.vision_features(imgs + imgs[:1])
    assert sum(calls) == 3
    files = list((feature_cache_dir()).rglob("*.safetensors"))
    assert len(files) == 3 and all(f.is_relative_to(tmp_path / "features") for f in files)
    # "second run": nothing in memory, a new cache object (as a new process would build)
    monkeypatch.setattr(bb, "features", FeatureCache())
    monkeypatch.setattr(bb, "_disk", None)
    second = bb.vision_features(imgs + imgs[:1])
    assert sum(calls) == 3 and bb._disk.hits == 3  # not one more image encoded
    assert torch.equal(first, second)
    # an image changed on disk (size / mtime) is encoded again
    _image(tmp_path / "im1.png", 99)
    os.utime(imgs[1], ns=(1, 1))
    monkeypatch.setattr(bb, "features", FeatureCache())
    third = bb.vision_features(imgs)
    assert sum(calls) == 4 and torch.equal(third[0], first[0]) and not torch.equal(third[1], first[1])


def test_switch_off_writes_nothing(counted, tmp_path, monkeypatch):
    bb, calls = counted
    monkeypatch.setattr(bb, "_disk_on", False)
    bb.vision_features([_image(tmp_path / "a.png", 0)])
    assert sum(calls) == 1 and bb.disk_features() is None
    assert not (tmp_path / "features").exists()


def test_key_separates_encoders_and_damaged_file_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_FEATURE_CACHE", str(tmp_path / "f"))
    img = _image(tmp_path / "a.png", 0)
    a, b = DiskFeatureCache("enc-a"), DiskFeatureCache("enc-b")
    a.put(img, torch.ones(4, 3))
    assert torch.equal(a.get(img), torch.ones(4, 3)) and b.get(img) is None and a.folder != b.folder
    next(a.folder.rglob("*.safetensors")).write_bytes(b"not a safetensors file")
    assert a.get(img) is None  # re-encoded by the caller, then rewritten
    assert not list(a.folder.rglob("*.tmp"))


def test_weights_fingerprint_sees_weight_changes(tiny):
    from bench.backbones.vision import weights_fingerprint

    fp = weights_fingerprint(tiny.vision)
    w = tiny.vision.conv.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w[0, 0, 0, 0] += 1.0
        try:
            assert weights_fingerprint(tiny.vision) != fp
        finally:
            w.copy_(saved)
    assert weights_fingerprint(tiny.vision) == fp
