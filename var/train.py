"""Training the VAR transformer with Lightning: `var train --config configs/var/<preset>.yaml key=value ...`.

Teacher forcing over all L tokens with a uniform cross-entropy (DESIGN.md section 9), from a token cache
(`var tokenize`, memory-mapped; the default) or from images tokenized on the fly (`data.source=images`,
fresh augmentations at the cost of an encoder pass per step). Around it: AdamW (0.9, 0.95) with weight
decay on matrices only, lr = base_lr * global batch / 256, warmup then cosine or linear decay, gradient
clipping, class dropout for guidance (the model's `cond_drop_rate`), bf16/fp16 autocast (the head runs
in fp32 inside the model), an EMA of the weights (sampled from and exported), per-scale loss/accuracy,
throughput, sample grids, atomic step checkpoints with exact resume, and the export of `load_model`'s
folder at the end. DDP/FSDP and several nodes come from the Lightning Trainer (`trainer.*`).
The model knows nothing of this file (STYLE.md point 3).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import grad_norm, rank_zero_only
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from scaffold.config import add_config_arguments, load_config
from scaffold.io import atomic_path
from scaffold.training import (
    PRECISIONS,
    AtomicCheckpointIO,
    StepCheckpoint,
    TrainingError,
    find_resume_checkpoint,
    fit_and_checkpoint,
    parse_devices,
    prepare_run_folder,
)
from tokenizer import DataConfig, MultiScaleVQVAE, build_datasets
from tokenizer.data import class_names as dataset_class_names
from tokenizer.train import StepBatchSampler, ema_update
from var.export import SamplingDefaults, export_model
from var.model import VAR, VARConfig
from var.sample import sample
from var.tokenize import TokenCache, TokenCacheError, load_vae, tokenizer_identity

__all__ = [
    "NO_DECAY_KEYS",
    "OptimConfig",
    "SampleLogConfig",
    "TrainDataConfig",
    "TrainerConfig",
    "TrainingError",
    "VARData",
    "VARTrainConfig",
    "VARTraining",
    "add_arguments",
    "build_trainer",
    "check_cache",
    "lr_factor",
    "param_groups",
    "resolve_tokenizer",
    "run",
    "save_grid_rows",
    "train_var",
]

log = logging.getLogger(__name__)

# Parameters kept out of weight decay besides 1-D ones and embedding tables: the published `nowd_keys`
# (VAR train.py: pos_1LC, pos_start, lvl_embed, ada_gss, scale_mul, ...) plus the per-channel gains of the
# GSPN mixer, which are 2-D only because they stack one vector per scan direction.
NO_DECAY_KEYS = ("pos_start", "pos_1LC", "lvl_embed", "class_emb", "ada_gss", "scale_mul", "skip_d", "merge_w")


# ------------------------------------------------------------------------------------------ config
@dataclass
class OptimConfig:
    base_lr: float = 1e-4  # per 256 images of global batch (published tblr)
    lr: float = 0.0  # > 0 overrides base_lr * global_batch / 256
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.05  # matrices only (see param_groups)
    warmup_steps: int = 0
    warmup_start_ratio: float = 0.005  # lr ratio at step 0 of the warmup (published wp0)
    schedule: str = "cosine"  # after warmup: "cosine", "linear" or "constant"
    min_lr_ratio: float = 0.1  # final lr / peak lr (published wpe)
    grad_clip: float = 2.0  # max global grad norm (published tclip); 0 turns it off
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if self.base_lr <= 0 or self.lr < 0:
            raise ValueError("optim.base_lr must be > 0 and optim.lr >= 0")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 < self.warmup_start_ratio <= 1.0:
            raise ValueError("optim.min_lr_ratio must be in [0, 1] and optim.warmup_start_ratio in (0, 1]")
        if self.grad_clip < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("optim.grad_clip, optim.warmup_steps and optim.weight_decay must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class TrainDataConfig:
    source: str = "cache"  # "cache" (a `var tokenize` folder) or "images" (tokenized on the fly every step)
    cache: str = "runs/tokens"
    images: DataConfig = field(default_factory=DataConfig)  # source=images: the dataset

    def validate(self) -> None:
        if self.source not in ("cache", "images"):
            raise ValueError(f"data.source must be 'cache' or 'images', got {self.source!r}")


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # "cpu", "gpu", "auto"
    devices: str = "auto"  # "auto", a count ("8") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"  # "auto", "ddp", "fsdp", "ddp_spawn", ...
    num_workers: int = 2  # DataLoader workers per device
    progress_bar: bool = True


@dataclass
class SampleLogConfig:
    every_n_steps: int = 1000  # sample grid PNG of the EMA model in out_dir/samples; 0 turns it off
    classes: list[int] = field(default_factory=list)  # empty: the first (up to) 8 classes
    per_class: int = 4


@dataclass
class VARTrainConfig:
    model: VARConfig = field(default_factory=VARConfig)
    tokenizer: str = ""  # exported tokenizer folder or "hub"; empty: the one the token cache records
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    samples: SampleLogConfig = field(default_factory=SampleLogConfig)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)  # exported with the model
    out_dir: str = "runs/var"
    resume: str = "false"  # "false", "true" (the newest checkpoint of out_dir that loads) or a checkpoint path
    max_steps: int = 100_000
    batch_size: int = 32  # per device
    precision: str = "bf16-mixed"  # "32-true", "bf16-mixed", "16-mixed"; logits always fp32
    ckpt_every_n_steps: int = 1000
    keep_checkpoints: int = 2  # step checkpoints kept besides last.ckpt (the newest)
    log_every_n_steps: int = 50
    ema_decay: float = 0.9999  # 0 turns the EMA off (then the live weights are sampled and exported)
    init_adaln_gamma: float = 1e-5  # initial scale of the AdaLN gates (published alng; d16 recipe: 1e-3)
    compile: bool = False  # torch.compile the transformer's training forward
    seed: int = 0

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        for name in ("max_steps", "batch_size", "ckpt_every_n_steps", "keep_checkpoints", "log_every_n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if "fsdp" in self.trainer.strategy and self.ema_decay > 0:
            # The EMA copy would be sharded differently from the live weights; not supported yet.
            raise ValueError("trainer.strategy=fsdp needs ema_decay=0 (an EMA of sharded weights is not supported)")
        self.model.block_attention()  # a per-block list of the wrong length fails here, naming depth

    def resume_path(self) -> str | None:
        """The checkpoint to resume from, or None for a fresh run (`scaffold.training.find_resume_checkpoint`)."""
        return find_resume_checkpoint(self.out_dir, self.resume)


# -------------------------------------------------------------------------------------------- data
class VARData(L.LightningDataModule):
    """Resumable random batches (a function of seed, step and rank) of a token cache or of images.

    `setup` checks the data against the model and the tokenizer, so a mismatch is one message up front.
    """

    def __init__(self, cfg: VARTrainConfig, vae: MultiScaleVQVAE):
        super().__init__()
        self.cfg, self.vae = cfg, vae
        self.train_set: Dataset | None = None
        self.class_names: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        dc, mc = self.cfg.data, self.cfg.model
        if dc.source == "cache":
            cache = TokenCache(dc.cache)
            check_cache(cache, mc, self.vae)
            self.train_set, self.class_names = cache, list(cache.header.class_names)
            top = int(cache.labels.max()) if len(cache) else 0
            where = f"token cache {dc.cache}"
        else:
            if dc.images.image_size != self.vae.image_size:
                raise TrainingError(
                    f"data.images.image_size={dc.images.image_size} but the tokenizer takes {self.vae.image_size} px"
                )
            self.train_set = build_datasets(dc.images)[0]
            self.class_names = dataset_class_names(self.train_set)
            top = len(self.class_names) - 1
            where = f"dataset {dc.images.root or dc.images.name}"
        if top >= mc.num_classes or len(self.class_names) > mc.num_classes:
            raise TrainingError(
                f"{where} has class ids up to {top} ({len(self.class_names)} classes) but model.num_classes="
                f"{mc.num_classes}: set model.num_classes={max(top + 1, len(self.class_names))}"
            )
        if len(self.class_names) < mc.num_classes:  # a model with spare classes: name them by id
            self.class_names += [str(i) for i in range(len(self.class_names), mc.num_classes)]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # Built after a checkpoint is restored (Lightning sets up data last), so global_step is the resumed one.
        sampler = StepBatchSampler(
            len(self.train_set),
            self.cfg.batch_size,
            self.cfg.seed,
            start_step=trainer.global_step if trainer else 0,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        nw = self.cfg.trainer.num_workers
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=nw,
            persistent_workers=nw > 0,
            pin_memory=torch.cuda.is_available(),
        )


def check_cache(cache: TokenCache, model: VARConfig, vae: MultiScaleVQVAE) -> None:
    """The cache must come from the tokenizer in use, and that tokenizer must fit the model."""
    h = cache.header
    if h.vocab_size != model.vocab_size or tuple(h.patch_nums) != tuple(model.patch_nums):
        raise TokenCacheError(
            f"token cache {cache.path} was made by a tokenizer with vocab_size={h.vocab_size}, "
            f"patch_nums={tuple(h.patch_nums)}, but the model expects vocab_size={model.vocab_size}, "
            f"patch_nums={tuple(model.patch_nums)}: tokenize again with the model's tokenizer or fix model.*"
        )
    if (
        vae.vocab_size != model.vocab_size
        or tuple(vae.patch_nums) != tuple(model.patch_nums)
        or (vae.c_vae != model.c_vae)
    ):
        raise TrainingError(
            f"the tokenizer has vocab_size={vae.vocab_size}, patch_nums={tuple(vae.patch_nums)}, "
            f"c_vae={vae.c_vae} but the model expects {model.vocab_size}, {tuple(model.patch_nums)}, {model.c_vae}"
        )
    ident = tokenizer_identity(vae)
    if h.tokenizer_id != ident:
        raise TokenCacheError(
            f"token cache {cache.path} was made by another tokenizer ({h.tokenizer}, id {h.tokenizer_id}) "
            f"than the one given (id {ident}): its tokens would decode to other images; tokenize again"
        )


# ------------------------------------------------------------------------------------ optimization
def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], list[str], list[str]]:
    """AdamW groups: weight decay on matrices (Linear weights, conv kernels, memory slots) only.

    Not on 1-D parameters (biases, q/v biases), embedding tables (class, scale), position embeddings,
    or `NO_DECAY_KEYS`. Returns (groups, decayed names, undecayed names).
    """
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in tables or any(key in name for key in NO_DECAY_KEYS):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups, decay_names, no_decay_names


def lr_factor(step: int, o: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak lr at `step`: linear warmup from warmup_start_ratio, then the decay to min_lr_ratio."""
    if step < o.warmup_steps:
        return o.warmup_start_ratio + (1 - o.warmup_start_ratio) * step / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    t = min(1.0, (step - o.warmup_steps) / max(1, max_steps - 1 - o.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * t)) if o.schedule == "cosine" else 1 - t
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape


