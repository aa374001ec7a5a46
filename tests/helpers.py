"""Shared test helpers: tiny VAR configs with non-trivial weights, a tiny emoji package, a two-parameter
Lightning run with step checkpoints."""

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from scaffold.config import load_config
from scaffold.resume import AtomicCheckpointIO, StepCheckpoint
from scaffold.run_config import RunConfig
from tokenizer.emoji import CATEGORIES
from var import VAR, VARConfig

TINY_VAR = dict(depth=2, num_classes=10, patch_nums=(1, 2, 3, 4), vocab_size=64, c_vae=8)
L_TINY = 1 + 4 + 9 + 16


def randomise(model: VAR, seed: int = 0) -> VAR:
    """Non-trivial weights everywhere: the published init leaves AdaLN gates at ~1e-5 and the head at 0.02."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "scale_mul" in name else 0.1))
    return model


def tiny_var(seed: int = 0, **overrides) -> VAR:
    """A tiny VAR (depth 2, 4 scales, V=64) in eval mode with `randomise`d weights."""
    torch.manual_seed(0)
    return randomise(VAR(VARConfig(**{**TINY_VAR, **overrides})), seed).eval()


def seeded_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic non-trivial weights in sorted-key order; buffers keep their values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sorted(model.state_dict().items()):
        if k == "lvl_1L" or k.endswith(("zero_k_bias", "ema_vocab_hit_SV")):
            out[k] = v.clone()
            continue
        r = torch.randn(v.shape, generator=g)
        if k.endswith("embedding.weight"):
            out[k] = r
        elif "norm" in k and v.ndim == 1 and k.endswith(".weight"):
            out[k] = 1 + 0.1 * r
        elif "scale_mul" in k:
            out[k] = 0.5 * r
        elif v.ndim == 1:
            out[k] = 0.1 * r
        else:
            out[k] = r / v[0].numel() ** 0.5
    return out


def full_disk(monkeypatch, room: int = 100) -> None:
    """Files written through `scaffold.io` fail as on a full disk: ENOSPC once `room` bytes are written.

    (A real full filesystem, e.g. a small tmpfs, needs root to mount; this is the same error at the same call.)
    """
    import builtins
    import errno
    import os

    class FullFile:
        def __init__(self, f):
            self.f, self.left = f, room

        def write(self, data) -> int:
            data = memoryview(data).cast("B")
            n = min(len(data), self.left)
            self.f.write(data[:n])
            self.left -= n
            if n < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return n

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def full_open(*args, **kwargs) -> FullFile:
        return FullFile(builtins.open(*args, **kwargs))  # closed by the caller's `with`

    monkeypatch.setattr("scaffold.io.open", full_open, raising=False)


def _png(color: tuple[int, int, int, int], size: int = 8) -> bytes:
    arr = np.zeros((size, size, 4), np.uint8)
    arr[2:6, 2:6] = color  # an opaque square on a transparent ground
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def emoji_package_files(per_category: int = 4) -> dict[str, bytes]:
    """emoji.json, LICENSE, package.json and the PNGs of a package with `per_category` emoji in each of the
    nine categories (the first of each with two skin-tone variants) and one "Component" emoji."""
    entries, files = [], {}
    n = 0
    for c, cat in enumerate(CATEGORIES):
        for j in range(per_category):
            n += 1
            code = f"1F{n:03X}"
            entry = {"unified": code, "image": f"{code.lower()}.png", "category": cat, "has_img_google": True}
            files[f"img/google/64/{code.lower()}.png"] = _png((20 * c, 10 * j, 200, 255))
            if j == 0:
                entry["skin_variations"] = {}
                for tone in ("1F3FB", "1F3FF"):
                    name = f"{code.lower()}-{tone.lower()}.png"
                    entry["skin_variations"][tone] = {
                        "unified": f"{code}-{tone}",
                        "image": name,
                        "has_img_google": True,
                    }
                    files[f"img/google/64/{name}"] = _png((20 * c, 10 * j, 100, 255))
            entries.append(entry)
    entries.append({"unified": "1F3FB", "image": "1f3fb.png", "category": "Component", "has_img_google": True})
    files["img/google/64/1f3fb.png"] = _png((1, 2, 3, 255))
    files["emoji.json"] = json.dumps(entries).encode()
    files["LICENSE"] = b"MIT"
    files["package.json"] = b'{"name": "emoji-datasource-google", "version": "16.0.0"}'
    return files


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


_HOLD_LOCK = """
import sys, time
from scaffold.lock import folder_lock
with folder_lock(sys.argv[1], sys.argv[2] or None):
    print("locked", flush=True)
    time.sleep(600)
"""


class LockHolder:
    """A real second process holding `scaffold.lock.folder_lock` on a folder (see `lock_held_elsewhere`)."""

    def __init__(self, folder, lock_file=None):
        import os
        import subprocess
        import sys

        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        args = [sys.executable, "-c", _HOLD_LOCK, str(folder), str(lock_file or "")]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        assert line == "locked", f"the lock holder did not start: {line!r}"
        self.pid = self.proc.pid

    def kill9(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.kill9()
        self.proc.stdout.close()


def lock_held_elsewhere(folder, lock_file=None) -> LockHolder:
    """`with lock_held_elsewhere(folder) as holder:` another process holds the folder's lock until the block ends
    (or `holder.kill9()`, which ends it as kill -9 does)."""
    return LockHolder(folder, lock_file)


def assert_locked_out(err: str, folder, holder: LockHolder) -> None:
    """`err` is the one line a command prints when `holder` has the lock on `folder`."""
    import socket

    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"{folder} is being written by another process" in lines[0], err
    assert f"host {socket.gethostname()}, PID {holder.pid}, since " in lines[0], err


def write_tarball(path: Path, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> str:
    """A .tgz of `files` under `package/` (and `extra` under the names given); returns its integrity string."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**{f"package/{k}": v for k, v in files.items()}, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def record_losses(module, crash_at: int | None = None) -> list[float]:
    """Wrap ``module.training_step`` so that it records each step's loss (the list returned, filled as the
    run goes) and raises a simulated crash at global step ``crash_at``."""
    losses: list[float] = []
    original = module.training_step

    def recording_step(batch, batch_idx):
        if module.global_step == crash_at:
            raise RuntimeError("simulated crash")
        loss = original(batch, batch_idx)
        losses.append(float(loss.detach()))
        return loss

    module.training_step = recording_step
    return losses


class Tiny(L.LightningModule):
    """Two parameters: a fit of a few steps takes well under a second, so the run scaffold is tested alone."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.lin(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_batches() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)


def train_tiny(out_dir: Path, max_steps: int, every: int = 1, keep: int = 2, ckpt_path=None) -> L.Trainer:
    """Fit `Tiny` to `max_steps` with the run's checkpointing (`StepCheckpoint` through `AtomicCheckpointIO`)."""
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=[StepCheckpoint(out_dir, every, keep)],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    trainer.fit(Tiny(), tiny_batches(), ckpt_path=ckpt_path)
    return trainer


def cpu_run_config(tmp_path: Path, *overrides: str) -> RunConfig:
    """A `RunConfig` in `tmp_path` on one CPU in fp32, loaded (and so validated) with `overrides`."""
    base = [f"out_dir={tmp_path}", "trainer.accelerator=cpu", "trainer.devices=1", "precision=32-true"]
    return load_config(RunConfig, None, [*base, *overrides])
