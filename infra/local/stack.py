"""Process and secret helpers for infra/local/up.sh and down.sh (run with the project's venv Python).

Subcommands:
    secret PATH [--bytes N]        write a random hex secret to PATH (mode 600) unless it already exists
    wait-http URL [--timeout S] [--pidfile F]   wait until URL answers HTTP (any status); exit 1 on timeout or
                                   when the process in F exits first
    make-bucket ENDPOINT BUCKET    create an S3 bucket on ENDPOINT (idempotent); keys come from the environment
    record-pid PID NAME FILE       write FILE (mode 600): "PID CREATE_TIME NAME"
    record-ray STATE RAY_TMP       write STATE/pids/ray.pids: the PIDs of the Ray daemons started under RAY_TMP
    alive STATE NAME               exit 0 when the process in STATE/pids/NAME(.pid|.pids) is running
    pids STATE [--ray-tmp DIR]     print every PID of the stack (PID files, a scan for its unique paths, descendants)
    stop STATE [--ray-tmp DIR]     stop every process of the stack: SIGTERM, then SIGKILL after a grace period

A PID file line is "PID CREATE_TIME [NAME]", so a PID that the kernel has since reused for another process is never
taken for ours. Nothing here matches processes by program name: only by PID files, by the stack's unique Ray temp
dir or MLflow store given as an option value on a command line, and by being a descendant of one of those.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def cmd_secret(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists() or not path.read_text().strip():
        _write_private(path, secrets.token_hex(args.bytes))
    os.chmod(path, 0o600)
    return 0


def cmd_wait_http(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    watched = _read_pidfile(Path(args.pidfile)) if args.pidfile else []
    while time.monotonic() < deadline:
        if args.pidfile and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in watched):
            print(f"the process in {args.pidfile} exited before {args.url} answered", file=sys.stderr)
            return 1
        try:
            with urllib.request.urlopen(args.url, timeout=2):
                return 0
        except urllib.error.HTTPError:
            return 0  # it answered (e.g. 401 from an authenticated endpoint)
        except OSError:
            time.sleep(0.5)
    print(f"timed out after {args.timeout}s waiting for {args.url}", file=sys.stderr)
    return 1


def cmd_make_bucket(args: argparse.Namespace) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if args.bucket not in existing:
        s3.create_bucket(Bucket=args.bucket)
    return 0


def _names(proc: psutil.Process, needle: str) -> bool:
    """Whether the process was started *with* this path as an option value (`--opt=PATH...` or `--opt PATH...`), as
    Ray's daemons and the MLflow server are; a `tail -f` or an editor open on a file under it does not count."""
    try:
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return False
    for i, arg in enumerate(argv):
        if needle not in arg:
            continue
        if arg.startswith("--") and "=" in arg and needle in arg.split("=", 1)[1]:
            return True
        if i > 0 and argv[i - 1].startswith("--") and arg.startswith(needle):
            return True
    return False


def _own_lineage() -> set[int]:
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def cmd_record_pid(args: argparse.Namespace) -> int:
    proc = psutil.Process(args.pid)
    _write_private(Path(args.file), f"{proc.pid} {proc.create_time()} {args.name}\n")
    return 0


def cmd_record_ray(args: argparse.Namespace) -> int:
    """Ray's daemons (gcs_server, raylet, dashboard, monitors) carry the temp dir in their command line."""
    excluded = _own_lineage()
    lines = []
    for proc in psutil.process_iter():
        if proc.pid in excluded:
            continue
        if _names(proc, args.ray_tmp):
            try:
                lines.append(f"{proc.pid} {proc.create_time()} {proc.name()}")
            except psutil.Error:
                continue
    if not lines:
        print(f"no Ray process found under {args.ray_tmp}", file=sys.stderr)
        return 1
    _write_private(Path(args.state) / "pids" / "ray.pids", "\n".join(lines) + "\n")
    return 0


def _read_pidfile(path: Path) -> list[psutil.Process]:
    procs = []
    if not path.exists():
        return procs
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            proc = psutil.Process(int(parts[0]))
            if len(parts) > 1 and abs(proc.create_time() - float(parts[1])) > 1.0:
                continue  # the PID was reused by an unrelated process
            procs.append(proc)
        except (psutil.Error, ValueError):
            continue
    return procs


def cmd_alive(args: argparse.Namespace) -> int:
    pid_dir = Path(args.state) / "pids"
    for candidate in (pid_dir / f"{args.name}.pid", pid_dir / f"{args.name}.pids"):
        procs = [p for p in _read_pidfile(candidate) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if procs:
            return 0
    return 1


def stack_processes(state: str, ray_tmp: str | None) -> dict[int, psutil.Process]:
    """Every process of the stack: PID files, command lines naming the stack's Ray temp dir or MLflow store, and all
    their descendants (Ray workers rename themselves `ray::...`, so they are found as the raylets' children)."""
    excluded = _own_lineage()
    roots: dict[int, psutil.Process] = {}
    pid_dir = Path(state) / "pids"
    if pid_dir.is_dir():
        for path in sorted(pid_dir.iterdir()):
            for proc in _read_pidfile(path):
                roots[proc.pid] = proc
    # Only strings no unrelated command line contains: Ray's temp dir and the MLflow server's backend-store URI.
    needles = [n for n in (ray_tmp or str(Path(state) / "ray"), f"sqlite:///{Path(state) / 'mlflow'}/") if n]
    for proc in psutil.process_iter():
        if proc.pid in excluded:
            continue
        if any(_names(proc, n) for n in needles):
            roots[proc.pid] = proc
    found = dict(roots)
    for proc in roots.values():
        try:
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    for pid in excluded:
        found.pop(pid, None)
    return found


def cmd_pids(args: argparse.Namespace) -> int:
    for pid in sorted(stack_processes(args.state, args.ray_tmp)):
        print(pid)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    procs = list(stack_processes(args.state, args.ray_tmp).values())
    # SIGTERM everything, then SIGKILL what is left after the grace period (gcs_server often ignores SIGTERM).
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=args.grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    # Ray daemons can spawn a last worker while dying: sweep once more.
    late = list(stack_processes(args.state, args.ray_tmp).values())
    for proc in late:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, still_late = psutil.wait_procs(late, timeout=5)
    left = [p.pid for p in still + still_late]
    print(f"stopped {len(procs)} process(es)" + (f"; still running: {left}" if left else ""))
    return 1 if left else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("secret")
    p.add_argument("path")
    p.add_argument("--bytes", type=int, default=32)
    p.set_defaults(func=cmd_secret)
    p = sub.add_parser("wait-http")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--pidfile", default=None, help="fail at once when the process in this PID file exits")
    p.set_defaults(func=cmd_wait_http)
    p = sub.add_parser("make-bucket")
    p.add_argument("endpoint")
    p.add_argument("bucket")
    p.set_defaults(func=cmd_make_bucket)
    p = sub.add_parser("record-pid")
    p.add_argument("pid", type=int)
    p.add_argument("name")
    p.add_argument("file")
    p.set_defaults(func=cmd_record_pid)
    p = sub.add_parser("record-ray")
    p.add_argument("state")
    p.add_argument("ray_tmp")
    p.set_defaults(func=cmd_record_ray)
    p = sub.add_parser("alive")
    p.add_argument("state")
    p.add_argument("name")
    p.set_defaults(func=cmd_alive)
    for name, func in (("pids", cmd_pids), ("stop", cmd_stop)):
        p = sub.add_parser(name)
        p.add_argument("state")
        p.add_argument("--ray-tmp", default=None)
        p.add_argument("--grace", type=float, default=8.0)
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
