/** o200k_harmony special tokens (spec harmony.md §1, gpt-oss-model.md §6). */

export const START_OF_TEXT = 199998;
export const END_OF_TEXT = 199999;
export const RETURN = 200002;
export const CONSTRAIN = 200003;
export const CHANNEL = 200005;
export const START = 200006;
export const END = 200007;
export const MESSAGE = 200008;
export const CALL = 200012;

/** Ids 0..199997 are BPE ranks (ordinary text). */
export const FIRST_SPECIAL_ID = 199998;
/** Rows of the embedding table: valid ids are 0..VOCAB_SIZE − 1. */
export const VOCAB_SIZE = 201088;

/** Stop tokens of an assistant turn: <|return|>, <|call|>, and <|endoftext|> as a safety net (never <|end|>). */
export const ASSISTANT_STOP_IDS: readonly number[] = [RETURN, CALL, END_OF_TEXT];

const NAMED: Record<number, string> = {
  [START_OF_TEXT]: "<|startoftext|>",
  [END_OF_TEXT]: "<|endoftext|>",
  [RETURN]: "<|return|>",
  [CONSTRAIN]: "<|constrain|>",
  [CHANNEL]: "<|channel|>",
  [START]: "<|start|>",
  [END]: "<|end|>",
  [MESSAGE]: "<|message|>",
  [CALL]: "<|call|>",
  200018: "<|endofprompt|>",
};

/** The literal text of a special id (reserved ids decode as `<|reserved_N|>`); undefined for ordinary ids. */
export function specialTokenText(id: number): string | undefined {
  if (id < FIRST_SPECIAL_ID || id >= VOCAB_SIZE) return undefined;
  return NAMED[id] ?? `<|reserved_${id}|>`;
}

/** The id of a special token's literal text, or undefined. */
export function specialTokenId(text: string): number | undefined {
  for (const [id, name] of Object.entries(NAMED)) if (name === text) return Number(id);
  const reserved = /^<\|reserved_(\d+)\|>$/.exec(text);
  if (reserved) {
    const id = Number(reserved[1]);
    if (id >= FIRST_SPECIAL_ID && id < VOCAB_SIZE && NAMED[id] === undefined) return id;
  }
  return undefined;
}
