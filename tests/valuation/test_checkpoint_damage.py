"""Damaged checkpoints: every kind of damage gives CheckpointCorruptError naming the block and the
recovery, never values; truncate_checkpoint recovers; a second writer is refused (local and S3)."""

from __future__ import annotations

import json
import os
import time

import dask
import numpy as np
import pytest

from dvl_dask.errors import (
    CheckpointCorruptError,
    CheckpointInUseError,
    CheckpointMismatchError,
    DvlDaskError,
    InvalidParameterError,
    NotAResultError,
)
from dvl_dask.results import Checkpoint, truncate_checkpoint
from dvl_dask.testing.games import AirportGame
from dvl_dask.valuation import MaxEvaluations, MinUpdates, load_checkpoint, permutation_shapley, run_until_converged

GAME = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0])
KW = dict(seed=13, items_per_block=3, progress=False)
#: every merged block commits at once: one commit record per block
EVERY_BLOCK = {"dvl_dask.valuation.montecarlo.checkpoint-interval": 0.0}


def _partial(ck, storage_options=None):
    """A checkpoint of 6 committed blocks (one commit each: one block in flight, a commit per merge)."""
    with dask.config.set(EVERY_BLOCK):
        run_until_converged(permutation_shapley, GAME, stop=MinUpdates(18), checkpoint=ck,
                            storage_options=storage_options, window=1, **KW)
    assert load_checkpoint(ck, storage_options=storage_options).attrs["n_blocks"] == 6


@pytest.fixture(scope="module")
def reference():
    return run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), **KW)


class Local:
    def __init__(self, root):
        self.root = root

    def path(self, key):
        return os.path.join(self.root, key)

    def delete(self, key):
        os.remove(self.path(key))

    def read(self, key):
        with open(self.path(key), "rb") as f:
            return f.read()

    def write(self, key, data):
        with open(self.path(key), "wb") as f:
            f.write(data)


def _truncate(files, key):
    files.write(key, files.read(key)[: len(files.read(key)) // 2])


def _flip(files, key):
    data = bytearray(files.read(key))
    data[len(data) // 2] ^= 0xFF
    files.write(key, bytes(data))


#: (damage, what it does, the block the error names, the blocks truncate keeps)
DAMAGE = {
    "missing stats chunk": (lambda f: f.delete("stats/c/2/0/0/0"), 2),
    "missing evaluations chunk": (lambda f: f.delete("evaluations/c/3"), 3),
    "truncated chunk": (lambda f: _truncate(f, "stats/c/4/0/0/0"), 4),
    "altered chunk": (lambda f: _flip(f, "stats/c/1/0/0/0"), 1),
    "deleted commit record": (lambda f: f.delete("commits/00000002.json"), 2),
    "truncated commit record": (lambda f: _truncate(f, "commits/00000003.json"), 3),
    "deleted commit point": (lambda f: f.delete("head.json"), 6),
    "truncated group metadata": (lambda f: _truncate(f, "zarr.json"), None),
    "deleted group metadata": (lambda f: f.delete("zarr.json"), None),
    "deleted array metadata": (lambda f: f.delete("stats/zarr.json"), 6),
    "truncated array metadata": (lambda f: _truncate(f, "evaluations/zarr.json"), 6),
    # issue 25: the advice for a torn head kept 0 blocks, and for n_blocks too high it named a call that failed
    "truncated commit point": (lambda f: _truncate(f, "head.json"), 6),
    "n_blocks too high in the commit point": (lambda f: _edit_head(f, n_blocks=84), 6),
}


def _edit_head(files, **changes):
    files.write("head.json", json.dumps({**json.loads(files.read("head.json")), **changes}).encode())


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_detected_named_and_recoverable(tmp_path, damage, reference):
    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    apply, block = DAMAGE[damage]
    apply(Local(ck))
    for call in (lambda: load_checkpoint(ck),
                 lambda: run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)):
        with pytest.raises(CheckpointCorruptError, match="damaged") as info:
            call()
        assert isinstance(info.value, DvlDaskError) and isinstance(info.value, ValueError)
        assert "truncate_checkpoint" in str(info.value)
        assert info.value.block == block
        if block is not None:  # the call that keeps the good blocks, ready to paste
            assert f"truncate_checkpoint({ck!r}, {block})" in str(info.value)
    keep = 6 if block is None else block
    assert truncate_checkpoint(ck, keep) == keep
    assert load_checkpoint(ck).attrs["n_blocks"] == keep
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)
    np.testing.assert_array_equal(resumed["counts"].values, reference["counts"].values)


def test_truncate_refuses_to_keep_a_damaged_block(tmp_path):
    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    Local(ck).delete("stats/c/2/0/0/0")
    with pytest.raises(CheckpointCorruptError, match="block 2") as info:
        truncate_checkpoint(ck, 5)
    assert info.value.block == 2
    assert truncate_checkpoint(ck, 2) == 2


def test_uncommitted_leftovers_are_ignored_and_overwritten(tmp_path, reference):
    """A crash after writing chunks and a record but before the commit point exposes nothing."""
    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    files = Local(ck)
    head = json.loads(files.read("head.json"))
    files.write("head.json", json.dumps({**head, "n_blocks": 5, "n_commits": 5}).encode())
    _flip(files, "stats/c/5/0/0/0")  # garbage beyond the commit point
    assert load_checkpoint(ck).attrs["n_blocks"] == 5
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)


