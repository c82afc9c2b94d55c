// Lists as async iterators: cursor pages (`next`) for orders, seq for the event feed.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Event } from "@stockguard/client";
import { admin, proxy, service, stocked, unique } from "./helpers.js";

/** The seq of the newest event now (the feed read to its end). */
async function lastSeq(): Promise<number> {
  let last = 0;
  for await (const event of service().events({ limit: 500 })) last = event.seq ?? last;
  return last;
}

function orderIdOf(event: Event): string | undefined {
  const data = event.data as { order?: { id?: string } };
  return data.order?.id;
}

test("listOrders walks every page through the next cursors", async () => {
  const { sku } = await stocked(20);
  const sg = service();
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    const id = unique("page");
    ids.push(id);
    await sg.placeOrder({ id, lines: [{ sku, quantity: 1 }] });
    await sg.cancelOrder(id);
  }
  const p = await proxy();
  try {
    const seen: string[] = [];
    for await (const order of p.client().listOrders({ status: "cancelled" }, { limit: 2 })) {
      assert.equal(order.status, "cancelled");
      seen.push(order.id);
    }
    assert.equal(new Set(seen).size, seen.length, "no order twice");
    for (const id of ids) assert.ok(seen.includes(id), `${id} listed`);
    const pages = p.seen.filter((s) => s.path.startsWith("/v1/orders?"));
    assert.ok(pages.length >= 3, `${pages.length} pages`);
    assert.ok(pages.slice(1).every((s) => s.path.includes("after=")), "later pages pass after");
  } finally {
    await p.close();
  }
});

test("a break in the iteration fetches no further page", async () => {
  const { sku } = await stocked(5);
  for (let i = 0; i < 3; i++) await service().placeOrder({ id: unique("brk"), lines: [{ sku, quantity: 1 }] });
  const p = await proxy();
  try {
    for await (const order of p.client().listOrders({}, { limit: 1 })) {
      assert.ok(order.id);
      break;
    }
    assert.equal(p.seen.length, 1);
  } finally {
    await p.close();
  }
});

test("events: in seq order, filtered by type, resumable from the last seq without loss or repeat", async () => {
  const start = await lastSeq();
  const { sku } = await stocked(10);
  const sg = service();
  const ids = [unique("evt"), unique("evt"), unique("evt")];
  for (const id of ids) await sg.placeOrder({ id, lines: [{ sku, quantity: 1 }] });
  await sg.cancelOrder(ids[0] ?? "");

  const all: Event[] = [];
  for await (const event of sg.events({ after: start, type: ["order.*"], limit: 2 })) all.push(event);
  const seqs = all.map((e) => e.seq ?? 0);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.ok(seqs.every((s) => s > start));
  assert.ok(all.every((e) => e.type.startsWith("order.")));
  const ours = all.filter((e) => ids.includes(orderIdOf(e) ?? "")).map((e) => [e.type, orderIdOf(e)]);
  assert.deepEqual(ours, [
    ["order.placed", ids[0]],
    ["order.placed", ids[1]],
    ["order.placed", ids[2]],
    ["order.cancelled", ids[0]],
  ]);

  // Stop half way, resume from the last seq processed: the rest, nothing twice.
  const firstHalf: Event[] = [];
  for await (const event of sg.events({ after: start, type: "order.*", limit: 2 })) {
    firstHalf.push(event);
    if (firstHalf.length === 2) break;
  }
  const resumeAt = firstHalf[1]?.seq ?? 0;
  const rest: Event[] = [];
  for await (const event of sg.events({ after: resumeAt, type: "order.*" })) rest.push(event);
  assert.deepEqual(
    [...firstHalf, ...rest].map((e) => e.id),
    all.map((e) => e.id),
  );

  const stock: Event[] = [];
  for await (const event of sg.events({ after: start, type: "stock.changed" })) stock.push(event);
  const last = stock.filter((e) => (e.data as { sku?: string }).sku === sku).at(-1);
  assert.equal((last?.data as { available?: number }).available, 8);
});

test("events with follow: waits for what commits next, ends on abort", async () => {
  const start = await lastSeq();
  const { sku } = await stocked(2);
  const id = unique("follow");
  const controller = new AbortController();
  const got: Event[] = [];
  const reading = (async () => {
    for await (const event of admin().events({ after: start, type: "order.placed", follow: true, pollIntervalMs: 100, signal: controller.signal })) {
      got.push(event);
      if (orderIdOf(event) === id) controller.abort();
    }
  })();
  await new Promise((r) => setTimeout(r, 300)); // the reader is polling an empty feed now
  await service().placeOrder({ id, lines: [{ sku, quantity: 1 }] });
  await reading;
  assert.equal(orderIdOf(got.at(-1) as Event), id);
});
