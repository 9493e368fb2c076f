"""The README's "What you can do" block is valid shell and runs: every command on the built-in models
with tiny step counts in an empty folder (long-running or machine-specific commands are parsed only)."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from condiff import cli
from condiff.images import read_png_parameters

README = Path(__file__).resolve().parent.parent / "README.md"
#: commands that take minutes or need files outside the repository: their options are parsed, not run
PARSE_ONLY = {("experiment", "run"), ("models", "inspect"), ("train", "toy"), ("data", "build")}

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]


def readme_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## What you can do", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def tiny(args: list[str]) -> list[str]:
    """The same command with tiny step counts."""
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a == "--steps":
            out[i + 1] = "2" if out[1] == "personalize" else "1"
    if out[1] in ("generate", "sdedit", "control", "inpaint", "upscale", "variations", "personalize"):
        out += ["--no-progress", "--threads", "1"]
    if out[1] in ("upscale", "variations", "control", "inpaint", "sdedit") and "--steps" not in out:
        out += ["--steps", "1"]
    return out


def parse_only(args: list[str]) -> None:
    """Resolve the command and parse its options (no run): unknown options or bad values fail."""
    import typer.main

    cmd, rest = typer.main.get_command(cli.app), list(args[1:])
    while getattr(cmd, "commands", None) and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    assert not getattr(cmd, "commands", None), args
    ctx = cmd.make_context(cmd.name, rest)
    assert not ctx.args, (args, ctx.args)


def test_readme_block_is_valid_shell_and_runs(tmp_path, monkeypatch, capsys):
    cli._register_commands()
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.pad(np.full((48, 48), 255, np.uint8), 40)).save("mask.png")  # the user's drawn mask
    commands = readme_commands()
    assert len(commands) >= 12 and all(c[0] == "condiff" for c in commands)
    assert not any("|" in a for c in commands for a in c)  # no "a|b|c" that a shell reads as a pipe
    for args in commands:
        if tuple(args[1:3]) in PARSE_ONLY:
            parse_only(args)
            continue
        code = cli.run(tiny(args)[1:])
        out, err = capsys.readouterr()
        assert code == 0, (args, err)
        if args[1] not in ("samplers",):
            assert "wrote " in out, (args, out)
    assert sorted(p.name for p in Path("my5").iterdir()) == [f"var-{i}.png" for i in range(4)]
    assert read_png_parameters("zq.png")["embeddings"][0]["file"] == "zq-emb.safetensors"
    assert read_png_parameters("scarf.png")["steps"] == 1
    assert not list(Path(".").glob("*.work"))  # personalization work folders removed after success
