// matmul_bf16w: out[t, n] = Σ_k x[t, k] · W[n, k] + b[n] for the weight rows of this chunk. One workgroup of 64 per
// (row, token): the lanes split K in pairs, then a tree reduction. The launcher prepends precision_f32.wgsl or
// precision_f16.wgsl, whose pair_dot does the products (sums and the bias stay f32). bf16 → f16 keeps every weight of
// ordinary size exactly (f16 has 10 mantissa bits to bf16's 7; |w| in [2^-14, 65504) covers trained weights).
struct Params { tokens: u32, n: u32, k: u32, row_start: u32, rows: u32, has_bias: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out_: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<u32>; // this chunk's rows, bf16 pairs
@group(0) @binding(4) var<storage, read> bias: array<u32>;
var<workgroup> partial: array<f32, 64>;

fn bf16_at(e: u32) -> f32 {
  let w = weight[e >> 1u];
  return select(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u), (e & 1u) == 1u);
}

fn bias_at(row: u32) -> f32 {
  if (p.has_bias == 0u) { return 0.0; }
  let bw = bias[row >> 1u];
  return select(bitcast<f32>(bw << 16u), bitcast<f32>(bw & 0xffff0000u), (row & 1u) == 1u);
}

// Σ over the pairs (i, i + 1) for i = first, first + 2·stride, …, plus the last element when K is odd.
fn row_dot(w_base: u32, x_base: u32, first: u32, stride: u32) -> f32 {
  var sum = 0.0;
  var i = first;
  for (; i + 1u < p.k; i += 2u * stride) {
    sum += pair_dot(bf16_at(w_base + i), bf16_at(w_base + i + 1u), x[x_base + i], x[x_base + i + 1u]);
  }
  if (i < p.k) { sum += pair_dot(bf16_at(w_base + i), 0.0, x[x_base + i], 0.0); }
  return sum;
}

@compute @workgroup_size(64)
fn matmul_bf16w(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) n: vec3u,
                @builtin(local_invocation_index) lane: u32) {
  let job = wid.x + wid.y * n.x;
  if (job >= p.rows * p.tokens) { return; }
  let local_row = job % p.rows;
  let t = job / p.rows;
  partial[lane] = row_dot(local_row * p.k, t * p.k, 2u * lane, 64u);
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lane < stride) { partial[lane] += partial[lane + stride]; }
    workgroupBarrier();
  }
  if (lane == 0u) {
    let row = p.row_start + local_row;
    out_[t * p.n + row] = partial[0] + bias_at(row);
  }
}

// The same for short rows (K ≤ 256, e.g. small test models): one invocation per (row, token), no reduction.
@compute @workgroup_size(64)
fn matmul_short_bf16w(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let job = gid.x + gid.y * n.x * 64u;
  if (job >= p.rows * p.tokens) { return; }
  let local_row = job % p.rows;
  let t = job / p.rows;
  let row = p.row_start + local_row;
  out_[t * p.n + row] = row_dot(local_row * p.k, t * p.k, 0u, 1u) + bias_at(row);
}
