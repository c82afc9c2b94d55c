// Checkout with stockguard: hold the stock when the customer checks out, keep holding it
// while they pay, then ship, cancel or take a return. Every function is safe to call again
// with the same arguments (after a timeout, a crash, a double click).
import {
  OutOfStockError,
  ReservationExpiredError,
  Stockguard,
  StockguardConnectionError,
  type Order,
  type OrderLineIn,
  type Return,
  type ReturnLineIn,
  type Shortage,
} from "@stockguard/client";

/** One client per process: it retries what is safe to retry. */
export function connect(): Stockguard {
  return new Stockguard({
    baseUrl: process.env["STOCKGUARD_URL"] ?? "http://127.0.0.1:8000",
    apiKey: process.env["STOCKGUARD_API_KEY"] ?? "",
    timeoutMs: 5_000,
  });
}

/** At checkout: hold every line for 15 minutes under the shop's own order id, or nothing
 * at all and the list of what is short (show it to the customer). */
export async function holdStock(
  sg: Stockguard,
  orderId: string,
  lines: OrderLineIn[],
  totalAmount: number,
  currency: string,
): Promise<Order | Shortage[]> {
  const place = (): Promise<Order> =>
    sg.placeOrder({
      id: orderId, // the shop's id: placing it again never holds twice
      lines,
      total_amount: totalAmount, // minor units; a payment for another amount
      currency, // puts the order in needs_review
      reservation_ttl_seconds: 900,
    });
  try {
    try {
      return await place();
    } catch (err) {
      // No answer even after the client's own retries: the order may exist or not.
      // The same id with the same lines answers the order if it was placed.
      if (err instanceof StockguardConnectionError) return await place();
      throw err;
    }
  } catch (err) {
    if (err instanceof OutOfStockError) return err.shortages; // nothing was held
    throw err;
  }
}

/** The customer is still on the payment page: hold the stock 10 more minutes.
 * `null`: the hold ran out already; place the order again. */
export async function keepHolding(sg: Stockguard, orderId: string): Promise<Order | null> {
  try {
    return await sg.extendOrder(orderId, 600);
  } catch (err) {
    if (err instanceof ReservationExpiredError) return null;
    throw err;
  }
}

/** A payment your backend confirmed itself (bank transfer, cash, a provider whose webhook
 * you receive): the held stock is committed to the order. One payment id pays one order;
 * recording it again changes nothing. */
export async function recordPayment(
  sg: Stockguard,
  orderId: string,
  paymentId: string,
  amount: number,
  currency: string,
): Promise<Order> {
  const order = await sg.payOrder(orderId, { provider: "manual", payment_id: paymentId, amount, currency });
  if (order.status === "needs_review") {
    console.warn(`order ${orderId} needs review`); // the amount or currency disagreed: look at it
  }
  return order;
}

/** The parcel left: paid → processing → shipped (each step only once). */
export async function ship(sg: Stockguard, orderId: string): Promise<Order> {
  let order = await sg.getOrder(orderId);
  if (order.status === "paid") order = await sg.setOrderStatus(orderId, "processing");
  if (order.status === "processing") order = await sg.setOrderStatus(orderId, "shipped");
  return order;
}

/** Cancel before shipping: the held or committed stock goes back, once. */
export async function cancel(sg: Stockguard, orderId: string, reason: string): Promise<Order> {
  return sg.cancelOrder(orderId, { reason });
}

/** Units back from the customer after shipping, booked once per return id (your RMA
 * number): `restock` puts them on sale again, `damaged` keeps them off sale. */
export async function takeReturn(
  sg: Stockguard,
  orderId: string,
  rma: string,
  lines: ReturnLineIn[],
): Promise<Return> {
  return sg.returnOrder(orderId, { return_id: rma, lines, note: "returned by the customer" });
}
