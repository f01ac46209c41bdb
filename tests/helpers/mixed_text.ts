/** Deterministic mixed text (English, code, CJK, emoji, whitespace runs, numbers) for tokenizer tests and benches. */

const FRAGMENTS = [
  "The quick brown fox jumps over the lazy dog. ",
  "It's what they'd've wanted, isn't it? ",
  "function add(a: number, b: number): number {\n  return a + b;\n}\n",
  "for (let i = 0; i < n; i++) { sum += xs[i] * ys[i]; }\n",
  'def main():\n    print("hello")\n\n',
  "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';\n",
  "东京是日本的首都，人口超过一千万。",
  "日本語の文章をトークン化します。",
  "한국어 문장도 포함합니다. ",
  "Ünïcödé ßtraße café naïve résumé. ",
  "Привет, как дела? ",
  "مرحبا بالعالم ",
  "emoji: 💖🎉👩‍👩‍👧‍👦🇯🇵 ",
  "    \t\t   \n\n\n   ",
  "1234567890 3.14159 -42 1e-10 ",
  "https://example.com/path?query=value&x=1 ",
  "<|endoftext|> <|start|> <|message|> ",
  "\r\n\r\n",
  "CamelCaseIdentifier snake_case_identifier SCREAMING_CASE ",
  "   leading and trailing spaces   ",
];

/** About `bytes` bytes of text built from the fragments in a seeded order. */
export function mixedText(bytes: number, seed = 1): string {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state;
  };
  const parts: string[] = [];
  let size = 0;
  while (size < bytes) {
    const fragment = FRAGMENTS[next() % FRAGMENTS.length];
    // Random cuts and repeats create unusual boundaries and long runs.
    const codePoints = Array.from(fragment); // cut between code points, never inside a surrogate pair
    const cut = codePoints.slice(next() % Math.max(1, Math.floor(codePoints.length / 2))).join("");
    const text = next() % 7 === 0 ? cut.repeat(1 + (next() % 5)) : cut;
    parts.push(text);
    size += text.length;
  }
  return parts.join("");
}
