"""Training the VAR transformer with Lightning: `var train --config configs/var/<preset>.yaml key=value ...`.

Teacher forcing over all L tokens with a uniform cross-entropy (docs/architecture.md section 9), from a token cache
(`var tokenize`, memory-mapped; the default) or from images tokenized on the fly (`data.source=images`,
fresh augmentations at the cost of an encoder pass per step). Around it: AdamW (0.9, 0.95) with weight
decay on matrices only, lr = base_lr * global batch / 256, warmup then cosine or linear decay, gradient
clipping, class dropout for guidance (the model's `cond_drop_rate`), bf16/fp16 autocast (the head runs
in fp32 inside the model), an EMA of the weights (sampled from and exported), per-scale loss/accuracy,
throughput, sample grids, atomic step checkpoints with exact resume, and the export of `load_model`'s
folder at the end. DDP/FSDP and several nodes come from the Lightning Trainer (`trainer.*`).
The model knows nothing of this file.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import grad_norm
from torch.utils.data import DataLoader, Dataset

from kernels import ScaleLayout
from scaffold.batches import step_batch_loader
from scaffold.checkpoint import check_keys
from scaffold.config import add_config_arguments
from scaffold.ema import EMA
from scaffold.errors import TrainingError
from scaffold.loggers import save_grid_rows, throughput_monitor
from scaffold.nonfinite import check_finite_weights, skip_nonfinite
from scaffold.precision import full_precision
from scaffold.run import fit_and_checkpoint, make_trainer, run_folder_lock, run_training, start_run
from scaffold.run_config import RunConfig, TrainerConfig
from scaffold.sharding import clip_gradients, fsdp_strategy, full_state_dict, full_weights
from tokenizer import DataConfig, MultiScaleVQVAE, build_datasets
from tokenizer.data import class_names as dataset_class_names
from var.export import export_model
from var.model import VAR, VARConfig
from var.optim import NO_DECAY_KEYS, OptimConfig, lr_factor, param_groups
from var.sample import sample
from var.settings import MODEL_DEFAULTS, SamplingSettings
from var.token_cache import TokenCache, TokenCacheError, load_vae, tokenizer_identity

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
HINT = "Lower optim.base_lr, raise optim.warmup_steps or use precision=bf16-mixed/32-true"


# ------------------------------------------------------------------------------------------ config
@dataclass
class TrainDataConfig:
    source: str = "cache"  # "cache" (a `var tokenize` folder) or "images" (tokenized on the fly every step)
    cache: str = "runs/tokens"
    images: DataConfig = field(default_factory=DataConfig)  # source=images: the dataset

    def validate(self) -> None:
        if self.source not in ("cache", "images"):
            raise ValueError(f"data.source must be 'cache' or 'images', got {self.source!r}")


@dataclass
class SampleLogConfig:
    every_n_steps: int = 1000  # sample grid PNG of the EMA model in out_dir/samples; 0 turns it off
    classes: list[int] = field(default_factory=list)  # empty: the first (up to) 8 classes
    per_class: int = 4


@dataclass
class VARTrainConfig(RunConfig):
    model: VARConfig = field(default_factory=VARConfig)
    tokenizer: str = ""  # exported tokenizer folder or "hub"; empty: the one the token cache records
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    samples: SampleLogConfig = field(default_factory=SampleLogConfig)
    sampling: SamplingSettings = field(default=MODEL_DEFAULTS)  # the model's defaults, exported with it
    out_dir: str = "runs/var"
    batch_size: int = 32  # per device
    ema_decay: float = 0.9999  # 0 turns the EMA off (then the live weights are sampled and exported)
    compile: bool = False  # torch.compile the transformer's training forward
    renamed: ClassVar[dict[str, str]] = {"init_adaln_gamma": "model.init_adaln_gamma"}  # older files load
    # RunConfig's fields besides (trainer, resume, max_steps, precision: the logits are always fp32, ...).

    def validate(self) -> None:
        super().validate()
        self.model.block_attention()  # a per-block list of the wrong length fails here, naming depth


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
        c = self.cfg
        return step_batch_loader(self.train_set, self.trainer, c.batch_size, c.seed, c.trainer.num_workers)


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


# ------------------------------------------------------------------------------------------ module
class VARTraining(L.LightningModule):
    """The transformer (`var`), its EMA copy and the frozen tokenizer (`vae`, kept out of checkpoints)."""

    def __init__(self, cfg: VARTrainConfig, vae: MultiScaleVQVAE, class_names: list[str] | None = None):
        super().__init__()
        self.cfg = cfg
        self.var = VAR(cfg.model)
        self.var.init_weights()  # drawn twice, as before model.init_adaln_gamma existed: a seed keeps its weights
        # Update n averages with min(ema_decay, n / (10 + n)): short runs still average.
        self.ema = EMA(self.var, cfg.ema_decay, warmup=10).eval() if cfg.ema_decay > 0 else None
        self.vae = vae.requires_grad_(False).eval()
        self.class_names = list(class_names or [str(i) for i in range(cfg.model.num_classes)])
        self.layout = ScaleLayout.of(cfg.model.patch_nums)
        # Grouped before a strategy wraps the model: FSDP flattens the parameters (same objects, 1-D shards).
        self.param_groups = param_groups(self.var, cfg.optim.weight_decay)[0]
        self.checkpoint_keys = [k for k in self.state_dict() if not k.startswith("vae.")]
        if cfg.compile:  # after the EMA copy: it compiles `var`'s calls in place, its state dict keeps its keys
            self.var.compile()

    @property
    def eval_model(self) -> VAR:
        """The weights that are sampled and exported: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.var

    # ---------------------------------------------------------------------------------- optimizers
    def peak_lr(self) -> float:
        o = self.cfg.optim
        per_step = self.trainer.world_size * self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        return o.lr if o.lr > 0 else o.base_lr * self.cfg.batch_size * per_step / 256

    def configure_optimizers(self):
        o = self.cfg.optim
        fused = {"fused": True} if self.device.type == "cuda" else {}
        opt = torch.optim.AdamW(self.param_groups, lr=self.peak_lr(), betas=(o.beta1, o.beta2), **fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, o, self.cfg.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After the AMP scaler's unscale and before clipping: the true norm (logged at log steps only).
        # A non-finite one skips the update (no gradient: AdamW leaves the weights); fp16's scaler does that itself.
        if not str(self.trainer.precision).startswith("16"):
            grads = [p.grad for p in self.var.parameters() if p.grad is not None]
            if grads and skip_nonfinite(self, "gradient norm", torch.nn.utils.get_total_norm(grads), HINT):
                for p in self.var.parameters():
                    p.grad = None
                return
        if (self.global_step + 1) % self.cfg.log_every_n_steps == 0:
            norms = grad_norm(self.var, norm_type=2)
            if "grad_2.0_norm_total" in norms:
                self.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # FSDP too

    # ------------------------------------------------------------------------------------ training
    def _tokens(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, label_B = batch
        if x.is_floating_point():  # data.source=images: tokenize on the fly with the frozen tokenizer
            with torch.no_grad(), full_precision(x.device):
                x = torch.cat(self.vae.img_to_idx(x.float()), dim=1)
        return x.long(), label_B.long()

    def training_step(self, batch, batch_idx: int):
        cfg, step = self.cfg, self.global_step
        # Class dropout and drop-path draw from the global RNG: seeded by (seed, step, rank, accumulated
        # batch) so that a resumed run draws what the uninterrupted run drew.
        acc = self.trainer.accumulate_grad_batches
        torch.manual_seed(((cfg.seed * 1_000_003 + step) * 1009 + self.global_rank) * acc + batch_idx % acc)
        idx_BL, label_B = self._tokens(batch)
        B, Ltok = idx_BL.shape
        with torch.no_grad(), full_precision(idx_BL.device):
            x_BLCv = self.vae.idx_to_var_input(self.layout.split(idx_BL))
        logits_BLV = self.var(label_B, x_BLCv)
        V = logits_BLV.shape[-1]
        loss_BL = F.cross_entropy(
            logits_BLV.float().view(-1, V),
            idx_BL.view(-1),
            label_smoothing=cfg.optim.label_smoothing,
            reduction="none",
        ).view(B, Ltok)
        loss = loss_BL.mean()  # uniform weight per token (published loss_weight = 1/L)
        if skip_nonfinite(self, "loss", loss, HINT):
            return None  # Lightning skips the backward pass and the update
        if (step + 1) % cfg.log_every_n_steps == 0:
            self._log_scales(loss_BL.detach(), logits_BLV.detach(), idx_BL, B)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=B)
        return loss

    @torch.no_grad()
    def _log_scales(self, loss_BL: torch.Tensor, logits_BLV: torch.Tensor, idx_BL: torch.Tensor, B: int) -> None:
        """Per-scale mean loss and accuracy, over all tokens (published Lmean) and the last scale (Ltail)."""
        hit_BL = (logits_BLV.argmax(-1) == idx_BL).float()
        logs = {"train/loss_mean": loss_BL.mean(), "train/acc_mean": hit_BL.mean() * 100}
        last = self.layout.sizes[-1]
        logs["train/loss_tail"] = loss_BL[:, -last:].mean()
        logs["train/acc_tail"] = hit_BL[:, -last:].mean() * 100
        for si, (l_Bl, h_Bl) in enumerate(zip(self.layout.split(loss_BL), self.layout.split(hit_BL), strict=True)):
            logs[f"scale/loss_{si}"] = l_Bl.mean()
            logs[f"scale/acc_{si}"] = h_Bl.mean() * 100
        logs["train/lr"] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=B, sync_dist=False)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Here rather than in on_train_batch_end: the step checkpoint callback runs before that hook, and
        # a checkpoint must hold the EMA of the weights it holds.
        if self.ema is not None:
            self.ema.update_parameters(self.var)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step  # optimizer steps done, this one included
        sc = self.cfg.samples
        if sc.every_n_steps > 0 and step % sc.every_n_steps == 0:
            with full_weights(self, self.eval_model):  # FSDP: gathered on every rank
                if self.trainer.is_global_zero:
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
        img = sample(model, self.vae, labels, sp, seed=seeds, precision="fp32")  # grids comparable across runs
        model.train(was_training)
        rows = img.view(len(classes), sc.per_class, *img.shape[1:])
        save_grid_rows(rows, path)

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The tokenizer is frozen and loaded from its own folder: not copied into every checkpoint.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("vae.")}
        check_finite_weights(checkpoint, self.cfg.out_dir, HINT)  # nor NaN weights into any checkpoint or export

    strict_loading = False  # the tokenizer's weights are not in the checkpoint; all others must be (below)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:  # Lightning's FSDP has loaded the weights (non-strictly) and dropped it
            check_keys(self.checkpoint_keys, checkpoint["state_dict"], "the resumed checkpoint does not fit the model")

    def train(self, mode: bool = True):
        # Lightning puts the whole module in train mode; the tokenizer and the EMA copy are never trained.
        super().train(mode)
        self.vae.eval()
        if self.ema is not None:
            self.ema.eval()
        return self


