"""Experiment trackers, one module each (``tensorboard``, ``mlflow``, ``wandb``), and the ``logger`` group that
fans a run's history and record out to them (``fanout``). A tracker's library is imported only when it is built."""
