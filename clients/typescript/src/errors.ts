// Typed errors: every refusal of the service is an RFC 9457 problem; the class says which.
import type { Problem, Shortage } from "./types.js";

/** A refusal of the service (any non-2xx answer), carrying its problem document. */
export class StockguardError extends Error {
  /** HTTP status of the answer. */
  readonly status: number;
  /** The problem's machine-readable `code` (`out_of_stock`, `busy`, …). */
  readonly code: string;
  /** The problem's human-readable `detail`. */
  readonly detail: string;
  /** The whole problem document, with the members some codes add. */
  readonly problem: Problem;
  /** Method and path of the request that was refused. */
  readonly request: string;

  constructor(problem: Problem, request = "") {
    super(`${problem.status} ${problem.code}: ${problem.detail}${request ? ` (${request})` : ""}`);
    this.name = new.target.name;
    this.status = problem.status;
    this.code = problem.code;
    this.detail = problem.detail;
    this.problem = problem;
    this.request = request;
  }
}

/** 401 `unauthorized`: no API key, or an unknown or revoked one. */
export class UnauthorizedError extends StockguardError {}
/** 403 `forbidden`: the key's role may not use this route. */
export class ForbiddenError extends StockguardError {}
/** 404 `not_found` (an unknown or deleted order, SKU, …). */
export class NotFoundError extends StockguardError {}
/** 400 `invalid_signature` (payment webhooks). */
export class InvalidSignatureError extends StockguardError {}
/** 410 `events_expired`: the feed no longer keeps events that old. */
export class EventsExpiredError extends StockguardError {}
/** 413 `payload_too_large`. */
export class PayloadTooLargeError extends StockguardError {}

/** 422 `validation_error` (and other 422 refusals of the input): nothing changed. */
export class ValidationError extends StockguardError {
  /** The fields refused, when a schema refused them. */
  get errors(): unknown[] {
    const errors = this.problem["errors"];
    return Array.isArray(errors) ? errors : [];
  }
}

/** 422 `unknown_sku`: the order names SKUs that were never created; nothing was held. */
export class UnknownSkuError extends ValidationError {
  /** Every unknown SKU of the order. */
  get skus(): string[] {
    const skus = this.problem["skus"];
    return Array.isArray(skus) ? skus.map(String) : [];
  }
}

/** 422 `idempotency_key_reused`: the key was used before for another request. */
export class IdempotencyKeyReusedError extends StockguardError {}

/** Any 409: the current state does not allow it; nothing changed. */
export class ConflictError extends StockguardError {}

/** 409 `out_of_stock`: nothing was reserved and no order stored. */
export class OutOfStockError extends ConflictError {
  /** Every SKU that is short: `{sku, requested, available}`. */
  get shortages(): Shortage[] {
    const shortages = this.problem["shortages"];
    return Array.isArray(shortages) ? (shortages as Shortage[]) : [];
  }
}

/** 409 `invalid_transition`: the order (or transfer) is in a status that forbids this. */
export class InvalidTransitionError extends ConflictError {
  get from(): string {
    return String(this.problem["from"] ?? "");
  }
  get to(): string {
    return String(this.problem["to"] ?? "");
  }
}

/** 409 `order_not_deletable`: shipped and delivered orders stay. */
export class OrderNotDeletableError extends ConflictError {}
/** 409 `insufficient_stock`: the adjustment or transfer would take reserved, unavailable or missing units. */
export class InsufficientStockError extends ConflictError {}
/** 409 `stale_quantity`: `expected_on_hand` no longer holds (compare-and-set). */
export class StaleQuantityError extends ConflictError {}
/** 409 `receipt_exceeds_in_transit`. */
export class ReceiptExceedsInTransitError extends ConflictError {}
/** 409 `reservation_expired`: the hold ran out; place the order again. */
export class ReservationExpiredError extends ConflictError {}

