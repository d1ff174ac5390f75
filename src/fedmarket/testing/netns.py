"""Machines of their own on one host, for end-to-end tests: Linux network namespaces joined by
one bridge (root only, `ip` from iproute2).

`NetLab` makes a hub namespace holding a bridge, and for each member a namespace with its own
loopback and one veth (`eth0`) on the bridge, with an address on a private /24 that the lab
picks. The harness itself (this process, in the root namespace) joins the bridge through one
more veth at `.1`, so it can deploy and watch the chain. A process started with
`lab.exec(name)` as its command prefix sees only its namespace: its 127.0.0.1 is its own, and
everything else is reached over the bridge. Nothing outside the lab's own namespaces and its one
root-namespace link is touched, and `close()` removes them all.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

from ..errors import FedMarketError


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise FedMarketError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def netns_available() -> str | None:
    """None if this process can make network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"fmprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except FedMarketError as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe)
    return None


class NetLab:
    """Namespaces `fm<tag>-<name>` on one bridge, addresses `10.<a>.<b>.N/24`."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        taken = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, timeout=30).stdout
        while True:  # 10.200-249.x.0/24: private, one no route of this host uses yet
            rnd = secrets.randbelow(50 * 250)
            self.subnet = f"10.{200 + rnd % 50}.{rnd // 50 + 1}"
            if f"{self.subnet}." not in taken:
                break
        self.hub = f"fm{self.tag}-hub"
        self.root_link = f"fm{self.tag}"  # the harness's veth in the root namespace (15 characters at most)
        self.members: dict[str, str] = {}  # name -> address
        self.namespaces: list[str] = []
        self._ns(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        _ip("link", "add", self.root_link, "type", "veth", "peer", "name", "h1", "netns", self.hub)
        _ip("-n", self.hub, "link", "set", "h1", "master", "br0", "up")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.root_link)
        _ip("link", "set", self.root_link, "up")

    def _ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add(self, name: str) -> str:
        """A new member namespace on the bridge; its address."""
        n = len(self.members) + 2
        ns, address = f"fm{self.tag}-{name}", f"{self.subnet}.{n}"
        self._ns(ns)
        _ip("-n", self.hub, "link", "add", f"h{n}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.hub, "link", "set", f"h{n}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.members[name] = address
        return address

    @property
    def harness(self) -> str:
        """This process's own address on the bridge (where a member reaches the harness)."""
        return f"{self.subnet}.1"

    def exec(self, name: str) -> list[str]:
        """The command prefix that runs a program inside member `name`'s namespace."""
        return ["ip", "netns", "exec", f"fm{self.tag}-{name}"]

    def close(self) -> None:
        """Delete every namespace of the lab (their veths go with them) and the harness's link.
        Stop the processes inside first: a namespace lives on while a process holds it."""
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces.clear()
        subprocess.run(["ip", "link", "del", self.root_link], capture_output=True, timeout=30)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LabServices:
    """The chain (anvil, wall-clock blocks) and the broker (`nats-server -js`) of a job, each in a
    member namespace of `lab` (`chain`, `broker`) on its fixed port; a context manager."""

    def __init__(self, lab: NetLab, store_dir: str | os.PathLike):
        from ..chain.anvil import find_anvil
        from .natsserver import NatsServer, die_with_parent

        self.chain_ip, self.broker_ip = lab.add("chain"), lab.add("broker")
        self.rpc_url = f"http://{self.chain_ip}:8545"
        self.anvil = subprocess.Popen([*lab.exec("chain"), find_anvil() or "anvil", "--host", self.chain_ip, "--port",
                                       "8545", "--chain-id", "31337", "--silent"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.broker = NatsServer(store_dir, port=4222, host=self.broker_ip, prefix=lab.exec("broker"))
        try:
            wait_listening(self.chain_ip, 8545)
            self.broker.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.broker.stop()
        if self.anvil.poll() is None:
            self.anvil.terminate()
            self.anvil.wait(10)

    def __enter__(self) -> LabServices:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_listening(host: str, port: int, timeout: float = 20.0) -> None:
    """Return once something accepts connections on host:port; FedMarketError after `timeout` s."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise FedMarketError(f"nothing listens on {host}:{port} after {timeout}s")
