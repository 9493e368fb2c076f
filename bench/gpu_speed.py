"""GPU speed of condiff against diffusers on a Stable-Diffusion-1.5-shaped model (random weights).

Both libraries get the same weights (condiff's U-Net and autoencoder load diffusers' state dicts
unchanged) and the same CLIP text tower, in the same process, so every ratio compares like with
like on one card. Sections (``--sections``, comma separated):

* ``step``: one CFG U-Net step (batch 2, 64×64 latents, 77×768 context); condiff through its
  σ-space denoiser + CFG wrapper, diffusers as its pipeline does it (cat, U-Net, chunk, combine);
  eager and with each speed option (condiff.acceleration) and diffusers' own equivalents;
* ``text``: text encoding of one prompt pair; ``vae``: decode of one 512² image;
* ``e2e``: 512², 30 DPM-Solver++(2M) steps, CFG 7.5, batch 1/4/8: condiff's text2img.generate
  vs diffusers' StableDiffusionPipeline (``--e2e-compiled`` adds compiled runs);
* ``builtin``: condiff's built-in model, 128², batch 64, default steps;
* ``fp8``: FP8 linears (condiff.fp8, Ada/Hopper): PSNR / LPIPS-like of the images against the same seeds
  without them (built-in model and the SD shape) and the SD-shaped end-to-end time;
* ``profile``: torch.profiler of condiff's CFG step: share of kernel time in attention,
  convolutions, matrix products, norms and the rest, and the launch gaps (wall − kernel time).

Timings: CUDA events around ``--repeats`` runs after warm-up, median reported; peak memory from
``torch.cuda.max_memory_allocated``; compile time = first call of a compiled module. Results go
to ``OUT/gpu_speed-<tag>.json`` and a short table ``OUT/gpu_speed-<tag>.md``, both rewritten after
every measurement (a run stopped at its time limit keeps what it measured).

``--tiny`` swaps in a small U-Net/VAE/CLIP of the same structure for a CPU smoke test. On a GPU
(diffusers importable), two runs of under 10 minutes each cover everything::

    python bench/gpu_speed.py --sections step,profile,text --compile \
        --compile-modes default,reduce-overhead --out bench/results --tag h100-part1
    python bench/gpu_speed.py --sections e2e,builtin --compile --e2e-compiled --out bench/results --tag h100-part2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condiff import acceleration as acc  # noqa: E402
from fp8_linear import fp8_supported, from_float8, to_float8  # noqa: E402
from condiff.denoisers import Cond  # noqa: E402
from condiff.models.ldm import LatentDiffusion  # noqa: E402
from condiff.models.sd_configs import CLIP_L_TEXT, SD_VARIANTS  # noqa: E402
from condiff.schedules import DiscreteSchedule  # noqa: E402

RESULTS: dict = {}
FP8 = acc.SpeedOptions(channels_last=True)  # + fp8_linear.to_float8 of the U-Net (with_fp8)
CUDA_GRAPHS = acc.SpeedOptions(fused_qkv=True, channels_last=True, compile=True, cuda_graphs=True)
COMPILE = replace(acc.COMPILE, cuda_graphs=False)  # torch.compile's default mode, no CUDA graphs


def with_fp8(model, options: acc.SpeedOptions):
    """``options`` applied to ``model`` after its U-Net's attention/feed-forward linears became FP8."""
    to_float8(model.unet)
    return acc.accelerate(model, options)
OUT: Path = Path(".")
SECTION = "all"


def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"gpu_speed-{SECTION}.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    (OUT / f"gpu_speed-{SECTION}.md").write_text(markdown(RESULTS))


