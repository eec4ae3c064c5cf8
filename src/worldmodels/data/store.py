"""The episode store: one file per episode, memory-mapped, written atomically.

Layout of a store folder::

    manifest.json          what the store holds (kind, env, backend, policy, config)
    episodes/ep_000042.wm  one episode: named arrays (obs, actions, rewards, ...)

An episode file is ``MAGIC``, an 8-byte little-endian header length, a JSON header
(``{"index": 42, "meta": {...}, "arrays": {name: {dtype, shape, offset, crc32}}}``), then each
array's raw bytes at a 64-byte aligned offset. Readers memory-map the arrays, so memory stays
bounded whatever the store's size, and any frame or window is a slice away. Files are written
to a temp file and renamed, so a killed writer leaves either a whole episode or nothing.

The same format holds raw episodes (``kind="episodes"``: obs uint8 (N, 64, 64, 3), actions,
rewards, terminated, truncated) and encoded series (``kind="series"``: mu, logvar, ...).
"""

from __future__ import annotations

import json
import re
import struct
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.utils.io import (
    TMP_SUFFIX,
    atomic_write,
    atomic_write_json,
    read_json,
    remove_stale_temp_files,
)

MAGIC = b"WMEPISO1"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EPISODES_DIR = "episodes"
ALIGN = 64
_NAME = re.compile(r"^ep_(\d{6,})\.wm$")


class StoreError(Exception):
    """A store, manifest or episode file that cannot be used; the message names the file."""


def episode_filename(index: int) -> str:
    return f"ep_{index:06d}.wm"


