import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { presetConfig } from "../tools/synthetic.ts";
import { bytesPerDecodeToken } from "./cost.ts";

Deno.test("bytesPerDecodeToken() matches spec §7: 3,708,089,088 B for 20b and 5,002,907,904 B for 120b", () => {
  assertEquals(bytesPerDecodeToken(presetConfig("20b")), 3_708_089_088);
  assertEquals(bytesPerDecodeToken(presetConfig("120b")), 5_002_907_904);
});
