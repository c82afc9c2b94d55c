// Following stockguard's events from the feed: what changed, in commit order, from the
// last `seq` you handled. Keep that seq where you keep the effects (your database) so a
// restart neither misses nor repeats work.
import type { Event, OrderEventData, StockChangedData, StockEdgeData, Stockguard } from "@stockguard/client";

/** What a shop keeps up to date from events (here in memory; yours is a database). */
export class Storefront {
  readonly available = new Map<string, number>();
  readonly soldOut = new Set<string>();
  readonly paidOrders = new Set<string>();
  lastSeq: number | undefined;
  readonly #seen = new Set<string>();

  apply(event: Event): void {
    if (this.#seen.has(event.id)) return; // delivery is at least once: skip a repeat
    this.#seen.add(event.id);
    switch (event.type) {
      case "stock.changed": {
        const data = event.data as StockChangedData;
        this.available.set(data.sku, data.available);
        break;
      }
      case "stock.out_of_stock":
        this.soldOut.add((event.data as StockEdgeData).sku);
        break;
      case "stock.back_in_stock":
        this.soldOut.delete((event.data as StockEdgeData).sku);
        break;
      case "order.paid":
        this.paidOrders.add((event.data as OrderEventData).order.id);
        break;
    }
  }
}

/** Apply every event after the last one handled; call it every few seconds. Returns how
 * many were new. */
export async function poll(sg: Stockguard, store: Storefront): Promise<number> {
  let handled = 0;
  const after = store.lastSeq;
  for await (const event of sg.events({ ...(after !== undefined ? { after } : {}), type: ["stock.*", "order.*"] })) {
    store.apply(event);
    store.lastSeq = event.seq ?? store.lastSeq;
    handled += 1;
  }
  return handled;
}
