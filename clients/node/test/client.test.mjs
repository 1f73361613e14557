// The client against the real stack: release binaries, PostgreSQL, a token.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentsClient, PaymentsError } from "../dist/index.js";
import { TOKEN, deliver, eventually, fullRefund, paidCheckout, sql, startStack } from "./stack.mjs";

let stack;
let client;
before(async () => {
  stack = await startStack();
  client = new PaymentsClient({ url: stack.grpcUrl, token: TOKEN, timeoutMs: 2000 });
});
after(async () => {
  client?.close();
  await stack?.stop();
});

async function buy(n, options) {
  const checkout = paidCheckout(n, options);
  const answer = await deliver(stack.gatewayUrl, checkout.body);
  assert.equal(answer.status, 200);
  assert.equal(answer.json.outcome, "processed");
  return checkout;
}

/** Follows the feed into `seen` until aborted; returns the follower's promise and its controller. */
function follower(options = {}) {
  const controller = new AbortController();
  const seen = [];
  const saved = [];
  const events = [];
  const done = client.followChanges({
    load: options.load ?? (() => saved.at(-1)),
    save: (cursor) => void saved.push(cursor),
    onChange: (change) => void seen.push(change),
    onEvent: (event) => void events.push(event),
    signal: controller.signal,
    backoff: { initialMs: 20, maxMs: 200 },
  });
  return { controller, seen, saved, events, done };
}

test("verify answers by session and by buyer and course, as the REST route does", async () => {
  const bought = await buy(1, { userId: "verify-buyer" });
  const bySession = await client.verifyPurchase({ checkoutSessionId: bought.sessionId });
  assert.equal(bySession.status, "paid");
  assert.equal(bySession.hasAccess, true);
  assert.equal(bySession.amountRefunded, 0);
  assert.equal(bySession.courseId, bought.courseId);
  assert.equal(bySession.userId, "verify-buyer");
  assert.ok(bySession.purchasedAt instanceof Date);
  assert.equal(bySession.unconfirmed, false);

  assert.equal(await client.hasAccess("verify-buyer", bought.courseId), true);
  assert.equal(await client.hasAccess("a-stranger", bought.courseId), false);
  const unknown = await client.verifyPurchase({ checkoutSessionId: "cs_test_unknown" });
  assert.equal(unknown.status, "not_found");
  assert.equal(unknown.hasAccess, false);
});

test("purchases are listed page by page, and iterated across pages", async () => {
  for (const n of [10, 11, 12]) await buy(n, { userId: "lister" });
  const first = await client.listPurchases({ userId: "lister", pageSize: 2 });
  assert.equal(first.purchases.length, 2);
  assert.notEqual(first.nextPageToken, "");
  const second = await client.listPurchases({ userId: "lister", pageSize: 2, pageToken: first.nextPageToken });
  assert.equal(second.purchases.length, 1);
  assert.equal(second.nextPageToken, "");

  const all = [];
  for await (const purchase of client.purchases({ userId: "lister", pageSize: 2 })) all.push(purchase);
  assert.deepEqual(
    all.map((purchase) => purchase.checkoutSessionId),
    [...first.purchases, ...second.purchases].map((purchase) => purchase.checkoutSessionId),
  );
  assert.ok(all.every((purchase) => purchase.userId === "lister" && purchase.hasAccess && purchase.status === "paid"));
});

test("a wrong token is a typed error that never shows the token", async () => {
  const wrongToken = "a-wrong-token-that-must-never-be-shown-0123456789";
  const stranger = new PaymentsClient({ url: stack.grpcUrl, token: wrongToken });
  try {
    const error = await stranger.hasAccess("u", "c").then(
      () => assert.fail("answered without the right token"),
      (error) => error,
    );
    assert.ok(error instanceof PaymentsError);
    assert.equal(error.code, "UNAUTHENTICATED");
    assert.equal(error.method, "VerifyPurchase");
    const shown = `${error} ${error.stack} ${JSON.stringify(error)}`;
    assert.ok(!shown.includes(wrongToken), shown);
    assert.ok(!shown.includes(TOKEN), shown);

    const follow = stranger.followChanges({ load: () => 0n, save: () => {}, onChange: () => {} });
    await assert.rejects(follow, (error) => error instanceof PaymentsError && error.code === "UNAUTHENTICATED");
  } finally {
    stranger.close();
  }
});

