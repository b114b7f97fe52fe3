"""The errors a user causes and can fix: the CLI prints their message, without a traceback, and exits with 2."""


class UserError(ValueError):
    """A mistake in a recipe, a dataset, a model folder or a resume path, or a run the user's settings made diverge;
    the message names the thing and says what to do. A `ValueError`, as a bad argument is."""


class ConfigError(UserError):
    """A config value out of its range or a required key unset: the message names the key and the valid values."""


class NonFiniteTrainingError(UserError, RuntimeError):
    """The loss, the gradients or the weights became NaN, infinite or exploded; the message says where and what to
    do."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (YAML and JSON parsers spread theirs over several)."""
    return " ".join(str(error).split())
