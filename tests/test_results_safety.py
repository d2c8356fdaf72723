"""Writers never delete data dvl_dask did not write; readers say what a location holds instead."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from dvl_dask import influence_to_zarr, open_influence
from dvl_dask.errors import (
    DvlDaskError,
    InvalidParameterError,
    NotAResultError,
    ResultCorruptError,
    ResultExistsError,
    ResultNotFoundError,
    SchemaError,
    StoreAccessError,
)
from dvl_dask.results import open_result, to_zarr, valuation_dataset
from dvl_dask.results._owners import process_start_time
from dvl_dask.results._stores import _HOST, STAGED, STALE_AFTER, TEMPORARY_MARKER, temporary_sibling
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import MinUpdates, load_checkpoint, permutation_shapley, run_until_converged


def _result(values=(0.1, -0.2, 0.3)) -> object:
    return valuation_dataset(
        np.asarray(values, float), np.zeros(3), np.ones(3, dtype=np.int64), data_names=["a", "b", "c"],
        method="mc", utility_token="t0", n_evaluations=10, parameters={"n": 3}, seed="1",
    )


def _tree(path) -> dict[str, bytes]:
    """Every file under ``path`` with its content (to prove nothing changed)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def _notes_dir(tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    (d / "sub").mkdir()
    (d / "sub" / "data.csv").write_text("1,2,3")
    return d


def _other_tool_store(tmp_path):
    path = tmp_path / "other.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["written_by"] = "another tool"
    group.create_array("x", shape=(3,), dtype="f8")[...] = [1.0, 2.0, 3.0]
    return path


def _checkpoint(tmp_path):
    path = str(tmp_path / "run.ckpt")
    run_until_converged(
        permutation_shapley, AdditiveGame([1.0, 2.0, 3.0]), stop=MinUpdates(2), seed=1, checkpoint=path,
        progress=False, items_per_block=2, window=1,
    )
    return tmp_path / "run.ckpt"


def _influence(tmp_path):
    path = tmp_path / "infl.zarr"
    influence_to_zarr(np.arange(12.0).reshape(3, 4), str(path))
    return path


FOREIGN = {
    "directory of other files": _notes_dir,
    "plain file": lambda p: (p / "file.txt").write_text("keep") and p / "file.txt",
    "another tool's zarr store": _other_tool_store,
    "checkpoint": _checkpoint,
}


# -- overwrite=True deletes only what dvl_dask wrote -------------------------------------------------


@pytest.mark.parametrize("what", list(FOREIGN))
@pytest.mark.parametrize("writer", ["to_zarr", "influence_to_zarr"])
def test_overwrite_refuses_data_dvl_dask_did_not_write(tmp_path, what, writer) -> None:
    path = FOREIGN[what](tmp_path)
    before = _tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ResultExistsError) as info:
            if writer == "to_zarr":
                to_zarr(_result(), path, overwrite=overwrite)
            else:
                influence_to_zarr(np.ones((2, 2)), str(path), overwrite=overwrite)
        assert isinstance(info.value, FileExistsError)
    if overwrite:
        assert "never deletes" in str(info.value)
    assert _tree(tmp_path) == before  # contents intact
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_overwrite_replaces_results_dvl_dask_wrote(tmp_path) -> None:
    path = tmp_path / "r.zarr"
    to_zarr(_result(), path)
    with pytest.raises(ResultExistsError, match="overwrite=True"):
        to_zarr(_result((1.0, 2.0, 3.0)), path)
    to_zarr(_result((1.0, 2.0, 3.0)), path, overwrite=True)
    assert open_result(path)["value"].values.tolist() == [1.0, 2.0, 3.0]
    infl = _influence(tmp_path)
    to_zarr(_result(), infl, overwrite=True)  # a dvl_dask influence result may be replaced too
    assert open_result(infl)["value"].values.tolist() == [0.1, -0.2, 0.3]
    influence_to_zarr(np.ones((2, 2)), str(path), overwrite=True)
    np.testing.assert_array_equal(open_influence(str(path)).values, np.ones((2, 2)))


