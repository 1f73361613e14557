// Measures the client against the real stack (release binaries, PostgreSQL):
//   - hasAccess latency, p50/p99, at 1 and 16 concurrent callers
//   - from a change's commit (its `at`) to onChange, p50/p99, while webhooks
//     arrive at RATE a second
// Run after `npm run build`: node bench/latency.mjs [calls] [rate] [seconds]
import { performance } from "node:perf_hooks";

import { PaymentsClient } from "../dist/index.js";
import { TOKEN, deliver, paidCheckout, startStack } from "../test/stack.mjs";

const calls = Number(process.argv[2] ?? 4000);
const rate = Number(process.argv[3] ?? 300);
const seconds = Number(process.argv[4] ?? 10);

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const summary = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return `p50 ${percentile(sorted, 50).toFixed(2)} ms, p99 ${percentile(sorted, 99).toFixed(2)} ms (n=${sorted.length})`;
};

const stack = await startStack();
const client = new PaymentsClient({ url: stack.grpcUrl, token: TOKEN });
try {
  const buyers = [];
  for (let n = 0; n < 50; n++) {
    const checkout = paidCheckout(n);
    await deliver(stack.gatewayUrl, checkout.body);
    buyers.push(checkout);
  }
  for (const concurrency of [1, 16]) {
    await Promise.all(buyers.map((b) => client.hasAccess(b.userId, b.courseId))); // warm
    const latencies = [];
    let next = 0;
    const worker = async () => {
      while (next < calls) {
        const buyer = buyers[next++ % buyers.length];
        const started = performance.now();
        const access = await client.hasAccess(buyer.userId, buyer.courseId);
        latencies.push(performance.now() - started);
        if (!access) throw new Error("a buyer without access");
      }
    };
    const started = performance.now();
    await Promise.all(Array.from({ length: concurrency }, worker));
    const perSecond = (calls / ((performance.now() - started) / 1000)).toFixed(0);
    console.log(`hasAccess, ${concurrency} caller(s): ${summary(latencies)}, ${perSecond} calls/s`);
  }

  const delays = [];
  const controller = new AbortController();
  const following = client.followChanges({
    load: () => 0n,
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
