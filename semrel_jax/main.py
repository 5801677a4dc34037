"""Entry point: ``python -m semrel_jax.main --config=configs/vqa.py --workdir=/tmp/run``."""

from absl import app, flags
from ml_collections import config_flags

from semrel_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a preset: configs/vqa.py:demo.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results (resumes if it has checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from semrel_jax.training import distributed, train

    distributed.initialize()  # multi-host: before anything touches a device (see training/distributed.py)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
