"""safetensors files for the torch backend: checkpoints and weight sync.

Part of the torch backend (imported only by backend_torch). Everything written here is
plain safetensors (the tests read it back with the safetensors package) and nothing is
ever unpickled.

Weight sync happens after every optimizer step, so its cost matters:
- safetensors.torch.save_file/load_file build an intermediate bytes object and copy
  again; here tensors go straight between parameter memory and the file.
- A new file in /dev/shm costs the kernel a page allocation and zeroing per 4 KiB on
  top of the copy (~4x a memcpy measured on the 2-core machine). So `export_weights`
  rewrites an existing export file of the same layout in place through a shared
  mapping it keeps, and `import_weights` reads through a mapping it keeps too: a sync
  is then one memcpy into the file and one out of it.
- A rewrite in place is guarded like a seqlock: the header says "write" while data is
  copied and "ready" with a fresh nonce after, and the reader compares the header
  before and after its copy, so a reader never silently mixes two versions.
Headers are validated completely before any parameter is touched, so a corrupt file
leaves the model as it was.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import mmap
import os
import struct
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError, EngineIOError, StateError

ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.bfloat16: "BF16",
             torch.float16: "F16", torch.int64: "I64", torch.int32: "I32",
             torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 100 * 2**20
# Where default weight-sync files go; unset: /dev/shm (memory, no disk I/O).
SYNC_DIR_ENV = "RLENGINE_SHM_DIR"
# Seconds to pause in the middle of every safetensors write: tests kill the engine there.
TEST_WRITE_DELAY_ENV = "RLENGINE_TEST_WRITE_DELAY"
log = logging.getLogger("rlengine")


def corrupt_error(path: str, why: str) -> ConfigError:
    return ConfigError(f"'{path}' is not a valid safetensors file: {why}")


def _u8(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a CPU tensor as a flat uint8 tensor sharing its memory."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _header_bytes(tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    off = 0
    for name, t in tensors:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padding to 8 keeps the data 8-byte aligned, so tensors can be viewed in place.
    return hb + b" " * ((8 - len(hb) % 8) % 8)


def write_safetensors(path: str, tensors: list[tuple[str, torch.Tensor]],
                      metadata: dict[str, str]) -> int:
    """Write a new file atomically (temporary name, then rename); returns its size."""
    hb = _header_bytes(tensors, metadata)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    size = 8 + len(hb)
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            delay = os.environ.get(TEST_WRITE_DELAY_ENV)
            if delay:
                f.flush()
                time.sleep(float(delay))
            for _, t in tensors:
                b = _u8(t.cpu() if t.device.type != "cpu" else t)
                if b.numel():
                    f.write(memoryview(b.numpy()))
                size += b.numel()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size


def parse_header(raw8: bytes, read_header: Any, size: int, path: str) -> tuple[dict, int, bytes]:
    """Parse and check a header; returns (header, data start, header bytes)."""
    if size < 8 or len(raw8) < 8:
        raise corrupt_error(path, f"file is {size} bytes, too short for a header")
    (n,) = struct.unpack("<Q", raw8)
    if n > size - 8 or n > MAX_HEADER:
        raise corrupt_error(path, f"header length {n} exceeds the file size {size}")
    hb = read_header(n)
    try:
        header = json.loads(hb)
    except (ValueError, UnicodeDecodeError) as exc:
        raise corrupt_error(path, f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise corrupt_error(path, "header is not an object")
    data = size - 8 - n
    for name, e in header.items():
        if name == "__metadata__":
            continue
        try:
            b, end = e["data_offsets"]
            shape = [int(s) for s in e["shape"]]
            dt = ST_NAMES[e["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise corrupt_error(path, f"bad entry for tensor '{name}'") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dt).element_size()
        if not (isinstance(b, int) and isinstance(end, int)) or not (0 <= b <= end <= data) \
                or end - b != nbytes:
            raise corrupt_error(path, f"tensor '{name}' lies outside the file (truncated?)")
    return header, 8 + n, hb


def check_safetensors_file(path: str, what: str) -> None:
    """Validate a file's header (cheap) so that a corrupt file is a config error."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            parse_header(f.read(8), f.read, size, path)
    except FileNotFoundError:
        raise ConfigError(f"{what}: file '{path}' does not exist") from None
    except OSError as exc:
        raise EngineIOError(f"{what}: cannot read '{path}': {exc}") from None


