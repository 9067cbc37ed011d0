"""Training: the loop (:class:`~kd_hydra.train.trainer.Trainer` over stages), batch assembly, the runtime
(device, precision, threads) and the learning-rate schedules. Knows methods and models, never a config."""
