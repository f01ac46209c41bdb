// embed_f32_bf16w: out[t, i] = table[ids[t], i] for the table rows held by this chunk [row_start, row_start + rows).
struct Params { tokens: u32, hidden: u32, row_start: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out_: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<u32>; // bf16 pairs, element 2i in the low half
@group(0) @binding(3) var<storage, read> ids: array<i32>;

@compute @workgroup_size(64)
fn embed_f32_bf16w(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let index = gid.x + gid.y * n.x * 64u;
  if (index >= p.tokens * p.hidden) { return; }
  let t = index / p.hidden;
  let i = index % p.hidden;
  let id = u32(ids[t]);
  if (id < p.row_start || id >= p.row_start + p.rows) { return; }
  let e = (id - p.row_start) * p.hidden + i;
  let w = table[e >> 1u];
  out_[index] = select(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u), (e & 1u) == 1u);
}