# ------------------------------------------------------------------------------------- the driver
def build_trainer(cfg: VARTrainConfig, **overrides) -> L.Trainer:
    """`scaffold.run.make_trainer` with gradient clipping, no validation loop, the tokens/s
    (`throughput_monitor`) and FSDP that shards each `VAR` (the live one, the EMA's) alike."""
    clip = dict(gradient_clip_val=cfg.optim.grad_clip or None, gradient_clip_algorithm="norm", limit_val_batches=0)
    tokens = throughput_monitor(cfg, tokens_per_sample=ScaleLayout.of(cfg.model.patch_nums).num_tokens)
    strategy = fsdp_strategy(cfg.trainer.strategy, {VAR})
    return make_trainer(cfg, callbacks=[tokens], **{"strategy": strategy, **clip, **overrides})


def resolve_tokenizer(cfg: VARTrainConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.data.source == "cache":
        return TokenCache(cfg.data.cache).header.tokenizer  # a missing cache is reported here
    raise TrainingError("tokenizer= is required with data.source=images (an exported tokenizer folder or 'hub')")


def train_var(cfg: VARTrainConfig, vae: MultiScaleVQVAE | None = None, **trainer_overrides) -> Path:
    """Train (or resume), checkpoint, and export the EMA weights to `out_dir/model`; returns that folder."""
    with run_folder_lock(cfg.out_dir):  # one run at a time in out_dir, gone with the process
        ckpt_path = start_run(cfg)
        vae = vae if vae is not None else load_vae(resolve_tokenizer(cfg))
        data = VARData(cfg, vae)
        data.setup("fit")  # data problems surface now, as one message, not inside the trainer
        module = VARTraining(cfg, vae, data.class_names)
        trainer = build_trainer(cfg, **trainer_overrides)
        hint = "; optim.lr follows the global batch"
        fit_and_checkpoint(trainer, module, data, ckpt_path, cfg.out_dir, cfg.batch_size, hint)
        export_dir = Path(cfg.out_dir) / "model"
        weights = full_state_dict(trainer, "ema.module." if module.ema is not None else "var.")  # on every rank
        with full_weights(module):  # FSDP: the tokenizer, gathered on every rank
            if trainer.is_global_zero:
                export_model(
                    module.var, vae, export_dir, class_names=data.class_names, sampling=cfg.sampling, state_dict=weights
                )
            log.info("exported the model to %s (load it with var.load_model, sample it with `var sample`)", export_dir)
        return export_dir


# ------------------------------------------------------------------------------------------- CLI
add_arguments = add_config_arguments  # --config FILE and key=value overrides


def run(args: argparse.Namespace) -> int:
    return run_training(args, VARTrainConfig, train_var, "model")
