"""An output directory that a failed, empty or interrupted run never destroys.

Why: ``pfndiff triage -o OUT`` used to write into OUT as it went, so a run that died half-way (or
found nothing because of a typo) left a mix of old and new files, and a later ``--join`` read it.
Here the new outputs are assembled in a hidden directory inside OUT (same file system, skipped by
every reader of artifact directories) and swapped in entry by entry only when complete; until
then OUT keeps the previous run whole.  Entries of OUT that the run does not own (artifacts,
other files) are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

INTERRUPTED = "interrupted"
_SCRATCH = re.compile(r"^\.(?:new|old)-(\d+)-")


def _sweep(out: str) -> None:
    """Remove scratch directories of runs that were killed outright (their process is gone)."""
    for name in os.listdir(out):
        m = _SCRATCH.match(name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        except OSError:
            pass                        # alive (another user's): leave it


class OutputDir:
    def __init__(self, out: str, owned: tuple[str, ...]) -> None:
        """``owned``: the entry names a run writes (all replaced together on commit, the last
        one last: it marks the set as complete)."""
        self.out, self.owned = out, owned
        os.makedirs(out, exist_ok=True)
        _sweep(out)
        self.dir = tempfile.mkdtemp(prefix=f".new-{os.getpid()}-", dir=out)

    def commit(self) -> None:
        """Replace the previous run's entries with this run's."""
        old = tempfile.mkdtemp(prefix=f".old-{os.getpid()}-", dir=self.out)
        try:
            for name in self.owned:
                src, dst = os.path.join(self.dir, name), os.path.join(self.out, name)
                if os.path.isdir(dst) and not os.path.islink(dst):
                    os.rename(dst, os.path.join(old, name))             # a directory cannot be replaced in one step
                if os.path.lexists(src):
                    os.replace(src, dst)                                # a file is replaced atomically
                elif os.path.lexists(dst):
                    os.rename(dst, os.path.join(old, name))             # the old run's, not this run's
        finally:
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)

    def keep_partial(self) -> str:
        """An interrupted run: its finished work goes to ``OUT/interrupted`` (replacing an earlier
        interrupted run's), the previous complete run stays in OUT.  Returns the directory."""
        dest = os.path.join(self.out, INTERRUPTED)
        if os.path.lexists(dest):
            gone = tempfile.mkdtemp(prefix=f".old-{os.getpid()}-", dir=self.out)
            os.rename(dest, os.path.join(gone, INTERRUPTED))
            shutil.rmtree(gone, ignore_errors=True)
        os.rename(self.dir, dest)
        return dest

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
