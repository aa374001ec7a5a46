"""Tokenizer training: losses, codebook health, manual optimization, exact resume, export, CLI errors."""

import logging
import re
from pathlib import Path

import pytest
import torch
from helpers import assert_locked_out, full_disk, lock_held_elsewhere, record_losses
from torchmetrics.functional.image import peak_signal_noise_ratio

from app.cli import main
from scaffold import save_state_dict
from scaffold.config import load_config
from scaffold.errors import TrainingError
from tokenizer import MultiScaleVQVAE, VQVAEConfig, load_tokenizer
from tokenizer.codebook import CodebookUsage, restart_dead_codes, usage_fractions
from tokenizer.data import DatasetError
from tokenizer.losses import LPIPS, PatchDiscriminator, adaptive_weight, load_perceptual
from tokenizer.train import TokenizerTrainConfig, TokenizerTraining, build_trainer, train_tokenizer

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"

# 16 px, f4, 3 scales: a forward/backward takes milliseconds on a CPU.
TINY = [
    "model.ch=32",
    "model.ch_mult=[1,1,2]",
    "model.num_res_blocks=1",
    "model.z_channels=8",
    "model.vocab_size=32",
    "model.patch_nums=[1,2,4]",
    "model.attn_lowest=false",
    "model.attn_mid=false",
    "data.name=digits",
    "data.image_size=16",
    "loss.perceptual=0",
    "loss.disc_ch=16",
    "loss.disc_layers=2",
    "optim.lr=2e-3",
    "optim.disc_lr=2e-3",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.num_workers=0",
    "trainer.progress_bar=false",
    "trainer.val_every_n_steps=1000",
    "trainer.limit_val_batches=1",
    "precision=32-true",
    "batch_size=16",
    "log_every_n_steps=2",
    "codebook.window=4",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(tmp_path, *overrides: str) -> TokenizerTrainConfig:
    return load_config(TokenizerTrainConfig, None, [*TINY, f"out_dir={tmp_path}", *overrides])


def fit(cfg: TokenizerTrainConfig, ckpt_path=None, crash_at=None) -> tuple[TokenizerTraining, list[float]]:
    """Fit a module and return it with the per-step generator losses; `crash_at` kills the run at that step."""
    from tokenizer.train import TokenizerData

    torch.manual_seed(cfg.seed)
    data = TokenizerData(cfg.data, cfg.batch_size, 0, cfg.seed)
    module = TokenizerTraining(cfg)
    losses = record_losses(module, crash_at)
    trainer = build_trainer(cfg, logger=False)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, losses


# --------------------------------------------------------------------------------------- training
def test_training_decreases_loss_and_counts_generator_steps(tmp_path):
    cfg = tiny_config(tmp_path, "max_steps=24", "ckpt_every_n_steps=100", "loss.adversarial=0")
    module, losses = fit(cfg)
    assert len(losses) == 24
    assert module.trainer.global_step == 24
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


def test_both_optimizers_step_after_disc_start(tmp_path):
    cfg = tiny_config(tmp_path, "max_steps=4", "loss.disc_start=2", "ckpt_every_n_steps=100", "ema_decay=0")
    torch.manual_seed(0)
    module = TokenizerTraining(cfg)
    disc0 = {k: v.clone() for k, v in module.disc.state_dict().items()}
    disc_steps = []
    orig = module.training_step

    def step(batch, batch_idx):
        before = [p.clone() for p in module.disc.parameters()]
        out = orig(batch, batch_idx)
        disc_steps.append(any(not torch.equal(a, b) for a, b in zip(before, module.disc.parameters())))
        return out

    module.training_step = step
    from tokenizer.train import TokenizerData

    build_trainer(cfg, logger=False).fit(module, datamodule=TokenizerData(cfg.data, cfg.batch_size, 0, 0))
    assert disc_steps == [False, False, True, True]
    assert module.trainer.global_step == 4  # the discriminator's steps do not count as global steps
    assert any(not torch.equal(disc0[k], v) for k, v in module.disc.state_dict().items())


def _flat_optim_state(module):
    out = []
    for opt in module._raw_optimizers():
        sd = opt.state_dict()
        for pid in sorted(sd["state"]):
            for key in sorted(sd["state"][pid]):
                out.append((pid, key, sd["state"][pid][key]))
    return out


def test_resume_matches_uninterrupted_run(tmp_path):
    common = ["loss.disc_start=2", "ckpt_every_n_steps=3", "codebook.restart_dead=true", "codebook.restart_every=2"]
    full, full_losses = fit(tiny_config(tmp_path / "full", "max_steps=6", *common))

    # A run killed during step 5 (after the checkpoint of step 3) resumes from step 3.
    part_cfg = tiny_config(tmp_path / "part", "max_steps=6", *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(part_cfg, crash_at=4)
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    resumed_cfg = tiny_config(tmp_path / "part", "max_steps=6", "resume=true", *common)
    assert resumed_cfg.resume_path() == str(ckpt)
    resumed, resumed_losses = fit(resumed_cfg, ckpt_path=resumed_cfg.resume_path())

    assert resumed.trainer.global_step == 6
    assert resumed_losses == pytest.approx(full_losses[3:], rel=1e-5, abs=1e-6)
    for (pa, ka, va), (pb, kb, vb) in zip(_flat_optim_state(full), _flat_optim_state(resumed), strict=True):
        assert (pa, ka) == (pb, kb)
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6)
    for (ka, va), (kb, vb) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=ka)


