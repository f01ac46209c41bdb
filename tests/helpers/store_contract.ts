/** The contract every response store keeps, run on SQLite (src/store) and PostgreSQL (tests/responses_server_test). */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import type { ResponseStore, StoredResponse } from "../../src/store/response_store.ts";

export function row(id: string, owner: string, expiresAt: number): StoredResponse {
  return {
    id,
    owner,
    createdAt: 1_000,
    expiresAt,
    previousResponseId: null,
    status: "completed",
    response: { id, output_text: "ü €" },
    inputItems: [{ id: "msg_1", type: "message" }],
    turn: [{ item: { type: "reasoning", text: "x" }, tokens: [200006, 1, 200007] }],
  };
}

export async function checkStoreContract(store: ResponseStore): Promise<void> {
  await store.put(row("resp_a", "alice", 10_000));
  await store.put(row("resp_b", "bob", 20_000));
  assertEquals((await store.get("resp_a", "alice", 5_000))?.turn, row("resp_a", "alice", 0).turn);
  assertEquals((await store.get("resp_a", "alice", 5_000))?.response, { id: "resp_a", output_text: "ü €" });
  assertEquals(await store.get("resp_a", "bob", 5_000), undefined, "another owner sees nothing");
  assertEquals(await store.get("resp_a", "alice", 10_000), undefined, "expired rows are gone for readers at once");
  assertEquals(await store.count(5_000), 2);
  assertEquals(await store.delete("resp_a", "bob"), false, "another owner cannot delete");
  // Replacing keeps one row (a background response is written when queued and when it ends).
  await store.put({ ...row("resp_b", "bob", 20_000), status: "cancelled" });
  assertEquals((await store.get("resp_b", "bob", 5_000))?.status, "cancelled");
  assertEquals(await store.purgeExpired(15_000), 1);
  assertEquals(await store.count(0), 1);
  assertEquals(await store.delete("resp_b", "bob"), true);
  assertEquals(await store.delete("resp_b", "bob"), false);
}
