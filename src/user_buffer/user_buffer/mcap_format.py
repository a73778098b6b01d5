"""The MCAP container, written and scanned by hand so the buffer knows where every message lies.

Only the records a rosbag2 bag needs are produced: Header, Schema, Channel, Chunk (holding Message
records), MessageIndex, DataEnd, and the summary (Schema, Channel, Statistics, ChunkIndex,
SummaryOffset) closed by a Footer. Chunks are uncompressed by default, so a message's payload sits
at a known absolute file offset and the replay cache can read one transition with one ``pread``.

The scanner is the other half of crash recovery: it walks a file record by record, checks each
chunk's CRC, and stops at the first record that is cut short or malformed. What it returns is enough
to index the file, to truncate it after its last complete chunk and to write a fresh summary.
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

COMPRESSIONS = ("", "zstd")


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


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "":
        return data
    import zstandard

    return zstandard.ZstdCompressor(level=1).compress(data)


def decompress(data: bytes, compression: str, size: int) -> bytes:
    """Inflate a chunk's records (``""`` or ``"zstd"``)."""
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
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
    end: int                   # file offset after the chunk's MessageIndex records


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
        self.chunks = 0
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
        stored = _compress(records, self.compression) if self.compression else records
        t0 = min(e.log_time for e in self._entries)
        t1 = max(e.log_time for e in self._entries)
        comp = _s(self.compression)
        head = _CHUNK_HEAD.pack(t0, t1, len(records), zlib.crc32(records)) + comp + struct.pack("<Q", len(stored))
        start = self.position
        self._write(_REC.pack(OP_CHUNK, len(head) + len(stored)) + head)
        self._write(stored)   # no copy of the records: written straight from the chunk buffer
        chunk_len = _REC.size + len(head) + len(stored)
        records_start = start + _REC.size + _CHUNK_HEAD.size + len(comp) + 8
        # Message indexes, one per channel present in the chunk.
        idx_start = self.position
        offsets: dict[int, int] = {}
        by_channel: dict[int, list[MessageEntry]] = {}
        for e in self._entries:
            by_channel.setdefault(e.channel_id, []).append(e)
        for cid, entries in sorted(by_channel.items()):
            offsets[cid] = self.position
            body = b"".join(struct.pack("<QQ", e.log_time, e.offset) for e in entries)
            self._write(_record(OP_MESSAGE_INDEX, struct.pack("<H", cid) + _b32(body)))
        idx_len = self.position - idx_start
        off_map = b"".join(struct.pack("<HQ", c, o) for c, o in offsets.items())
        self.chunk_index.append(_record(OP_CHUNK_INDEX, struct.pack("<QQQQ", t0, t1, start, chunk_len)
                                        + _b32(off_map) + struct.pack("<Q", idx_len) + comp
                                        + struct.pack("<QQ", len(stored), len(records))))
        info = ChunkInfo(start, chunk_len, records_start, self.compression, len(stored), len(records), t0, t1,
                         self._entries, self.position)
        del records, stored
        self._buf = bytearray()
        self._entries = []
        self.chunks += 1
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
        self._write(_record(OP_DATA_END, struct.pack("<I", 0)))   # 0: data-section CRC not computed (chunks have theirs)
        write_summary(self.f, self.schemas, self.channels, self.chunk_index, self.message_count,
                      self.channel_counts, self.first_time or 0, self.last_time, self.chunks)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.closed = True


def _schema_record(s: Schema) -> bytes:
    return _record(OP_SCHEMA, struct.pack("<H", s.id) + _s(s.name) + _s(s.encoding) + _b32(s.data))


def _channel_record(c: Channel) -> bytes:
    return _record(OP_CHANNEL, struct.pack("<HH", c.id, c.schema_id) + _s(c.topic) + _s(c.message_encoding)
                   + _map_ss(c.metadata))