def test_train_export_and_reload_reconstruct_identically(tmp_path):
    cfg = tiny_config(tmp_path, "max_steps=2", "ckpt_every_n_steps=1", "loss.adversarial=0")
    out = train_tokenizer(cfg, logger=False)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (out / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    vae = load_tokenizer(out)
    assert isinstance(vae, MultiScaleVQVAE) and vae.patch_nums == (1, 2, 4)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ema = MultiScaleVQVAE(VQVAEConfig(**{k: getattr(cfg.model, k) for k in vars(cfg.model)}))
    ema.load_state_dict({k[11:]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")})
    assert ckpt["state_dict"]["ema.n_averaged"] == 3  # the initial copy and two updates
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(vae.reconstruct(img), ema.eval().reconstruct(img), rtol=0, atol=0)


@pytest.mark.slow
def test_digits_preset_reaches_the_target(tmp_path):
    """The digits preset's goal: held-out PSNR >= 22 dB with >= 80% of the codebook used (about 3.5 min)."""
    from tokenizer import DigitsDataset

    cfg = load_config(TokenizerTrainConfig, str(PRESETS / "digits.yaml"), [f"out_dir={tmp_path}"])
    vae = load_tokenizer(train_tokenizer(cfg))
    img = DigitsDataset("val", image_size=cfg.data.image_size).images
    with torch.no_grad():
        idx = vae.img_to_idx(img)
        rec = vae.idx_to_img(idx)
    hits_SV = torch.stack([torch.bincount(i.flatten(), minlength=vae.vocab_size) for i in idx])
    assert peak_signal_noise_ratio((rec + 1) / 2, (img + 1) / 2, data_range=1.0, dim=(1, 2, 3)).item() >= 22.0
    assert usage_fractions(hits_SV)[1] >= 0.8


# --------------------------------------------------------------------------------------- codebook
def test_usage_counts_hits_per_scale_and_across_scales():
    usage = CodebookUsage(num_scales=2, vocab_size=8, c_vae=4, window=2)
    usage.update([torch.tensor([[0]]), torch.tensor([[1, 1, 2, 2]])])
    usage.update([torch.tensor([[3]]), torch.tensor([[2, 2, 2, 2]])])
    hits = usage.window_hits()
    assert hits[0].tolist() == [1, 0, 0, 1, 0, 0, 0, 0]
    assert hits[1].tolist() == [0, 2, 6, 0, 0, 0, 0, 0]
    per_scale, overall = usage_fractions(hits)
    assert per_scale.tolist() == [2 / 8, 2 / 8] and overall == 4 / 8
    usage.update([torch.tensor([[5]]), torch.tensor([[5, 5, 5, 5]])])  # the window drops the first step
    hits = usage.window_hits()
    assert hits[0].tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    assert hits[1].tolist() == [0, 0, 4, 0, 0, 4, 0, 0]


def test_dead_code_restart_changes_only_unused_codes():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(8, 4)
    before = emb.weight.detach().clone()
    hits = torch.zeros(3, 8)
    hits[0, 1] = 5  # used at scale 0 only
    hits[2, 4] = 1  # used at the last scale only
    hits[1, 6] = 2
    pool = torch.randn(16, 4) + 10
    dead = restart_dead_codes(emb, hits, pool, generator=torch.Generator().manual_seed(0))
    assert sorted(dead.tolist()) == [0, 2, 3, 5, 7]
    for v in range(8):
        changed = not torch.equal(emb.weight[v], before[v])
        assert changed == (v in dead.tolist()), v
    for v in dead.tolist():  # re-seeded from the pool of residuals
        assert (emb.weight[v] - pool).abs().sum(1).min() == 0


def test_quantizer_reports_the_residuals_it_quantized(tiny_vae):
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tiny_vae(img)
    assert [z.shape for z in out.z_NC] == [(2 * p * p, 8) for p in (1, 2, 3, 4)]
    for z, idx in zip(out.z_NC, out.idx_Bl):
        assert torch.equal(tiny_vae.quantize.nearest(z), idx.flatten())


# ----------------------------------------------------------------------------------------- losses
@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    """Random weights in the LPIPS-VGG16 layout (torchvision `features.*` + lpips `lin{k}.model.1.weight`)."""
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) * 0.05 for k, v in LPIPS().state_dict().items()}
    sd = {k: v.abs() if k.startswith("lin") else v for k, v in sd.items()}  # LPIPS heads are non-negative
    assert "features.28.weight" in sd and "lin4.model.1.weight" in sd
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg16.safetensors"
    save_state_dict(sd, path)
    return path


def test_perceptual_loss_from_a_local_weights_file(tmp_path, caplog, lpips_file):
    with caplog.at_level(logging.WARNING):
        assert load_perceptual("") is None
        assert load_perceptual(tmp_path / "missing.pth") is None
    assert "perceptual loss off" in caplog.text
    net = load_perceptual(lpips_file)
    assert isinstance(net, LPIPS) and not net.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert net(x, x).item() == 0
    rec = x.clone().requires_grad_(True)
    d = net(rec, x.flip(-1))
    assert d.item() > 0
    d.backward()
    assert rec.grad is not None and all(p.grad is None for p in net.parameters())


def test_training_with_perceptual_loss_keeps_it_out_of_checkpoints(tmp_path, lpips_file):
    overrides = ["loss.perceptual=1", f"loss.perceptual_weights={lpips_file}", "ckpt_every_n_steps=1"]
    module, losses = fit(tiny_config(tmp_path, "max_steps=1", "batch_size=4", *overrides))
    assert module.perceptual is not None and len(losses) == 1
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert not any(k.startswith("perceptual.") for k in torch.load(ckpt, weights_only=False)["state_dict"])
    cfg = tiny_config(tmp_path, "max_steps=2", "batch_size=4", "resume=true", *overrides)
    resumed, _ = fit(cfg, ckpt_path=cfg.resume_path())  # strict load: the perceptual net is put back
    assert resumed.trainer.global_step == 2


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    last = torch.nn.Parameter(torch.ones(3))
    nll = (2 * last).sum()
    g = (0.5 * last).sum()
    w = adaptive_weight(nll, g, last)
    assert w.item() == pytest.approx(2 * 3**0.5 / (0.5 * 3**0.5 + 1e-4))
    assert adaptive_weight(nll, 0 * g, last, max_weight=10.0).item() == 10.0


def test_patch_discriminator_shapes():
    logits = PatchDiscriminator(ndf=8, n_layers=2)(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 1, 2, 2)


def test_validation_logs_the_mean_of_per_image_psnr_of_the_ema_weights(tmp_path):
    """val/psnr (torchmetrics) is the mean over held-out images of 10 log10(1 / MSE) of the EMA's
    reconstructions in [0, 1], the measure `var demo` reports; val/ssim is logged beside it."""
    import csv

    from tokenizer.data import build_datasets

    cfg = tiny_config(tmp_path, "max_steps=2", "trainer.val_every_n_steps=2", "batch_size=8", "loss.adversarial=0")
    vae = load_tokenizer(train_tokenizer(cfg))  # the EMA weights, validated at step 2
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("val/psnr")]
    assert len(logged) == 1
    img = torch.stack([build_datasets(cfg.data)[1][i][0] for i in range(8)])  # limit_val_batches=1: one batch
    with torch.no_grad():
        rec = vae.idx_to_img(vae.img_to_idx(img))
    mse_B = ((rec + 1) / 2 - (img + 1) / 2).square().flatten(1).mean(1)
    assert float(logged[0]["val/psnr"]) == pytest.approx((10 * torch.log10(1 / mse_B)).mean().item(), rel=1e-4)
    assert 0 < float(logged[0]["val/ssim"]) <= 1
    assert "train/device/samples_per_sec" in rows[0]  # the ThroughputMonitor, over log_every_n_steps batches


