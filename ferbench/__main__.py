"""``python -m ferbench``: the ``ferbench`` command, also where the scripts folder is not on PATH
(a virtual environment that is not activated, a cluster node's ``python``)."""

from ferbench.harness.cli.main import entry_point

if __name__ == "__main__":
    entry_point()
