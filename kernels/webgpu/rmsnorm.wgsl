// rmsnorm_f32_bf16w: one workgroup per row; x · rsqrt(mean(x²) + eps) · weight.
struct Params { hidden: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out_: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<u32>;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn rmsnorm_f32_bf16w(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lane: u32) {
  let base = wid.x * p.hidden;
  var sum = 0.0;
  for (var i = lane; i < p.hidden; i += 64u) { sum += x[base + i] * x[base + i]; }
  partial[lane] = sum;
  workgroupBarrier();
  for (var stride = 32u; stride > 0u; stride >>= 1u) {
    if (lane < stride) { partial[lane] += partial[lane + stride]; }
    workgroupBarrier();
  }
  let scale = inverseSqrt(partial[0] / f32(p.hidden) + p.eps);
  for (var i = lane; i < p.hidden; i += 64u) {
    let w = weight[i >> 1u];
    let g = select(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u), (i & 1u) == 1u);
    out_[base + i] = x[base + i] * scale * g;
  }
}
