"""Input data: readers of each dataset, and the batch order built on grain.

Layout:
  readers.py   ``Source`` (grain's random-access interface) and the in-memory
               digits and TFDS ``data_source`` readers; the shared checks.
  celeba.py    CelebA from the official manual-download files.
  folder.py    A folder of the user's own images.
  photos.py    Crops of the natural photographs shipped by scikit-image and
               scikit-learn (the ``photos`` extra), a held-out band per photograph.
  sources.py   ``get_source`` / ``validate``: a data config to a source.
  pipeline.py  ``batch_iterator``: order, sharding, flips and prefetch on grain.

Everything a trainer or notebook needs is importable from here, e.g.
``from vaegan_jax import data; it = data.batch_iterator(config.data, 'train', 64, seed=0)``.
"""

from vaegan_jax.data.celeba import CELEBA_ATTRIBUTE_NAMES
from vaegan_jax.data.celeba import CELEBA_ATTRIBUTES
from vaegan_jax.data.celeba import CELEBA_CROP_BOX
from vaegan_jax.data.celeba import CELEBA_FILES
from vaegan_jax.data.celeba import CELEBA_IMAGES
from vaegan_jax.data.celeba import celeba_manual_dir
from vaegan_jax.data.celeba import CELEBA_PARTITION
from vaegan_jax.data.celeba import decode_celeba
from vaegan_jax.data.folder import load_folder_image
from vaegan_jax.data.pipeline import batch_dataset
from vaegan_jax.data.pipeline import batch_iterator
from vaegan_jax.data.pipeline import batch_plan
from vaegan_jax.data.pipeline import global_batch_indices
from vaegan_jax.data.pipeline import InputWorkerError
from vaegan_jax.data.pipeline import preprocess
from vaegan_jax.data.readers import config_value
from vaegan_jax.data.readers import convert_tfds_examples
from vaegan_jax.data.readers import DataError
from vaegan_jax.data.readers import DatasetInfo
from vaegan_jax.data.readers import DATASETS
from vaegan_jax.data.readers import label_attribute_names
from vaegan_jax.data.readers import Source
from vaegan_jax.data.sources import content_stamp
from vaegan_jax.data.sources import get_source
from vaegan_jax.data.sources import validate
