"""``lightning-landscape compare`` on real checkpoints: LightningCLI and save_hyperparameters() files, trust,
``--permutation-spec``, labels and figures."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_landscape.cli.compare import checkpoint_labels
from lightning_landscape.cli.main import main

MODELS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn
    import lightning.pytorch as L


    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


    def images(n: int = 96):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 1, 8, 8, generator=g)
        y = (x[:, 0, :4].mean((1, 2)) > 0).long() + (x[:, 0, 4:].mean((1, 2)) > 0).long()
        return x, y


    class ResTask(L.LightningModule):
        """A small BatchNorm ResNet (stem, one residual block, linear head)."""

        def __init__(self, width: int = 6, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.block = Block(width)
            self.head = nn.Linear(width, 3)

        def forward(self, x):
            return self.head(self.block(self.stem(x)).mean((2, 3)))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*images()), batch_size=32, shuffle=True)


    NOT_A_SPEC = 3


    def only_head_input(model):
        """A hand-written spec: permute only the units the head reads (a --permutation-spec callable)."""
        from lightning_landscape.compare import PermutationSpec, permutation_spec
        full = permutation_spec(model, images(8)[0])
        return PermutationSpec(tuple(h for h in full.layers if any(a.key == "head.weight" for a in h.axes)),
                               full.parameter_keys)
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two LightningCLI runs (subclass mode: ``_class_path`` in the file) and one plain-Trainer
    ``save_hyperparameters()`` checkpoint of the same user class, plus the data file."""
    root = tmp_path_factory.mktemp("runs")
    (root / "cmp_user_models.py").write_text(MODELS)
    sys.path.insert(0, str(root))
    try:
        import cmp_user_models as models
        import lightning.pytorch as L
        from lightning.pytorch.cli import LightningCLI

        ckpts = []
        for seed in (1, 2):
            LightningCLI(args=[
                "fit", "--model=cmp_user_models.ResTask", "--model.width=6", f"--seed_everything={seed}",
                "--trainer.max_epochs=3", f"--trainer.default_root_dir={root / f'run{seed}'}", "--trainer.logger=false",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            ], save_config_callback=None)
            (ckpt,) = (root / f"run{seed}" / "checkpoints").glob("*.ckpt")
            ckpts.append(ckpt)
        L.seed_everything(3, verbose=False)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(models.ResTask(width=6))
        plain = root / "plain.ckpt"
        trainer.save_checkpoint(plain)
        x, y = models.images()
        np.savez(root / "data.npz", x=x.numpy(), y=y.numpy())
        yield {"root": root, "cli": ckpts, "plain": plain, "data": root / "data.npz"}
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("cmp_user_models", None)


