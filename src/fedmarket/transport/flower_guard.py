"""A provider's ``flwr-clientapp``: Flower's own, except that a bundle whose sha256 is not the job
spec's (``$FEDMARKET_FLOWER_APP_HASH``, set by `flower_nodes.SuperNode`) is refused before it is
installed or any of its code runs. The refusal goes back to the ServerApp as the task's error
("provider refuses Flower app bundle ...").

The provider's SuperNode finds this module first on its PATH (a ``flwr-clientapp`` shim in the
provider's state directory), so nothing about the aggregator's bundle decides whether it runs."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def main() -> None:
    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    from .flower import APP_HASH_ENV, check_bundle

    install = runtime.install_from_fab
    expected = os.environ.get(APP_HASH_ENV, "")

    def checked_install(fab_content: bytes, *args, **kwargs):
        check_bundle(fab_content, expected)
        return install(fab_content, *args, **kwargs)

    runtime.install_from_fab = checked_install  # Flower 1.41 installs the bundle through this name
    flwr_clientapp()


if __name__ == "__main__":
    main()
