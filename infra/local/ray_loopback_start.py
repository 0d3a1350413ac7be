"""`ray start` for a node that must stay on 127.0.0.1: the same CLI command and flags, with one change.

Ray 2.60's `ray start` rewrites a loopback address (127.0.0.1, localhost, ::1) to the host's network IP whenever
multi-node clusters are enabled (`ray._private.services.resolve_ip_for_localhost`, used for --address and
--node-ip-address). A node whose IP is not 127.0.0.1 makes gcs_server and the raylet bind their gRPC ports to all
interfaces, and the agents to the host IP. The head avoids that with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (then
"localhost" resolves to 127.0.0.1), but that same switch makes `ray start --address ...` refuse to add a worker
node. This launcher keeps multi-node enabled for the CLI check and keeps loopback addresses as 127.0.0.1, so the
worker node registers as 127.0.0.1 and binds every port there. The processes it starts inherit
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so drivers started on this node (job entrypoints) also connect over loopback.

    python infra/local/ray_loopback_start.py --address 127.0.0.1:6379 --num-cpus 1 ...   # any `ray start` flags
"""

from __future__ import annotations

import os
import sys

from ray._common.network_utils import is_localhost
from ray._private import services
from ray.scripts.scripts import cli

_resolve = services.resolve_ip_for_localhost


def _keep_loopback(host: str) -> str:
    return "127.0.0.1" if is_localhost(host) else _resolve(host)


services.resolve_ip_for_localhost = _keep_loopback
# Read by the daemons this command starts (and their workers), not by this process: its check already ran at import.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

if __name__ == "__main__":
    sys.exit(cli.main(args=["start", *sys.argv[1:]], prog_name="ray"))
