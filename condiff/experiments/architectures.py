"""Experiment 2's architecture comparison (thesis 4.3 and its evaluation 4.3.5), measured.

The thesis compares DALL-E 2 (unCLIP), DeepFloyd IF (a cascaded pixel model) and Stable Diffusion
(latent diffusion) on three inpainting tasks, by looking at the pictures and at what fits a T4.
Here every architecture present in condiff runs on the experiment-2 inputs of the built-in world
(:mod:`condiff.data.experiment_inputs`) and is *measured*:

* **time per image** (wall clock; CUDA synchronised; optional untimed warm-up run);
* **peak memory**: resident weights (parameter bytes) + the activation peak of the run — on CUDA
  ``torch.cuda.max_memory_allocated`` above what was allocated before, on CPU the resident-set
  increase sampled every 5 ms from ``/proc/self/statm`` (the method is named in the table);
* **parameters**: of the diffusion networks, and in total with text encoder / autoencoder;
* **quality**: the condiff-evalenc similarity to the prompt *inside the mask* (100·cos between the
  embedding of the mask's bounding box, padded and resized to 128², and the MiniLM embedding of the
  prompt; :func:`condiff.metrics.clip_score`) and of the whole composite, and PSNR/SSIM *outside* the
  mask against the original, before and after the thesis's composite (Fig. 4.13/4.16; after it PSNR
  is ∞ by construction — the "before" numbers show what each architecture damages outside; SSIM
  stays below 1 because its 11×11 windows at the border also see the inside). All scores are taken
  on the 8-bit pictures as saved (the inputs are 8-bit PNGs).

Architectures (each skipped with a note when its weights are absent):

=====================  ============================================================  =====================
name                   what runs                                                     thesis counterpart
=====================  ============================================================  =====================
``ldm-inpaint``        latent U-Net with 5 extra input channels (mask + masked latent)  SD 1.5 inpainting
``ldm-blend``          text-to-image latent U-Net, zero-shot latent blending            —
``cascade``            64² base + SR3 64→128, blended at both stages                   DeepFloyd IF
``unclip``             prior → embedding → 64² decoder (blended) → SR3 (blended)       DALL-E 2
``remote``             a hosted image-edit API (:mod:`condiff.remote`), if configured  DALL-E 2 via API
=====================  ============================================================  =====================

Run it as ``python -m condiff.experiments.architectures --out DIR`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..compositing import composite, crop_box, mask_box
from ..io import atomic_path
from ..metrics.clip_score import clip_score
from ..metrics.image import psnr, ssim

__all__ = ["Task", "Architecture", "Evaluator", "PeakMemory", "ComparisonResult", "experiment2_tasks",
           "latent_architectures", "cascade_architecture", "unclip_architecture", "remote_architecture",
           "available_architectures", "run_comparison", "format_table", "main"]


@dataclass
class Task:
    """One inpainting task: image [1, 3, H, W] and mask [1, 1, H, W] (1 = repaint) in [0, 1], a prompt."""

    name: str
    image: Tensor
    mask: Tensor
    prompt: str


def experiment2_tasks(root: str | Path | None = None) -> list[Task]:
    """The three experiment-2 tasks shipped with condiff (remove face mask, remove sunglasses, add scarf)."""
    from ..data.experiment_inputs import EXPERIMENTS_DIR, load_experiment_inputs

    doc = load_experiment_inputs(root or EXPERIMENTS_DIR)
    tasks = []
    for t in doc["exp2"]:
        image = torch.from_numpy(t["image_array"]).permute(2, 0, 1)[None].float() / 255
        mask = torch.from_numpy(t["mask_array"])[None, None].float()
        tasks.append(Task(t["name"], image, mask, t["prompt"]))
    return tasks


@dataclass
class Architecture:
    """A runnable architecture: ``run(task, seed) -> (raw [1, 3, H, W], composite)`` in [0, 1]."""

    name: str
    family: str
    run: Callable[[Task, int], tuple[Tensor, Tensor]]
    modules: dict[str, nn.Module | None] = field(default_factory=dict)
    diffusion_parts: tuple[str, ...] = ()
    local: bool = True
    note: str = ""

    def parameters(self) -> dict[str, int]:
        """{"diffusion": ..., "total": ...} parameter counts (0 for a remote model)."""
        count = {k: sum(p.numel() for p in m.parameters()) for k, m in self.modules.items() if isinstance(m, nn.Module)}
        return {"diffusion": sum(v for k, v in count.items() if k in self.diffusion_parts), "total": sum(count.values())}

    def weight_bytes(self) -> int:
        seen, total = set(), 0
        for m in self.modules.values():
            if isinstance(m, nn.Module):
                for p in m.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        total += p.numel() * p.element_size()
        return total


# --------------------------------------------------------------------------- architectures


def latent_architectures(model, *, steps: int = 25, guidance: float | None = None,
                         sampler: str = "dpmpp_2m") -> list[Architecture]:
    """``ldm-inpaint`` (when the model has an inpainting U-Net) and ``ldm-blend`` for a LatentDiffusion,
    both through :func:`condiff.pipelines.inpaint.inpaint` (methods "model" and "blend")."""
    from ..pipelines.inpaint import inpaint

    def run(task: Task, seed: int, method: str) -> tuple[Tensor, Tensor]:
        res = inpaint(model, task.image, task.mask, task.prompt, method=method, guidance=guidance, steps=steps,
                      sampler=sampler, seed=seed, show_progress=False)
        return res.extras["raw"], res.images

    common = {"unet": model.unet, "vae": model.vae,
              "text encoder": model.text_encoder if isinstance(model.text_encoder, nn.Module) else None}
    archs = []
    if model.inpaint_unet is not None:
        archs.append(Architecture("ldm-inpaint", "latent diffusion (SD-inpainting style)",
                                  lambda t, s: run(t, s, "model"), {**common, "unet": model.inpaint_unet},
                                  ("unet",)))
    archs.append(Architecture("ldm-blend", "latent diffusion, zero-shot latent blending",
                              lambda t, s: run(t, s, "blend"), common, ("unet",)))
    return archs


def cascade_architecture(model, *, steps: int = 25, sr_steps: int | None = None, guidance: float | None = None,
                         method: str = "blend") -> Architecture:
    from ..pipelines.cascade import inpaint

    def run(task: Task, seed: int) -> tuple[Tensor, Tensor]:
        res = inpaint(model, task.image, task.mask, task.prompt, method=method, guidance=guidance, steps=steps,
                      sr_steps=sr_steps, seed=seed, show_progress=False)
        return res.extras["raw"], res.images

    text = model.text_encoder if isinstance(model.text_encoder, nn.Module) else None
    return Architecture("cascade", "cascaded pixel diffusion (DeepFloyd-IF style)", run,
                        {"base": model.base_unet, "sr": model.sr_unet, "text encoder": text}, ("base", "sr"),
                        note=f"zero-shot, {method} at both stages")


def unclip_architecture(model, *, steps: int = 25, guidance: float | None = None) -> Architecture:
    from ..pipelines.unclip import inpaint

    def run(task: Task, seed: int) -> tuple[Tensor, Tensor]:
        res = inpaint(model, task.image, task.mask, task.prompt, guidance=guidance, steps=steps, prior_steps=steps,
                      seed=seed, show_progress=False)
        return res.extras["raw"], res.images

    text = model.text_encoder if isinstance(model.text_encoder, nn.Module) else None
    sr = model.upsampler.sr_unet if model.upsampler is not None else None
    return Architecture("unclip", "unCLIP prior + decoder (DALL-E 2 style)", run,
                        {"prior": model.prior, "decoder": model.decoder, "sr": sr, "text encoder": text},
                        ("prior", "decoder", "sr"), note="zero-shot, decoder blending; SR3 upsampler" if sr is not None
                        else "zero-shot, decoder blending; bicubic upsampling (no SR weights)")


def remote_architecture(editor, *, size: str | None = None) -> Architecture:
    def run(task: Task, seed: int) -> tuple[Tensor, Tensor]:
        raw = editor.edit(task.image, task.mask, task.prompt, n=1, size=size)[:1]
        return raw, composite(task.image, raw, task.mask)

    return Architecture("remote", f"hosted image-edit API ({editor.model})", run, local=False,
                        note=f"{editor.endpoint}; memory and parameters not observable (as in the thesis)")


def available_architectures(device: str | torch.device = "cpu", *, steps: int = 25, weights_dir: str | Path | None = None,
                            include_remote: bool = True, remote_size: str | None = None
                            ) -> tuple[list[Architecture], list[str]]:
    """Every architecture whose weights are present, and a note for each one that is skipped.

    The latent model comes from the built-in registry (``$CONDIFF_WEIGHTS``); the cascade and unCLIP
    components from ``weights_dir`` (default: the same folder).
    """
    from ..models.cascade import load_cascade
    from ..models.unclip import load_unclip

    archs: list[Architecture] = []
    notes: list[str] = []
    try:
        from ..models.registry import load_model

        ldm = load_model("builtin", device=device)
        archs += latent_architectures(ldm, steps=steps)
        if ldm.inpaint_unet is None:
            notes.append("skipped ldm-inpaint: no inpainting U-Net (component 'ldm-inpaint')")
    except (ValueError, OSError) as err:
        notes.append(f"skipped ldm-inpaint and ldm-blend: {err}")
    try:
        cascade = load_cascade(weights_dir, device=device)
        cascade.require("base", "sr")  # both stages needed for inpainting
        archs.append(cascade_architecture(cascade, steps=steps))
    except (ValueError, OSError) as err:
        notes.append(f"skipped cascade: {err}")
    try:
        unclip = load_unclip(weights_dir, device=device)
        unclip.prior_denoiser()  # prompt-driven inpainting needs the prior
        archs.append(unclip_architecture(unclip, steps=steps))
    except (ValueError, OSError) as err:
        notes.append(f"skipped unclip: {err}")
    if include_remote:
        from ..remote import ENDPOINT_ENV, RemoteImageEditor

        editor = RemoteImageEditor.from_env()
        if editor is None:
            notes.append(f"skipped remote: no endpoint configured (set {ENDPOINT_ENV} and the API key variable)")
        else:
            archs.append(remote_architecture(editor, size=remote_size))
    return archs, notes


# --------------------------------------------------------------------------- measuring


def _release_free_heap() -> None:
    """glibc's malloc_trim(0): give freed heap pages back to the OS (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak above the start, or sampled RSS increase on CPU."""

    def __init__(self, device: str | torch.device = "cpu", interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval_s
        self.peak_bytes: int | None = None
        self.method = ""

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "CUDA max_memory_allocated"
            return self
        _release_free_heap()  # so that reused, already-resident heap pages do not hide the run's peak
        self._start = self._rss()
        self._max = self._start
        self._stop = threading.Event()
        self.method = "RSS increase (sampled /proc/self/statm)" if self._start is not None else "unavailable"
        if self._start is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = self._rss()
            if rss is not None and rss > self._max:
                self._max = rss
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        if self._start is not None:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._rss() or 0)
            self.peak_bytes = self._max - self._start


