"""LightningCLI with the landscape monitor configured from YAML.

    python examples/cli.py fit --config examples/config.yaml

Works the same with ``pytorch_lightning.cli.LightningCLI``: LandscapeMonitor subclasses both flavours' Callback.
"""

from lightning.pytorch.cli import LightningCLI

from lightning_landscape.tasks import MLPTask, TeacherStudentDataModule


def main() -> None:
    LightningCLI(MLPTask, TeacherStudentDataModule)


if __name__ == "__main__":
    main()
