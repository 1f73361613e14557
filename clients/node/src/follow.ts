import { PaymentsError } from "./errors.js";
import type { Purchase, PurchaseChange } from "./views.js";

/** What the follower reads: the two calls of PaymentsClient it needs. */
export interface ChangeSource {
  watchPurchaseChanges(options: { after?: bigint; signal?: AbortSignal }): AsyncIterable<PurchaseChange>;
  purchases(list: { pageSize?: number }, options: { signal?: AbortSignal }): AsyncIterable<Purchase>;
}

export interface FollowOptions {
  /** The cursor saved last (`undefined` or 0n on the first run: from the oldest change kept). */
  load: () => Promise<bigint | undefined> | bigint | undefined;
  /** Stores `cursor` once the change before it is handled: called after `onChange` returns. */
  save: (cursor: bigint) => Promise<void> | void;
  /**
   * Handles one change; the next is not delivered until it returns. Must be
   * idempotent (upsert by checkoutSessionId): a change handled but not yet
   * saved is delivered again after a crash.
   *
   * While resyncing (the saved cursor is older than payments-svc keeps, or
   * from another database) every purchase as it is now is delivered as a
   * change of kind `resync`, whose cursor is the stale one: act on
   * `purchase.hasAccess`. The cursor to go on from is saved once all of
   * them are handled, so a crash midway resyncs again.
   */
  onChange: (change: PurchaseChange) => Promise<void> | void;
  /** Stops following; the promise then resolves. */
  signal?: AbortSignal;
  /** Told of each reconnect or resync, for logs and metrics. */
  onEvent?: (event: FollowEvent) => void;
  /** Reconnect backoff: first and longest wait, in milliseconds (100, 5000). */
  backoff?: { initialMs?: number; maxMs?: number };
}

export type FollowEvent =
  | { type: "reconnecting"; error: PaymentsError | undefined; delayMs: number }
  | { type: "resync"; from: bigint; resumeAfter: bigint };

/**
 * The follower loop: watch from the saved cursor, hand each change over in
 * order and save its cursor, reconnect with backoff when the stream ends or
 * fails transiently, resync on FAILED_PRECONDITION.
 */
export async function follow(client: ChangeSource, options: FollowOptions): Promise<void> {
  const { signal } = options;
  const initialMs = options.backoff?.initialMs ?? 100;
  const maxMs = options.backoff?.maxMs ?? 5_000;
  let cursor = (await options.load()) ?? 0n;
  let delayMs = initialMs;
  while (!signal?.aborted) {
    let failure: PaymentsError | undefined;
    try {
      for await (const change of client.watchPurchaseChanges({ after: cursor, signal })) {
        await options.onChange(change);
        await options.save(change.cursor);
        cursor = change.cursor;
        delayMs = initialMs;
      }
    } catch (error) {
      if (signal?.aborted) break;
      if (!(error instanceof PaymentsError)) throw error;
      if (error.code === "FAILED_PRECONDITION" && error.resumeAfter !== undefined) {
        options.onEvent?.({ type: "resync", from: cursor, resumeAfter: error.resumeAfter });
        cursor = await resync(client, options, cursor, error.resumeAfter);
        delayMs = initialMs;
        continue;
      }
      if (!error.transient && error.code !== "CANCELLED") throw error;
      failure = error;
    }
    // The stream ended (a replica draining) or failed for a while: again, after a pause.
    const wait = Math.round(delayMs * (0.5 + Math.random() / 2));
    options.onEvent?.({ type: "reconnecting", error: failure, delayMs: wait });
    await sleep(wait, signal);
    delayMs = Math.min(maxMs, delayMs * 2);
  }
}

/** Hands every purchase over as a `resync` change, then saves where to go on from. */
async function resync(client: ChangeSource, options: FollowOptions, stale: bigint, resumeAfter: bigint) {
  for await (const purchase of client.purchases({ pageSize: 1000 }, { signal: options.signal })) {
    await options.onChange({ cursor: stale, kind: "resync", purchase, causeEventId: "", at: purchase.updatedAt });
  }
  await options.save(resumeAfter);
  return resumeAfter;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}
