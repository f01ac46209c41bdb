/**
 * The main thread's side of the grammar worker: compile a schema (checked by ajv here first, so the worker only sees
 * JSON Schemas), make matchers, and advance them — each an awaitable message. One worker per tokenizer; it lives as
 * long as the process (close() ends it, for scripts).
 */
import { InvalidRequestError } from "../errors.ts";
import type { Tokenizer } from "../harmony/tokenizer.ts";
import { RETURN } from "../harmony/tokens.ts";
import type { WorkerReply, WorkerRequest } from "./grammar_worker.ts";
import { checkSchema, grammarKey, StructuredOutputs } from "./xgrammar.ts";

/** A matcher that lives in the worker. */
export interface GrammarMatcher {
  /** Accepts `tokens` in order, then gives the mask for the next token and whether the grammar is complete. */
  advance(tokens: readonly number[]): Promise<{ mask: Int32Array; terminated: boolean }>;
  /** Back to the grammar's start (ordered before the next advance). */
  reset(): void;
  dispose(): void;
}

type Body = WorkerRequest extends infer R ? R extends { id: number } ? Omit<R, "id"> : never : never;

export class RemoteGrammars {
  readonly #worker: Worker;
  readonly #pending = new Map<number, (reply: WorkerReply) => void>();
  #nextId = 1;
  #failed: string | undefined;
  readonly ready: Promise<void>;

  constructor(tokenizer: Tokenizer, vocabSize: number) {
    this.#worker = new Worker(new URL("./grammar_worker.ts", import.meta.url).href, { type: "module" });
    this.#worker.onmessage = (event: MessageEvent<WorkerReply>) => {
      const resolve = this.#pending.get(event.data.id);
      this.#pending.delete(event.data.id);
      resolve?.(event.data);
    };
    // A worker that dies must not take the server with it, nor leave a step waiting for a mask forever.
    this.#worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.#failed = `the grammar worker failed: ${event.message}`;
      for (const [id, resolve] of this.#pending) resolve({ id, error: this.#failed });
      this.#pending.clear();
    };
    this.ready = this.#call({ op: "init", vocab: StructuredOutputs.encodeVocab(tokenizer, vocabSize) }).then(() => {});
  }

  #call(body: Body): Promise<WorkerReply> {
    const id = this.#nextId++;
    if (this.#failed) return Promise.resolve({ id, error: this.#failed });
    const reply = new Promise<WorkerReply>((resolve) => this.#pending.set(id, resolve));
    this.#worker.postMessage({ id, ...body });
    return reply;
  }

  #send(body: Body): void {
    this.#worker.postMessage({ id: 0, ...body });
  }

  /** Compiles a grammar for a schema (undefined: any JSON); 400 naming `param` when it cannot be used. */
  async compile(schema: unknown, param: string): Promise<string> {
    if (schema !== undefined) checkSchema(schema, param);
    await this.ready;
    const key = grammarKey(schema);
    const reply = await this.#call({ op: "compile", key, schema });
    if ("error" in reply) throw new InvalidRequestError(reply.error, param);
    return key;
  }

  /** A matcher for a compiled grammar; `stopToken` ends it (`<|return|>` for answers, `<|call|>` for arguments). */
  async matcher(key: string, stopToken = RETURN): Promise<GrammarMatcher> {
    const reply = await this.#call({ op: "matcher", key, stopToken });
    if (!("matcher" in reply)) throw new Error("error" in reply ? reply.error : "the grammar worker made no matcher");
    const matcher = reply.matcher;
    return {
      advance: async (tokens) => {
        const answer = await this.#call({ op: "advance", matcher, tokens: [...tokens] });
        if (!("mask" in answer)) throw new Error("error" in answer ? answer.error : "no mask");
        return answer;
      },
      reset: () => this.#send({ op: "reset", matcher }),
      dispose: () => this.#send({ op: "dispose", matcher }),
    };
  }

  close(): void {
    this.#worker.terminate();
  }
}
