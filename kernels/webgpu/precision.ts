/** Shader sources that start with the arithmetic prelude (precision_f16.wgsl or precision_f32.wgsl). */
import { ShaderSource } from "../../src/backends/webgpu/pipelines.ts";

/** The same kernel file compiled once per precision. */
export function withPrecision(file: URL): Readonly<Record<"f16" | "f32", ShaderSource>> {
  return {
    f16: new ShaderSource(new URL("./precision_f16.wgsl", import.meta.url), file),
    f32: new ShaderSource(new URL("./precision_f32.wgsl", import.meta.url), file),
  };
}
