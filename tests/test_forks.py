"""A fork is noticed without a system call on the push's path (engine.forks), whether or not
the code that forked ran the at-fork hooks: a child never uses its parent's connection, queued
sends or threads, and loses none of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import forks
from engine.forks import ForkWatch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def run(script: str, *args: str) -> str:
    """``script`` in a fresh interpreter (a fork without the hooks leaves a process that only
    a test of its own should be in); its standard output."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("page", [True, False], ids=["page", "pid"])
def test_a_watch_sees_every_child_and_is_reset_in_one(
    page: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not page:  # a kernel without MADV_WIPEONFORK: the pid decides
        monkeypatch.setattr(forks, "_wiped_in_children", lambda: None)
    watch = ForkWatch()
    assert (watch._page is not None) is page or sys.platform != "linux"
    assert not watch.forked()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0 if watch.forked() else 1
        watch.reset()
        code |= 0 if not watch.forked() else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not watch.forked()  # the parent's


# C code forking (ctypes calls libc's fork): Python's at-fork hooks do not run in the child.
HOOKLESS = """
    import ctypes, os, sys
    from engine.forks import ForkWatch
    from engine.stores.sqlite import Outbox
    from tests.test_outbox import make_request

    def child(body):
        pid = ctypes.CDLL(None).fork()
        if pid == 0:
            try:
                code = body()
            except BaseException as error:
                os.write(2, repr(error).encode())
                code = 9
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
"""


def test_a_fork_without_the_hooks_is_seen() -> None:
    out = run(
        HOOKLESS
        + """
    watch = ForkWatch()
    print(child(lambda: 0 if watch.forked() else 1), watch.forked())
    """
    )
    assert out.split() == ["0", "False"]


def test_a_file_outbox_forked_without_the_hooks_reopens(tmp_path: Path) -> None:
    out = run(
        HOOKLESS
        + """
    box = Outbox(sys.argv[1])
    box.put(make_request(1), "s")
    parents = box._conn

    def body():
        box.put(make_request(2), "child")  # on a connection of its own
        return 0 if box._conn is not parents and box.counts()["pending"] == 2 else 1

    print(child(body), box.counts()["pending"])
    box.close()
    """,
        str(tmp_path / "o.db"),
    )
    assert out.split() == ["0", "2"]


def test_a_memory_outbox_forked_without_the_hooks_keeps_its_own_sends_only() -> None:
    """The parent's queued sends stay the parent's (not delivered twice); the child's, queued
    after the fork, are all the child's outbox holds."""
    out = run(
        HOOKLESS
        + """
    box = Outbox()
    box.append_many([(make_request(1), "parent")], now=1.0)  # queued, not yet read in

    def body():
        box.append_many([(make_request(2), "child-a"), (make_request(3), "child-b")], now=2.0)
        claimed = box.claim(limit=10)
        return 0 if [e.request for e in claimed] == [make_request(2), make_request(3)] else 1

    print(child(body), [e.session for e in box.claim(limit=10)])
    """
    )
    assert out.split() == ["0", "['parent']"]