class Evaluator:
    """evalenc similarity to the prompt, inside the mask's box and on the whole image (100·cos).

    ``image_encoder(images [0, 1]) -> [B, D]``; ``text_encoder(prompts) -> [B, D]`` pooled; both in
    the same embedding space (condiff-evalenc and MiniLM, or stand-ins in tests).
    """

    def __init__(self, image_encoder: Callable[[Tensor], Tensor], text_encoder: Callable[[list[str]], Tensor],
                 name: str = "condiff-evalenc (LiT vs. MiniLM)", size: int = 128, padding: int = 8):
        self.image_encoder, self.text_encoder, self.name = image_encoder, text_encoder, name
        self.size, self.padding = size, padding

    @classmethod
    def builtin(cls, device="cpu", weights_dir: str | Path | None = None) -> "Evaluator":
        """condiff-evalenc (from ``weights_dir`` when it holds one, else condiff's weights) + MiniLM."""
        from ..models.registry import builtin_text_encoder as _text_encoder
        from ..models.unclip import load_evalenc

        if weights_dir is not None and not (Path(weights_dir) / "evalenc" / "config.json").exists():
            weights_dir = None
        enc = load_evalenc(weights_dir, device=device)
        text = _text_encoder(24).to(device)
        return cls(lambda x: enc(x.to(device)), lambda p: text.pooled(p))

    @torch.no_grad()
    def scores(self, image: Tensor, mask: Tensor, prompt: str) -> dict[str, float]:
        box = mask_box(mask, padding=self.padding, multiple=1, aspect=1.0)
        crop = F.interpolate(crop_box(image, box), size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True).clamp(0, 1)
        whole = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1) if image.shape[-1] != self.size else image
        emb = self.image_encoder(torch.cat([crop, whole]).float()).float().cpu()
        text = self.text_encoder([prompt]).float().cpu().expand(2, -1)
        s = clip_score(emb, text)
        return {"evalenc_inside": float(s[0]), "evalenc_whole": float(s[1])}


