// A small fetch-based client for the stockguard HTTP API (Node 20+, no dependencies).
import { randomUUID } from "node:crypto";
import { StockguardConnectionError, errorFor } from "./errors.js";
import type * as T from "./types.js";

export interface ClientOptions {
  /** Where the service listens, e.g. `http://127.0.0.1:8000`. */
  baseUrl: string;
  /** An API key (`Authorization: Bearer …`); the operations routes need none. */
  apiKey?: string;
  /** Retries after the first attempt (503 `busy`/`cache_unavailable`, network errors); default 3. */
  retries?: number;
  /** First backoff delay in ms, doubled on each retry (with jitter); default 250. */
  backoffMs?: number;
  /** Largest delay between two attempts in ms, also caps `Retry-After`; default 10000. */
  maxDelayMs?: number;
  /** Per-attempt timeout in ms (then the attempt counts as a network error); default 30000. */
  timeoutMs?: number;
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch;
}

export interface RequestOptions {
  /** POST only: the `Idempotency-Key` to send. Default: a new UUID per call, reused by the
   * call's own retries. Pass your own (e.g. derived from your order id) to make a retry
   * after a crash or a StockguardConnectionError safe too. */
  idempotencyKey?: string;
  /** Cancels the call, including its waits between retries. */
  signal?: AbortSignal;
}

type Query = { [name: string]: string | number | boolean | readonly string[] | null | undefined };

export interface SendOptions extends RequestOptions {
  query?: Query;
  body?: unknown;
}

/** A 2xx answer: the parsed body and what the headers said. */
export interface StockguardResponse<B> {
  status: number;
  body: B;
  headers: Headers;
  /** `Idempotent-Replayed: true`: the answer stored for the Idempotency-Key, not a new effect. */
  replayed: boolean;
  /** The attempts it took (1 when the first one was answered). */
  attempts: number;
}

export interface ListOptions extends RequestOptions {
  /** Page size (1…500). */
  limit?: number;
  /** Start after this cursor (a page's `next`). */
  after?: string;
}

export interface EventsOptions {
  /** Start after this `seq` (the last one you processed); default: from the oldest kept. */
  after?: number;
  /** Only these types; `prefix.*` for a family, e.g. `["stock.*", "order.paid"]`. */
  type?: string | readonly string[];
  /** Page size (1…500). */
  limit?: number;
  /** Keep polling for new events instead of ending when the feed has nothing newer. */
  follow?: boolean;
  /** Pause between polls when following, in ms; default 1000. */
  pollIntervalMs?: number;
  /** Ends the iteration (following or not). */
  signal?: AbortSignal;
}

