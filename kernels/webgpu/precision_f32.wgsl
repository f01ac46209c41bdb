// Arithmetic of weight × activation products, f32: prepended to the kernels that use pair_dot (see the launcher).
fn pair_dot(w0: f32, w1: f32, x0: f32, x1: f32) -> f32 {
  return w0 * x0 + w1 * x1;
}
