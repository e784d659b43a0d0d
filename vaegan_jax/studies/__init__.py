"""Studies: multi-run experiments that train models and then score them.

They sit above the trainer (``vaegan_jax.train``) and the evaluator
(``vaegan_jax.evaluation``) and may use both; nothing in the library imports
them (the binaries in ``experiments/`` do).

  compare.py        the paper's comparison (Figs. 3-4, Table 1): VAE, VAE_Dis_l,
                    VAE-GAN, GAN and the conditional models trained alike, scored,
                    and written up as ``report.md`` (``experiments/compare.py``)
  bn_statistics.py  which BatchNorm statistics inference-mode sampling should use:
                    per-pass EMAs trained alongside the step, compared
                    (``experiments/bn_statistics.py``)

The submodules are not imported here: ``compare`` pulls in the whole trainer,
and its binary sets JAX's compilation cache before importing it.
"""
