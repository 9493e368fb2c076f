"""Image pipelines (text-to-image, SDEdit, inpainting, ControlNet) over LatentDiffusion models."""
