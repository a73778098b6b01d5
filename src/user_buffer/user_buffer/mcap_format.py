"""The MCAP container, written and scanned by hand so the buffer knows where every message lies.

Only the records a rosbag2 bag needs are produced: Header, Schema, Channel, Chunk (holding Message
records), MessageIndex, DataEnd, and the summary (Schema, Channel, Statistics, ChunkIndex,
SummaryOffset) closed by a Footer. Chunks may be compressed (zstd or lz4, as the spec allows); a
message in an uncompressed chunk sits at a known absolute file offset.

The scanner is the other half of crash recovery: it walks a file record by record, checks each
chunk's CRC, and stops at the first record that is cut short or malformed. What it returns is enough
to index the file, to truncate it after its last complete chunk and to write a fresh summary whose
chunk indexes are as complete as a normal close writes them (``check_index`` tells when they are not).
Format reference: https://mcap.dev/spec (records, opcodes and field order).
"""
from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from typing import BinaryIO, Callable

MAGIC = b"\x89MCAP0\r\n"

OP_HEADER = 0x01
OP_FOOTER = 0x02
OP_SCHEMA = 0x03
OP_CHANNEL = 0x04
OP_MESSAGE = 0x05
OP_CHUNK = 0x06
OP_MESSAGE_INDEX = 0x07
OP_CHUNK_INDEX = 0x08
OP_ATTACHMENT = 0x09
OP_ATTACHMENT_INDEX = 0x0A
OP_STATISTICS = 0x0B
OP_METADATA = 0x0C
OP_METADATA_INDEX = 0x0D
OP_SUMMARY_OFFSET = 0x0E
OP_DATA_END = 0x0F
KNOWN_OPS = set(range(0x01, 0x10))

_REC = struct.Struct("<BQ")            # opcode, content length
_MSG_HEAD = struct.Struct("<HIQQ")     # channel id, sequence, log time, publish time
MESSAGE_DATA_SKIP = _REC.size + _MSG_HEAD.size   # record start -> payload
_CHUNK_HEAD = struct.Struct("<QQQI")   # start time, end time, uncompressed size, uncompressed crc

COMPRESSIONS = ("", "zstd", "lz4")


class McapError(ValueError):
    """A file is not valid MCAP, names the file and the offset."""


# -- encoding helpers --------------------------------------------------------------------------------
def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<I", len(b)) + b


def _b32(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _map_ss(d: dict[str, str]) -> bytes:
    body = b"".join(_s(k) + _s(v) for k, v in d.items())
    return _b32(body)


def _record(op: int, content: bytes) -> bytes:
    return _REC.pack(op, len(content)) + content


def compress(data: bytes | memoryview, compression: str) -> bytes | memoryview:
    """A chunk's records as stored: zstd level 1 (about 1 GB/s here) or an LZ4 frame, as MCAP wants."""
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=1).compress(data)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.compress(data)
    raise McapError(f"unsupported chunk compression {compression!r}")


def decompress(data: bytes | memoryview, compression: str, size: int) -> bytes | memoryview:
    """Inflate a chunk's records (``""``, ``"zstd"`` or ``"lz4"``) of ``size`` bytes."""
    if compression == "":
        return data
    try:
        if compression == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        if compression == "lz4":
            import lz4.frame

            return lz4.frame.decompress(data)
    except Exception as exc:  # noqa: BLE001 - zstd and lz4 raise their own error types for bad input
        raise McapError(f"{compression} data does not decompress ({exc})") from None
    raise McapError(f"unsupported chunk compression {compression!r}")


# -- data classes ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Schema:
    id: int
    name: str
    encoding: str
    data: bytes


@dataclasses.dataclass
class Channel:
    id: int
    schema_id: int
    topic: str
    message_encoding: str
    metadata: dict[str, str]


