// Retries through a proxy that fails requests on purpose in front of the real server.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ConflictError,
  Stockguard,
  StockguardConnectionError,
  UnavailableError,
} from "@stockguard/client";
import { adminKey, availableOf, freePortUrl, proxy, stocked, unique } from "./helpers.js";

test("503 busy is retried after Retry-After with the same Idempotency-Key", async () => {
  const p = await proxy();
  try {
    const { sku } = await stocked(5);
    p.faults.push({ kind: "busy", retryAfter: "1" }, { kind: "busy", retryAfter: "1", code: "cache_unavailable" });
    const started = Date.now();
    const answer = await p.client().send("POST", "/v1/orders", { body: { id: unique("web"), lines: [{ sku, quantity: 2 }] } });
    const elapsed = Date.now() - started;
    assert.equal(answer.status, 201);
    assert.equal(answer.attempts, 3);
    assert.ok(elapsed >= 1900, `waited ${elapsed} ms for two Retry-After: 1`);
    const keys = new Set(p.seen.map((s) => s.headers["idempotency-key"]));
    assert.equal(p.seen.length, 3);
    assert.equal(keys.size, 1);
    assert.equal(await availableOf(sku), 3);
  } finally {
    await p.close();
  }
});

test("an answer lost after the server placed the order: the retry replays it, stock taken once", async () => {
  const p = await proxy();
  try {
    const { sku } = await stocked(5);
    const id = unique("web");
    p.faults.push({ kind: "drop-after" });
    const answer = await p.client().send("POST", "/v1/orders", { body: { id, lines: [{ sku, quantity: 2 }] } });
    assert.equal(answer.attempts, 2);
    assert.equal(answer.replayed, true); // the stored answer of the first attempt
    assert.equal(answer.status, 201);
    assert.equal((answer.body as { id: string }).id, id);
    assert.equal(p.seen[0]?.headers["idempotency-key"], p.seen[1]?.headers["idempotency-key"]);
    assert.equal(await availableOf(sku), 3);
  } finally {
    await p.close();
  }
});

test("a broken connection before the server saw it is retried", async () => {
  const p = await proxy();
  try {
    const { sku, location } = await stocked(0);
    p.faults.push({ kind: "drop-before" }, { kind: "drop-before" });
    const sg = p.client();
    const level = await sg.adjust(sku, { location, delta: 3, reason: "received" });
    assert.equal(p.seen.length, 3);
    assert.equal(new Set(p.seen.map((s) => s.headers["idempotency-key"])).size, 1);
    assert.ok(level);
    assert.equal(await availableOf(sku), 3);
  } finally {
    await p.close();
  }
});

test("retries are bounded, back off, and end in UnavailableError carrying the problem", async () => {
  const p = await proxy();
  try {
    for (let i = 0; i < 10; i++) p.faults.push({ kind: "busy" }); // no Retry-After: backoff
    const started = Date.now();
    const err = await p
      .client({ retries: 3, backoffMs: 100 })
      .getOrder("anything")
      .catch((e: unknown) => e);
    const elapsed = Date.now() - started;
    assert.ok(err instanceof UnavailableError, String(err));
    assert.equal(err.code, "busy");
    assert.equal(err.status, 503);
    assert.equal(err.problem.detail, "injected");
    assert.equal(p.seen.length, 4);
    // waits of 100, 200 and 400 ms, each with jitter down to half: at least 350 ms in all
    assert.ok(elapsed >= 350, `backoff took ${elapsed} ms`);
    const gaps = p.seen.slice(1).map((s, i) => s.at - (p.seen[i]?.at ?? 0));
    assert.ok((gaps[2] ?? 0) >= 200, `gaps ${gaps.join(", ")}`);
  } finally {
    await p.close();
  }
});

test("refusals other than busy are not retried", async () => {
  const p = await proxy();
  try {
    const { sku } = await stocked(3);
    const id = unique("web");
    const sg = p.client();
    await sg.placeOrder({ id, lines: [{ sku, quantity: 1 }] });
    await assert.rejects(sg.placeOrder({ id, lines: [{ sku, quantity: 2 }] }), ConflictError);
    assert.equal(p.seen.length, 2);
  } finally {
    await p.close();
  }
});

test("DELETE is not retried after a network error (its retry could answer 404)", async () => {
  const p = await proxy();
  try {
    p.faults.push({ kind: "drop-before" });
    const err = await p.client().deleteOrder(unique("web")).catch((e: unknown) => e);
    assert.ok(err instanceof StockguardConnectionError, String(err));
    assert.equal(p.seen.length, 1);
  } finally {
    await p.close();
  }
});

test("no server: StockguardConnectionError after the retries, naming the key to retry with", async () => {
  const sg = new Stockguard({ baseUrl: await freePortUrl(), apiKey: adminKey, retries: 2, backoffMs: 10 });
  const err = await sg.placeOrder({ id: "x", lines: [{ sku: "A", quantity: 1 }] }, { idempotencyKey: "k-1" }).catch((e: unknown) => e);
  assert.ok(err instanceof StockguardConnectionError, String(err));
  assert.equal(err.idempotencyKey, "k-1");
  assert.match(err.message, /POST \/v1\/orders/);
});

test("an abort signal stops the waits between retries", async () => {
  const p = await proxy();
  try {
    for (let i = 0; i < 5; i++) p.faults.push({ kind: "busy", retryAfter: "5" });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("gave up")), 300);
    const started = Date.now();
    await assert.rejects(p.client().getOrder("x", { signal: controller.signal }), /gave up/);
    assert.ok(Date.now() - started < 3000);
    assert.equal(p.seen.length, 1);
  } finally {
    await p.close();
  }
});

test("Retry-After is capped by maxDelayMs; an HTTP date is read too", async () => {
  const p = await proxy();
  try {
    const { sku } = await stocked(1);
    p.faults.push({ kind: "busy", retryAfter: "120" }, { kind: "busy", retryAfter: new Date(Date.now() + 60_000).toUTCString() });
    const started = Date.now();
    const answer = await p.client({ maxDelayMs: 300 }).send("GET", `/v1/skus/${sku}`);
    const elapsed = Date.now() - started;
    assert.equal(answer.attempts, 3);
    assert.ok(elapsed >= 550 && elapsed < 5000, `waited ${elapsed} ms`);
  } finally {
    await p.close();
  }
});
