"""Offline comparison of solutions: permutations, alignment, barriers, clustering, and the CLI."""

from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.compare import (
    activation_matching,
    classification_error,
    cluster_solutions,
    compare_pair,
    invert,
    loss_barrier,
    pairwise_comparisons,
    parameter_distance,
    permutation_barrier,
    permutation_spec,
    permute_model,
    permute_state_dict,
    plot_dendrogram,
    random_permutations,
    reset_batchnorm_stats,
    ultrametricity,
    weight_matching,
)
from lightning_landscape.tasks import build_mlp, make_teacher_student

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 0.05, seed: int = 0) -> nn.Module:
    """Full-batch SGD with momentum (cross-entropy for integer targets, else MSE); returns it in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        out = model(x)
        loss = nn.functional.cross_entropy(out, y) if not torch.is_floating_point(y) else nn.functional.mse_loss(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _mlp_bn(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    x, y = make_teacher_student(num_samples=256, input_dim=6, classes=3, seed=seed)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(),
        nn.Linear(12, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Dropout(0.1),
        nn.Linear(10, 3),
    )
    return _train(net, x, y, steps=60), (x, y)


def _cnn_bn(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 2, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > x[:, 1, 4:].mean(dim=(1, 2))).long()
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.Tanh(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 7), nn.GELU(),
        nn.Linear(7, 2),
    )
    return _train(net, x, y, steps=30), (x, y)


MODELS = {"mlp_bn": _mlp_bn, "cnn_bn": _cnn_bn}


# -------------------------------------------------------------------------------------------- structure
def test_spec_of_cnn_groups_channels_and_flatten_blocks() -> None:
    net, _ = _cnn_bn()
    spec = permutation_spec(net)
    assert [(h.name, h.size) for h in spec.layers] == [("0", 6), ("4", 5), ("8", 7)]
    conv2 = spec.layer("4")
    assert {(a.key, a.dim, a.block) for a in conv2.axes} == {
        ("4.weight", 0, 1), ("4.bias", 0, 1), ("5.weight", 0, 1), ("5.bias", 0, 1),
        ("5.running_mean", 0, 1), ("5.running_var", 0, 1), ("8.weight", 1, 16),
    }
    assert conv2.probe == "6"  # post-activation output, before Flatten
    assert ("4.weight", 1, 1) in {(a.key, a.dim, a.block) for a in spec.layer("0").axes}


def test_spec_finds_sequential_inside_a_lightning_module() -> None:
    from lightning_landscape.tasks import MLPTask

    task = MLPTask(input_dim=3, hidden=(5, 4), output_dim=2, batch_norm=True)
    spec = permutation_spec(task)
    assert [(h.name, h.size) for h in spec.layers] == [("net.0", 5), ("net.3", 4)]
    assert "net.1.running_var" in {a.key for a in spec.layer("net.0").axes}


def test_unsupported_layers_are_refused_by_name() -> None:
    with pytest.raises(NotImplementedError, match="layer 1: GroupNorm"):
        permutation_spec(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 1, 3)))
    with pytest.raises(NotImplementedError, match="layer 1: Softmax"):
        permutation_spec(nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=1), nn.Linear(3, 1)))
    spec = permutation_spec(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.LogSoftmax(dim=1)))
    assert [h.name for h in spec.layers] == ["0"]  # a parameter-free module on the outputs is fine
    with pytest.raises(NotImplementedError, match="grouped"):
        permutation_spec(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 1, 3)))

    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    with pytest.raises(ValueError, match="no nn.Sequential"):
        permutation_spec(TwoBranches())


# -------------------------------------------------------------------------------------------- permute
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_permuting_hidden_units_leaves_outputs_unchanged(kind: str) -> None:
    net, (x, _) = MODELS[kind]()
    spec = permutation_spec(net)
    perms = random_permutations(spec, torch.Generator().manual_seed(3))
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    twin = permute_model(net, perms, spec)
    assert parameter_distance(net, twin) > 1.0  # really moved in parameter space
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), rtol=1e-5, atol=1e-5)  # eval: running statistics
        a, b = copy.deepcopy(net).train(), copy.deepcopy(twin).train()
        for m in list(a.modules()) + list(b.modules()):  # dropout off, BatchNorm on batch statistics
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)  # train: batch statistics
    back = permute_state_dict(twin.state_dict(), spec, invert(perms))
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


def test_layernorm_prelu_and_conv1d_are_permuted_consistently() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.PReLU(6), nn.Linear(6, 5), nn.PReLU(), nn.Linear(5, 2))
    conv = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3))
    for net, x in ((mlp, torch.randn(8, 4)), (conv, torch.randn(8, 2, 8))):
        net.eval()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))  # LayerNorm/PReLU/BN parameters away from their defaults
        spec = permutation_spec(net)
        perms = random_permutations(spec, torch.Generator().manual_seed(1))
        twin = permute_model(net, perms, spec)
        with torch.no_grad():
            torch.testing.assert_close(twin(x), net(x), rtol=1e-5, atol=1e-5)
        found = weight_matching(net, twin, spec).perms
        assert all(torch.equal(found[k], invert(perms)[k]) for k in perms)


def test_bad_permutations_are_rejected() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    spec = permutation_spec(net)
    with pytest.raises(ValueError, match=r"perms\['0'\] is not a permutation"):
        permute_model(net, {"0": torch.tensor([0, 0, 1])}, spec)
    with pytest.raises(KeyError, match="unknown hidden layer"):
        permute_model(net, {"2": torch.tensor([0])}, spec)


# -------------------------------------------------------------------------------------------- align
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_alignment_recovers_the_permutation_exactly(kind: str, method: str) -> None:
    net, data = MODELS[kind]()
    spec = permutation_spec(net)
    perms = random_permutations(spec, torch.Generator().manual_seed(5))
    twin = permute_model(net, perms, spec)
    if method == "weight":
        found = weight_matching(net, twin, spec).perms
    else:
        found = activation_matching(net, twin, data, spec, batch_size=50).perms
    expected = invert(perms)
    for name in perms:
        assert torch.equal(found[name], expected[name]), name
    realigned = permute_model(twin, found, spec)
    assert all(torch.equal(realigned.state_dict()[k], v) for k, v in net.state_dict().items())


def test_weight_matching_never_increases_distance() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    b = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    alignment = weight_matching(a, b)
    aligned = permute_model(b, alignment.perms)
    assert parameter_distance(a, aligned) < parameter_distance(a, b)
    with pytest.raises(ValueError, match="max_iter"):
        weight_matching(a, b, max_iter=0)


# -------------------------------------------------------------------------------------------- barrier
def test_loss_path_matches_a_hand_computed_interpolation() -> None:
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    b = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(40, 3), torch.randn(40, 1)
    result = loss_barrier(a, b, (x, y), num_points=9, batch_size=7)
    pa, pb = [p.detach().double() for p in a.parameters()], [p.detach().double() for p in b.parameters()]
    expected = []
    for t in result.ts:
        w1, b1, w2, b2 = ((1 - t) * u + t * v for u, v in zip(pa, pb))
        out = torch.tanh(x.double() @ w1.T + b1) @ w2.T + b2
        expected.append(float(((out - y.double()) ** 2).mean()))
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)
    chord = expected[0] + np.asarray(result.ts) * (expected[-1] - expected[0])
    assert result.barrier == pytest.approx(max(np.asarray(expected) - chord), rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError, match="num_points"):
        loss_barrier(a, b, (x, y), num_points=1)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_barrier_of_a_model_with_itself_is_zero_and_permuted_copy_realigns(kind: str) -> None:
    net, data = MODELS[kind]()
    assert loss_barrier(net, net, data, num_points=7).barrier == 0.0
    assert loss_barrier(net, copy.deepcopy(net), data, num_points=7, reset_batchnorm=False).barrier == 0.0
    perm = permutation_barrier(net, data, seed=2, num_points=7)
    assert perm.loss_a == pytest.approx(perm.loss_b, rel=1e-5)  # same function at both ends
    assert perm.barrier > 0.01
    twin = permute_model(net, random_permutations(permutation_spec(net), torch.Generator().manual_seed(2)))
    result = compare_pair(net, twin, data, num_points=7)
    assert result.before.barrier == pytest.approx(perm.barrier)
    assert result.after.barrier == pytest.approx(0.0, abs=1e-6) and result.distance_after < 1e-5


def test_reset_batchnorm_gives_population_statistics() -> None:
    net, (x, _) = _mlp_bn()
    with torch.no_grad():
        pre = net[0](x)
    bn = net[1]
    reset_batchnorm_stats(net, (x,))  # one batch: exact population statistics
    torch.testing.assert_close(bn.running_mean, pre.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, pre.var(0), rtol=1e-4, atol=1e-5)
    reset_batchnorm_stats(net, (x,), batch_size=64)  # four equal batches: average of the batch means
    torch.testing.assert_close(bn.running_mean, pre.mean(0), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not bn.training  # restored
    assert not reset_batchnorm_stats(nn.Sequential(nn.Linear(2, 2)), (x,))


def _classification_data() -> tuple[str, tuple, tuple, int, int]:
    """sklearn's digits when scikit-learn is installed, else teacher–student classification."""
    if HAS_SKLEARN:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-3)
        y = torch.tensor(digits.target)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        return "digits", (x[idx[:1000]], y[idx[:1000]]), (x[idx[1000:]], y[idx[1000:]]), 64, 10
    x, y = make_teacher_student(num_samples=1000, input_dim=16, classes=4, teacher_width=16, seed=0)
    return "teacher-student", (x[:800], y[:800]), (x[800:], y[800:]), 16, 4


