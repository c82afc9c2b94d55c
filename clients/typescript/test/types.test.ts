// The generated types constrain calls at compile time: each `@ts-expect-error` below must
// be an error for `npm run build` (tsc) to pass, so a document that lost these rules
// would fail the build. The calls never run.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Order, OrderIn, Stockguard } from "@stockguard/client";

export function typeChecks(sg: Stockguard): void {
  // @ts-expect-error quantity is an integer, not a string
  void sg.placeOrder({ lines: [{ sku: "A", quantity: "2" }] });
  // @ts-expect-error lines are required
  void sg.placeOrder({ id: "o-1" });
  // @ts-expect-error the payment provider is one of stripe, razorpay, manual
  void sg.payOrder("o-1", { provider: "paypal", payment_id: "p" });
  // @ts-expect-error PATCH knows only the fulfilment statuses and cancelled
  void sg.setOrderStatus("o-1", "paid");
  // @ts-expect-error listOrders filters by a known status
  void sg.listOrders({ status: "lost" });
  // @ts-expect-error a return line needs its disposition
  void sg.returnOrder("o-1", { return_id: "r", lines: [{ sku: "A", quantity: 1 }] });
}

test("answers have the document's fields", () => {
  const body: OrderIn = { id: "o-1", lines: [{ sku: "A", quantity: 1 }], total_amount: 100, currency: "EUR" };
  const status: Order["status"][] = ["pending", "paid", "needs_review", "processing", "shipped", "delivered", "cancelled"];
  assert.equal(body.lines.length, 1);
  assert.equal(status.length, 7);
});
