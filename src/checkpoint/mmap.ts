/**
 * Read-only memory mapping of checkpoint files through libc's mmap (Deno.dlopen; no native helper to build).
 * Tensors become zero-copy views of the page cache: nothing is read twice and nothing is copied into the heap.
 * Linux/glibc only; callers fall back to reads when {@link mmapAvailable} is false.
 */

const PROT_READ = 1;
const MAP_PRIVATE = 2;
/** Prefault the page tables now, so the first forward pass does not stall on faults. */
const MAP_POPULATE = 0x8000;
const O_RDONLY = 0;
const MAP_FAILED = 0xffffffffffffffffn;

type Libc = Deno.DynamicLibrary<{
  open: { parameters: ["buffer", "i32"]; result: "i32" };
  close: { parameters: ["i32"]; result: "i32" };
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"]; result: "pointer"; nonblocking: false };
  munmap: { parameters: ["pointer", "usize"]; result: "i32" };
}>;

/** libc's file and mapping calls (dlopen is reference-counted: each open is cheap and closed by its user). */
function openLibc(): Libc | null {
  try {
    return Deno.dlopen("libc.so.6", {
      open: { parameters: ["buffer", "i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer", nonblocking: false },
      munmap: { parameters: ["pointer", "usize"], result: "i32" },
    }) as Libc;
  } catch {
    return null; // not Linux/glibc, or no --allow-ffi: reads are used instead
  }
}

/** True when files can be mapped here. */
export function mmapAvailable(): boolean {
  const lib = openLibc();
  lib?.close();
  return lib !== null;
}

/** A mapped file. Views stay valid until {@link MappedFile.unmap}; the file must not be truncated meanwhile. */
export interface MappedFile {
  readonly bytes: Uint8Array;
  unmap(): void;
}

/** Maps a whole file read-only; `populate` prefaults it (the cost a read would pay, without the copy). */
export function mapFile(path: string, options: { populate?: boolean } = {}): MappedFile {
  const size = Deno.statSync(path).size;
  if (size === 0) return { bytes: new Uint8Array(0), unmap() {} };
  const lib = openLibc();
  if (!lib) throw new Error("mmap is not available on this platform");
  const fd = lib.symbols.open(new TextEncoder().encode(path + "\0"), O_RDONLY);
  if (fd < 0) {
    lib.close();
    throw new Error(`Cannot open "${path}" for mapping`);
  }
  let handedOut = false;
  try {
    const flags = MAP_PRIVATE | (options.populate ? MAP_POPULATE : 0);
    const pointer = lib.symbols.mmap(null, BigInt(size), PROT_READ, flags, fd, 0n);
    if (pointer === null || Deno.UnsafePointer.value(pointer) === MAP_FAILED) {
      throw new Error(`Cannot map "${path}" (${size} bytes)`);
    }
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(pointer, size));
    let mapped = true;
    handedOut = true;
    return {
      bytes,
      unmap() {
        if (!mapped) return;
        lib.symbols.munmap(pointer, BigInt(size));
        lib.close();
        mapped = false;
      },
    };
  } finally {
    lib.symbols.close(fd); // the mapping keeps the file alive
    if (!handedOut) lib.close();
  }
}
