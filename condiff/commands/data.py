"""`condiff data …`: build, pack, verify and describe the built-in world (no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError

DEFAULT_CACHE = Path("~/.cache/condiff/sources")


def _gather_sources(sources: Path, clipart: bool):
    """Emoji sets from npm (+ public-domain clip art from Debian unless ``clipart`` is False)."""
    from condiff.data.clipart import filter_rendered, load_openclipart, locate_openclipart
    from condiff.data.sources import fetch_npm_sets

    sets = fetch_npm_sets(sources)
    if clipart:
        root, version = locate_openclipart(sources)
        sets.append(filter_rendered(load_openclipart(root, version)))
    return sets


def build(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default build/world or build/world-small)."),
    small: bool = typer.Option(False, "--small", help="Tiny subset from the vendored icons (seconds, no npm)."),
    from_pack: Optional[Path] = typer.Option(None, "--from-pack", help="Render from a source pack (offline machines)."),
    sources: Path = typer.Option(DEFAULT_CACHE, "--sources", help="Cache folder for the npm/apt source packages."),
    clipart: bool = typer.Option(True, "--clipart/--no-clipart", help="Include Debian openclipart-svg."),
    version: str = typer.Option("1", "--version", help="Data-set version."),
    seed: int = typer.Option(0, "--seed", help="Seed of order, captions and figures."),
    size: int = typer.Option(128, "--size", help="Picture side in pixels."),
    workers: int = typer.Option(0, "--workers", help="Render processes (0 = all CPUs)."),
    backend: str = typer.Option("auto", "--backend", help="SVG renderer: auto, resvg or cairosvg."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Keep only the first N records (trials)."),
) -> None:
    """Render the world into versioned, checksummed shards plus manifest.json."""
    from condiff.data.builder import build_world
    from condiff.data.experiment_inputs import EXCLUDED_FROM_TRAINING, load_held_out_images
    from condiff.data.pack import read_pack
    from condiff.data.sources import load_small_sets

    if small and from_pack:
        raise InputError("--small and --from-pack exclude each other; pick one source")
    if small:
        sets = load_small_sets()
    elif from_pack:
        pack_version, sets = read_pack(from_pack)
        if pack_version != version:
            raise InputError(f"pack {from_pack} is for data-set version {pack_version}, not {version}; pass --version {pack_version}")
    else:
        sets = _gather_sources(sources, clipart)
    out = out or Path("build/world-small" if small else "build/world")
    step = 500

    def progress(i: int, n: int) -> None:
        if i % step == 0 or i == n:
            typer.echo(f"  rendered {i}/{n}", err=True)

    m = build_world(out, sets, version=version, seed=seed, size=size, small=small, workers=workers or None,
                    backend=backend, exclude=EXCLUDED_FROM_TRAINING, held_out_images=load_held_out_images(),
                    limit=limit, progress=progress)
    typer.echo(f"{m['records']} records, {m['concepts']} concepts, {len(m['styles'])} styles, "
               f"{len(m['shards'])} shards ({m['shard_bytes'] / 2**20:.1f} MiB) → {out}")
    chk = m["held_out"]["image_check"]
    if chk is not None and not chk["passed"]:
        raise ValueError(f"held-out concept leaked into the build: {chk}")

def pack(
    out: Path = typer.Option(Path("build/world-pack-v1.json.xz"), "--out", help="Pack file to write."),
    sources: Path = typer.Option(DEFAULT_CACHE, "--sources", help="Cache folder for the npm/apt source packages."),
    clipart: bool = typer.Option(True, "--clipart/--no-clipart", help="Include Debian openclipart-svg."),
    version: str = typer.Option("1", "--version", help="Data-set version."),
) -> None:
    """Write the compact checksummed source bundle (+ PACK.sha256) for offline builds."""
    from condiff.data.pack import write_pack

    info = write_pack(_gather_sources(sources, clipart), out, dataset_version=version)
    typer.echo(f"{sum(info['icons'].values())} icons, {info['bytes'] / 2**20:.2f} MiB, sha256 {info['sha256']} → {out}")

def verify(world: Path = typer.Argument(..., help="Built world folder.")) -> None:
    """Check every shard and index against manifest.json."""
    from condiff.data.loader import verify_world

    m = verify_world(world)
    typer.echo(f"ok: {len(m['shards'])} shards, {m['records']} records")

def card(
    world: Path = typer.Argument(..., help="Built world folder."),
    out: Path = typer.Option(Path("docs/data_card.md"), "--out", help="Markdown file to write."),
    pack_file: Optional[Path] = typer.Option(None, "--pack", help="Source pack to describe too."),
) -> None:
    """Write the data card (sources, licences, counts, construction, checks)."""
    from condiff.data.card import write_data_card
    from condiff.data.shards import sha256_file

    info = {"bytes": pack_file.stat().st_size, "sha256": sha256_file(pack_file)} if pack_file else None
    typer.echo(str(write_data_card(world, out, info)))

def contact_sheet(
    world: Path = typer.Argument(..., help="Built world folder."),
    out: Path = typer.Option(Path("docs/contact_sheet.png"), "--out", help="PNG file to write."),
    n: int = typer.Option(8, "--n", help="Number of sample rows."),
) -> None:
    """Write a PNG of sample records with their six conditions and captions."""
    from condiff.data.contact_sheet import write_contact_sheet

    typer.echo(str(write_contact_sheet(world, out, n)))

def experiments(
    sources: Path = typer.Option(DEFAULT_CACHE, "--sources", help="Cache folder for the npm/apt source packages."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder (default: the shipped assets)."),
) -> None:
    """Regenerate the experiment input PNGs from the npm sources (maintainers)."""
    from condiff.data.experiment_inputs import EXPERIMENTS_DIR, fetch_input_set, make_experiment_inputs
    from condiff.data.sources import fetch_npm_sets

    sets = fetch_npm_sets(sources)
    make_experiment_inputs(sets, out or EXPERIMENTS_DIR, held_out_sets=sets, input_set=fetch_input_set(sources))
    typer.echo(str(out or EXPERIMENTS_DIR))


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="The built-in offline world: sources, pack, build, data card, contact sheet.",
                       no_args_is_help=True)
    app.add_typer(data, name="data")
    data.command("build")(build)
    data.command("pack")(pack)
    data.command("verify")(verify)
    data.command("card")(card)
    data.command("contact-sheet")(contact_sheet)
    data.command("experiments")(experiments)
