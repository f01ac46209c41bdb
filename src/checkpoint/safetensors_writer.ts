/** Writing safetensors files, streamed with bounded memory (the generator writes 13.8 GB this way). */
import { type DType, DTYPE_SIZE } from "./safetensors.ts";

/** A tensor to write; `fill` produces its bytes piece by piece. */
export interface TensorSource {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Writes bytes [offset, offset + chunk.length) of the tensor into `chunk`. */
  fill(chunk: Uint8Array, offset: number): void;
}

/** A source over bytes already in memory. */
export function bytesSource(name: string, dtype: DType, shape: readonly number[], bytes: Uint8Array): TensorSource {
  return { name, dtype, shape, fill: (chunk, offset) => chunk.set(bytes.subarray(offset, offset + chunk.length)) };
}

/** Byte size of a tensor. */
export function tensorBytes(t: { dtype: DType; shape: readonly number[] }): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[t.dtype];
}

/** The header bytes (length prefix included) for tensors laid out in the given order; padded to 8 bytes. */
export function encodeHeader(
  tensors: readonly { name: string; dtype: DType; shape: readonly number[] }[],
  metadata: Record<string, string> = { format: "pt" },
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const size = tensorBytes(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((json.length + 8) % 8)) % 8); // the data section starts 8-byte aligned
  const text = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + text.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  return out;
}

const CHUNK_BYTES = 16 * 1024 * 1024;

/** Writes one safetensors file; memory use is one 16 MB chunk whatever the tensors' size. */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorSource[],
  onBytes?: (bytes: number) => void,
): Promise<void> {
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await writeAll(file, encodeHeader(tensors));
    const chunk = new Uint8Array(CHUNK_BYTES);
    for (const t of tensors) {
      const size = tensorBytes(t);
      for (let offset = 0; offset < size; offset += CHUNK_BYTES) {
        const piece = chunk.subarray(0, Math.min(CHUNK_BYTES, size - offset));
        t.fill(piece, offset);
        await writeAll(file, piece);
        onBytes?.(piece.length);
      }
    }
  } finally {
    file.close();
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}
