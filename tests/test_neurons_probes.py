"""Neuron probes inside a Lightning run: tags, histograms, no effect on training, checkpoint state."""

from __future__ import annotations

import json

import lightning.pytorch as L
import torch

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape.probes.neurons import ChannelDetector, SaddleBranches, WeightDynamics


def _fit(probes, seed=0, steps=8):
    from lightning_landscape import LandscapeMonitor

    L.seed_everything(seed, verbose=False)
    model = small_task(hidden=(12,), activation="tanh")
    callbacks = [LandscapeMonitor(probes=probes)] if probes is not None else []
    t = trainer(max_steps=steps, callbacks=callbacks)
    t.fit(model, loaders(n=128, batch_size=32))
    return model, (callbacks[0] if callbacks else None)


def test_neuron_probes_in_a_trainer_log_tags_and_leave_training_unchanged():
    probes = [WeightDynamics(every_n_steps=2, histogram_every=1), ChannelDetector(every_n_steps=2),
              SaddleBranches(every_n_steps=4)]
    watched, monitor = _fit(probes)
    plain, _ = _fit(None)
    for p, q in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(p, q)  # the probes changed nothing
    tags = monitor.last_values
    for tag in ("landscape/weights/net.0/norm", "landscape/weights/net.0/distance_from_init",
                "landscape/weights/net.0/update_ratio", "landscape/weights/net.0/max_out_norm",
                "landscape/weights/total/norm", "landscape/neurons/net.0/channel_score",
                "landscape/neurons/net.0/channel_eps", "landscape/neurons/net.0/effective_width",
                "landscape/neurons/saddle_branch", "landscape/neurons/saddle", "landscape/neurons/grad_norm",
                "landscape/neurons/recovery_state"):
        assert tag in tags, tag
    assert tags["landscape/neurons/net.0/effective_width"] == 12.0
    assert tags["landscape/neurons/saddle_branch"] == 0.0
    # probe state is checkpoint-friendly (plain Python, JSON-serialisable)
    for probe in probes:
        json.dumps(probe.state_dict())
