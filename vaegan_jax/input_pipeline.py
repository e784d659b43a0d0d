"""Former home of the input pipeline, now the package ``vaegan_jax.data``.

``from vaegan_jax import input_pipeline`` keeps working: this name is an alias
of ``vaegan_jax.data`` (same module object), so old notebooks and scripts run
unchanged. New code imports ``vaegan_jax.data``.
"""

import sys

from vaegan_jax import data as _data

sys.modules[__name__] = _data
