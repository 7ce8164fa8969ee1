"""`python harness/run.py ARGS` behaves exactly like `ferbench run ARGS`.

Self-contained on purpose: `ray submit cluster.yaml harness/run.py -- ARGS` copies this file alone
to `~/run.py` on the head node and runs it there, where the installed `ferbench` package provides
the rest. There the study joins the running cluster (`RAY_ADDRESS`, or the cluster `ray start`
recorded on the node) instead of starting a Ray of its own, resolves its paths against the working
directory (the SSH user's home), and refuses a results folder on the head's own disk when trials run
on other machines (use `--storage s3://…` or a shared filesystem).
"""

import os
import sys

# Running a file puts its folder first on sys.path; drop it so this folder's modules cannot
# shadow standard or installed ones.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

try:
    from ferbench.harness.cli.main import main
except ImportError:  # pragma: no cover - only on a node without the package
    sys.exit("ferbench is not installed on this machine: run `pip install -e .` in the FERBench checkout first")

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
