"""Recipes: TRL-style YAML parsed with TRL's own parser, with errors that name the file, the key and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, UserError, one_line


def parse_config(
    dataclass_types: tuple, argv: list[str], prog: str, passed_on: Callable[[str], bool] | None = None
) -> tuple:
    """`--config recipe.yaml` sets defaults, other `--key value` flags override them (`trl.TrlParser`); returns
    `(parser, *instances)`, one instance per dataclass, and with `passed_on` also the `--key value` strings of the
    keys no dataclass knows but `passed_on(key)` accepts (as `trl dpo` passes such keys on to `accelerate launch`).

    A missing or unparsable config file and keys no dataclass knows (in the file or on the command line, with the
    nearest known key suggested) are `UserError`s, and so is a `ValueError` from a dataclass's own validation
    (`__post_init__`): a `ConfigError` with its message.
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
    except UserError:
        raise
    except ValueError as error:  # a dataclass's own validation, e.g. TrainingArguments' `__post_init__`
        raise ConfigError(one_line(error)) from error
    accepted = _key_value_pairs(unknown, passed_on) if passed_on is not None else []
    rejected = [item for item in unknown if item not in accepted]
    if rejected:
        raise UserError(unknown_keys_message(rejected, parser))
    return (parser, *instances, accepted) if passed_on is not None else (parser, *instances)


def _key_value_pairs(items: list[str], accepts: Callable[[str], bool]) -> list[str]:
    """The `--key [value]` items whose key `accepts` (a key's value is every item up to the next `--key`)."""
    accepted, keep = [], False
    for item in items:
        if item.startswith("--"):
            keep = accepts(item[2:].split("=")[0])
        if keep:
            accepted.append(item)
    return accepted


def unknown_keys_message(unknown: list[str], parser) -> str:
    """'unknown key(s) …' naming each, with the nearest key the parser knows where one is close."""
    known = [option[2:] for option in parser._option_string_actions if option.startswith("--")]
    keys = list(dict.fromkeys(item[2:].split("=")[0] for item in unknown if item.startswith("--"))) or unknown
    described = []
    for key in keys:
        nearest = difflib.get_close_matches(key.replace("-", "_"), known, n=1, cutoff=0.75)
        described.append(f"{key} (did you mean {nearest[0]}?)" if nearest else key)
    return (
        f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(described)}: not a key of this command's recipe "
        f"(`{parser.prog} --help` lists them)."
    )
