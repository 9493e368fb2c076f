"""Samplers in σ-space (DESIGN.md §3; thesis 2.3-2.5), all in one registry.

===================  ===========================================================  =========
name                 method                                                       module
===================  ===========================================================  =========
``ddpm``             DDPM ancestral sampling, eq. 2.14                            ancestral
``ddim``             DDIM with η, eq. 2.15 (η = 0: deterministic)                  ancestral
``euler_ancestral``  Euler ancestral (= DDIM η = 1 on a Karras schedule)          ancestral
``langevin``         annealed Langevin dynamics (NCSN), eq. 2.8                   langevin
``euler_maruyama``   reverse-SDE Euler–Maruyama, eq. 2.19                         sde
``pc``               predictor–corrector (EM + Langevin corrector)                sde
``euler``            probability-flow ODE, Euler                                  ode
``heun``             probability-flow ODE, Heun (Karras et al. 2022, Alg. 1)      ode
``dpmpp_2m``         DPM-Solver++(2M) (Lu et al. 2022)                            ode
===================  ===========================================================  =========

Use :func:`sample` for one-call sampling, or call a sampler with your own σ schedule
(:func:`make_sigmas`). The contract every sampler follows is documented in :mod:`.registry`.
"""

from .registry import (
    SCHEDULES,
    SamplerInfo,
    get_sampler,
    list_samplers,
    make_sigmas,
    model_schedule,
    register_sampler,
    sample,
    sampler_info,
)
from .ancestral import ancestral_step_sizes, sample_ddim, sample_ddpm, sample_euler_ancestral
from .langevin import langevin_corrector, sample_langevin
from .ode import ODE_METHODS, integrate_pf_ode, invert_ode, sample_dpmpp_2m, sample_euler, sample_heun
from .sde import reverse_sde_step, sample_euler_maruyama, sample_pc

__all__ = [
    "SCHEDULES",
    "SamplerInfo",
    "get_sampler",
    "list_samplers",
    "make_sigmas",
    "model_schedule",
    "register_sampler",
    "sample",
    "sampler_info",
    "ancestral_step_sizes",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler_ancestral",
    "langevin_corrector",
    "sample_langevin",
    "ODE_METHODS",
    "integrate_pf_ode",
    "invert_ode",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "reverse_sde_step",
    "sample_euler_maruyama",
    "sample_pc",
]