# ------------------------------------------------------------------------------------- bad input
def test_cli_config_typo_is_one_line_naming_the_key(capsys):
    assert main(["train-tokenizer", "--config", str(PRESETS / "digits.yaml"), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "optim.lrr" in err and err.startswith("var train-tokenizer: error:")


def test_presets_load():
    shipped = sorted(PRESETS.glob("*.yaml"))
    assert {p.stem for p in shipped} == {"digits", "emoji", "vae_f16_256"}
    for path in shipped:
        cfg = load_config(TokenizerTrainConfig, path)
        assert cfg.data.image_size == cfg.model.image_size
        with torch.device("meta"):  # the model builds (no memory on the meta device)
            assert MultiScaleVQVAE(cfg.model).quantize.vocab_size == cfg.model.vocab_size
    big = load_config(TokenizerTrainConfig, PRESETS / "vae_f16_256.yaml")
    assert (big.model.ch, big.model.vocab_size, big.model.z_channels) == (160, 4096, 32)
    assert big.model.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) and big.precision == "bf16-mixed"
    emoji = load_config(TokenizerTrainConfig, PRESETS / "emoji.yaml")
    assert emoji.data.name == "emoji" and emoji.data.root is None  # the cache, not the base default's ImageNet
    assert emoji.model.image_size == 64 and emoji.data.hflip is False
    assert len(emoji.model.patch_nums) >= 7 and emoji.model.patch_nums[-1] == 64 // emoji.model.downsample


def test_bad_inputs_are_one_clear_message(tmp_path, capsys):
    assert (
        main(
            ["train-tokenizer", *TINY, f"out_dir={tmp_path}", "data.name=imagefolder", f"data.root={tmp_path / 'nope'}"]
        )
        == 2
    )
    assert "image folder not found" in capsys.readouterr().err
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        train_tokenizer(tiny_config(tmp_path, "data.name=imagefolder", f"data.root={tmp_path / 'imgs'}"))
    with pytest.raises(TrainingError, match="resume checkpoint not found"):
        tiny_config(tmp_path, "resume=/no/such.ckpt").resume_path()
    assert main(["train-tokenizer", *TINY, "data.image_size=32"]) == 2
    assert "data.image_size=32 but the model takes 16 px" in capsys.readouterr().err
    # A Lightning argument that does not fit the module: the tokenizer steps its optimizers itself.
    with pytest.raises(TrainingError, match=r"refused the run's settings: Automatic gradient accumulation is not"):
        train_tokenizer(tiny_config(tmp_path, "trainer.accumulate_grad_batches=2"), logger=False)


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_and_deletes_nothing(tmp_path, capsys, caplog):
    """resume=false over an earlier run silently deleted its checkpoints."""
    run = ["train-tokenizer", *TINY, f"out_dir={tmp_path}", "ckpt_every_n_steps=1", "batch_size=4", "max_steps=2"]
    assert main(run) == 0
    folder = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert main([*run, "seed=1"]) == 2
    err = capsys.readouterr().err
    assert f"out_dir={tmp_path} holds a run (checkpoints/last.ckpt" in err
    assert "pass resume=true to continue it, overwrite=true to start afresh" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main([*run, "overwrite=true", "resume=true"]) == 2
    assert "overwrite=true starts afresh but resume='True' continues a run" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        assert main([*run, "seed=1", "overwrite=true"]) == 0  # the explicit choice: removed, and said so
    assert "overwrite=true: removed the 3 checkpoints of the previous run" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)
    assert (folder / "last.ckpt").read_bytes() != before["last.ckpt"]


