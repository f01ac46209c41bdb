/**
 * Safetensors reading: header parsing with full validation, sharded checkpoints through
 * `model.safetensors.index.json`, and byte-range reads straight into the caller's buffers.
 *
 * File format: u64 LE header length N, N bytes of UTF-8 JSON (name → {dtype, shape, data_offsets}, plus an optional
 * `__metadata__` string map), then the data section; offsets are relative to the data section.
 */
import { CheckpointError } from "../errors.ts";
import { mapFile, type MappedFile, mmapAvailable } from "./mmap.ts";

/** The dtypes we read. */
export type DType = "BF16" | "F16" | "F32" | "U8" | "I8" | "I32" | "I64";

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = { BF16: 2, F16: 2, F32: 4, U8: 1, I8: 1, I32: 4, I64: 8 };

/** Largest header we accept (the real 120b shards have headers of a few tens of KB). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** One tensor's place in a file. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Absolute byte offsets in the file: [begin, end). */
  readonly begin: number;
  readonly end: number;
  /** The file that holds it. */
  readonly file: string;
}

/** A parsed header. */
export interface SafetensorsHeader {
  readonly file: string;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  /** Absolute offset of the data section. */
  readonly dataStart: number;
  readonly fileSize: number;
}

function fail(kind: ConstructorParameters<typeof CheckpointError>[1], file: string, message: string, tensor?: string) {
  return new CheckpointError(`Invalid safetensors file "${file}": ${message}`, kind, file, tensor);
}

/**
 * Validates and parses the JSON header.
 * @param headerBytes exactly the header's bytes (after the 8-byte length)
 * @param fileSize the whole file's size, for the range checks
 */
export function parseHeader(headerBytes: Uint8Array, fileSize: number, file: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    throw fail("header_utf8", file, "header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw fail("header_json", file, `header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw fail("header_schema", file, "header is not a JSON object");
  }
  const dataStart = 8 + headerBytes.length;
  const dataLength = fileSize - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
        throw fail("header_schema", file, "__metadata__ is not an object");
      }
      for (const value of Object.values(entry)) {
        if (typeof value !== "string") throw fail("header_schema", file, "__metadata__ values must be strings");
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    tensors.set(name, parseEntry(name, entry, file, dataStart, dataLength));
  }
  checkOffsets([...tensors.values()], dataStart, dataLength, file);
  return { file, tensors, metadata, dataStart, fileSize };
}

function parseEntry(name: string, entry: unknown, file: string, dataStart: number, dataLength: number): TensorInfo {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw fail("header_schema", file, `entry of tensor "${name}" is not an object`, name);
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string") throw fail("header_schema", file, `tensor "${name}" has no dtype`, name);
  if (!(dtype in DTYPE_SIZE)) {
    throw fail("unsupported_dtype", file, `tensor "${name}" has unsupported dtype "${dtype}"`, name);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw fail("header_schema", file, `tensor "${name}" has an invalid shape ${JSON.stringify(shape)}`, name);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
  ) {
    throw fail("offsets", file, `tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}`, name);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) {
    throw fail("offsets", file, `tensor "${name}" has data_offsets out of order [${begin}, ${end}]`, name);
  }
  if (end > dataLength) {
    throw fail(
      "offsets",
      file,
      `tensor "${name}" ends at ${end}, beyond the data section of ${dataLength} bytes`,
      name,
    );
  }
  // Element count in floating point first: a product of huge dims must not wrap.
  const elementSize = DTYPE_SIZE[dtype as DType];
  let bytes = elementSize;
  for (const d of shape as number[]) bytes *= d;
  if (bytes !== end - begin) {
    throw fail(
      "size_mismatch",
      file,
      `tensor "${name}" of shape [${shape.join(", ")}] and dtype ${dtype} needs ${bytes} bytes but spans ${
        end - begin
      }`,
      name,
    );
  }
  return {
    name,
    dtype: dtype as DType,
    shape: shape as number[],
    begin: dataStart + begin,
    end: dataStart + end,
    file,
  };
}

/** Tensors must tile the data section exactly: no overlap, no hole, nothing after the last one (as upstream). */
function checkOffsets(tensors: TensorInfo[], dataStart: number, dataLength: number, file: string): void {
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = dataStart;
  for (const t of sorted) {
    if (t.begin < cursor) throw fail("offsets", file, `tensor "${t.name}" overlaps the tensor before it`, t.name);
    if (t.begin > cursor) {
      throw fail("offsets", file, `hole of ${t.begin - cursor} bytes before tensor "${t.name}"`, t.name);
    }
    cursor = t.end;
  }
  if (cursor !== dataStart + dataLength) {
    throw fail("offsets", file, `data section has ${dataStart + dataLength - cursor} bytes after the last tensor`);
  }
}

