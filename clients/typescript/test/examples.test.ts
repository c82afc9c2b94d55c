// The examples of docs/INTEGRATION.md (clients/typescript/examples/*.ts) against the live
// server: the checkout flow with its out-of-stock, lost-answer and expired-hold branches,
// the events feed and a webhook receiver.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { Webhook } from "standardwebhooks";
import { NotFoundError, type Order, type Stockguard } from "@stockguard/client";
import * as checkout from "../examples/checkout.js";
import * as events from "../examples/events.js";
import * as webhooks from "../examples/webhooks.js";
import { admin, proxy, serverUrl, serviceKey, stocked, unique } from "./helpers.js";

function connect(): Stockguard {
  process.env["STOCKGUARD_URL"] = serverUrl;
  process.env["STOCKGUARD_API_KEY"] = serviceKey;
  return checkout.connect();
}

function isOrder(x: Order | unknown[]): x is Order {
  return !Array.isArray(x);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test("checkout example: hold, hold again, short, keep holding, pay, ship, return, cancel", async () => {
  const sg = connect();
  const tee = (await stocked(3)).sku;
  const cap = (await stocked(1)).sku;
  const id = unique("web");
  const lines = [{ sku: tee, quantity: 2 }, { sku: cap, quantity: 1 }];
  const order = await checkout.holdStock(sg, id, lines, 5900, "EUR");
  assert.ok(isOrder(order));
  assert.equal(order.status, "pending");
  assert.deepEqual(await checkout.holdStock(sg, id, lines, 5900, "EUR"), order);
  assert.equal((await sg.getSku(tee)).reserved, 2); // held once

  const short = await checkout.holdStock(sg, unique("web"), [{ sku: tee, quantity: 2 }], 1, "EUR");
  assert.deepEqual(short, [{ sku: tee, requested: 2, available: 1 }]);

  const held = await checkout.keepHolding(sg, order.id);
  assert.ok(held);
  const until = Date.parse(held.reservations[0]?.expires_at ?? "") - Date.now(); // 10 minutes from now
  assert.ok(until > 590_000 && until <= 600_000, `held for ${until} ms more`);
  const paymentId = unique("bank");
  const paid = await checkout.recordPayment(sg, order.id, paymentId, 5900, "EUR");
  assert.equal(paid.status, "paid");
  assert.deepEqual(await checkout.recordPayment(sg, order.id, paymentId, 5900, "EUR"), paid);
  assert.equal((await checkout.ship(sg, order.id)).status, "shipped");
  assert.equal((await checkout.ship(sg, order.id)).status, "shipped"); // again: nothing more
  const rma = unique("rma");
  const back = [{ sku: cap, quantity: 1, disposition: "damaged" as const }];
  const returned = await checkout.takeReturn(sg, order.id, rma, back);
  assert.deepEqual(await checkout.takeReturn(sg, order.id, rma, back), returned);
  const capNow = await sg.getSku(cap);
  assert.deepEqual([capNow.on_hand, capNow.unavailable], [1, 1]);

  const other = await checkout.holdStock(sg, unique("web"), [{ sku: tee, quantity: 1 }], 1, "EUR");
  assert.ok(isOrder(other));
  assert.equal((await checkout.cancel(sg, other.id, "customer left")).status, "cancelled");
  assert.equal((await checkout.cancel(sg, other.id, "customer left")).status, "cancelled");
  assert.equal((await sg.getSku(tee)).available, 1);
});

test("checkout example survives lost answers: places again, holds once", async () => {
  const { sku } = await stocked(2);
  const p = await proxy();
  try {
    // Every answer of the first call is lost (5 attempts), then the example places again.
    for (let i = 0; i < 5; i++) p.faults.push({ kind: "drop-after" });
    const sg = p.client({ apiKey: serviceKey, retries: 4, backoffMs: 10 });
    const order = await checkout.holdStock(sg, unique("lost"), [{ sku, quantity: 2 }], 1, "EUR");
    assert.ok(isOrder(order));
    assert.equal(p.seen.length, 6);
    assert.equal(new Set(p.seen.slice(0, 5).map((s) => s.headers["idempotency-key"])).size, 1);
    assert.notEqual(p.seen[5]?.headers["idempotency-key"], p.seen[0]?.headers["idempotency-key"]);
    assert.equal((await admin().getSku(sku)).reserved, 2);
  } finally {
    await p.close();
  }
});

test("keepHolding an expired hold says place again (null)", async () => {
  const sg = connect();
  const { sku } = await stocked(1);
  const order = await sg.placeOrder({ lines: [{ sku, quantity: 1 }], reservation_ttl_seconds: 1 });
  const deadline = Date.now() + 15_000;
  while ((await sg.getOrder(order.id)).reservations[0]?.status !== "expired") {
    assert.ok(Date.now() < deadline, "the expiry worker did not expire the hold");
    await sleep(100);
  }
  assert.equal(await checkout.keepHolding(sg, order.id), null);
});

test("events example follows the feed: sold out, paid, back in stock", async () => {
  const sg = connect();
  const { sku } = await stocked(1);
  const store = new events.Storefront();
  await events.poll(sg, store); // catch up with everything before this test
  const order = await sg.placeOrder({ id: unique("f"), lines: [{ sku, quantity: 1 }] });
  await sg.payOrder(order.id, { provider: "manual", payment_id: unique("f") });
  const deadline = Date.now() + 15_000;
  while (!store.paidOrders.has(order.id)) {
    assert.ok(Date.now() < deadline, "order.paid did not reach the feed");
    await events.poll(sg, store);
    await sleep(50);
  }
  assert.equal(store.available.get(sku), 0);
  assert.ok(store.soldOut.has(sku));
  const before = store.lastSeq ?? 0;
  await sg.cancelOrder(order.id);
  while (store.soldOut.has(sku)) {
    assert.ok(Date.now() < deadline + 15_000, "stock.back_in_stock did not reach the feed");
    await events.poll(sg, store);
    await sleep(50);
  }
  assert.equal(store.available.get(sku), 1);
  assert.ok((store.lastSeq ?? 0) > before);
});

test("webhooks example verifies and applies once, refuses a forgery", () => {
  const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  const sku = unique("W");
  const id = `evt_${unique("w")}`;
  const body = JSON.stringify({ id, seq: 7, type: "stock.out_of_stock", occurred_at: "2026-11-26T10:00:00Z", data: { sku, available: 0 } });
  const now = new Date();
  const headers = {
    "webhook-id": id,
    "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
    "webhook-signature": new Webhook(secret).sign(id, now, body),
  };
  const store = new events.Storefront();
  assert.equal(webhooks.receive(Buffer.from(body), headers, secret, store), 204);
  assert.deepEqual([...store.soldOut], [sku]);
  store.soldOut.clear();
  assert.equal(webhooks.receive(body, headers, secret, store), 204); // a repeat
  assert.deepEqual([...store.soldOut], []); // ...is not applied again
  const forged = body.replace("out_of_stock", "back_in_stock");
  assert.equal(webhooks.receive(forged, headers, secret, store), 400);
});

test("webhooks example: subscribe, then the node:http listener applies the server's real deliveries", async (t) => {
  const store = new events.Storefront();
  let secret = `whsec_${randomBytes(32).toString("base64")}`;
  const receiver = createServer((req, res) => webhooks.listener(secret, store)(req, res));
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  try {
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/stockguard`;
    const sg = admin();
    let endpointId;
    try {
      [endpointId, secret] = await webhooks.subscribe(sg, url);
    } catch (err) {
      if (err instanceof NotFoundError) return t.skip("this server has no /v1/admin/webhook-endpoints yet");
      throw err;
    }
    assert.match(secret, /^whsec_/);
    assert.deepEqual((await sg.getWebhookEndpoint(endpointId)).events, ["order.*", "stock.*"]);
    const { sku } = await stocked(1);
    const order = await sg.placeOrder({ id: unique("wh"), lines: [{ sku, quantity: 1 }] });
    await sg.payOrder(order.id, { provider: "manual", payment_id: unique("wh") });
    const deadline = Date.now() + 20_000;
    while (!store.paidOrders.has(order.id)) {
      assert.ok(Date.now() < deadline, "order.paid was not delivered");
      await sleep(50);
    }
    assert.equal(store.available.get(sku), 0); // stock.changed came too
    await sg.deleteWebhookEndpoint(endpointId);
  } finally {
    receiver.closeAllConnections();
    await new Promise((r) => receiver.close(r));
  }
});
