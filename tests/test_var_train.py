"""Transformer training: loss goes down for every mechanism, exact resume, DDP, export, bad inputs, weight decay."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_locked_out, lock_held_elsewhere, record_losses
from torch import nn

from app.cli import main
from scaffold import ConfigError, config_to_dict, load_config
from scaffold.errors import TrainingError
from tokenizer import MultiScaleVQVAE, VQVAEConfig, export_tokenizer
from var import VAR, VARConfig, load_model, sample
from var.token_cache import TokenCacheError, TokenizeConfig, load_vae, tokenize
from var.train import VARData, VARTrainConfig, VARTraining, build_trainer, param_groups, train_var

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "var"
MECHANISMS = ["full", "neighborhood", "external", "lka", "gspn"]

TINY = [
    "model.depth=2",
    "model.num_classes=10",
    "model.patch_nums=[1,2,3,4]",
    "model.vocab_size=64",
    "model.c_vae=8",
    "optim.lr=3e-3",
    "optim.schedule=constant",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.num_workers=0",
    "trainer.progress_bar=false",
    "samples.every_n_steps=0",
    "precision=32-true",
    "batch_size=16",
    "log_every_n_steps=2",
    "ema_decay=0.9",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A tiny tokenizer (conftest's TINY_VAE, 32 px, V=64) exported, and 64 digits tokenized with it."""
    from conftest import TINY_VAE

    root = tmp_path_factory.mktemp("tokens")
    torch.manual_seed(0)
    tok = export_tokenizer(MultiScaleVQVAE(VQVAEConfig(**TINY_VAE)).eval(), root / "tok")
    cfg = load_config(
        TokenizeConfig,
        None,
        [f"tokenizer={tok}", "data.image_size=32", f"out_dir={root / 'cache'}", "max_images=64", "device=cpu"],
    )
    return tokenize(cfg)


def tiny_config(tmp_path, cache, *overrides) -> VARTrainConfig:
    return load_config(VARTrainConfig, None, [*TINY, f"data.cache={cache}", f"out_dir={tmp_path}", *overrides])


def fit(cfg: VARTrainConfig, ckpt_path=None, crash_at=None) -> tuple[VARTraining, list[float]]:
    """Fit and return the module with its per-step losses; `crash_at` kills the run at that step."""
    from var.token_cache import load_vae
    from var.train import resolve_tokenizer

    torch.manual_seed(cfg.seed)
    vae = load_vae(resolve_tokenizer(cfg))
    data = VARData(cfg, vae)
    data.setup()
    module = VARTraining(cfg, vae, data.class_names)
    losses = record_losses(module, crash_at)
    build_trainer(cfg, logger=False).fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, losses


@pytest.mark.parametrize("attention", MECHANISMS)
def test_loss_decreases_for_every_mechanism(tmp_path, cache, attention):
    cfg = tiny_config(tmp_path, cache, "max_steps=16", "ckpt_every_n_steps=100", f"model.attention={attention}")
    module, losses = fit(cfg)
    assert len(losses) == 16 and module.trainer.global_step == 16
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_bf16_autocast_trains_with_fp32_logits(tmp_path, cache):
    cfg = tiny_config(tmp_path, cache, "max_steps=8", "ckpt_every_n_steps=100", "precision=bf16-mixed")
    module, losses = fit(cfg)
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in module.var.parameters())  # autocast, not bf16 weights


def test_per_block_mix_and_logged_metrics(tmp_path, cache):
    cfg = tiny_config(
        tmp_path, cache, "max_steps=4", "model.attention=[lka,full]", "samples.every_n_steps=4", "samples.per_class=2"
    )
    train_var(cfg)
    logged = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss_mean", "train/loss_tail", "train/acc_mean", "train/acc_tail", "train/lr"):
        assert key in logged
    assert {f"scale/loss_{si}" for si in range(4)} | {f"scale/acc_{si}" for si in range(4)} <= set(logged)
    assert "train/device/items_per_sec" in logged and "train/grad_norm" in logged  # tokens/s (ThroughputMonitor)
    assert (tmp_path / "samples" / "step0000004.png").is_file()
    assert load_model(tmp_path / "model").model.config.block_attention() == ["lka", "full"]


