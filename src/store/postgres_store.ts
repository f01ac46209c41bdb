/** The PostgreSQL response store (npm:postgres): several replicas share one database, so conversations move freely. */
import postgres from "postgres";
import { fromRow, type ResponseRow, type ResponseStore, type StoredResponse } from "./response_store.ts";

export class PostgresResponseStore implements ResponseStore {
  readonly kind = "postgres";

  private constructor(readonly sql: postgres.Sql) {}

  static async open(url: string): Promise<PostgresResponseStore> {
    const sql = postgres(url, { max: 4, onnotice: () => {}, connect_timeout: 10 });
    // Two replicas starting together may both create the table: a lock makes the second wait for the first.
    await sql.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(7301)`;
      await tx`CREATE TABLE IF NOT EXISTS gptoss_responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        previous_response_id TEXT,
        status TEXT NOT NULL,
        response JSONB NOT NULL,
        input_items JSONB NOT NULL,
        turn JSONB NOT NULL
      )`;
      await tx`CREATE INDEX IF NOT EXISTS gptoss_responses_expires ON gptoss_responses (expires_at)`;
    });
    return new PostgresResponseStore(sql);
  }

  async put(r: StoredResponse): Promise<void> {
    const json = (v: unknown) => this.sql.json(v as postgres.JSONValue);
    await this.sql`
      INSERT INTO gptoss_responses (id, owner, created_at, expires_at, previous_response_id, status, response,
        input_items, turn)
      VALUES (${r.id}, ${r.owner}, ${r.createdAt}, ${r.expiresAt}, ${r.previousResponseId}, ${r.status},
        ${json(r.response)}, ${json(r.inputItems)}, ${json(r.turn)})
      ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, response = EXCLUDED.response,
        input_items = EXCLUDED.input_items, turn = EXCLUDED.turn, expires_at = EXCLUDED.expires_at`;
  }

  async get(id: string, owner: string, now: number): Promise<StoredResponse | undefined> {
    const rows = await this.sql<ResponseRow[]>`
      SELECT * FROM gptoss_responses WHERE id = ${id} AND owner = ${owner} AND expires_at > ${now}`;
    return rows[0] ? fromRow(rows[0], (value) => value) : undefined;
  }

  async delete(id: string, owner: string): Promise<boolean> {
    const result = await this.sql`DELETE FROM gptoss_responses WHERE id = ${id} AND owner = ${owner}`;
    return result.count > 0;
  }

  async purgeExpired(now: number): Promise<number> {
    return (await this.sql`DELETE FROM gptoss_responses WHERE expires_at <= ${now}`).count;
  }

  async count(now: number): Promise<number> {
    const rows = await this.sql<{ n: string }[]>`
      SELECT COUNT(*) AS n FROM gptoss_responses WHERE expires_at > ${now}`;
    return Number(rows[0].n);
  }

  async close(): Promise<void> {
    await this.sql.end({ timeout: 5 });
  }
}
