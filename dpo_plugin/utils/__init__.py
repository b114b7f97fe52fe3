"""Small shared pieces every layer may use, importing nothing else of dpo_plugin: whole-or-nothing writes, the
device to run on, training-curve plots."""
