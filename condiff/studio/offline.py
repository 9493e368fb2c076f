"""Keep the studio offline: no analytics, no version check, no web fonts, no hub calls.

gradio reads ``GRADIO_ANALYTICS_ENABLED`` when a ``Blocks`` is built (with analytics on it also
starts a thread that asks api.gradio.app for the newest version), and its default theme loads
Google Fonts in the browser. :func:`configure_offline` sets the environment before any
``Blocks`` exists; :func:`offline_theme` is a theme made of system fonts only, so the page
fetches nothing but the server's own files (checked by ``tests/test_studio_browser.py``).
"""

from __future__ import annotations

import os

__all__ = ["OFFLINE_ENV", "configure_offline", "offline_theme"]

#: environment of an offline gradio (and of the hugging-face hub library it imports)
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SSR_MODE": "False",
}

_SANS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "DejaVu Sans", "sans-serif")
_MONO = ("ui-monospace", "DejaVu Sans Mono", "Consolas", "monospace")


def configure_offline() -> None:
    """Set :data:`OFFLINE_ENV` (overriding any other value: the studio never goes online)."""
    os.environ.update(OFFLINE_ENV)


def offline_theme():
    """gradio's base theme with system fonts (the default theme's Google Fonts would be fetched)."""
    import gradio as gr

    return gr.themes.Base(primary_hue="orange", font=list(_SANS), font_mono=list(_MONO))