/** 409 `batch_rejected`: an all-or-nothing batch had failing items; nothing was applied. */
export class BatchRejectedError extends ConflictError {
  /** `[{index, problem}]` of every failed item. */
  get items(): { index: number; problem: Problem }[] {
    const items = this.problem["items"];
    return Array.isArray(items) ? (items as { index: number; problem: Problem }[]) : [];
  }
}

/** 409 `return_exceeds_fulfilled`: `lines` says what each SKU may still return. */
export class ReturnExceedsFulfilledError extends ConflictError {
  get lines(): { sku: string; requested: number; returnable: number }[] {
    const lines = this.problem["lines"];
    return Array.isArray(lines)
      ? (lines as { sku: string; requested: number; returnable: number }[])
      : [];
  }
}

/** 503 `busy` or `cache_unavailable` that was still refused after the client's retries. */
export class UnavailableError extends StockguardError {}
/** 503 `busy`: rows locked too long, or the database connection was lost. */
export class BusyError extends UnavailableError {}
/** 503 `cache_unavailable`: Redis failed in strict cache mode; nothing changed. */
export class CacheUnavailableError extends UnavailableError {}

/** The service could not be reached, or did not answer in time, after the client's retries.
 * The outcome of a POST is then unknown: send it again with the same `idempotencyKey`. */
export class StockguardConnectionError extends Error {
  readonly request: string;
  /** The Idempotency-Key the request was sent with (POST only). */
  readonly idempotencyKey: string | undefined;
  constructor(request: string, cause: unknown, idempotencyKey?: string) {
    super(`${request}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = "StockguardConnectionError";
    this.request = request;
    this.idempotencyKey = idempotencyKey;
  }
}

const BY_CODE: { [code: string]: typeof StockguardError } = {
  unauthorized: UnauthorizedError,
  forbidden: ForbiddenError,
  not_found: NotFoundError,
  validation_error: ValidationError,
  unknown_sku: UnknownSkuError,
  idempotency_key_reused: IdempotencyKeyReusedError,
  out_of_stock: OutOfStockError,
  invalid_transition: InvalidTransitionError,
  batch_rejected: BatchRejectedError,
  return_exceeds_fulfilled: ReturnExceedsFulfilledError,
  order_not_deletable: OrderNotDeletableError,
  insufficient_stock: InsufficientStockError,
  stale_quantity: StaleQuantityError,
  receipt_exceeds_in_transit: ReceiptExceedsInTransitError,
  reservation_expired: ReservationExpiredError,
  invalid_signature: InvalidSignatureError,
  events_expired: EventsExpiredError,
  payload_too_large: PayloadTooLargeError,
  busy: BusyError,
  cache_unavailable: CacheUnavailableError,
};

const BY_STATUS: { [status: number]: typeof StockguardError } = {
  400: InvalidSignatureError,
  401: UnauthorizedError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  410: EventsExpiredError,
  413: PayloadTooLargeError,
  422: ValidationError,
  503: UnavailableError,
};

/** The error for a refusal; `body` is the parsed answer (a problem, or anything else). */
export function errorFor(status: number, body: unknown, request: string): StockguardError {
  const problem = asProblem(status, body);
  const byCode = BY_CODE[problem.code];
  const cls = byCode !== undefined && problem.status === status ? byCode : BY_STATUS[status];
  return new (cls ?? StockguardError)(problem, request);
}

function asProblem(status: number, body: unknown): Problem {
  if (body !== null && typeof body === "object" && !Array.isArray(body)) {
    const b = body as { [key: string]: unknown };
    if (typeof b["code"] === "string") {
      return {
        ...b,
        type: typeof b["type"] === "string" ? b["type"] : "about:blank",
        title: typeof b["title"] === "string" ? b["title"] : "",
        status: typeof b["status"] === "number" ? b["status"] : status,
        detail: typeof b["detail"] === "string" ? b["detail"] : "",
        code: b["code"],
      };
    }
  }
  // Not a problem document (a proxy's error page, say): keep what came as the detail.
  const text = typeof body === "string" ? body.slice(0, 500) : JSON.stringify(body ?? null);
  return { type: "about:blank", title: "HTTP error", status, detail: text, code: `http_${status}` };
}