def load_safetensors(path: str, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a file, through the safetensors package (never pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    check_safetensors_file(path, what)
    # safetensors (Rust) takes only a UTF-8 path, and a Linux path is any bytes (here a
    # str with surrogate escapes): hand it the file through /proc/self/fd instead.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise EngineIOError(f"{what}: cannot read '{path}': {exc}") from None
    try:
        return load_file(f"/proc/self/fd/{fd}")
    except SafetensorError as exc:
        raise corrupt_error(path, str(exc)) from None
    finally:
        os.close(fd)


def _check_targets(header: dict, targets: dict[str, torch.Tensor], path: str, what: str) -> None:
    names = set(header) - {"__metadata__"}
    missing = sorted(set(targets) - names)
    extra = sorted(names - set(targets))
    if missing or extra:
        raise ConfigError(f"{what}: '{path}' does not match this model: "
                          f"missing {missing[:5]}, unexpected {extra[:5]}")
    for name, t in targets.items():
        shape = [int(s) for s in header[name]["shape"]]
        if list(t.shape) != shape:
            raise ConfigError(f"{what}: '{path}': tensor '{name}' has shape {shape}, "
                              f"the model has {list(t.shape)}")


def _file_view(u8: torch.Tensor, start: int, entry: dict) -> torch.Tensor:
    """A typed view of one tensor inside a mapped file (copied if misaligned)."""
    b, e = entry["data_offsets"]
    dt = ST_NAMES[entry["dtype"]]
    raw = u8[start + b:start + e]
    if (start + b) % torch.empty((), dtype=dt).element_size():
        raw = raw.clone()
    return raw.view(dt).view([int(s) for s in entry["shape"]])


# ---- mapped files for weight sync ------------------------------------------------------

@dataclass
class _Mapping:
    key: tuple[int, int, int]
    mm: mmap.mmap
    u8: torch.Tensor
    writable: bool

    def close(self) -> None:
        self.u8 = None  # type: ignore[assignment]  # release the buffer export first
        try:
            self.mm.close()
        except BufferError:  # a view is still alive somewhere; GC will unmap it
            pass


_MAPS: dict[tuple[str, bool], _Mapping] = {}


def _mapping(path: str, writable: bool) -> _Mapping:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size)
    m = _MAPS.get((path, writable))
    if m is not None and m.key == key:
        return m
    if m is not None:
        m.close()
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)
    with warnings.catch_warnings():
        # A read-only mapping: torch warns that the buffer is not writable; it is
        # only ever read.
        warnings.simplefilter("ignore", UserWarning)
        u8 = torch.frombuffer(mm, dtype=torch.uint8)
    m = _Mapping(key, mm, u8, writable)
    _MAPS[(path, writable)] = m
    return m


def forget(path: str) -> None:
    """Drop the mappings kept for `path` (before removing it, or on close)."""
    for w in (False, True):
        m = _MAPS.pop((path, w), None)
        if m is not None:
            m.close()


def _sync_meta(metadata: dict[str, str], version: int, state: str, nonce: str) -> dict[str, str]:
    # Fixed-width values keep the header the same length across versions, which is
    # what allows rewriting a file in place.
    return {**metadata, "version": f"{version:020d}", "state": state, "nonce": nonce}


def export_weights(path: str, tensors: list[tuple[str, torch.Tensor]],
                   metadata: dict[str, str], version: int) -> int:
    """Write `tensors` to `path`, in place when it already holds the same layout."""
    nonce = uuid.uuid4().hex[:16]
    ready = _header_bytes(tensors, _sync_meta(metadata, version, "ready", nonce))
    writing = _header_bytes(tensors, _sync_meta(metadata, version, "write", nonce))
    template = _header_bytes(tensors, _sync_meta(metadata, 0, "ready", "0" * 16))
    m = None
    if not os.path.isfile(path):
        forget(path)  # a mapping of a removed file would pin its pages
    else:
        try:
            m = _mapping(path, writable=True)
            header, start, hb = parse_header(bytes(m.mm[:8]), lambda n: bytes(m.mm[8:8 + n]),
                                             len(m.mm), path)
            meta = header.get("__metadata__") or {}
            header["__metadata__"] = _sync_meta({k: v for k, v in meta.items()
                                                 if k not in ("version", "state", "nonce")},
                                                0, "ready", "0" * 16)
            same = (len(hb) == len(template) and start + sum(
                t.numel() * t.element_size() for _, t in tensors) == len(m.mm)
                and _header_bytes_from(header, len(hb)) == template)
        except (ConfigError, OSError, ValueError):
            same = False
        if not same:
            forget(path)
            m = None
    if m is None:
        return write_safetensors(path, tensors, _sync_meta(metadata, version, "ready", nonce))
    n = len(ready)
    start = 8 + n
    m.u8[8:start].copy_(torch.frombuffer(bytearray(writing), dtype=torch.uint8))
    off = 0
    with torch.no_grad():
        for _, t in tensors:
            k = t.numel() * t.element_size()
            if (start + off) % t.element_size() == 0:
                m.u8[start + off:start + off + k].view(t.dtype).view(t.shape).copy_(t)
            else:
                m.u8[start + off:start + off + k].copy_(_u8(t.cpu()))
            off += k
    m.u8[8:start].copy_(torch.frombuffer(bytearray(ready), dtype=torch.uint8))
    return len(m.mm)


def _header_bytes_from(header: dict, length: int) -> bytes:
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return hb + b" " * max(0, length - len(hb))


