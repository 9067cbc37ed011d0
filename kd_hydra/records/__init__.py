"""Records: what a run leaves behind and how runs are told apart (pure Python, no torch).

``schema`` is the run directory's file layout (the only interface with ``analysis``), ``identity`` what makes
two runs or two teachers the same, ``files`` the atomic writers, ``run_directory`` the claim and the one
metrics.json reader, ``ledger`` the sweep's plan and outcomes.
"""
