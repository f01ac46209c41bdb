import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { checkStoreContract, row } from "../../tests/helpers/store_contract.ts";
import { SqliteResponseStore } from "./sqlite_store.ts";

Deno.test("SQLite store: owner scoping, expiry at read time, purge, replace, delete; survives reopening", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const store = SqliteResponseStore.open(`${dir}/sub/r.sqlite`); // creates the directory
    await checkStoreContract(store);
    await store.put(row("resp_keep", "", 50_000));
    await store.close();
    const reopened = SqliteResponseStore.open(`${dir}/sub/r.sqlite`);
    assertEquals((await reopened.get("resp_keep", "", 0))?.id, "resp_keep");
    await reopened.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
