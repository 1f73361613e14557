export { PaymentsClient } from "./client.js";
export type { CallOptions, ListOptions, PaymentsClientOptions, PurchasePage, VerifyLookup } from "./client.js";
export { PaymentsError } from "./errors.js";
export type { PaymentsErrorCode } from "./errors.js";
export type { FollowEvent, FollowOptions } from "./follow.js";
export type { ChangeKindName, Purchase, PurchaseChange, PurchaseStatus, VerifyResult } from "./views.js";
