/** The documentation that is generated or linked stays true: docs/flags.md, and every relative link. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { flagsMarkdown } from "../tools/flags_doc.ts";

const ROOT = new URL("../", import.meta.url);

async function formatted(markdown: string): Promise<string> {
  const fmt = await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--config", new URL("deno.json", ROOT).pathname, "--ext", "md", "-"],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const writer = fmt.stdin.getWriter();
  await writer.write(new TextEncoder().encode(markdown));
  await writer.close();
  return new TextDecoder().decode((await fmt.output()).stdout);
}

Deno.test("docs/flags.md is what the flag table generates (run `deno task docs:flags` after changing a flag)", async () => {
  assertEquals(Deno.readTextFileSync(new URL("docs/flags.md", ROOT)), await formatted(flagsMarkdown()));
});

Deno.test("README and docs/: relative links point at files that exist; README stays a front page", () => {
  const files = ["README.md", ...[...Deno.readDirSync(new URL("docs/", ROOT))].map((e) => `docs/${e.name}`)];
  for (const file of files.filter((f) => f.endsWith(".md"))) {
    const text = Deno.readTextFileSync(new URL(file, ROOT));
    for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(target)) continue;
      const path = new URL(target, new URL(file, ROOT));
      assert(Deno.statSync(path), `${file} links to ${target}, which is missing`);
    }
  }
  const readme = Deno.readTextFileSync(new URL("README.md", ROOT)).split("\n");
  assert(readme.length <= 130, `README.md has ${readme.length} lines`);
  const long = readme.filter((line) => line.length > 120);
  assertEquals(long, [], "README lines over 120 characters");
});
