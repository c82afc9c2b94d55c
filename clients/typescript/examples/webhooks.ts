// Receiving stockguard's webhooks: check the signature with the endpoint's secret, apply
// the event, answer 2xx quickly. Anything else is sent again later.
import type { IncomingMessage, ServerResponse } from "node:http";
import { verifyWebhook, WebhookVerificationError, type Stockguard, type WebhookHeaders } from "@stockguard/client";
import type { Storefront } from "./events.js";

/** Once, with an admin key: send order and stock events to `url`. Returns the endpoint's
 * id and its secret, which is shown only now: keep it with your app's other secrets. */
export async function subscribe(admin: Stockguard, url: string): Promise<[id: string, secret: string]> {
  const endpoint = await admin.createWebhookEndpoint({ url, events: ["order.*", "stock.*"], description: "shop" });
  if (!endpoint.secret) throw new Error("the endpoint's secret was not shown");
  return [endpoint.id, endpoint.secret];
}

/** Your webhook route's handler: the raw body (not parsed JSON), the request headers and
 * the `whsec_…` secret shown when the endpoint was created. Returns the HTTP status to answer. */
export function receive(body: string | Uint8Array, headers: WebhookHeaders, secret: string, store: Storefront): number {
  let event;
  try {
    event = verifyWebhook(body, headers, secret);
  } catch (err) {
    if (err instanceof WebhookVerificationError) return 400; // not from stockguard, altered, or too old
    throw err;
  }
  store.apply(event); // the same event may arrive twice: apply() skips a repeat
  return 204;
}

/** The same as a plain node:http listener: `http.createServer(listener(secret, store))`.
 * (In a Next.js route handler: `receive(await request.text(), request.headers, …)`.) */
export function listener(secret: string, store: Storefront) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      res.writeHead(receive(Buffer.concat(chunks), req.headers, secret, store)).end();
    });
  };
}
