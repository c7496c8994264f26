"""Reader for the IDX format of the MNIST files (raw or gzipped).

Layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte), the number of
dimensions, one 4-byte size per dimension, then the data. MNIST images are 3-D
(``0x00000803``: count, rows, cols); labels are 1-D (``0x00000801``).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IdxError", "read_idx", "parse_idx"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IdxError(ValueError):
    """A file is not a valid IDX file (wrong magic number, truncated, or wrong shape)."""


def parse_idx(data: bytes, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Decode IDX bytes. ``ndim`` (1 for labels, 3 for images) is checked when given."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxError(f"{name} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); "
                       "expected e.g. 00000803 for images or 00000801 for labels")
    dims = data[3]
    if ndim is not None and dims != ndim:
        raise IdxError(f"{name} has {dims} dimension(s) but {ndim} were expected "
                       f"({'images' if ndim == 3 else 'labels'} file mixed up?)")
    header = 4 + 4 * dims
    if len(data) < header:
        raise IdxError(f"{name} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxError(f"{name} holds {len(data)} bytes but its header {shape} needs {expected}: "
                       f"the file is {'truncated' if len(data) < expected else 'too long'}; "
                       "delete it and download it again")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw, detected from its first bytes) into a NumPy array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxError(f"{path} is a damaged or truncated gzip file ({exc}); "
                           "delete it and download it again") from None
    return parse_idx(raw, str(path), ndim)