@pytest.mark.parametrize("url", ["", "   ", ".", "file://"])
def test_empty_or_current_directory_is_refused(tmp_path, url, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(InvalidParameterError, match="'url'"):
        to_zarr(_result(), url, overwrite=True)
    with pytest.raises(InvalidParameterError, match="'url'"):
        influence_to_zarr(np.ones((2, 2)), url, overwrite=True)
    with pytest.raises(InvalidParameterError, match="'url'"):
        open_result(url)
    assert os.listdir(tmp_path) == ["precious.txt"]


def test_checkpoint_is_never_written_into_other_data(tmp_path) -> None:
    notes = _notes_dir(tmp_path)
    before = _tree(notes)
    with pytest.raises(NotAResultError, match="not a dvl_dask checkpoint"):
        run_until_converged(
            permutation_shapley, AdditiveGame([1.0, 2.0]), stop=MinUpdates(1), seed=1, checkpoint=str(notes),
            progress=False,
        )
    assert _tree(notes) == before


# -- temporary directories of killed writes -------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _mark_as(path: str, **changes) -> None:
    """Rewrite the marker of a temporary folder (to play a write by another process)."""
    marker_path = os.path.join(path, TEMPORARY_MARKER)
    with open(marker_path) as f:
        marker = json.load(f)
    marker.update(changes)
    with open(marker_path, "w") as f:
        json.dump(marker, f)


def test_user_folders_named_like_temporaries_survive_every_write(tmp_path) -> None:
    # issue 25: a user's folders whose names look like dvl_dask's temporaries were deleted by to_zarr
    target = str(tmp_path / "values.zarr")
    users = [
        f"{target}.old-20240517",
        f"{target}.tmp-deadbeef",
        f"{target}.tmp-{_HOST}-{_dead_pid()}-0123abcd",  # our very name pattern, a dead pid, no marker
    ]
    past = time.time() - 2 * 3600
    for path in users:
        os.makedirs(path)
        with open(os.path.join(path, "notes.txt"), "w") as f:
            f.write("mine")
        os.utime(path, (past, past))
    before = {p: _tree(p) for p in users}
    to_zarr(_result(), target)  # a new target, overwrite=False
    to_zarr(_result((1.0, 2.0, 3.0)), target, overwrite=True)
    assert {p: _tree(p) for p in users} == before
    assert open_result(target)["value"].values.tolist() == [1.0, 2.0, 3.0]
    assert set(os.listdir(tmp_path)) == {"values.zarr", *(os.path.basename(p) for p in users)}


def test_marked_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path) -> None:
    target = str(tmp_path / "r.zarr")
    dead = temporary_sibling(target)
    _mark_as(dead, pid=_dead_pid())
    reused = temporary_sibling(target)  # a live pid (ours) that started at another time: pid reused
    _mark_as(reused, started=time.time() - 86400.0)
    alive = temporary_sibling(target)
    _mark_as(alive, pid=os.getppid(), started=process_start_time(os.getppid()))  # a write in progress
    other_target = temporary_sibling(target)
    _mark_as(other_target, pid=_dead_pid(), target=str(tmp_path / "elsewhere.zarr"))  # not this target's
    far_recent = temporary_sibling(target)
    _mark_as(far_recent, host="another-host", pid=1)  # another machine, writing now
    far_old = temporary_sibling(target)
    _mark_as(far_old, host="another-host", pid=1)
    past = time.time() - STALE_AFTER - 10
    os.utime(far_old, (past, past))
    to_zarr(_result(), target)
    left = set(os.listdir(tmp_path))
    assert not {os.path.basename(p) for p in (dead, reused, far_old)} & left
    assert {os.path.basename(p) for p in (alive, other_target, far_recent)} <= left
    assert open_result(target)["value"].values.tolist() == [0.1, -0.2, 0.3]


