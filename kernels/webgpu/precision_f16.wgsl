// Arithmetic of weight × activation products, f16 (devices with shader-f16): operands rounded to f16, the two
// products and their sum in f16, the result widened to f32 (callers accumulate in f32).
enable f16;

fn pair_dot(w0: f32, w1: f32, x0: f32, x1: f32) -> f32 {
  return f32(dot(vec2<f16>(f16(w0), f16(w1)), vec2<f16>(f16(x0), f16(x1))));
}
