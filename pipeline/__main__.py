"""Command-line tools of the pipeline: `python -m pipeline check ROOT_OR_URI [...]`."""

import sys

from pipeline.data import check

COMMANDS = {"check": check.main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m pipeline {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