/** Reads exactly `target.length` bytes at `position`; throws CheckpointError on a short file. */
export function readExactly(file: Deno.FsFile, position: number, target: Uint8Array, path: string): void {
  file.seekSync(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < target.length) {
    const n = file.readSync(target.subarray(done));
    if (n === null || n === 0) {
      throw new CheckpointError(`Unexpected end of file "${path}" at byte ${position + done}`, "io", path);
    }
    done += n;
  }
}

/** Opens a file and reads its header. The caller owns the returned handle. */
export function openSafetensors(path: string): { header: SafetensorsHeader; file: Deno.FsFile } {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (err) {
    throw new CheckpointError(`Cannot open "${path}": ${(err as Error).message}`, "io", path, undefined, {
      cause: err,
    });
  }
  try {
    const fileSize = file.statSync().size;
    if (fileSize < 8) throw fail("header_length", path, `file has ${fileSize} bytes, fewer than the 8-byte length`);
    const lengthBytes = new Uint8Array(8);
    readExactly(file, 0, lengthBytes, path);
    const length = new DataView(lengthBytes.buffer).getBigUint64(0, true);
    if (length > BigInt(MAX_HEADER_BYTES)) {
      throw fail("header_length", path, `header length ${length} is over the ${MAX_HEADER_BYTES}-byte limit`);
    }
    if (length > BigInt(fileSize - 8)) {
      throw fail("header_length", path, `header length ${length} is beyond the file's ${fileSize} bytes`);
    }
    const headerBytes = new Uint8Array(Number(length));
    readExactly(file, 8, headerBytes, path);
    return { header: parseHeader(headerBytes, fileSize, path), file };
  } catch (err) {
    file.close();
    throw err;
  }
}

/** The bytes of one tensor, with its description. */
export interface HostTensorBytes {
  readonly info: TensorInfo;
  readonly bytes: Uint8Array;
}

/**
 * A set of safetensors files seen as one name → tensor map (a single file, or shards through the index).
 * Reads go straight from the file into a fresh (or the caller's) buffer: nothing is read twice.
 */
export class SafetensorsSet {
  readonly #files = new Map<string, Deno.FsFile>();
  readonly #mapped = new Map<string, MappedFile>();
  readonly #tensors = new Map<string, TensorInfo>();
  /** The files, in the order they were opened. */
  readonly files: readonly string[];

  private constructor(
    headers: { header: SafetensorsHeader; file: Deno.FsFile }[],
    weightMap: Map<string, string> | undefined,
    options: OpenOptions,
  ) {
    for (const { header, file } of headers) this.#files.set(header.file, file);
    if (options.mmap && mmapAvailable()) {
      for (const { header } of headers) {
        this.#mapped.set(header.file, mapFile(header.file, { populate: options.populate }));
      }
    }
    this.files = headers.map((h) => h.header.file);
    for (const { header } of headers) {
      for (const info of header.tensors.values()) {
        const existing = this.#tensors.get(info.name);
        if (existing) {
          this.close();
          throw new CheckpointError(
            `Tensor "${info.name}" is present in two shards: "${existing.file}" and "${info.file}"`,
            "tensor_duplicate",
            info.file,
            info.name,
          );
        }
        this.#tensors.set(info.name, info);
      }
    }
    if (weightMap) {
      for (const [name, shard] of weightMap) {
        const info = this.#tensors.get(name);
        if (!info || !info.file.endsWith("/" + shard)) {
          this.close();
          throw new CheckpointError(
            `Tensor "${name}" is listed in the index under "${shard}" but that shard does not contain it`,
            "tensor_missing",
            shard,
            name,
          );
        }
      }
    }
  }

  /** Opens one file. */
  static openFile(path: string, options: OpenOptions = {}): SafetensorsSet {
    return new SafetensorsSet([openSafetensors(path)], undefined, options);
  }

