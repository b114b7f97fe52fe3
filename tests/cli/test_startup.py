"""Start-up and quiet logs: `dpo-plugin --help` and the objective maths import neither TRL nor the experiments; the
CLI hides the library warnings a user cannot act on, by exact message, and `--verbose` shows them."""

import subprocess
import sys

HEAVY = "[m for m in sys.modules if m.split('.')[0] in ('trl', 'transformers', 'datasets', 'peft', 'gymnasium') or m.startswith('dpo_plugin.experiments')]"  # noqa: E501


def fresh_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_help_and_the_maths_load_no_heavy_library():
    help_run = fresh_python(
        "import sys\nfrom dpo_plugin.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
        f"    assert e.code == 0\nprint({HEAVY})"
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "dpo-plugin train --config recipes/quickstart.yaml" in help_run.stdout
    assert help_run.stdout.strip().splitlines()[-1] == "[]"
    maths = fresh_python(
        f"import sys, dpo_plugin, dpo_plugin.objectives.losses, dpo_plugin.objectives.logprobs\nprint({HEAVY})"
    )
    assert maths.stdout.strip() == "[]", maths.stderr


def test_only_the_named_library_warnings_are_hidden():
    code = (
        "import logging, warnings\n"
        "from dpo_plugin.utils.quiet import QUIET_LOG_RECORDS, QUIET_WARNINGS, quiet_library_warnings\n"
        "quiet_library_warnings()\n"
        "for message in QUIET_WARNINGS:\n"
        "    warnings.warn(message, FutureWarning)\n"
        "warnings.warn('`other_option` is deprecated and will be removed in v6.', FutureWarning)\n"
        "for name, prefix in QUIET_LOG_RECORDS.items():\n"
        "    logging.getLogger(name).warning(prefix + ' (the rest of the message)')\n"
        "    logging.getLogger(name).warning(f'another message from {name}')\n"
    )
    stderr = fresh_python(code).stderr
    assert "other_option" in stderr and "another message from bitsandbytes" in stderr
    assert "another message from DeepSpeed" in stderr and "the rest of the message" not in stderr
    assert "gradient_checkpointing" not in stderr


def test_verbose_shows_what_the_cli_hides(tmp_path):
    """A recipe with no dataset fails after the config is built, which is where TRL's config warns."""
    command = ["-m", "dpo_plugin.cli", "train", "--model_name_or_path", "x", "--output_dir", str(tmp_path / "o")]
    command += ["--use_cpu", "true", "--bf16", "false"]
    quiet = subprocess.run([sys.executable, *command], capture_output=True, text=True)
    verbose = subprocess.run([sys.executable, *command, "--verbose"], capture_output=True, text=True)
    assert quiet.returncode == verbose.returncode == 2
    assert "dataset_name is required" in quiet.stderr and "dataset_name is required" in verbose.stderr
    assert "`gradient_checkpointing` is deprecated" not in quiet.stderr
    assert "`gradient_checkpointing` is deprecated" in verbose.stderr