def test_chunks_stay_readable_by_zarr(tmp_path):
    import zarr

    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    stats, evaluations = Checkpoint.open_existing(ck).read()
    group = zarr.open_group(ck, mode="r")
    np.testing.assert_array_equal(np.asarray(group["stats"][:]), stats)
    np.testing.assert_array_equal(np.asarray(group["evaluations"][:]), evaluations)


# -- commit records name their run and are chained ---------------------------------------------------
def _copy(src, dst, key):
    import shutil

    source, target = os.path.join(src, key), os.path.join(dst, key)
    if os.path.isdir(source):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)


def test_a_checkpoint_spliced_from_another_run_is_refused(tmp_path):
    # issue 25: another run's stats/, evaluations/, commits/ and head.json copied in were resumed silently
    mine, other = str(tmp_path / "mine.zarr"), str(tmp_path / "other.zarr")
    _partial(mine)
    with dask.config.set(EVERY_BLOCK):
        run_until_converged(permutation_shapley, GAME, stop=MinUpdates(18), checkpoint=other, window=1,
                            **{**KW, "seed": 14})
    for key in ("stats", "evaluations", "commits", "head.json"):
        _copy(other, mine, key)
    for call in (lambda: load_checkpoint(mine),
                 lambda: run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=mine, **KW)):
        with pytest.raises(CheckpointCorruptError, match="another run") as info:
            call()
        assert "copied in from another checkpoint" in str(info.value) and info.value.block == 0
        assert "new checkpoint URL" in str(info.value)


def test_one_record_copied_in_from_another_run_is_refused_at_its_block(tmp_path, reference):
    mine, other = str(tmp_path / "mine.zarr"), str(tmp_path / "other.zarr")
    _partial(mine)
    _partial(other)  # the very same run in another folder: same seed and utility, another checkpoint
    for key in ("commits/00000003.json", "stats/c/3/0/0/0", "evaluations/c/3"):
        _copy(other, mine, key)
    with pytest.raises(CheckpointCorruptError, match="commit record 3 names another run") as info:
        load_checkpoint(mine)
    assert info.value.block == 3 and f"truncate_checkpoint({mine!r}, 3)" in str(info.value)
    with pytest.raises(CheckpointCorruptError, match="commit record 3"):
        truncate_checkpoint(mine, 5)
    assert truncate_checkpoint(mine, 3) == 3
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=mine, **KW)
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)


