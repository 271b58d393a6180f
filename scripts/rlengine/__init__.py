"""rlengine: the model engine of rlhost (see scripts/PROTOCOL.md).

Only backend_torch (and its torch_* helpers) import torch; protocol, dispatch, host and
worker stay torch-free so that another backend (MLX) is one more module.
"""

import os

__version__ = "0.1.0"

# OpenMP threads spin while waiting for work by default. On a small machine where a
# trainer and a worker generator (or anything else) share the cores, spinning threads
# steal each other's CPU and a step can get 10x slower; measured on 2 cores under
# load, passive waiting kept the unloaded speed. It must be set before torch (and its
# libgomp) is loaded, hence here, at the first import of the package; an explicit
# setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Hugging Face libraries draw tqdm bars ("Loading weights", "Writing model shards") on
# stderr, where they tear rlhost's own progress line apart; rlhost says what it is
# doing itself (one line per model loaded, with its time). huggingface_hub reads this
# at import; transformers' own bars are turned off where it is imported
# (backend_torch.quiet_transformers).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
