import { create } from "@bufbuild/protobuf";
import { type Client, type Interceptor, createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { toPaymentsError } from "./errors.js";
import { type FollowOptions, follow } from "./follow.js";
import { Payments, VerifyPurchaseRequestSchema } from "./gen/payments/v1/payments_pb.js";
import { type Purchase, type PurchaseChange, type VerifyResult, changeView, purchaseView, verifyView } from "./views.js";

export interface PaymentsClientOptions {
  /** payments-svc's gRPC address: `http://payments-svc:50051`, or `https://…` for TLS. */
  url: string;
  /** The bearer token payments-svc requires (its PAYMENTS_GRPC_TOKEN), sent on every call. */
  token?: string;
  /** Deadline of each unary call, in milliseconds (default 5000). Streams have none. */
  timeoutMs?: number;
  /** For an `https://` url signed by an internal CA: its PEM certificate(s). */
  tls?: { ca?: string | Buffer };
}

/** Which purchase to verify: a Checkout Session, or a buyer and a course. */
export type VerifyLookup = { checkoutSessionId: string } | { userId: string; courseId: string };

export interface ListOptions {
  /** Only this buyer's purchases. */
  userId?: string;
  /** Up to 1000; payments-svc's default when unset. */
  pageSize?: number;
  /** `nextPageToken` of the page before. */
  pageToken?: string;
}

export interface PurchasePage {
  purchases: Purchase[];
  /** Empty on the last page. */
  nextPageToken: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Overrides the client's deadline for this call. */
  timeoutMs?: number;
}

/** How often an idle connection is checked with an HTTP/2 PING, and how long the answer may take. */
const PING_INTERVAL_MS = 15_000;
const PING_TIMEOUT_MS = 10_000;

/**
 * A client of payments-svc's `payments.v1.Payments`: one HTTP/2 connection,
 * shared by every call, reconnected when it drops. Errors are
 * {@link PaymentsError}s.
 */
export class PaymentsClient {
  private readonly session: Http2SessionManager;
  private readonly rpc: Client<typeof Payments>;
  private readonly token?: string;
  private readonly timeoutMs: number;

  constructor(options: PaymentsClientOptions) {
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    const nodeOptions = options.tls?.ca ? { ca: options.tls.ca } : {};
    this.session = new Http2SessionManager(
      options.url,
      { pingIntervalMs: PING_INTERVAL_MS, pingTimeoutMs: PING_TIMEOUT_MS },
      nodeOptions,
    );
    const token = options.token;
    const authorize: Interceptor = (next) => async (request) => {
      if (token) request.header.set("authorization", `Bearer ${token}`);
      return next(request);
    };
    const transport = createGrpcTransport({
      baseUrl: options.url,
      sessionManager: this.session,
      interceptors: [authorize],
    });
    this.rpc = createClient(Payments, transport);
  }

  /** Closes the connection; calls in progress fail. */
  close(): void {
    this.session.abort();
  }

  /** Looks a purchase up: by Checkout Session (asking Stripe when payments-svc must), or by buyer and course. */
  async verifyPurchase(lookup: VerifyLookup, options: CallOptions = {}): Promise<VerifyResult> {
    const request = create(VerifyPurchaseRequestSchema, {
      lookup:
        "checkoutSessionId" in lookup
          ? { case: "checkoutSessionId", value: lookup.checkoutSessionId }
          : { case: "userCourse", value: { userId: lookup.userId, courseId: lookup.courseId } },
    });
    const answer = await this.call("VerifyPurchase", () => this.rpc.verifyPurchase(request, this.unary(options)));
    return verifyView(answer);
  }

  /** Whether the buyer may use the course now (from payments-svc's database). */
  async hasAccess(userId: string, courseId: string, options: CallOptions = {}): Promise<boolean> {
    return (await this.verifyPurchase({ userId, courseId }, options)).hasAccess;
  }

  /** One page of purchases as they are now, oldest first. */
  async listPurchases(list: ListOptions = {}, options: CallOptions = {}): Promise<PurchasePage> {
    const request = { userId: list.userId ?? "", pageSize: list.pageSize ?? 0, pageToken: list.pageToken ?? "" };
    const page = await this.call("ListPurchases", () => this.rpc.listPurchases(request, this.unary(options)));
    return { purchases: page.purchases.map(purchaseView), nextPageToken: page.nextPageToken };
  }

  /** Every purchase (or every one of `userId`'s), page after page. */
  async *purchases(list: Omit<ListOptions, "pageToken"> = {}, options: CallOptions = {}): AsyncGenerator<Purchase> {
    let pageToken = "";
    do {
      const page = await this.listPurchases({ ...list, pageToken }, options);
      yield* page.purchases;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /**
   * The change feed after `after` (0n: from the oldest kept), then each new
   * change as it commits, until `signal` aborts (the iteration then ends)
   * or the stream fails with a
   * {@link PaymentsError}. See {@link followChanges} for a consumer that
   * survives restarts and resyncs.
   */
  async *watchPurchaseChanges(options: { after?: bigint; signal?: AbortSignal }): AsyncGenerator<PurchaseChange> {
    const stream = this.rpc.watchPurchaseChanges({ after: options.after ?? 0n }, { signal: options.signal });
    try {
      for await (const change of stream) {
        yield changeView(change);
      }
    } catch (error) {
      if (options.signal?.aborted) return;
      throw toPaymentsError(error, "WatchPurchaseChanges", this.token);
    }
  }

  /**
   * Follows the feed for good: see {@link FollowOptions}. Resolves when
   * `signal` aborts; rejects on an error retrying cannot fix (a wrong
   * token) or when `onChange` or `save` throws.
   */
  followChanges(options: FollowOptions): Promise<void> {
    return follow(this, options);
  }

  private unary(options: CallOptions) {
    return { signal: options.signal, timeoutMs: options.timeoutMs ?? this.timeoutMs };
  }

  private async call<T>(method: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw toPaymentsError(error, method, this.token);
    }
  }
}
