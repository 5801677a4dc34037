"""Entry point: ``python -m semrel_jax.main --config=configs/vqa.py --workdir=/tmp/run``."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from semrel_jax.training import distributed, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a preset: configs/vqa.py:demo.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results (resumes if it has checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl parsing, with a readable error for ``--config.a.b=...`` keys the config does not have."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:
        key = str(e).strip("'\"")
        culprits = [a for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]]
        sys.exit(f"FATAL: unknown config key {key!r} in {culprits or argv[1:]}; see the config file for the valid keys.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    distributed.initialize()  # multi-host: before anything touches a device (see training/distributed.py)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
