"""`dpo-plugin assets`: fetch the offline model and data into the cache."""

import argparse

from ..data.assets import ensure_assets


def assets(argv: list[str]) -> None:
    """Fetch the offline model and data into the cache (done automatically on first use, too)."""
    argparse.ArgumentParser(prog="dpo-plugin assets", description=assets.__doc__).parse_args(argv)
    for name, path in ensure_assets().items():
        print(f"{name:<20} {path}")
