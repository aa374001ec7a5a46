"""Training the multi-scale tokenizer with Lightning: `var train-tokenizer --config FILE key=value ...`.

The generator (the VQ-VAE) and a PatchGAN discriminator take turns each step under manual
optimization. Losses: L1/L2 reconstruction + the model's multi-scale VQ loss + LPIPS (only from a
local weights file) + a hinge adversarial loss with the VQGAN adaptive weight after `disc_start`.
Around them: an EMA of the weights (validated and exported), per-scale codebook usage and optional
dead-code restart (tokenizer/codebook.py), gradient clipping, PSNR/SSIM on the held-out split with a
reconstruction grid, atomic step checkpoints with exact resume, and the export of `load_tokenizer`'s
folder at the end. The model knows nothing of this file.
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from scaffold.batches import ordered_loader, step_batch_loader
from scaffold.config import add_config_arguments
from scaffold.ema import EMA
from scaffold.errors import TrainingError
from scaffold.loggers import save_grid_rows, throughput_monitor
from scaffold.nonfinite import check_finite_weights, skip_nonfinite
from scaffold.run import fit_and_checkpoint, make_trainer, run_folder_lock, run_training, start_run
from scaffold.run_config import RunConfig, TrainerConfig

from .codebook import CodebookUsage, restart_dead_codes, usage_fractions
from .data import DataConfig, build_datasets
from .export import export_tokenizer
from .losses import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss, load_perceptual
from .losses import reconstruction_loss as rec_loss_fn
from .vqvae import MultiScaleVQVAE, VQVAEConfig

__all__ = [
    "CodebookConfig",
    "LossConfig",
    "OptimConfig",
    "TokenizerData",
    "TokenizerTrainConfig",
    "TokenizerTrainerConfig",
    "TokenizerTraining",
    "TrainingError",
    "add_arguments",
    "run",
    "train_tokenizer",
]

log = logging.getLogger(__name__)
HINT = "Lower optim.lr and optim.disc_lr, raise optim.warmup_steps or use precision=32-true"


# ------------------------------------------------------------------------------------------ config
@dataclass
class OptimConfig:
    lr: float = 1e-4  # generator (the VQ-VAE)
    disc_lr: float = 1e-4
    beta1: float = 0.5  # Adam betas (0.5, 0.9): taming-transformers' VQGAN
    beta2: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warmup of both learning rates
    min_lr_ratio: float = 1.0  # cosine decay to lr * min_lr_ratio at max_steps; 1.0 keeps lr constant
    grad_clip: float = 2.0  # max global grad norm per optimizer (docs/architecture.md section 9); 0 turns it off

    def validate(self) -> None:
        if self.lr <= 0 or self.disc_lr <= 0:
            raise ValueError("optim.lr and optim.disc_lr must be positive")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("optim.grad_clip and optim.warmup_steps must be >= 0")


@dataclass
class LossConfig:
    l1: float = 1.0
    l2: float = 0.0
    vq: float = 1.0  # weight of the model's multi-scale VQ loss
    perceptual: float = 1.0  # LPIPS weight; used only when perceptual_weights is a local file
    perceptual_weights: str = ""  # LPIPS-VGG16 state dict (see tokenizer.losses.load_perceptual); never downloaded
    adversarial: float = 0.5  # generator hinge loss weight (times the adaptive weight); 0 = no discriminator
    disc_start: int = 20000  # generator steps before the discriminator trains and the adversarial term starts
    disc_ch: int = 64
    disc_layers: int = 3  # stride-2 layers; 16 px images need <= 2
    adaptive_weight_max: float = 1e4  # clamp of the VQGAN adaptive weight (taming)

    def validate(self) -> None:
        for name in ("l1", "l2", "vq", "perceptual", "adversarial"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0")
        if self.l1 == 0 and self.l2 == 0:
            raise ValueError("loss.l1 and loss.l2 are both 0: there is no reconstruction loss")
        if self.disc_layers < 1 or self.disc_start < 0:
            raise ValueError("loss.disc_layers must be >= 1 and loss.disc_start >= 0")


@dataclass
class CodebookConfig:
    window: int = 100  # steps over which usage is counted
    restart_dead: bool = False  # re-seed codes no scale used over the window
    restart_every: int = 200  # steps between restart checks (once the window is full)
    pool_size: int = 4096  # recent residual vectors kept to re-seed from

    def validate(self) -> None:
        if self.window < 1 or self.restart_every < 1 or self.pool_size < 1:
            raise ValueError("codebook.window, codebook.restart_every and codebook.pool_size must be >= 1")


@dataclass
class TokenizerTrainerConfig(TrainerConfig):
    # strategy "ddp" turns on unused-parameter detection: the discriminator idles until loss.disc_start.
    val_every_n_steps: int = 1000  # PSNR/SSIM on the held-out split, and a reconstruction grid PNG
    limit_val_batches: int = 0  # 0 = the whole held-out split


@dataclass
class TokenizerTrainConfig(RunConfig):
    model: VQVAEConfig = field(default_factory=VQVAEConfig)
    data: DataConfig = field(
        default_factory=lambda: DataConfig(name="imagefolder", root="data/imagenet/train", image_size=256)
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    trainer: TokenizerTrainerConfig = field(default_factory=TokenizerTrainerConfig)
    out_dir: str = "runs/tokenizer"
    # RunConfig's fields besides: max_steps counts generator steps; the quantizer always runs in fp32.

    def validate(self) -> None:
        super().validate()
        if self.data.image_size != self.model.image_size:
            raise ValueError(
                f"data.image_size={self.data.image_size} but the model takes {self.model.image_size} px "
                f"(patch_nums[-1]={self.model.patch_nums[-1]} x downsampling {self.model.downsample})"
            )


# -------------------------------------------------------------------------------------------- data
class TokenizerData(L.LightningDataModule):
    """`build_datasets(DataConfig)`: the train split in resumable random batches, the held-out split in order."""

    def __init__(self, data: DataConfig, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.data, self.batch_size, self.num_workers, self.seed = data, batch_size, num_workers, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = build_datasets(self.data)

    def train_dataloader(self) -> DataLoader:
        return step_batch_loader(self.train_set, self.trainer, self.batch_size, self.seed, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return ordered_loader(self.val_set, self.trainer, self.batch_size, self.num_workers)


# ------------------------------------------------------------------------------------------ module
class TokenizerTraining(L.LightningModule):
    """VQ-VAE generator + PatchGAN discriminator under manual optimization."""

    def __init__(self, cfg: TokenizerTrainConfig):
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.vae = MultiScaleVQVAE(cfg.model)
        self.ema = EMA(self.vae, cfg.ema_decay, warmup=9) if cfg.ema_decay > 0 else None  # TF's decay warm-up
        lc = cfg.loss
        self.disc = PatchDiscriminator(ndf=lc.disc_ch, n_layers=lc.disc_layers) if lc.adversarial > 0 else None
        self.perceptual = load_perceptual(lc.perceptual_weights) if lc.perceptual > 0 else None
        q = self.vae.quantize
        self.usage = CodebookUsage(
            q.num_scales, q.vocab_size, q.c_vae, window=cfg.codebook.window, pool_size=cfg.codebook.pool_size
        )
        self._val_hits_SV: torch.Tensor | None = None
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # the mean of per-image PSNRs
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)  # 11x11 Gaussian window, sigma 1.5

    @property
    def eval_model(self) -> MultiScaleVQVAE:
        """The weights that are validated and exported: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.vae

    # ---------------------------------------------------------------------------------- optimizers
    def _lr_lambda(self, step: int) -> float:
        o, total = self.cfg.optim, self.cfg.max_steps
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        t = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def configure_optimizers(self):
        o = self.cfg.optim
        betas = (o.beta1, o.beta2)
        opts = [torch.optim.AdamW(self.vae.parameters(), lr=o.lr, betas=betas, weight_decay=o.weight_decay)]
        if self.disc is not None:
            opts.append(
                torch.optim.AdamW(self.disc.parameters(), lr=o.disc_lr, betas=betas, weight_decay=o.weight_decay)
            )
        scheds = [torch.optim.lr_scheduler.LambdaLR(opt, self._lr_lambda) for opt in opts]
        return opts, scheds

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Manual optimization has no automatic clipping. This hook runs after the AMP grad scaler has
        # unscaled the gradients (Lightning's MixedPrecision.optimizer_step), so the norm is the true one.
        # A non-finite norm skips the update (no gradient: AdamW leaves the weights); fp16's scaler does that itself.
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        name = "g" if optimizer is self._raw_optimizers()[0] else "d"
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.nn.utils.get_total_norm(params)
        what = "generator" if name == "g" else "discriminator"
        if not str(self.trainer.precision).startswith("16") and skip_nonfinite(
            self, f"{what}'s gradient norm", norm, HINT
        ):
            for p in params:
                p.grad = None
            return
        if clip > 0:
            self.log(f"train/grad_norm_{name}", norm, on_step=True, on_epoch=False)

    def _raw_optimizers(self) -> list[torch.optim.Optimizer]:
        opts = self.optimizers(use_pl_optimizer=False)
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    # ------------------------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int):
        img, _ = batch
        lc = self.cfg.loss
        step = self.global_step  # generator steps done so far
        opts = self.optimizers()
        opt_g = opts[0] if isinstance(opts, list) else opts
        scheds = self.lr_schedulers()
        scheds = scheds if isinstance(scheds, list) else [scheds]

        # ---- generator
        out = self.vae(img)
        rec = out.rec_B3HW
        rec_loss = rec_loss_fn(rec, img, lc.l1, lc.l2)
        nll = rec_loss
        logs = {"rec_loss": rec_loss.detach(), "vq_loss": out.vq_loss.detach()}
        if self.perceptual is not None:
            p_loss = self.perceptual(rec, img)
            nll = nll + lc.perceptual * p_loss
            logs["perceptual"] = p_loss.detach()
        loss = nll + lc.vq * out.vq_loss
        disc_on = self.disc is not None and step >= lc.disc_start
        if disc_on:
            g_loss = hinge_g_loss(self.disc(rec))
            d_weight = adaptive_weight(nll, g_loss, self.vae.decoder.conv_out.weight, lc.adaptive_weight_max)
            loss = loss + lc.adversarial * d_weight * g_loss
            logs |= {"g_loss": g_loss.detach(), "d_weight": d_weight}
        if skip_nonfinite(self, "loss", loss, HINT):
            return loss.detach()  # no update of either network: the step does not count
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()  # counts as the trainer's global step
        scheds[0].step()
        if self.ema is not None:
            self.ema.update_parameters(self.vae)
        self._track_codebook(out.idx_Bl, out.z_NC, step)

        # ---- discriminator
        if disc_on:
            opt_d = opts[1]
            opt_d.zero_grad(set_to_none=True)  # drops the gradients the generator loss left here
            d_loss = hinge_d_loss(self.disc(img), self.disc(rec.detach()))
            self.manual_backward(d_loss)
            # Through the strategy, not LightningOptimizer.step: in manual optimization Lightning counts every
            # LightningOptimizer.step as a global step, and max_steps / checkpoint intervals are generator steps.
            self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None, model=self)
            scheds[1].step()
            logs["d_loss"] = d_loss.detach()

        logs["loss"] = loss.detach()
        logs["lr"] = torch.tensor(scheds[0].get_last_lr()[0])
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=False, prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss.detach()

    @torch.no_grad()
    def _track_codebook(self, idx_Bl: list[torch.Tensor], z_NC: list[torch.Tensor], step: int) -> None:
        cc = self.cfg.codebook
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        hits_SV = self.usage.update(idx_Bl, z_NC, generator=gen)
        # The published per-scale EMA of code hits (`ema_vocab_hit_SV`, decay 0.99 as in VAR's quant.py).
        self.vae.quantize.ema_vocab_hit_SV.mul_(0.99).add_(hits_SV.to(self.vae.quantize.ema_vocab_hit_SV), alpha=0.01)
        done = step + 1
        restart = cc.restart_dead and self.usage.window_full and done % cc.restart_every == 0
        if done % self.cfg.log_every_n_steps != 0 and not restart:
            return
        window_SV = self.usage.window_hits()  # all-reduced: every rank decides the same
        per_scale, overall = usage_fractions(window_SV)
        metrics = {f"usage/scale{si}": float(u) for si, u in enumerate(per_scale)}
        metrics["usage/all"] = overall
        if restart:
            pool = self.usage.pool_NC[: int(self.usage.pool_filled)]
            dead = restart_dead_codes(self.vae.quantize.embedding, window_SV, pool, generator=gen)
            self._after_restart(dead)
            self.usage.restarted_total += dead.numel()
        # A running total: Lightning re-emits a step metric's last value at later logging steps.
        metrics["usage/restarted_total"] = float(self.usage.restarted_total)
        self.log_dict(metrics, on_step=True, on_epoch=False)

    @torch.no_grad()
    def _after_restart(self, dead: torch.Tensor) -> None:
        """Restarted codes start fresh: no stale Adam moments, and the EMA copy takes the new vectors."""
        if dead.numel() == 0:
            return
        weight = self.vae.quantize.embedding.weight
        state = self._raw_optimizers()[0].state.get(weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][dead] = 0
        if self.ema is not None:
            self.ema.module.quantize.embedding.weight[dead] = weight[dead]

    # ---------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        q = self.vae.quantize
        self._val_hits_SV = torch.zeros(q.num_scales, q.vocab_size, device=self.device)

    def validation_step(self, batch, batch_idx: int) -> None:
        img, _ = batch
        model = self.eval_model
        idx_Bl = model.img_to_idx(img)
        rec = model.idx_to_img(idx_Bl)
        x, y = (rec.float() + 1) / 2, (img.float() + 1) / 2
        self.val_psnr.update(x, y)
        self.val_ssim.update(x, y)
        self.log_dict({"val/psnr": self.val_psnr, "val/ssim": self.val_ssim}, prog_bar=True)  # epoch means
        for si, idx in enumerate(idx_Bl):
            self._val_hits_SV[si] += torch.bincount(idx.flatten(), minlength=model.vocab_size)[: model.vocab_size]
        if batch_idx == 0 and self.trainer.is_global_zero:
            path = Path(self.cfg.out_dir) / "images" / f"step{self.global_step:07d}.png"
            save_grid_rows(torch.stack([y[:8], x[:8]]), path)  # originals above their reconstructions

    def on_validation_epoch_end(self) -> None:
        hits_SV = self.trainer.strategy.reduce(self._val_hits_SV, reduce_op="sum")
        per_scale, overall = usage_fractions(hits_SV)
        metrics = {f"val/usage_scale{si}": float(u) for si, u in enumerate(per_scale)}
        metrics["val/usage_all"] = overall
        self.log_dict(metrics, sync_dist=True)  # already summed over ranks: the mean of equal values

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The perceptual net is a frozen metric loaded from its own file: not copied into every checkpoint.
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("perceptual.")
        }
        check_finite_weights(checkpoint, self.cfg.out_dir, HINT)  # nor NaN weights into any checkpoint or export

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.perceptual is not None:
            checkpoint["state_dict"].update({f"perceptual.{k}": v for k, v in self.perceptual.state_dict().items()})


