"""Claims: two runs sharing a results directory never compute the same cell at once.

Before a run computes a cell it takes an exclusive, non-blocking ``flock`` on
``.claim-<result file name>`` in the results directory. The kernel grants it to one process at a
time and drops it when that process exits, however it exits, so a crashed or killed run leaves
no claim that blocks others. The holder writes the result (atomically, ``store.write_result``),
then removes the claim file and closes it. A run that gets a claim checks again whether the
result is stored before computing: a claim taken just as another run finished is worth nothing.
"""

from __future__ import annotations

import fcntl
import os

from circuitboard.leaderboard import store

PREFIX = ".claim-"


def claim_path(key: store.Key, results: str) -> str:
    return os.path.join(results, PREFIX + key.filename())


class Claim:
    """A held claim on one cell; ``release`` after its result is written (or it failed)."""

    def __init__(self, key: store.Key, results: str, fd: int) -> None:
        self.key, self.results, self.fd = key, results, fd

    def release(self) -> None:
        if self.fd is None:
            return
        path = claim_path(self.key, self.results)
        try:
            if os.stat(path).st_ino == os.fstat(self.fd).st_ino:  # still our file, not a newer one
                os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the lock, after the file is gone
        self.fd = None


def acquire(key: store.Key, results: str) -> Claim | None:
    """Claim ``key`` for this process, or None if another run holds it or it is stored."""
    os.makedirs(results, exist_ok=True)
    fd = os.open(claim_path(key, results), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    claim = Claim(key, results, fd)
    if store.stored(key, results):  # another run finished it while we looked
        claim.release()
        return None
    return claim
