"""Evaluation: sample-quality metrics, their feature spaces, and per-checkpoint reports.

  metrics.py    FID, KID, precision/recall, classifier scores, PSNR, attribute
                similarity (pure numerics)
  features.py   the feature spaces: pytorch-fid's Inception-v3 or the dataset's own
                classifier; the cache
  inception.py  the FID Inception-v3 in Flax (weights converted once from pytorch-fid's)
  evaluator.py  samples, held-out reconstructions, the real reference: one JSON report
  reports.py    a report's files, scalars and table; the best checkpoint by one metric
  attributes.py attribute-conditional generators scored by an attribute classifier
                (the paper's Sec. 5.3; ``experiments/evaluate_attributes.py``)

From Python::

  from vaegan_jax import evaluation
  extractor, why = evaluation.resolve_features('auto', config.data)
  report = evaluation.evaluate_state(state, config, num=10_000, extractor=extractor)
  scores = evaluation.evaluate_sampler(sampler, config.data, extractor, num=5_000)
  scores = evaluation.evaluate_images(real_images, fake_images, extractor)
  result = evaluation.evaluate_attributes(cond_workdirs, classifier_workdir, outdir)
"""

from vaegan_jax.evaluation import attributes
from vaegan_jax.evaluation import metrics
from vaegan_jax.evaluation.attributes import evaluate_attributes
from vaegan_jax.evaluation.evaluator import evaluate_checkpoint
from vaegan_jax.evaluation.evaluator import evaluate_images
from vaegan_jax.evaluation.evaluator import evaluate_sampler
from vaegan_jax.evaluation.evaluator import evaluate_state
from vaegan_jax.evaluation.evaluator import evaluate_workdir
from vaegan_jax.evaluation.evaluator import feature_metrics
from vaegan_jax.evaluation.features import FeatureExtractor
from vaegan_jax.evaluation.features import resolve as resolve_features