def test_a_second_training_into_a_locked_folder_exits_2_naming_the_holder(tmp_path, capsys):
    """A real second process holds out_dir; the lock goes with it on kill -9."""
    run = ["train-tokenizer", *TINY, f"out_dir={tmp_path}", "batch_size=4", "max_steps=1"]
    with lock_held_elsewhere(tmp_path) as holder:
        assert main(run) == 2
        assert_locked_out(capsys.readouterr().err, tmp_path, holder)
        assert not (tmp_path / "checkpoints").exists()
        holder.kill9()  # nothing runs after SIGKILL: the kernel drops the flock
        assert main(run) == 0


def test_a_diverging_loss_stops_the_run_and_exports_nothing(tmp_path, capsys):
    """optim.lr=1e30 finished and exported a tokenizer of NaN weights."""
    run = ["train-tokenizer", *TINY, f"out_dir={tmp_path}", "ckpt_every_n_steps=1", "batch_size=4", "max_steps=6"]
    assert main([*run, "optim.lr=1e30", "loss.disc_start=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"var train-tokenizer: error: the (weights are not finite after step \d+|.* is \S+ at step \d+)"
                        r".*the last good checkpoint is .*last.ckpt.*Lower optim.lr.*", err), err  # fmt: skip
    assert not (tmp_path / "tokenizer").exists()
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):  # whatever was saved is finite
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_non_finite_gradients_skip_the_update_up_to_nonfinite_steps(tmp_path, caplog):
    cfg = tiny_config(tmp_path, "max_steps=4", "loss.adversarial=0", "nonfinite_steps=2")
    module = TokenizerTraining(cfg)
    weight = module.vae.decoder.conv_out.weight
    calls = []

    def poison(grad):  # steps 1 and 2 (of 0..3) get an infinite gradient, the loss stays finite
        calls.append(1)
        return grad * float("inf") if len(calls) in (2, 3) else grad

    weight.register_hook(poison)
    data = __import__("tokenizer.train", fromlist=["TokenizerData"]).TokenizerData(cfg.data, cfg.batch_size, 0, 0)
    snapshots = []
    module.on_train_batch_end = lambda *a: snapshots.append(weight.detach().clone())
    with caplog.at_level(logging.WARNING):
        build_trainer(cfg, logger=False).fit(module, datamodule=data)
    assert (
        "the generator's gradient norm is inf at step 1: its update is skipped (1 of nonfinite_steps=2)" in caplog.text
    )
    assert torch.equal(snapshots[0], snapshots[1]) and torch.equal(snapshots[1], snapshots[2])  # no update
    assert not torch.equal(snapshots[2], snapshots[3]) and torch.isfinite(weight).all()
    calls.clear()
    cfg = tiny_config(tmp_path / "b", "max_steps=4", "loss.adversarial=0", "nonfinite_steps=1")
    module = TokenizerTraining(cfg)
    module.vae.decoder.conv_out.weight.register_hook(poison)
    with pytest.raises(TrainingError, match=r"gradient norm is inf at step 2: training stopped .*nonfinite_steps=1"):
        build_trainer(cfg, logger=False).fit(module, datamodule=data)


