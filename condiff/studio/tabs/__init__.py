"""The studio's tabs, one module each; every ``build(ctx)`` adds its tab to the open ``gr.Blocks``."""
