// Measures the client against the real stack (release binaries, PostgreSQL):
//   - hasAccess and verify by session, p50/p99, at 1 and 16 concurrent callers
//   - catching up on the last 100,000 changes (or all there are)
//   - from a change's commit (its `at`) to onChange, p50/p99, while webhooks
//     arrive at RATE a second
// Run after `npm run build`: node bench/latency.mjs [calls] [rate] [seconds]
// On a database filled by bench/size/fill.sql, BENCH_DATABASE_URL=<its url>
// BENCH_PURCHASES=<its n> runs on it and asks about buyers spread over the
// whole table instead of 50 new ones.
import { performance } from "node:perf_hooks";

import { PaymentsClient } from "../dist/index.js";
import { TOKEN, deliver, paidCheckout, sql, startStack } from "../test/stack.mjs";

const calls = Number(process.argv[2] ?? 4000);
const rate = Number(process.argv[3] ?? 300);
const seconds = Number(process.argv[4] ?? 10);

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const summary = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return `p50 ${percentile(sorted, 50).toFixed(2)} ms, p99 ${percentile(sorted, 99).toFixed(2)} ms (n=${sorted.length})`;
};

const filled = process.env.BENCH_DATABASE_URL;
const stack = await startStack({ databaseUrl: filled });
const client = new PaymentsClient({ url: stack.grpcUrl, token: TOKEN });
try {
  const filledWith = Number(process.env.BENCH_PURCHASES ?? 0);
  const buyers = filledWith > 0 ? filledBuyers(filledWith) : await newBuyers(50);
  const asks = {
    hasAccess: (b) => client.hasAccess(b.userId, b.courseId),
    "verify by session": async (b) => (await client.verifyPurchase({ checkoutSessionId: b.sessionId })).hasAccess,
  };
  for (const [name, ask] of Object.entries(asks)) {
    for (const concurrency of [1, 16]) await measure(name, ask, buyers, concurrency);
  }
  await catchUp(100_000);

  const delays = [];
  const controller = new AbortController();
  const head = BigInt(sql(stack.db.url, "SELECT COALESCE(max(cursor), 0) FROM purchase_changes"));
  const following = client.followChanges({
    load: () => head,
    save: () => {},
    onChange: (change) => {
      if (change.purchase.userId.startsWith("feed-")) delays.push(Date.now() - change.at.getTime());
    },
    signal: controller.signal,
  });
  const total = rate * seconds;
  const began = performance.now();
  const sends = [];
  for (let i = 0; i < total; i++) {
    const due = began + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    sends.push(deliver(stack.gatewayUrl, paidCheckout(1000 + i, { userId: `feed-${i}` }).body));
  }
  await Promise.all(sends);
  const deadline = Date.now() + 10_000;
  while (delays.length < total && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  controller.abort();
  await following;
  console.log(`commit → onChange at ${rate} webhooks/s: ${summary(delays)} (ms resolution of the change's time)`);
} finally {
  client.close();
  await stack.stop();
}

/** `count` buyers of a course each, through the gateway. */
async function newBuyers(count) {
  const buyers = [];
  for (let n = 0; n < count; n++) {
    const checkout = paidCheckout(n);
    await deliver(stack.gatewayUrl, checkout.body);
    buyers.push(checkout);
  }
  return buyers;
}

/** 10,000 buyers with access, picked at random over a filled table of `n` (fill.sql's ids). */
function filledBuyers(n) {
  const buyers = [];
  while (buyers.length < 10_000) {
    const g = 1 + Math.floor(Math.random() * n);
    if (g % 10 === 0 || g % 100 === 0) continue; // refunded, or a second payment
    buyers.push({ userId: `u_${g}`, courseId: `c_${g % 500}`, sessionId: `cs_test_${g}` });
  }
  return buyers;
}

/** `calls` asks spread over `buyers` from `concurrency` callers; each must answer access. */
async function measure(name, ask, buyers, concurrency) {
  await Promise.all(buyers.slice(0, 50).map(ask)); // warm the connection
  const latencies = [];
  let next = 0;
  const worker = async () => {
    while (next < calls) {
      const buyer = buyers[next++ % buyers.length];
      const started = performance.now();
      const access = await ask(buyer);
      latencies.push(performance.now() - started);
      if (!access) throw new Error(`${name}: a buyer without access`);
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const perSecond = (calls / ((performance.now() - started) / 1000)).toFixed(0);
  console.log(`${name}, ${concurrency} caller(s): ${summary(latencies)}, ${perSecond} calls/s`);
}

/** Reads the feed from `count` changes before its head up to the head: how long, how many a second. */
async function catchUp(count) {
  const head = BigInt(sql(stack.db.url, "SELECT COALESCE(max(cursor), 0) FROM purchase_changes"));
  const after = head > BigInt(count) ? head - BigInt(count) : 0n;
  const controller = new AbortController();
  const started = performance.now();
  let read = 0;
  for await (const change of client.watchPurchaseChanges({ after, signal: controller.signal })) {
    read++;
    if (change.cursor >= head) break;
  }
  controller.abort();
  const seconds = (performance.now() - started) / 1000;
  console.log(`catch-up: ${read} changes in ${seconds.toFixed(2)} s, ${(read / seconds).toFixed(0)} a second`);
}
