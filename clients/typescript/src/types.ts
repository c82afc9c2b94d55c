// Names for the types of src/openapi.ts (generated from the served OpenAPI document):
// every one is a named schema of that document, nothing here is written by hand.
import type { components } from "./openapi.js";

export type Schemas = components["schemas"];

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

export type Location = Schemas["Location"];
export type Channel = Schemas["Channel"];
export type Sku = Schemas["Sku"];
export type Availability = Schemas["Availability"];
export type ApiKey = Schemas["ApiKey"];
export type ApiKeyCreated = Schemas["ApiKeyCreated"];
export type RecoveryResult = Schemas["RecoveryResult"];
export type InventoryLog = Schemas["InventoryLog"];
export type Verification = Schemas["Verification"];
export type ReconcileReport = Schemas["ReconcileReport"];
export type Readiness = Schemas["Readiness"];

/** The RFC 9457 problem every refusal carries (`application/problem+json`). */
export type Problem = Schemas["Problem"];
export type Shortage = Schemas["Shortage"];

// Outgoing webhook endpoints (admin)
export type WebhookEndpointIn = Schemas["EndpointIn"];
export type WebhookEndpointPatch = Schemas["EndpointPatchIn"];
export type WebhookEndpoint = Schemas["WebhookEndpoint"];
export type WebhookEndpointCreated = Schemas["WebhookEndpointCreated"];
export type WebhookDelivery = Schemas["WebhookDelivery"];
export type ReplayQueued = Schemas["ReplayQueued"];
