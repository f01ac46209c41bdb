// add_f32 and gather_rows_f32.
struct Params { n: u32, width: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out_: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;   // add: the second operand
@group(0) @binding(4) var<storage, read> rows: array<i32>; // gather: row indices

@compute @workgroup_size(64)
fn add_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let i = gid.x + gid.y * n.x * 64u;
  if (i < p.n) { out_[i] = a[i] + b[i]; }
}

@compute @workgroup_size(64)
fn gather_rows_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let i = gid.x + gid.y * n.x * 64u;
  if (i >= p.n) { return; }
  let r = i / p.width;
  out_[i] = a[u32(rows[r]) * p.width + i % p.width];
}

// out += b, for the residual adds (out and a are one buffer, which a bind group cannot hold twice).
@compute @workgroup_size(64)
fn add_inplace_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let i = gid.x + gid.y * n.x * 64u;
  if (i < p.n) { out_[i] = out_[i] + b[i]; }
}
