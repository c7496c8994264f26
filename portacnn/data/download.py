"""Verified downloads into the cache: each file fetched once, from the first mirror that serves
it with the expected SHA-256, and never left half-written.

MNIST, Fashion-MNIST and CIFAR-10 all download through :func:`fetch`; each names its files
(``{file name: SHA-256}``), its mirrors and what to tell a user who is offline.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

__all__ = ["DataError", "default_cache_dir", "fetch"]


class DataError(RuntimeError):
    """Data could not be found, downloaded or verified."""


def default_cache_dir() -> Path:
    """``$PORTACNN_DATA`` or ``~/.cache/portacnn``; each data set has a folder in it."""
    return Path(os.environ.get("PORTACNN_DATA") or Path.home() / ".cache" / "portacnn")


def fetch(files: dict, mirrors, target: Path, *, title: str, offline_hint: str,
          progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``files`` (``{file name: SHA-256 hex}``) into the folder ``target`` (once) and
    return it.

    Each file is fetched with pooch from the first mirror that serves it with the expected
    SHA-256; pooch writes to a temporary file and renames it only after the hash matched, so an
    interrupted or corrupted download never leaves a file that later loads. Files already in
    ``target`` with the right hash are not fetched again.

    Raises:
        DataError: pooch is missing (``pip install "portacnn[data]"``), no mirror could be
            reached (the message names the files, the first mirror and then ``offline_hint``:
            how to use files fetched by other means), or no mirror served a file with the right
            hash; the message says what each mirror answered. A folder this call created is
            removed again if it stayed empty.
    """
    try:
        import pooch
        import requests
    except ImportError:
        raise DataError(f'downloading {title} needs pooch: pip install "portacnn[data]"') from None
    target = Path(target)
    created = target                   # the outermost folder this call may create
    while not created.parent.exists():
        created = created.parent
    if created.exists():
        created = None
    unreachable = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    for name, sha in files.items():
        failures, offline = [], True
        for mirror in mirrors:
            try:
                pooch.retrieve(mirror.rstrip("/") + "/" + name, known_hash=f"sha256:{sha}",
                               fname=name, path=target, progressbar=progress,
                               downloader=pooch.HTTPDownloader(progressbar=progress,
                                                               timeout=timeout))
                break
            except Exception as exc:   # network errors, HTTP errors, hash mismatch: next mirror
                failures.append(f"{mirror} ({_reason(exc, isinstance(exc, unreachable))})")
                offline = offline and isinstance(exc, unreachable)
        else:
            _remove_if_empty(target, created)
            if offline:
                raise DataError(
                    f"cannot download {title}: the network is unreachable "
                    f"({'; '.join(failures)}). Fetch {', '.join(files)} from {mirrors[0]} on a "
                    f"machine that is online, {offline_hint}")
            raise DataError(f"could not download {name} with SHA-256 {sha[:12]}... from any "
                            f"mirror: {'; '.join(failures)}")
    return target


def _reason(exc: Exception, unreachable: bool) -> str:
    """A short reason for a failed download: the socket error of a connection failure (not
    the whole urllib3 retry story), otherwise the first line of the message, shortened at a
    word boundary."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if unreachable and errno:
        return f"cannot connect: {errno.group(1).strip()}"
    first = text.splitlines()[0] if text else ""
    return textwrap.shorten(f"{type(exc).__name__}: {first}", 160, placeholder=" ...")


def _remove_if_empty(target: Path, created: Path | None) -> None:
    """Remove ``target`` and its parents up to ``created`` (the first folder a download made)
    while they are empty, so a failed download leaves no empty cache directory."""
    if created is None:
        return
    folder = target
    while True:
        try:
            folder.rmdir()             # only succeeds on an empty folder
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent
