// matmul_f32_bf16w: out[t, n] = Σ_k x[t, k] · W[n, k] + b[n] for the weight rows of this chunk. One workgroup of 64
// per (row, token): the lanes split K, then a tree reduction.
struct Params { tokens: u32, n: u32, k: u32, row_start: u32, rows: u32, has_bias: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out_: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<u32>; // this chunk's rows, bf16 pairs
@group(0) @binding(4) var<storage, read> bias: array<u32>;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn matmul_f32_bf16w(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) n: vec3u,
                    @builtin(local_invocation_index) lane: u32) {
  let job = wid.x + wid.y * n.x;
  if (job >= p.rows * p.tokens) { return; }
  let local_row = job % p.rows;
  let t = job / p.rows;
  let w_base = local_row * p.k;
  var sum = 0.0;
  for (var i = lane; i < p.k; i += 64u) {
    let e = w_base + i;
    let w = weight[e >> 1u];
    sum += select(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u), (e & 1u) == 1u) * x[t * p.k + i];
  }
  partial[lane] = sum;
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lane < stride) { partial[lane] += partial[lane + stride]; }
    workgroupBarrier();
  }
  if (lane == 0u) {
    let row = p.row_start + local_row;
    var b = 0.0;
    if (p.has_bias == 1u) {
      let bw = bias[row >> 1u];
      b = select(bitcast<f32>(bw << 16u), bitcast<f32>(bw & 0xffff0000u), (row & 1u) == 1u);
    }
    out_[t * p.n + row] = partial[0] + b;
  }
}

// The same for short rows (K ≤ 256, e.g. small test models): one invocation per (row, token), no reduction.
@compute @workgroup_size(64)
fn matmul_short_f32_bf16w(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let job = gid.x + gid.y * n.x * 64u;
  if (job >= p.rows * p.tokens) { return; }
  let local_row = job % p.rows;
  let t = job / p.rows;
  let w_base = local_row * p.k;
  var sum = 0.0;
  for (var i = 0u; i < p.k; i++) {
    let e = w_base + i;
    let w = weight[e >> 1u];
    sum += select(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u), (e & 1u) == 1u) * x[t * p.k + i];
  }
  let row = p.row_start + local_row;
  var b = 0.0;
  if (p.has_bias == 1u) {
    let bw = bias[row >> 1u];
    b = select(bitcast<f32>(bw << 16u), bitcast<f32>(bw & 0xffff0000u), (row & 1u) == 1u);
  }
  out_[t * p.n + row] = sum + b;
}
