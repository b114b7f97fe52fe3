"""`dpo-plugin bench phases` on a tiny checkpoint: every phase of a real step is clocked inside the step's own wall
time, the profiled step's operators are listed, and the wrapped functions are the originals again afterwards."""

import json

from helpers import make_pairs, save_checkpoint, tiny_run, write_splits

from dpo_plugin.cli import main
from dpo_plugin.experiments.bench.phases import PHASES
from dpo_plugin.objectives import chunked_head, reader
from dpo_plugin.training import guards, trainer


def test_phases_bench_clocks_each_phase_of_the_real_step_and_restores_what_it_wrapped(tmp_path):
    originals = (reader.chunked_head, reader.completion_hidden_shared_prompt, trainer.gradients_are_finite)
    originals += (vars(chunked_head._ChunkedHead)["backward"], guards.DivergenceGuard.on_step_end)
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(16), make_pairs(4))
    _, *recipe = tiny_run(checkpoint, data, tmp_path / "unused")
    output = tmp_path / "phases.json"
    bench = ["--bench_objectives", "tdpo2", "--bench_steps", "2", "--bench_output", str(output)]
    main(["bench", "phases", *recipe, *bench])
    result = json.loads(output.read_text())["objectives"]["tdpo2"]
    assert list(result["phases"]) == list(PHASES)
    for phase in PHASES[:-1]:  # a frozen-copy reference, the chunked head, packing: every phase runs
        assert result["phases"][phase]["seconds"] > 0, phase
    assert result["phases"]["other"]["seconds"] >= 0  # the phases lie inside the step's wall time
    operators = [row["operator"] for row in result["top_operators"]]
    assert "aten::mm" in operators and len(operators) == 15
    assert (reader.chunked_head, reader.completion_hidden_shared_prompt, trainer.gradients_are_finite) == originals[:3]
    assert (vars(chunked_head._ChunkedHead)["backward"], guards.DivergenceGuard.on_step_end) == originals[3:]
