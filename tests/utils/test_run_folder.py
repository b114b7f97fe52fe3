"""One run per output folder (`utils/run_folder.py`): a second run into a folder in use (or a benchmark writing the
same JSON) is one line and exit 2, with nothing of the first run touched; a lock left by a process that died (even
by SIGKILL) is taken over; the lock file goes when the run ends."""

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import cli_error, make_pairs, save_checkpoint, tiny_run, write_splits

from dpo_plugin.cli import main
from dpo_plugin.utils.errors import UserError
from dpo_plugin.utils.run_folder import LOCK_FILE, run_file, run_folder

HOLD = "import sys, time; from dpo_plugin.utils.run_folder import run_file, run_folder\nwith {}:\n"
HOLD += "    print('held', flush=True); time.sleep(120)"


def holder(path, lock="run_folder(sys.argv[1])"):
    """Another process holding `path` as a run would (its output folder, or with `lock` a benchmark's output file),
    until it is killed."""
    script = HOLD.format(lock)
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.mark.parametrize("command", ["train", "online"])
def test_a_second_run_into_a_folder_in_use_is_one_line_and_touches_nothing(command, tmp_path, capsys):
    run = tmp_path / "run"
    process = holder(run)
    try:
        (run / "checkpoint-3").mkdir()  # what the first run has written so far
        before = sorted(path.name for path in run.iterdir())
        argv = tiny_run(
            save_checkpoint(tmp_path / "tiny"), write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4)), run
        )
        if command == "online":
            argv = ["online", *argv[1:], "--reward_funcs", "test_online:a_count", "--rounds", "1"]
        line = cli_error(capsys, argv)
        assert f"{run} is the output folder of a run in progress (pid {process.pid}, started " in line
        assert "wait for it to end, or give another output_dir" in line
        assert sorted(path.name for path in run.iterdir()) == before
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("benchmark", ["speed", "memory", "heads", "sampling", "online"])
def test_a_benchmark_writing_the_json_another_is_writing_is_one_line_and_touches_nothing(benchmark, tmp_path, capsys):
    output = tmp_path / "bench" / "result.json"
    process = holder(output, "run_file(sys.argv[1], 'bench_output')")
    try:
        output.write_text("{}")  # what the first benchmark wrote (it writes once, at its end)
        argv = tiny_run(
            save_checkpoint(tmp_path / "tiny"), write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4)), "unused"
        )[1:]
        if benchmark in ("sampling", "online"):
            argv += ["--reward_funcs", "test_online:a_count"]
        line = cli_error(capsys, ["bench", benchmark, *argv, "--bench_output", str(output)])
        assert f"{output} is the output of a run in progress (pid {process.pid}, started " in line
        assert "wait for it to end, or give another bench_output" in line
        assert output.read_text() == "{}" and sorted(path.name for path in output.parent.iterdir()) == [
            ".result.json.lock",
            "result.json",
        ]
    finally:
        process.kill()
        process.wait()
    with run_file(output, "bench_output"):  # the killed holder's lock is taken over; the lock file goes at the end
        pass
    assert sorted(path.name for path in output.parent.iterdir()) == ["result.json"]


def test_a_lock_left_by_a_killed_process_is_taken_over_and_the_run_leaves_no_lock_file(tmp_path):
    run = tmp_path / "run"
    process = holder(run)
    held = json.loads((run / LOCK_FILE).read_text())
    assert held["pid"] == process.pid and held["started"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / LOCK_FILE).exists()  # SIGKILL left the file; the kernel released the lock
    argv = tiny_run(
        save_checkpoint(tmp_path / "tiny"), write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(4)), run
    )
    main(argv)
    assert (run / "metrics.json").is_file() and not (run / LOCK_FILE).exists()


def test_the_lock_is_released_however_the_block_ends_and_an_empty_new_folder_goes(tmp_path):
    folder = tmp_path / "new"
    with pytest.raises(RuntimeError), run_folder(folder):
        assert (folder / LOCK_FILE).is_file()
        with pytest.raises(UserError, match="output folder of a run in progress"), run_folder(folder):
            pass  # the same process, a second run: the lock is per open file, so it is refused too
        raise RuntimeError("a bad setting, found before anything was written")
    assert not folder.exists()
    with run_folder(folder):
        (folder / "model.safetensors").write_text("weights")
    assert sorted(path.name for path in folder.iterdir()) == ["model.safetensors"]


def test_processes_a_run_launches_work_under_its_lock(tmp_path):
    """`accelerate launch` children inherit the run's environment: they write into the folder their parent holds."""
    folder = tmp_path / "run"
    child = "import sys; from dpo_plugin.utils.run_folder import run_folder\nwith run_folder(sys.argv[1]): print('ok')"
    with run_folder(folder):
        output = subprocess.run([sys.executable, "-c", child, str(folder)], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "ok"
    assert os.environ.get("DPO_PLUGIN_RUN_FOLDER_LOCKED") is None
