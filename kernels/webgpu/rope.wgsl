// rope_f32: half-split (NeoX) rotation of q and k with YaRN frequencies; cos and sin times the concentration.
struct Params { tokens: u32, q_width: u32, k_width: u32, head_dim: u32, concentration: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<i32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;

@compute @workgroup_size(64)
fn rope_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let half_dim = p.head_dim / 2u;
  let pairs = (p.q_width + p.k_width) / 2u;
  let index = gid.x + gid.y * n.x * 64u;
  if (index >= p.tokens * pairs) { return; }
  let t = index / pairs;
  let pair = index % pairs;
  let angle = f32(positions[t]) * inv_freq[pair % half_dim];
  let c = cos(angle) * p.concentration;
  let s = sin(angle) * p.concentration;
  if (pair < p.q_width / 2u) {
    let base = t * p.q_width + (pair / half_dim) * p.head_dim + pair % half_dim;
    let x1 = q[base];
    let x2 = q[base + half_dim];
    q[base] = x1 * c - x2 * s;
    q[base + half_dim] = x2 * c + x1 * s;
  } else {
    let kp = pair - p.q_width / 2u;
    let base = t * p.k_width + (kp / half_dim) * p.head_dim + kp % half_dim;
    let x1 = k[base];
    let x2 = k[base + half_dim];
    k[base] = x1 * c - x2 * s;
    k[base + half_dim] = x2 * c + x1 * s;
  }
}
