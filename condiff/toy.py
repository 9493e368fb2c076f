"""The toy end-to-end job: train a small diffusion model on a 2-D Gaussian mixture and measure it.

Data: :func:`condiff.testing.gmm.two_moons_mixture` (3 anisotropic Gaussians), for which the exact
denoiser is known, so the job can say how far the trained model is from what is achievable:

1. train a :class:`~condiff.nn.toy.ToyMLP` with one of the thesis's objectives
   (:data:`TOY_LOSSES`, see :func:`build_toy`) through the generic :class:`~condiff.train.Trainer`;
2. sample ``n_eval`` points with the EMA weights through a probability-flow ODE sampler;
3. measure the sliced Wasserstein distance (SW₁) to fresh mixture samples, next to two floors:
   SW₁ between two independent mixture samples of the same size (finite-sample noise), and SW₁ of
   the *exact* mixture denoiser run through the same sampler (sampler discretisation error);
4. write ``model.safetensors`` + ``config.json`` (EMA weights), ``metrics.json`` and a scatter plot
   ``samples.png`` into the output folder (with ``metrics.jsonl`` and ``checkpoints/`` of training).

The four objectives, each with the parameterisation it was designed for:

* ``eps``: DDPM ε-network on the linear β schedule, L_simple (thesis eq. 2.13);
* ``dsm``: NCSN score network, σ²-weighted denoising score matching over 60 geometric levels in [0.01, 20] (eq. 2.6);
* ``v``:   v-prediction network on the linear β schedule, v-loss (Salimans & Ho 2022);
* ``edm``: EDM-preconditioned network, log-normal σ and EDM weighting (eq. 2.20 with λ of Karras et al.).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from .denoisers import NetworkDenoiser, edm_denoiser, eps_denoiser, score_denoiser, v_denoiser
from .io import atomic_path
from .losses import ContinuousScoreLoss, DDPMEpsLoss, NCSNScoreLoss, VPredictionLoss
from .nn.toy import ToyMLP
from .samplers import sample
from .schedules import DiscreteSchedule
from .testing.gmm import GaussianMixture, GMMDenoiser, sliced_wasserstein, two_moons_mixture
from .train.distributed import DistContext
from .train.loop import DiffusionObjective, TrainConfig, Trainer, check_option_names

__all__ = ["TOY_LOSSES", "ToyConfig", "ToyResult", "build_toy", "toy_dataset", "sample_toy", "run_toy", "run_recipe"]

TOY_LOSSES = ("eps", "dsm", "v", "edm")


@dataclass
class ToyConfig:
    """Everything the toy job needs (also the ``[toy]`` table of recipes/toy2d.toml)."""

    loss: str = "eps"
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 50
    ema_decay: float = 0.99
    hidden: int = 96
    depth: int = 3
    n_data: int = 8192
    seed: int = 0
    sampler: str = "heun"
    sample_steps: int = 32
    n_eval: int = 2000
    log_every: int = 50
    checkpoint_every: int = 500

    def validate(self) -> "ToyConfig":
        if self.loss not in TOY_LOSSES:
            raise ValueError(f"unknown toy loss {self.loss!r}; choose one of {TOY_LOSSES}")
        for name in ("steps", "batch_size", "hidden", "depth", "n_data", "sample_steps", "n_eval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"toy option {name} must be ≥ 1, got {getattr(self, name)}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        check_option_names(cls, d, "toy")
        return cls(**d).validate()


@dataclass
class ToyResult:
    loss: str
    sliced_w: float  # SW₁(trained-model samples, fresh data)
    sliced_w_data_floor: float  # SW₁(data sample, independent data sample)
    sliced_w_exact_denoiser: float  # SW₁(exact-denoiser samples through the same sampler, fresh data)
    train_seconds: float
    steps: int
    final_loss: float
    files: dict[str, str] = field(default_factory=dict)


def _data_scale(mixture: GaussianMixture) -> float:
    """σ_data = √(tr Cov / d), the data scale EDM preconditioning wants."""
    return float(mixture.covariance().trace().div(mixture.dim).sqrt())


def build_toy(loss: str, hidden: int = 96, depth: int = 3, mixture: GaussianMixture | None = None):
    """(denoiser wrapping a fresh ToyMLP, loss callable) for one of :data:`TOY_LOSSES`."""
    mixture = mixture or two_moons_mixture()
    if loss in ("eps", "v"):
        schedule = DiscreteSchedule.named("linear")
        net = ToyMLP(mixture.dim, hidden, depth, time_scale=1.0)  # DDPM timestep in [0, 1000)
        if loss == "eps":
            return eps_denoiser(net, schedule), DDPMEpsLoss(schedule)
        return v_denoiser(net, schedule), VPredictionLoss(schedule)
    net = ToyMLP(mixture.dim, hidden, depth, time_scale=100.0)  # c_noise = ¼ ln σ ∈ [−1.6, 1.1]
    if loss == "dsm":
        return score_denoiser(net, 0.01, 20.0), NCSNScoreLoss(0.01, 20.0, levels=60)
    if loss == "edm":
        sd = _data_scale(mixture)
        return edm_denoiser(net, 0.002, 80.0, sigma_data=sd), ContinuousScoreLoss("lognormal", "edm", sigma_data=sd)
    raise ValueError(f"unknown toy loss {loss!r}; choose one of {TOY_LOSSES}")


def toy_dataset(n: int, seed: int = 0, mixture: GaussianMixture | None = None) -> Tensor:
    """``n`` float32 points of the mixture (a fixed, seeded training set)."""
    mixture = mixture or two_moons_mixture()
    return mixture.sample(n, torch.Generator().manual_seed(seed)).float()


@torch.no_grad()
def sample_toy(denoiser, n: int, steps: int = 32, seed: int = 0, sampler: str = "heun") -> Tensor:
    """``n`` samples of a 2-D denoiser through the sampler registry (Karras σ spacing over the
    denoiser's [σ_min, σ_max]; sample i uses seed + i)."""
    param = next(iter(denoiser.parameters()), None) if isinstance(denoiser, torch.nn.Module) else None
    device = param.device if param is not None else torch.device("cpu")
    return sample(denoiser, (n, 2), sampler=sampler, steps=steps, schedule="karras", seed=seed,
                  device=device).float().cpu()


def _save_scatter(path: Path, samples: Tensor, data: Tensor, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, name in ((axes[0], data, "data"), (axes[1], samples, "model")):
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.4)
        ax.set_title(name)
        ax.set_aspect("equal")
    axes[0].set_xlim(-5, 5)
    axes[0].set_ylim(-5, 5)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


# the keyword parameters are run_recipe's on purpose: every recipe function takes them (condiff.train's contract)
def run_toy(
    config: ToyConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    dist: DistContext | None = None,
) -> ToyResult:
    """Train, sample, measure and (with ``out_dir``) save the toy model; see the module docstring."""
    config.validate()
    mixture = two_moons_mixture()
    torch.manual_seed(config.seed)  # the network's initial weights
    denoiser, loss = build_toy(config.loss, config.hidden, config.depth, mixture)
    data = toy_dataset(config.n_data, config.seed, mixture)
    train_cfg = TrainConfig(
        steps=config.steps, batch_size=config.batch_size, lr=config.lr, lr_schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps, ema_decay=config.ema_decay, seed=config.seed,
        log_every=config.log_every, checkpoint_every=config.checkpoint_every, progress=progress, grad_clip=1.0,
    )
    out = Path(out_dir) if out_dir is not None else None
    trainer = Trainer(denoiser, DiffusionObjective(loss), data, train_cfg, out_dir=out, device=device, dist=dist,
                      overwrite=overwrite)
    started = time.perf_counter()
    fit = trainer.fit(resume=resume)
    train_seconds = time.perf_counter() - started

    denoiser.eval()
    if trainer.ema is not None:
        trainer.ema.copy_to(denoiser)
    samples = sample_toy(denoiser, config.n_eval, config.sample_steps, config.seed + 10_000, config.sampler)
    fresh = mixture.sample(config.n_eval, torch.Generator().manual_seed(config.seed + 20_000)).float()
    other = mixture.sample(config.n_eval, torch.Generator().manual_seed(config.seed + 30_000)).float()
    exact = GMMDenoiser(mixture, denoiser.sigma_min, denoiser.sigma_max)
    exact_samples = sample_toy(exact, config.n_eval, config.sample_steps, config.seed + 10_000, config.sampler)
    result = ToyResult(
        loss=config.loss,
        sliced_w=sliced_wasserstein(samples, fresh),
        sliced_w_data_floor=sliced_wasserstein(other, fresh),
        sliced_w_exact_denoiser=sliced_wasserstein(exact_samples, fresh),
        train_seconds=round(train_seconds, 3),
        steps=fit.step,
        final_loss=fit.history[-1]["loss"] if fit.history else _last_logged_loss(out),
    )
    if not math.isfinite(result.sliced_w):
        raise FloatingPointError("the trained toy model produced non-finite samples")
    if out is not None and trainer.dist.is_main:
        _write_outputs(out, config, denoiser, samples, data, result)
    return result


def _last_logged_loss(out: Path | None) -> float:
    """The loss of the last step in ``out/metrics.jsonl`` (a resumed run that had nothing left to do)."""
    lines = (out / "metrics.jsonl").read_text().splitlines() if out is not None and (out / "metrics.jsonl").exists() else []
    lines = [ln for ln in lines if ln.strip()]
    return float(json.loads(lines[-1])["loss"]) if lines else math.nan


def _write_outputs(out: Path, config: ToyConfig, denoiser: NetworkDenoiser, samples: Tensor, data: Tensor,
                   result: ToyResult) -> None:
    files = {"weights": out / "model.safetensors", "config": out / "config.json",
             "metrics": out / "metrics.json", "plot": out / "samples.png"}
    with atomic_path(files["weights"]) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in denoiser.net.state_dict().items()}, str(tmp),
                  metadata={"format": "condiff-toy", "loss": config.loss})
    model_config = {"toy": asdict(config), "network": denoiser.net.config, "prediction": denoiser.prediction,
                    "sigma_min": denoiser.sigma_min, "sigma_max": denoiser.sigma_max,
                    "sigma_data": denoiser.sigma_data}
    with atomic_path(files["config"]) as tmp:
        tmp.write_text(json.dumps(model_config, indent=1))
    _save_scatter(files["plot"], samples, data[: len(samples)],
                  f"toy '{config.loss}': SW₁ {result.sliced_w:.3f} (data floor {result.sliced_w_data_floor:.3f})")
    result.files = {k: str(v) for k, v in files.items()}
    with atomic_path(files["metrics"]) as tmp:
        tmp.write_text(json.dumps(asdict(result), indent=1))


def run_recipe(recipe: dict, out_dir: str | Path | None, *, resume: bool = False, overwrite: bool = False,
               device: str | None = None, progress: bool = True, dist: DistContext | None = None) -> ToyResult:
    """Entry point of ``condiff train run recipes/toy2d.toml`` (kind = "toy2d"): the ``[toy]`` table."""
    unknown = set(recipe) - {"kind", "out", "toy"}
    if unknown:
        raise ValueError(f"the toy2d recipe knows the keys kind, out and [toy], not {sorted(unknown)}")
    return run_toy(ToyConfig.from_dict(recipe.get("toy", {})), out_dir, resume=resume, overwrite=overwrite,
                   device=device, progress=progress, dist=dist)