def import_weights(path: str, targets: dict[str, torch.Tensor], what: str) -> dict:
    """Copy the tensors of `path` into `targets` (same names and shapes); returns the
    file's metadata."""
    try:
        m = _mapping(path, writable=False)
    except FileNotFoundError:
        raise ConfigError(f"{what}: file '{path}' does not exist") from None
    except ValueError:  # mmap of an empty file
        raise corrupt_error(path, "file is empty") from None
    except OSError as exc:
        raise EngineIOError(f"{what}: cannot read '{path}': {exc}") from None
    mm = m.mm
    header, start, hb = parse_header(bytes(mm[:8]), lambda n: bytes(mm[8:8 + n]), len(mm), path)
    meta = header.get("__metadata__") or {}
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("state") == "write":
        raise StateError(f"{what}: '{path}' is being written (import after export returns)")
    _check_targets(header, targets, path, what)
    with torch.no_grad():
        for name, t in targets.items():
            t.detach().copy_(_file_view(m.u8, start, header[name]))
    if bytes(mm[8:start]) != hb:
        raise StateError(f"{what}: '{path}' was rewritten while it was read; the weights "
                         f"may mix two versions (import each export before the next one)")
    return meta


def read_safetensors_into(path: str, targets: dict[str, torch.Tensor], what: str) -> dict:
    """Read a file into `targets` without keeping a mapping (checkpoint restore)."""
    try:
        meta = import_weights(path, targets, what)
    finally:
        forget(path)
    return meta


# ---- the default weight-sync file -------------------------------------------------------
#
# Nothing the engine writes to /dev/shm may outlive its owner: a file there holds memory
# until reboot. Every such file is named rlengine-<owner pid>-<random>.safetensors (and
# write_safetensors' temporary, that name + ".tmp-<random>"), a model removes its own on
# close, and every engine start removes those whose owner is no longer running
# (remove_stale_exports), which covers a SIGKILL, the OOM killer or a power cut.

def sync_dir() -> str:
    """The directory for default export files: $RLENGINE_SHM_DIR, else /dev/shm, else the
    system temporary directory (no /dev/shm, or not writable)."""
    env = os.environ.get(SYNC_DIR_ENV)
    if env:
        return env
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def remove_stale_exports(base: str) -> list[str]:
    """Remove export files (finished or half-written) in `base` whose owner process is
    not running; returns the paths removed. A live pid, even a reused one, keeps its
    files: a false keep costs memory until the next start, a false removal a run."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(base), "rlengine-*-*.safetensors*")):
        name = os.path.basename(path)
        if not (name.endswith(".safetensors") or ".safetensors.tmp-" in name):
            continue
        try:
            pid = int(name.split("-")[1])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue
        except PermissionError:  # alive, another user's
            continue
        except ProcessLookupError:
            pass
        try:
            os.unlink(path)
            removed.append(path)
            log.info("removed %s, left by engine process %d that is gone", path, pid)
        except OSError:
            pass
    return removed


_SWEPT: set[str] = set()


def sweep_once(base: str) -> None:
    """remove_stale_exports(base), once per directory per process (engine start)."""
    if base not in _SWEPT:
        _SWEPT.add(base)
        if os.path.isdir(base):
            remove_stale_exports(base)


def sweep_at_start() -> None:
    """At engine start: the stale files of the sync directory and of the fallback."""
    for base in dict.fromkeys((sync_dir(), tempfile.gettempdir())):
        sweep_once(base)


class ExportFile:
    """One model's default weight-sync file, rewritten in place by every export.

    It lives in sync_dir(). When that directory cannot take it (a full /dev/shm: ENOSPC;
    a quota; a missing directory), the export says so once on the log and moves to the
    system temporary directory for good: sync continues, at disk speed, and nothing
    half-written stays behind (write_safetensors removes its temporary file)."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.fallback = False

    def _place(self, base: str) -> str:
        if os.path.isdir(base):  # a long-lived engine: files of engines that died since
            remove_stale_exports(base)
        self.path = os.path.join(base, f"rlengine-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                                       f".safetensors")
        return self.path

    def write(self, tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str],
              version: int) -> tuple[str, int]:
        """Export `tensors`; returns (path, bytes). Raises EngineIOError when even the
        fallback directory cannot take the file."""
        path = self.path or self._place(sync_dir())
        try:
            return path, export_weights(path, tensors, metadata, version)
        except OSError as exc:
            if self.fallback:
                raise EngineIOError(f"export: cannot write '{path}': {exc}") from None
            base = tempfile.gettempdir()
            log.warning("weight sync: cannot write %s (%s); syncing through %s from now on "
                        "(disk instead of memory: slower)", path, exc.strerror or exc, base)
            self.close()
            self.fallback = True
            path = self._place(base)
        try:
            return path, export_weights(path, tensors, metadata, version)
        except OSError as exc:
            raise EngineIOError(f"export: cannot write '{path}': {exc}") from None

    def close(self) -> None:
        """Remove the file (and its kept mapping)."""
        if self.path is None:
            return
        forget(self.path)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("cannot remove export %s", self.path)
        self.path = None
