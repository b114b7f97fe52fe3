"""Whole-or-nothing writes: `staged_folder` publishes complete folders only, clears stale staging, and lets racing
private writers agree on one result."""

import pytest

from dpo_plugin.utils import atomic
from dpo_plugin.utils.atomic import staged_folder, staging_path


def test_a_staged_folder_appears_whole_when_the_block_ends(tmp_path):
    target = tmp_path / "out"
    with staged_folder(target) as staging:
        (staging / "a.txt").write_text("a")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_leaves_neither_the_target_nor_a_staging_folder(tmp_path):
    target = tmp_path / "out"
    stale = staging_path(target)
    stale.mkdir()
    (stale / "half-written").write_text("x")  # left by a writer that was killed
    with pytest.raises(OSError, match="disk full"), staged_folder(target) as staging:
        assert not (staging / "half-written").exists()  # the stale folder was cleared first
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_into_an_existing_folder_each_entry_is_replaced(tmp_path):
    target = tmp_path / "run"
    (target / "checkpoint-1").mkdir(parents=True)
    (target / "model.safetensors").write_text("old")
    with staged_folder(target) as staging:
        (staging / "model.safetensors").write_text("new")
    assert (target / "model.safetensors").read_text() == "new" and (target / "checkpoint-1").is_dir()


def test_a_private_writer_that_loses_a_race_keeps_the_winners_folder(tmp_path, monkeypatch):
    target = tmp_path / "asset"

    def winner_first(staging, destination):
        destination.mkdir()
        (destination / "file").write_text("winner")
        raise OSError("Directory not empty")  # what os.replace says when another writer published first

    monkeypatch.setattr(atomic, "publish_folder", winner_first)
    with staged_folder(target, private=True) as staging:
        (staging / "file").write_text("loser")
    assert (target / "file").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset"]


def test_only_the_main_process_clears_and_publishes(tmp_path):
    target, waits = tmp_path / "out", []
    staging_path(target).mkdir()  # the main process made it
    with staged_folder(target, main_process=False, barrier=lambda: waits.append(1)) as staging:
        (staging / "rank1.txt").write_text("1")
    assert waits == [1, 1] and not target.exists() and (staging_path(target) / "rank1.txt").exists()
