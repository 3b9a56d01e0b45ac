"""`python -m aads`: the `aads` command, for environments without its console script.

Here rather than under ``if __name__ == "__main__"`` in `aads.cli`: run as ``python -m
aads.cli``, that module would be imported twice (as ``__main__`` and, by the command groups
that import its helpers, as ``aads.cli``), and the second import fails half-way.
"""

from aads.cli import app

app(prog_name="aads")
