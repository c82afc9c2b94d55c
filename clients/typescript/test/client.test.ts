// The client against the real server: answers typed as the document says, every refusal a
// typed error carrying its problem, idempotency keys on every POST.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import {
  BatchRejectedError,
  ConflictError,
  ForbiddenError,
  IdempotencyKeyReusedError,
  InvalidTransitionError,
  NotFoundError,
  OutOfStockError,
  ReturnExceedsFulfilledError,
  Stockguard,
  StockguardError,
  UnauthorizedError,
  UnknownSkuError,
  ValidationError,
} from "@stockguard/client";
import { admin, availableOf, proxy, serverUrl, service, stocked, unique } from "./helpers.js";

describe("checkout flow", () => {
  test("place, extend, pay, ship, deliver, return: stock follows each step", async () => {
    const { sku, location } = await stocked(10);
    const sg = service();
    const id = unique("web");
    const order = await sg.placeOrder({ id, lines: [{ sku, quantity: 3 }], total_amount: 2500, currency: "eur" });
    assert.equal(order.id, id);
    assert.equal(order.status, "pending");
    assert.equal(order.currency, "EUR");
    assert.deepEqual(
      order.reservations.map((r) => [r.sku, r.location, r.quantity, r.status]),
      [[sku, location, 3, "reserved"]],
    );
    assert.equal(await availableOf(sku), 7);

    // The same order id with the same content is the same order (a safe retry).
    const again = await sg.placeOrder({ id, lines: [{ sku, quantity: 3 }], total_amount: 2500, currency: "eur" });
    assert.equal(again.id, id);
    assert.equal(await availableOf(sku), 7);

    const extended = await sg.extendOrder(id, 3600);
    const expiresAt = Date.parse(extended.reservations[0]?.expires_at ?? "");
    assert.ok(expiresAt > Date.now() + 3500_000, `expires_at ${extended.reservations[0]?.expires_at}`);

    const paid = await sg.payOrder(id, { provider: "manual", payment_id: unique("pay"), amount: 2500, currency: "EUR" });
    assert.equal(paid.status, "paid");
    assert.equal((await sg.setOrderStatus(id, "processing")).status, "processing");
    assert.equal((await sg.setOrderStatus(id, "shipped")).status, "shipped");
    assert.equal((await sg.setOrderStatus(id, "shipped")).status, "shipped"); // a retry changes nothing
    assert.equal((await admin().getSku(sku)).on_hand, 7);

    const returned = await sg.returnOrder(id, { return_id: unique("ret"), lines: [{ sku, quantity: 1, disposition: "restock" }] });
    assert.deepEqual(returned.lines.map((l) => [l.sku, l.quantity, l.location]), [[sku, 1, location]]);
    assert.equal((await sg.listReturns(id)).length, 1);
    assert.equal(await availableOf(sku), 8);

    await assert.rejects(
      sg.returnOrder(id, { return_id: unique("ret"), lines: [{ sku, quantity: 3, disposition: "restock" }] }),
      (err: unknown) => {
        assert.ok(err instanceof ReturnExceedsFulfilledError);
        assert.deepEqual(err.lines, [{ sku, requested: 3, returnable: 2 }]);
        return true;
      },
    );
  });

  test("cancel gives the stock back; delete forgets the order", async () => {
    const { sku } = await stocked(5);
    const sg = service();
    const id = unique("web");
    await sg.placeOrder({ id, lines: [{ sku, quantity: 5 }] });
    assert.equal(await availableOf(sku), 0);
    const cancelled = await sg.cancelOrder(id, { reason: "customer changed their mind" });
    assert.equal(cancelled.status, "cancelled");
    assert.equal(await availableOf(sku), 5);
    await sg.deleteOrder(id);
    await assert.rejects(sg.getOrder(id), NotFoundError);
  });
});

