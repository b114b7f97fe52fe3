"""Recipes: TRL-style YAML parsed with TRL's own parser, with errors that name the file, the key and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, UserError, one_line

MAX_RECIPE_VALUES = 10_000  # a recipe's values with YAML aliases expanded; more is an alias bomb, not a recipe


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
        check_recipe_yaml(config)
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


def check_recipe_yaml(path: Path) -> None:
    """`UserError` for what YAML accepts silently and a recipe must not hold: a key given twice in one mapping (YAML
    keeps the last) and aliases expanding to more than `MAX_RECIPE_VALUES` values; and for a file that is not UTF-8
    text or not YAML."""
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text ({one_line(error)}): save the recipe as UTF-8.") from error
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {one_line(error)}") from error
    expanded: dict[int, int] = {}  # node id -> its values with aliases expanded; an alias is the node it names

    def count(node) -> int:
        if id(node) not in expanded:
            if isinstance(node, yaml.MappingNode):
                lines: dict[str, int] = {}
                for key in (key for key, _ in node.value if isinstance(key, yaml.ScalarNode)):
                    if key.value in lines:
                        raise UserError(
                            f"{path}: key {key.value!r} is given twice (lines {lines[key.value]} and "
                            f"{key.start_mark.line + 1}), and YAML would keep the last silently: keep one."
                        )
                    lines[key.value] = key.start_mark.line + 1
                children = [child for pair in node.value for child in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            expanded[id(node)] = 1 + sum(count(child) for child in children)
            if expanded[id(node)] > MAX_RECIPE_VALUES:
                raise UserError(
                    f"{path}: its YAML aliases expand to more than {MAX_RECIPE_VALUES:,} values, which no recipe "
                    "holds: write the values out."
                )
        return expanded[id(node)]

    if root is not None:
        count(root)


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
