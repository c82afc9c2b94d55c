// Verification of stockguard's outgoing webhooks (Standard Webhooks, https://www.standardwebhooks.com/).
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Event } from "./types.js";

/** The delivery is not authentic, too old or too new, or malformed. Answer it with 400. */
export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookVerificationError";
  }
}

/** Headers as `fetch` (`Headers`), Node's `http.IncomingMessage.headers` or a plain object give them. */
export type WebhookHeaders =
  | Headers
  | { [name: string]: string | string[] | undefined };

export interface VerifyOptions {
  /** Largest accepted distance between `webhook-timestamp` and now, in seconds (default 300). */
  toleranceSeconds?: number;
  /** The current time (for tests); default `new Date()`. */
  now?: Date;
}

const PREFIX = "whsec_";

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof Headers !== "undefined" && headers instanceof Headers) {
    return headers.get(name) ?? undefined;
  }
  const plain = headers as { [name: string]: string | string[] | undefined };
  for (const [key, value] of Object.entries(plain)) {
    if (key.toLowerCase() === name) return Array.isArray(value) ? value.join(" ") : value;
  }
  return undefined;
}

function secretKey(secret: string): Buffer {
  const encoded = secret.startsWith(PREFIX) ? secret.slice(PREFIX.length) : secret;
  const key = Buffer.from(encoded, "base64");
  if (key.length === 0) throw new WebhookVerificationError("the webhook secret is empty");
  return key;
}

/**
 * Verifies one delivery and returns its event.
 *
 * `body` must be the raw request body exactly as received (a string or its bytes), not a
 * re-serialised object. Checks the `webhook-id`, `webhook-timestamp` and
 * `webhook-signature` headers: the timestamp within `toleranceSeconds` of now, and at
 * least one `v1,<base64>` signature equal (in constant time) to
 * HMAC-SHA256(secret, "{id}.{timestamp}.{body}"). Throws WebhookVerificationError otherwise.
 * The same event may arrive more than once (same `webhook-id`): deduplicate on `event.id`.
 */
export function verifyWebhook(
  body: string | Uint8Array,
  headers: WebhookHeaders,
  secret: string,
  options: VerifyOptions = {},
): Event {
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!id || !timestamp || !signatures) {
    throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature");
  }
  if (!/^\d{1,15}$/.test(timestamp)) {
    throw new WebhookVerificationError("webhook-timestamp is not unix seconds");
  }
  const tolerance = options.toleranceSeconds ?? 300;
  const now = Math.floor((options.now ?? new Date()).getTime() / 1000);
  const sent = Number(timestamp);
  if (sent < now - tolerance) throw new WebhookVerificationError("webhook-timestamp is too old");
  if (sent > now + tolerance) throw new WebhookVerificationError("webhook-timestamp is in the future");

  const payload = typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body);
  const expected = createHmac("sha256", secretKey(secret))
    .update(`${id}.${timestamp}.`)
    .update(payload)
    .digest();
  let matched = false;
  for (const candidate of signatures.split(" ")) {
    const comma = candidate.indexOf(",");
    if (comma < 0 || candidate.slice(0, comma) !== "v1") continue;
    const given = Buffer.from(candidate.slice(comma + 1), "base64");
    if (given.length === expected.length && timingSafeEqual(given, expected)) matched = true;
  }
  if (!matched) throw new WebhookVerificationError("no webhook-signature matches");
  try {
    return JSON.parse(payload.toString("utf8")) as Event;
  } catch {
    throw new WebhookVerificationError("the body is not JSON");
  }
}