def write_summary(f: BinaryIO, schemas: dict[int, Schema], channels: dict[int, Channel],
                  chunk_index: list[bytes], message_count: int, channel_counts: dict[int, int],
                  first_time: int, last_time: int, chunk_count: int) -> None:
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
    stats = struct.pack("<QHIIIIQQ", message_count, len(schemas), len(channels), 0, 0, chunk_count,
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
    records = decompress(bytes(stored), comp, usize)
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


def _scan_summary(f: BinaryIO, res: ScanResult, on_chunk: ChunkCallback | None) -> bool:
    """Use the footer's summary to find chunks (skips over damaged ones); False if unusable."""
    size = res.size
    if size < 8 + 8 + 9 + 20 + 8:
        return False
    f.seek(size - 8 - 29)
    tail = f.read(29 + 8)
    if tail[-8:] != MAGIC or tail[0] != OP_FOOTER:
        return False
    summary_start, offsets_start, crc = struct.unpack_from("<QQI", tail, 9)
    if not 8 < summary_start <= offsets_start <= size - 37:
        return False
    f.seek(summary_start)
    body = f.read(size - 8 - 29 - summary_start)
    if crc and zlib.crc32(tail[:9 + 16], zlib.crc32(body)) != crc:
        res.bad_chunks.append(f"{res.path}: summary fails its CRC; scanning the file instead")
        return False
    # Header record.
    f.seek(8)
    op, n = _REC.unpack(f.read(9))
    if op != OP_HEADER:
        return False
    hc = _Cursor(memoryview(f.read(n)))
    res.profile, res.library = hc.s(), hc.s()
    c = _Cursor(memoryview(body))
    chunk_refs = []
    try:
        while c.p < len(body):
            op, n = _REC.unpack(c.take(9))
            rc = _Cursor(c.take(n))
            if op == OP_SCHEMA:
                s = _parse_schema(rc)
                res.schemas[s.id] = s
            elif op == OP_CHANNEL:
                ch = _parse_channel(rc)
                res.channels[ch.id] = ch
            elif op == OP_CHUNK_INDEX:
                rc.u("Q"), rc.u("Q")
                chunk_refs.append((rc.u("Q"), rc.u("Q")))
    except McapError:
        return False
    for start, length in chunk_refs:
        try:
            res.chunks.append(_read_chunk(res.path, f, start, length - _REC.size, on_chunk))
        except McapError as exc:
            res.bad_chunks.append(str(exc))
    res.complete = True
    res.valid_end = summary_start
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
            if pending is not None:
                pending.end = end
        elif op in (OP_HEADER, OP_SCHEMA, OP_CHANNEL):
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
            res.valid_end = end
            res.problem = "summary missing or damaged after DataEnd"
            return
        else:
            res.problem = f"unexpected opcode 0x{op:02x} at {pos} in the data section"
            break
        res.valid_end = end  # a chunk that failed its CRC is skipped; the records after it may be good
        pos = end


def finalize_truncated(path: str | os.PathLike, res: ScanResult,
                       on_chunk: ChunkCallback | None = None) -> ScanResult:
    """Cut a file after its last good record and give it DataEnd, summary and footer (fsynced).

    Chunks that failed their CRC stay in the file (readers that check CRCs skip them) but are left
    out of the chunk index, so summary-based readers never see them.
    """
    path = os.fspath(path)
    index, counts, count = [], {}, 0
    t0, t1 = None, 0
    for ch in res.chunks:
        comp = _s(ch.compression)
        by_channel: dict[int, int] = {}
        for m in ch.messages:
            by_channel[m.channel_id] = by_channel.get(m.channel_id, 0) + 1
            counts[m.channel_id] = counts.get(m.channel_id, 0) + 1
            count += 1
        index.append(_record(OP_CHUNK_INDEX, struct.pack("<QQQQ", ch.start_time, ch.end_time, ch.start, ch.length)
                             + _b32(b"") + struct.pack("<Q", 0) + comp
                             + struct.pack("<QQ", ch.compressed_size, ch.uncompressed_size)))
        if ch.messages:
            t0 = ch.start_time if t0 is None else min(t0, ch.start_time)
            t1 = max(t1, ch.end_time)
    with open(path, "r+b") as f:
        f.truncate(res.valid_end)
        f.seek(res.valid_end)
        f.write(_record(OP_DATA_END, struct.pack("<I", 0)))
        write_summary(f, res.schemas, res.channels, index, count, counts, t0 or 0, t1, len(res.chunks))
        f.flush()
        os.fsync(f.fileno())
    return scan(path, on_chunk=on_chunk)