  /** Opens a checkpoint directory: through `model.safetensors.index.json` when present, else every `*.safetensors`. */
  static openDirectory(dir: string, options: OpenOptions = {}): SafetensorsSet {
    const indexPath = `${dir}/model.safetensors.index.json`;
    let indexText: string | undefined;
    try {
      indexText = Deno.readTextFileSync(indexPath);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    if (indexText !== undefined) {
      const weightMap = parseIndex(indexText, indexPath);
      const shards = [...new Set(weightMap.values())].sort();
      const opened: { header: SafetensorsHeader; file: Deno.FsFile }[] = [];
      try {
        for (const shard of shards) {
          const path = `${dir}/${shard}`;
          try {
            Deno.statSync(path);
          } catch {
            throw new CheckpointError(
              `Index "${indexPath}" names shard "${shard}", which is missing`,
              "shard_missing",
              path,
            );
          }
          opened.push(openSafetensors(path));
        }
      } catch (err) {
        for (const o of opened) o.file.close();
        throw err;
      }
      return new SafetensorsSet(opened, weightMap, options);
    }
    const names = [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(".safetensors"))
      .map((e) => e.name).sort();
    if (names.length === 0) {
      throw new CheckpointError(`No *.safetensors files in "${dir}"`, "not_found", dir);
    }
    const opened: { header: SafetensorsHeader; file: Deno.FsFile }[] = [];
    try {
      for (const name of names) opened.push(openSafetensors(`${dir}/${name}`));
    } catch (err) {
      for (const o of opened) o.file.close();
      throw err;
    }
    return new SafetensorsSet(opened, undefined, options);
  }

  /** True when tensors are served as views of mapped files. */
  get mapped(): boolean {
    return this.#mapped.size > 0;
  }

  /** Every tensor name. */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  /** The description of a tensor; throws CheckpointError "tensor_missing" when absent. */
  info(name: string): TensorInfo {
    const info = this.#tensors.get(name);
    if (!info) {
      throw new CheckpointError(`Tensor "${name}" is missing from the checkpoint`, "tensor_missing", undefined, name);
    }
    return info;
  }

  /** Total bytes of all tensors. */
  totalBytes(): number {
    let total = 0;
    for (const t of this.#tensors.values()) total += t.end - t.begin;
    return total;
  }

  /**
   * Reads `length` bytes of a tensor starting `offset` bytes into it, into `target` (allocated if not given).
   * The target's buffer is 8-byte aligned when allocated here, so typed views of any dtype work. When the set is
   * mapped and no target is given, returns a zero-copy view of the mapping instead (read-only by contract).
   */
  readRange(name: string, offset: number, length: number, target?: Uint8Array): Uint8Array {
    const info = this.info(name);
    if (offset < 0 || length < 0 || offset + length > info.end - info.begin) {
      throw new RangeError(`Range [${offset}, ${offset + length}) is outside tensor "${name}"`);
    }
    const mapping = this.#mapped.get(info.file);
    if (mapping && !target) return mapping.bytes.subarray(info.begin + offset, info.begin + offset + length);
    const out = target ?? new Uint8Array(new ArrayBuffer(length));
    readExactly(this.#files.get(info.file)!, info.begin + offset, out.subarray(0, length), info.file);
    return out;
  }

  /** Reads a whole tensor. */
  read(name: string): HostTensorBytes {
    const info = this.info(name);
    return { info, bytes: this.readRange(name, 0, info.end - info.begin) };
  }

  /** Closes every file. Mappings stay: views handed out may still be in use (see {@link unmap}). */
  close(): void {
    for (const file of this.#files.values()) {
      try {
        file.close();
      } catch {
        // already closed
      }
    }
    this.#files.clear();
  }

  /** Unmaps the files: only when no view of them is used any more. */
  unmap(): void {
    for (const mapping of this.#mapped.values()) mapping.unmap();
    this.#mapped.clear();
  }
}

/** How to open a set of files. */
export interface OpenOptions {
  /** Serve tensors as views of memory-mapped files (zero copy) when the platform allows. */
  readonly mmap?: boolean;
  /** With mmap: prefault all pages at open (MAP_POPULATE). */
  readonly populate?: boolean;
}

/** Parses model.safetensors.index.json into its weight_map. */
export function parseIndex(text: string, path: string): Map<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new CheckpointError(`Invalid index "${path}": not valid JSON`, "header_json", path);
  }
  const weightMap = (json as { weight_map?: unknown })?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new CheckpointError(`Invalid index "${path}": no "weight_map" object`, "header_schema", path);
  }
  const map = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard.includes("/") || shard.includes("..")) {
      throw new CheckpointError(
        `Invalid index "${path}": tensor "${name}" maps to ${JSON.stringify(shard)}`,
        "header_schema",
        path,
        name,
      );
    }
    map.set(name, shard);
  }
  return map;
}
