// The real stack for the Node tests: payments-svc and webhook-gateway (the
// release binaries scripts/image built, or PAYMENTS_BIN_DIR's) on ephemeral
// ports, on a PostgreSQL database of the test's own (TEST_DATABASE_URL's
// server), with a gRPC token; and Stripe's webhooks, signed as Stripe signs
// them, from the repository's real fixtures.
import { spawn, execFileSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const binDir = process.env.PAYMENTS_BIN_DIR ?? path.join(root, "target/release");
const adminUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
export const WEBHOOK_SECRET = "whsec_node_client_tests_0123456789";
export const TOKEN = `node-tests-token-${randomBytes(12).toString("hex")}`;
const FIXTURE_USER = "76579e2b-1d72-48ed-99f9-d14b4496249a";
export const FIXTURE_COURSE = "1c84b1e7-2a6d-4639-9cac-0dc8488f9f9b";

let databases = 0;

/** Runs SQL on a database with psql, returning its unaligned output. */
export function sql(url, statement) {
  return execFileSync("psql", [url, "-Atqc", statement], { encoding: "utf8" }).trim();
}

/** A new PostgreSQL database; fails (never skips) without PostgreSQL. */
export function createDatabase(prefix = "node") {
  const name = `${prefix}_${process.pid}_${databases++}`;
  const admin = new URL(adminUrl);
  sql(admin.href, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  sql(admin.href, `CREATE DATABASE "${name}"`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.href,
    drop: () => sql(admin.href, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`),
  };
}

/** A running binary; `started` resolves with its listening line's fields. */
export class Process {
  constructor(binary, env, listening) {
    this.child = spawn(path.join(binDir, binary), [], {
      env: { PATH: process.env.PATH, LOG_FORMAT: "json", RUST_LOG: "warn,payments_svc::startup=info,webhook_gateway::startup=info", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
    this.output = [];
    this.started = new Promise((resolve, reject) => {
      const lines = createInterface({ input: this.child.stdout });
      lines.on("line", (line) => {
        this.output.push(line);
        if (line.includes(listening)) resolve(JSON.parse(line));
      });
      this.child.stderr.on("data", (chunk) => this.output.push(String(chunk)));
      this.exited.then(({ code }) => reject(new Error(`${binary} exited (${code}): ${this.output.join("\n")}`)));
    });
  }

  async stop(signal = "SIGTERM") {
    this.child.kill(signal);
    return this.exited;
  }
}

/**
 * payments-svc and the gateway in front of it, on a database of their own
 * or, given `databaseUrl`, on that one (kept when the stack stops).
 */
export async function startStack({ databaseUrl } = {}) {
  const db = databaseUrl ? { url: databaseUrl, drop: () => {} } : createDatabase();
  const stack = { db, token: TOKEN };
  const startPayments = async (addr = "127.0.0.1:0") => {
    stack.payments = new Process(
      "payments-svc",
      { DATABASE_URL: db.url, PAYMENTS_GRPC_ADDR: addr, PAYMENTS_ADMIN_ADDR: "127.0.0.1:0", PAYMENTS_GRPC_TOKEN: TOKEN },
      "payments-svc listening",
    );
    const line = await stack.payments.started;
    stack.grpcAddr = line.addr;
    stack.grpcUrl = `http://${line.addr}`;
  };
  await startPayments();
  /** Kills payments-svc (SIGKILL by default) and starts it again on the same port. */
  stack.restartPayments = async (signal = "SIGKILL") => {
    await stack.payments.stop(signal);
    await startPayments(stack.grpcAddr);
  };
  stack.gateway = new Process(
    "webhook-gateway",
    {
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      GATEWAY_ADDR: "127.0.0.1:0",
      GATEWAY_ADMIN_ADDR: "127.0.0.1:0",
      PAYMENTS_SVC_URL: stack.grpcUrl,
      PAYMENTS_GRPC_TOKEN: TOKEN,
      GATEWAY_VERIFY_PER_CLIENT_RPS: "0",
    },
    "webhook-gateway listening",
  );
  stack.gatewayUrl = `http://${(await stack.gateway.started).addr}`;
  stack.stop = async () => {
    await Promise.all([stack.gateway.stop(), stack.payments.stop()]);
    db.drop();
  };
  return stack;
}

function fixture(name) {
  return readFileSync(path.join(root, "tests/fixtures/stripe", name), "utf8");
}

/** Makes every Stripe id in `text` (event, session, payment intent, charge, refund) unique with `suffix`. */
function freshIds(text, suffix) {
  return text.replace(/"((?:evt|cs_test|cs_live|pi|ch|re|py)_[A-Za-z0-9]+)"/g, `"$1${suffix}"`);
}

/**
 * A paid checkout.session.completed of its own (by default a buyer and a
 * course of its own too): `{ body, eventId, sessionId, userId, courseId }`.
 */
export function paidCheckout(n, { userId = `user-${n}`, courseId = `course-${n}` } = {}) {
  const text = freshIds(fixture("checkout_session_completed_paid.json"), `n${process.pid}x${n}`)
    .replace(`"userId": "${FIXTURE_USER}"`, `"userId": "${userId}"`)
    .replace(`"courseId": "${FIXTURE_COURSE}"`, `"courseId": "${courseId}"`);
  const event = JSON.parse(text);
  return { body: text, eventId: event.id, sessionId: event.data.object.id, userId, courseId: event.data.object.metadata.courseId };
}

/** The full refund (charge.refunded) of `paidCheckout(n)`'s payment. */
export function fullRefund(n) {
  return { body: freshIds(fixture("charge_refunded_full.json"), `n${process.pid}x${n}`) };
}

/** Posts `body` to the gateway's webhook route, signed now; `{ status, json }`. */
export async function deliver(gatewayUrl, body) {
  const timestamp = Math.floor(Date.now() / 1000);
  const signature = createHmac("sha256", WEBHOOK_SECRET).update(`${timestamp}.${body}`).digest("hex");
  const response = await fetch(`${gatewayUrl}/api/payments/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json", "stripe-signature": `t=${timestamp},v1=${signature}` },
    body,
  });
  return { status: response.status, json: await response.json() };
}

/** Polls `condition` every 10 ms until it holds, failing after `limitMs`. */
export async function eventually(what, condition, limitMs = 5000) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${limitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