@dataclass
class ComparisonResult:
    rows: list[dict[str, Any]]
    notes: list[str]
    images: dict[tuple[str, str], tuple[Tensor, Tensor]] = field(default_factory=dict)
    evaluator: str | None = None

    def summary(self) -> list[dict[str, Any]]:
        """Per architecture: means over tasks of every numeric column."""
        out = []
        for name in dict.fromkeys(r["architecture"] for r in self.rows):
            rows = [r for r in self.rows if r["architecture"] == name]
            s = {"architecture": name, "family": rows[0]["family"], "tasks": len(rows)}
            for k, v in rows[0].items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
                    mean = sum(vals) / len(vals) if vals else None
                    s[k] = int(round(mean)) if vals and all(isinstance(x, int) for x in vals) else mean
            out.append(s)
        return out


def _as_saved(x: Tensor) -> Tensor:
    """The 8-bit picture a user gets (PNG), back in [0, 1]: scores are measured on what is saved."""
    return (x.float().cpu().clamp(0, 1) * 255).round() / 255


def _outside(raw: Tensor, image: Tensor, mask: Tensor) -> tuple[float, float]:
    return float(psnr(raw, image, mask=mask, region="outside")), float(ssim(raw, image, mask=mask, region="outside"))


def run_comparison(architectures: Sequence[Architecture], tasks: Sequence[Task], *, evaluator: Evaluator | None = None,
                   seed: int = 0, device: str | torch.device = "cpu", warmup: bool | None = None,
                   notes: Sequence[str] = ()) -> ComparisonResult:
    """Run every architecture on every task and measure it (see the module doc)."""
    device = torch.device(device)
    warmup = device.type == "cuda" if warmup is None else warmup
    rows, images, notes = [], {}, list(notes)
    if evaluator is None:
        notes.append("quality (evalenc) not measured: no evaluation encoder")
    for arch in architectures:
        params = arch.parameters()
        weights_mib = arch.weight_bytes() / 2**20
        if warmup and arch.local and tasks:
            arch.run(tasks[0], seed)
        for task in tasks:
            mem = PeakMemory(device) if arch.local else None
            t0 = time.perf_counter()
            if mem is not None:
                with mem:
                    raw, comp = arch.run(task, seed)
            else:
                raw, comp = arch.run(task, seed)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            raw, comp, original = _as_saved(raw), _as_saved(comp), _as_saved(task.image)
            p_raw, s_raw = _outside(raw, original, task.mask)
            p_comp, s_comp = _outside(comp, original, task.mask)
            act = mem.peak_bytes / 2**20 if mem is not None and mem.peak_bytes is not None else None
            row = {"architecture": arch.name, "family": arch.family, "task": task.name, "seed": seed,
                   "time_s": elapsed, "params_diffusion": params["diffusion"], "params_total": params["total"],
                   "weights_mib": weights_mib if arch.local else None, "activation_peak_mib": act,
                   "peak_mib": weights_mib + act if act is not None else None,
                   "memory_method": mem.method if mem is not None else "not observable (remote)",
                   "psnr_outside_raw": p_raw, "ssim_outside_raw": s_raw,
                   "psnr_outside_composite": p_comp, "ssim_outside_composite": s_comp, "note": arch.note}
            if evaluator is not None:
                row.update(evaluator.scores(comp, task.mask, task.prompt))
            rows.append(row)
            images[(arch.name, task.name)] = (raw, comp)
    return ComparisonResult(rows, notes, images, evaluator.name if evaluator is not None else None)


