// The rest of the surface, once each against the real server: paths, bodies and answers.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  InvalidTransitionError,
  ReceiptExceedsInTransitError,
  Stockguard,
  UnauthorizedError,
} from "@stockguard/client";
import { admin, availableOf, serverUrl, service, stocked, unique } from "./helpers.js";

test("catalogue: locations, channels, SKUs, levels, availability by channel", async () => {
  const sg = admin();
  const { sku, location } = await stocked(6);
  const shop = unique("shop");
  const created = await sg.putLocation(shop, { name: "Shop", priority: 5 });
  assert.equal(created.code, shop);
  const codes: string[] = [];
  for await (const l of sg.listLocations({ limit: 500 })) codes.push(l.code);
  assert.ok(codes.includes(shop) && codes.includes(location));
  const channel = unique("web");
  await sg.putChannel(channel, { name: "Web", locations: [location] });
  assert.deepEqual((await sg.getChannel(channel)).locations, [location]);
  await sg.putSku(sku, { name: "renamed", low_stock_threshold: 2 });
  assert.equal((await sg.getSku(sku)).name, "renamed");
  const level = await sg.setSafetyStock(sku, location, 1);
  assert.equal(level.safety_stock, 1);
  const byChannel = await sg.availability([sku], { channel });
  assert.equal(byChannel.items[0]?.available, 5);
  let found = false;
  for await (const s of sg.listSkus()) if (s.sku === sku) found = true;
  assert.ok(found);
  const batch = await sg.adjustBatch({ error_policy: "skip_failed", items: [{ sku, location, delta: 2, reason: "received" }, { sku, location: shop, delta: -1, reason: "shrinkage" }] });
  assert.deepEqual(batch.results.map((r) => r.status), ["applied", "failed"]);
  assert.equal(await availableOf(sku), 7);
});

test("transfers: create, receive in part, cancel the rest, list", async () => {
  const sg = admin();
  const { sku, location } = await stocked(10);
  const to = unique("shop");
  await sg.putLocation(to, { name: "Shop" });
  const id = unique("t");
  const t = await sg.createTransfer({ id, from: location, to, lines: [{ sku, quantity: 4 }] });
  assert.equal(t.status, "in_transit");
  const received = await sg.receiveTransfer(id, { receipt_id: unique("r"), lines: [{ sku, quantity: 1 }] });
  assert.equal(received.lines[0]?.in_transit, 3);
  await assert.rejects(sg.receiveTransfer(id, { receipt_id: unique("r"), lines: [{ sku, quantity: 9 }] }), ReceiptExceedsInTransitError);
  assert.equal((await sg.cancelTransfer(id)).status, "cancelled");
  assert.equal((await sg.getTransfer(id)).status, "cancelled");
  await assert.rejects(sg.receiveTransfer(id, { receipt_id: unique("r"), lines: [{ sku, quantity: 1 }] }), InvalidTransitionError);
  let listed = false;
  for await (const x of sg.listTransfers({ status: "cancelled" })) if (x.id === id) listed = true;
  assert.ok(listed);
  assert.equal(await availableOf(sku), 10); // 9 back at the origin, 1 received at the shop
});

test("admin: keys, recovery, logs, movements, explain, verify, reconcile", async () => {
  const sg = admin();
  const made = await sg.createApiKey({ role: "service", name: unique("k") });
  assert.ok(made.key);
  const fresh = new Stockguard({ baseUrl: serverUrl, apiKey: made.key ?? "" });
  assert.equal((await fresh.ready()) !== undefined, true);
  let keyListed = false;
  for await (const k of sg.listApiKeys()) if (k.id === made.id) keyListed = true;
  assert.ok(keyListed);
  await sg.revokeApiKey(made.id);
  // A revoked key is refused by every process within a short while.
  const deadline = Date.now() + 5000;
  for (;;) {
    const err = await fresh.getSku("X").catch((e: unknown) => e);
    if (err instanceof UnauthorizedError) break;
    assert.ok(Date.now() < deadline, "revoked key still accepted");
    await new Promise((r) => setTimeout(r, 200));
  }

  const { sku, location } = await stocked(3);
  const id = unique("web");
  await service().placeOrder({ id, lines: [{ sku, quantity: 1 }] });
  await service().payOrder(id, { provider: "manual", payment_id: unique("p") });
  const recovered = await sg.recoverInventory(id);
  assert.equal(recovered.outcome, "skipped_already_committed");
  const actions: string[] = [];
  for await (const log of sg.inventoryLogs(id)) actions.push(log.action);
  assert.ok(actions.length >= 2, actions.join(","));
  const reasons: string[] = [];
  for await (const m of sg.movements({ sku })) reasons.push(m.reason);
  assert.ok(reasons.includes("received"));
  const explained = await sg.explain({ sku, location });
  assert.equal(explained.sku, sku);
  assert.equal((await sg.verify()).ok, true);
  const report = await sg.reconcileCache(false);
  assert.ok(report.checked >= 1);
  const review: string[] = [];
  for await (const o of sg.listNeedsReview()) review.push(o.id);
  for await (const o of sg.listPaidUncommitted()) review.push(o.id);
  assert.ok(!review.includes(id));
});
