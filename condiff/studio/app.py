"""The studio: a gradio ``Blocks`` on the server's state, mounted into the server's FastAPI app.

:func:`mount_studio` is what ``condiff serve`` (and ``condiff studio``) call: the studio lives at
``/studio`` of the same process as the HTTP API, uses the same loaded model, the same job queue
and the same limits (``state.limits``: uploads over ``--max-body-bytes`` are refused by gradio
before they are stored, decoded images over ``--max-image-pixels`` by :mod:`condiff.images`).
Analytics, version checks and web fonts are off (:mod:`condiff.studio.offline`).
"""

from __future__ import annotations

from typing import Any

from .offline import configure_offline, offline_theme
from .outputs import OutputStore
from .personal import Library

__all__ = ["build_studio", "mount_studio", "STUDIO_PATH", "CSS"]

STUDIO_PATH = "/studio"
CSS = """
.cd-status { font-size: 0.95em; padding: 4px 0; }
.cd-status progress { width: 55%; vertical-align: middle; }
.cd-error { color: #b00020; font-weight: 600; }
.cd-cancelled { color: #8a6d00; }
footer { display: none !important; }
"""


def build_studio(state: Any, *, store: OutputStore | None = None, library: Library | None = None):
    """The studio's ``gr.Blocks`` on ``state`` (a :class:`condiff.server.state.ServerState`)."""
    configure_offline()
    import gradio as gr

    from .tabs import (control, experiments, inpaint, personalize, pnginfo_tab, sketch, text2img, upscale,
                       variations)
    from .tabs.common import Context

    ctx = Context(state=state, store=store or OutputStore(), library=library or Library())
    with gr.Blocks(title="condiff studio", analytics_enabled=False) as blocks:
        gr.Markdown(f"## condiff studio · model `{state.model_name}` on `{state.device}` · "
                    f"[HTTP API](../docs)", elem_id="cd-header")
        with gr.Tabs(elem_id="cd-tabs") as tabs:
            ctx.targets["tabs"] = tabs
            for tab in (text2img, sketch, inpaint, control, upscale, variations, personalize, experiments, pnginfo_tab):
                tab.build(ctx)
    blocks.condiff_context = ctx
    return blocks


def mount_studio(app: Any, state: Any, path: str = STUDIO_PATH, **kwargs: Any) -> Any:
    """Mount the studio into the server's FastAPI ``app`` at ``path``; returns ``app``."""
    configure_offline()
    import gradio as gr

    blocks = build_studio(state, **kwargs)
    ctx = blocks.condiff_context
    ctx.store.root.mkdir(parents=True, exist_ok=True)
    return gr.mount_gradio_app(
        app, blocks, path=path, theme=offline_theme(), css=CSS, footer_links=[], show_error=True,
        max_file_size=state.limits.max_body_bytes, allowed_paths=[str(ctx.store.root), str(ctx.library.root)],
        ssr_mode=False, mcp_server=False, pwa=False, enable_monitoring=False,
    )
