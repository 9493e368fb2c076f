"""condiff studio: the browser UI (gradio) on top of the server's job queue (no maths here).

=================  ===============================================================================
module             what it holds
=================  ===============================================================================
``app``            :func:`build_studio` (the ``gr.Blocks``) and :func:`mount_studio` (into the
                   server's FastAPI app at ``/studio``)
``offline``        analytics, version checks and web fonts off (the page fetches only local files)
``runner``         jobs in the server's queue: progress bar, step previews, cancel, errors in the page
``canvas``         drawing canvases → condiff images and masks; the mask outline
``outputs``        result PNGs with their parameters inside, one folder per job
``personal``       the personalization library and applying LoRAs/embeddings/DreamBooth for one job
``pnginfo``        parameters of condiff's and AUTOMATIC1111's PNGs in condiff's names
``vocab``          the built-in world's concepts and styles (prompt suggestions)
``tabs/``          one module per tab: text2img, sketch, inpaint, control, upscale, variations,
                   personalize, experiments, pnginfo_tab
=================  ===============================================================================
"""

from .app import STUDIO_PATH, build_studio, mount_studio

__all__ = ["STUDIO_PATH", "build_studio", "mount_studio"]