def test_resume_matches_uninterrupted_run(tmp_path, cache):
    # cond_drop_rate 0.5 and drop-path make every step draw from the RNG: resume must redraw the same.
    common = ["ckpt_every_n_steps=3", "model.cond_drop_rate=0.5", "model.drop_path_rate=0.2", "optim.warmup_steps=2"]
    common += ["optim.schedule=cosine", "max_steps=6"]
    full, full_losses = fit(tiny_config(tmp_path / "full", cache, *common))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_config(tmp_path / "part", cache, *common), crash_at=4)
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    resumed_cfg = tiny_config(tmp_path / "part", cache, "resume=true", *common)
    assert resumed_cfg.resume_path() == str(ckpt)
    resumed, resumed_losses = fit(resumed_cfg, ckpt_path=resumed_cfg.resume_path())
    assert resumed.trainer.global_step == 6
    assert resumed_losses == pytest.approx(full_losses[3:], rel=1e-5, abs=1e-6)
    for (ka, va), (kb, vb) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=ka)
    assert not any(k.startswith("vae.") for k in torch.load(ckpt, weights_only=False)["state_dict"])


def test_export_load_and_sample(tmp_path, cache):
    cfg = tiny_config(tmp_path, cache, "max_steps=3", "sampling.cfg=2.0", "sampling.top_k=5", "sampling.top_p=0")
    out = train_var(cfg)
    loaded = load_model(out)
    assert loaded.class_names == [str(d) for d in range(10)]
    assert (loaded.sampling.cfg, loaded.sampling.top_k) == (2.0, 5)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ema = {k[11:]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, ema[k], rtol=0, atol=0, msg=k)  # the EMA weights are exported
    img = sample(loaded.model, loaded.vae, [0, 7], cfg=2.0, top_k=5, top_p=0.0, seed=0)
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1


def test_on_the_fly_tokenization_from_images(tmp_path, cache):
    tok = cache.parent / "tok"
    cfg = tiny_config(
        tmp_path, cache, "max_steps=3", "data.source=images", f"tokenizer={tok}", "data.images.image_size=32"
    )
    _, losses = fit(cfg)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(TrainingError, match="tokenizer= is required with data.source=images"):
        train_var(tiny_config(tmp_path / "other", cache, "data.source=images"))


def test_weight_decay_only_on_matrices():
    for attention in MECHANISMS:
        model = VAR(
            VARConfig(depth=2, num_classes=10, patch_nums=(1, 2, 3, 4), vocab_size=64, c_vae=8, attention=attention)
        )
        _, decay, no_decay = param_groups(model, 0.05)
        linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        extra = {
            "full": set(),
            "neighborhood": set(),
            "external": {"blocks.0.attn.mem_k", "blocks.0.attn.mem_v", "blocks.1.attn.mem_k", "blocks.1.attn.mem_v"},
            "lka": {f"blocks.{b}.attn.{w}" for b in (0, 1) for w in ("dw_weight", "dwd_weight")},
            "gspn": set(),
        }[attention]
        assert set(decay) == linear | extra, attention
        for name in ("class_emb.weight", "lvl_embed.weight", "pos_1LC", "pos_start", "head.bias"):
            assert name in no_decay
        assert set(decay).isdisjoint(no_decay) and len(decay) + len(no_decay) == len(list(model.parameters()))


