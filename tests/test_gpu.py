"""CUDA checks (skipped cleanly without a GPU): fp32 curvature under 16-mixed/bf16-mixed training on the GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exact import exact_hessian
from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, LandscapeMonitor
from test_hardening import _Capture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_cuda_mixed_precision_measures_in_fp32(precision: str) -> None:
    """The monitor's own λ, measured on the GPU under mixed-precision training, against the float64 exact
    Hessian of the same weights and batch (fp32 maths: ~1e-5 relative; fp16/bf16 would be ~1e-3–1e-2 off)."""
    capture = _Capture()
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=10, max_iter=60, tol=1e-6)])
    t = trainer(max_steps=1, callbacks=[monitor, capture], accelerator="gpu", precision=precision)
    t.fit(small_task(), loaders())
    reference = small_task().double()
    reference.load_state_dict({k: v.cpu().double() if v.is_floating_point() else v.cpu()
                               for k, v in capture.weights.items()})
    xb, yb = (b.cpu().double() for b in capture.batch)
    H, _ = exact_hessian(reference.net, lambda f: nn.functional.mse_loss(f(xb), yb))
    evals = torch.linalg.eigvalsh(H)
    assert monitor.last_values["landscape/hessian/lambda_max"] == pytest.approx(float(evals[-1]), rel=1e-4)
    assert monitor.last_values["landscape/hessian/lambda_min"] == pytest.approx(
        float(evals[0]), rel=1e-3, abs=1e-4 * float(evals[-1]))


def test_cuda_fsdp1_is_refused_naming_model_parallel_and_training_continues() -> None:
    """FSDP1 (``strategy="fsdp"``, which Lightning runs on GPUs only): the monitor switches itself off with a
    warning that points to ``ModelParallelStrategy``; training runs to the end."""
    from lightning_landscape.callbacks.monitor import LandscapeMonitorWarning

    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    t = trainer(max_steps=2, callbacks=[monitor], accelerator="gpu", devices=1, strategy="fsdp")
    with pytest.warns(LandscapeMonitorWarning, match="ModelParallelStrategy"):
        t.fit(small_task(), loaders())
    assert t.global_step == 2 and not monitor.last_values
