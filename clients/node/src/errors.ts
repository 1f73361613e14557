import { Code, ConnectError } from "@connectrpc/connect";

/** The gRPC status codes by name, as payments-svc answers them. */
export type PaymentsErrorCode =
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

const NAMES: Record<Code, PaymentsErrorCode> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/**
 * A failed call to payments-svc. `code` is the gRPC status by name; the
 * message is payments-svc's own and never contains the bearer token.
 */
export class PaymentsError extends Error {
  override readonly name = "PaymentsError";

  constructor(
    /** The gRPC status code, e.g. `UNAVAILABLE` or `UNAUTHENTICATED`. */
    readonly code: PaymentsErrorCode,
    message: string,
    /** The call that failed, e.g. `VerifyPurchase`. */
    readonly method: string,
    /**
     * For a change-feed cursor payments-svc no longer keeps, or one it never
     * gave out: where to resume after reading the current state.
     */
    readonly resumeAfter?: bigint,
  ) {
    super(`${method}: ${code}: ${message}`);
  }

  /** Whether calling again later may succeed (a deploy, a restart, a blip). */
  get transient(): boolean {
    return ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN"].includes(
      this.code,
    );
  }
}

/** `error` as a PaymentsError, with `token` scrubbed from anything shown. */
export function toPaymentsError(error: unknown, method: string, token?: string): PaymentsError {
  if (error instanceof PaymentsError) return error;
  const connect = ConnectError.from(error);
  const scrub = (text: string) => (token ? text.split(token).join("***") : text);
  return new PaymentsError(NAMES[connect.code] ?? "UNKNOWN", scrub(connect.rawMessage), method, resumeAfter(connect));
}

/**
 * The cursor to watch from after a resync, from payments-svc's trailers:
 * one before the oldest change kept, or the newest change published.
 */
function resumeAfter(error: ConnectError): bigint | undefined {
  if (error.code !== Code.FailedPrecondition) return undefined;
  const oldest = error.metadata.get("oldest-cursor");
  if (oldest !== null && /^\d+$/.test(oldest)) return BigInt(oldest) - 1n;
  const newest = error.metadata.get("newest-cursor");
  if (newest !== null && /^\d+$/.test(newest)) return BigInt(newest);
  return undefined;
}