def test_an_owner_is_dead_only_when_provably_gone_here() -> None:
    from dvl_dask.results._owners import owner_is_dead, process_owner

    me = process_owner()
    assert not owner_is_dead(me)
    assert owner_is_dead({**me, "pid": _dead_pid()})
    assert owner_is_dead({**me, "started": me["started"] - 3600.0})  # the pid now runs a later process
    assert not owner_is_dead({**me, "pid": _dead_pid(), "host": "another-host"})
    # the same host name in another container or boot: its pids are not the ones visible here
    assert not owner_is_dead({**me, "pid": _dead_pid(), "machine": "another-boot:4026531836"})
    assert owner_is_dead({k: v for k, v in {**me, "pid": _dead_pid()}.items() if k != "machine"})
    assert not owner_is_dead({"host": me["host"], "pid": os.getppid()})  # live, start time unknown
    assert not owner_is_dead(None) and not owner_is_dead({**me, "pid": "12"})


def test_backup_of_an_interrupted_replacement_is_restored_not_deleted(tmp_path) -> None:
    target = str(tmp_path / "r.zarr")
    to_zarr(_result((5.0, 6.0, 7.0)), target)
    backup = temporary_sibling(target, "old")  # killed between moving the result aside and the new one in
    os.replace(target, os.path.join(backup, STAGED))
    _mark_as(backup, pid=_dead_pid())
    with pytest.raises(ResultExistsError):  # the previous result is back, and overwrite=False protects it
        to_zarr(_result(), target)
    assert open_result(target)["value"].values.tolist() == [5.0, 6.0, 7.0]
    assert not os.path.exists(backup)


def test_temporaries_of_a_write_are_removed_and_leave_nothing(tmp_path) -> None:
    target = str(tmp_path / "r.zarr")
    to_zarr(_result(), target)
    to_zarr(_result(), target, overwrite=True)
    assert os.listdir(tmp_path) == ["r.zarr"]
    assert TEMPORARY_MARKER not in os.listdir(target)