@dataclasses.dataclass
class MessageEntry:
    """Where one message lies; ``offset`` is within the chunk's uncompressed records."""

    channel_id: int
    sequence: int
    log_time: int
    publish_time: int
    offset: int          # of the Message record inside the chunk's records
    data_offset: int     # of the payload inside the chunk's records
    length: int          # payload bytes


@dataclasses.dataclass
class ChunkInfo:
    start: int                 # file offset of the Chunk record
    length: int                # whole record incl. opcode and length
    records_start: int         # file offset of the (possibly compressed) records
    compression: str
    compressed_size: int
    uncompressed_size: int
    start_time: int
    end_time: int
    messages: list[MessageEntry]
    end: int                   # file offset after the chunk's MessageIndex records (those found)
    index_offsets: dict[int, int] = dataclasses.field(default_factory=dict)   # channel -> its MessageIndex

    @property
    def index_length(self) -> int:
        return self.end - (self.start + self.length)

    def indexed(self) -> bool:
        """Every channel with a message in this chunk has its MessageIndex record."""
        return {m.channel_id for m in self.messages} <= self.index_offsets.keys()


@dataclasses.dataclass
class ChunkIndexEntry:
    """One ChunkIndex record of a summary, as written in the file."""

    start_time: int
    end_time: int
    start: int
    length: int
    index_offsets: dict[int, int]
    index_length: int
    compression: str
    compressed_size: int
    uncompressed_size: int


@dataclasses.dataclass
class Summary:
    start: int                          # file offset of the summary section (just after DataEnd)
    schemas: dict[int, Schema]
    channels: dict[int, Channel]
    chunk_indexes: list[ChunkIndexEntry]


@dataclasses.dataclass
class ScanResult:
    path: str
    profile: str
    library: str
    schemas: dict[int, Schema]
    channels: dict[int, Channel]
    chunks: list[ChunkInfo]
    bad_chunks: list[str]          # one line per chunk that failed its CRC or could not be parsed
    valid_end: int                 # offset after the last complete record before any damage
    complete: bool                 # the file ends with a valid summary and footer
    size: int
    problem: str = ""              # why a linear scan stopped early ("" when it reached the summary)