# ------------------------------------------------------------------------------------- the driver
def build_trainer(cfg: TokenizerTrainConfig, **overrides) -> L.Trainer:
    """`scaffold.run.make_trainer` with periodic validation, and DDP that tolerates the idle discriminator."""
    tc = cfg.trainer
    # Lightning warns that under manual optimization a step checkpoint holds the weights after that
    # step's update. That is what resuming needs: global_step already counts the step.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
    kwargs = dict(
        # The discriminator has no gradient before disc_start: DDP must not wait for it.
        strategy="ddp_find_unused_parameters_true" if tc.strategy == "ddp" else tc.strategy,
        val_check_interval=tc.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=tc.limit_val_batches or None,
    )
    return make_trainer(cfg, callbacks=[throughput_monitor(cfg)], **{**kwargs, **overrides})


def train_tokenizer(cfg: TokenizerTrainConfig, **trainer_overrides) -> Path:
    """Train (or resume), checkpoint, and export the EMA weights to `out_dir/tokenizer`; returns that folder."""
    with run_folder_lock(cfg.out_dir):  # one run at a time in out_dir, gone with the process
        ckpt_path = start_run(cfg)
        data = TokenizerData(cfg.data, cfg.batch_size, cfg.trainer.num_workers, cfg.seed)
        data.setup("fit")  # dataset problems surface now, as one message, not inside the trainer
        module = TokenizerTraining(cfg)
        trainer = build_trainer(cfg, **trainer_overrides)
        fit_and_checkpoint(trainer, module, data, ckpt_path, cfg.out_dir, cfg.batch_size)
        export_dir = Path(cfg.out_dir) / "tokenizer"
        if trainer.is_global_zero:
            export_tokenizer(module.eval_model, export_dir)
            log.info("exported the tokenizer to %s (load it with tokenizer.load_tokenizer)", export_dir)
        return export_dir


# ------------------------------------------------------------------------------------------- CLI
add_arguments = add_config_arguments  # --config FILE and key=value overrides


def run(args: argparse.Namespace) -> int:
    return run_training(args, TokenizerTrainConfig, train_tokenizer, "tokenizer")
