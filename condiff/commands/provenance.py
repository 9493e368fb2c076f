"""`condiff provenance keygen | configure | verify`: signing keys and checking pictures (no maths here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

provenance_app = typer.Typer(help="Provenance stamps: C2PA signing keys, verification of pictures.",
                             no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(provenance_app, name="provenance")


@provenance_app.command("keygen")
def keygen(
    folder: Optional[Path] = typer.Option(None, "--dir", help="Where to write the key (default: "
                                          "$XDG_CONFIG_HOME/condiff/provenance)."),
    name: str = typer.Option("condiff signer", "--name", help="Common name in the signing certificate."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
) -> None:
    """Make a local C2PA signing key (ES256) and certificate chain; pictures are signed from now on."""
    from ..errors import OutputError
    from ..provenance.keys import keygen as make

    try:
        where = make(folder, force=force, common_name=name)
    except OutputError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote a signing key and certificate chain to {where} (key mode 0600)")


@provenance_app.command("configure")
def configure(
    cert: Path = typer.Option(..., "--cert", help="Your certificate chain (PEM: signing certificate first)."),
    key: Path = typer.Option(..., "--key", help="Its private key (PEM, unencrypted)."),
    alg: Optional[str] = typer.Option(None, "--alg", help="es256, es384, es512, ps256, ed25519 … "
                                      "(default: from the key)."),
) -> None:
    """Sign with your own certificate instead of the local key (recorded in config.json)."""
    from ..provenance.keys import configure as record

    typer.echo(f"recorded {cert} / {key} in {record(cert, key, alg)}")


def _summary(info: dict) -> list[str]:
    m, w, p = info["manifest"], info["watermark"], info.get("parameters") or {}
    lines = [f"{info['file']}: {'OK' if info['ok'] else 'NOT VERIFIED'}"]
    if m.get("present"):
        signer = m.get("signer", {})
        lines.append(f"  manifest: signature {'valid' if m.get('signature_valid') else 'INVALID'}, hash binding "
                     f"{'matches' if m.get('hash_match') else 'MISMATCH'}, signer {signer.get('common_name')} / "
                     f"{signer.get('issuer')} ({'trusted' if m.get('trusted') else 'UNTRUSTED'})")
        lines.append(f"  assertions: {', '.join(m.get('assertions', []))}")
        lines.append("  actions: " + ", ".join(a.get("action", "?") + (f" [{a['digitalSourceType'].rsplit('/', 1)[-1]}]"
                                                                          if a.get("digitalSourceType") else "")
                                                for a in m.get("actions", [])))
        for ing in m.get("ingredients", []):
            lines.append(f"  ingredient: {ing.get('title')} ({ing.get('relationship')})")
    else:
        lines.append("  manifest: none")
    lines.append(f"  watermark: {'found (' + str(w.get('payload')) + ')' if w.get('found') else 'not found'}"
                 f", {w.get('bits', 0)}/64 bits")
    if p:
        lines.append("  parameters: " + ", ".join(f"{k}={p[k]!r}" for k in ("prompt", "model", "sampler", "steps",
                                                                              "guidance", "seed") if k in p))
    lines += [f"  problem: {x}" for x in info["problems"]]
    return lines


@provenance_app.command("verify")
def verify(
    files: List[Path] = typer.Argument(..., help="Pictures to check (PNG, JPEG, WebP)."),
    trust: List[Path] = typer.Option([], "--trust", help="Extra trusted root certificate (PEM; repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file, in a list."),
) -> None:
    """Check each picture's C2PA manifest (signature, hash binding, signer, assertions), watermark and
    parameters. Exit status 0: every file verified; 1: some file did not (missing, tampered or
    untrusted manifest); 2: a file could not be read."""
    from ..provenance.verify import read_png_info

    infos = [read_png_info(f, trust=trust) for f in files]
    if as_json:
        typer.echo(json.dumps(infos, indent=1, default=str))
    else:
        for info in infos:
            typer.echo("\n".join(_summary(info)))
    if not all(i["ok"] for i in infos):
        raise typer.Exit(1)