# -- writer ------------------------------------------------------------------------------------------
class McapWriter:
    """Append-only MCAP writer. Messages are buffered into a chunk; ``flush`` writes it out.

    A chunk is closed once its uncompressed records reach ``chunk_bytes`` (and at every ``flush``).
    ``on_chunk(chunk)`` is called after every chunk is written, with absolute offsets filled in.
    """

    def __init__(self, f: BinaryIO, *, profile: str = "ros2", library: str = "user_buffer",
                 chunk_bytes: int = 1 << 20, compression: str = "",
                 on_chunk: Callable[[ChunkInfo], None] | None = None) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        self.f = f
        self.chunk_bytes = chunk_bytes
        self.compression = compression
        self.on_chunk = on_chunk
        self.schemas: dict[int, Schema] = {}
        self.channels: dict[int, Channel] = {}
        self.chunk_index: list[bytes] = []
        self.channel_counts: dict[int, int] = {}
        self.message_count = 0
        self.first_time: int | None = None
        self.last_time = 0
        self._buf = bytearray()
        self._entries: list[MessageEntry] = []
        self.closed = False
        self._write(MAGIC + _record(OP_HEADER, _s(profile) + _s(library)))

    @property
    def position(self) -> int:
        return self.f.tell()

    def _write(self, data: bytes | memoryview) -> None:
        self.f.write(data)

    def add_schema(self, name: str, encoding: str, data: bytes) -> int:
        sid = len(self.schemas) + 1
        self.schemas[sid] = Schema(sid, name, encoding, data)
        self._write(_schema_record(self.schemas[sid]))
        return sid

    def add_channel(self, topic: str, message_encoding: str, schema_id: int, metadata: dict[str, str]) -> int:
        cid = len(self.channels)
        self.channels[cid] = Channel(cid, schema_id, topic, message_encoding, dict(metadata))
        self._write(_channel_record(self.channels[cid]))
        return cid

    def write_message(self, channel_id: int, log_time: int, data: bytes | memoryview,
                      publish_time: int | None = None, sequence: int = 0) -> None:
        if self.closed:
            raise McapError("write after close")
        if channel_id not in self.channels:
            raise McapError(f"unknown channel id {channel_id}")
        publish_time = log_time if publish_time is None else publish_time
        offset = len(self._buf)
        n = len(data)
        self._buf += _REC.pack(OP_MESSAGE, _MSG_HEAD.size + n)
        self._buf += _MSG_HEAD.pack(channel_id, sequence & 0xFFFFFFFF, log_time, publish_time)
        self._buf += data
        self._entries.append(MessageEntry(channel_id, sequence, log_time, publish_time, offset,
                                          offset + MESSAGE_DATA_SKIP, n))
        self.channel_counts[channel_id] = self.channel_counts.get(channel_id, 0) + 1
        self.message_count += 1
        self.first_time = log_time if self.first_time is None else min(self.first_time, log_time)
        self.last_time = max(self.last_time, log_time)
        if len(self._buf) >= self.chunk_bytes:
            self.flush()

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def flush(self) -> ChunkInfo | None:
        """Write the open chunk (if any) and its message indexes; returns where it went."""
        if not self._entries:
            return None
        records = memoryview(self._buf)
        stored = compress(records, self.compression)
        t0 = min(e.log_time for e in self._entries)
        t1 = max(e.log_time for e in self._entries)
        head = (_CHUNK_HEAD.pack(t0, t1, len(records), zlib.crc32(records)) + _s(self.compression)
                + struct.pack("<Q", len(stored)))
        start = self.position
        self._write(_REC.pack(OP_CHUNK, len(head) + len(stored)) + head)
        self._write(stored)   # no copy of the records: written straight from the chunk buffer
        length = _REC.size + len(head) + len(stored)
        info = ChunkInfo(start, length, start + _REC.size + len(head), self.compression, len(stored), len(records),
                         t0, t1, self._entries, start + length)
        self._write(message_indexes(info))
        self.chunk_index.append(chunk_index_record(info))
        del records, stored
        self._buf = bytearray()
        self._entries = []
        self.f.flush()   # hand the chunk to the OS: readers may pread it as soon as on_chunk returns
        if self.on_chunk is not None:
            self.on_chunk(info)
        return info

    def sync(self) -> None:
        """Flush the open chunk, then make everything written so far durable (fsync)."""
        self.flush()
        self.f.flush()
        os.fsync(self.f.fileno())

    def fileno(self) -> int:
        return self.f.fileno()

    def close(self) -> None:
        """Write the last chunk, DataEnd, the summary and the footer."""
        if self.closed:
            return
        self.flush()
        self._write(_DATA_END)
        write_summary(self.f, self.schemas, self.channels, self.chunk_index, self.message_count,
                      self.channel_counts, self.first_time or 0, self.last_time)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.closed = True


def _schema_record(s: Schema) -> bytes:
    return _record(OP_SCHEMA, struct.pack("<H", s.id) + _s(s.name) + _s(s.encoding) + _b32(s.data))


def _channel_record(c: Channel) -> bytes:
    return _record(OP_CHANNEL, struct.pack("<HH", c.id, c.schema_id) + _s(c.topic) + _s(c.message_encoding)
                   + _map_ss(c.metadata))


_DATA_END = _record(OP_DATA_END, struct.pack("<I", 0))   # 0: data-section CRC not computed (chunks have theirs)


