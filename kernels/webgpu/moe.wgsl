// moe_route_f32, and the MXFP4 expert MLP in two passes per range of experts [e_start, e_start + e_count) held by
// one blocks window (starting at expert b_start) and one scales window (starting at expert s_start):
// moe_gate_up_f32 (dequantize in registers, clamped SwiGLU) and moe_down_f32 (weighted sum into out).
// The launcher prepends precision_f32.wgsl or precision_f16.wgsl, which define pair_dot (the MXFP4 × x products;
// the block sums, scales, biases and SwiGLU stay f32).
struct Params {
  tokens: u32, top_k: u32, hidden: u32, inter: u32, e_start: u32, e_count: u32, num_experts: u32, limit: f32,
  b_start: u32, s_start: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out_: array<f32>;   // route: expert weights; gate_up: act; down: out
@group(0) @binding(2) var<storage, read> x: array<f32>;            // route: logits; gate_up: x; down: act
@group(0) @binding(3) var<storage, read_write> ids: array<i32>;
@group(0) @binding(4) var<storage, read> route_weights: array<f32>;
@group(0) @binding(5) var<storage, read> blocks: array<u32>;       // this chunk's experts
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<u32>;         // all experts, bf16

const FP4 = array<f32, 16>(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0);

fn byte_at(words_index: u32, from_scales: bool) -> u32 {
  var w: u32;
  if (from_scales) { w = scales[words_index >> 2u]; } else { w = blocks[words_index >> 2u]; }
  return (w >> ((words_index & 3u) * 8u)) & 0xffu;
}

fn bf16_at(e: u32) -> f32 {
  let w = bias[e >> 1u];
  return select(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u), (e & 1u) == 1u);
}

// Dot of one MXFP4 row (its index in the blocks window and in the scales window) with x[x_base .. x_base + k).
fn row_dot(block_row: u32, scale_row: u32, k: u32, x_base: u32) -> f32 {
  let groups = k / 32u;
  var acc = 0.0;
  for (var g = 0u; g < groups; g++) {
    let scale = exp2(f32(byte_at(scale_row * groups + g, true)) - 127.0);
    var block = 0.0;
    for (var j = 0u; j < 16u; j++) {
      let b = byte_at((block_row * groups + g) * 16u + j, false);
      block += pair_dot(FP4[b & 15u], FP4[b >> 4u], x[x_base + g * 32u + 2u * j], x[x_base + g * 32u + 2u * j + 1u]);
    }
    acc += block * scale;
  }
  return acc;
}

@compute @workgroup_size(64)
fn moe_route_f32(@builtin(global_invocation_id) gid: vec3u) {
  let t = gid.x;
  if (t >= p.tokens) { return; }
  let base = t * p.num_experts;
  for (var j = 0u; j < p.top_k; j++) {
    var best = -1;
    for (var e = 0u; e < p.num_experts; e++) {
      var taken = false;
      for (var c = 0u; c < j; c++) { taken = taken || ids[t * p.top_k + c] == i32(e); }
      if (!taken && (best < 0 || x[base + e] > x[base + u32(best)])) { best = i32(e); }
    }
    ids[t * p.top_k + j] = best;
  }
  let m = x[base + u32(ids[t * p.top_k])];
  var sum = 0.0;
  for (var j = 0u; j < p.top_k; j++) { sum += exp(x[base + u32(ids[t * p.top_k + j])] - m); }
  for (var j = 0u; j < p.top_k; j++) { out_[t * p.top_k + j] = exp(x[base + u32(ids[t * p.top_k + j])] - m) / sum; }
}

@compute @workgroup_size(64)
fn moe_gate_up_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let index = gid.x + gid.y * n.x * 64u;
  if (index >= p.tokens * p.top_k * p.inter) { return; }
  let slot_index = index / p.inter;
  let i = index % p.inter;
  let e = u32(ids[slot_index]);
  if (e < p.e_start || e >= p.e_start + p.e_count) { return; }
  let t = slot_index / p.top_k;
  let block_row = (e - p.b_start) * 2u * p.inter + 2u * i;  // rows 2i (glu) and 2i + 1 (linear): interleaved
  let scale_row = (e - p.s_start) * 2u * p.inter + 2u * i;
  let glu_raw = row_dot(block_row, scale_row, p.hidden, t * p.hidden) + bf16_at(e * 2u * p.inter + 2u * i);
  let lin_raw = row_dot(block_row + 1u, scale_row + 1u, p.hidden, t * p.hidden) + bf16_at(e * 2u * p.inter + 2u * i + 1u);
  let glu = min(glu_raw, p.limit);
  let lin = clamp(lin_raw, -p.limit, p.limit);
  out_[slot_index * p.inter + i] = glu / (1.0 + exp(-1.702 * glu)) * (lin + 1.0);
}

@compute @workgroup_size(64)
fn moe_down_f32(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) n: vec3u) {
  let index = gid.x + gid.y * n.x * 64u;
  if (index >= p.tokens * p.hidden) { return; }
  let t = index / p.hidden;
  let r = index % p.hidden;
  var total = out_[index];  // earlier chunks' experts already added
  for (var j = 0u; j < p.top_k; j++) {
    let slot_index = t * p.top_k + j;
    let e = u32(ids[slot_index]);
    if (e < p.e_start || e >= p.e_start + p.e_count) { continue; }
    let y = row_dot((e - p.b_start) * p.hidden + r, (e - p.s_start) * p.hidden + r, p.inter, slot_index * p.inter) +
      bf16_at(e * p.hidden + r);
    total += route_weights[slot_index] * y;
  }
  out_[index] = total;
}
