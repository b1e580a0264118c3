"""tune/experiment.py before Ray starts: the storage path answers and takes a file, a new
search's name is not an experiment already, and one search at a time holds an experiment.
In-process, no Ray."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from infoprompt.errors import InfoPromptError
from tune import experiment
from tune.experiment import LOCK, SETTINGS, check_storage, experiment_lock


def test_a_local_storage_path_must_take_a_file(tmp_path):
    check_storage(str(tmp_path / "not-yet" / "created"), "x", new=True)  # its parents will do
    assert not (tmp_path / "not-yet").exists()  # a check leaves nothing behind
    (tmp_path / "file").write_text("")
    with pytest.raises(InfoPromptError, match="is under .*/file, which is not a folder"):
        check_storage(str(tmp_path / "file" / "results"), "x", new=True)
    if Path("/sys/kernel").is_dir():  # sysfs takes no new file, not even from root
        with pytest.raises(InfoPromptError, match="/sys/results cannot be written"):
            check_storage("/sys/results", "x", new=True)


@pytest.mark.parametrize("uri", [False, True], ids=["local", "file-uri"])
def test_a_new_search_refuses_a_name_that_is_an_experiment(tmp_path, uri):
    storage = f"file://{tmp_path}" if uri else str(tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(InfoPromptError, match=r"--name old: .*/old already holds an "
                                              r"experiment \(tuner.pkl\); pick another --name"):
        check_storage(storage, "old", new=True)
    check_storage(storage, "old", new=False)  # --resume: that is the point
    # Settings saved by a search stopped before Ray wrote any state: nothing to resume.
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / SETTINGS).write_text("{}")
    check_storage(storage, "early", new=True)
    assert not list(tmp_path.glob(".infoprompt-write-probe-*"))  # the URI probe cleaned up


def test_a_storage_uri_that_never_answers_is_refused_at_the_deadline(monkeypatch):
    """An endpoint that accepts connections and never answers: pyarrow's S3 client would
    wait for minutes (and, in a thread, held up the exit); the probe process is killed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setattr(experiment, "PROBE_TIMEOUT_S", 3.0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    port = server.getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(InfoPromptError, match=r"cannot be reached or written \(no answer "
                                                  r"in 3 s\)"):
            check_storage(f"s3://bucket/results?endpoint_override=127.0.0.1:{port}"
                          "&scheme=http&region=us-east-1", "x", new=True)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert time.monotonic() - started < 15
    assert accepted, "the probe never reached the endpoint"


def test_one_search_at_a_time_holds_an_experiment(tmp_path):
    with experiment_lock(str(tmp_path), "exp", new=True):
        assert (tmp_path / "exp" / LOCK).exists()
        for new in (True, False):  # a second search, or a resume of this one
            with pytest.raises(InfoPromptError, match=f"experiment {tmp_path}/exp is in use by "
                                                      "another search"):
                with experiment_lock(str(tmp_path), "exp", new=new):
                    pass
    # Released; and the folder it made is gone again, since nothing else was written there.
    assert not (tmp_path / "exp").exists()
    with experiment_lock(str(tmp_path), "exp", new=True):
        (tmp_path / "exp" / "tuner.pkl").write_bytes(b"")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [LOCK, "tuner.pkl"]
    # Under the lock a new search sees an experiment that another search finished meanwhile.
    with pytest.raises(InfoPromptError, match="already holds an experiment"):
        with experiment_lock(str(tmp_path), "exp", new=True):
            pass


def test_a_cloud_experiment_is_locked_on_this_machine_by_its_uri():
    storage = f"s3://bucket/{time.time_ns()}"
    with experiment_lock(storage, "exp", new=True):
        with pytest.raises(InfoPromptError, match=f"experiment {storage}/exp is in use"):
            with experiment_lock(storage, "exp", new=False):
                pass
        with experiment_lock(storage, "other", new=True):  # another experiment: its own lock
            pass