test("the follower gets every change in order, and reconnects by itself when payments-svc is killed", async () => {
  const follow = follower();
  const before = await buy(20, { userId: "follower" });
  await eventually("the first change", () => follow.seen.some((c) => c.purchase.checkoutSessionId === before.sessionId));

  await stack.restartPayments("SIGKILL");
  const afterRestart = await buy(21, { userId: "follower" });
  await deliver(stack.gatewayUrl, fullRefund(21).body);
  await eventually("the refund after the restart", () =>
    follow.seen.some((c) => c.purchase.checkoutSessionId === afterRestart.sessionId && c.kind === "refunded"),
  10_000);
  follow.controller.abort();
  await follow.done;

  const cursors = follow.seen.map((change) => change.cursor);
  assert.ok(cursors.every((cursor, i) => i === 0 || cursor > cursors[i - 1]), `in order, once: ${cursors}`);
  assert.deepEqual(follow.saved, cursors, "each cursor saved after its change");
  assert.ok(follow.events.some((event) => event.type === "reconnecting"), "it had to reconnect");
  const stored = sql(stack.db.url, "SELECT string_agg(cursor::text, ',' ORDER BY cursor) FROM purchase_changes");
  assert.deepEqual(cursors.map(String), stored.split(","), "no change skipped");
  const last = follow.seen.at(-1);
  assert.equal(last.kind, "refunded");
  assert.equal(last.purchase.hasAccess, false);
  assert.equal(typeof last.cursor, "bigint");
});

test("a cursor older than retention resyncs from ListPurchases, then follows", async () => {
  await buy(30, { userId: "resync" });
  await buy(32, { userId: "resync" });
  const newest = sql(stack.db.url, "SELECT max(cursor) FROM purchase_changes");
  // What retention does: drop the changes and move the horizon past them.
  sql(stack.db.url, `DELETE FROM purchase_changes WHERE cursor <= ${newest}; UPDATE purchase_feed SET pruned_through = ${newest}`);

  const follow = follower({ load: () => 1n });
  await eventually("the resync", () => follow.saved.includes(BigInt(newest)));
  const resynced = follow.seen.filter((change) => change.kind === "resync");
  const listed = [];
  for await (const purchase of client.purchases()) listed.push(purchase.checkoutSessionId);
  assert.deepEqual(resynced.map((change) => change.purchase.checkoutSessionId), listed, "every purchase as it is now");
  assert.ok(resynced.every((change) => change.cursor === 1n), "resync changes carry the stale cursor");

  const later = await buy(31, { userId: "resync" });
  await eventually("the change after the resync", () =>
    follow.seen.some((c) => c.kind === "granted" && c.purchase.checkoutSessionId === later.sessionId),
  );
  follow.controller.abort();
  await follow.done;
  assert.ok(follow.events.some((event) => event.type === "resync" && event.resumeAfter === BigInt(newest)));
});

test("watchPurchaseChanges streams bigint cursors and typed kinds, and ends when aborted", async () => {
  await buy(40);
  await buy(41);
  const controller = new AbortController();
  const changes = [];
  for await (const change of client.watchPurchaseChanges({ after: 0n, signal: controller.signal })) {
    changes.push(change);
    if (changes.length === 2) controller.abort();
  }
  assert.ok(changes.length >= 2);
  assert.ok(changes[0].cursor < changes[1].cursor);
  assert.ok(["granted", "refunded"].includes(changes[0].kind));
  assert.ok(changes[0].causeEventId.startsWith("evt_"));
});
