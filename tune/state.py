"""Tune's saved state in a sweep's folder: checked whole before a resume, and a whole copy kept to fall back on.

Tune rewrites its experiment state, its searcher's state and its search generator's state in place, at most every
2 s (``tune.sweep``). A full disk cuts such a rewrite off and leaves the file damaged; Tune, given it, would start
the experiment over. So while a sweep runs, its progress callback keeps a copy of each file whenever it is whole
(``keep_whole_copies``, at most every ``COPY_EVERY_S``), written atomically beside it under ``.state-copies/``; and
``check_tune_state`` puts that copy back over a damaged file, saying so, or refuses the folder in one line.
"""

from __future__ import annotations

import json
import logging
import pickletools
from collections.abc import Callable, Iterator

import pyarrow.fs as pafs

from genre_sweep.errors import one_line
from genre_sweep.store import StoreError, StoreOptions, filesystem, join, write_bytes
from genre_sweep.tune.configs import RetrainConfig, SweepError

log = logging.getLogger(__name__)

COPIES = ".state-copies"
COPY_EVERY_S = 5.0


def _whole_pickle(data: bytes) -> None:
    """A pickle read to its end without running it (unpickling the searcher would reconnect to its study, and
    create an empty one where a lost head's study is about to be restored)."""
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    if not ops or ops[-1] != "STOP":
        raise ValueError("the pickle ends before its STOP")


def _experiment_state(data: bytes) -> None:
    state = json.loads(data)
    if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
        raise ValueError("no trial_data list")


# Tune's files, by the start of their names, and how each is known to be whole.
STATE_FILES: tuple[tuple[str, Callable[[bytes], None]], ...] = (
    ("experiment_state-", _experiment_state),
    ("searcher-state-", _whole_pickle),
    ("search_gen_state-", _whole_pickle),  # a pickle, whatever its name says
)


def _newest(files: list[pafs.FileInfo], prefix: str) -> pafs.FileInfo | None:
    """The file Tune restores from: the newest by name (its name holds its session's start)."""
    return max((f for f in files if f.base_name.startswith(prefix)), key=lambda f: f.base_name, default=None)


def _current(fs: pafs.FileSystem, root: str) -> Iterator[tuple[pafs.FileInfo, Callable[[bytes], None]]]:
    """Each of Tune's state files ``root`` holds, the newest of its kind, with its check."""
    files = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for prefix, parse in STATE_FILES:
        newest = _newest(files, prefix)
        if newest is not None:
            yield newest, parse


def _whole(fs: pafs.FileSystem, path: str, parse: Callable[[bytes], None]) -> bytes | Exception:
    """The file's bytes when it is whole, else why not (raises OSError when it cannot be read)."""
    with fs.open_input_stream(path) as f:
        data = f.read()
    try:
        parse(data)
    except Exception as e:  # noqa: BLE001 (JSON, pickle and shape errors alike: the file is not whole)
        return e
    return data


def keep_whole_copies(root: str, options: StoreOptions) -> None:
    """Copy each of Tune's newest state files in ``root`` that is whole now to ``root/.state-copies/`` (atomic);
    a file caught mid-rewrite, or a store that fails, is skipped until the next call."""
    try:
        fs, path = filesystem(root, options)
        for newest, parse in _current(fs, path):
            data = _whole(fs, newest.path, parse)
            if isinstance(data, bytes):
                write_bytes(fs, join(path, COPIES, newest.base_name), data)
    except OSError as e:
        log.debug("could not copy Tune's state in %s: %s", root, e)


def check_tune_state(cfg: RetrainConfig, action: str) -> None:
    """Tune's newest state files in ``cfg.root`` are whole; a damaged one (a full disk, a write cut off) is replaced
    by its last whole copy, with a warning, or, without one, is one line naming it, where Tune would silently start
    the experiment over."""
    fs, root = filesystem(cfg.root, cfg.options)
    try:
        for newest, parse in _current(fs, root):
            damaged = _whole(fs, newest.path, parse)
            if isinstance(damaged, bytes):
                continue
            copy = join(root, COPIES, newest.base_name)
            if fs.get_file_info(copy).type == pafs.FileType.File:
                whole = _whole(fs, copy, parse)
                if isinstance(whole, bytes):
                    write_bytes(fs, newest.path, whole)
                    log.warning(
                        "%s: Tune's state %s was cut off (%s); its last whole copy is put back: a few seconds of "
                        "progress may run again",
                        action,
                        join(cfg.root, newest.base_name),
                        one_line(damaged),
                    )
                    continue
            raise SweepError(
                f"{action}: Tune's state {join(cfg.root, newest.base_name)} is damaged ({type(damaged).__name__}: "
                f"{one_line(damaged)}) and no whole copy of it is kept; the sweep cannot resume from it (restore "
                "the file, or start a sweep of another name)"
            )
    except OSError as e:
        raise StoreError(f"{action}: cannot read Tune's state in {cfg.root}: {one_line(e)}") from e
