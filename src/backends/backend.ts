/**
 * The backend interface: about a dozen model-shaped ops (STYLE.md §2). The model (src/model/gpt_oss.ts) is
 * written once against it; each backend implements it and is tested op by op against the reference.
 * Types only: no backend code here.
 */

/** Names of the backends. */
export type BackendName = "reference" | "webgpu" | "native" | "cuda";

/** Element types of device tensors. */
export type DType = "f32" | "bf16" | "u8" | "i32";

/** Bytes per element. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, bf16: 2, u8: 1, i32: 4 };

/** A tensor in host memory: raw little-endian bytes plus shape and dtype. */
export interface HostTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Row-major bytes; byteOffset aligned to the element size. */
  readonly data: Uint8Array;
  /**
   * True when `data` is memory the JS engine never moves or frees while referenced (a file mapping): a backend may
   * then keep a raw pointer to it. Otherwise a backend that needs the bytes beyond the call copies them.
   */
  readonly external?: boolean;
  /**
   * True when `data` is a temporary copy its maker never reads again (a shard cut out of a checkpoint): a backend that
   * copies it may release its pages at once, so a load never holds two copies of the weights.
   */
  readonly discardable?: boolean;
  /**
   * "matmul": a weight matrix of Ops.matmul. A backend may store such a matrix in a format of its own (the native
   * CPU backend's q8 mode: 8-bit Q8_0); the tensor still presents the checkpoint's dtype and shape.
   */
  readonly use?: "matmul";
}

/** An opaque handle to a tensor owned by one backend. */
export interface DeviceTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/** What a model's weights need on a backend (checked before loading where a backend has limits). */
export interface ModelFootprint {
  readonly weightBytes: number;
  readonly largestRow: { readonly tensor: string; readonly bytes: number };
}

/** Shape of a paged KV pool: fixed-size blocks in two groups, full-attention layers and sliding-window layers. */
export interface KvPoolSpec {
  readonly numLayers: number;
  readonly numKeyValueHeads: number;
  readonly headDim: number;
  /** Per layer: the window (keys kept, current token included), or 0 for a full-attention layer. */
  readonly layerWindows: readonly number[];
  /** Positions per block. */
  readonly blockSize: number;
  /** Blocks of the full-attention group (each holds blockSize positions of every full layer). */
  readonly numFullBlocks: number;
  /** Blocks of the sliding-window group. */
  readonly numSlidingBlocks: number;
}

/** The K/V storage of all sequences, owned by the backend; which block holds what is the engine's business. */
export interface KvPool {
  readonly spec: KvPoolSpec;
  /** Bytes held on the device. */
  readonly sizeBytes: number;
}

/** Where each sequence's tokens sit in a step's token rows, and its block tables. */
export interface BatchSegment {
  /** First row of this sequence in the step's [numTokens, …] activations. */
  readonly rowOffset: number;
  readonly numTokens: number;
  /** Absolute position of the first token: positions below it are in the cache. */
  readonly startPosition: number;
  /** Full-layer block of each position block (position / blockSize); covers [0, startPosition + numTokens). */
  readonly fullBlocks: Int32Array;
  /** Sliding-layer blocks; only the ones a query of this step can see need be valid (others −1). */
  readonly slidingBlocks: Int32Array;
}

/** The step's batch layout, shared by every attention call of the step. */
export interface AttentionBatch {
  readonly segments: readonly BatchSegment[];
  readonly numTokens: number;
}

/** The packed MXFP4 experts of one layer plus their biases (spec §5.2). */
export interface MoeWeights {
  /** [E, 2I, H/32, 16] u8 */
  readonly gateUpBlocks: DeviceTensor;
  /** [E, 2I, H/32] u8 (E8M0) */
  readonly gateUpScales: DeviceTensor;
  /** [E, 2I] bf16, rows interleaved (even = glu, odd = linear) */
  readonly gateUpBias: DeviceTensor;
  /** [E, H, I/32, 16] u8 */
  readonly downBlocks: DeviceTensor;
  /** [E, H, I/32] u8 */
  readonly downScales: DeviceTensor;
  /** [E, H] bf16 */
  readonly downBias: DeviceTensor;
}

type T = DeviceTensor;