def test_read_only_directory_names_the_users_path(tmp_path, monkeypatch) -> None:
    # issue 25: the error named the ".tmp-..." folder instead of the path the user gave
    target = str(tmp_path / "out" / "values.zarr")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(StoreAccessError, match=r"values\.zarr") as info:
        to_zarr(_result(), target)
    assert ".tmp-" not in str(info.value) and "directory" in str(info.value)
    assert isinstance(info.value, PermissionError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_directory_for_real(tmp_path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(StoreAccessError, match=r"values\.zarr"):
            to_zarr(_result(), str(out / "values.zarr"))
    finally:
        out.chmod(0o755)


def test_temporary_names_identify_host_and_process(tmp_path) -> None:
    path = temporary_sibling(str(tmp_path / "r.zarr"))
    name = os.path.basename(path)
    assert f"-{os.getpid()}-" in name
    assert name.startswith("r.zarr.tmp-") and socket.gethostname()[:3].replace(".", "_") in name
    with open(os.path.join(path, TEMPORARY_MARKER)) as f:
        marker = json.load(f)
    assert marker["target"] == str(tmp_path / "r.zarr") and marker["pid"] == os.getpid()
    assert len(marker["id"]) == 32


# -- readers say what is there ----------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [open_result, open_influence])
def test_missing_path_is_result_not_found(tmp_path, reader) -> None:
    with pytest.raises(ResultNotFoundError, match="does not exist") as info:
        reader(str(tmp_path / "missing.zarr"))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DvlDaskError)


@pytest.mark.parametrize(
    ("what", "reader", "hint"),
    [
        ("plain file", open_result, "a file"),
        ("directory of other files", open_result, "a file, a directory"),
        ("another tool's zarr store", open_result, "another tool"),
        ("checkpoint", open_result, "load_checkpoint"),
        ("plain file", open_influence, "a file"),
        ("checkpoint", open_influence, "load_checkpoint"),
        ("another tool's zarr store", open_influence, "another tool"),
    ],
)
def test_readers_name_what_they_found(tmp_path, what, reader, hint) -> None:
    path = FOREIGN[what](tmp_path)
    with pytest.raises(NotAResultError, match=hint) as info:
        reader(str(path))
    assert isinstance(info.value, SchemaError)


def test_empty_directory_and_other_result_kinds(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAResultError, match="empty directory"):
        open_result(tmp_path / "empty")
    with pytest.raises(NotAResultError, match="open_influence"):
        open_result(_influence(tmp_path))
    to_zarr(_result(), tmp_path / "r.zarr")
    with pytest.raises(NotAResultError, match="open_result"):
        open_influence(str(tmp_path / "r.zarr"))
    assert load_checkpoint(str(_checkpoint(tmp_path)))["value"].size == 3  # the reader it recommends


def test_interrupted_write_is_still_reported_as_interrupted(tmp_path) -> None:
    path = tmp_path / "r.zarr"
    to_zarr(_result(), path)
    group = zarr.open_group(str(path), mode="r+")
    del group.attrs["_dvl_complete"]
    with pytest.raises(SchemaError, match="interrupted") as info:
        open_result(path)
    assert not isinstance(info.value, NotAResultError)


def test_zarr_chunks_are_checked(tmp_path) -> None:
    for bad in [(0, 2), (2, -1), (2,), "2,2", (2.0, 2), (True, 2)]:
        with pytest.raises(InvalidParameterError, match="'zarr_chunks'"):
            influence_to_zarr(np.ones((4, 4)), str(tmp_path / "i.zarr"), zarr_chunks=bad)
    assert not (tmp_path / "i.zarr").exists()


# -- influence stores verify every chunk they read ----------------------------------------------------------
INFLUENCE = np.arange(60.0).reshape(6, 10)


def _influence_store(tmp_path, values=INFLUENCE) -> str:
    import dask.array as da

    url = str(tmp_path / "infl.zarr")
    influence_to_zarr(da.from_array(values, chunks=(3, 5)), url, overwrite=True)
    return url


def _chunk(url, i, j) -> str:
    return os.path.join(url, "influence", "c", str(i), str(j))


def _cut(path) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _flip_byte(path) -> None:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize("damage", [os.remove, _cut, _flip_byte], ids=["deleted", "truncated", "altered"])
def test_a_damaged_influence_chunk_raises_naming_the_block(tmp_path, damage) -> None:
    # issue 25: a deleted chunk read as NaN without an error, a truncated one gave a raw Zstd RuntimeError
    url = _influence_store(tmp_path)
    damage(_chunk(url, 1, 0))
    stored = open_influence(url)  # still lazy: nothing is read yet
    with pytest.raises(ResultCorruptError, match=r"block \(1, 0\)") as info:
        stored.values
    message = str(info.value)
    assert "test_sample 3..5" in message and "train_sample 0..4" in message
    assert f"influence_to_zarr(result, {url!r}, repair=True)" in message  # recomputes only what is damaged
    assert isinstance(info.value, DvlDaskError) and info.value.block == (1, 0)
    # the other blocks are still read, each verified on its own
    np.testing.assert_array_equal(stored.isel(test_sample=slice(0, 3)).values, INFLUENCE[:3])


def test_a_block_equal_to_the_fill_value_is_stored_not_taken_for_missing(tmp_path) -> None:
    values = INFLUENCE.copy()
    values[:3, :5] = np.nan  # zarr skips chunks equal to the fill value unless told otherwise
    url = _influence_store(tmp_path, values)
    assert os.path.isfile(_chunk(url, 0, 0))
    np.testing.assert_array_equal(open_influence(url).values, values)


def test_a_complete_store_whose_marker_alone_was_removed_is_verified_and_completed(tmp_path) -> None:
    # issue 25: the advice "run the same write again" then refused the store as "another computation"
    url = _influence_store(tmp_path)
    group = zarr.open_group(url, mode="r+")
    del group.attrs["_dvl_complete"]
    with pytest.raises(SchemaError, match="run the same write again"):
        open_influence(url)
    before = os.path.getmtime(_chunk(url, 0, 0))
    os.remove(_chunk(url, 1, 1))  # and one block lost: rewritten, the others kept
    import dask.array as da

    influence_to_zarr(da.from_array(INFLUENCE, chunks=(3, 5)), url)  # the same write, no overwrite
    np.testing.assert_array_equal(open_influence(url).values, INFLUENCE)
    assert os.path.getmtime(_chunk(url, 0, 0)) == before  # verified, not rewritten
    assert "_dvl_progress" not in os.listdir(url)


# -- a damaged chunk is repaired by recomputing that block alone ----------------------------------------------
UNEVEN = np.random.default_rng(3).normal(size=(7, 10))  # blocks of 3 x 4: the last row and column are smaller


def _counted(computed: list, fail_after: int | None = None):
    """The lazy matrix UNEVEN in (3, 4) blocks, recording each block it computes (after ``fail_after``: raise)."""
    import dask.array as da

    def produce(block, block_info=None):
        where = tuple(block_info[0]["chunk-location"])
        if len(computed) == fail_after:
            raise RuntimeError("worker lost")
        computed.append(where)
        return block

    # a fixed name: the same computation however often it is built (the write's token derives from it)
    return da.from_array(UNEVEN, chunks=(3, 4)).map_blocks(produce, dtype=float, meta=np.empty((0, 0)),
                                                          name="counted-influence")


def _mtimes(url) -> dict:
    folder = os.path.join(url, "influence", "c")
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("block", [(1, 1), (2, 2)], ids=["inner", "edge"])
@pytest.mark.parametrize("damage", [os.remove, _cut, _flip_byte], ids=["deleted", "truncated", "altered"])
def test_repair_recomputes_only_the_damaged_block_bit_identically(tmp_path, damage, block) -> None:
    # issue 25: a damaged chunk of a complete store was only repairable by rewriting the whole array
    import dask

    url, fresh = str(tmp_path / "infl.zarr"), str(tmp_path / "fresh.zarr")
    with dask.config.set(scheduler="sync"):
        influence_to_zarr(_counted([]), url)
        influence_to_zarr(_counted([]), fresh)
        damage(_chunk(url, *block))
        with pytest.raises(ResultCorruptError, match="repair=True"):
            open_influence(url).values
        with pytest.raises(ResultExistsError, match="repair=True"):  # a plain rerun does not touch it
            influence_to_zarr(_counted([]), url)
        before = _mtimes(url)
        computed: list = []
        assert influence_to_zarr(_counted(computed), url, repair=True) == url
    assert computed == [block]  # one block recomputed, one chunk written
    after = _mtimes(url)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert changed == [os.path.join(*map(str, block))]
    repaired = open_influence(url).values
    assert repaired.tobytes() == open_influence(fresh).values.tobytes() == UNEVEN.tobytes()
    with open(_chunk(url, *block), "rb") as a, open(_chunk(fresh, *block), "rb") as b:
        assert a.read() == b.read()  # the chunk itself is bit-identical to a fresh write's
    assert "_dvl_progress" not in os.listdir(url)


def test_repair_of_a_sound_store_recomputes_nothing(tmp_path) -> None:
    url = str(tmp_path / "infl.zarr")
    influence_to_zarr(_counted([]), url)
    before, computed = _mtimes(url), []
    influence_to_zarr(_counted(computed), url, repair=True)
    assert computed == [] and _mtimes(url) == before
    np.testing.assert_array_equal(open_influence(url).values, UNEVEN)


def test_repair_verifies_the_blocks_an_interrupted_write_marked_done(tmp_path) -> None:
    import dask

    url = str(tmp_path / "infl.zarr")
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="worker lost"):
        influence_to_zarr(_counted([], fail_after=4), url)
    written = sorted(tuple(map(int, k.split(os.sep))) for k in _mtimes(url))
    assert len(written) == 4
    _flip_byte(_chunk(url, *written[0]))  # a block marked done, damaged since
    computed: list = []
    with dask.config.set(scheduler="sync"):
        influence_to_zarr(_counted(computed), url, repair=True)
    unwritten = [(i, j) for i in range(3) for j in range(3) if (i, j) not in written]
    # the damaged block and those never written are computed; every other block written earlier is kept
    assert sorted(computed) == sorted([written[0], *unwritten])
    np.testing.assert_array_equal(open_influence(url).values, UNEVEN)