def markdown(results: dict) -> str:
    """A short table: condiff vs diffusers per measurement (ms, images/s, peak GiB, compile s, ratio)."""
    card = results.get("env", {}).get("card", "?")
    rows = [f"# condiff vs diffusers on {card} ({results.get('env', {}).get('dtype', '?')})", "",
            "| measurement | condiff ms | diffusers ms | diffusers/condiff | condiff img/s | peak GiB (c/d) | compile s (c/d) |",
            "|---|---|---|---|---|---|---|"]
    keys = sorted({k.replace(".condiff.", ".X.").replace(".diffusers.", ".X.") for k in results
                   if (".condiff." in k or ".diffusers." in k) and not k.endswith(".error")
                   and not k.startswith("profile.")})
    for key in keys:
        ours = results.get(key.replace(".X.", ".condiff."), {})
        theirs = results.get(key.replace(".X.", ".diffusers."), {})
        if not isinstance(ours, dict) or not isinstance(theirs, dict):
            continue
        ratio = f"{theirs['ms'] / ours['ms']:.2f}" if ours.get("ms") and theirs.get("ms") else ""
        rows.append(f"| {key.replace('.X.', ' ')} | {ours.get('ms', '')} | {theirs.get('ms', '')} | {ratio} | "
                    f"{ours.get('images_per_s', '')} | {ours.get('peak_gib', '')}/{theirs.get('peak_gib', '')} | "
                    f"{ours.get('compile_s', '')}/{theirs.get('compile_s', '')} |")
    for k, v in results.items():
        if k.startswith("profile.") and isinstance(v, dict):
            shares = ", ".join(f"{c} {100 * f:.0f}%" for c, f in v.get("share_of_wall", {}).items())
            rows.append(f"\n{k}: {v.get('wall_ms_per_step')} ms/step wall, {v.get('kernel_ms_per_step')} ms kernels; {shares}")
    return "\n".join(rows) + "\n"


def record(key: str, value) -> None:
    RESULTS[key] = value
    print(f"{key}: {json.dumps(value, default=str)}", flush=True)
    save()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 2) -> dict:
    """Median wall time of ``fn()`` in ms (CUDA-synchronised), with the peak memory of one call."""
    for _ in range(warmup):
        fn()
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "n": repeats,
            "peak_gib": None if peak is None else round(peak, 2)}


def first_call(fn) -> float:
    """Seconds of the first call (compile time for a compiled module)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return round(time.perf_counter() - t0, 2)


def guard(name: str, fn) -> None:
    """Run one measurement; record its error instead of stopping the benchmark."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - a benchmark keeps going and records what failed
        record(name + ".error", f"{type(err).__name__}: {err}"[:400])
        traceback.print_exc()
    finally:
        torch._dynamo.reset() if hasattr(torch, "_dynamo") else None


# ----------------------------------------------------------------------------- models
def unet_config(tiny: bool) -> dict:
    cfg = dict(SD_VARIANTS["sd1"].unet)
    if tiny:
        cfg.update(block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, attention_head_dim=4,
                   layers_per_block=1, norm_num_groups=8)
    return cfg


