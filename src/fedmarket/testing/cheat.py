"""Run a role process with a cheating class from `fedmarket.testing.adversary` in place of the
honest role it subclasses, from outside the product:

    python -m fedmarket.testing.cheat ShiftyAggregator aggregator run --job 0 ...

The named class replaces `Aggregator`, `Validator` or `Provider` in the process module that
drives it; everything else (the command line, the loop, the journal) is the product's own."""

from __future__ import annotations

import sys

from ..processes import aggregator, provider, validator
from . import adversary


def install(name: str) -> type:
    """Put the adversary class `name` in the place of the honest role it subclasses."""
    cls = getattr(adversary, name, None)
    if not isinstance(cls, type):
        raise SystemExit(f"no adversary class named {name!r} in fedmarket.testing.adversary")
    for module, base in ((aggregator, "Aggregator"), (validator, "Validator"), (provider, "Provider")):
        if issubclass(cls, getattr(module, base)):
            setattr(module, base, cls)
            return cls
    raise SystemExit(f"{name} is not an Aggregator, Validator or Provider")


if __name__ == "__main__":
    from ..cli import main

    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
