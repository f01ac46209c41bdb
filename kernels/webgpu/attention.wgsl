// attention_f32: kv_store writes the step's K/V into the paged pool through the block tables; attention then runs
// one invocation per (row, head): softmax with a learned sink over the visible keys (window on sliding layers).
// rows[r] = (absolute position, offset of the row's block table in `tables`).
struct Params { rows: u32, num_heads: u32, num_kv_heads: u32, head_dim: u32, window: u32, block_size: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out_: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> keys: array<f32>;
@group(0) @binding(4) var<storage, read_write> values: array<f32>;
@group(0) @binding(5) var<storage, read> sinks: array<u32>;
@group(0) @binding(6) var<storage, read> rows: array<vec2u>;
@group(0) @binding(7) var<storage, read> tables: array<i32>;
@group(0) @binding(8) var<storage, read> k: array<f32>;
@group(0) @binding(9) var<storage, read> v: array<f32>;

fn slot(row: u32, position: u32) -> u32 {
  let block = u32(tables[rows[row].y + position / p.block_size]);
  return (block * p.block_size + position % p.block_size) * p.num_kv_heads * p.head_dim;
}

@compute @workgroup_size(64)
fn kv_store_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let kv_width = p.num_kv_heads * p.head_dim;
  let index = gid.x + gid.y * n.x * 64u;
  if (index >= p.rows * kv_width) { return; }
  let row = index / kv_width;
  let d = index % kv_width;
  let dst = slot(row, rows[row].x) + d;
  keys[dst] = k[index];
  values[dst] = v[index];
}

@compute @workgroup_size(64)
fn attention_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let index = gid.x + gid.y * n.x * 64u;
  if (index >= p.rows * p.num_heads) { return; }
  let row = index / p.num_heads;
  let h = index % p.num_heads;
  let position = rows[row].x;
  var first = 0u;
  if (p.window > 0u && position + 1u > p.window) { first = position + 1u - p.window; }
  let q_base = row * p.num_heads * p.head_dim + h * p.head_dim;
  let kv_offset = (h / (p.num_heads / p.num_kv_heads)) * p.head_dim;
  let scale = inverseSqrt(f32(p.head_dim));
  let sw = sinks[h >> 1u];
  let sink = select(bitcast<f32>(sw << 16u), bitcast<f32>(sw & 0xffff0000u), (h & 1u) == 1u);
  var m = sink;
  for (var j = first; j <= position; j++) {
    let base = slot(row, j) + kv_offset;
    var dot = 0.0;
    for (var d = 0u; d < p.head_dim; d++) { dot += q[q_base + d] * keys[base + d]; }
    m = max(m, dot * scale);
  }
  var denominator = exp(sink - m);
  var acc: array<f32, 256>;
  for (var d = 0u; d < p.head_dim; d++) { acc[d] = 0.0; }
  for (var j = first; j <= position; j++) {
    let base = slot(row, j) + kv_offset;
    var dot = 0.0;
    for (var d = 0u; d < p.head_dim; d++) { dot += q[q_base + d] * keys[base + d]; }
    let w = exp(dot * scale - m);
    denominator += w;
    for (var d = 0u; d < p.head_dim; d++) { acc[d] += w * values[base + d]; }
  }
  for (var d = 0u; d < p.head_dim; d++) { out_[q_base + d] = acc[d] / denominator; }
}