def test_reordered_commit_records_are_refused(tmp_path):
    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    files = Local(ck)
    one, two = files.read("commits/00000001.json"), files.read("commits/00000002.json")
    # swap two records and give each the other's block range: continuity holds, the chain does not
    r1, r2 = json.loads(one), json.loads(two)
    files.write("commits/00000001.json", json.dumps({**r2, "commit": 1, "first": 1, "stop": 2}).encode())
    files.write("commits/00000002.json", json.dumps({**r1, "commit": 2, "first": 2, "stop": 3}).encode())
    with pytest.raises(CheckpointCorruptError, match="commit record 1 does not chain") as info:
        load_checkpoint(ck)
    assert info.value.block == 1


def test_records_name_run_seed_and_blocks(tmp_path):
    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    files = Local(ck)
    header = json.loads(files.read("header.json"))
    records = [json.loads(files.read(f"commits/{i:08d}.json")) for i in range(6)]
    assert [(r["commit"], r["first"], r["stop"]) for r in records] == [(i, i, i + 1) for i in range(6)]
    assert {r["run"]["seed"] for r in records} == {header["seed"]}
    assert {r["run"]["checkpoint_id"] for r in records} == {header["checkpoint_id"]}
    assert records[0]["previous"] is None
    import hashlib

    for i in range(1, 6):
        assert records[i]["previous"] == hashlib.sha256(files.read(f"commits/{i - 1:08d}.json")).hexdigest()


def test_format_2_checkpoint_is_read_but_resuming_says_how_to_start_fresh(tmp_path):
    ck = str(tmp_path / "v2.zarr")
    _partial(ck)
    expected = load_checkpoint(ck)
    files = Local(ck)
    for key in ("zarr.json", "header.json"):
        meta = json.loads(files.read(key))
        attrs = meta.get("attributes", meta)
        attrs["dvl_checkpoint_version"] = 2
        del attrs["checkpoint_id"]
        files.write(key, json.dumps(meta).encode())
    for i in range(6):
        record = json.loads(files.read(f"commits/{i:08d}.json"))
        files.write(f"commits/{i:08d}.json", json.dumps(
            {k: v for k, v in record.items() if k not in ("run", "previous")}).encode())
    _edit_head(files, format=2)
    ds = load_checkpoint(ck)
    np.testing.assert_array_equal(ds["value"].values, expected["value"].values)
    with pytest.raises(CheckpointMismatchError, match=r"format 2.*start fresh"):
        run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    _flip(files, "stats/c/2/0/0/0")  # its checksums are still verified
    with pytest.raises(CheckpointCorruptError, match="block 2"):
        load_checkpoint(ck)


def test_a_user_folder_holding_stats_is_not_called_a_damaged_checkpoint(tmp_path):
    notes = tmp_path / "notes"
    (notes / "stats").mkdir(parents=True)
    (notes / "stats" / "summary.csv").write_text("a,b\n1,2\n")
    (notes / "head.json").write_text('{"title": "my notes"}')
    for call in (lambda: load_checkpoint(str(notes)),
                 lambda: run_until_converged(permutation_shapley, GAME, stop=MinUpdates(3), checkpoint=str(notes),
                                             **KW),
                 lambda: truncate_checkpoint(str(notes), 0)):
        with pytest.raises(NotAResultError, match="not a dvl_dask checkpoint") as info:
            call()
        assert "damaged" not in str(info.value)
    assert sorted(os.listdir(notes)) == ["head.json", "stats"]


