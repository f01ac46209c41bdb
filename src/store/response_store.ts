/**
 * Where Responses API responses live between requests: one row per response (its object as returned, its input items,
 * and the conversation items of its turn with the ids the model produced), owned by the key that created it, expiring
 * after a TTL. SQLite (a file, WAL) for one server; PostgreSQL so that several replicas share conversations.
 */

/** One stored response. JSON-valued fields are opaque here: the API layer owns their shapes. */
export interface StoredResponse {
  readonly id: string;
  /** A digest of the API key that created it ("" without keys). */
  readonly owner: string;
  /** Unix milliseconds. */
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly previousResponseId: string | null;
  readonly status: string;
  /** The response object as the API returns it. */
  readonly response: unknown;
  /** This turn's input items as listed by /input_items. */
  readonly inputItems: unknown[];
  /** This turn's conversation items (input, then output with their ids), for continuing the conversation. */
  readonly turn: unknown[];
}

/** The store. Every write is one transaction: a response is stored whole or not at all. */
export interface ResponseStore {
  readonly kind: "sqlite" | "postgres";
  /** Inserts or replaces a response (a background response is written when queued and again when it ends). */
  put(record: StoredResponse): Promise<void>;
  /** The response, or undefined when unknown, deleted, expired or owned by another key. */
  get(id: string, owner: string, now: number): Promise<StoredResponse | undefined>;
  /** Deletes; false when there was nothing (visible to this owner) to delete. */
  delete(id: string, owner: string): Promise<boolean>;
  /** Removes expired rows; returns how many. */
  purgeExpired(now: number): Promise<number>;
  /** Rows not yet expired. */
  count(now: number): Promise<number>;
  close(): Promise<void>;
}

/** A row of the responses table, as either database returns it (JSON columns as text or as parsed values). */
export interface ResponseRow {
  id: string;
  owner: string;
  created_at: number | string;
  expires_at: number | string;
  previous_response_id: string | null;
  status: string;
  response: unknown;
  input_items: unknown;
  turn: unknown;
}

/** A row as a StoredResponse; `json` reads a JSON column (SQLite keeps text, PostgreSQL's JSONB comes parsed). */
export function fromRow(row: ResponseRow, json: (value: unknown) => unknown): StoredResponse {
  return {
    id: row.id,
    owner: row.owner,
    createdAt: Number(row.created_at),
    expiresAt: Number(row.expires_at),
    previousResponseId: row.previous_response_id,
    status: row.status,
    response: json(row.response),
    inputItems: json(row.input_items) as unknown[],
    turn: json(row.turn) as unknown[],
  };
}

/** How often expired rows are removed in the background. */
export const PURGE_INTERVAL_MS = 60_000;

/** Opens the store a `--response-store` value names: a postgres:// URL, or a SQLite file path. */
export async function openResponseStore(spec: string): Promise<ResponseStore> {
  if (/^postgres(ql)?:\/\//.test(spec)) {
    const { PostgresResponseStore } = await import("./postgres_store.ts");
    return await PostgresResponseStore.open(spec);
  }
  const { SqliteResponseStore } = await import("./sqlite_store.ts");
  return SqliteResponseStore.open(spec);
}
