// verifyWebhook against signatures made independently (the `standardwebhooks` npm package),
// and against a real delivery of the server when it has webhook endpoints.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, test } from "node:test";
import { Webhook } from "standardwebhooks";
import { NotFoundError, verifyWebhook, WebhookVerificationError } from "@stockguard/client";
import { admin, service, stocked, unique } from "./helpers.js";

const secret = `whsec_${randomBytes(32).toString("base64")}`;
const otherSecret = `whsec_${randomBytes(32).toString("base64")}`;
const body = JSON.stringify({
  id: "evt_test1",
  seq: 7,
  type: "stock.low",
  occurred_at: "2026-11-26T18:00:00Z",
  data: { sku: "TSHIRT-M", available: 2, threshold: 3 },
});

function signed(
  payload: string,
  { key = secret, at = new Date(), id = "evt_test1" }: { key?: string; at?: Date; id?: string } = {},
): { [name: string]: string } {
  return {
    "webhook-id": id,
    "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
    "webhook-signature": new Webhook(key).sign(id, at, payload),
  };
}

const rejects = (fn: () => unknown, why: RegExp): void => {
  assert.throws(fn, (err: unknown) => err instanceof WebhookVerificationError && why.test(err.message));
};

describe("verifyWebhook", () => {
  test("accepts a delivery signed by the standardwebhooks library and returns the event", () => {
    const event = verifyWebhook(body, signed(body), secret);
    assert.equal(event.id, "evt_test1");
    assert.equal(event.type, "stock.low");
    // the same with the body as bytes and the headers as a fetch Headers object
    const again = verifyWebhook(Buffer.from(body), new Headers(signed(body)), secret);
    assert.deepEqual(again, event);
  });

  test("refuses a changed body, another secret, another id", () => {
    const headers = signed(body);
    rejects(() => verifyWebhook(body.replace('"available":2', '"available":9'), headers, secret), /no webhook-signature matches/);
    rejects(() => verifyWebhook(body, headers, otherSecret), /no webhook-signature matches/);
    rejects(() => verifyWebhook(body, { ...headers, "webhook-id": "evt_other" }, secret), /no webhook-signature matches/);
  });

  test("5 minutes of tolerance either way", () => {
    const now = new Date();
    const at = (seconds: number): Date => new Date(now.getTime() + seconds * 1000);
    assert.ok(verifyWebhook(body, signed(body, { at: at(-290) }), secret, { now }));
    assert.ok(verifyWebhook(body, signed(body, { at: at(290) }), secret, { now }));
    rejects(() => verifyWebhook(body, signed(body, { at: at(-310) }), secret, { now }), /too old/);
    rejects(() => verifyWebhook(body, signed(body, { at: at(310) }), secret, { now }), /future/);
    // a wider window when asked
    assert.ok(verifyWebhook(body, signed(body, { at: at(-310) }), secret, { now, toleranceSeconds: 600 }));
  });

  test("any one of several v1 signatures (a rotated secret) is enough; other versions are ignored", () => {
    const good = signed(body);
    const old = signed(body, { key: otherSecret });
    const both = `${old["webhook-signature"]} ${good["webhook-signature"]}`;
    assert.ok(verifyWebhook(body, { ...good, "webhook-signature": both }, secret));
    assert.ok(verifyWebhook(body, { ...good, "webhook-signature": both }, otherSecret));
    const asV2 = (good["webhook-signature"] ?? "").replace(/^v1,/, "v2,");
    rejects(() => verifyWebhook(body, { ...good, "webhook-signature": asV2 }, secret), /no webhook-signature matches/);
    rejects(() => verifyWebhook(body, { ...good, "webhook-signature": "v1,short" }, secret), /no webhook-signature matches/);
  });

  test("missing or malformed headers", () => {
    const good = signed(body);
    for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
      const { [name]: _gone, ...rest } = good;
      rejects(() => verifyWebhook(body, rest, secret), /missing/);
    }
    rejects(() => verifyWebhook(body, { ...good, "webhook-timestamp": "12.5" }, secret), /unix seconds/);
    // header names are case-insensitive, as Node's IncomingMessage lower-cases them anyway
    const upper = Object.fromEntries(Object.entries(good).map(([k, v]) => [k.toUpperCase(), v]));
    assert.ok(verifyWebhook(body, upper, secret));
  });

  test("the library agrees: what it signs it verifies, and so does verifyWebhook", () => {
    const headers = signed(body);
    assert.deepEqual(new Webhook(secret).verify(body, headers), verifyWebhook(body, headers, secret));
  });
});

interface Received {
  body: string;
  headers: IncomingMessage["headers"];
}

test("a real delivery from the server verifies with the endpoint's secret", async (t) => {
  const deliveries: Received[] = [];
  let arrived: () => void = () => {};
  const receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      deliveries.push({ body: Buffer.concat(chunks).toString("utf8"), headers: req.headers });
      res.writeHead(204).end();
      arrived();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  try {
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks`;
    const sg = admin();
    let endpoint;
    try {
      endpoint = await sg.createWebhookEndpoint({ url, events: ["order.placed"], description: "ts client test" });
    } catch (err) {
      if (err instanceof NotFoundError) {
        t.skip("this server has no /v1/admin/webhook-endpoints yet");
        return;
      }
      throw err;
    }
    const endpointSecret = endpoint.secret;
    assert.ok(endpointSecret, "the secret is shown when the endpoint is created");
    assert.match(endpointSecret, /^whsec_/);
    const { sku } = await stocked(1);
    const id = unique("hook");
    // Other tests place orders at the same time: wait for the delivery of ours.
    const ours = (): Received | undefined => deliveries.find((d) => d.body.includes(`"${id}"`));
    const waiting = new Promise<void>((r) => (arrived = () => ours() && r()));
    await service().placeOrder({ id, lines: [{ sku, quantity: 1 }] });
    await Promise.race([waiting, new Promise((_, no) => setTimeout(() => no(new Error("no delivery in 20 s")), 20_000))]);
    const delivery = ours() as Received;
    const event = verifyWebhook(delivery.body, delivery.headers, endpointSecret);
    assert.equal(event.type, "order.placed");
    assert.equal((event.data as { order: { id: string } }).order.id, id);
    assert.equal(delivery.headers["webhook-id"], event.id);
    assert.throws(() => verifyWebhook(delivery.body, delivery.headers, otherSecret), WebhookVerificationError);
    await sg.deleteWebhookEndpoint(endpoint.id);
  } finally {
    receiver.closeAllConnections();
    await new Promise((r) => receiver.close(r));
  }
});