def message_indexes(ch: ChunkInfo) -> bytes:
    """The MessageIndex records (one per channel) that follow chunk ``ch`` in the file.

    Sets ``ch.index_offsets`` and ``ch.end`` to where they go: right after the chunk, where indexed
    readers look for them (they read ``message_index_length`` bytes from the first offset)."""
    by_channel: dict[int, list[MessageEntry]] = {}
    for e in ch.messages:
        by_channel.setdefault(e.channel_id, []).append(e)
    out = bytearray()
    at = ch.start + ch.length
    ch.index_offsets = {}
    for cid, entries in sorted(by_channel.items()):
        ch.index_offsets[cid] = at + len(out)
        body = b"".join(struct.pack("<QQ", e.log_time, e.offset) for e in entries)
        out += _record(OP_MESSAGE_INDEX, struct.pack("<H", cid) + _b32(body))
    ch.end = at + len(out)
    return bytes(out)


def chunk_index_record(ch: ChunkInfo) -> bytes:
    """The summary's ChunkIndex record of ``ch``, naming its MessageIndex records."""
    off_map = b"".join(struct.pack("<HQ", c, o) for c, o in sorted(ch.index_offsets.items()))
    return _record(OP_CHUNK_INDEX, struct.pack("<QQQQ", ch.start_time, ch.end_time, ch.start, ch.length)
                   + _b32(off_map) + struct.pack("<Q", ch.index_length) + _s(ch.compression)
                   + struct.pack("<QQ", ch.compressed_size, ch.uncompressed_size))


def write_summary(f: BinaryIO, schemas: dict[int, Schema], channels: dict[int, Channel],
                  chunk_index: list[bytes], message_count: int, channel_counts: dict[int, int],
                  first_time: int, last_time: int) -> None:
    """Summary section, summary offsets and footer, written at the current position of ``f``."""
    summary_start = f.tell()
    out = io.BytesIO()
    groups: list[tuple[int, int, int]] = []

    def group(op: int, records: list[bytes]) -> None:
        if records:
            start = summary_start + out.tell()
            for r in records:
                out.write(r)
            groups.append((op, start, summary_start + out.tell() - start))

    group(OP_SCHEMA, [_schema_record(s) for s in schemas.values()])
    group(OP_CHANNEL, [_channel_record(c) for c in channels.values()])
    counts = b"".join(struct.pack("<HQ", c, n) for c, n in sorted(channel_counts.items()))
    stats = struct.pack("<QHIIIIQQ", message_count, len(schemas), len(channels), 0, 0, len(chunk_index),
                        first_time, last_time) + _b32(counts)
    group(OP_STATISTICS, [_record(OP_STATISTICS, stats)])
    group(OP_CHUNK_INDEX, chunk_index)
    offsets_start = summary_start + out.tell()
    for op, start, length in groups:
        out.write(_record(OP_SUMMARY_OFFSET, struct.pack("<BQQ", op, start, length)))
    body = out.getvalue()
    footer_head = _REC.pack(OP_FOOTER, 20) + struct.pack("<QQ", summary_start, offsets_start)
    crc = zlib.crc32(footer_head, zlib.crc32(body))
    f.write(body + footer_head + struct.pack("<I", crc) + MAGIC)


def _write_summary_of(f: BinaryIO, res: ScanResult, chunks: list[ChunkInfo]) -> None:
    """``write_summary`` for the chunks of a scanned file (counts and times taken from them)."""
    counts: dict[int, int] = {}
    times = []
    for ch in chunks:
        for m in ch.messages:
            counts[m.channel_id] = counts.get(m.channel_id, 0) + 1
        if ch.messages:
            times += [ch.start_time, ch.end_time]
    write_summary(f, res.schemas, res.channels, [chunk_index_record(ch) for ch in chunks], sum(counts.values()),
                  counts, min(times, default=0), max(times, default=0))


# -- scanner -----------------------------------------------------------------------------------------
class _Cursor:
    def __init__(self, data: memoryview, pos: int = 0) -> None:
        self.d = data
        self.p = pos

    def take(self, n: int) -> memoryview:
        if n < 0 or self.p + n > len(self.d):
            raise McapError(f"field of {n} bytes at {self.p} runs past the end")
        v = self.d[self.p:self.p + n]
        self.p += n
        return v

    def u(self, fmt: str) -> int:
        st = struct.Struct("<" + fmt)
        return st.unpack(self.take(st.size))[0]

    def s(self) -> str:
        return bytes(self.take(self.u("I"))).decode()

    def b32(self) -> bytes:
        return bytes(self.take(self.u("I")))


