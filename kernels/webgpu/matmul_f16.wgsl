// matmul_f16_bf16w: matmul.wgsl with f16 arithmetic (devices with shader-f16): the bf16 weights and the activations
// are rounded to f16 and multiplied in pairs (vec2<f16> dot), the pair sums accumulated in f32; the bias is added in
// f32. bf16 → f16 keeps every weight of ordinary size exactly (f16 has 10 mantissa bits to bf16's 7; the range
// limits, |w| ≥ 2^-14 normal and < 65504, cover trained weights); the product rounding is 2^-11 relative.
enable f16;

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

// Σ over the pairs (i, i + 1) for i = first, first + 2·stride, …: products and pair sums in f16, total in f32.
fn dot_f16(w_base: u32, x_base: u32, first: u32, stride: u32) -> f32 {
  var sum = 0.0;
  var i = first;
  for (; i + 1u < p.k; i += 2u * stride) {
    let wv = vec2<f16>(f16(bf16_at(w_base + i)), f16(bf16_at(w_base + i + 1u)));
    let xv = vec2<f16>(f16(x[x_base + i]), f16(x[x_base + i + 1u]));
    sum += f32(dot(wv, xv));
  }
  if (i < p.k) { sum += f32(f16(bf16_at(w_base + i)) * f16(x[x_base + i])); } // odd K: the last element
  return sum;
}

@compute @workgroup_size(64)
fn matmul_f16_bf16w(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) n: vec3u,
                    @builtin(local_invocation_index) lane: u32) {
  let job = wid.x + wid.y * n.x;
  if (job >= p.rows * p.tokens) { return; }
  let local_row = job % p.rows;
  let t = job / p.rows;
  partial[lane] = dot_f16(local_row * p.k, t * p.k, 2u * lane, 64u);
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

// Short rows (K ≤ 256): one invocation per (row, token).
@compute @workgroup_size(64)
fn matmul_short_f16_bf16w(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let job = gid.x + gid.y * n.x * 64u;
  if (job >= p.rows * p.tokens) { return; }
  let local_row = job % p.rows;
  let t = job / p.rows;
  let row = p.row_start + local_row;
  out_[t * p.n + row] = dot_f16(local_row * p.k, t * p.k, 0u, 1u) + bias_at(row);
}
