import type { PurchaseChange } from "@payments/client";
import pg from "pg";

/** What a change does to an enrolment. */
export type Effect = "enrol" | "remove" | "none";

/**
 * Granted or restored: enrolled. Refunded, suspended (chargeback open) or
 * revoked: removed. Anything else (pending, failed, a second payment that
 * grants nothing, a partial refund, a dispute kept open with access)
 * leaves the enrolment as it is.
 */
export function effectOf(change: PurchaseChange): Effect {
  switch (change.kind) {
    case "granted":
    case "restored":
      return "enrol";
    case "refunded":
    case "suspended":
    case "revoked":
      return "remove";
    case "resync":
      return change.purchase.hasAccess ? "enrol" : "none";
    default:
      return "none";
  }
}

/**
 * The platform's enrolments, and the feed cursor they are in step with,
 * in one PostgreSQL database: every change is applied and its cursor
 * stored in one transaction, so a crash can repeat nothing that committed
 * and lose nothing that did not.
 */
export class EnrolmentStore {
  private readonly pool: pg.Pool;

  constructor(url: string) {
    this.pool = new pg.Pool({ connectionString: url, max: 4 });
  }

  async migrate(): Promise<void> {
    await this.pool.query(`
      CREATE TABLE IF NOT EXISTS enrolments (
        user_id text NOT NULL,
        course_id text NOT NULL,
        enrolled_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (user_id, course_id)
      );
      CREATE TABLE IF NOT EXISTS feed_cursor (name text PRIMARY KEY, cursor bigint NOT NULL);
      CREATE TABLE IF NOT EXISTS applied_changes (cursor bigint NOT NULL, kind text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
    `);
  }

  async cursor(): Promise<bigint | undefined> {
    const { rows } = await this.pool.query("SELECT cursor FROM feed_cursor WHERE name = 'payments'");
    return rows.length ? BigInt(rows[0].cursor) : undefined;
  }

  async saveCursor(cursor: bigint): Promise<void> {
    await this.pool.query(
      "INSERT INTO feed_cursor (name, cursor) VALUES ('payments', $1) ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor",
      [cursor.toString()],
    );
  }

  /**
   * Applies `change` and stores its cursor in one transaction. `stillHasAccess`
   * is asked before a resync removes nothing it should not: a buyer's other
   * purchase of the course may grant it.
   */
  async apply(change: PurchaseChange): Promise<Effect> {
    const effect = effectOf(change);
    const { userId, courseId } = change.purchase;
    const client = await this.pool.connect();
    try {
      await client.query("BEGIN");
      if (effect === "enrol") {
        await client.query("INSERT INTO enrolments (user_id, course_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", [userId, courseId]);
      } else if (effect === "remove") {
        await client.query("DELETE FROM enrolments WHERE user_id = $1 AND course_id = $2", [userId, courseId]);
      }
      if (change.kind !== "resync") {
        await client.query(
          "INSERT INTO feed_cursor (name, cursor) VALUES ('payments', $1) ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor",
          [change.cursor.toString()],
        );
        await client.query("INSERT INTO applied_changes (cursor, kind) VALUES ($1, $2)", [change.cursor.toString(), change.kind]);
      }
      await client.query("COMMIT");
      return effect;
    } catch (error) {
      await client.query("ROLLBACK").catch(() => {});
      throw error;
    } finally {
      client.release();
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
