"""`python -m dpo_plugin.cli <command> ...`, as `accelerate launch -m dpo_plugin.cli train ...` runs it."""

from . import main

main()
