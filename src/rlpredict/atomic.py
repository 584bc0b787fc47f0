"""Atomic outputs: every file and dir is written under a hidden name and renamed when complete.

A write goes to ``.{name}.tmp-{pid}`` next to its target (a file keeps its suffix at the
end, ``.fig.png.tmp-42.png``, for writers that choose the format from it) and is renamed
onto the target only when it is complete. On any error the temporary is removed and an
existing target is left as it was, so an interrupted write never leaves a file or dir that
looks finished. :func:`atomic_output_file` and :func:`atomic_output_dir` are the one way
the package writes its outputs; ``rlpredict.checkpoints`` re-exports them.

This module imports nothing heavy (no torch, no pandas): the workflow uses it while it
parses the Snakefile.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def check_output_path(out: str | Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """Refuse an output path that is, contains or lies inside one of ``inputs``.

    Both sides are resolved (relative paths, ``..`` and symlinks) before comparing, so a link to
    an input counts as that input. Writing such an output would replace or change the input.

    Raises:
        ValueError: naming the output and the input it would overwrite.
    """
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source:
            problem = f"{what} must differ from the input {given} (it is the same path)"
        elif target.is_relative_to(source):
            problem = f"{what} must not lie inside the input {given}"
        elif source.is_relative_to(target):
            problem = f"{what} must not contain the input {given}"
        else:
            continue
        raise ValueError(f"{out}: {problem}; writing it would destroy or change that input")


def temporary_path(target: Path, keep_suffix: bool = False) -> Path:
    """The hidden name ``.{name}.tmp-{pid}`` next to ``target`` that a write goes to first.

    With ``keep_suffix`` the target's suffix is repeated at the end (``.a.png.tmp-42.png``),
    for writers that pick the format from it (matplotlib's ``savefig``).
    """
    suffix = target.suffix if keep_suffix else ""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}{suffix}")


def remove_path(path: Path) -> None:
    """Remove the file, link or dir tree at ``path``; nothing happens if there is none."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``, replacing whatever is there.

    A file replaces a file in one atomic rename (``os.replace``). A rename cannot replace an
    existing target with a dir, so that target is first renamed aside (``.{name}.old-{pid}``)
    and removed once ``tmp`` is in place; if that rename fails, the old target is put back.

    Raises:
        OSError: from the renames (e.g. a file onto an existing dir); ``tmp`` is left as it is.
    """
    if not (tmp.is_dir() and (target.exists() or target.is_symlink())):
        tmp.replace(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    remove_path(old)
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    remove_path(old)


@contextmanager
def _atomic_output(target: Path, inputs: Iterable[str | Path], is_dir: bool) -> Iterator[Path]:
    """The core of both helpers: check, make the parent, yield the temporary, commit or clean."""
    check_output_path(target, inputs, "output dir" if is_dir else "output file")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target, keep_suffix=not is_dir)
    remove_path(tmp)  # a leftover of a killed process with the same pid
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        commit(tmp, target)
    except BaseException:
        remove_path(tmp)
        raise


@contextmanager
def atomic_output_dir(out_dir: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a hidden tmp dir next to out_dir; rename it to out_dir on success, remove on error.

    An existing out_dir is replaced only once the new one is complete.

    Raises:
        ValueError: before anything is written, when out_dir is, contains or lies inside an
            input.
    """
    with _atomic_output(Path(out_dir), inputs, is_dir=True) as tmp:
        yield tmp


@contextmanager
def atomic_output_file(path: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a hidden tmp file path next to ``path``; renamed to it on success, removed on error.

    Nothing exists at the yielded path yet; it ends in ``path``'s suffix.

    Raises:
        ValueError: before anything is written, when path is, contains or lies inside an input.
    """
    with _atomic_output(Path(path), inputs, is_dir=False) as tmp:
        yield tmp


def atomic_write_text(path: str | Path, text: str, encoding: str | None = None) -> None:
    """Write ``text`` to ``path`` atomically (``Path.write_text`` under a temporary name)."""
    with atomic_output_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
