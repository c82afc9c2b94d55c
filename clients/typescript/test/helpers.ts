// Shared by the test files: the server `npm test` started, clients for it, unique names.
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Stockguard, type ClientOptions } from "@stockguard/client";

function need(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests with \`npm test\``);
  return value;
}

export const serverUrl = need("STOCKGUARD_TEST_URL");
export const adminKey = need("STOCKGUARD_TEST_ADMIN_KEY");
export const serviceKey = need("STOCKGUARD_TEST_SERVICE_KEY");

export function admin(options: Partial<ClientOptions> = {}): Stockguard {
  return new Stockguard({ baseUrl: serverUrl, apiKey: adminKey, ...options });
}

export function service(options: Partial<ClientOptions> = {}): Stockguard {
  return new Stockguard({ baseUrl: serverUrl, apiKey: serviceKey, ...options });
}

/** A name no other test uses (SKU codes allow upper case, location codes do not). */
export function unique(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** A location and a SKU with `quantity` units there; returns their codes. */
export async function stocked(quantity: number): Promise<{ sku: string; location: string }> {
  const sg = admin();
  const location = unique("loc");
  const sku = unique("SKU");
  await sg.putLocation(location, { name: location });
  await sg.putSku(sku, { name: sku });
  if (quantity > 0) await sg.adjust(sku, { location, delta: quantity, reason: "received" });
  return { sku, location };
}

export async function availableOf(sku: string): Promise<number> {
  const answer = await admin().availability([sku]);
  return answer.items[0]?.available ?? -1;
}

// ---- a proxy in front of the real server that can fail requests on purpose ---------------

export type Fault =
  | { kind: "busy"; retryAfter?: string; code?: "busy" | "cache_unavailable" }
  | { kind: "drop-before" } // the connection breaks before the server sees the request
  | { kind: "drop-after" }; // the server handles it, then the answer is lost

export interface Seen {
  method: string;
  path: string;
  headers: IncomingMessage["headers"];
  at: number;
}

export class FaultProxy {
  readonly faults: Fault[] = [];
  readonly seen: Seen[] = [];
  #server: Server;
  url = "";

  constructor(readonly target: string) {
    this.#server = createServer((req, res) => void this.#handle(req, res));
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.#server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise((r) => this.#server.close(r));
  }

  client(options: Partial<ClientOptions> = {}): Stockguard {
    return new Stockguard({ baseUrl: this.url, apiKey: adminKey, backoffMs: 20, ...options });
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.seen.push({ method: req.method ?? "", path: req.url ?? "", headers: req.headers, at: Date.now() });
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const fault = this.faults.shift();
    if (fault?.kind === "drop-before") {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === "busy") {
      const code = fault.code ?? "busy";
      const headers: { [k: string]: string } = { "content-type": "application/problem+json" };
      if (fault.retryAfter !== undefined) headers["retry-after"] = fault.retryAfter;
      res.writeHead(503, headers);
      res.end(JSON.stringify({ type: "about:blank", title: "Busy", status: 503, detail: "injected", code }));
      return;
    }
    const headers = new Headers();
    for (const [name, value] of Object.entries(req.headers)) {
      if (value === undefined || ["host", "connection", "content-length"].includes(name)) continue;
      headers.set(name, Array.isArray(value) ? value.join(", ") : value);
    }
    const method = req.method ?? "GET";
    const answer = await fetch(this.target + (req.url ?? "/"), {
      method,
      headers,
      body: method === "GET" || method === "HEAD" ? null : Buffer.concat(chunks),
    });
    const body = Buffer.from(await answer.arrayBuffer());
    if (fault?.kind === "drop-after") {
      req.socket.destroy();
      return;
    }
    const out: { [k: string]: string } = {};
    answer.headers.forEach((value, name) => {
      if (!["content-length", "connection", "transfer-encoding", "content-encoding"].includes(name)) out[name] = value;
    });
    res.writeHead(answer.status, out);
    res.end(body);
  }
}

export async function proxy(): Promise<FaultProxy> {
  return new FaultProxy(serverUrl).start();
}

/** The URL of a port nothing listens on. */
export async function freePortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  await new Promise((r) => server.close(r));
  return `http://127.0.0.1:${port}`;
}