def _parse_schema(c: _Cursor) -> Schema:
    return Schema(c.u("H"), c.s(), c.s(), c.b32())


def _parse_channel(c: _Cursor) -> Channel:
    cid, sid = c.u("H"), c.u("H")
    topic, enc = c.s(), c.s()
    m = _Cursor(memoryview(c.b32()))
    meta = {}
    while m.p < len(m.d):
        k = m.s()
        meta[k] = m.s()
    return Channel(cid, sid, topic, enc, meta)


def _parse_chunk_index(c: _Cursor) -> ChunkIndexEntry:
    t0, t1, start, length = c.u("Q"), c.u("Q"), c.u("Q"), c.u("Q")
    m = _Cursor(memoryview(c.b32()))
    offsets = {}
    while m.p < len(m.d):
        cid = m.u("H")
        offsets[cid] = m.u("Q")
    index_length = c.u("Q")
    comp = c.s()
    return ChunkIndexEntry(t0, t1, start, length, offsets, index_length, comp, c.u("Q"), c.u("Q"))


def parse_chunk_records(records: bytes | memoryview, where: str) -> list[MessageEntry]:
    """Messages inside a chunk's uncompressed records (schema/channel records are skipped)."""
    mv = memoryview(records)
    pos, out = 0, []
    while pos < len(mv):
        if pos + _REC.size > len(mv):
            raise McapError(f"{where}: record header cut short at {pos}")
        op, n = _REC.unpack_from(mv, pos)
        body = pos + _REC.size
        if body + n > len(mv):
            raise McapError(f"{where}: record at {pos} runs past the chunk")
        if op == OP_MESSAGE:
            if n < _MSG_HEAD.size:
                raise McapError(f"{where}: message record at {pos} too short")
            cid, seq, lt, pt = _MSG_HEAD.unpack_from(mv, body)
            out.append(MessageEntry(cid, seq, lt, pt, pos, body + _MSG_HEAD.size, n - _MSG_HEAD.size))
        elif op not in (OP_SCHEMA, OP_CHANNEL):
            raise McapError(f"{where}: unexpected opcode 0x{op:02x} at {pos} inside a chunk")
        pos = body + n
    return out


ChunkCallback = Callable[[ChunkInfo, bytes], None]


def _read_chunk(path: str, f: BinaryIO, start: int, content_len: int, on_chunk: ChunkCallback | None) -> ChunkInfo:
    """Read, CRC-check and list one Chunk record whose content starts at ``start + 9``."""
    f.seek(start + _REC.size)
    content = f.read(content_len)
    if len(content) != content_len:
        raise McapError(f"{path}: chunk at {start} is cut short")
    c = _Cursor(memoryview(content))
    t0, t1, usize, crc = (c.u("Q"), c.u("Q"), c.u("Q"), c.u("I"))
    comp = c.s()
    n = c.u("Q")
    rec_off = c.p
    stored = c.take(n)
    try:
        records = decompress(bytes(stored), comp, usize)
    except McapError as exc:
        raise McapError(f"{path}: chunk at {start}: {exc}") from None
    if len(records) != usize:
        raise McapError(f"{path}: chunk at {start}: {len(records)} bytes after decompression, header says {usize}")
    if crc and zlib.crc32(records) != crc:
        raise McapError(f"{path}: chunk at {start} fails its CRC (damaged bytes)")
    msgs = parse_chunk_records(records, f"{path}: chunk at {start}")
    info = ChunkInfo(start, _REC.size + content_len, start + _REC.size + rec_off, comp, n, usize, t0, t1, msgs,
                     start + _REC.size + content_len)
    if on_chunk is not None:
        on_chunk(info, records)
    return info


