"""RESULTS.md, the one place for measured figures: each benchmark replaces its own section, stamped with the date,
commit, machine and the command that produced it."""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Measured results\n\nWritten by the benchmark commands; each section is replaced by its command's last run.\n"
)


def commit() -> str:
    """The checkout's commit, marked -dirty when tracked files differ from it."""
    repo = RESULTS.parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> str:
    text = f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}"
    try:
        import torch

        text += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def record(section: str, body: str, command: str | None = None) -> None:
    """Replace (or add) `section` of RESULTS.md with `body` under a stamp line."""
    command = command or _command()
    stamp = f"{time.strftime('%Y-%m-%d')}, commit {commit()}, {machine()}; `{command}`"
    block = f"<!-- {section} -->\n## {section}\n\n{stamp}\n\n{body.rstrip()}\n<!-- /{section} -->\n"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = _section(section)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS}: {section}")


def _command() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    module = spec.name if spec and spec.name else Path(sys.argv[0]).name
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def _section(section: str) -> re.Pattern:
    return re.compile(rf"<!-- {re.escape(section)} -->.*?<!-- /{re.escape(section)} -->\n", re.S)


def record_row(
    section: str, header: str, label: str, row: str, command: str | None = None, at_commit: str | None = None
) -> None:
    """Add or replace the row `label` of the table in `section` (a table of runs, e.g. ablations), keeping the others;
    each row carries its own date and commit."""
    command = command or _command()
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = _section(section)
    found = pattern.search(text)
    rows = (
        [line for line in found.group(0).splitlines() if line.startswith("| ") and not line.startswith("| run")]
        if found
        else []
    )
    rows = [r for r in rows if not r.startswith(f"| {label} |")]
    rows.append(f"| {label} | {row} | {time.strftime('%Y-%m-%d')}, {at_commit or commit()}: `{command}` |")
    columns = header.count("|") - 1
    table = [header, "|" + "---|" * columns, *rows]
    block = (
        f"<!-- {section} -->\n## {section}\n\nMachine: {machine()}.\n\n" + "\n".join(table) + f"\n<!-- /{section} -->\n"
    )
    text = pattern.sub(lambda _: block, text) if found else text.rstrip() + "\n\n" + block
    RESULTS.write_text(text)
