// A real 503: a second server whose own Redis is stopped answers `cache_unavailable`
// (strict cache mode). The client retries under one Idempotency-Key, then raises; nothing
// was placed.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { connect } from "node:net";
import { test } from "node:test";
import { CacheUnavailableError, NotFoundError, Stockguard } from "@stockguard/client";
import { freePort, startServer } from "./server.js";

async function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

test("503 cache_unavailable from a real server: retried under one key, then CacheUnavailableError", async (t) => {
  if (spawnSync("redis-server", ["--version"]).status !== 0) return t.skip("no redis-server on this machine");
  const port = await freePort();
  const redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  try {
    while (!(await listening(port))) await new Promise((r) => setTimeout(r, 50));
    const server = await startServer({ STOCKGUARD_REDIS_URL: `redis://127.0.0.1:${port}/0`, STOCKGUARD_CACHE_MODE: "strict" });
    try {
      const calls: (string | null)[] = [];
      const counting: typeof fetch = (input, init) => {
        calls.push(new Headers(init?.headers).get("idempotency-key"));
        return fetch(input, init);
      };
      const sg = new Stockguard({ baseUrl: server.url, apiKey: server.adminKey, retries: 2, backoffMs: 10, fetch: counting });
      await sg.putLocation("main", { name: "Main" });
      await sg.putSku("OUTAGE-1", { name: "outage" });
      await sg.adjust("OUTAGE-1", { location: "main", delta: 5, reason: "received" });

      const exited = new Promise((r) => redis.once("exit", r));
      redis.kill("SIGKILL");
      await exited;
      calls.length = 0;
      const err = await sg.placeOrder({ id: "outage-1", lines: [{ sku: "OUTAGE-1", quantity: 1 }] }).catch((e: unknown) => e);
      assert.ok(err instanceof CacheUnavailableError, String(err));
      assert.equal(err.status, 503);
      assert.equal(err.code, "cache_unavailable");
      assert.equal(calls.length, 3); // the first attempt and 2 retries
      assert.equal(new Set(calls).size, 1);
      await assert.rejects(sg.getOrder("outage-1"), NotFoundError); // nothing placed
    } finally {
      await server.stop();
    }
  } finally {
    if (redis.exitCode === null && redis.signalCode === null) redis.kill("SIGKILL");
  }
});