# ------------------------------------------------------------------------------------------ module
class VARTraining(L.LightningModule):
    """The transformer (`var`), its EMA copy and the frozen tokenizer (`vae`, kept out of checkpoints)."""

    def __init__(self, cfg: VARTrainConfig, vae: MultiScaleVQVAE, class_names: list[str] | None = None):
        super().__init__()
        self.cfg = cfg
        self.var = VAR(cfg.model)
        self.var.init_weights(init_adaln_gamma=cfg.init_adaln_gamma)
        self.ema = copy.deepcopy(self.var).requires_grad_(False).eval() if cfg.ema_decay > 0 else None
        self.vae = vae.requires_grad_(False).eval()
        self.class_names = list(class_names or [str(i) for i in range(cfg.model.num_classes)])
        self.split_sizes = [pn * pn for pn in cfg.model.patch_nums]
        # Not a registered submodule: the compiled wrapper shares the parameters of `var`.
        object.__setattr__(self, "_forward", torch.compile(self.var) if cfg.compile else self.var)
        self._tokens_since_log = 0
        self._time_of_log: float | None = None

    @property
    def eval_model(self) -> VAR:
        """The weights that are sampled and exported: the EMA when there is one."""
        return self.ema if self.ema is not None else self.var

    # ---------------------------------------------------------------------------------- optimizers
    def peak_lr(self) -> float:
        o = self.cfg.optim
        world = self.trainer.world_size if self._trainer is not None else 1
        return o.lr if o.lr > 0 else o.base_lr * self.cfg.batch_size * world / 256

    def configure_optimizers(self):
        o = self.cfg.optim
        groups, _, _ = param_groups(self.var, o.weight_decay)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        opt = torch.optim.AdamW(groups, lr=self.peak_lr(), betas=(o.beta1, o.beta2), **fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, o, self.cfg.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After the AMP scaler's unscale and before clipping: the true norm (logged at log steps only).
        if (self.global_step + 1) % self.cfg.log_every_n_steps == 0:
            norms = grad_norm(self.var, norm_type=2)
            if "grad_2.0_norm_total" in norms:
                self.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)

    # ------------------------------------------------------------------------------------ training
    def _tokens(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, label_B = batch
        if x.is_floating_point():  # data.source=images: tokenize on the fly with the frozen tokenizer
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                x = torch.cat(self.vae.img_to_idx(x.float()), dim=1)
        return x.long(), label_B.long()

    def training_step(self, batch, batch_idx: int):
        cfg, step = self.cfg, self.global_step
        # Class dropout and drop-path draw from the global RNG: seeded by (seed, step, rank) so that a
        # resumed run draws what the uninterrupted run drew.
        torch.manual_seed((cfg.seed * 1_000_003 + step) * 1009 + self.global_rank)
        idx_BL, label_B = self._tokens(batch)
        B, Ltok = idx_BL.shape
        with torch.no_grad(), torch.autocast(idx_BL.device.type, enabled=False):
            x_BLCv = self.vae.idx_to_var_input(list(idx_BL.split(self.split_sizes, dim=1)))
        logits_BLV = self._forward(label_B, x_BLCv)
        V = logits_BLV.shape[-1]
        loss_BL = F.cross_entropy(
            logits_BLV.float().view(-1, V),
            idx_BL.view(-1),
            label_smoothing=cfg.optim.label_smoothing,
            reduction="none",
        ).view(B, Ltok)
        loss = loss_BL.mean()  # uniform weight per token (published loss_weight = 1/L)
        self._check_finite(loss, step)
        self._tokens_since_log += B * Ltok * self.trainer.world_size
        if (step + 1) % cfg.log_every_n_steps == 0:
            self._log_scales(loss_BL.detach(), logits_BLV.detach(), idx_BL, B)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=B)
        return loss

    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):  # every rank stops together
            last = Path(self.cfg.out_dir) / "checkpoints" / "last.ckpt"
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise TrainingError(
                f"the loss is {loss.item()} at step {step}: training stopped before the update; {kept}. "
                f"Lower optim.base_lr, raise optim.warmup_steps or use precision=bf16-mixed/32-true, then resume=true"
            )

    @torch.no_grad()
    def _log_scales(self, loss_BL: torch.Tensor, logits_BLV: torch.Tensor, idx_BL: torch.Tensor, B: int) -> None:
        """Per-scale mean loss and accuracy, over all tokens (published Lmean) and the last scale (Ltail)."""
        hit_BL = (logits_BLV.argmax(-1) == idx_BL).float()
        logs = {"train/loss_mean": loss_BL.mean(), "train/acc_mean": hit_BL.mean() * 100}
        last = self.split_sizes[-1]
        logs["train/loss_tail"] = loss_BL[:, -last:].mean()
        logs["train/acc_tail"] = hit_BL[:, -last:].mean() * 100
        for si, (l_Bl, h_Bl) in enumerate(
            zip(loss_BL.split(self.split_sizes, 1), hit_BL.split(self.split_sizes, 1), strict=True)
        ):
            logs[f"scale/loss_{si}"] = l_Bl.mean()
            logs[f"scale/acc_{si}"] = h_Bl.mean() * 100
        logs["train/lr"] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"])
        now = time.perf_counter()
        if self._time_of_log is not None:
            logs["train/tokens_per_s"] = torch.tensor(self._tokens_since_log / max(now - self._time_of_log, 1e-9))
        self._time_of_log, self._tokens_since_log = now, 0
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=B, sync_dist=False)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Here rather than in on_train_batch_end: the step checkpoint callback runs before that hook, and
        # a checkpoint must hold the EMA of the weights it holds.
        if self.ema is not None:
            n = self.global_step + 1
            # Warm-up of the decay (TF ExponentialMovingAverage's num_updates rule): short runs still average.
            ema_update(self.ema, self.var, min(self.cfg.ema_decay, n / (10 + n)))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step  # optimizer steps done, this one included
        sc = self.cfg.samples
        if sc.every_n_steps > 0 and step % sc.every_n_steps == 0 and self.trainer.is_global_zero:
            self.save_samples(Path(self.cfg.out_dir) / "samples" / f"step{step:07d}.png")

    @torch.no_grad()
    def save_samples(self, path: Path) -> None:
        """A grid of the eval model's samples: one row per class of `samples.classes`, `per_class` columns."""
        sc, sp = self.cfg.samples, self.cfg.sampling
        classes = list(sc.classes) or list(range(min(8, self.cfg.model.num_classes)))
        model = self.eval_model
        was_training = model.training
        model.eval()
        labels = torch.tensor(classes, device=self.device).repeat_interleave(sc.per_class)
        seeds = list(range(len(labels)))  # per-image generators: the same images at every step
        img = sample(model, self.vae, labels, cfg=sp.cfg, top_k=sp.top_k, top_p=sp.top_p, seed=seeds)
        model.train(was_training)
        rows = img.view(len(classes), sc.per_class, *img.shape[1:])
        save_grid_rows(rows, path)

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The tokenizer is frozen and loaded from its own folder: not copied into every checkpoint.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("vae.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"].update({f"vae.{k}": v for k, v in self.vae.state_dict().items()})

    def train(self, mode: bool = True):
        # Lightning puts the whole module in train mode; the tokenizer and the EMA copy are never trained.
        super().train(mode)
        self.vae.eval()
        if self.ema is not None:
            self.ema.eval()
        return self


