"""The recipes that reproduce condiff's built-in weights (``condiff/weights/``), kept out of the library.

One documented command runs them from a source checkout::

    condiff train job --world build/world --out runs/job --stages vae,evalenc,ldm,classifier,inpaint
    python -m torch.distributed.run --nproc-per-node 8 -m training.job --world … --out … --stages …

:mod:`.job` trains and exports every stage in order (its options: :mod:`.job_cli`); the stages live in
:mod:`.autoencoder`, :mod:`.evalenc`, :mod:`.latent`, :mod:`.classifier`, :mod:`.controlnet`,
:mod:`.cascade`, :mod:`.unclip` and :mod:`.evaluate`, and share :mod:`.context`. ``reproduce.sh`` runs the
whole sequence that produced the shipped weights (docs/training_log.md records what each run measured).
The package builds on the library (the generic trainer :mod:`condiff.train`, the measurements of
:mod:`condiff.evaluation`); the library never imports it, and the wheel does not ship it.
"""
