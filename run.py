"""kd-hydra's entrypoint in a clone: ``python run.py [group=option ...] [key=value ...]``; ``-m`` sweeps.

The same as the installed ``kd-hydra`` command (:mod:`kd_hydra.cli`). Bad input ends with a one-line
``error: ...`` and exit status 2 before any work; in a sweep, failed jobs are reported at the end (exit 1).
"""

from kd_hydra.cli import main

if __name__ == "__main__":
    main()