def test_repair_refuses_another_computation_and_contradictory_options(tmp_path) -> None:
    import dask.array as da

    url = str(tmp_path / "infl.zarr")
    influence_to_zarr(_counted([]), url)
    with pytest.raises(ResultExistsError, match="same computation"):
        influence_to_zarr(da.from_array(UNEVEN + 1, chunks=(3, 4)), url, repair=True)
    with pytest.raises(InvalidParameterError, match="repair=True and resume=False"):
        influence_to_zarr(_counted([]), url, repair=True, resume=False)
    with pytest.raises(InvalidParameterError, match="'repair'"):
        influence_to_zarr(_counted([]), url, repair="yes")
    np.testing.assert_array_equal(open_influence(url).values, UNEVEN)  # untouched


# -- credentials of remote stores ---------------------------------------------------------------------------
class NoCredentialsError(Exception):
    """Stands for botocore's exception of that name (matched by name: the client libraries are optional)."""


def test_credential_failures_of_remote_stores_are_explained() -> None:
    from dvl_dask.results._stores import credential_error

    wrapped = RuntimeError("zarr could not list the store")
    wrapped.__cause__ = NoCredentialsError("Unable to locate credentials")
    explained = credential_error(wrapped, "s3://bucket/v.zarr", "open_result")
    assert isinstance(explained, StoreAccessError) and isinstance(explained, PermissionError)
    assert "open_result cannot access s3://bucket/v.zarr: no credentials were found" in str(explained)
    refused = credential_error(PermissionError("InvalidAccessKeyId: the key does not exist"), "s3://b/v", "to_zarr")
    assert "refused the credentials" in str(refused)
    assert credential_error(wrapped, "local/v.zarr", "open_result") is None  # local paths: not credentials
    assert credential_error(ValueError("other"), "s3://b/v", "to_zarr") is None