def vae_config(tiny: bool) -> dict:
    cfg = dict(SD_VARIANTS["sd1"].vae)
    if tiny:
        cfg.update(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
    return cfg


def text_config(tiny: bool) -> dict:
    cfg = dict(CLIP_L_TEXT)
    if tiny:
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    return cfg


def build(args, dtype):
    """(diffusers unet, condiff unet, diffusers vae, condiff vae, CLIP text model) with equal weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from condiff.models.sd_loader import build_unet, build_vae

    dev = torch.device(args.device)
    torch.manual_seed(0)
    with dev:
        ref_unet = UNet2DConditionModel(**unet_config(args.tiny)).eval()
        ref_vae = AutoencoderKL(**vae_config(args.tiny)).eval()
        text = CLIPTextModel(CLIPTextConfig(**text_config(args.tiny))).eval()
    unet = build_unet(unet_config(args.tiny), ref_unet.state_dict(), dtype).to(dev)
    vae = build_vae(vae_config(args.tiny), ref_vae.state_dict(), dtype).to(dev)
    ref_unet.to(dtype)
    ref_vae.to(dtype)
    text.to(dtype).requires_grad_(False)
    for m in (unet, vae, ref_unet, ref_vae):
        m.requires_grad_(False)
    return ref_unet, unet, ref_vae, vae, text


def tokenizer():
    from condiff.models.sd_tokenizer import load_clip_tokenizer

    return load_clip_tokenizer(pad_token="<|endoftext|>")


def condiff_model(unet, vae, text) -> LatentDiffusion:
    from condiff.models.sd_text import SDTextEncoder

    sched = DiscreteSchedule.named("scaled_linear", 1000)
    return LatentDiffusion("sd15-random", unet, vae, SDTextEncoder(text, tokenizer()), sched, "eps", 0.18215, 512,
                           info={"default_guidance": 7.5})


def diffusers_pipe(ref_unet, ref_vae, text):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        steps_offset=1)
    pipe = StableDiffusionPipeline(vae=ref_vae, text_encoder=text, tokenizer=tokenizer(), unet=ref_unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- sections
def step_inputs(args, dtype, batch=1, ctx_dim=768, size=64):
    g = torch.Generator(device=args.device).manual_seed(0)
    x = torch.randn(batch, 4, size, size, device=args.device, generator=g)
    ctx = torch.randn(2 * batch, 77, ctx_dim, device=args.device, generator=g, dtype=dtype)
    return x, ctx


def condiff_step_fn(model, x, ctx):
    from condiff.guidance import ClassifierFreeGuidance

    b = x.shape[0]
    den = ClassifierFreeGuidance(model.denoiser(), 7.5, Cond(context=ctx[:b]))
    cond = Cond(context=ctx[b:])
    sigma = torch.full((b,), 3.0, device=x.device)
    return lambda: den(x, sigma, cond)


def diffusers_step_fn(ref_unet, x, ctx):
    t = torch.full((1,), 500, device=x.device, dtype=torch.long)
    dtype = next(ref_unet.parameters()).dtype

    def step():
        inp = torch.cat([x, x]).to(dtype)
        out = ref_unet(inp, t, encoder_hidden_states=ctx).sample
        u, c = out.chunk(2)
        return u + 7.5 * (c - u)

    return step


def section_step(args, dtype, parts):
    ref_unet, unet, _, vae, text = parts
    x, ctx = step_inputs(args, dtype, ctx_dim=ref_unet.config.cross_attention_dim)
    model = condiff_model(unet, vae, text)
    flop = args.step_tflop
    record("step.setup", {"batch": 2, "latent": list(x.shape[-2:]), "context": list(ctx.shape[1:]),
                          "tflop_per_step": flop})

    def run(name, fn, compile_first=False):
        def go():
            res = {}
            if compile_first:
                res["compile_s"] = first_call(fn)
            res.update(timed(fn, args.repeats))
            record(name, res)
        guard(name, go)

    run("step.condiff.eager", condiff_step_fn(model, x, ctx))
    run("step.diffusers.eager", diffusers_step_fn(ref_unet, x, ctx))
    for opt in ("fused_qkv", "channels_last"):
        snapshot = acc.SpeedOptions(**{opt: True})
        acc.accelerate(model, snapshot)
        run(f"step.condiff.{opt}", condiff_step_fn(model, x, ctx))
        reset_condiff(model)
    ref_unet.fuse_qkv_projections() if hasattr(ref_unet, "fuse_qkv_projections") else None
    ref_unet.to(memory_format=torch.channels_last)
    run("step.diffusers.fused_qkv+channels_last", diffusers_step_fn(ref_unet, x, ctx))
    ref_unet.to(memory_format=torch.contiguous_format)
    acc.accelerate(model, acc.FAST)
    run("step.condiff.fast", condiff_step_fn(model, x, ctx))
    reset_condiff(model)
    if args.compile:
        for mode in args.compile_modes:
            opts = acc.SpeedOptions(fused_qkv=True, channels_last=True, compile=True,
                                    cuda_graphs=mode == "reduce-overhead", compile_mode=mode)
            acc.accelerate(model, opts)
            run(f"step.condiff.compile[{mode}]", condiff_step_fn(model, x, ctx), compile_first=True)
            reset_condiff(model)
            compiled = torch.compile(ref_unet, fullgraph=True, dynamic=False, mode=mode)
            run(f"step.diffusers.compile[{mode}]", diffusers_step_fn(compiled, x, ctx), compile_first=True)
    if fp8_supported(x.device):
        with_fp8(model, FP8)
        run("step.condiff.fp8", condiff_step_fn(model, x, ctx))
        reset_condiff(model)
        for mode in args.compile_modes[-1:] if args.compile else ():  # the last (fastest) mode only: compile time
            with_fp8(model, replace(FP8, compile=True, cuda_graphs=mode == "reduce-overhead", compile_mode=mode))
            run(f"step.condiff.fp8+compile[{mode}]", condiff_step_fn(model, x, ctx), compile_first=True)
            reset_condiff(model)


def reset_condiff(model) -> None:
    """Undo speed options (eager, unfused, FP32/bf16 linears, contiguous) between measurements."""
    from_float8(model.unet)
    for net in (model.unet, model.vae):
        acc.fuse_qkv(net, False)
        net.to(memory_format=torch.contiguous_format)
        net._compiled_call_impl = None
    model.vae.decoder._compiled_call_impl = None
    torch._dynamo.reset()


def section_text_vae(args, dtype, parts):
    ref_unet, unet, ref_vae, vae, text = parts
    tok = tokenizer()
    ids = tok(["a photograph of an astronaut riding a horse", ""], padding="max_length", max_length=77,
              truncation=True, return_tensors="pt")["input_ids"].to(args.device)
    guard("text.clip", lambda: record("text.clip", timed(lambda: text(input_ids=ids), args.repeats)))
    size = 64 if not args.tiny else 32
    z = torch.randn(1, 4, size, size, device=args.device, dtype=dtype)
    guard("vae.condiff.eager", lambda: record("vae.condiff.eager", timed(lambda: vae.decode(z), max(3, args.repeats // 4))))
    guard("vae.diffusers.eager", lambda: record("vae.diffusers.eager",
                                                timed(lambda: ref_vae.decode(z).sample, max(3, args.repeats // 4))))
    if args.compile:
        def comp():
            vae.decoder.compile(fullgraph=True, dynamic=False)
            res = {"compile_s": first_call(lambda: vae.decode(z))}
            res.update(timed(lambda: vae.decode(z), max(3, args.repeats // 4)))
            record("vae.condiff.compile", res)
            vae.decoder._compiled_call_impl = None

        guard("vae.condiff.compile", comp)

        def comp_ref():
            dec = torch.compile(ref_vae.decoder, fullgraph=True, dynamic=False)
            post = ref_vae.post_quant_conv
            res = {"compile_s": first_call(lambda: dec(post(z)))}
            res.update(timed(lambda: dec(post(z)), max(3, args.repeats // 4)))
            record("vae.diffusers.compile", res)

        guard("vae.diffusers.compile", comp_ref)


def section_e2e(args, dtype, parts):
    from condiff.pipelines.text2img import generate

    ref_unet, unet, ref_vae, vae, text = parts
    model = condiff_model(unet, vae, text)
    pipe = diffusers_pipe(ref_unet, ref_vae, text)
    size = 512 if not args.tiny else 128
    prompt = "a photograph of an astronaut riding a horse"

    def ours(b):
        return lambda: generate(model, prompt, batch_size=b, steps=args.steps, guidance=7.5, height=size,
                                width=size, show_progress=False)

    def theirs(b):
        return lambda: pipe(prompt, num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size,
                            num_images_per_prompt=b, output_type="pt")

    def run(name, fn, b, compile_first=False):
        def go():
            res = {"batch": b}
            if compile_first:
                res["compile_s"] = first_call(fn)
            t = timed(fn, args.e2e_repeats, warmup=1)
            res.update(t, images_per_s=round(b / (t["ms"] / 1e3), 3))
            record(name, res)
        guard(name, go)

    for b in args.batches:
        run(f"e2e.condiff.eager.b{b}", ours(b), b)
        run(f"e2e.diffusers.eager.b{b}", theirs(b), b)
    acc.accelerate(model, acc.FAST)
    for b in args.batches:
        run(f"e2e.condiff.fast.b{b}", ours(b), b)
    if args.e2e_compiled:
        acc.accelerate(model, COMPILE)
        for b in args.compiled_batches:
            run(f"e2e.condiff.compile.b{b}", ours(b), b, compile_first=True)
        pipe.unet = torch.compile(ref_unet, fullgraph=True, dynamic=False)
        pipe.vae.decoder = torch.compile(ref_vae.decoder, fullgraph=True, dynamic=False)
        for b in args.compiled_batches:
            run(f"e2e.diffusers.compile.b{b}", theirs(b), b, compile_first=True)
        reset_condiff(model)
        if model.device.type == "cuda":
            acc.accelerate(model, CUDA_GRAPHS)
            for b in args.compiled_batches:
                run(f"e2e.condiff.cudagraphs.b{b}", ours(b), b, compile_first=True)
    reset_condiff(model)


def section_builtin(args, dtype, _parts):
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    model = load_model("builtin", device=args.device, dtype=dtype)
    b = args.builtin_batch

    def go(name):
        fn = lambda: generate(model, "a horse wearing a crown", batch_size=b, show_progress=False)  # noqa: E731
        res = {"batch": b, "size": model.image_size, "steps": model.info["default_steps"]}
        if "compile" in name:
            res["compile_s"] = first_call(fn)
        t = timed(fn, max(3, args.e2e_repeats), warmup=1)
        res.update(t, images_per_s=round(b / (t["ms"] / 1e3), 2))
        record(name, res)

    guard("builtin.eager", lambda: go("builtin.eager"))
    acc.accelerate(model, acc.FAST)
    guard("builtin.fast", lambda: go("builtin.fast"))
    if args.compile:
        acc.accelerate(model, COMPILE)
        guard("builtin.compile", lambda: go("builtin.compile"))


def section_fp8(args, dtype, parts):
    """Images with FP8 linears against the same seeds in ``dtype``: PSNR and LPIPS-like distance (built-in
    model, 128², batch 16; the SD-shaped random model, 512², batch 2) and the SD-shaped end-to-end time."""
    from condiff.metrics.perceptual import filter_bank_distance
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    if not fp8_supported(torch.device(args.device)):
        record("fp8.error", "FP8 needs compute capability 8.9+")
        return

    def compare(name, model, draw):
        want = draw()
        with_fp8(model, FP8)
        got = draw()
        mse = ((got - want) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-12)
        record(name, {"psnr_db": round(float((10 * torch.log10(1 / mse)).mean()), 2),
                      "lpips_like": round(float(filter_bank_distance(got.float().cpu(), want.float().cpu()).mean()), 4),
                      "max_abs": round(float((got - want).abs().max()), 4), "images": int(want.shape[0])})

    builtin = load_model("builtin", device=args.device, dtype=dtype)
    guard("fp8.quality.builtin", lambda: compare("fp8.quality.builtin", builtin, lambda: generate(
        builtin, "a horse wearing a crown", batch_size=16, seed=0, show_progress=False).images.float()))
    _, unet, _, vae, text = parts
    model = condiff_model(unet, vae, text)
    size = 512 if not args.tiny else 128
    guard("fp8.quality.sd_shape", lambda: compare("fp8.quality.sd_shape", model, lambda: generate(
        model, "a photograph of an astronaut riding a horse", batch_size=2, steps=args.steps, height=size, width=size,
        seed=0, show_progress=False).images.float()))
    for b in args.batches:
        def go(b=b):
            fn = lambda: generate(model, "a photograph of an astronaut riding a horse", batch_size=b,  # noqa: E731
                                  steps=args.steps, guidance=7.5, height=size, width=size, show_progress=False)
            t = timed(fn, args.e2e_repeats, warmup=1)
            record(f"e2e.condiff.fp8.b{b}", {"batch": b, **t, "images_per_s": round(b / (t["ms"] / 1e3), 3)})
        guard(f"e2e.condiff.fp8.b{b}", go)
    reset_condiff(model)


CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "mha", "sdpa")),
    ("convolution", ("conv", "fprop", "implicit", "winograd", "dgrad", "nhwc")),
    ("matmul", ("gemm", "cutlass", "matmul", "xmma", "cublas")),
    ("norm", ("norm",)),
)


def categorise(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "elementwise/other"


def profile_summary(fn, steps: int = 5) -> dict:
    """Share of GPU kernel time per category and the launch gaps of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        wall_us = (time.perf_counter() - t0) * 1e6
    totals: dict[str, float] = {}
    kernels: dict[str, float] = {}
    for evt in prof.events():
        if str(getattr(evt, "device_type", "")).endswith("CUDA"):
            us = float(getattr(evt, "device_time", None) or getattr(evt, "cuda_time", 0) or 0)
            cat = categorise(evt.name)
            totals[cat] = totals.get(cat, 0.0) + us
            kernels[evt.name] = kernels.get(evt.name, 0.0) + us
    kernel_us = sum(totals.values())
    out = {"wall_ms_per_step": round(wall_us / steps / 1e3, 3), "kernel_ms_per_step": round(kernel_us / steps / 1e3, 3)}
    out["share_of_wall"] = {k: round(v / wall_us, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    out["share_of_wall"]["launch gaps (wall - kernels)"] = round(max(0.0, 1 - kernel_us / wall_us), 4)
    out["top_kernels"] = [(k[:90], round(v / steps / 1e3, 3)) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:12]]
    return out


def section_profile(args, dtype, parts):
    ref_unet, unet, _, vae, text = parts
    x, ctx = step_inputs(args, dtype, ctx_dim=ref_unet.config.cross_attention_dim)
    model = condiff_model(unet, vae, text)
    guard("profile.condiff.eager", lambda: record("profile.condiff.eager", profile_summary(condiff_step_fn(model, x, ctx))))
    acc.accelerate(model, acc.FAST)
    guard("profile.condiff.fast", lambda: record("profile.condiff.fast", profile_summary(condiff_step_fn(model, x, ctx))))
    if args.compile:
        acc.accelerate(model, COMPILE)
        fn = condiff_step_fn(model, x, ctx)
        guard("profile.condiff.compile", lambda: record("profile.condiff.compile", profile_summary(fn)))
    reset_condiff(model)


SECTIONS = {"step": section_step, "text": section_text_vae, "e2e": section_e2e, "builtin": section_builtin,
            "profile": section_profile, "fp8": section_fp8}


def main(argv=None) -> None:
    global OUT, SECTION
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--sections", default="step,text,e2e,builtin,profile")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--tiny", action="store_true", help="small models of the same structure (CPU smoke test)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--e2e-repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--compiled-batches", default="1,8", help="batch sizes of the compiled end-to-end runs")
    p.add_argument("--builtin-batch", type=int, default=64)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-modes", default="default", help="comma list: default,max-autotune-no-cudagraphs,reduce-overhead")
    p.add_argument("--e2e-compiled", action="store_true")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.compiled_batches = [int(b) for b in args.compiled_batches.split(",") if b]
    args.compile_modes = [None if m == "default" else m for m in args.compile_modes.split(",")]
    args.step_tflop = 1.607 if not args.tiny else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    OUT = args.out
    SECTION = args.tag or args.sections.replace(",", "+")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    import diffusers
    import transformers

    record("env", {"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__, "device": args.device, "dtype": args.dtype,
                   "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                   "tiny": args.tiny, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    t0 = time.perf_counter()
    parts = build(args, dtype)
    record("build_s", round(time.perf_counter() - t0, 1))
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        with torch.inference_mode():
            SECTIONS[name](args, dtype, parts)
        record(f"section_s.{name}", round(time.perf_counter() - t0, 1))


if __name__ == "__main__":
    main()
