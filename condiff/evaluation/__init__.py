"""Measurements of the built-in models on a built world's held-out records (what ``condiff eval`` runs, and what
the training job writes into the model cards).

* :mod:`.world` — a world folder (``condiff data build``) as tensors, split into training and held-out records;
* :mod:`.adherence` — top-5 prompt adherence with condiff-evalenc, by training count, paired comparisons;
* :mod:`.inpainting` — inpainting U-Net vs. latent blend, evaluation masks, seam error of the blends;
* :mod:`.control` — how well ControlNet outputs follow their conditions, over conditioning scales;
* :mod:`.sdedit` — SDEdit faithfulness vs. realism over the strength t0.
"""
