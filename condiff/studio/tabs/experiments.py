"""Experiments: run the thesis's experiments (``condiff experiment run``) and show the HTML report inline.

The job is the CLI command itself in a child process (:func:`condiff.server.subjobs.run_cli`, as
the server's ``/condiff/v1/experiments`` route does): the same code path, and Cancel stops it at once.
"""

from __future__ import annotations

import html

import gradio as gr

from ...experiments.config import EXPERIMENT_NAMES
from ...server.subjobs import run_cli
from ..runner import JobPanel, guarded
from .common import Context

__all__ = ["build", "experiment_args", "report_frame"]


def experiment_args(names: list[str], *, model: str, device: str, out: str, quick: bool, seed: float | None,
                    train: bool, threads: float | None) -> list[str]:
    """The ``condiff experiment run`` command line of the tab's settings."""
    from ...errors import InputError

    if not names:
        raise InputError("no experiment chosen; tick sketch, inpainting or personalization")
    args = ["experiment", "run", *names, "--out", out, "--model", model, "--device", device, "--no-progress"]
    if quick:
        args.append("--quick")
    if seed is not None and seed != "":
        args += ["--seed", str(int(seed))]
    if train:
        args.append("--train")
    if threads:
        args += ["--threads", str(int(threads))]
    return args


def report_frame(report_html: str) -> str:
    """The self-contained report (figures embedded) in a sandboxed frame (no scripts)."""
    return (f'<iframe sandbox="" style="width:100%;height:720px;border:1px solid #ddd" '
            f'srcdoc="{html.escape(report_html, quote=True)}"></iframe>')


def build(ctx: Context) -> None:
    limit = ctx.limits.max_job_seconds
    with gr.Tab("Experiments", id="experiments", elem_id="cd-tab-experiments"):
        with gr.Row():
            with gr.Column(scale=1):
                names = gr.CheckboxGroup(list(EXPERIMENT_NAMES), value=["sketch"], label="Experiments (thesis §4.2–4.4)",
                                         elem_id="cd-experiments-names")
                quick = gr.Checkbox(True, label="Quick (each config's reduced settings)")
                seed = gr.Number(None, precision=0, minimum=0, label="Seed (empty: each config's own)")
                train = gr.Checkbox(False, label="Train personalization methods without a cached result")
                threads = gr.Number(None, precision=0, minimum=1, label="Torch threads (empty: default)")
                run = gr.Button("Run", variant="primary", elem_id="cd-experiments-run")
                panel = JobPanel(ctx.state, "experiments", preview=False)
                files = gr.File(label="report.html, results.json", file_count="multiple", interactive=False)
            with gr.Column(scale=3):
                report = gr.HTML("<p>The report appears here when the run ends.</p>", elem_id="cd-experiments-report")

        def on_run(names_, quick_, seed_, train_, threads_):
            def make():
                folder = ctx.store.new_folder("experiments")
                out = folder / "out"
                args = experiment_args(list(names_ or []), model=ctx.state.model_name, device=str(ctx.state.device),
                                       out=str(out), quick=bool(quick_), seed=seed_,
                                       train=bool(train_), threads=threads_ or None)

                def work(progress):
                    run_cli(args, progress, folder, expected_s=float(limit))
                    return out

                def done(out_dir):
                    paths = [p for p in (out_dir / "report.html", out_dir / "results.json") if p.is_file()]
                    page = (out_dir / "report.html").read_text(encoding="utf-8") if paths else "<p>no report</p>"
                    return {report: report_frame(page), files: [str(p) for p in paths]}

                return work, done

            yield from guarded(panel, make)

        run.click(on_run, inputs=[names, quick, seed, train, threads], outputs=[*panel.outputs, report, files],
                  concurrency_limit=ctx.limits.max_queue)
