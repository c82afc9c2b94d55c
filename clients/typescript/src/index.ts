export { Stockguard } from "./client.js";
export type {
  ClientOptions,
  EventsOptions,
  ListOptions,
  RequestOptions,
  SendOptions,
  StockguardResponse,
} from "./client.js";
export * from "./errors.js";
export { verifyWebhook, WebhookVerificationError } from "./webhooks.js";
export type { VerifyOptions, WebhookHeaders } from "./webhooks.js";
export type * from "./types.js";
export type { components, paths, operations } from "./openapi.js";