const RETRYABLE_CODES = new Set(["busy", "cache_unavailable"]);
const VERSION = "0.2.0";

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** `Retry-After` in ms: delay-seconds or an HTTP date; undefined when absent or unreadable. */
function retryAfterMs(headers: Headers): number | undefined {
  const value = headers.get("retry-after");
  if (value === null) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

function segment(value: string): string {
  return encodeURIComponent(value);
}

/**
 * The stockguard API. Every POST carries an `Idempotency-Key` (one per call, reused by
 * the call's retries); 503 `busy`/`cache_unavailable` and network errors are retried with
 * exponential backoff, honouring `Retry-After`; refusals throw a StockguardError subclass
 * carrying the problem; lists are async iterators.
 */
export class Stockguard {
  readonly baseUrl: string;
  readonly #apiKey: string | undefined;
  readonly #retries: number;
  readonly #backoffMs: number;
  readonly #maxDelayMs: number;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#apiKey = options.apiKey;
    this.#retries = options.retries ?? 3;
    this.#backoffMs = options.backoffMs ?? 250;
    this.#maxDelayMs = options.maxDelayMs ?? 10_000;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  // ---- transport -------------------------------------------------------------------------

  /** One call, with the client's retries; throws StockguardError for any non-2xx answer. */
  async send<B = unknown>(
    verb: string,
    path: string,
    options: SendOptions = {},
  ): Promise<StockguardResponse<B>> {
    const method = verb.toUpperCase();
    const url = new URL(this.baseUrl + path);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value === undefined || value === null) continue;
      if (typeof value === "object") for (const v of value) url.searchParams.append(name, v);
      else url.searchParams.append(name, String(value));
    }
    const headers: { [name: string]: string } = {
      accept: "application/json, application/problem+json",
      "user-agent": `stockguard-client-ts/${VERSION}`,
    };
    if (this.#apiKey !== undefined) headers["authorization"] = `Bearer ${this.#apiKey}`;
    let idempotencyKey: string | undefined;
    if (method === "POST") {
      idempotencyKey = options.idempotencyKey ?? randomUUID();
      headers["idempotency-key"] = idempotencyKey;
    }
    let payload: string | undefined;
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(options.body);
    }
    const what = `${method} ${path}`;
    // A DELETE whose answer was lost may have happened: its retry would answer 404.
    const retryNetwork = method !== "DELETE";

    for (let attempt = 1; ; attempt++) {
      const last = attempt > this.#retries;
      let response: Response;
      try {
        const timeout = AbortSignal.timeout(this.#timeoutMs);
        const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
        response = await this.#fetch(url, { method, headers, body: payload ?? null, signal });
      } catch (err) {
        if (options.signal?.aborted) throw options.signal.reason;
        if (last || !retryNetwork) throw new StockguardConnectionError(what, err, idempotencyKey);
        await sleep(this.#backoff(attempt), options.signal);
        continue;
      }
      let body: unknown;
      try {
        body = await this.#read(response);
      } catch (err) {
        // The connection broke while the body was read: the same as no answer.
        if (options.signal?.aborted) throw options.signal.reason;
        if (last || !retryNetwork) throw new StockguardConnectionError(what, err, idempotencyKey);
        await sleep(this.#backoff(attempt), options.signal);
        continue;
      }
      if (response.ok) {
        return {
          status: response.status,
          body: body as B,
          headers: response.headers,
          replayed: response.headers.get("idempotent-replayed") === "true",
          attempts: attempt,
        };
      }
      const error = errorFor(response.status, body, what);
      if (last || response.status !== 503 || !RETRYABLE_CODES.has(error.code)) throw error;
      const hinted = retryAfterMs(response.headers);
      const delay = Math.min(this.#maxDelayMs, hinted ?? this.#backoff(attempt));
      await sleep(delay, options.signal);
    }
  }

  #backoff(attempt: number): number {
    const full = Math.min(this.#maxDelayMs, this.#backoffMs * 2 ** (attempt - 1));
    return full / 2 + (Math.random() * full) / 2;
  }

  async #read(response: Response): Promise<unknown> {
    const text = await response.text();
    if (text === "") return undefined;
    const type = response.headers.get("content-type") ?? "";
    if (type.includes("json")) {
      try {
        return JSON.parse(text) as unknown;
      } catch {
        return text;
      }
    }
    return text;
  }

  async #body<B>(method: string, path: string, options: SendOptions = {}): Promise<B> {
    return (await this.send<B>(method, path, options)).body;
  }

  /** Every item of a cursor-paged list, fetching pages as the iteration needs them. */
  async *paginate<I>(path: string, query: Query = {}, options: ListOptions = {}): AsyncGenerator<I> {
    let after: string | undefined = options.after;
    for (;;) {
      const page = await this.#body<T.Page<I>>("GET", path, {
        query: { ...query, limit: options.limit, after },
        ...(options.signal ? { signal: options.signal } : {}),
      });
      yield* page.items;
      if (page.next === null || page.next === undefined) return;
      after = page.next;
    }
  }

  // ---- operations -----------------------------------------------------------------------

  /** `GET /readyz`: resolves when PostgreSQL (and Redis in strict mode) are reachable. */
  async ready(options: RequestOptions = {}): Promise<T.Readiness> {
    return this.#body("GET", "/readyz", options);
  }

  // ---- catalogue and stock ----------------------------------------------------------------

  async putLocation(code: string, body: T.LocationIn, options: RequestOptions = {}): Promise<T.Location> {
    return this.#body("PUT", `/v1/locations/${segment(code)}`, { ...options, body });
  }

  listLocations(options: ListOptions = {}): AsyncGenerator<T.Location> {
    return this.paginate("/v1/locations", {}, options);
  }

  async putChannel(code: string, body: T.ChannelIn, options: RequestOptions = {}): Promise<T.Channel> {
    return this.#body("PUT", `/v1/channels/${segment(code)}`, { ...options, body });
  }

  async getChannel(code: string, options: RequestOptions = {}): Promise<T.Channel> {
    return this.#body("GET", `/v1/channels/${segment(code)}`, options);
  }

  async putSku(sku: string, body: T.SkuIn, options: RequestOptions = {}): Promise<T.Sku> {
    return this.#body("PUT", `/v1/skus/${segment(sku)}`, { ...options, body });
  }

  async getSku(sku: string, options: RequestOptions = {}): Promise<T.Sku> {
    return this.#body("GET", `/v1/skus/${segment(sku)}`, options);
  }

  listSkus(options: ListOptions = {}): AsyncGenerator<T.Sku> {
    return this.paginate("/v1/skus", {}, options);
  }

  /** `POST /v1/skus/{sku}/adjustments`: `delta`, `set_on_hand`, `unavailable_delta`, … → the level after. */
  async adjust(sku: string, body: T.AdjustmentIn, options: RequestOptions = {}): Promise<T.AdjustmentResult> {
    return this.#body("POST", `/v1/skus/${segment(sku)}/adjustments`, { ...options, body });
  }

  async setSafetyStock(
    sku: string,
    location: string,
    safetyStock: number,
    options: RequestOptions = {},
  ): Promise<T.Level> {
    return this.#body("PUT", `/v1/skus/${segment(sku)}/levels/${segment(location)}`, {
      ...options,
      body: { safety_stock: safetyStock },
    });
  }

  /** `POST /v1/adjustments/batch`; `all_or_nothing` with a failing item throws BatchRejectedError. */
  async adjustBatch(body: T.BatchIn, options: RequestOptions = {}): Promise<T.BatchResult> {
    return this.#body("POST", "/v1/adjustments/batch", { ...options, body });
  }

  async availability(
    skus: readonly string[],
    params: { channel?: string } = {},
    options: RequestOptions = {},
  ): Promise<T.Availability> {
    return this.#body("GET", "/v1/availability", {
      ...options,
      query: { sku: skus, channel: params.channel },
    });
  }

  // ---- orders ---------------------------------------------------------------------------

  /** `POST /v1/orders`. Give the shop's order id as `id`: placing it again with the same
   * content returns the same order. Throws OutOfStockError (`shortages`) when short. */
  async placeOrder(body: T.OrderIn, options: RequestOptions = {}): Promise<T.Order> {
    return this.#body("POST", "/v1/orders", { ...options, body });
  }

  async getOrder(id: string, options: RequestOptions = {}): Promise<T.Order> {
    return this.#body("GET", `/v1/orders/${segment(id)}`, options);
  }

  listOrders(params: { status?: T.OrderStatus } = {}, options: ListOptions = {}): AsyncGenerator<T.Order> {
    return this.paginate("/v1/orders", { status: params.status }, options);
  }

  async payOrder(id: string, body: T.PaymentIn, options: RequestOptions = {}): Promise<T.Order> {
    return this.#body("POST", `/v1/orders/${segment(id)}/payments`, { ...options, body });
  }

  async cancelOrder(id: string, body: T.CancelIn = {}, options: RequestOptions = {}): Promise<T.Order> {
    return this.#body("POST", `/v1/orders/${segment(id)}/cancel`, { ...options, body });
  }

  /** `PATCH /v1/orders/{id}`: `processing`, `shipped`, `delivered` or `cancelled`. */
  async setOrderStatus(
    id: string,
    status: "processing" | "shipped" | "delivered" | "cancelled",
    options: RequestOptions = {},
  ): Promise<T.Order> {
    return this.#body("PATCH", `/v1/orders/${segment(id)}`, { ...options, body: { status } });
  }

  async deleteOrder(id: string, options: RequestOptions = {}): Promise<void> {
    await this.send("DELETE", `/v1/orders/${segment(id)}`, options);
  }

  /** `POST /v1/orders/{id}/extend`: a pending order's holds expire `ttlSeconds` from now. */
  async extendOrder(id: string, ttlSeconds: number, options: RequestOptions = {}): Promise<T.Order> {
    return this.#body("POST", `/v1/orders/${segment(id)}/extend`, {
      ...options,
      body: { reservation_ttl_seconds: ttlSeconds },
    });
  }

  async returnOrder(id: string, body: T.ReturnIn, options: RequestOptions = {}): Promise<T.Return> {
    return this.#body("POST", `/v1/orders/${segment(id)}/returns`, { ...options, body });
  }

  async listReturns(id: string, options: RequestOptions = {}): Promise<T.Return[]> {
    const list = await this.#body<T.ReturnList>("GET", `/v1/orders/${segment(id)}/returns`, options);
    return list.items;
  }

  // ---- transfers ------------------------------------------------------------------------

  async createTransfer(body: T.TransferIn, options: RequestOptions = {}): Promise<T.Transfer> {
    return this.#body("POST", "/v1/transfers", { ...options, body });
  }

  async receiveTransfer(id: string, body: T.ReceiptIn, options: RequestOptions = {}): Promise<T.Transfer> {
    return this.#body("POST", `/v1/transfers/${segment(id)}/receipts`, { ...options, body });
  }

  async cancelTransfer(id: string, options: RequestOptions = {}): Promise<T.Transfer> {
    return this.#body("POST", `/v1/transfers/${segment(id)}/cancel`, options);
  }

  async getTransfer(id: string, options: RequestOptions = {}): Promise<T.Transfer> {
    return this.#body("GET", `/v1/transfers/${segment(id)}`, options);
  }

  listTransfers(params: { status?: T.TransferStatus } = {}, options: ListOptions = {}): AsyncGenerator<T.Transfer> {
    return this.paginate("/v1/transfers", { status: params.status }, options);
  }

  // ---- events ---------------------------------------------------------------------------

  /** One page of the feed: events with `seq > after`, in commit order. */
  async eventsPage(
    params: { after?: number; type?: string | readonly string[]; limit?: number } = {},
    options: RequestOptions = {},
  ): Promise<T.EventPage> {
    const type = typeof params.type === "string" ? [params.type] : params.type;
    return this.#body("GET", "/v1/events", {
      ...options,
      query: { after: params.after, type, limit: params.limit },
    });
  }

  /** The feed as an async iterator, in `seq` order. Remember the last `seq` you processed
   * and pass it as `after` next time: no event is skipped, none is seen twice. */
  async *events(options: EventsOptions = {}): AsyncGenerator<T.Event> {
    let after = options.after;
    const signal = options.signal;
    const request = signal ? { signal } : {};
    for (;;) {
      if (signal?.aborted) return;
      let page: T.EventPage;
      try {
        page = await this.eventsPage(
          {
            ...(after !== undefined ? { after } : {}),
            ...(options.type !== undefined ? { type: options.type } : {}),
            ...(options.limit !== undefined ? { limit: options.limit } : {}),
          },
          request,
        );
      } catch (err) {
        if (signal?.aborted) return; // aborted while a page was on its way
        throw err;
      }
      for (const event of page.items) {
        yield event;
        if (typeof event.seq === "number") after = event.seq;
      }
      if (page.next !== null) {
        after = page.next;
        continue;
      }
      if (!options.follow) return;
      try {
        await sleep(options.pollIntervalMs ?? 1000, options.signal);
      } catch {
        return; // aborted: the iteration ends
      }
    }
  }

  // ---- outgoing webhook endpoints (admin) ---------------------------------------------------

  /** The answer carries the endpoint's `secret` (`whsec_…`), shown only here. */
  async createWebhookEndpoint(
    body: T.WebhookEndpointIn,
    options: RequestOptions = {},
  ): Promise<T.WebhookEndpointCreated> {
    return this.#body("POST", "/v1/admin/webhook-endpoints", { ...options, body });
  }

  listWebhookEndpoints(options: ListOptions = {}): AsyncGenerator<T.WebhookEndpoint> {
    return this.paginate("/v1/admin/webhook-endpoints", {}, options);
  }

  async getWebhookEndpoint(id: string, options: RequestOptions = {}): Promise<T.WebhookEndpoint> {
    return this.#body("GET", `/v1/admin/webhook-endpoints/${segment(id)}`, options);
  }

  async updateWebhookEndpoint(
    id: string,
    body: T.WebhookEndpointPatch,
    options: RequestOptions = {},
  ): Promise<T.WebhookEndpoint> {
    return this.#body("PATCH", `/v1/admin/webhook-endpoints/${segment(id)}`, { ...options, body });
  }

  async deleteWebhookEndpoint(id: string, options: RequestOptions = {}): Promise<void> {
    await this.send("DELETE", `/v1/admin/webhook-endpoints/${segment(id)}`, options);
  }

  /** Sends one `ping` event to the endpoint now; answers the delivery attempt. */
  async testWebhookEndpoint(id: string, options: RequestOptions = {}): Promise<T.WebhookDelivery> {
    return this.#body("POST", `/v1/admin/webhook-endpoints/${segment(id)}/test`, options);
  }

  webhookDeliveries(
    id: string,
    params: { status?: "pending" | "delivered" | "failed" } = {},
    options: ListOptions = {},
  ): AsyncGenerator<T.WebhookDelivery> {
    return this.paginate(
      `/v1/admin/webhook-endpoints/${segment(id)}/deliveries`,
      { status: params.status },
      options,
    );
  }

  async replayWebhookEndpoint(id: string, afterSeq: number, options: RequestOptions = {}): Promise<T.ReplayQueued> {
    return this.#body("POST", `/v1/admin/webhook-endpoints/${segment(id)}/replay`, {
      ...options,
      body: { after_seq: afterSeq },
    });
  }

  // ---- admin ------------------------------------------------------------------------------

  async createApiKey(body: T.ApiKeyIn, options: RequestOptions = {}): Promise<T.ApiKeyCreated> {
    return this.#body("POST", "/v1/admin/api-keys", { ...options, body });
  }

  listApiKeys(options: ListOptions = {}): AsyncGenerator<T.ApiKey> {
    return this.paginate("/v1/admin/api-keys", {}, options);
  }

  async revokeApiKey(id: string, options: RequestOptions = {}): Promise<void> {
    await this.send("DELETE", `/v1/admin/api-keys/${segment(id)}`, options);
  }

  listNeedsReview(options: ListOptions = {}): AsyncGenerator<T.Order> {
    return this.paginate("/v1/admin/orders/needs-review", {}, options);
  }

  listPaidUncommitted(options: ListOptions = {}): AsyncGenerator<T.Order> {
    return this.paginate("/v1/admin/orders/paid-uncommitted", {}, options);
  }

  async recoverInventory(id: string, options: RequestOptions = {}): Promise<T.RecoveryResult> {
    return this.#body("POST", `/v1/admin/orders/${segment(id)}/recover-inventory`, options);
  }

  inventoryLogs(id: string, options: ListOptions = {}): AsyncGenerator<T.InventoryLog> {
    return this.paginate(`/v1/admin/orders/${segment(id)}/inventory-logs`, {}, options);
  }

  movements(params: { sku?: string; orderId?: string } = {}, options: ListOptions = {}): AsyncGenerator<T.Movement> {
    return this.paginate("/v1/admin/movements", { sku: params.sku, order_id: params.orderId }, options);
  }

  async verify(options: RequestOptions = {}): Promise<T.Verification> {
    return this.#body("GET", "/v1/admin/verify", options);
  }

  async reconcileCache(repair: boolean, options: RequestOptions = {}): Promise<T.ReconcileReport> {
    return this.#body("POST", "/v1/admin/cache/reconcile", { ...options, body: { repair } });
  }

  async explain(
    params: { sku: string; location?: string; at?: string },
    options: RequestOptions = {},
  ): Promise<T.Explain> {
    return this.#body("GET", "/v1/admin/explain", { ...options, query: params });
  }
}
