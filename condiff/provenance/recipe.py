"""A picture's recipe as arguments of a re-run (``condiff generate --from-png FILE``).

The parameters come from condiff's JSON chunk when present (exact), else from A1111 text (the
fields A1111 records: prompt, negative prompt, steps, sampler, CFG scale, seed, model, LoRA
hashes). Options the user typed on the command line win over the recipe; a recipe that cannot
be re-run by ``generate`` (an edit of an input picture, a LoRA file that is not here) is refused
with the command or option to use instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["load_recipe", "rerun_arguments"]

_EDIT_COMMANDS = {"sdedit": "condiff sdedit", "inpaint": "condiff inpaint", "control": "condiff control",
                  "cascade-upscale": "condiff upscale"}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The parameters stored in a picture (condiff JSON or A1111 text) with the model hash it records;
    InputError if it has none."""
    from .verify import read_png_info

    info = read_png_info(path, check_watermark=False)
    params = info.get("parameters")
    if not params or not params.get("prompt") and not info.get("a1111"):
        raise InputError(f"{path} holds no generation parameters (neither condiff's nor A1111's)")
    pipeline = str(params.get("pipeline", "text2img"))
    if pipeline in _EDIT_COMMANDS or "inpaint" in pipeline:
        cmd = _EDIT_COMMANDS.get(pipeline, "condiff inpaint")
        raise InputError(f"{path} was made by the {pipeline} pipeline from an input picture; re-run it with `{cmd}` "
                         f"and the parameters shown by `condiff provenance verify {path}`")
    recorded_hash = (info.get("provenance") or {}).get("model_hash")
    return {**params, "model_hash": recorded_hash} if recorded_hash else params


def _lora_specs(params: dict[str, Any], path) -> list[str]:
    specs = []
    for entry in params.get("loras") or []:
        file = entry.get("file")
        if not file or not Path(file).is_file():
            name = entry.get("name") or file
            raise InputError(f"{path} was made with the LoRA {name} ({entry.get('hash', 'no hash')}), which is not "
                             "here; pass it with --lora FILE[:WEIGHT]")
        specs.append(f"{file}:{entry.get('weight', 1.0)}")
    return specs


def _given(ctx, name: str) -> bool:
    """Whether option ``name`` of the running command (its typer/click context) was typed on the command line."""
    if ctx is None:
        return False
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def rerun_arguments(ctx, from_png, prompt, negative, guidance, steps, sampler, seed, model, lora, style_guidance):
    """generate's (prompt, negative, guidance, steps, sampler, seed, model, lora, classifier guidance)
    with the recipe of ``from_png`` filled in where the command line (``ctx``) gave nothing."""
    if from_png is None:
        if prompt is None:
            raise InputError("give a PROMPT, or --from-png FILE to re-run a picture's recipe")
        return prompt, negative, guidance, steps, sampler, seed, model, lora, style_guidance
    p = load_recipe(from_png)
    cg = p.get("classifier_guidance") or {}
    recipe = {
        "prompt": p.get("prompt", ""), "negative": p.get("negative", ""), "guidance": p.get("guidance"),
        "steps": p.get("steps"), "sampler": p.get("sampler", sampler), "seed": p.get("seed", seed),
        "model": _model(p.get("model"), model, p.get("model_hash")), "lora": None,
        "style_guidance": f"{cg['style']}:{cg.get('scale', 1.0)}" if cg.get("style") else style_guidance,
    }
    cli = {"prompt": prompt, "negative": negative, "guidance": guidance, "steps": steps, "sampler": sampler,
           "seed": seed, "model": model, "lora": lora, "style_guidance": style_guidance}
    out = {k: cli[k] if (k == "prompt" and prompt is not None) or _given(ctx, k) else recipe[k] for k in cli}
    if out["lora"] is None:
        out["lora"] = _lora_specs(p, from_png)
    return tuple(out[k] for k in cli)


def _model(recorded: str | None, default: str, recorded_hash: str | None) -> str:
    """The recipe's model when it can be loaded here (built-in name or existing path), else ``default``;
    a note on stderr when the model or its hash differs from the one that made the picture."""
    import typer

    from ..models.registry import BUILTIN_MODELS
    from .hashes import model_hash

    chosen = recorded if recorded and (recorded in BUILTIN_MODELS or Path(recorded).expanduser().exists()) else default
    if recorded and chosen != recorded:
        typer.echo(f"note: the picture was made with the model {recorded!r}, which is not here; using {chosen!r}",
                   err=True)
    here = model_hash(chosen) if recorded_hash else None
    if recorded_hash and here and here != recorded_hash:
        typer.echo(f"note: model hash {here} differs from the picture's {recorded_hash}; the result will differ",
                   err=True)
    return chosen
