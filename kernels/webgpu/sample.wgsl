// sample_f32: one workgroup per row of logits [R, V]; writes one token id per row (semantics and the oracle:
// src/backends/reference/sample.ts). Argmax for greedy rows; otherwise f32 weights exp((z − max) / T) into a
// scratch row, top-k and top-p thresholds by bisection over f32 bits (ties at the threshold kept), and an
// inverse-CDF draw in id order with the host's seeded uniform u.
struct Params { vocab: u32, mask_lo: u32, mask_hi: u32, masked: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> ids: array<i32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> params: array<f32>; // [R, 4]: temperature, top_k, top_p, u
@group(0) @binding(4) var<storage, read_write> w: array<f32>; // scratch [R, V]

const WG = 256u;
const NONE = 0xffffffffu;
const ONE_BITS = 0x3f800000u;
var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;
var<workgroup> shared_max: f32;
var<workgroup> shared_arg: u32;

fn is_masked(i: u32) -> bool {
  return p.masked == 1u && i >= p.mask_lo && i <= p.mask_hi;
}

// (value, id) pairs: a larger value wins, then the lower id; NONE loses to everything.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
  return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

fn reduce_sum_u(lane: u32, value: u32) -> u32 {
  red_u[lane] = value;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red_u[lane] += red_u[lane + s]; }
    workgroupBarrier();
  }
  let total = red_u[0];
  workgroupBarrier();
  return total;
}

fn reduce_sum_f(lane: u32, value: f32) -> f32 {
  red_f[lane] = value;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red_f[lane] += red_f[lane + s]; }
    workgroupBarrier();
  }
  let total = red_f[0];
  workgroupBarrier();
  return total;
}

fn count_from(base: u32, lane: u32, tau: f32) -> u32 {
  var count = 0u;
  for (var i = lane; i < p.vocab; i += WG) { if (w[base + i] >= tau) { count += 1u; } }
  return count;
}

fn sum_from(base: u32, lane: u32, tau: f32) -> f32 {
  var sum = 0.0;
  for (var i = lane; i < p.vocab; i += WG) {
    let x = w[base + i];
    if (x >= tau) { sum += x; }
  }
  return sum;
}

@compute @workgroup_size(256)
fn sample_f32(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lane: u32) {
  let row = wid.x;
  let base = row * p.vocab;
  let temperature = params[row * 4u];
  let top_k = params[row * 4u + 1u];
  let top_p = params[row * 4u + 2u];
  let u = params[row * 4u + 3u];

  // Max and argmax (lowest id on ties), masked ids skipped.
  var bv = 0.0;
  var bi = NONE;
  for (var i = lane; i < p.vocab; i += WG) {
    let v = logits[base + i];
    if (!is_masked(i) && beats(v, i, bv, bi)) { bv = v; bi = i; }
  }
  red_f[lane] = bv;
  red_u[lane] = bi;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lane < s && beats(red_f[lane + s], red_u[lane + s], red_f[lane], red_u[lane])) {
      red_f[lane] = red_f[lane + s];
      red_u[lane] = red_u[lane + s];
    }
    workgroupBarrier();
  }
  if (lane == 0u) {
    shared_max = red_f[0];
    shared_arg = red_u[0];
  }
  let arg = workgroupUniformLoad(&shared_arg);
  let max_v = workgroupUniformLoad(&shared_max);
  if (temperature <= 1e-5 || arg == NONE) {
    if (lane == 0u) { ids[row] = i32(select(arg, 0u, arg == NONE)); }
    return;
  }

  let inv_t = 1.0 / temperature;
  for (var i = lane; i < p.vocab; i += WG) {
    w[base + i] = select(exp((logits[base + i] - max_v) * inv_t), 0.0, is_masked(i));
  }
  storageBarrier();
  workgroupBarrier();

  // Top-k: the largest τ with count(w ≥ τ) ≥ k (the bits of non-negative floats order like the floats).
  var lo = 0u;
  if (top_k > 0.0 && top_k < f32(p.vocab)) {
    let k = u32(top_k);
    var hi = ONE_BITS + 1u;
    for (var step = 0u; step < 32u; step++) {
      let mid = (lo + hi) >> 1u;
      let count = reduce_sum_u(lane, count_from(base, lane, bitcast<f32>(mid)));
      if (hi - lo > 1u) {
        if (count >= k) { lo = mid; } else { hi = mid; }
      }
    }
  }
  // Top-p: the largest τ (not below top-k's) with Σ_{w ≥ τ} w ≥ top_p · Σ kept.
  if (top_p < 1.0) {
    let goal = top_p * reduce_sum_f(lane, sum_from(base, lane, bitcast<f32>(lo)));
    var hi = ONE_BITS + 1u;
    for (var step = 0u; step < 32u; step++) {
      let mid = (lo + hi) >> 1u;
      let sum = reduce_sum_f(lane, sum_from(base, lane, bitcast<f32>(mid)));
      if (hi - lo > 1u) {
        if (sum >= goal) { lo = mid; } else { hi = mid; }
      }
    }
  }
  let tau = bitcast<f32>(lo);

  // Draw: each thread sums its contiguous chunk of kept weights and notes its last kept id; lane 0 finds the chunk
  // the target mass falls in; that chunk's thread walks it. (No long loop in one thread: llvmpipe caps loop trips.)
  let chunk = (p.vocab + WG - 1u) / WG;
  let start = min(lane * chunk, p.vocab);
  let end = min(start + chunk, p.vocab);
  var part = 0.0;
  var last_kept = NONE;
  for (var i = start; i < end; i++) {
    let x = w[base + i];
    if (x >= tau && x > 0.0) {
      part += x;
      last_kept = i;
    }
  }
  red_f[lane] = part;
  red_u[lane] = last_kept;
  workgroupBarrier();
  if (lane == 0u) {
    var total = 0.0;
    for (var t = 0u; t < WG; t++) { total += red_f[t]; }
    let goal_mass = u * total;
    var running = 0.0;
    var found = NONE;
    var last = arg;
    for (var t = 0u; t < WG; t++) {
      if (red_u[t] != NONE) { last = red_u[t]; }
      if (found == NONE && red_f[t] > 0.0) {
        if (running + red_f[t] > goal_mass) { found = t; } else { running += red_f[t]; }
      }
    }
    shared_arg = found;
    shared_max = goal_mass - running; // the mass to walk into the chosen chunk
    ids[row] = i32(last); // the fallback when rounding leaves the target past every chunk
  }
  storageBarrier();
  workgroupBarrier();
  if (lane == shared_arg) {
    let rest = shared_max;
    var running = 0.0;
    for (var i = start; i < end; i++) {
      let x = w[base + i];
      if (x >= tau && x > 0.0) {
        running += x;
        if (running > rest) {
          ids[row] = i32(i);
          break;
        }
      }
    }
  }
}
