"""The training loop: EMA maths, LR schedule, data order, exact resume, atomic checkpoints, DDP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import condiff.train.checkpoint as ckpt_mod
from condiff.denoisers import eps_denoiser
from condiff.losses import DDPMEpsLoss
from condiff.nn.toy import ToyMLP
from condiff.schedules import DiscreteSchedule
from condiff.testing.gmm import two_moons_mixture
from condiff.train import (
    EMA,
    DiffusionObjective,
    LRSchedule,
    SeededBatchOrder,
    TrainConfig,
    Trainer,
    capture_rng_state,
    ema_decay_at,
    find_latest,
    load_checkpoint,
    restore_rng_state,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ EMA


def test_ema_decay_warmup_values():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay_at(10**6, 0.999) == 0.999
    assert ema_decay_at(0, 0.9, warmup=False) == 0.9


def test_ema_follows_the_recursion_and_restores_training_weights():
    lin = nn.Linear(3, 2)
    lin.register_buffer("running", torch.zeros(2))
    lin.bias.requires_grad_(False)  # frozen: not averaged
    ema = EMA(lin, decay=0.9, warmup=True)
    assert set(ema.shadow) == {"weight", "running"}
    expected = lin.weight.detach().double().clone()
    g = torch.Generator().manual_seed(0)
    for n in range(25):
        with torch.no_grad():
            lin.weight.copy_(torch.randn(2, 3, generator=g))
            lin.running.fill_(float(n))
        ema.update(lin)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * lin.weight.detach().double()
    assert ema.num_updates == 25
    assert torch.allclose(ema.shadow["weight"].double(), expected, atol=1e-6)
    assert float(ema.shadow["running"][0]) == 24.0
    trained = lin.weight.detach().clone()
    with ema.average_parameters(lin):
        assert torch.allclose(lin.weight.double(), expected, atol=1e-6)
    assert torch.equal(lin.weight, trained)
    state = ema.state_dict()
    other = EMA(lin, decay=0.5)
    other.load_state_dict(state)
    assert other.decay == 0.9 and other.num_updates == 25 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="does not fit"):
        EMA(nn.Linear(3, 2)).load_state_dict(state)


def test_lr_schedule_warmup_and_cosine():
    s = LRSchedule("cosine", warmup=4, total=14, min_ratio=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == pytest.approx(1.0)
    assert s(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(14) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    assert LRSchedule("constant", 0, 10)(7) == 1.0


# ------------------------------------------------------------------ data order


def test_seeded_batch_order_is_a_reproducible_epoch_permutation():
    order = SeededBatchOrder(length=10, batch_size=4, seed=3)
    stream = torch.cat([order.next_batch() for _ in range(5)])  # 20 = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])
    again = SeededBatchOrder(10, 4, 3)
    again.load_state_dict({"cursor": 8, "length": 10, "batch_size": 4, "seed": 3})
    assert torch.equal(again.next_batch(), stream[8:12])  # straddles the epoch boundary
    assert not torch.equal(SeededBatchOrder(10, 4, 4).next_batch(), stream[:4])
    with pytest.raises(ValueError, match="batch_size=5"):
        again.load_state_dict({"cursor": 0, "length": 10, "batch_size": 5, "seed": 3})


# ------------------------------------------------------------------ exact resume


def _toy_trainer(out: Path | None, seed_init: int, steps: int = 9, device: str = "cpu", **over) -> Trainer:
    torch.manual_seed(seed_init)
    sched = DiscreteSchedule.named("linear", 100)
    den = eps_denoiser(ToyMLP(2, 32, 2, dropout=0.1), sched)  # dropout: the global RNG must be restored too
    data = two_moons_mixture().sample(150, torch.Generator().manual_seed(0)).float()
    cfg = TrainConfig(steps=steps, batch_size=32, grad_accum=2, lr=3e-3, lr_schedule="cosine", warmup_steps=2,
                      ema_decay=0.9, log_every=1, checkpoint_every=3, seed=11, progress=False, **over)
    return Trainer(den, DiffusionObjective(DDPMEpsLoss(sched)), data, cfg, out_dir=out, device=device)


class _Killed(RuntimeError):
    pass


def test_killed_and_resumed_run_is_bit_identical(tmp_path, device="cpu"):
    full = _toy_trainer(tmp_path / "full", seed_init=1, device=device)
    assert full.autocast == (device == "cuda")  # bf16 autocast on CUDA, fp32 on CPU
    ref = full.fit()
    assert [r["step"] for r in ref.history] == list(range(1, 10))

    def kill_at_step_8(trainer, record):
        if trainer.step == 8:
            raise _Killed

    run = tmp_path / "killed"
    victim = _toy_trainer(run, seed_init=1, device=device)
    victim.callbacks.append(kill_at_step_8)
    with pytest.raises(_Killed):
        victim.fit()
    assert load_checkpoint(run / "checkpoints").step == 6
    torch.manual_seed(999), np.random.seed(5), random.seed(5)  # scramble the global RNGs
    resumed = _toy_trainer(run, seed_init=2, device=device)  # different initial weights: all must come from the checkpoint
    out = resumed.fit(resume=True)
    assert [r["step"] for r in out.history] == [7, 8, 9]
    assert [r["loss"] for r in out.history] == [r["loss"] for r in ref.history[6:]]
    assert [r["grad_norm"] for r in out.history] == [r["grad_norm"] for r in ref.history[6:]]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for name in full.ema.shadow:
        assert torch.equal(full.ema.shadow[name], resumed.ema.shadow[name])
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 10))  # the killed tail (steps 7, 8) was dropped
    assert [r["loss"] for r in lines] == [r["loss"] for r in ref.history]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_run_resumes_bit_exactly(tmp_path):
    test_killed_and_resumed_run_is_bit_identical(tmp_path, device="cuda")


def test_fresh_run_refuses_a_folder_with_a_run(tmp_path):
    _toy_trainer(tmp_path, seed_init=1, steps=3).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        _toy_trainer(tmp_path, seed_init=1, steps=3).fit()
    again = _toy_trainer(tmp_path, seed_init=1, steps=3)
    again.overwrite = True
    assert again.fit().step == 3
    with pytest.raises(ValueError, match="batch_size=32 but this run has batch_size=64"):
        t = _toy_trainer(tmp_path, seed_init=1, steps=3)
        t.config.batch_size = 64
        t.load_checkpoint(tmp_path / "checkpoints")


def test_time_limit_stops_after_a_checkpoint_and_resume_finishes(tmp_path):
    first = _toy_trainer(tmp_path, seed_init=1).fit(time_limit_s=0.0)
    assert first.stopped_early and first.step == 1
    assert find_latest(tmp_path / "checkpoints").name == "step_00000001-state.pt"
    assert _toy_trainer(tmp_path, seed_init=1).fit(resume=True).step == 9


# ------------------------------------------------------------------ checkpoint files


def test_checkpoint_write_crash_leaves_no_partial_file(tmp_path, monkeypatch):
    trainer = _toy_trainer(tmp_path, seed_init=1, steps=3)
    trainer.fit()
    ckdir = tmp_path / "checkpoints"
    before = sorted(p.name for p in ckdir.iterdir())
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # truncate what was written, then die mid-write
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    trainer.step = 4
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    after = sorted(p.name for p in ckdir.iterdir())
    assert "step_00000004-state.pt" not in after
    assert not [n for n in after if n.endswith(".tmp") or n.startswith(".")]
    assert set(after) - set(before) <= {"step_00000004-model.safetensors", "step_00000004-ema.safetensors"}
    ck = load_checkpoint(ckdir)  # latest.json still names the complete step-3 checkpoint
    assert ck.step == 3 and ck.ema is not None and set(ck.model) == set(trainer.model.state_dict())


def test_checkpoint_state_is_weights_only_loadable_and_rng_round_trips(tmp_path):
    _toy_trainer(tmp_path, seed_init=1, steps=3).fit()
    state = torch.load(find_latest(tmp_path / "checkpoints"), weights_only=True)
    assert state["step"] == 3 and state["data_order"]["cursor"] == 96 and len(state["rng"]) == 1
    rng = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(rng)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ------------------------------------------------------------------ accumulation, batch_fn, DDP


class _Regression:
    """Deterministic objective: per-sample squared error of a linear model."""

    def __call__(self, model, batch, generator):
        x, y = batch
        return (model(x) - y).pow(2).mean(1)


def _regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return x, x @ torch.randn(4, 2, generator=g) + 0.1 * torch.randn(64, 2, generator=g)


def _regression_weights(**over) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    cfg = TrainConfig(steps=5, batch_size=16, lr=1e-2, ema_decay=0.0, progress=False, log_every=1, **over)
    Trainer(model, _Regression(), _regression_data(), cfg, device="cpu").fit()
    return model.state_dict()


def test_gradient_accumulation_matches_the_full_batch():
    a, b = _regression_weights(grad_accum=1), _regression_weights(grad_accum=4)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    c = _regression_weights(grad_accum=1, seed=1)  # another data order: really different
    assert not all(torch.allclose(a[k], c[k], atol=1e-4) for k in a)


def test_batch_fn_data_source_is_seeded_per_step():
    seen = []

    def batch_fn(step, g):
        x = torch.randn(8, 2, generator=g)
        seen.append((step, x.clone()))
        return x

    torch.manual_seed(0)
    den = eps_denoiser(ToyMLP(2, 16, 1), DiscreteSchedule.named("linear", 50))
    cfg = TrainConfig(steps=3, batch_size=8, ema_decay=0.0, progress=False)
    Trainer(den, DiffusionObjective(DDPMEpsLoss(DiscreteSchedule.named("linear", 50))), batch_fn, cfg, device="cpu").fit()
    assert [s for s, _ in seen] == [0, 1, 2] and not torch.equal(seen[0][1], seen[1][1])
    with pytest.raises(ValueError, match="returned a batch of 4 samples"):
        Trainer(den, lambda m, b, g: b.sum(1), lambda s, g: torch.zeros(4, 2), cfg, device="cpu").fit()


_WORKER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    sys.path.insert(0, {tests!r})
    from test_train import _Regression, _regression_data
    from condiff.train import Trainer, TrainConfig, init_distributed, shutdown_distributed
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    torch.manual_seed(100 + ctx.rank)  # different initial weights per rank: rank 0's must be broadcast
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    if ctx.rank == 0:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    cfg = TrainConfig(steps=5, batch_size=16, lr=1e-2, ema_decay=0.0, progress=False, log_every=1)
    out = {out!r}
    res = Trainer(model, _Regression(), _regression_data(), cfg, dist=ctx, out_dir=out + "/run").fit()
    torch.save({{"state": model.state_dict(), "losses": [r["loss"] for r in res.history],
                "backend": ctx.backend, "world": ctx.world_size}}, out + f"/rank{{ctx.rank}}.pt")
    shutdown_distributed(ctx)
    """
)


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(REPO / "tests"), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["backend"] == "gloo" and r0["world"] == 2
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k])  # the ranks end with identical weights
    assert r0["losses"] == r1["losses"]  # all-reduced loss logging
    single = _regression_weights()
    for k in single:
        assert torch.allclose(r0["state"][k], single[k], atol=1e-5)
    # rank 0 alone checkpoints and logs
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 5
    ck = load_checkpoint(tmp_path / "run" / "checkpoints")
    assert ck.step == 5 and ck.state["world_size"] == 2 and len(ck.state["rng"]) == 2