def test_bad_inputs_are_one_clear_message(tmp_path, cache, capsys):
    assert main(["train", *TINY, f"data.cache={tmp_path / 'none'}", f"out_dir={tmp_path}"]) == 2
    assert "token cache not found" in capsys.readouterr().err
    with pytest.raises(TokenCacheError, match="vocab_size=64, patch_nums=.1, 2, 3, 4.*expects vocab_size=128"):
        train_var(tiny_config(tmp_path, cache, "model.vocab_size=128"))
    with pytest.raises(TokenCacheError, match="patch_nums=.1, 2, 4."):
        train_var(tiny_config(tmp_path, cache, "model.patch_nums=[1,2,4]"))
    with pytest.raises(TrainingError, match="class ids up to 9 .10 classes. but model.num_classes=5"):
        train_var(tiny_config(tmp_path, cache, "model.num_classes=5"))
    other = export_tokenizer(MultiScaleVQVAE(VQVAEConfig(**__import__("conftest").TINY_VAE)), tmp_path / "other")
    with pytest.raises(TokenCacheError, match="made by another tokenizer"):
        train_var(tiny_config(tmp_path, cache, f"tokenizer={other}"))
    with pytest.raises(TrainingError, match="resume checkpoint not found"):
        tiny_config(tmp_path, cache, "resume=/no/such.ckpt").resume_path()


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, cache, monkeypatch):
    cfg = tiny_config(tmp_path, cache, "max_steps=6", "ckpt_every_n_steps=2")
    original = VARTraining._tokens

    def poisoned(self, batch):
        if self.global_step == 3:
            with torch.no_grad():
                self.var.head.weight.fill_(float("nan"))
        return original(self, batch)

    monkeypatch.setattr(VARTraining, "_tokens", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 3.*last good checkpoint is .*last.ckpt"):
        train_var(cfg, logger=False)
    assert not (tmp_path / "model").exists()
    cfg = tiny_config(tmp_path / "b", cache, "max_steps=6", "ckpt_every_n_steps=2", "nonfinite_steps=1")
    # The bad step is skipped; the weights stay NaN, so the step checkpoint after it is refused.
    with pytest.raises(TrainingError, match=r"weights are not finite after step 4 \(var.head.weight\): nothing is"):
        train_var(cfg, logger=False)
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and not (tmp_path / "b" / "model").exists()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_a_second_training_into_a_locked_folder_exits_2_naming_the_holder(tmp_path, cache, capsys):
    """`var train` holds out_dir for its whole run."""
    with lock_held_elsewhere(tmp_path) as holder:
        assert main(["train", *TINY, f"data.cache={cache}", f"out_dir={tmp_path}", "max_steps=1"]) == 2
        assert_locked_out(capsys.readouterr().err, tmp_path, holder)
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "model").exists()


def test_out_of_memory_names_the_batch_size(tmp_path, cache, monkeypatch):
    def oom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(VARTraining, "training_step", oom)
    with pytest.raises(TrainingError, match=r"batch_size=16 per device does not fit.*batch_size=8"):
        train_var(tiny_config(tmp_path, cache, "max_steps=1"), logger=False)


# Every shipped config as it is meant to be used: d16.yaml alone, each overlay over it, digits.yaml alone.
OVERLAYS = ["neighborhood", "external", "lka", "gspn", "hybrid"]
SHIPPED = [["d16.yaml"], *(["d16.yaml", f"d16_{m}.yaml"] for m in OVERLAYS), ["digits.yaml"], ["emoji.yaml"]]


def test_every_shipped_config_is_tested():
    assert {name for files in SHIPPED for name in files} == {p.name for p in PRESETS.glob("*.yaml")}


@pytest.mark.parametrize("files", SHIPPED, ids=lambda files: "+".join(f.removesuffix(".yaml") for f in files))
def test_shipped_configs_load_and_build(files):
    """Each combination loads and builds its model at full size (on the meta device: no memory, no time)."""
    cfg = load_config(VARTrainConfig, [PRESETS / name for name in files])
    with torch.device("meta"):
        model = VAR(cfg.model)
    assert [type(b.attn).__name__ for b in model.blocks] and len(model.blocks) == cfg.model.depth
    if files[0] == "d16.yaml":  # the published d16 recipe; an overlay changes only the mechanism and out_dir
        assert cfg.batch_size * 16 == 768 and cfg.optim.base_lr == 1e-4 and cfg.optim.weight_decay == 0.05
        assert cfg.optim.grad_clip == 2.0 and cfg.precision in ("bf16-mixed", "16-mixed")
        assert cfg.model.init_adaln_gamma == 1e-3 and cfg.model.depth == 16 and cfg.model.vocab_size == 4096
        base = config_to_dict(load_config(VARTrainConfig, PRESETS / "d16.yaml"))
        combo = config_to_dict(cfg)
        assert {k for k in combo if combo[k] != base[k]} <= {"model", "out_dir"}
        assert {k for k in combo["model"] if combo["model"][k] != base["model"][k]} <= {
            "attention",
            "attention_options",
        }
        assert (combo == base) == (len(files) == 1)
    if files[0] == "emoji.yaml":  # the multi-scale regime: 7+ scales, the largest wider than the local window
        pn = cfg.model.patch_nums
        assert len(pn) >= 7 and pn[-1] >= 8 and cfg.model.num_classes == 9
        assert pn[-1] > cfg.model.attention_options["neighborhood"]["kernel_size"]