@pytest.fixture(scope="module")
def wide_solutions() -> tuple:
    """Two independently initialised 128-128 ReLU MLPs trained to near-zero loss (shared by both methods)."""
    name, train, test, d, k = _classification_data()
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(_train(build_mlp(d, (128, 128), k, "relu"), *train, steps=200, lr=0.1))
    return name, train, test, nets[0], nets[1]


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_alignment_lowers_the_barrier_between_independent_wide_mlps(method: str, wide_solutions: tuple) -> None:
    name, train, test, a, b = wide_solutions
    result = compare_pair(a, b, train, method=method, num_points=11)
    errors = compare_pair(a, b, test, method=method, num_points=11, loss_fn=classification_error)
    print(f"\n{name} {method}: loss barrier {result.before.barrier:.4f} -> {result.after.barrier:.4f}, "
          f"distance {result.distance_before:.2f} -> {result.distance_after:.2f}, "
          f"test error barrier {errors.before.barrier:.4f} -> {errors.after.barrier:.4f}")
    assert result.before.loss_a < 0.1 and result.before.loss_b < 0.1  # both are solutions
    assert result.before.barrier > 0.1
    assert result.after.barrier < 0.25 * result.before.barrier
    assert result.distance_after < 0.9 * result.distance_before
    assert errors.after.barrier < errors.before.barrier


