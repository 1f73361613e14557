import { timestampDate } from "@bufbuild/protobuf/wkt";

import {
  ChangeKind,
  type Purchase as PurchaseMessage,
  type PurchaseChange as ChangeMessage,
  PurchaseSource,
  PurchaseStatus as StatusMessage,
  type VerifyPurchaseResponse,
} from "./gen/payments/v1/payments_pb.js";

/** A purchase's status, in lower case as on the gateway's REST verify route. */
export type PurchaseStatus =
  | "paid"
  | "pending"
  | "failed"
  | "expired"
  | "refunded"
  | "disputed"
  | "revoked"
  | "not_found";

/**
 * What happened to a purchase's access. `resync` is no change of
 * payments-svc's: it is a purchase as it is now, handed to `onChange` while
 * `followChanges` rebuilds from ListPurchases (see there).
 */
export type ChangeKindName =
  | "granted"
  | "pending"
  | "failed"
  | "needs_refund"
  | "partially_refunded"
  | "refunded"
  | "suspended"
  | "disputed"
  | "restored"
  | "revoked"
  | "resync";

/** A course purchase as it is now. Act on `hasAccess`. */
export interface Purchase {
  checkoutSessionId: string;
  userId: string;
  courseId: string;
  status: PurchaseStatus;
  hasAccess: boolean;
  /** Refunded so far, in the currency's minor unit. */
  amountRefunded: number;
  amountTotal?: number;
  currency?: string;
  paymentIntentId?: string;
  /** How payments-svc learnt of it: a webhook, verify asking Stripe, or a sync from Stripe's API. */
  source: "webhook" | "verify" | "sync" | "unknown";
  purchasedAt?: Date;
  updatedAt?: Date;
  /** When Stripe created the Checkout Session, when known. */
  checkoutCreatedAt?: Date;
}

const SOURCE: Record<number, Purchase["source"]> = {
  [PurchaseSource.WEBHOOK]: "webhook",
  [PurchaseSource.VERIFY]: "verify",
  [PurchaseSource.SYNC]: "sync",
};

/** The answer of VerifyPurchase. */
export interface VerifyResult {
  status: PurchaseStatus;
  hasAccess: boolean;
  amountRefunded: number;
  courseId?: string;
  userId?: string;
  checkoutSessionId?: string;
  purchasedAt?: Date;
  /** Stripe could not be asked: the answer is what the database knows; ask again. */
  unconfirmed: boolean;
  purchase?: Purchase;
}

/** One change of the feed. */
export interface PurchaseChange {
  /** Strictly increasing along the feed; store it once the change is handled. */
  cursor: bigint;
  kind: ChangeKindName;
  purchase: Purchase;
  /** The Stripe event behind it, `verify`, or `backfill`. */
  causeEventId: string;
  at?: Date;
}

const STATUS: Record<StatusMessage, PurchaseStatus> = {
  [StatusMessage.UNSPECIFIED]: "not_found",
  [StatusMessage.PAID]: "paid",
  [StatusMessage.PENDING]: "pending",
  [StatusMessage.FAILED]: "failed",
  [StatusMessage.EXPIRED]: "expired",
  [StatusMessage.NOT_FOUND]: "not_found",
  [StatusMessage.REFUNDED]: "refunded",
  [StatusMessage.DISPUTED]: "disputed",
  [StatusMessage.REVOKED]: "revoked",
};

const KIND: Record<ChangeKind, ChangeKindName | undefined> = {
  [ChangeKind.UNSPECIFIED]: undefined,
  [ChangeKind.GRANTED]: "granted",
  [ChangeKind.PENDING]: "pending",
  [ChangeKind.FAILED]: "failed",
  [ChangeKind.NEEDS_REFUND]: "needs_refund",
  [ChangeKind.PARTIALLY_REFUNDED]: "partially_refunded",
  [ChangeKind.REFUNDED]: "refunded",
  [ChangeKind.SUSPENDED]: "suspended",
  [ChangeKind.DISPUTED]: "disputed",
  [ChangeKind.RESTORED]: "restored",
  [ChangeKind.REVOKED]: "revoked",
};

export function purchaseView(message: PurchaseMessage): Purchase {
  return {
    checkoutSessionId: message.checkoutSessionId,
    userId: message.userId,
    courseId: message.courseId,
    status: STATUS[message.status] ?? "not_found",
    hasAccess: message.hasAccess,
    amountRefunded: Number(message.amountRefunded),
    amountTotal: message.amountTotal === undefined ? undefined : Number(message.amountTotal),
    currency: message.currency,
    paymentIntentId: message.paymentIntentId,
    source: SOURCE[message.source] ?? "unknown",
    purchasedAt: message.createdAt ? timestampDate(message.createdAt) : undefined,
    updatedAt: message.updatedAt ? timestampDate(message.updatedAt) : undefined,
    checkoutCreatedAt: message.checkoutCreatedAt ? timestampDate(message.checkoutCreatedAt) : undefined,
  };
}

export function verifyView(message: VerifyPurchaseResponse): VerifyResult {
  const purchase = message.purchase ? purchaseView(message.purchase) : undefined;
  return {
    status: STATUS[message.status] ?? "not_found",
    hasAccess: purchase?.hasAccess ?? false,
    amountRefunded: purchase?.amountRefunded ?? 0,
    courseId: purchase?.courseId,
    userId: purchase?.userId,
    checkoutSessionId: purchase?.checkoutSessionId,
    purchasedAt: purchase?.purchasedAt,
    unconfirmed: message.unconfirmed,
    purchase,
  };
}

/** A change of the feed; an unknown kind (from a newer payments-svc) is an error, never guessed. */
export function changeView(message: ChangeMessage): PurchaseChange {
  const kind = KIND[message.kind];
  if (kind === undefined || message.purchase === undefined) {
    throw new Error(`change ${message.cursor}: unknown kind ${message.kind}; upgrade @payments/client`);
  }
  return {
    cursor: message.cursor,
    kind,
    purchase: purchaseView(message.purchase),
    causeEventId: message.causeEventId,
    at: message.at ? timestampDate(message.at) : undefined,
  };
}