def test_a_model_preset_from_the_command_line_keeps_the_files_settings():
    files = [PRESETS / "d16.yaml", PRESETS / "d16_lka.yaml"]
    cfg = load_config(VARTrainConfig, files, ["model.preset=d20"])
    assert (cfg.model.depth, cfg.model.attention, cfg.model.init_adaln_gamma) == (20, "lka", 1e-3)
    with pytest.raises(ConfigError, match=r"override 'model.preset=d21': key 'model.preset': unknown preset 'd21'"):
        load_config(VARTrainConfig, files, ["model.preset=d21"])


def test_init_adaln_gamma_is_the_model_s_and_old_files_still_load(tmp_path, cache, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("init_adaln_gamma: 0.25\n")  # where older versions kept it
    with caplog.at_level(logging.WARNING):
        cfg = load_config(VARTrainConfig, [PRESETS / "digits.yaml", old])
    assert cfg.model.init_adaln_gamma == 0.25
    assert "old.yaml: 'init_adaln_gamma' is now 'model.init_adaln_gamma'" in caplog.text
    module = VARTraining(tiny_config(tmp_path, cache, "model.init_adaln_gamma=0.25"), load_vae(cache.parent / "tok"))
    C = module.var.config.width
    gates = module.var.blocks[0].ada_lin[-1].weight[: 2 * C]  # test_var_model: 1e-5 by default
    assert gates.std().item() == pytest.approx(0.25 * (1 / C / 3) ** 0.5, rel=0.2)


def test_cli_takes_several_configs_and_names_the_one_with_a_typo(tmp_path, capsys):
    bad = tmp_path / "overlay.yaml"
    bad.write_text("model:\n  atention: lka\n")
    assert main(["train", "--config", str(PRESETS / "d16.yaml"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"var train: error: {bad}: unknown key 'model.atention'; did you mean 'model.attention'?"


def test_gradient_accumulation_resumes_exactly(tmp_path, cache):
    """trainer.accumulate_grad_batches passes through to Lightning: two batches a step, the lr follows the
    global batch, and a resumed run takes the batches (and random draws) the uninterrupted run took."""
    common = ["trainer.accumulate_grad_batches=2", "optim.lr=0", "optim.base_lr=0.032", "model.cond_drop_rate=0.5"]
    common += ["model.drop_path_rate=0.2", "max_steps=4", "ckpt_every_n_steps=2"]
    full, full_losses = fit(tiny_config(tmp_path / "full", cache, *common))
    assert full.trainer.accumulate_grad_batches == 2 and full.trainer.global_step == 4 and len(full_losses) == 8
    assert full.peak_lr() == pytest.approx(0.032 * 16 * 2 / 256)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_config(tmp_path / "part", cache, *common), crash_at=3)
    resumed_cfg = tiny_config(tmp_path / "part", cache, "resume=true", *common)
    resumed, resumed_losses = fit(resumed_cfg, ckpt_path=resumed_cfg.resume_path())
    assert resumed.trainer.global_step == 4
    assert resumed_losses == pytest.approx(full_losses[4:], rel=1e-5, abs=1e-6)
    for (ka, va), vb in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=ka)


def test_two_process_ddp_on_cpu(tmp_path, cache):
    """torchrun, 2 ranks, gloo: both train on their own shards and rank 0 exports (~10 s on a free 2-core CPU)."""
    args = [*TINY, f"data.cache={cache}", f"out_dir={tmp_path}", "max_steps=3", "trainer.devices=2"]
    args += ["trainer.strategy=ddp", "ckpt_every_n_steps=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "app", "train"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert load_model(tmp_path / "model").num_classes == 10


@pytest.mark.slow  # inductor compiles the training forward and backward
def test_compiled_training_matches_eager(tmp_path, cache):
    """compile=true is `module.compile()` on the transformer: the same losses, the same checkpoint keys."""
    common = ["max_steps=3", "ckpt_every_n_steps=100"]
    eager, eager_losses = fit(tiny_config(tmp_path / "eager", cache, *common))
    compiled, compiled_losses = fit(tiny_config(tmp_path / "compiled", cache, *common, "compile=true"))
    assert compiled.var._compiled_call_impl is not None and eager.var._compiled_call_impl is None
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # no `_orig_mod.` in the checkpoints


@pytest.mark.slow  # three two-process runs: ~90 s on a busy 2-core machine
def test_fsdp_with_ema_trains_resumes_and_exports_what_ddp_does(tmp_path, cache):
    """The EMA under FSDP. Two CPU processes (gloo; tests/fsdp_on_cpu.py lifts the GPU checks):
    FSDP for 2 steps, then resumed to 4, ends with the weights, EMA and sample grids of a 4-step DDP run."""
    args = [*TINY, f"data.cache={cache}", "trainer.devices=2", "ckpt_every_n_steps=2", "samples.every_n_steps=2"]
    args += ["samples.per_class=1", "model.drop_path_rate=0.1", "optim.weight_decay=0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

    def run(out: Path, *extra: str) -> None:
        cmd = [*torchrun, str(ROOT / "tests" / "fsdp_on_cpu.py"), "train", *args, f"out_dir={out}", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(tmp_path / "fsdp", "trainer.strategy=fsdp", "max_steps=2")
    run(tmp_path / "fsdp", "trainer.strategy=fsdp", "max_steps=4", "resume=true")
    run(tmp_path / "ddp", "trainer.strategy=ddp", "max_steps=4")
    fsdp, ddp = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=False) for r in ("fsdp", "ddp"))
    assert fsdp["global_step"] == ddp["global_step"] == 4
    assert int(fsdp["state_dict"]["ema.n_averaged"]) == 5  # the initial copy and four updates, two after resuming
    assert fsdp["state_dict"].keys() == ddp["state_dict"].keys()  # full (gathered) tensors, no tokenizer
    for k, v in ddp["state_dict"].items():
        torch.testing.assert_close(fsdp["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    exported = load_model(tmp_path / "fsdp" / "model").model.state_dict()
    for k, v in exported.items():
        torch.testing.assert_close(v, fsdp["state_dict"][f"ema.module.{k}"], rtol=0, atol=0, msg=k)
    for step in (2, 4):
        assert (tmp_path / "fsdp" / "samples" / f"step{step:07d}.png").is_file()


@pytest.mark.slow
def test_digits_preset_samples_the_requested_digits(tmp_path):
    """The digits preset (tokenizer ~2 min, tokenize, train ~2 min) samples every
    digit recognisably (>= 90% per class by var.digits_eval's judge, 20 samples per class)."""
    from tokenizer.train import TokenizerTrainConfig, train_tokenizer
    from var.digits_eval import judge_samples, load_judge

    tok = train_tokenizer(
        load_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer" / "digits.yaml", [f"out_dir={tmp_path / 't'}"])
    )
    tc = load_config(TokenizeConfig, ROOT / "configs" / "tokens" / "digits.yaml", [f"tokenizer={tok}"])
    tc.out_dir = str(tmp_path / "cache")
    cache = tokenize(tc)
    cfg = load_config(VARTrainConfig, PRESETS / "digits.yaml", [f"tokenizer={tok}", f"data.cache={cache}"])
    cfg.out_dir, cfg.trainer.progress_bar = str(tmp_path / "var"), False
    loaded = load_model(train_var(cfg))
    load_judge(16)  # trained outside judge_samples' no_grad on first use
    s = loaded.sampling
    labels = torch.arange(10).repeat_interleave(20)
    img = sample(loaded.model, loaded.vae, labels, cfg=s.cfg, top_k=s.top_k, top_p=s.top_p, seed=list(range(200)))
    report = judge_samples(img, labels)
    assert report.every_class_at_least(0.9), report.summary()


def test_resume_skips_an_empty_last_ckpt(tmp_path, cache, caplog):
    """A 0-byte last.ckpt (a copy killed at its start) gives way to the intact step checkpoint."""
    train_var(tiny_config(tmp_path, cache, "max_steps=2", "ckpt_every_n_steps=2"), logger=False)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    cfg = tiny_config(tmp_path, cache, "max_steps=3", "ckpt_every_n_steps=2", "resume=true")
    with caplog.at_level(logging.INFO):
        assert cfg.resume_path() == str(tmp_path / "checkpoints" / "step0000002.ckpt")
        train_var(cfg, logger=False)
    assert f"skipping cannot read checkpoint {last}: the file is empty" in caplog.text
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
