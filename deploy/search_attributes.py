"""Registers Herald's search attributes on a real Temporal cluster (the local dev server gets
them at start): `python -m deploy.search_attributes --address host:7233 --namespace NAME`.

Temporal Cloud registers them in its UI or with `tcld`; this covers self-hosted clusters,
through the same `temporal` CLI the local stack uses.
"""

import argparse
import subprocess
import sys

from deploy.local.temporal import TEMPORAL_BIN
from workflows.contracts import SEARCH_ATTRIBUTES


def commands(address: str, namespace: str) -> list[list[str]]:
    return [
        [
            str(TEMPORAL_BIN),
            "operator",
            "search-attribute",
            "create",
            "--address",
            address,
            "--namespace",
            namespace,
            "--name",
            name,
            "--type",
            kind,
        ]
        for name, kind in SEARCH_ATTRIBUTES.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the cluster's frontend, host:port")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()
    for command in commands(args.address, args.namespace):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        sys.stdout.write(f"{command[-3]}: {'ok' if result.returncode == 0 else result.stderr}")
        if result.returncode != 0:
            return result.returncode
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