def save_grid_rows(img_RCB3HW: torch.Tensor, path: Path) -> None:
    """Images [rows, cols, 3, H, W] in [0, 1] as one PNG (row r of the grid = img[r]), written atomically."""
    rows = [torch.cat(list(r.detach().float().cpu().clamp(0, 1)), dim=2) for r in img_RCB3HW]  # [3, H, C*W] each
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()  # [R*H, C*W, 3]
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


# ------------------------------------------------------------------------------------- the driver
def _progress_bar():
    """Lightning's rich bar when `rich` is installed, else its default TQDM bar."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return []
    from lightning.pytorch.callbacks import RichProgressBar

    return [RichProgressBar(leave=True)]


def build_trainer(cfg: VARTrainConfig, **overrides) -> L.Trainer:
    tc = cfg.trainer
    checkpoint = StepCheckpoint(cfg.out_dir, cfg.ckpt_every_n_steps, cfg.keep_checkpoints)
    callbacks = [checkpoint, *(_progress_bar() if tc.progress_bar else [])]
    # The frozen tokenizer and the EMA copy stay in eval mode on purpose (VARTraining.train).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    kwargs = dict(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        precision=cfg.precision,
        accelerator=tc.accelerator,
        devices=parse_devices(tc.devices),
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        gradient_clip_val=cfg.optim.grad_clip or None,
        gradient_clip_algorithm="norm",
        log_every_n_steps=cfg.log_every_n_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=CSVLogger(cfg.out_dir, name="logs"),
        default_root_dir=cfg.out_dir,
        use_distributed_sampler=False,  # StepBatchSampler shards by rank itself
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def resolve_tokenizer(cfg: VARTrainConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.data.source == "cache":
        return TokenCache(cfg.data.cache).header.tokenizer  # a missing cache is reported here
    raise TrainingError("tokenizer= is required with data.source=images (an exported tokenizer folder or 'hub')")


def train_var(cfg: VARTrainConfig, vae: MultiScaleVQVAE | None = None, **trainer_overrides) -> Path:
    """Train (or resume), checkpoint, and export the EMA weights to `out_dir/model`; returns that folder."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prepare_run_folder(cfg.out_dir)
    ckpt_path = cfg.resume_path()
    vae = vae if vae is not None else load_vae(resolve_tokenizer(cfg))
    data = VARData(cfg, vae)
    data.setup("fit")  # data problems surface now, as one message, not inside the trainer
    module = VARTraining(cfg, vae, data.class_names)
    trainer = build_trainer(cfg, **trainer_overrides)
    hint = "; optim.lr follows the global batch"
    fit_and_checkpoint(trainer, module, data, ckpt_path, cfg.out_dir, cfg.batch_size, hint)
    export_dir = Path(cfg.out_dir) / "model"
    if trainer.is_global_zero:
        export_model(
            module.var,
            vae,
            export_dir,
            class_names=data.class_names,
            sampling=cfg.sampling,
            state_dict=module.eval_model.state_dict(),
        )
        log.info("exported the model to %s (load it with var.load_model, sample it with `var sample`)", export_dir)
    return export_dir


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(VARTrainConfig, args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = train_var(cfg)
    if rank_zero_only.rank == 0:
        print(f"model written to {out}")
    return 0