def test_out_of_memory_names_the_batch_size(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "max_steps=1", "batch_size=4")

    def oom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TokenizerTraining, "training_step", oom)
    with pytest.raises(TrainingError, match=r"batch_size=4 per device does not fit.*batch_size=2"):
        train_tokenizer(cfg, logger=False)


def test_truncated_last_ckpt_and_a_full_disk(tmp_path, capsys, caplog, monkeypatch):
    """resume=true after a half-written last.ckpt; a disk that fills during a checkpoint save."""
    run = ["train-tokenizer", *TINY, f"out_dir={tmp_path}", "ckpt_every_n_steps=1", "batch_size=4"]
    assert main([*run, "max_steps=3"]) == 0
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000003.ckpt"]
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # a copy cut short by a kill
    with caplog.at_level(logging.INFO):
        assert main([*run, "max_steps=4", "resume=true"]) == 0
    assert f"skipping cannot read checkpoint {last}" in caplog.text
    assert f"resuming from {folder / 'step0000003.ckpt'} (step 3)" in caplog.text
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    capsys.readouterr()

    before = last.read_bytes()

    full_disk(monkeypatch)
    assert main([*run, "max_steps=5", "resume=true"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("var train-tokenizer: error:")]
    assert len(lines) == 1 and "Traceback" not in err  # besides it: Lightning's warnings only
    assert lines[0].startswith(f"var train-tokenizer: error: disk full while writing {folder / 'step0000005.ckpt'} (")
    assert lines[0].endswith(" free): free some space and rerun")
    assert last.read_bytes() == before and not any(p.name.startswith(".") for p in folder.iterdir())


def test_console_holds_only_the_run_s_own_lines(tmp_path, capfd, recwarn):
    """No advertising tips, no TPU line, no torch deprecation raised inside Lightning, no
    `weights_only` notice - only what the project itself says (and Lightning's device line)."""
    assert main(["train-tokenizer", *TINY, f"out_dir={tmp_path}", "max_steps=1", "batch_size=4"]) == 0
    out, err = capfd.readouterr()
    text = out + err
    for noise in ("Tip:", "TPU available", "weights_only", "LeafSpec", "`Trainer.fit` stopped"):
        assert noise not in text, text
    assert f"tokenizer written to {tmp_path / 'tokenizer'}" in out
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]
