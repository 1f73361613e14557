// The NestJS example against the real stack: the guard, and the enrolment
// consumer through a refund, its own crash, and a restart.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  TOKEN,
  createDatabase,
  deliver,
  eventually,
  fullRefund,
  paidCheckout,
  sql,
  startStack,
} from "../../../clients/node/test/stack.mjs";

const main = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../dist/main.js");

let stack;
let enrolmentsDb;
let app;

/** Starts the example application; resolves once it listens. */
async function startApp() {
  const child = spawn(process.execPath, [main], {
    env: {
      PATH: process.env.PATH,
      NO_COLOR: "1",
      PORT: "0",
      PAYMENTS_URL: stack.grpcUrl,
      PAYMENTS_GRPC_TOKEN: TOKEN,
      ENROLMENTS_DATABASE_URL: enrolmentsDb.url,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output = [];
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      output.push(line);
      if (line.startsWith('{"message":"listening"')) resolve(JSON.parse(line).port);
    });
    child.stderr.on("data", (chunk) => output.push(String(chunk)));
    exited.then(({ code }) => reject(new Error(`the app exited (${code}): ${output.join("\n")}`)));
  });
  return { child, exited, output, url: `http://127.0.0.1:${port}` };
}

const enrolled = (userId, courseId) =>
  sql(enrolmentsDb.url, `SELECT count(*) FROM enrolments WHERE user_id = '${userId}' AND course_id = '${courseId}'`) === "1";

before(async () => {
  stack = await startStack();
  enrolmentsDb = createDatabase("enrolments");
  app = await startApp();
});
after(async () => {
  if (app) {
    app.child.kill("SIGTERM");
    await app.exited;
  }
  await stack?.stop();
  enrolmentsDb?.drop();
});

async function buy(n, options) {
  const checkout = paidCheckout(n, options);
  const answer = await deliver(stack.gatewayUrl, checkout.body);
  assert.equal(answer.status, 200);
  return checkout;
}

test("the guard lets the buyer in and keeps strangers out", async () => {
  const bought = await buy(1, { userId: "guard-buyer", courseId: "course-guarded" });
  const get = (userId) =>
    fetch(`${app.url}/courses/${bought.courseId}/content`, { headers: userId ? { "x-user-id": userId } : {} });
  const buyer = await get("guard-buyer");
  assert.equal(buyer.status, 200);
  assert.deepEqual(await buyer.json(), { courseId: "course-guarded", lessons: ["welcome"] });
  assert.equal((await get("a-stranger")).status, 403);
  assert.equal((await get(undefined)).status, 401);
});

test("a refund removes the enrolment within a second", async () => {
  const bought = await buy(2, { userId: "refunded-buyer", courseId: "course-refunded" });
  await eventually("the enrolment", () => enrolled(bought.userId, bought.courseId));
  const refund = await deliver(stack.gatewayUrl, fullRefund(2).body);
  assert.equal(refund.status, 200);
  await eventually("the enrolment's removal", () => !enrolled(bought.userId, bought.courseId), 1000);
});

test("the consumer killed and restarted resumes with no gap and no repeat", async () => {
  const purchases = Array.from({ length: 40 }, (_, i) => paidCheckout(100 + i));
  const delivering = (async () => {
    for (const purchase of purchases) assert.equal((await deliver(stack.gatewayUrl, purchase.body)).status, 200);
  })();
  await eventually("some enrolments", () => Number(sql(enrolmentsDb.url, "SELECT count(*) FROM enrolments")) >= 10);
  app.child.kill("SIGKILL");
  await app.exited;
  await delivering;
  app = await startApp();

  await eventually("every enrolment", () => purchases.every((purchase) => enrolled(purchase.userId, purchase.courseId)), 10_000);
  const feed = sql(stack.db.url, "SELECT string_agg(cursor::text, ',' ORDER BY cursor) FROM purchase_changes");
  await eventually("every change applied", () =>
    sql(enrolmentsDb.url, "SELECT string_agg(cursor::text, ',' ORDER BY cursor) FROM applied_changes") === feed,
  );
  const repeated = sql(enrolmentsDb.url, "SELECT count(*) FROM (SELECT cursor FROM applied_changes GROUP BY cursor HAVING count(*) > 1) r");
  assert.equal(repeated, "0", "no change applied twice");
});