def test_a_file_as_checkpoint_is_a_clear_error(tmp_path):
    # issue 25: run_until_converged(checkpoint=<a file>) raised NotADirectoryError
    path = tmp_path / "run.ckpt"
    path.write_text("not a folder")
    # run_until_converged names its argument ('checkpoint' must be a folder); the store functions say what they found
    with pytest.raises(InvalidParameterError, match="'checkpoint' of run_until_converged must be a folder"):
        run_until_converged(permutation_shapley, GAME, stop=MinUpdates(3), checkpoint=str(path), **KW)
    for call in (lambda: load_checkpoint(str(path)), lambda: truncate_checkpoint(str(path), 0)):
        with pytest.raises(NotAResultError, match="is a file"):
            call()
    assert path.read_text() == "not a folder"


def test_ctrl_c_says_how_many_blocks_are_committed_and_that_rerunning_resumes(tmp_path, monkeypatch, reference):
    # issue 25: after Ctrl-C nothing said how many blocks were committed and that rerunning resumes
    from dvl_dask.valuation import _loop

    ck = str(tmp_path / "ck.zarr")
    update = _loop._CompletionBar.update

    def interrupt_at_block_3(self, run, *, refresh=False):
        if run.n_blocks == 3 and not refresh:
            raise KeyboardInterrupt
        return update(self, run, refresh=refresh)

    monkeypatch.setattr(_loop._CompletionBar, "update", interrupt_at_block_3)
    with dask.config.set(EVERY_BLOCK), pytest.raises(KeyboardInterrupt) as info:
        run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, window=1, **KW)
    note = " ".join(getattr(info.value, "__notes__", []))
    assert f"3 blocks are committed to the checkpoint {ck}" in note and "resume" in note
    with dask.config.set(EVERY_BLOCK), pytest.raises(KeyboardInterrupt) as info:
        run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), window=1, **KW)
    assert "no checkpoint was given" in " ".join(getattr(info.value, "__notes__", []))
    monkeypatch.setattr(_loop._CompletionBar, "update", update)
    assert load_checkpoint(ck).attrs["n_blocks"] == 3
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)


# -- the writer lease -------------------------------------------------------------------------------
def _open(ck, storage_options=None):
    header = {"method": "permutation_shapley", "parameters": {"items_per_block": 3}, "utility_token": "t",
              "seed": "1", "n_players": 5, "n_streams": 1}
    return Checkpoint.open(ck, header=header, data_names=np.arange(5), storage_options=storage_options)


def test_second_writer_is_refused_until_the_first_closes(tmp_path):
    ck = str(tmp_path / "lease.zarr")
    first = _open(ck)
    try:
        with pytest.raises(CheckpointInUseError, match="another run") as info:
            _open(ck)
        assert isinstance(info.value, RuntimeError) and f"pid {os.getpid()}" in str(info.value)
        # readers need no lease
        assert load_checkpoint(ck).attrs["n_blocks"] == 0
    finally:
        first.close()
    _open(ck).close()


def test_run_refuses_a_checkpoint_in_use_and_takes_over_a_stale_lease(tmp_path, reference):
    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    files = Local(ck)
    lease = {"writer": "someone-else", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    files.write("lease.json", json.dumps(lease).encode())
    with pytest.raises(CheckpointInUseError, match="elsewhere"):
        run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    files.write("lease.json", json.dumps({**lease, "heartbeat": time.time() - 3600}).encode())
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)
    assert not os.path.exists(files.path("lease.json"))  # released at the end


def _dead_pid():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lease_whose_holder_died_on_this_host_is_taken_over_at_once(tmp_path, reference):
    # issue 25: after a driver was killed, its lease blocked the resume for 60 s
    import socket

    from dvl_dask.results._owners import process_start_time

    ck = str(tmp_path / "ck.zarr")
    _partial(ck)
    files = Local(ck)
    here = {"writer": "killed-driver", "host": socket.gethostname(), "heartbeat": time.time()}
    files.write("lease.json", json.dumps({**here, "pid": _dead_pid(), "started": time.time() - 5}).encode())
    started = time.monotonic()
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    assert time.monotonic() - started < 30  # not the 60 s lease timeout
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)
    # a pid reused by a later process: the holder is dead too
    files.write("lease.json", json.dumps({**here, "pid": os.getppid(), "started": 1.0}).encode())
    run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)
    # a live holder on this host (its true start time), or one whose start time was not recorded: refused
    for holder in ({"pid": os.getppid(), "started": process_start_time(os.getppid())}, {"pid": os.getppid()}):
        files.write("lease.json", json.dumps({**here, **holder}).encode())
        with pytest.raises(CheckpointInUseError, match="another run"):
            run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck, **KW)