# -------------------------------------------------------------------------------------------- cluster
def test_ultrametricity_of_a_tree_metric_and_of_points_on_a_line() -> None:
    # cophenetic distances of any tree are ultrametric
    rng = np.random.default_rng(0)
    points = rng.normal(size=(9, 3))
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import pdist, squareform

    tree = squareform(cophenet(linkage(pdist(points), "average")))
    u = ultrametricity(tree, tol=1e-9)
    assert u.num_triples == 84 and u.violation_fraction == 0.0 and u.mean_relative_gap < 1e-12
    clustering = cluster_solutions(tree, method="average")
    assert clustering.cophenetic_correlation == pytest.approx(1.0)
    line = squareform(pdist(np.arange(6.0)[:, None]))
    assert ultrametricity(line).violation_fraction == 1.0  # every triple is degenerate: d_max = d1 + d2
    euclid = ultrametricity(squareform(pdist(points)))
    assert 0 < euclid.violation_fraction < 1
    with pytest.raises(ValueError, match="tol"):
        ultrametricity(tree, tol=-1)
    with pytest.raises(ValueError, match="symmetric"):
        ultrametricity(np.array([[0, 1, 2], [2, 0, 1], [1, 1, 0]]))
    with pytest.raises(ValueError, match="method must be one of"):
        cluster_solutions(tree, method="ward")