def cut_before_header(path: str | os.PathLike) -> bool:
    """The file ends before its Header record is whole (empty, or a cut magic or header): it holds nothing."""
    with open(path, "rb") as f:
        head = f.read(4096)
        if f.read(1):
            return False
    if not MAGIC.startswith(head[:8]):
        return False
    if len(head) < 8 + _REC.size:
        return True
    op, n = _REC.unpack_from(head, 8)
    return op == OP_HEADER and len(head) < 8 + _REC.size + n


def scan(path: str | os.PathLike, use_summary: bool = True, on_chunk: ChunkCallback | None = None) -> ScanResult:
    """Validate and list a file. Never raises for damaged content: damage goes to ``bad_chunks``.

    ``on_chunk(info, records)`` sees every good chunk with its uncompressed records (for indexing);
    chunks are not kept in memory beyond the call.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if head != MAGIC:
            raise McapError(f"{path}: not an MCAP file (bad magic)")
        res = ScanResult(path, "", "", {}, {}, [], [], 8, False, size)
        if use_summary and _scan_summary(f, res, on_chunk):
            return res
        res.chunks, res.bad_chunks = [], []
        _scan_linear(f, res, on_chunk)
        return res


def read_summary(f: BinaryIO, size: int) -> Summary | None:
    """The summary found through the footer; None without a usable footer (a file not closed).

    Raises :class:`McapError` when the footer is there but the summary fails its CRC or does not parse.
    """
    if size < 8 + 8 + 9 + 20 + 8:
        return None
    f.seek(size - 8 - 29)
    tail = f.read(29 + 8)
    if tail[-8:] != MAGIC or tail[0] != OP_FOOTER:
        return None
    summary_start, offsets_start, crc = struct.unpack_from("<QQI", tail, 9)
    if not 8 < summary_start <= offsets_start <= size - 37:
        return None
    f.seek(summary_start)
    body = f.read(size - 8 - 29 - summary_start)
    if crc and zlib.crc32(tail[:9 + 16], zlib.crc32(body)) != crc:
        raise McapError("summary fails its CRC")
    out = Summary(summary_start, {}, {}, [])
    c = _Cursor(memoryview(body))
    while c.p < len(body):
        op, n = _REC.unpack(c.take(9))
        rc = _Cursor(c.take(n))
        if op == OP_SCHEMA:
            s = _parse_schema(rc)
            out.schemas[s.id] = s
        elif op == OP_CHANNEL:
            ch = _parse_channel(rc)
            out.channels[ch.id] = ch
        elif op == OP_CHUNK_INDEX:
            out.chunk_indexes.append(_parse_chunk_index(rc))
    return out


def _scan_summary(f: BinaryIO, res: ScanResult, on_chunk: ChunkCallback | None) -> bool:
    """Use the footer's summary to find chunks (skips over damaged ones); False if unusable."""
    try:
        summary = read_summary(f, res.size)
    except (McapError, UnicodeDecodeError) as exc:
        res.bad_chunks.append(f"{res.path}: {exc}; scanning the file instead")
        return False
    if summary is None:
        return False
    f.seek(8)
    op, n = _REC.unpack(f.read(9))
    if op != OP_HEADER:
        return False
    hc = _Cursor(memoryview(f.read(n)))
    res.profile, res.library = hc.s(), hc.s()
    res.schemas, res.channels = summary.schemas, summary.channels
    for ci in summary.chunk_indexes:
        try:
            info = _read_chunk(res.path, f, ci.start, ci.length - _REC.size, on_chunk)
        except McapError as exc:
            res.bad_chunks.append(str(exc))
            continue
        info.index_offsets, info.end = dict(ci.index_offsets), ci.start + ci.length + ci.index_length
        res.chunks.append(info)
    res.complete = True
    res.valid_end = summary.start
    return True