/** The ops. Activations are f32; weights bf16 or packed MXFP4. */
export interface Ops {
  /** out[t] = table[tokenIds[t]]; out [T, H] f32, table [V, H] bf16, tokenIds [T] i32. */
  embed(out: T, table: T, tokenIds: T): void;
  /** out = x · rsqrt(mean(x²) + eps) · weight, per row; weight [H] bf16. */
  rmsnorm(out: T, x: T, weight: T, eps: number): void;
  /** out[t, n] = Σ_k x[t, k] · weight[n, k] + bias[n]; weight [N, K] bf16, bias [N] bf16. */
  matmul(out: T, x: T, weight: T, bias?: T): void;
  /**
   * Rotates q [T, numHeads·headDim] and k [T, numKvHeads·headDim] in place (half-split / NeoX pairs);
   * invFreq [headDim/2] f32 holds the YaRN frequencies, `concentration` multiplies cos and sin.
   */
  rope(q: T, k: T, positions: T, invFreq: T, concentration: number): void;
  /**
   * Writes this step's k/v into each sequence's blocks, then attention with learned sinks over the cache.
   * q [T, nh·d], k/v [T, nkv·d], out [T, nh·d]; sinks [nh] bf16; window 0 = full attention.
   */
  attention(out: T, q: T, k: T, v: T, options: AttentionOptions): void;
  /** Top-k of logits [T, E] (ties: lowest index first), softmax over the k; ids [T, k] i32, weights [T, k] f32. */
  moeRoute(expertIds: T, expertWeights: T, logits: T, topK: number): void;
  /** out[t] = Σ_j w[t, j] · (down_e · swiglu(gateUp_e · x[t] + b1_e) + b2_e), e = expertIds[t, j]. */
  moeMlp(out: T, x: T, expertIds: T, expertWeights: T, options: MoeMlpOptions): void;
  /** out = a + b (elementwise, same shape). */
  add(out: T, a: T, b: T): void;
  /** out[r] = x[rows[r]]; rows [R] i32. */
  gatherRows(out: T, x: T, rows: T): void;
  /**
   * Optional: picks one token per row of logits [R, V] f32 on the device so only ids [R] i32 come back.
   * params [R, 4] f32 = (temperature, topK, topP, u) per row; ids in `masked` (inclusive) never win. Semantics, exact
   * to the reference (src/backends/reference/sample.ts): temperature ≤ 1e-5 → argmax (lowest id on ties); otherwise
   * weights w = exp((z − max) / T) in f32, kept when w ≥ τ where τ is the largest f32 with count(w ≥ τ) ≥ topK (topK
   * on) and then the largest with Σ_{w ≥ τ} w ≥ topP · Σ kept (topP < 1); the token is the first id, in id order,
   * whose running sum of kept weights exceeds u · Σ kept. u comes from the request's seeded generator on the host.
   */
  sample?(ids: T, logits: T, params: T, masked: readonly [number, number] | undefined): void;
}

/** Floats per row of {@link Ops.sample}'s params. */
export const SAMPLE_PARAMS = 4;

/** Options of {@link Ops.attention}. */
export interface AttentionOptions {
  readonly batch: AttentionBatch;
  readonly pool: KvPool;
  readonly layer: number;
  /** [numHeads] bf16 */
  readonly sinks: T;
  readonly numHeads: number;
  readonly numKeyValueHeads: number;
  readonly headDim: number;
  /** Keys visible to a query, current token included; 0 = unlimited. */
  readonly window: number;
}

/** Options of {@link Ops.moeMlp}. */
export interface MoeMlpOptions {
  readonly weights: MoeWeights;
  readonly intermediateSize: number;
  readonly swigluLimit: number;
}

/** A compute backend. */
export interface Backend {
  readonly name: BackendName;
  /** Weights, once at load. The backend may keep a view of `tensor.data` (it must not be changed afterwards). */
  upload(tensor: HostTensor): DeviceTensor;
  /** Activations; contents undefined. */
  alloc(shape: readonly number[], dtype: DType): DeviceTensor;
  /** Writes host data into a device tensor (token ids, positions). */
  write(tensor: DeviceTensor, data: Int32Array | Float32Array): void;
  readonly ops: Ops;
  /** Submits the work enqueued so far. */
  flush(): Promise<void>;
  /** Reads a tensor back as f32 (f32 tensors) or i32 (i32 tensors). */
  read(tensor: DeviceTensor): Promise<Float32Array | Int32Array>;
  /**
   * True when the engine should draw rows with `ops.sample` on the device (a GPU: only token ids cross the bus).
   * Host backends draw on the host with the same op's reference implementation; rows that need the pre-pass
   * (penalties, logit bias, min-p, a guide) are drawn on the host everywhere. Same rule, same tokens.
   */
  readonly samplesOnDevice?: boolean;
  /** Bytes of one stored K or V element in the pools this backend creates. */
  readonly kvBytesPerElement: number;
  /** Device limits the engine must respect when sizing the KV pool (a layer's K or V is one buffer). */
  readonly limits?: { readonly maxKvLayerBytes: number };
  /** The KV storage for all sequences (allocated once). */
  createKvPool(spec: KvPoolSpec): KvPool;
  /** Frees an activation tensor. */
  free(tensor: DeviceTensor): void;
  dispose(): void;
}