def _crc(arr: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B")) & 0xFFFFFFFF


def write_episode(path: Path, index: int, arrays: Mapping[str, np.ndarray], meta: dict) -> Path:
    """Write one episode file atomically (temp file + rename)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(
            f"episode arrays differ in length: { {k: len(a) for k, a in arrays.items()} }"
        )
    specs, offset = {}, 0
    for name, arr in arrays.items():
        offset = -(-offset // ALIGN) * ALIGN
        specs[name] = {
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
            "offset": offset,
            "crc32": _crc(arr),
        }
        offset += arr.nbytes
    header = json.dumps({"index": index, "meta": meta, "arrays": specs}).encode()
    start = -(-(len(MAGIC) + 8 + len(header)) // ALIGN) * ALIGN

    def write(f):
        f.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for name, arr in arrays.items():
            f.seek(start + specs[name]["offset"])
            f.write(memoryview(arr).cast("B"))

    return atomic_write(path, write)


class Episode:
    """One episode file, its arrays memory-mapped on first access."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(len(MAGIC) + 8)
                if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
                    raise StoreError(f"{self.path}: not an episode file (bad magic bytes)")
                (hlen,) = struct.unpack("<Q", head[len(MAGIC) :])
                if hlen > 1 << 24 or len(MAGIC) + 8 + hlen > size:
                    raise StoreError(f"{self.path}: truncated or corrupt header")
                header = json.loads(f.read(hlen))
            self.index = int(header["index"])
            self.meta = header["meta"]
            self._specs = header["arrays"]
            self._start = -(-(len(MAGIC) + 8 + hlen) // ALIGN) * ALIGN
            lengths = set()
            for name, spec in self._specs.items():
                nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                if self._start + spec["offset"] + nbytes > size:
                    raise StoreError(
                        f"{self.path}: truncated: array {name!r} needs "
                        f"{self._start + spec['offset'] + nbytes} bytes, file has {size}"
                    )
                lengths.add(spec["shape"][0])
        except StoreError:
            raise
        except OSError as e:
            raise StoreError(f"{self.path}: cannot read episode file: {e}") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise StoreError(f"{self.path}: corrupt episode header: {e}") from None
        if len(lengths) != 1:
            raise StoreError(f"{self.path}: arrays differ in length")
        self.length = lengths.pop()
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def keys(self) -> list[str]:
        return list(self._specs)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, name: str) -> np.ndarray:
        """The named array, memory-mapped read-only (no copy until sliced and used)."""
        if name not in self._arrays:
            if name not in self._specs:
                raise KeyError(f"{self.path}: no array {name!r}; it has {', '.join(self._specs)}")
            spec = self._specs[name]
            self._arrays[name] = np.memmap(
                self.path,
                dtype=np.dtype(spec["dtype"]),
                mode="r",
                offset=self._start + spec["offset"],
                shape=tuple(spec["shape"]),
            )
        return self._arrays[name]

    def array_spec(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """The named array's (shape, dtype), from the header alone."""
        if name not in self._specs:
            raise KeyError(f"{self.path}: no array {name!r}; it has {', '.join(self._specs)}")
        spec = self._specs[name]
        return tuple(spec["shape"]), np.dtype(spec["dtype"])

    def read(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows of the named array (all if ``rows`` is None) read into memory with plain reads.

        Unlike ``episode[name]`` no memory map is kept, so nothing of the file stays resident in
        this process: random access over a whole store keeps memory flat. Rows may come in any
        order and repeat; each run of consecutive rows is read in one call.
        """
        shape, dtype = self.array_spec(name)
        row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        rows = range(shape[0]) if rows is None else np.asarray(rows, np.int64).ravel().tolist()
        if rows and (min(rows) < 0 or max(rows) >= shape[0]):
            raise IndexError(f"{self.path}: rows out of range for {name!r} of length {shape[0]}")
        out = np.empty((len(rows), *shape[1:]), dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        base = self._start + self._specs[name]["offset"]
        with open(self.path, "rb", buffering=0) as f:
            i = 0
            while i < len(rows):
                j = i + 1
                while j < len(rows) and rows[j] == rows[j - 1] + 1:
                    j += 1
                f.seek(base + rows[i] * row_bytes)
                if f.readinto(view[i * row_bytes : j * row_bytes]) != (j - i) * row_bytes:
                    raise StoreError(f"{self.path}: truncated while reading {name!r}")
                i = j
        return out

    def load(self) -> dict[str, np.ndarray]:
        """All arrays copied into memory."""
        return {name: np.array(self[name]) for name in self._specs}

    def verify(self) -> None:
        """Check every array's CRC32 with plain reads (nothing stays mapped); raises
        StoreError naming the file and the array."""
        chunk = bytearray(1 << 22)
        with open(self.path, "rb", buffering=0) as f:
            for name, spec in self._specs.items():
                shape, dtype = self.array_spec(name)
                left = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                f.seek(self._start + spec["offset"])
                crc = 0
                while left:
                    got = f.readinto(memoryview(chunk)[: min(left, len(chunk))])
                    if not got:
                        raise StoreError(f"{self.path}: truncated while checking {name!r}")
                    crc, left = zlib.crc32(memoryview(chunk)[:got], crc), left - got
                if crc & 0xFFFFFFFF != spec["crc32"]:
                    raise StoreError(
                        f"{self.path}: array {name!r} fails its checksum (corrupt data)"
                    )

    def close(self) -> None:
        self._arrays.clear()


# What a stored action means, per env. Doom 2: C's output < -1/3 pressed MOVE_LEFT, > 1/3
# MOVE_RIGHT, else nothing. Doom stores without the field were written before that fix, when
# < -1/3 pressed nothing and the middle band pressed MOVE_LEFT: their actions mean otherwise.
ACTION_ENCODINGS = {"doom": 2}


def check_action_encoding(path: Path, identity: dict) -> None:
    """Refuse a store whose actions were written with an encoding this version does not use."""
    env = identity.get("env")
    if env not in ACTION_ENCODINGS:
        return
    found, wanted = identity.get("action_encoding"), ACTION_ENCODINGS[env]
    if found != wanted:
        written = "none recorded (written before the Doom button fix)" if found is None else found
        raise StoreError(
            f"{path}: {env} actions written with encoding {written}; this version reads "
            f"encoding {wanted} only: collect the episodes again (and encode, train M again)"
        )


class EpisodeStore:
    """Read access to a store folder: ``len(store)`` episodes, ``store[i]`` the i-th episode.

    ``on_error="raise"`` (default) stops at the first bad file with a message naming it;
    ``"skip"`` leaves bad files out with a warning. Open episodes are kept in a small LRU
    cache so that random access over thousands of files stays within the OS's limits.
    ``verify`` (default): the first time an episode is read through this object its
    checksums are checked, so corrupt bytes stop every reader (V, encode, M, dreams) with the
    file named instead of training on them.
    """

    def __init__(
        self,
        path: str | Path,
        on_error: str = "raise",
        cache_size: int = 256,
        verify: bool = True,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"{self.path}: no such store folder")
        self.manifest = load_manifest(self.path)
        self.kind = self.manifest["kind"]
        check_action_encoding(self.path, self.manifest.get("identity", {}))
        self._cache: OrderedDict[int, Episode] = OrderedDict()
        self._cache_size = cache_size
        self.check_on_read = verify
        self._verified: set[int] = set()
        self.files: list[Path] = []
        self.indices: list[int] = []
        lengths = []
        for file, index in scan_episode_files(self.path):
            try:
                ep = Episode(file)
                if ep.index != index:
                    raise StoreError(f"{file}: header says episode {ep.index}, name says {index}")
            except StoreError as e:
                if on_error == "raise":
                    raise
                warnings.warn(f"skipping {e}", stacklevel=2)
                continue
            self.files.append(file)
            self.indices.append(index)
            lengths.append(ep.length)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_steps(self) -> int:
        """Total number of steps (frames) over all episodes."""
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Episode:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"episode {i} out of range for a store of {len(self)}")
        ep = self._cache.pop(i, None) or Episode(self.files[i])
        if self.check_on_read and i not in self._verified:
            ep.verify()  # once per episode and store object: every reader trusts no byte
            self._verified.add(i)
        self._cache[i] = ep
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)[1].close()
        return ep

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def locate(self, step: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map global step numbers to (episode position, step within episode)."""
        step = np.asarray(step, dtype=np.int64)
        if step.size and (step.min() < 0 or step.max() >= self.num_steps):
            raise IndexError(f"step out of range for a store of {self.num_steps} steps")
        ep = np.searchsorted(self.offsets, step, side="right") - 1
        return ep, step - self.offsets[ep]

    def get_frames(self, steps: np.ndarray, key: str = "obs", mmap: bool = True) -> np.ndarray:
        """Gather ``key`` at global step numbers (any order) into one in-memory array.

        ``mmap=False`` reads with plain file reads (``Episode.read``) instead of through the
        episodes' memory maps, so that nothing stays resident: for streaming over a large store.
        """
        steps = np.asarray(steps, dtype=np.int64)
        if not steps.size:
            raise ValueError("no steps requested")
        eps, local = self.locate(steps)
        order = np.argsort(eps, kind="stable")
        out = None
        for sel in np.split(order, np.flatnonzero(np.diff(eps[order])) + 1):
            ep = self[int(eps[sel[0]])]
            rows = ep[key][local[sel]] if mmap else ep.read(key, local[sel])
            if out is None:
                out = np.empty((len(steps), *rows.shape[1:]), dtype=rows.dtype)
            out[sel] = rows
        return out

    def verify(self) -> None:
        for ep in self:
            ep.verify()


def scan_episode_files(path: Path) -> list[tuple[Path, int]]:
    """The episode files of a store, sorted by index; a foreign file is an error naming it."""
    folder = Path(path) / EPISODES_DIR
    if not folder.is_dir():
        return []
    found = []
    for file in folder.iterdir():
        if file.name.startswith(".") and file.name.endswith(TMP_SUFFIX):
            continue  # a half-written episode of a killed writer
        m = _NAME.match(file.name)
        if not m or not file.is_file():
            raise StoreError(f"{file}: unexpected file in an episode store (expected ep_NNNNNN.wm)")
        found.append((file, int(m.group(1))))
    return sorted(found, key=lambda t: t[1])


def load_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.exists():
        raise StoreError(f"{path}: not an episode store (no {MANIFEST})")
    try:
        manifest = read_json(file, "store manifest")
    except ValueError as e:
        raise StoreError(str(e)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != "worldmodels-store":
        raise StoreError(f"{file}: not a worldmodels store manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise StoreError(f"{file}: store format version {manifest.get('version')} is not supported")
    return manifest


def is_store(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).exists()


# where the collecting agent's run was (it moves with the run; ``agent_digest`` says what the
# agent is): kept in a store's identity, not compared
WHEREABOUTS = ("agent",)


def same_identity(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two stores' identities say the same data, wherever their runs are now."""

    def what(identity):
        return {k: v for k, v in identity.items() if k not in WHEREABOUTS}

    return what(a) == what(b)


class StoreWriter:
    """Creates or reopens a store and adds episodes to it, atomically and without duplicates.

    Opening a folder that exists must find either nothing in it or a store whose manifest
    ``identity`` matches (same env, policy, ...): anything else is refused and left untouched.
    """

    def __init__(self, path: str | Path, kind: str, identity: dict[str, Any], extra=None):
        self.path = Path(path)
        self.kind = kind
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path}: exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
            manifest = load_manifest(self.path)  # raises for a folder that is not a store
            if manifest["kind"] != kind or not same_identity(manifest["identity"], identity):
                raise StoreError(
                    f"{self.path}: holds a store ({manifest['kind']}) made with different settings "
                    f"({_difference(manifest['identity'], identity)}); "
                    "choose another folder or the same settings to resume"
                )
            self.manifest = {**manifest, "identity": identity}  # the agent where it is now
        else:
            self.manifest = {
                "format": "worldmodels-store",
                "version": FORMAT_VERSION,
                "kind": kind,
                "identity": identity,
                **(extra or {}),
            }
        try:
            (self.path / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
            self.write_manifest()
        except PermissionError as e:
            raise StoreError(f"{self.path}: cannot write here: {e.strerror}") from None
        remove_stale_temp_files(self.path / EPISODES_DIR)

    @classmethod
    def attach(cls, path: str | Path, kind: str, identity: dict[str, Any]) -> StoreWriter:
        """A writer for one of several processes filling the same store at once (Ray workers).

        The store must exist with this identity; unlike opening it, attaching neither rewrites
        the manifest nor sweeps temp files, which may be other workers' episodes in flight.
        """
        path = Path(path)
        manifest = load_manifest(path)
        if manifest["kind"] != kind or not same_identity(manifest["identity"], identity):
            raise StoreError(
                f"{path}: holds a store made with different settings "
                f"({_difference(manifest['identity'], identity)})"
            )
        writer = cls.__new__(cls)
        writer.path, writer.kind, writer.manifest = path, kind, manifest
        return writer

    def existing_indices(self) -> set[int]:
        return {index for _, index in scan_episode_files(self.path)}

    def add(self, index: int, arrays: Mapping[str, np.ndarray], meta: dict | None = None) -> Path:
        target = self.path / EPISODES_DIR / episode_filename(index)
        if target.exists():
            raise StoreError(f"{target}: episode {index} already exists")
        return write_episode(target, index, arrays, meta or {})

    def write_manifest(self, **updates) -> None:
        self.manifest.update(updates)
        atomic_write_json(self.path / MANIFEST, self.manifest)


def _difference(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [
        f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)
    ]
    return "; ".join(diffs) or "no difference"
