"""Writing output files safely: atomic single files, whole folders staged and moved into place, and
output paths checked before any work (so a long job never fails at its last step on a bad ``-o``).

Every error is a one-line ValueError that names the path the user gave, never an internal
temporary file. Written files and folders get the ordinary permissions (0666 / 0777 minus the
umask), not the 0600 / 0700 of Python's temporary files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

NAME_MAX = 255  # bytes in one file name on common file systems (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(folder: Path, shown: str) -> None:
    """ValueError unless a file can be created in ``folder`` (tried for real: read-only mounts, ACLs)."""
    if not folder.is_dir():
        raise ValueError(f"{shown}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{shown}: cannot write in folder {folder} ({err.strerror or err})") from None


def _check_name_length(folder: Path, name: str, shown: str) -> None:
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = NAME_MAX
    if len(os.fsencode(name)) > limit:
        raise ValueError(f"{shown}: the file name {name[:40]}… is longer than this file system allows ({limit} bytes)")


def check_output_file(path: str | os.PathLike, make_parents: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written: it is not a folder, and its folder exists
    and is writable (with ``make_parents``: its nearest existing ancestor is, the rest will be
    created). Returns it as a Path."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{path}: is a folder; give a file name")
    parent = p.parent
    if not parent.exists() and not make_parents:
        raise ValueError(f"{path}: folder {parent} does not exist")
    base = parent if parent.exists() else _existing_ancestor(parent)
    _probe_writable(base, str(path))
    _check_name_length(base, p.name, str(path))
    return p


def check_output_folder(folder: str | os.PathLike, names: list[str], overwrite: bool = False) -> Path:
    """Check, before any work, that files ``names`` can be written into ``folder`` (created if missing,
    with its parents): the nearest existing ancestor is a writable folder, no name is too long, and
    unless ``overwrite`` no file of that name exists yet. Returns the folder as a Path."""
    f = Path(folder)
    if f.exists() and not f.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    base = f if f.exists() else _existing_ancestor(f)
    _probe_writable(base, str(folder))
    for name in names:
        _check_name_length(base, name, str(folder))
    if f.exists():
        clash = [n for n in names if os.path.lexists(f / n)]
        folders = [n for n in clash if (f / n).is_dir()]
        if folders:
            raise ValueError(f"{folder}: {folders[0]} exists and is a folder")
        if clash and not overwrite:
            more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
            raise ValueError(f"{folder}: {clash[0]}{more} already exist(s); pass --force to overwrite")
    return f


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its folder) so that a crash at any moment leaves the old
    file or the new one, never a mix; the file gets the ordinary permissions (0666 minus the umask)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as err:
        raise ValueError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ValueError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, names: list[str], overwrite: bool = False):
    """Yield a temporary folder to write the files ``names`` into; on success move them all into
    ``folder`` (a missing folder is created by renaming the temporary one into place), on any error
    remove them, leaving ``folder`` as it was. The checks of :func:`check_output_folder` run first.
    """
    f = check_output_folder(folder, names, overwrite)
    fresh = not f.exists()
    try:
        if fresh:
            f.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=f.parent if fresh else f, prefix=f".{f.name}." if fresh else ".diffcodec-"))
    except OSError as err:
        raise ValueError(f"{folder}: cannot write ({err.strerror or err})") from None
    try:
        yield tmp
        missing = [n for n in names if not (tmp / n).is_file()]
        assert not missing, f"staged folder lacks {missing[:3]}"
        if fresh:
            os.chmod(tmp, 0o777 & ~umask())
            try:
                os.rename(tmp, f)  # atomic; fails if someone created the folder meanwhile
                return
            except OSError:
                f.mkdir(exist_ok=True)
        for n in names:
            if not overwrite and os.path.lexists(f / n):
                raise ValueError(f"{folder}: {n} appeared while decoding; pass --force to overwrite")
        for n in names:
            os.replace(tmp / n, f / n)
    except OSError as err:
        raise ValueError(f"{folder}: cannot write ({err.strerror or err})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
