// The package as a shop's app gets it: `npm pack`, installed into an empty project, imported
// as an ES module, and type-checked by tsc through its declarations.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

test("npm pack → install → import and type-check in an empty ESM project", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sg-consumer-"));
  try {
    await run(npm, ["pack", "--silent", "--pack-destination", dir], { cwd: packageDir });
    const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
    assert.ok(tarball, "npm pack made no tarball");
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "shop", private: true, type: "module" }));
    // No dependencies of its own: installing it needs no registry.
    await run(npm, ["install", "--offline", "--no-audit", "--no-fund", join(dir, tarball)], { cwd: dir });
    writeFileSync(
      join(dir, "shop.ts"),
      [
        'import { Stockguard, OutOfStockError, verifyWebhook, type Order, type OrderIn } from "@stockguard/client";',
        'const sg = new Stockguard({ baseUrl: "http://127.0.0.1:1", apiKey: "k" });',
        'const body: OrderIn = { id: "o-1", lines: [{ sku: "A", quantity: 1 }] };',
        "export async function place(): Promise<Order> { return sg.placeOrder(body); }",
        "export const checks = [OutOfStockError.name, typeof verifyWebhook];",
      ].join("\n"),
    );
    const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");
    await run(process.execPath, [tsc, "--strict", "--noEmit", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", "--types", "node", "--typeRoots", join(packageDir, "node_modules", "@types"), "shop.ts"], { cwd: dir });
    const { stdout } = await run(
      process.execPath,
      ["--input-type=module", "-e", 'import * as m from "@stockguard/client"; console.log(Object.keys(m).sort().join(","))'],
      { cwd: dir },
    );
    for (const name of ["Stockguard", "StockguardError", "OutOfStockError", "verifyWebhook", "WebhookVerificationError"]) {
      assert.ok(stdout.split(",").map((s) => s.trim()).includes(name), `${name} exported: ${stdout}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
