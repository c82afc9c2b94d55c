// Names for the types of src/openapi.ts (generated from the served OpenAPI document).
import type { components } from "./openapi.js";

export type Schemas = components["schemas"];
/** A named schema of the document; `Fallback` only while the document lacks the name. */
type Named<K extends string, Fallback> = K extends keyof Schemas ? Schemas[K] : Fallback;

export type JsonObject = { [key: string]: unknown };

// Requests
export type LocationIn = Schemas["LocationIn"];
export type ChannelIn = Schemas["ChannelIn"];
export type SkuIn = Schemas["SkuIn"];
export type AdjustmentIn = Schemas["AdjustmentIn"];
export type BatchIn = Schemas["BatchIn"];
export type OrderIn = Schemas["OrderIn"];
export type OrderLineIn = Schemas["OrderLineIn"];
export type ReturnLineIn = Schemas["ReturnLineIn"];
export type PaymentIn = Schemas["PaymentIn"];
export type CancelIn = Schemas["CancelIn"];
export type ReturnIn = Schemas["ReturnIn"];
export type TransferIn = Schemas["TransferIn"];
export type ReceiptIn = Schemas["ReceiptIn"];
export type ApiKeyIn = Schemas["ApiKeyIn"];
export type OrderStatus = Schemas["OrderStatus"];
export type TransferStatus = Schemas["TransferStatus"];

// Answers
export type Order = Schemas["Order"];
export type Return = Schemas["Return"];
export type ReturnList = Schemas["ReturnList"];
export type Transfer = Schemas["Transfer"];
export type Level = Schemas["Level"];
export type AdjustmentResult = Schemas["AdjustmentResult"];
export type BatchResult = Schemas["BatchResult"];
export type Event = Schemas["Event"];
export type EventPage = Schemas["EventPage"];
export type EventType = Event["type"];
export type StockChangedData = Schemas["StockChangedData"];
export type StockEdgeData = Schemas["StockEdgeData"];
export type OrderEventData = Schemas["OrderEventData"];
export type PaymentInconsistencyData = Schemas["PaymentInconsistencyData"];
export type TransferEventData = Schemas["TransferEventData"];
export type Movement = Schemas["Movement"];
export type Explain = Schemas["Explain"];

/** One page of a list: `next` is the `after` of the following page, null on the last. */
export interface Page<T, Cursor = string> {
  items: T[];
  next: Cursor | null;
}

export type Location = Named<"Location", JsonObject & { code: string; name: string }>;
export type Channel = Named<"Channel", JsonObject & { code: string; locations: string[] }>;
export type Sku = Named<"Sku", JsonObject & { sku: string; name: string; available: number }>;
export type Availability = Named<
  "Availability",
  { items: { sku: string; available: number; locations: { [code: string]: number } }[] }
>;
export type ApiKey = Named<"ApiKey", JsonObject & { id: string; role: string; name: string }>;
export type ApiKeyCreated = Named<"ApiKeyCreated", ApiKey & { key: string | null }>;
export type RecoveryResult = Named<
  "RecoveryResult",
  JsonObject & { outcome: string; order: Order | null }
>;
export type InventoryLog = Named<"InventoryLog", JsonObject & { action: string }>;
export type Verification = Named<"Verification", { ok: boolean; violations: unknown[] }>;
export type ReconcileReport = Named<"ReconcileReport", JsonObject & { checked: number }>;
export type Readiness = Named<"Readiness", JsonObject>;

/** The RFC 9457 problem every refusal carries (`application/problem+json`). */
export type Problem = Schemas["Problem"];
export type Shortage = Named<"Shortage", { sku: string; requested: number; available: number }>;

// Outgoing webhook endpoints (admin)
export type WebhookEndpointIn = Named<
  "EndpointIn",
  { url: string; events: string[]; description?: string | null }
>;
export type WebhookEndpointPatch = Named<
  "EndpointPatchIn",
  { url?: string; events?: string[]; description?: string | null; active?: boolean }
>;
export type WebhookEndpoint = Named<
  "WebhookEndpoint",
  JsonObject & { id: string; url: string; events: string[]; active: boolean }
>;
export type WebhookEndpointCreated = Named<"WebhookEndpointCreated", WebhookEndpoint & { secret: string | null }>;
export type WebhookDelivery = Named<
  "WebhookDelivery",
  JsonObject & { event_id: string; status: string; attempts: number }
>;
export type ReplayQueued = Named<"ReplayQueued", { queued: number }>;