def test_a_writer_whose_lease_was_taken_over_stops_writing(tmp_path):
    ck = str(tmp_path / "lease.zarr")
    store = _open(ck)
    try:
        Local(ck).write("lease.json", json.dumps({"writer": "usurper", "host": "h", "pid": 2,
                                                  "heartbeat": time.time()}).encode())
        with pytest.raises(CheckpointInUseError, match="took over"):
            store.append([np.zeros((3, 1, 5))], [4])
    finally:
        store.close()
    assert json.loads(Local(ck).read("lease.json"))["writer"] == "usurper"  # not released: not ours


def test_format_1_checkpoint_is_read_but_not_resumed(tmp_path):
    import zarr

    ck = str(tmp_path / "v1.zarr")
    group = zarr.open_group(ck, mode="w", zarr_format=3)
    stats = np.stack([np.stack([np.full((1, 5), 2.0), np.full((1, 5), 0.5), np.ones((1, 5))])] * 2)
    group.create_array("stats", data=stats, chunks=(1, 3, 1, 5))
    group.create_array("evaluations", data=np.array([10, 10]), chunks=(1024,))
    group.attrs.update({"dvl_checkpoint_version": 1, "method": "permutation_shapley",
                        "parameters": {"items_per_block": 3}, "utility_token": GAME.token, "seed": "13",
                        "n_players": 5, "n_streams": 1, "data_names": list(range(5)), "n_blocks": 2})
    ds = load_checkpoint(ck)
    assert ds.attrs["n_blocks"] == 2 and ds["counts"].values.tolist() == [4] * 5
    with pytest.raises(CheckpointMismatchError, match="format 1"):
        run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(10), checkpoint=ck, **KW)
    group["stats"][1] = np.nan  # what a missing format-1 chunk reads as
    with pytest.raises(CheckpointCorruptError, match="block 1"):
        load_checkpoint(ck)


# -- S3 (moto) --------------------------------------------------------------------------------------
class S3Files:
    def __init__(self, url, options):
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(url, **options)

    def delete(self, key):
        self.fs.rm(f"{self.root}/{key}")

    def read(self, key):
        self.fs.invalidate_cache()
        return self.fs.cat_file(f"{self.root}/{key}")

    def write(self, key, data):
        self.fs.pipe_file(f"{self.root}/{key}", data)


@pytest.mark.s3
@pytest.mark.parametrize("damage", ["missing stats chunk", "truncated chunk", "deleted commit point"])
def test_damage_on_s3(s3_bucket, damage, reference):
    prefix, options = s3_bucket
    ck = f"{prefix}/damage-{damage.replace(' ', '-')}.zarr"
    _partial(ck, options)
    apply, block = DAMAGE[damage]
    apply(S3Files(ck, options))
    with pytest.raises(CheckpointCorruptError, match="truncate_checkpoint") as info:
        load_checkpoint(ck, storage_options=options)
    assert info.value.block == block
    truncate_checkpoint(ck, block, storage_options=options)
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(30), checkpoint=ck,
                                  storage_options=options, **KW)
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)


@pytest.mark.s3
def test_second_writer_on_s3(s3_bucket):
    prefix, options = s3_bucket
    ck = f"{prefix}/lease.zarr"
    first = _open(ck, options)
    try:
        with pytest.raises(CheckpointInUseError):
            _open(ck, options)
    finally:
        first.close()
    _open(ck, options).close()
