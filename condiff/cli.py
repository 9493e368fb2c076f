"""The ``condiff`` command line: a thin shell over the library (no maths here).

Sub-commands live one module each in ``condiff.commands``; every module there defines
``register(app: typer.Typer) -> None`` and is discovered at start-up, so commands can be added
without editing this file.

**One error boundary** (:func:`run`, the entry point) around every command: a failure is one line on stderr,
``error: …`` naming the problem and the fix, with exit status 2 for bad input (condiff's
``InputError``/``LimitError``/``ModelError``/``OutputError``, and usage errors) and 1 for runtime
failures (``NonFiniteError``, ``DeviceError``, ``Cancelled``, anything unexpected). ``--debug`` or
``CONDIFF_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import sys
from typing import List, Optional

import typer

from . import __version__
from .errors import CondiffError, InputError, ModelError, NonFiniteError, OutputError

# help renders without truncated option names: rich lays its tables out at least this wide
try:
    from typer import rich_utils as _rich_utils

    _rich_utils.MAX_WIDTH = max(shutil.get_terminal_size((160, 24)).columns, 160)
except ImportError:  # pragma: no cover - typer without rich: click's formatter never truncates
    pass

app = typer.Typer(
    name="condiff",
    help="Image manipulation with conditional diffusion models (offline, reproducible, measured).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"max_content_width": 160},
)

#: exit status of bad input (as click's usage errors) and of runtime failures
EXIT_INPUT, EXIT_RUNTIME = 2, 1


def _version(value: bool) -> None:
    if value:
        typer.echo(f"condiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of a failure (also CONDIFF_DEBUG=1)."),
    limit: List[str] = typer.Option([], "--limit", help="NAME=VALUE: raise a resource limit (steps, train_steps, "
                                    "batch, n, pixels, radius, prompt_chars; also CONDIFF_MAX_<NAME>). Repeatable."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for every command, ≥ 1 "
                                          "(default: OMP_NUM_THREADS, else the cores not busy)."),
) -> None:
    """condiff never downloads anything: every model is built in or a local file."""
    from .validate import set_limit

    if debug:
        os.environ["CONDIFF_DEBUG"] = "1"
    if threads is not None:
        from .models.registry import set_threads

        set_threads(threads)
    for spec in limit:
        try:
            set_limit(spec)
        except InputError as err:
            raise typer.BadParameter(str(err), param_hint="--limit") from None


def _click_exceptions():
    """The click exception module typer uses (typer ≥ 0.20 vendors click as ``typer._click``)."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer on click
        from click import exceptions
    return exceptions


def _debug() -> bool:
    return os.environ.get("CONDIFF_DEBUG", "") not in ("", "0")


def exit_status(err: BaseException) -> int:
    """2 for bad input (the caller can fix the command), 1 for runtime failures."""
    if isinstance(err, (InputError, ModelError, OutputError)):
        return EXIT_INPUT
    if isinstance(err, CondiffError):
        return EXIT_RUNTIME
    if isinstance(err, (ValueError, KeyError, IndexError, FileNotFoundError, FileExistsError, PermissionError,
                        IsADirectoryError, NotADirectoryError)):
        return EXIT_INPUT  # raw library errors that still come from arguments
    return EXIT_RUNTIME


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line (first line; type named for errors outside condiff's hierarchy)."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted; partial outputs were not written"
    raw = str(err)
    if isinstance(err, OSError) and err.strerror:
        raw = err.strerror + (f": {err.filename}" if err.filename else "")
    text = " ".join(raw.split())
    if isinstance(err, KeyError) and err.args:
        text = f"unknown key {err.args[0]!r}"
    if isinstance(err, MemoryError):
        return "out of memory; lower --batch, --n or the image size (or use a GPU)"
    if "out of memory" in text.lower():
        return f"out of memory ({text[:120]}); lower --batch, --n or the image size"
    if isinstance(err, NonFiniteError) and "lower" not in text:
        return f"{text}; lower --guidance or a LoRA's weight, or use --dtype fp32"
    if isinstance(err, CondiffError) or exit_status(err) == EXIT_INPUT:
        return text or type(err).__name__
    return f"unexpected {type(err).__name__}: {text} (run with --debug for the traceback and report it)"


_registered = False


def _register_commands() -> None:
    global _registered
    if _registered:
        return
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
    _registered = True


def _fail(message: str, status: int) -> int:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return status


def run(argv: List[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Usage errors (unknown option, a value outside an option's range) are one ``error:`` line with
    status 2, like every other bad input.
    """
    click = _click_exceptions()
    try:
        _register_commands()
        rv = app(args=argv, prog_name="condiff", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.NoArgsIsHelpError as err:
        err.show()
        return EXIT_INPUT
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx is not None else "condiff"
        return _fail(f"{' '.join(err.format_message().split())} (see {where} --help)", EXIT_INPUT)
    except click.ClickException as err:
        return _fail(" ".join(err.format_message().split()), err.exit_code)
    except typer.Abort:
        return _fail("aborted", EXIT_RUNTIME)
    except KeyboardInterrupt as err:
        if _debug():
            raise
        return _fail(one_line(err), 130)
    except Exception as err:  # noqa: BLE001 - this is the boundary: any failure of any command
        if _debug():
            raise
        return _fail(one_line(err), exit_status(err))


def main() -> None:
    # Offline by design: no library may reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .models.registry import configure_cpu, set_threads

    configure_cpu()
    set_threads()  # default; a command's --threads replaces it
    sys.exit(run())


if __name__ == "__main__":
    main()
