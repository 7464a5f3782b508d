"""The training toolkit both trainers use (the video trainer :mod:`t2v.train` and the expander
trainer :mod:`captioner.expand.finetune`): marker-based atomic checkpoints and how to find them
(:mod:`.checkpoints`), RNG capture and restore for exact resumes (:mod:`.rng`), the metrics file
(:mod:`.metrics`) and model cards (:mod:`.modelcard`)."""

from densecap.training.checkpoints import (
    MARKER,
    checkpoint_problem,
    clear_staging,
    commit_checkpoint,
    config_diffs,
    find_checkpoint,
    list_checkpoints,
    pick_checkpoint,
    prune_checkpoints,
    read_checkpoint_state,
    staging_dir,
    write_json,
)
from densecap.training.metrics import MetricsLog
from densecap.training.modelcard import model_card, settings_block

__all__ = [
    "MARKER", "MetricsLog", "checkpoint_problem", "clear_staging", "commit_checkpoint", "config_diffs",
    "find_checkpoint", "list_checkpoints", "model_card", "pick_checkpoint", "prune_checkpoints",
    "read_checkpoint_state", "settings_block", "staging_dir", "write_json",
]
