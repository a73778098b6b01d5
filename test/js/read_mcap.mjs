// Read MCAP files the way Foxglove does: @mcap/core's indexed reader (summary -> chunk indexes ->
// message indexes -> messages) with @mcap/support's decompressors, each message decoded from the
// file's own ros2msg schema by @foxglove/rosmsg2-serialization.
// Usage: node read_mcap.mjs FILE.mcap...  Prints one JSON line per file:
//   {"file", "messages", "keys": [[robot_id, episode_id, step], ...]}  or  {"file", "error"}.
import { open } from "node:fs/promises";
import { McapIndexedReader } from "@mcap/core";
import { loadDecompressHandlers } from "@mcap/support";
import { parse } from "@foxglove/rosmsg";
import { MessageReader } from "@foxglove/rosmsg2-serialization";

class FileReadable {
  constructor(handle) { this.handle = handle; }
  async size() { return BigInt((await this.handle.stat()).size); }
  async read(offset, length) {
    const buf = new Uint8Array(Number(length));
    const { bytesRead } = await this.handle.read(buf, 0, buf.length, Number(offset));
    if (bytesRead !== buf.length) throw new Error(`short read at ${offset}`);
    return buf;
  }
}

const decompressHandlers = await loadDecompressHandlers();
for (const file of process.argv.slice(2)) {
  const handle = await open(file, "r");
  try {
    const reader = await McapIndexedReader.Initialize({ readable: new FileReadable(handle), decompressHandlers });
    const decoders = new Map();
    const keys = [];
    for await (const msg of reader.readMessages({ validateCrcs: true })) {
      let dec = decoders.get(msg.channelId);
      if (dec === undefined) {
        const channel = reader.channelsById.get(msg.channelId);
        const schema = reader.schemasById.get(channel.schemaId);
        if (channel.messageEncoding !== "cdr" || schema.encoding !== "ros2msg") {
          throw new Error(`channel ${channel.topic}: ${channel.messageEncoding}/${schema.encoding}, not cdr/ros2msg`);
        }
        dec = new MessageReader(parse(new TextDecoder().decode(schema.data), { ros2: true }));
        decoders.set(msg.channelId, dec);
      }
      const t = dec.readMessage(msg.data);
      keys.push([t.robot_id, String(t.episode_id), t.step]);
    }
    console.log(JSON.stringify({ file, messages: keys.length, keys }));
  } catch (err) {
    console.log(JSON.stringify({ file, error: String(err && err.message ? err.message : err) }));
  } finally {
    await handle.close();
  }
}
