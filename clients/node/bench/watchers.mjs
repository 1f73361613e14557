// What idle change-feed watchers cost payments-svc and its database: opens
// WATCHERS caught-up watches, counts the database's transactions a second
// (pg_stat_database) with and without them, and payments-svc's memory
// before, with them, and 30 s after they leave.
// Run after `npm run build`: node bench/watchers.mjs [watchers] [seconds]
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";

import { PaymentsClient } from "../dist/index.js";
import { TOKEN, deliver, paidCheckout, sql, startStack } from "../test/stack.mjs";

const watchers = Number(process.argv[2] ?? 1000);
const seconds = Number(process.argv[3] ?? 10);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const STATS_DELAY_MS = 12_000;

const stack = await startStack();
const rssMb = () => {
  const status = readFileSync(`/proc/${stack.payments.child.pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
};
const name = new URL(stack.db.url).pathname.slice(1);
const transactionsPerSecond = async () => {
  const count = () => Number(sql(stack.db.url, `SELECT pg_stat_force_next_flush(); SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '${name}'`).split("\n").at(-1));
  const before = count();
  await sleep(seconds * 1000);
  // Minus this measurement's own two statements.
  return (count() - before - 2) / seconds;
};
const clients = Array.from({ length: Math.ceil(watchers / 100) }, () => new PaymentsClient({ url: stack.grpcUrl, token: TOKEN }));
try {
  for (let n = 0; n < 5; n++) await deliver(stack.gatewayUrl, paidCheckout(n).body);
  // PostgreSQL's backends report their counts up to 10 s late once idle:
  // each measurement starts after the burst before it has been reported.
  await sleep(STATS_DELAY_MS);
  const idle = await transactionsPerSecond();
  const rssIdle = rssMb();

  const controller = new AbortController();
  setMaxListeners(watchers + 10, controller.signal);
  let caughtUp = 0;
  const streams = Array.from({ length: watchers }, async (_, i) => {
    const client = clients[i % clients.length];
    let seen = 0;
    for await (const change of client.watchPurchaseChanges({ after: 0n, signal: controller.signal })) {
      if (++seen === 5) caughtUp++;
    }
  });
  while (caughtUp < watchers) await sleep(50);
  await sleep(STATS_DELAY_MS);
  const watched = await transactionsPerSecond();
  const rssWatched = rssMb();
  controller.abort();
  await Promise.allSettled(streams);
  await sleep(30_000);
  const rssAfter = rssMb();
  console.log(
    `${watchers} idle watchers: ${watched.toFixed(1)} database transactions/s (${idle.toFixed(1)} without them); ` +
      `payments-svc RSS ${rssIdle.toFixed(1)} MB idle, ${rssWatched.toFixed(1)} MB watched, ${rssAfter.toFixed(1)} MB 30 s after they left`,
  );
} finally {
  for (const client of clients) client.close();
  await stack.stop();
}