@pytest.mark.filterwarnings("ignore")
def test_lightning_cli_checkpoints_of_a_resnet_load_when_trusted(runs, tmp_path, capsys) -> None:
    hp = torch.load(runs["cli"][0], weights_only=True)["hyper_parameters"]
    assert hp["_class_path"] == "cmp_user_models.ResTask"  # what LightningCLI wrote
    out = tmp_path / "out"
    assert main(["compare", *map(str, runs["cli"]), "--data", str(runs["data"]), "--out", str(out),
                 "--num-points", "3", "--trust-checkpoint"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"][0].startswith("cmp_user_models.ResTask (checkpoint _class_path, trusted)")
    assert summary["labels"] == ["run1/epoch=2-step=9", "run2/epoch=2-step=9"]  # same file names, told apart
    layers = {h["name"]: h["size"] for h in summary["hidden_layers"]}
    assert layers == {"stem.0": 6, "block.conv1": 6}  # the residual stream and the block's hidden units
    pair = summary["pairs"][0]
    assert pair["distance_after"] < pair["distance_before"]
    # untrusted, the user may name the class themselves: built from the stored init arguments
    assert main(["compare", *map(str, runs["cli"]), "--data", str(runs["data"]), "--out", str(tmp_path / "o2"),
                 "--num-points", "3", "--module", "cmp_user_models:ResTask"]) == 0
    again = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert again["pairs"][0]["distance_after"] == pytest.approx(pair["distance_after"])


@pytest.mark.filterwarnings("ignore")
def test_save_hyperparameters_checkpoint_says_exactly_what_to_pass(runs, tmp_path) -> None:
    args = ["compare", str(runs["plain"]), str(runs["cli"][0]), "--data", str(runs["data"]), "--out", str(tmp_path),
            "--num-points", "3"]
    for extra in ([], ["--trust-checkpoint"]):
        with pytest.raises(SystemExit, match=r"does not name its LightningModule class .*arguments: lr, width\): "
                                             r"pass --module pkg.mod:Class"):
            main(args + extra)
    assert main(args + ["--module", "cmp_user_models.ResTask"]) == 0


@pytest.mark.filterwarnings("ignore")
def test_permutation_spec_option(runs, tmp_path) -> None:
    out = tmp_path / "out"
    assert main(["compare", *map(str, runs["cli"]), "--data", str(runs["data"]), "--out", str(out), "--num-points", "3",
                 "--module", "cmp_user_models:ResTask", "--permutation-spec", "cmp_user_models:only_head_input"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [h["name"] for h in summary["hidden_layers"]] == ["stem.0"]
    with pytest.raises(SystemExit, match="must be a PermutationSpec"):
        main(["compare", str(runs["cli"][0]), "--data", str(runs["data"]), "--out", str(out),
              "--module", "cmp_user_models:ResTask", "--permutation-spec", "cmp_user_models:NOT_A_SPEC"])
    with pytest.raises(SystemExit, match="calling it on the model failed"):
        main(["compare", str(runs["cli"][0]), "--data", str(runs["data"]), "--out", str(out),
              "--module", "cmp_user_models:ResTask", "--permutation-spec", "cmp_user_models:images"])


MARKER_MODULE = textwrap.dedent('''
    from pathlib import Path
    Path(__file__).with_name("IMPORTED").write_text("the checkpoint ran code")
    class Evil:
        pass
''')


@pytest.mark.parametrize("hparams", [
    {"_class_path": "cmp_marker_mod.Evil"},
    {"class_path": "cmp_marker_mod.Evil", "init_args": {}},
])
def test_untrusted_checkpoint_imports_nothing_it_names(tmp_path, monkeypatch, capsys, hparams) -> None:
    (tmp_path / "cmp_marker_mod.py").write_text(MARKER_MODULE)
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, tmp_path / "evil.ckpt")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int64))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as under `python -m`: the checkpoint's folder is importable
    monkeypatch.delitem(sys.modules, "cmp_marker_mod", raising=False)
    args = ["compare", "evil.ckpt", "--data", "d.npz", "--out", "out"]
    with pytest.raises(SystemExit, match=r"untrusted checkpoint does not choose code to import.*"
                                         r"--module cmp_marker_mod:Evil.*--trust-checkpoint"):
        main(args)
    assert not (tmp_path / "IMPORTED").exists()
    # the same file, trusted, does import it: the marker is a real detector
    with pytest.raises(SystemExit, match="not an nn.Module class"):
        main(args + ["--trust-checkpoint"])
    assert (tmp_path / "IMPORTED").exists()
    sys.modules.pop("cmp_marker_mod", None)


def test_untrusted_checkpoint_naming_a_stdlib_module_runs_nothing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "this", raising=False)
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "this.Nope"}}, tmp_path / "z.ckpt")
    with pytest.raises(SystemExit, match="untrusted"):
        main(["compare", str(tmp_path / "z.ckpt"), "--data", "teacher-student", "--out", str(tmp_path)])
    assert "this" not in sys.modules and "Beautiful is better" not in capsys.readouterr().out


