"""One job: the recipe of each mode (``app``), its immutable context, and the evaluation of a checkpoint."""