def test_clustering_groups_relabelled_copies_and_writes_a_dendrogram(tmp_path) -> None:
    import matplotlib.image

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 2)) for _ in range(2)]
    spec = permutation_spec(nets[0])
    models, labels = [], []
    for i, net in enumerate(nets):
        for j in range(2):
            models.append(permute_model(net, random_permutations(spec, torch.Generator().manual_seed(10 * i + j)), spec))
            labels.append(f"run{i}-copy{j}")
    x = torch.randn(64, 4)
    data = (x, torch.randint(0, 2, (64,)))
    result = pairwise_comparisons(models, labels, data=data, num_points=5)
    assert result.distance_after[0, 1] < 1e-5 and result.distance_after[2, 3] < 1e-5
    assert result.distance_before[0, 1] > 1.0 and result.distance_after[0, 2] > 1.0
    assert result.barrier_after[0, 1] == pytest.approx(0, abs=1e-6)
    assert np.allclose(result.distance_after, result.distance_after.T)
    clustering = cluster_solutions(result.distance_after, labels)
    assert clustering.linkage[0, 2] < 1e-5 and clustering.linkage[1, 2] < 1e-5  # copies merge first
    assert clustering.ultrametricity.violation_fraction == 0.0  # two tight pairs: isosceles triangles
    png = plot_dendrogram(clustering, tmp_path / "dendrogram.png")
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100
    json.dumps({**result.to_dict(), **clustering.to_dict()})  # JSON-serialisable


# -------------------------------------------------------------------------------------------- CLI
def _fit_checkpoint(tmp_path, seed: int, x, y, **hparams) -> str:
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_landscape._compat import FLAVOURS
    from lightning_landscape.tasks import MLPTask

    L = FLAVOURS[0]
    L.seed_everything(seed, verbose=False)
    task = MLPTask(**hparams)
    trainer = L.Trainer(
        max_epochs=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )
    trainer.fit(task, DataLoader(TensorDataset(x, y), batch_size=len(x)))
    path = tmp_path / f"run{seed}.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.mark.filterwarnings("ignore")
def test_cli_compare_on_mlp_task_checkpoints(tmp_path, capsys) -> None:
    from lightning_landscape.cli.main import main

    hp = dict(input_dim=8, hidden=(32,), output_dim=3, activation="tanh", loss="cross_entropy", lr=0.5, momentum=0.9)
    x, y = make_teacher_student(num_samples=512, input_dim=8, classes=3, seed=4)
    ckpts = [_fit_checkpoint(tmp_path, s, x, y, **hp) for s in (1, 2, 3)]
    out = tmp_path / "out"
    code = main(["compare", *ckpts, "--data", "teacher-student", "--data-seed", "4", "--num-samples", "512",
                 "--out", str(out), "--num-points", "5"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"][0].startswith("lightning_landscape.tasks.models.MLPTask")
    assert len(summary["models"]) == 3 and len(summary["pairs"]) == 3
    assert all(m["loss"] < 0.5 for m in summary["models"])  # the rebuilt data is the training data
    assert all(m["permutation_barrier"] > 0 for m in summary["models"])
    assert all(p["distance_after"] <= p["distance_before"] for p in summary["pairs"])
    assert summary["clustering"]["ultrametricity"]["num_triples"] == 1
    for png in ("dendrogram.png", "paths.png", "permutation_paths.png"):
        assert (out / png).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "barrier aligned" in printed and "cophenetic" in printed

    # a data file, an explicit --module, activation matching, error barriers
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    code = main(["compare", *ckpts[:2], "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "o2"),
                 "--module", "lightning_landscape.tasks:MLPTask", "--method", "activation", "--loss", "error",
                 "--num-points", "3"])
    assert code == 0
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["metric"] == "classification error" and summary["pairs"][0]["alignment"]["method"] == "activation"


def test_cli_compare_refuses_unknown_class_and_missing_files(tmp_path) -> None:
    from lightning_landscape.cli.compare import resolve_class
    from lightning_landscape.cli.main import main
    from lightning_landscape.tasks import MLPTask

    with pytest.raises(SystemExit, match="pass --module"):
        resolve_class({"width": 3}, None)
    with pytest.raises(SystemExit, match="untrusted checkpoint does not choose code to import"):
        resolve_class({"_class_path": "lightning_landscape.tasks.MLPTask"}, None)
    assert resolve_class({"_class_path": "lightning_landscape.tasks.MLPTask"}, None, trust=True)[0] is MLPTask
    with pytest.raises(SystemExit, match="not an nn.Module"):
        resolve_class({}, "lightning_landscape.tasks:make_teacher_student")
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main(["compare", str(tmp_path / "nope.ckpt"), "--data", "teacher-student", "--out", str(tmp_path)])