# --------------------------------------------------------------------------- reporting


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.{digits}f}"
    if isinstance(v, int) and v >= 10_000:
        return f"{v / 1e6:.1f} M"
    return str(v)


_COLUMNS = (("architecture", "architecture"), ("task", "task"), ("time_s", "s / image"), ("peak_mib", "peak MiB"),
            ("params_diffusion", "params (diffusion)"), ("params_total", "params (total)"),
            ("evalenc_inside", "evalenc inside ↑"), ("evalenc_whole", "evalenc whole ↑"),
            ("psnr_outside_raw", "PSNR out, raw ↑"), ("ssim_outside_raw", "SSIM out, raw ↑"),
            ("psnr_outside_composite", "PSNR out, composite"), ("ssim_outside_composite", "SSIM out, composite"))


def format_table(result: ComparisonResult, *, per_task: bool = True) -> str:
    """A markdown table (per task, then means per architecture) with the notes underneath."""
    cols = [c for c in _COLUMNS if any(c[0] in r for r in result.rows)] or list(_COLUMNS[:2])

    def table(rows, keys):
        head = "| " + " | ".join(h for k, h in keys) + " |"
        sep = "|" + "---|" * len(keys)
        return [head, sep] + ["| " + " | ".join(_fmt(r.get(k)) for k, _ in keys) + " |" for r in rows]

    lines = []
    if per_task:
        lines += ["### Per task", ""] + table(result.rows, cols) + [""]
    mean_cols = [c for c in cols if c[0] != "task"]
    lines += ["### Means over tasks", ""] + table(result.summary(), mean_cols) + [""]
    if result.rows:
        methods = sorted({r["memory_method"] for r in result.rows})
        lines.append(f"Memory: resident weights + activation peak ({'; '.join(methods)}).")
    if result.evaluator:
        lines.append(f"Quality: 100·cos in the {result.evaluator} space between the prompt and the mask's box "
                     "(inside) or the whole composite.")
    lines += [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def _jsonable(v: Any) -> Any:
    return "inf" if isinstance(v, float) and math.isinf(v) else v


def main(argv: list[str] | None = None) -> ComparisonResult:
    p = argparse.ArgumentParser(description="Experiment 2: compare condiff's architectures on the inpainting tasks.")
    p.add_argument("--out", required=True, help="folder for table.md, results.json and the pictures")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="weights folder of the cascade/unCLIP components")
    p.add_argument("--no-remote", action="store_true", help="never call a configured remote endpoint")
    p.add_argument("--remote-size", default=None, help="size field for the remote API, e.g. 256x256")
    a = p.parse_args(argv)
    from ..images import save_png

    archs, notes = available_architectures(a.device, steps=a.steps, weights_dir=a.weights,
                                           include_remote=not a.no_remote, remote_size=a.remote_size)
    try:
        evaluator = Evaluator.builtin(a.device, a.weights)
    except (ValueError, OSError) as err:
        evaluator, notes = None, notes + [f"no evaluation encoder: {err}"]
    result = run_comparison(archs, experiment2_tasks(), evaluator=evaluator, seed=a.seed, device=a.device, notes=notes)
    out = Path(a.out)
    command = " ".join(["python -m condiff.experiments.architectures", *(sys.argv[1:] if argv is None else argv)])
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(f"# Experiment 2: architectures\n\n`{command}` on {a.device}\n\n" + format_table(result))
    doc = {"command": command, "device": str(a.device), "notes": result.notes,
           "rows": [{k: _jsonable(v) for k, v in r.items()} for r in result.rows]}
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    for (arch, task), (raw, comp) in result.images.items():
        save_png(raw, out / f"{arch}_{task}_raw.png", {"architecture": arch, "task": task}, overwrite=True)
        save_png(comp, out / f"{arch}_{task}_composite.png", {"architecture": arch, "task": task}, overwrite=True)
    print(format_table(result))
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
