r"""Attribute-conditional generators scored by an attribute classifier (paper Sec. 5.3).

What ``python -m experiments.evaluate_attributes`` does, in one call::

  from vaegan_jax.evaluation import attributes
  result = attributes.evaluate_attributes(
      ['/tmp/cond_gan', '/tmp/cond_vae', '/tmp/cond_vaegan'], '/tmp/attr_clf',
      '/tmp/attr_eval')                     # writes /tmp/attr_eval/attribute_similarity.json
  print(attributes.format_table(result))

(``score_generators`` returns the same dict without writing anything.)

For every example i of the held-out split (default: the first generator's
``data.eval_split``, i.e. CelebA 'test'), each conditional generator decodes
one image Dec(z_i, y_i) with z_i ~ N(0, T^2 I) (the same z for every
generator) and y_i the example's attribute vector; the classifier (trained on
real images, ``classifier.train_and_evaluate``) predicts attribute
probabilities p_i in [0, 1] for it. As in the paper, one row per generator
and a reference row for the real images themselves:

  cosine = mean over examples of cos(y_i, p_i)   (y_i in {0, 1}^A, p_i in
           [0, 1]^A; an example with an all-zero y_i or p_i counts as 0)
  mse    = mean over all examples and attributes of (y_ia - p_ia)^2

plus the accuracy of the thresholded predictions (p > 0.5). See
``metrics.attribute_similarity``.

The result: {'rows': [{'name', 'kind', 'step', 'cosine', 'mse', 'accuracy',
'num_examples', 'num_zero_norm'}, ...] (first row 'real <split> images'),
'split', 'dataset', 'num_examples', 'seed', 'temperature',
'classifier_workdir', 'classifier_step', 'definitions'}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Optional

import jax
from absl import logging

from vaegan_jax import classifier as classifier_lib
from vaegan_jax import data
from vaegan_jax import sampling
from vaegan_jax.evaluation import metrics
from vaegan_jax.runtime.errors import UserError

OUTPUT_FILE = "attribute_similarity.json"

DEFINITIONS = {
    "cosine": "mean over examples i of <y_i, p_i> / (|y_i| |p_i|), y_i in {0,1}^A the "
              "conditioning attributes, p_i in [0,1]^A the classifier's predicted "
              "probabilities; 0 for an example whose y_i or p_i is all zero",
    "mse": "mean over all examples and attributes of (y_ia - p_ia)^2",
    "accuracy": "mean over all examples and attributes of [p_ia > 0.5] == [y_ia = 1]",
}


class EvaluationError(UserError, ValueError):
  """Incompatible generator/classifier/data; one-line message naming the fix."""


def load_generator(workdir: str, step: Optional[int], classifier: classifier_lib.Classifier,
                   manual_dir: Optional[str] = None):
  """(Sampler, config, step) of a conditional checkpoint whose images fit the classifier.

  Raises a ``UserError`` (one line); the config is checked before the
  arrays are read.
  """
  config, step = sampling.read_config(workdir, step)
  arch = sampling.check_config(config, workdir, step)
  if not arch.num_attributes:
    raise EvaluationError(
        f"{workdir} holds an unconditional model (model.num_attributes=0); train one with "
        "--config=experiments/configs/celeba_conditional.py.")
  c = classifier.arch
  if arch.num_attributes != c.num_attributes:
    raise EvaluationError(f"{workdir} is conditional on {arch.num_attributes} attributes but "
                          f"the classifier predicts {c.num_attributes}.")
  if (arch.image_size, arch.channels) != (c.image_size, c.channels):
    raise EvaluationError(
        f"{workdir} makes {arch.image_size}x{arch.image_size}x{arch.channels} images but the "
        f"classifier takes {c.image_size}x{c.image_size}x{c.channels}; train the classifier "
        "on the generator's data settings.")
  sampler = sampling.Sampler.from_workdir(workdir, step, config=config)
  if manual_dir:
    config.data.manual_dir = manual_dir
  return sampler, config, step


def score_generators(workdirs: Sequence[str], classifier_workdir: str, *,
                     split: Optional[str] = None, num_examples: int = 0, seed: int = 0,
                     temperature: float = 1.0, batch_size: int = 256,
                     step: Optional[int] = None,
                     manual_dir: Optional[str] = None) -> dict[str, Any]:
  """Scores each generator and the real images; writes nothing.

  Args:
    workdirs: training workdirs of conditional generators (one row each).
    classifier_workdir: the attribute classifier's workdir.
    split: the held-out split (default: the first generator's eval_split).
    num_examples: the first N examples of the split (0: all of them).
    seed, temperature: of the z draws, the same for every generator.
    batch_size: images per decode/classify call (the result does not depend on it).
    step: the generators' checkpoint step (default: each one's newest).
    manual_dir: override data.manual_dir of the saved configs.
  Returns:
    The result dict of the module docstring.
  Raises:
    A ``UserError`` (one line) before any image is generated.
  """
  workdirs = [w for w in workdirs if w]
  if not workdirs:
    raise EvaluationError("Give at least one --workdir.")
  if batch_size < 1 or num_examples < 0 or not temperature >= 0:
    raise EvaluationError("Need --batch_size >= 1, --num_examples >= 0, --temperature >= 0.")
  classifier, _ = classifier_lib.restore(classifier_workdir)
  generators = [load_generator(w, step, classifier, manual_dir) for w in workdirs]

  # The held-out data: the first generator's dataset settings.
  data_config = generators[0][1].data
  split = split or data_config.get("eval_split") or "test"
  for w, (_, cfg, _) in zip(workdirs[1:], generators[1:]):
    if (cfg.data.name, cfg.data.image_size) != (data_config.name, data_config.image_size):
      raise EvaluationError(f"{w} was trained on {cfg.data.name!r} "
                            f"{cfg.data.image_size}px, {workdirs[0]} on {data_config.name!r} "
                            f"{data_config.image_size}px: compare generators of the same data.")
  info = data.validate(data_config)
  if classifier.attribute_names and tuple(info.attribute_names) != classifier.attribute_names:
    raise EvaluationError(f"The classifier's attributes ({len(classifier.attribute_names)}) "
                          f"are not those of dataset {info.name!r} "
                          f"({len(info.attribute_names)}), in the same order.")
  # The first num_examples (0: all) of the split, unflipped.
  batches = sampling.dataset_batches(data_config, split, batch_size, num_examples or 2 ** 62)

  logging.info("Classifying the real %r images.", split)
  y, p_real = classifier_lib.predict_dataset(classifier, batches)
  rows = [dict(name=f"real {split} images", kind="real", step=None,
               **metrics.attribute_similarity(y, p_real),
               accuracy=metrics.binary_accuracy(y, p_real))]
  rng = jax.random.PRNGKey(seed)  # The same z for every generator.
  for w, (sampler, cfg, s) in zip(workdirs, generators):
    logging.info("Generating and classifying %d images with %s.", len(y), w)
    p = classifier_lib.predict_conditional_samples(sampler, classifier, y, rng,
                                                   temperature=temperature, batch_size=batch_size)
    rows.append(dict(name=w, kind=str(cfg.kind), step=int(s), **metrics.attribute_similarity(y, p),
                     accuracy=metrics.binary_accuracy(y, p)))
  return dict(split=split, dataset=info.name, num_examples=int(len(y)), seed=seed,
              temperature=temperature, classifier_workdir=classifier_workdir,
              classifier_step=classifier.step, definitions=DEFINITIONS, rows=rows)


def write_result(result: dict[str, Any], outdir: str) -> str:
  """``outdir/attribute_similarity.json`` (written atomically); returns its path."""
  os.makedirs(outdir, exist_ok=True)
  path = os.path.join(outdir, OUTPUT_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, path)
  logging.info("Wrote %s.", path)
  return path


def evaluate_attributes(workdirs: Sequence[str], classifier_workdir: str, outdir: str,
                        **options: Any) -> dict[str, Any]:
  """``score_generators(workdirs, classifier_workdir, **options)``, written to ``outdir``.

  Returns the result dict; nothing is written when it raises (one of
  a ``UserError``, one line).
  """
  result = score_generators(workdirs, classifier_workdir, **options)
  write_result(result, outdir)
  return result


def format_table(result: dict[str, Any]) -> str:
  """The rows as a fixed-width text table."""
  rows = result["rows"]
  width = max(len("model"), *(len(r["name"]) for r in rows))
  lines = [f"Attribute similarity on {result['num_examples']} {result['dataset']} "
           f"{result['split']!r} examples (y vs classifier probabilities):",
           f"{'model':<{width}}  {'kind':<9} {'cosine':>7} {'mse':>7} {'acc':>7}"]
  for r in rows:
    lines.append(f"{r['name']:<{width}}  {r['kind']:<9} {r['cosine']:7.4f} {r['mse']:7.4f} "
                 f"{r['accuracy']:7.4f}")
  return "\n".join(lines)