class _Payload:
    """Unpickling this object touches a file (stands for arbitrary code in a pickle)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_untrusted_checkpoint_is_not_unpickled(tmp_path) -> None:
    marker = tmp_path / "UNPICKLED"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(marker)}}, tmp_path / "p.ckpt")
    with pytest.raises(SystemExit, match="weights_only=True.*--trust-checkpoint"):
        main(["compare", str(tmp_path / "p.ckpt"), "--data", "teacher-student", "--out", str(tmp_path)])
    assert not marker.exists()


def test_labels_are_distinct_and_short() -> None:
    same = [Path("lightning_logs/version_0/checkpoints/epoch=2-step=78.ckpt"),
            Path("lightning_logs/version_1/checkpoints/epoch=2-step=78.ckpt"),
            Path("other/version_1/checkpoints/epoch=2-step=78.ckpt")]
    labels = checkpoint_labels(same)
    assert len(set(labels)) == 3 and all(label.endswith("epoch=2-step=78") for label in labels)
    assert labels == ["lightning_logs/version_0/epoch=2-step=78", "lightning_logs/version_1/epoch=2-step=78",
                      "other/version_1/epoch=2-step=78"]
    assert checkpoint_labels(same[:2]) == ["version_0/epoch=2-step=78", "version_1/epoch=2-step=78"]
    assert checkpoint_labels([Path("a.ckpt"), Path("b.ckpt")]) == ["a", "b"]
    assert checkpoint_labels([Path("x/a.ckpt"), Path("x/a.ckpt")]) == ["0:a", "1:a"]


def test_legend_lies_inside_the_figure() -> None:
    from lightning_landscape.compare import BarrierResult, PairComparison
    from lightning_landscape.compare.align import Alignment
    from lightning_landscape.compare.barrier import pair_paths_figure, paths_figure

    path = BarrierResult([0.0, 0.5, 1.0], [0.1, 0.9, 0.1], 0.1, 0.1, 0.8, 0.5)
    pairs = {f"run{i}/epoch=2-step=78 ~ run{i + 1}/epoch=2-step=78": PairComparison(path, path, 1.0, 0.5, Alignment({}, "weight"))
             for i in range(6)}
    for fig in (pair_paths_figure(pairs), paths_figure({k.split(" ~ ")[0]: path for k in pairs})):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (legend,) = fig.legends
        box, frame = legend.get_window_extent(renderer), fig.bbox
        assert box.x0 >= frame.x0 - 1 and box.y0 >= frame.y0 - 1 and box.x1 <= frame.x1 + 1 and box.y1 <= frame.y1 + 1
        axes_box = fig.axes[0].get_window_extent(renderer)
        assert box.y1 <= axes_box.y0 + 1  # under the axes: never over the curves


@pytest.mark.filterwarnings("ignore")
def test_checkpoints_of_the_cli_example_load_untrusted_without_module(tmp_path) -> None:
    """``examples/cli.py`` (LightningCLI(MLPTask, ...)) writes MLPTask's arguments plus ``_instantiator``."""
    from lightning.pytorch.cli import LightningCLI

    from lightning_landscape.tasks import MLPTask, TeacherStudentDataModule

    ckpts = []
    for seed in (1, 2):
        LightningCLI(MLPTask, TeacherStudentDataModule, args=[
            "fit", "--model.input_dim=6", "--model.hidden=[8]", "--data.input_dim=6", "--data.num_samples=128",
            "--data.batch_size=64", f"--seed_everything={seed}", "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path / f'v{seed}'}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        ], save_config_callback=None)
        (ckpt,) = (tmp_path / f"v{seed}" / "checkpoints").glob("*.ckpt")
        ckpts.append(str(ckpt))
    assert "_instantiator" in torch.load(ckpts[0], weights_only=True)["hyper_parameters"]
    out = tmp_path / "out"
    assert main(["compare", *ckpts, "--data", "teacher-student", "--num-samples", "128", "--out", str(out),
                 "--num-points", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"][0].endswith("MLPTask (hyper-parameters match MLPTask)")
    assert summary["labels"] == ["v1/epoch=0-step=2", "v2/epoch=0-step=2"]
    trusted = tmp_path / "trusted"  # trusted: through Lightning's load_from_checkpoint and its instantiator
    assert main(["compare", *ckpts, "--data", "teacher-student", "--num-samples", "128", "--out", str(trusted),
                 "--num-points", "3", "--trust-checkpoint"]) == 0
    again = json.loads((trusted / "summary.json").read_text())
    assert again["pairs"][0]["distance_before"] == pytest.approx(summary["pairs"][0]["distance_before"], rel=1e-6)
