"""Writers never delete data dvl_dask did not write; readers say what a location holds instead."""

from __future__ import annotations

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
    ResultExistsError,
    ResultNotFoundError,
    SchemaError,
)
from dvl_dask.results import open_result, to_zarr, valuation_dataset
from dvl_dask.results._stores import STALE_AFTER, temporary_sibling
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


def test_stale_temporaries_of_killed_writes_are_cleaned_by_the_next_write(tmp_path) -> None:
    target = str(tmp_path / "r.zarr")
    dead = temporary_sibling(target).rsplit("-", 2)[0] + f"-{_dead_pid()}-0123abcd"
    os.makedirs(os.path.join(dead, "value"))
    legacy_old = f"{target}.tmp-89abcdef"  # an older version's name, untouched for long
    os.makedirs(legacy_old)
    past = time.time() - STALE_AFTER - 10
    os.utime(legacy_old, (past, past))
    alive = temporary_sibling(target).rsplit("-", 2)[0] + f"-{os.getppid()}-4567cdef"  # a write in progress
    os.makedirs(alive)
    recent_legacy = f"{target}.tmp-fedcba98"  # maybe another machine writing now
    os.makedirs(recent_legacy)
    unrelated = f"{target}.tmp-notes"  # not our name pattern
    os.makedirs(unrelated)
    to_zarr(_result(), target)
    left = sorted(os.listdir(tmp_path))
    assert os.path.basename(dead) not in left and os.path.basename(legacy_old) not in left
    for kept in (alive, recent_legacy, unrelated):
        assert os.path.basename(kept) in left
    assert open_result(target)["value"].values.tolist() == [0.1, -0.2, 0.3]


def test_temporary_names_identify_host_and_process(tmp_path) -> None:
    name = os.path.basename(temporary_sibling(str(tmp_path / "r.zarr")))
    assert f"-{os.getpid()}-" in name
    assert name.startswith("r.zarr.tmp-") and socket.gethostname()[:3].replace(".", "_") in name


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