describe("typed errors carry the problem", () => {
  test("out_of_stock lists every short SKU and nothing is reserved", async () => {
    const a = await stocked(2);
    const b = await stocked(1);
    const sg = service();
    const err = await sg
      .placeOrder({ id: unique("web"), lines: [{ sku: a.sku, quantity: 3 }, { sku: b.sku, quantity: 1 }] })
      .catch((e: unknown) => e);
    assert.ok(err instanceof OutOfStockError, String(err));
    assert.ok(err instanceof ConflictError && err instanceof StockguardError);
    assert.equal(err.status, 409);
    assert.equal(err.code, "out_of_stock");
    assert.equal(err.problem.code, "out_of_stock");
    assert.match(err.detail, /./);
    assert.deepEqual(err.shortages, [{ sku: a.sku, requested: 3, available: 2 }]);
    assert.equal(await availableOf(a.sku), 2);
    assert.equal(await availableOf(b.sku), 1);
  });

  test("invalid_transition says from and to", async () => {
    const { sku } = await stocked(1);
    const sg = service();
    const id = unique("web");
    await sg.placeOrder({ id, lines: [{ sku, quantity: 1 }] });
    const err = await sg.setOrderStatus(id, "shipped").catch((e: unknown) => e);
    assert.ok(err instanceof InvalidTransitionError, String(err));
    assert.equal(err.from, "pending");
    assert.equal(err.to, "shipped");
  });

  test("conflict, not_found, validation_error, unauthorized, forbidden", async () => {
    const { sku } = await stocked(3);
    const sg = service();
    const id = unique("web");
    await sg.placeOrder({ id, lines: [{ sku, quantity: 1 }] });
    const conflict = await sg.placeOrder({ id, lines: [{ sku, quantity: 2 }] }).catch((e: unknown) => e);
    assert.ok(conflict instanceof ConflictError && !(conflict instanceof OutOfStockError));
    assert.equal(conflict.code, "conflict");

    const missing = await sg.getOrder(unique("nope")).catch((e: unknown) => e);
    assert.ok(missing instanceof NotFoundError);
    assert.equal(missing.status, 404);

    const invalid = await sg.placeOrder({ id: unique("web"), lines: [{ sku, quantity: 0 }] }).catch((e: unknown) => e);
    assert.ok(invalid instanceof ValidationError, String(invalid));
    assert.equal(invalid.code, "validation_error");
    assert.ok(invalid.errors.length >= 1);

    const ghost = unique("GHOST");
    const unknown = await sg.placeOrder({ id: unique("web"), lines: [{ sku, quantity: 1 }, { sku: ghost, quantity: 1 }] }).catch((e: unknown) => e);
    assert.ok(unknown instanceof UnknownSkuError && unknown instanceof ValidationError, String(unknown));
    assert.deepEqual(unknown.skus, [ghost]);
    assert.equal(await availableOf(sku), 2); // nothing held

    const stranger = new Stockguard({ baseUrl: serverUrl, apiKey: "not-a-key" });
    await assert.rejects(stranger.getOrder(id), UnauthorizedError);
    await assert.rejects(sg.verify(), ForbiddenError);
    assert.equal((await admin().verify()).ok, true);
  });

  test("batch_rejected lists the failed items; nothing applied", async () => {
    const { sku, location } = await stocked(1);
    const err = await admin()
      .adjustBatch({
        error_policy: "all_or_nothing",
        items: [
          { sku, location, delta: 4, reason: "received" },
          { sku, location, delta: -50, reason: "shrinkage" },
        ],
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof BatchRejectedError, String(err));
    assert.deepEqual(err.items.map((i) => [i.index, i.problem.code]), [[1, "insufficient_stock"]]);
    assert.equal(await availableOf(sku), 1);
  });
});

describe("Idempotency-Key", () => {
  test("every POST carries a new UUID; other methods none; a given key is sent as is", async () => {
    const p = await proxy();
    try {
      const { sku, location } = await stocked(0);
      const sg = p.client();
      await sg.adjust(sku, { location, delta: 1, reason: "received" });
      await sg.adjust(sku, { location, delta: 1, reason: "received" });
      await sg.getSku(sku);
      await sg.adjust(sku, { location, delta: 1, reason: "received" }, { idempotencyKey: "mine-" + sku });
      await sg.send("post", `/v1/skus/${sku}/adjustments`, { body: { location, delta: 1, reason: "received" } });
      const keys = p.seen.map((s) => s.headers["idempotency-key"]);
      assert.equal(keys.length, 5);
      const [first, second, get, mine, lower] = keys;
      assert.match(String(lower), /^[0-9a-f-]{36}$/);
      assert.match(String(first), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      assert.notEqual(first, second);
      assert.equal(get, undefined);
      assert.equal(mine, "mine-" + sku);
    } finally {
      await p.close();
    }
  });

  test("the same key again replays the first answer: the adjustment applies once", async () => {
    const { sku, location } = await stocked(0);
    const sg = admin();
    const key = randomUUID();
    const first = await sg.send("POST", `/v1/skus/${sku}/adjustments`, {
      body: { location, delta: 4, reason: "received" },
      idempotencyKey: key,
    });
    const second = await sg.send("POST", `/v1/skus/${sku}/adjustments`, {
      body: { location, delta: 4, reason: "received" },
      idempotencyKey: key,
    });
    assert.equal(first.status, 201);
    assert.equal(first.replayed, false);
    assert.equal(second.status, 201);
    assert.equal(second.replayed, true);
    assert.deepEqual(second.body, first.body);
    assert.equal((await sg.getSku(sku)).on_hand, 4);
    await assert.rejects(
      sg.adjust(sku, { location, delta: 5, reason: "received" }, { idempotencyKey: key }),
      IdempotencyKeyReusedError,
    );
  });
});
