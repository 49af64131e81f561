"""Root conftest: one torch thread per test process (pytest-xdist runs two on CI's 2 cores)."""

import torch

torch.set_num_threads(1)
