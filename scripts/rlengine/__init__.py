"""rlengine: the model engine of rlhost (see scripts/PROTOCOL.md).

Only backend_torch (and its torch_* helpers) import torch; protocol, dispatch, host and
worker stay torch-free so that another backend (MLX) is one more module.
"""

__version__ = "0.1.0"
