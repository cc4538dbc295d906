"""Read blocks straight from a Bitcoin Core data directory's ``blocks/blk*.dat`` files.

Opt-in fast path for users whose node runs on the same machine: the node is asked over RPC only which
hashes form its active chain (and their median time past); the bytes come from the block files with
one ``pread`` per block instead of a REST/RPC round trip. Everything here is read-only and safe while
the node runs:

* files are opened ``O_RDONLY`` and never locked, written or renamed;
* each ``blkNNNNN.dat`` is a sequence of records ``magic(4) | length(4, LE) | block``; Core 28+ XORs
  every byte of the file with the 8-byte key in ``blocks/xor.dat`` (byte at file position ``p`` with
  ``key[p % 8]``); older nodes (and Bitcoin SV) have no ``xor.dat``, which means a zero key;
* blocks are stored in arrival order, not height order, and stale (orphaned) blocks are stored too:
  records are indexed by header hash and only the hashes the node calls active are ever read;
* files are pre-allocated, so a file ends in zero padding, and the newest file may end in a record
  that is still being written: scanning stops there (without raising) and resumes from that offset
  the next time a wanted hash is missing.

Only the header and coinbase of a block are read (one 64 kB ``pread``) when its coinbase has no
witness commitment: consensus then rules out witness bytes anywhere in the block, so its stripped
size is its size and its weight 4 x size (``decode.decode_block_head``). That is every block before
segwit (heights below 481,824 on mainnet) and every later block without segwit spends. A block that
does commit to witness data is read whole: its stripped size and weight need every transaction's
witness length, which only a walk of the whole block gives (in C, well under a millisecond per MB).
A load that records coinbase spends reads whole every block it can check (``read_whole``: the
lookup needs the other transactions; docs/custody.md); ``poolwatch sync --no-spends`` keeps the
head-only reads.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.chain.decode import header_hash
from pipeline.chain.networks import Network
from pipeline.source.base import BlockSource, Located, RawBlock, SourceRecipe

if TYPE_CHECKING:
    from pipeline.source.client import NodeClient

log = logging.getLogger("pipeline.source.blockfiles")

XOR_KEY_FILE = "xor.dat"
XOR_KEY_SIZE = 8
RECORD_PREFIX = 8          # magic + uint32 length
HEADER_SIZE = 80
_BLK_NAME = re.compile(r"^blk(\d{5,})\.dat$")
# Where Core puts each chain's data below -datadir (mainnet uses the datadir itself).
_NETWORK_SUBDIR = {"main": "", "test": "testnet3", "testnet4": "testnet4", "signet": "signet", "regtest": "regtest"}
# Read size when re-synchronising on the magic after a damaged record.
_RESYNC_CHUNK = 1 << 20
_MAX_OPEN_FILES = 32
# First read of a block: header and coinbase fit (coinbases are rarely over a few kB); a longer
# coinbase, or a block with a witness commitment, is read again in full.
HEAD_READ = 64 * 1024


class BlockFileError(RuntimeError):
    """The block files cannot give what was asked (wrong directory, missing block, changed file)."""


@dataclass(frozen=True)
class BlockLocation:
    """Where one block's bytes are: file number of ``blkNNNNN.dat``, offset of the block's first byte
    (just after magic and length) and its length."""

    file_number: int
    offset: int
    length: int


def find_blocks_dir(datadir: Path | str, network: Network) -> Path:
    """The directory holding ``blk*.dat`` for ``network`` given the node's ``-datadir``, the chain's
    own directory (``<datadir>/regtest``) or the blocks directory itself (``-blocksdir``)."""
    root = Path(datadir).expanduser()
    if not root.is_dir():
        raise BlockFileError(f"block files: {root} is not a directory; pass the node's data directory "
                             "(-datadir) or its blocks directory")
    sub = _NETWORK_SUBDIR.get(network.name, network.name)
    candidates = [root / sub / "blocks" if sub else root / "blocks", root / "blocks", root]
    for candidate in candidates:
        if candidate.is_dir() and any(_BLK_NAME.match(p.name) for p in candidate.iterdir()):
            return candidate
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise BlockFileError(f"no blk*.dat files for the {network.name} chain under {root} (looked in {looked}); "
                         "pass the node's -datadir, the chain's directory or its blocks directory")


def read_xor_key(blocks_dir: Path) -> bytes:
    """The 8-byte obfuscation key of Core 28+ (``blocks/xor.dat``); eight zero bytes when absent."""
    path = Path(blocks_dir) / XOR_KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return bytes(XOR_KEY_SIZE)
    if len(key) != XOR_KEY_SIZE:
        raise BlockFileError(f"{path} holds {len(key)} bytes; Bitcoin Core's XOR key file has exactly "
                             f"{XOR_KEY_SIZE}. Is this a Bitcoin Core blocks directory?")
    return key


def xor_into(buf: bytearray, key: bytes, offset: int) -> None:
    """Undo (or apply: XOR is its own inverse) the key, in place, on ``buf`` read from file position
    ``offset``: eight bytes at a time (the key's length), no copy of a block."""
    if not any(key) or not buf:
        return
    shift = offset % len(key)
    rotated = key[shift:] + key[:shift]
    view = np.frombuffer(buf, dtype=np.uint8)
    whole = len(buf) - len(buf) % XOR_KEY_SIZE
    words = view[:whole].view(np.uint64)
    np.bitwise_xor(words, np.frombuffer(rotated, dtype=np.uint64)[0], out=words)
    if whole < len(buf):
        view[whole:] ^= np.frombuffer(rotated, dtype=np.uint8, count=len(buf) - whole)


def xor_at(data: bytes, key: bytes, offset: int) -> bytes:
    """``data`` (read from file position ``offset``) with the key undone, as new bytes."""
    buf = bytearray(data)
    xor_into(buf, key, offset)
    return bytes(buf)


def list_blk_files(blocks_dir: Path) -> dict[int, Path]:
    """File number -> path of every ``blkNNNNN.dat`` in the directory."""
    out: dict[int, Path] = {}
    for path in Path(blocks_dir).iterdir():
        match = _BLK_NAME.match(path.name)
        if match:
            out[int(match.group(1))] = path
    return out


@dataclass(frozen=True)
class _ScanResult:
    records: list[tuple[str, BlockLocation]]
    resume_at: int      # offset where the next scan of this file starts
    complete: bool      # True when the scan ended at zero padding or at end of file


def scan_file(fd: int, file_number: int, size: int, magic: bytes, key: bytes, start: int = 0) -> _ScanResult:
    """Index the records of one open blk file from ``start``: (header hash, location) per record.

    Reads 88 bytes per record (prefix + header) and seeks over the body, so indexing a 128 MiB file
    costs a few hundred small reads. Stops without raising at zero padding, at a record that runs
    past the end of the file (still being written) and at a record whose header is not written yet;
    ``resume_at`` is that record's offset so a later scan picks it up once it is complete.
    """
    records: list[tuple[str, BlockLocation]] = []
    pos = start
    while pos + RECORD_PREFIX + HEADER_SIZE <= size:
        raw = os.pread(fd, RECORD_PREFIX + HEADER_SIZE, pos)
        head = xor_at(raw, key, pos)
        if len(head) < RECORD_PREFIX + HEADER_SIZE:
            break  # the file shrank under us (never done by Core); treat as its end
        if head[:4] != magic:
            # Zero padding is checked on the bytes as stored: Core pre-allocates files with zeros that
            # never went through its XOR stream (after our XOR they would read as the key).
            if not any(raw[:RECORD_PREFIX]):
                # Pre-allocated zeros: the end of the data written so far.
                return _ScanResult(records, pos, complete=True)
            found = _resync(fd, size, magic, key, pos + 1)
            log.warning("blk%05d.dat: no record magic at offset %d (damaged or torn record); %s", file_number,
                        pos, f"skipping to the next magic at {found}" if found is not None else "ignoring the rest")
            if found is None:
                return _ScanResult(records, size, complete=True)
            pos = found
            continue
        (length,) = struct.unpack_from("<I", head, 4)
        body = pos + RECORD_PREFIX
        if length < HEADER_SIZE or body + length > size:
            # Partly written newest record (or a torn one): come back to it later.
            return _ScanResult(records, pos, complete=False)
        header = head[RECORD_PREFIX:]
        if not any(raw[RECORD_PREFIX:]):
            # Magic and length written, header not yet (still pre-allocated zeros on disk): the block is being written right now.
            return _ScanResult(records, pos, complete=False)
        records.append((header_hash(header), BlockLocation(file_number, body, length)))
        pos = body + length
    return _ScanResult(records, pos, complete=pos >= size)


def _resync(fd: int, size: int, magic: bytes, key: bytes, start: int) -> int | None:
    """Offset of the next record magic at or after ``start`` (as Core's -reindex does), or None."""
    pos = start
    while pos < size:
        chunk = xor_at(os.pread(fd, _RESYNC_CHUNK + len(magic) - 1, pos), key, pos)
        if not chunk:
            return None
        found = chunk.find(magic)
        if found >= 0:
            return pos + found
        pos += _RESYNC_CHUNK
    return None


class BlockFileReader:
    """Hash -> location index over a blocks directory plus raw reads; lazy and incremental.

    ``locate`` scans files newest first and stops as soon as every asked hash is known, so a routine
    sync of the last few blocks reads only the last file; a backfill from genesis scans all files once
    (about 90 bytes read per block) and then reads each wanted block with one ``pread``.
    Thread-safe (one lock: the loop's reading thread and its decoding thread may both read); give
    each process its own reader.
    """

    def __init__(self, blocks_dir: Path | str, magic: bytes) -> None:
        self.blocks_dir = Path(blocks_dir)
        if not self.blocks_dir.is_dir():
            raise BlockFileError(f"blocks directory {self.blocks_dir} does not exist")
        self.magic = magic
        self.key = read_xor_key(self.blocks_dir)
        self._index: dict[str, BlockLocation] = {}
        self._resume: dict[int, int] = {}     # file number -> offset the next scan starts at
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.RLock()  # the index, the open files and their LRU eviction

    @classmethod
    def for_datadir(cls, datadir: Path | str, network: Network) -> BlockFileReader:
        return cls(find_blocks_dir(datadir, network), network.magic)

    def __enter__(self) -> BlockFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            while self._fds:
                _, fd = self._fds.popitem()
                os.close(fd)

    def __len__(self) -> int:
        return len(self._index)

    # -- files --------------------------------------------------------------------------------------
    def path(self, file_number: int) -> Path:
        return self.blocks_dir / f"blk{file_number:05d}.dat"

    def _fd(self, file_number: int) -> int:
        fd = self._fds.get(file_number)
        if fd is not None:
            self._fds.move_to_end(file_number)
            return fd
        try:
            fd = os.open(self.path(file_number), os.O_RDONLY)
        except FileNotFoundError:
            raise BlockFileError(f"{self.path(file_number)} has disappeared: did the node prune or reindex? "
                                 "Sync again (the index is rebuilt) or use the RPC source") from None
        self._fds[file_number] = fd
        if len(self._fds) > _MAX_OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    # -- index --------------------------------------------------------------------------------------
    def scan(self, wanted: set[str] | None = None) -> int:
        """Index records not scanned yet, newest file first; stop early once ``wanted`` are all known.
        Returns the number of records added."""
        added = 0
        files = list_blk_files(self.blocks_dir)
        for number in sorted(files, reverse=True):
            if wanted is not None and wanted.issubset(self._index):
                break
            fd = self._fd(number)
            size = os.fstat(fd).st_size
            start = self._resume.get(number, 0)
            if start >= size:
                continue
            result = scan_file(fd, number, size, self.magic, self.key, start)
            for block_hash, location in result.records:
                # A block stored twice (re-downloaded after a crash) has identical bytes: keep the first.
                self._index.setdefault(block_hash, location)
            added += len(result.records)
            self._resume[number] = result.resume_at
        return added

    def locate(self, hashes: Sequence[str]) -> list[BlockLocation]:
        """Locations of ``hashes`` (display hex), scanning only as far as needed."""
        with self._lock:
            return self._locate(hashes)

    def _locate(self, hashes: Sequence[str]) -> list[BlockLocation]:
        wanted = {h.lower() for h in hashes}
        if not wanted.issubset(self._index):
            started = time.monotonic()
            added = self.scan(wanted)
            log.debug("indexed %d block-file records in %.2f s (%d known)", added, time.monotonic() - started,
                      len(self._index))
        missing = [h for h in hashes if h.lower() not in self._index]
        if missing:
            raise BlockFileError(
                f"{len(missing)} active-chain block(s) not found in the block files under {self.blocks_dir}, "
                f"first {missing[0]}: is this the data directory of the same node the RPC talks to, and is "
                "it not pruned below these heights?")
        return [self._index[h.lower()] for h in hashes]

    # -- reads --------------------------------------------------------------------------------------
    def read_raw(self, location: BlockLocation, expected_hash: str | None = None,
                 limit: int | None = None) -> bytearray:
        """The serialized block at ``location`` (its first ``limit`` bytes when given); checks its
        header hashes to ``expected_hash``."""
        length = location.length if limit is None else min(limit, location.length)
        raw = bytearray(length)  # read into, and XORed in place: no copy of the block
        with self._lock:  # the fd must not be evicted and closed by another thread mid-read
            got = os.preadv(self._fd(location.file_number), [raw], location.offset)
        if got != length:
            raise BlockFileError(f"blk{location.file_number:05d}.dat: read {got} of {length} "
                                 f"bytes at offset {location.offset}; the file changed under us")
        xor_into(raw, self.key, location.offset)
        if expected_hash is not None and header_hash(raw) != expected_hash.lower():
            raise BlockFileError(f"blk{location.file_number:05d}.dat offset {location.offset} no longer holds "
                                 f"block {expected_hash} (the node rewrote its block files?); sync again")
        return raw

    def raw_blocks(self, hashes: Sequence[str]) -> list[bytes]:
        """Same shape as ``NodeClient.raw_blocks``: the serialized blocks of ``hashes``, in order."""
        return [self.read_raw(loc, h) for h, loc in zip(hashes, self.locate(hashes), strict=True)]

    def iter_records(self) -> Iterator[tuple[str, BlockLocation]]:
        """Every indexed (hash, location), after scanning all files (stale blocks included)."""
        self.scan()
        yield from self._index.items()


class BlockFileSource(BlockSource):
    """Blocks of the node's active chain (located over RPC), bytes from its block files.

    A block longer than ``HEAD_READ`` is first read as its first ``HEAD_READ`` bytes (header and
    coinbase); the decoder reads the rest (``read_whole``) only when the coinbase commits to witness
    data, the one case where the stripped size and weight need every transaction's bytes.
    """

    kind = "blkfiles"

    def __init__(self, client: NodeClient | None, network: Network, *, datadir: Path | str | None = None,
                 blocks_dir: Path | str | None = None) -> None:
        super().__init__(client, network)
        if blocks_dir is None and datadir is None:
            raise ValueError("the blkfiles source needs the node's data directory (--datadir)")
        directory = Path(blocks_dir) if blocks_dir is not None else find_blocks_dir(datadir or "", network)
        self.reader = BlockFileReader(directory, network.magic)

    def read(self, located: Located, start: int = 0, stop: int | None = None) -> list[RawBlock]:
        hashes = located.hashes[start:stop]
        out = []
        for height, block_hash, mtp, loc in zip(located.heights[start:stop], hashes, located.median_times[start:stop],
                                                self.reader.locate(hashes), strict=True):
            limit = HEAD_READ if loc.length > HEAD_READ else None
            data = self.reader.read_raw(loc, block_hash, limit=limit)
            out.append(RawBlock(height, block_hash, mtp, data, loc.length, _where(loc)))
        return out

    def read_whole(self, raw: RawBlock) -> RawBlock:
        if raw.whole:
            return raw
        loc = self.reader.locate([raw.hash])[0]
        return RawBlock(raw.height, raw.hash, raw.median_time, self.reader.read_raw(loc, raw.hash), loc.length,
                        raw.where)

    def recipe(self) -> SourceRecipe:
        return SourceRecipe(self.kind, getattr(self.client, "config", None), self.network.name,
                            str(self.reader.blocks_dir))

    def clone(self) -> BlockFileSource:
        return BlockFileSource(self._client_clone(), self.network, blocks_dir=self.reader.blocks_dir)

    def close(self) -> None:
        self.reader.close()
        super().close()


def _where(loc: BlockLocation) -> str:
    return f"blk{loc.file_number:05d}.dat offset {loc.offset}"


__all__ = [
    "BlockFileError", "BlockFileReader", "BlockFileSource", "BlockLocation", "find_blocks_dir", "list_blk_files",
    "read_xor_key", "scan_file", "xor_at", "xor_into",
]
