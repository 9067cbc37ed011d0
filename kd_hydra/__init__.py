"""kd-hydra: a Hydra-configured knowledge-distillation experiment suite.

Importing the package is cheap (no torch): ``kd_hydra.schema`` is shared with ``analysis``.
"""

__version__ = "0.1.0"
