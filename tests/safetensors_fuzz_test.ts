/** Fuzzing the safetensors reader: every mutated file parses or fails with a typed CheckpointError. */
import { ok as assert } from "node:assert/strict";
import { CheckpointError } from "../src/errors.ts";
import { SafetensorsSet } from "../src/checkpoint/safetensors.ts";
import { bytesSource, encodeHeader, writeSafetensors } from "../src/checkpoint/safetensors_writer.ts";
import { GOLDEN_ROOT } from "./helpers/golden.ts";
import { rng } from "./helpers/random.ts";

const DTYPES = ["BF16", "F16", "F32", "U8", "I8", "I32", "I64", "F64", "BOOL", "", 7, null];

function headerOf(file: Uint8Array): { length: number; json: Record<string, Record<string, unknown>> } {
  const length = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  return { length, json: JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + length))) };
}

function withHeader(json: unknown, data: Uint8Array): Uint8Array {
  const text = new TextEncoder().encode(JSON.stringify(json));
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

function mutate(base: Uint8Array, random: () => number): Uint8Array {
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)];
  const int = (n: number) => Math.floor(random() * n);
  const { length, json } = headerOf(base);
  const data = base.subarray(8 + length);
  const names = Object.keys(json).filter((n) => n !== "__metadata__");
  switch (int(8)) {
    case 0: // truncation
      return base.slice(0, int(base.length));
    case 1: { // random bytes in the header
      const out = base.slice();
      for (let i = 0, n = 1 + int(8); i < n; i++) out[int(8 + length)] = int(256);
      return out;
    }
    case 2: { // a random header length
      const out = base.slice();
      const view = new DataView(out.buffer);
      view.setBigUint64(
        0,
        pick([0n, 1n, BigInt(length - 1), BigInt(length + 1), BigInt(out.length), 2n ** 63n, BigInt(int(2 ** 31))]),
        true,
      );
      return out;
    }
    case 3: { // random offsets
      const entry = json[pick(names)];
      const offsets = entry.data_offsets as number[];
      entry.data_offsets = pick([
        [offsets[1], offsets[0]],
        [offsets[0] + 1, offsets[1] + 1],
        [int(data.length * 2), int(data.length * 2)],
        [-1, offsets[1]],
        [0, Number.MAX_SAFE_INTEGER],
        [offsets[0]],
        "x",
        [0.5, 2],
      ]);
      return withHeader(json, data);
    }
    case 4: { // random shapes
      const entry = json[pick(names)];
      entry.shape = pick([[int(100)], [int(1e6), int(1e6), int(1e6)], [-1], [2 ** 53], [], "shape", [1.5], [0]]);
      return withHeader(json, data);
    }
    case 5: { // random dtype or entry
      const name = pick(names);
      if (random() < 0.5) json[name].dtype = pick(DTYPES) as string;
      else (json as Record<string, unknown>)[name] = pick([null, 3, "x", [], {}]);
      return withHeader(json, data);
    }
    case 6: { // random bytes anywhere (data changes must still parse)
      const out = base.slice();
      for (let i = 0, n = 1 + int(16); i < n; i++) out[int(out.length)] = int(256);
      return out;
    }
    default: { // appended garbage, or a header that is not an object / not JSON
      return pick([
        () => {
          const out = new Uint8Array(base.length + 1 + int(64));
          out.set(base);
          return out;
        },
        () => withHeader(pick([[], 5, "text", null]), data),
        () => {
          const text = new TextEncoder().encode('{"a": ');
          const out = new Uint8Array(8 + text.length);
          new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
          out.set(text, 8);
          return out;
        },
        () => {
          const out = new Uint8Array(8 + 4);
          new DataView(out.buffer).setBigUint64(0, 4n, true);
          out.set([0xff, 0xfe, 0x7b, 0x7d], 8); // invalid UTF-8
          return out;
        },
      ])();
    }
  }
}

Deno.test("fuzz: 10,000 mutated checkpoint files each parse or fail with a typed error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A small file with every dtype, plus the golden tiny checkpoint.
    const small = `${dir}/small.safetensors`;
    await writeSafetensors(small, [
      bytesSource("a", "BF16", [4, 3], new Uint8Array(24)),
      bytesSource("b", "U8", [5], new Uint8Array(5)),
      bytesSource("c", "F32", [2], new Uint8Array(8)),
      bytesSource("d", "I64", [1], new Uint8Array(8)),
      bytesSource("e", "I8", [3], new Uint8Array(3)),
      bytesSource("f", "I32", [1, 1], new Uint8Array(4)),
      bytesSource("g", "F16", [0], new Uint8Array(0)),
    ]);
    assert(encodeHeader([]).length % 8 === 0);
    const bases = [Deno.readFileSync(small), Deno.readFileSync(`${GOLDEN_ROOT}tiny/model.safetensors`)];
    const random = rng(20251129);
    const outcomes: Record<string, number> = {};
    const started = performance.now();
    const path = `${dir}/case.safetensors`;
    for (let i = 0; i < 10_000; i++) {
      const base = i % 12 === 0 ? bases[1] : bases[0];
      const mutated = mutate(base, random);
      Deno.writeFileSync(path, mutated);
      let outcome = "ok";
      try {
        const set = SafetensorsSet.openFile(path);
        try {
          let total = 0;
          for (const name of set.names()) total += set.read(name).bytes.length;
          assert(total <= mutated.length, `case ${i}: read ${total} bytes from a file of ${mutated.length}`);
        } finally {
          set.close();
        }
      } catch (err) {
        if (!(err instanceof CheckpointError)) throw new Error(`case ${i}: untyped error ${err}`, { cause: err });
        assert(err.file === path, `case ${i}: the error names the file`);
        outcome = err.kind;
      }
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
    const seconds = (performance.now() - started) / 1000;
    console.log(`fuzz: 10000 cases in ${seconds.toFixed(1)} s:`, JSON.stringify(outcomes));
    for (
      const kind of [
        "ok",
        "header_length",
        "header_json",
        "header_schema",
        "unsupported_dtype",
        "size_mismatch",
        "offsets",
      ]
    ) {
      assert((outcomes[kind] ?? 0) > 0, `no case ended in ${kind}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
