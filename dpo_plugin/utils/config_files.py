"""Recipes: TRL-style YAML parsed with TRL's own parser, with errors that name the file, the key and the fix."""

from __future__ import annotations

import difflib
from pathlib import Path

from .errors import UserError, one_line


def parse_config(dataclass_types: tuple, argv: list[str], prog: str) -> tuple:
    """`--config recipe.yaml` sets defaults, other `--key value` flags override them (`trl.TrlParser`); returns
    `(parser, *instances)`, one instance per dataclass.

    A missing or unparsable config file and keys no dataclass knows (in the file or on the command line, with the
    nearest known key suggested) are `UserError`s; a field's own validation (`__post_init__`) raises as it does.
    """
    import yaml
    from trl import TrlParser

    parser = TrlParser(dataclass_types, prog=prog)
    if "--config" in argv:
        index = argv.index("--config")
        config = Path(argv[index + 1]) if index + 1 < len(argv) else None
        if config is None or not config.is_file():
            raise UserError(f"--config {config or ''}: no such file (relative paths start at {Path.cwd()}).")
    try:
        *instances, unknown = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except yaml.YAMLError as error:
        raise UserError(f"{config} is not valid YAML: {one_line(error)}") from error
    if unknown:
        raise UserError(unknown_keys_message(unknown, parser))
    return (parser, *instances)


def unknown_keys_message(unknown: list[str], parser) -> str:
    """'unknown key(s) …' naming each, with the nearest key the parser knows where one is close."""
    known = [option[2:] for option in parser._option_string_actions if option.startswith("--")]
    keys = [item[2:].split("=")[0] for item in unknown if item.startswith("--")] or unknown
    described = []
    for key in keys:
        nearest = difflib.get_close_matches(key.replace("-", "_"), known, n=1, cutoff=0.75)
        described.append(f"{key} (did you mean {nearest[0]}?)" if nearest else key)
    return (
        f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(described)}: not a key of this command's recipe "
        f"(`{parser.prog} --help` lists them)."
    )
