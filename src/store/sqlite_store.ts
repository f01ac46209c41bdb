/** The SQLite response store (`node:sqlite`, one file in WAL mode): survives restarts, one server. */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { fromRow, type ResponseRow, type ResponseStore, type StoredResponse } from "./response_store.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS responses (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  previous_response_id TEXT,
  status TEXT NOT NULL,
  response TEXT NOT NULL,
  input_items TEXT NOT NULL,
  turn TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expires ON responses (expires_at);
`;

export class SqliteResponseStore implements ResponseStore {
  readonly kind = "sqlite";

  private constructor(readonly path: string, readonly db: DatabaseSync) {}

  static open(path: string): SqliteResponseStore {
    if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
    const db = new DatabaseSync(path);
    db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;");
    db.exec(SCHEMA);
    return new SqliteResponseStore(path, db);
  }

  put(r: StoredResponse): Promise<void> {
    this.db.prepare(
      `INSERT OR REPLACE INTO responses (id, owner, created_at, expires_at, previous_response_id, status, response,
        input_items, turn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      r.id,
      r.owner,
      r.createdAt,
      r.expiresAt,
      r.previousResponseId,
      r.status,
      JSON.stringify(r.response),
      JSON.stringify(r.inputItems),
      JSON.stringify(r.turn),
    );
    return Promise.resolve();
  }

  get(id: string, owner: string, now: number): Promise<StoredResponse | undefined> {
    const row = this.db.prepare("SELECT * FROM responses WHERE id = ? AND owner = ? AND expires_at > ?")
      .get(id, owner, now) as ResponseRow | undefined;
    return Promise.resolve(row ? fromRow(row, (text) => JSON.parse(text as string)) : undefined);
  }

  delete(id: string, owner: string): Promise<boolean> {
    const result = this.db.prepare("DELETE FROM responses WHERE id = ? AND owner = ?").run(id, owner);
    return Promise.resolve(Number(result.changes) > 0);
  }

  purgeExpired(now: number): Promise<number> {
    const result = this.db.prepare("DELETE FROM responses WHERE expires_at <= ?").run(now);
    return Promise.resolve(Number(result.changes));
  }

  count(now: number): Promise<number> {
    const row = this.db.prepare("SELECT COUNT(*) AS n FROM responses WHERE expires_at > ?").get(now) as { n: number };
    return Promise.resolve(Number(row.n));
  }

  close(): Promise<void> {
    if (this.db.isOpen) this.db.close();
    return Promise.resolve();
  }
}
