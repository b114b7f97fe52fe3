"""`dpo-plugin assets [--model gemma-3-270m]`: fetch the offline model and data into the cache."""

import argparse

from ..data.assets import GEMMA3_NAME, ensure_assets, gemma3_path


def assets(argv: list[str]) -> None:
    """Fetch the offline model and data into the cache (done automatically on first use, too); with `--model
    gemma-3-270m`, also the optional large-vocabulary model (Gemma Terms of Use)."""
    parser = argparse.ArgumentParser(prog="dpo-plugin assets", description=assets.__doc__)
    parser.add_argument(
        "--model",
        action="append",
        choices=[GEMMA3_NAME],
        default=[],
        help="An optional model to fetch too: gemma-3-270m (268M parameters, vocabulary 262,144; Gemma Terms of "
        "Use, https://ai.google.dev/gemma/terms), for the large-vocabulary memory benchmark.",
    )
    options = parser.parse_args(argv)
    fetched = ensure_assets()
    if GEMMA3_NAME in options.model:
        fetched[GEMMA3_NAME] = gemma3_path()
    for name, path in fetched.items():
        print(f"{name:<20} {path}")