# -- valuation results verify every chunk they read too ------------------------------------------------------
@pytest.mark.parametrize("fmt", [3, 2])
@pytest.mark.parametrize("damage", [os.remove, _cut, _flip_byte], ids=["deleted", "truncated", "altered"])
def test_a_damaged_result_chunk_raises_naming_the_variable(tmp_path, damage, fmt) -> None:
    import dask

    url = str(tmp_path / "values.zarr")
    with dask.config.set({"dvl_dask.results.zarr-format": fmt}):
        to_zarr(_result(), url)
    chunk = os.path.join(url, "value", "c", "0") if fmt == 3 else os.path.join(url, "value", "0")
    damage(chunk)
    opened = open_result(url)  # lazy
    with pytest.raises(ResultCorruptError, match=r"'value'") as info:
        opened["value"].values
    assert f"to_zarr(result, {url!r}, overwrite=True)" in str(info.value)
    np.testing.assert_array_equal(opened["stderr"].values, np.zeros(3))  # undamaged variables still read


def test_result_chunks_equal_to_the_fill_value_are_stored(tmp_path) -> None:
    url = str(tmp_path / "values.zarr")
    ds = _result((np.nan, np.nan, np.nan))  # every value equals the fill value
    to_zarr(ds, url)
    back = open_result(url)
    assert np.isnan(back["value"].values).all() and back["counts"].values.tolist() == [1, 1, 1]
    assert "_dvl_verified_chunks" not in back.attrs


def test_a_write_begun_with_the_earlier_codec_resumes_with_it_and_reads_verified(tmp_path, monkeypatch) -> None:
    """Stores begun before chunk codecs changed (Zstd, then Blosc LZ4) are resumed and read with their own."""
    import dask
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    import dvl_dask.results._influence_io as influence_io

    url = str(tmp_path / "infl.zarr")
    monkeypatch.setattr(influence_io, "chunk_codecs", lambda: (ZstdCodec(), Crc32cCodec()))
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="worker lost"):
        influence_to_zarr(_counted([], fail_after=4), url)
    monkeypatch.undo()
    computed: list = []
    with dask.config.set(scheduler="sync"):
        influence_to_zarr(_counted(computed), url)
    assert len(computed) == 9 - 4  # the blocks written before were kept
    codecs = [type(c).__name__ for c in zarr.open_group(url, mode="r")["influence"].metadata.codecs]
    assert "ZstdCodec" in codecs and "BloscCodec" not in codecs
    np.testing.assert_array_equal(open_influence(url).values, UNEVEN)
    _flip_byte(_chunk(url, 0, 0))  # still verified by its checksum
    with pytest.raises(ResultCorruptError, match=r"block \(0, 0\)"):
        open_influence(url).values