def _scan_linear(f: BinaryIO, res: ScanResult, on_chunk: ChunkCallback | None) -> None:
    """Walk records from the start; stop at the first one that is cut short or malformed."""
    path, size = res.path, res.size
    pos = 8
    pending: ChunkInfo | None = None   # a chunk whose message indexes may still follow
    while True:
        if pos == size:
            res.problem = "file ends without a footer"
            break
        if pos + 9 > size:
            res.problem = f"record header at {pos} cut short"
            break
        f.seek(pos)
        op, n = _REC.unpack(f.read(9))
        end = pos + 9 + n
        if op not in KNOWN_OPS:
            res.problem = f"unknown opcode 0x{op:02x} at {pos}"
            break
        if end > size:
            res.problem = f"record at {pos} (opcode 0x{op:02x}) cut short"
            break
        if op == OP_CHUNK:
            try:
                pending = _read_chunk(path, f, pos, n, on_chunk)
                res.chunks.append(pending)
            except McapError as exc:
                res.bad_chunks.append(str(exc))
                pending = None
        elif op == OP_MESSAGE_INDEX:
            if pending is not None and n >= 2:
                (cid,) = struct.unpack("<H", f.read(2))
                pending.index_offsets[cid] = pos
                pending.end = end
        elif op in (OP_HEADER, OP_SCHEMA, OP_CHANNEL):
            pending = None
            try:
                rc = _Cursor(memoryview(f.read(n)))
                if op == OP_HEADER:
                    res.profile, res.library = rc.s(), rc.s()
                elif op == OP_SCHEMA:
                    s = _parse_schema(rc)
                    res.schemas[s.id] = s
                else:
                    ch = _parse_channel(rc)
                    res.channels[ch.id] = ch
            except (McapError, UnicodeDecodeError) as exc:
                res.problem = f"malformed record at {pos}: {exc}"
                break
        elif op == OP_DATA_END:
            res.valid_end = pos    # the repair writes DataEnd again, with the summary
            res.problem = "summary missing or damaged after DataEnd"
            return
        else:
            res.problem = f"unexpected opcode 0x{op:02x} at {pos} in the data section"
            break
        res.valid_end = end  # a chunk that failed its CRC is skipped; the records after it may be good
        pos = end


