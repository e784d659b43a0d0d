"""Image classifier (attributes or classes), trained on real images.

Two uses, one network:
  * paper Sec. 5.3: an attribute classifier scores attribute-conditional
    generators (``labels='attributes'``, multi-label, sigmoid outputs);
  * evaluation (``vaegan_jax/evaluation``): where no Inception weights are
    given, a classifier trained on the dataset's own labels supplies the
    feature space of FID/KID/precision/recall (its penultimate layer,
    ``Classifier.features``) and the class probabilities of the
    Inception-score-like figure (``labels='classes'``, digits/MNIST/CIFAR-10,
    softmax outputs; or CelebA's attributes).

Larsen et al. (2016) evaluate attribute-conditional generators (GAN, VAE,
VAE-GAN, all conditioned on an attribute vector y) with a separate attribute
classifier trained on real images: each generated image is classified, and
the paper reports the cosine similarity and the mean squared error between y
and the predicted attributes, with real test images as the reference row
(``evaluation.metrics.attribute_similarity``; ``evaluation.attributes`` runs
it). The paper used LFW; here the data are whatever ``config.data`` names
(CelebA with its 40 binary attributes by default).

  model.py      the network (the discriminator's conv stack with K outputs), its
                config ``ClassifierArch``, ``ClassifierState``, the loss and the
                jitted ``train_step``; ``ClassifierError``.
  inference.py  ``Classifier``: a trained classifier in inference mode (logits,
                features, probabilities); ``predict_dataset``,
                ``predict_conditional_samples`` and ``evaluate``.
  train.py      ``train_and_evaluate``: the training loop on the VAE-GAN
                trainer's runtime (checksummed checkpoints, the workdir lock,
                SIGTERM/SIGINT saving the current step, metrics); ``restore``.
  legacy.py     reading checkpoints of the layout before checksums.

Everything callers use is importable from here, e.g.
``from vaegan_jax import classifier; clf, config = classifier.restore(workdir)``.
"""

from vaegan_jax.classifier.inference import Classifier
from vaegan_jax.classifier.inference import evaluate
from vaegan_jax.classifier.inference import predict_conditional_samples
from vaegan_jax.classifier.inference import predict_dataset
from vaegan_jax.classifier.model import AttributeClassifier
from vaegan_jax.classifier.model import bce_loss
from vaegan_jax.classifier.model import ClassifierArch
from vaegan_jax.classifier.model import ClassifierError
from vaegan_jax.classifier.model import ClassifierState
from vaegan_jax.classifier.model import create_state
from vaegan_jax.classifier.model import state_template
from vaegan_jax.classifier.model import train_step
from vaegan_jax.classifier.train import classifier_dir
from vaegan_jax.classifier.train import restore
from vaegan_jax.classifier.train import train_and_evaluate
from vaegan_jax.classifier.train import validate_config
