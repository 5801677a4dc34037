"""Prepare the train and eval sources a config names as a TFDS array_record copy (semrel_jax.data.tfds_copy).

    python -m semrel_jax.data.prepare --config=configs/vqa.py --config.data.name=scienceqa \\
        --config.data.root=/data/ScienceQA --out=/data/prepared
    # then train / evaluate with --config.data.prepared_dir=/data/prepared (same data settings)

Every ``data`` key the sources use applies (splits, formats, ``on_bad_data``, ...): the copy holds exactly
what ``registry.build_sources`` gives for them, and records them. Running it again is a no-op once the copy is
complete; an interrupted or damaged copy is prepared again. No TensorFlow needed.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from semrel_jax import cli

config_flags.DEFINE_config_file("config", None, "Config file (configs/vqa.py); its data section names the sources.")
_OUT = flags.DEFINE_string("out", None, "Directory for the prepared copy (what data.prepared_dir then points to).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a complete copy made with other data settings.")
_THREADS = flags.DEFINE_integer("threads", 0, "Reader threads (0: one per CPU, at most 8).")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from semrel_jax.data import registry

    c = flags.FLAGS.config
    directory = registry.prepare(c, _OUT.value, overwrite=_OVERWRITE.value, threads=_THREADS.value)
    print(f"{c.data.name}: prepared copy at {directory}; train with --config.data.prepared_dir={_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
