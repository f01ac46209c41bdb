/**
 * The grammar engine's own thread: compiling a grammar (milliseconds to a second) and computing a token mask never
 * block the server's event loop, and masks are computed while the model runs its step. Messages (remote.ts speaks
 * them): init, compile, matcher, advance (accept tokens, return the next mask, transferred), reset, dispose.
 */
/// <reference lib="deno.worker" />
import { type CompiledGrammar, StructuredOutputs, type SyncMatcher } from "./xgrammar.ts";

export type WorkerRequest =
  | { id: number; op: "init"; vocab: string[] }
  | { id: number; op: "compile"; key: string; schema: unknown }
  | { id: number; op: "matcher"; key: string; stopToken: number }
  | { id: number; op: "advance"; matcher: number; tokens: number[] }
  | { id: number; op: "reset" | "dispose"; matcher: number };

export type WorkerReply =
  | { id: number; error: string }
  | { id: number; matcher: number }
  | { id: number; mask: Int32Array; terminated: boolean }
  | { id: number; done: true };

/** The worker's state and its message handler (one per worker thread). */
function serveGrammars(): void {
  let engine: StructuredOutputs | undefined;
  const matchers = new Map<number, SyncMatcher>();
  let nextMatcher = 1;

  const handle = async (message: WorkerRequest): Promise<WorkerReply | undefined> => {
    switch (message.op) {
      case "init":
        engine = await StructuredOutputs.create(message.vocab);
        return { id: message.id, done: true };
      case "compile":
        await engine!.compile(message.schema, "schema", true); // checked by remote.ts; cached by key for the matchers
        return { id: message.id, done: true };
      case "matcher": {
        // The key is the schema's JSON: the cache answers at once unless the grammar was evicted meanwhile.
        const schema = message.key === "json_object" ? undefined : JSON.parse(message.key);
        const grammar: CompiledGrammar = await engine!.compile(schema, "schema", true);
        const id = nextMatcher++;
        matchers.set(id, await engine!.matcher(grammar, message.stopToken));
        return { id: message.id, matcher: id };
      }
      case "advance": {
        const matcher = matchers.get(message.matcher)!;
        for (const token of message.tokens) matcher.accept(token);
        return { id: message.id, mask: matcher.mask(), terminated: matcher.terminated };
      }
      case "reset":
        matchers.get(message.matcher)?.reset();
        return undefined;
      case "dispose":
        matchers.get(message.matcher)?.dispose();
        matchers.delete(message.matcher);
        return undefined;
    }
  };

  // One message at a time, in order: a matcher's reset is seen before its next advance.
  let queue = Promise.resolve();
  self.onmessage = (event: MessageEvent<WorkerRequest>) => {
    queue = queue.then(async () => {
      try {
        const reply = await handle(event.data);
        if (reply) self.postMessage(reply, "mask" in reply ? [reply.mask.buffer as ArrayBuffer] : []);
      } catch (err) {
        self.postMessage({ id: event.data.id, error: err instanceof Error ? err.message : String(err) });
      }
    });
  };
}

serveGrammars();