def finalize_truncated(path: str | os.PathLike, res: ScanResult,
                       on_chunk: ChunkCallback | None = None) -> ScanResult:
    """Cut a file after its last good record and close it as the writer does (fsynced): DataEnd, then a
    summary whose chunk indexes name every chunk's MessageIndex records, then the footer.

    A last chunk whose MessageIndex records were cut off gets them written anew. Chunks that failed
    their CRC stay in the file (readers that check CRCs skip them) but are left out of the chunk
    index, as is a chunk lacking message indexes elsewhere (not written by this writer; reported in
    the returned result's ``bad_chunks``).
    """
    path = os.fspath(path)
    end, fresh = res.valid_end, b""
    last = res.chunks[-1] if res.chunks else None
    if last is not None and not last.indexed() and last.end == res.valid_end:
        end = last.start + last.length
        fresh = message_indexes(last)
    kept = [ch for ch in res.chunks if ch.indexed()]
    with open(path, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(fresh + _DATA_END)
        _write_summary_of(f, res, kept)
        f.flush()
        os.fsync(f.fileno())
    out = scan(path, on_chunk=on_chunk)
    out.bad_chunks += [f"{path}: chunk at {ch.start} has no message index; its {len(ch.messages)} messages are "
                       f"left out of the chunk index" for ch in res.chunks if not ch.indexed()]
    return out


def rewrite_summary(path: str | os.PathLike) -> ScanResult:
    """Give a closed file a fresh summary whose chunk indexes name the MessageIndex records found right
    after each chunk (fsynced); fixes files whose summary lacks them. A crash midway leaves a file
    without a footer, which ``scan`` + ``finalize_truncated`` repair."""
    path = os.fspath(path)
    res = scan(path)
    if not res.complete:
        raise McapError(f"{path}: has no summary to rewrite ({res.problem})")
    with open(path, "r+b") as f:
        for ch in res.chunks:
            _find_message_indexes(f, ch, res.valid_end)
        f.truncate(res.valid_end)   # just after DataEnd
        f.seek(res.valid_end)
        _write_summary_of(f, res, [ch for ch in res.chunks if ch.indexed()])
        f.flush()
        os.fsync(f.fileno())
    return scan(path)


def _find_message_indexes(f: BinaryIO, ch: ChunkInfo, limit: int) -> None:
    """Collect the MessageIndex records that directly follow chunk ``ch`` (up to file offset ``limit``)."""
    ch.index_offsets = {}
    pos = ch.end = ch.start + ch.length
    while pos + _REC.size + 2 <= limit:
        f.seek(pos)
        op, n = _REC.unpack(f.read(_REC.size))
        if op != OP_MESSAGE_INDEX or pos + _REC.size + n > limit or n < 2:
            break
        (cid,) = struct.unpack("<H", f.read(2))
        ch.index_offsets[cid] = pos
        pos = ch.end = pos + _REC.size + n


def check_index(path: str | os.PathLike) -> list[str]:
    """Why an indexed reader (rosbags, Foxglove's ``@mcap/core``, ``ros2 bag``) would miss messages of a
    closed file: one line naming the file, or ``[]``. Reads only the summary and the records it points
    at. A file without a footer is not checked here (``scan`` reports it)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            summary = read_summary(f, size)
        except (McapError, UnicodeDecodeError) as exc:
            return [f"{path}: {exc}; indexed readers cannot open it"]
        if summary is None:
            return []
        fd = f.fileno()
        bad = [why for ci in summary.chunk_indexes if (why := _chunk_index_problem(fd, ci, summary.start))]
    if not bad:
        return []
    return [f"{path}: {len(bad)} of {len(summary.chunk_indexes)} chunk indexes are incomplete ({bad[0]}), so "
            f"indexed readers (rosbags, Foxglove, ros2 bag) miss or refuse its messages; opening the bag for "
            f"writing rewrites them (userctl bag repair)"]


def _chunk_index_problem(fd: int, ci: ChunkIndexEntry, data_end: int) -> str:
    head = os.pread(fd, _REC.size, ci.start)
    if len(head) < _REC.size or head[0] != OP_CHUNK or _REC.size + _REC.unpack(head)[1] != ci.length:
        return f"no chunk of {ci.length} bytes at byte {ci.start}"
    if not ci.index_offsets or ci.index_length == 0:
        return f"the chunk at byte {ci.start} names no message index"
    lo = ci.start + ci.length
    hi = lo + ci.index_length
    if hi > data_end:
        return f"the message indexes of the chunk at byte {ci.start} run past the data section"
    for cid, off in ci.index_offsets.items():
        rec = os.pread(fd, _REC.size + 2, off) if lo <= off < hi else b""
        if len(rec) < _REC.size + 2 or rec[0] != OP_MESSAGE_INDEX or struct.unpack_from("<H", rec, 9)[0] != cid \
                or off + _REC.size + _REC.unpack_from(rec)[1] > hi:
            return f"the chunk at byte {ci.start} points at no message index of channel {cid} (byte {off})"
    return ""


def read_chunk_records(fd: int, start: int) -> bytes | memoryview:
    """The uncompressed records of the chunk at file offset ``start`` (CRC not checked: ``scan`` does)."""
    head = os.pread(fd, _REC.size, start)
    op, n = _REC.unpack(head) if len(head) == _REC.size else (0, 0)
    content = os.pread(fd, n, start + _REC.size) if op == OP_CHUNK else b""
    if op != OP_CHUNK or len(content) != n:
        raise McapError(f"no complete chunk at byte {start}")
    c = _Cursor(memoryview(content))
    c.take(16)   # start and end time
    usize, _crc = c.u("Q"), c.u("I")
    comp = c.s()
    return decompress(c.take(c.u("Q")), comp, usize)
