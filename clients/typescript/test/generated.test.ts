// src/openapi.ts and openapi.json are what the code of this checkout serves, regenerated now.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const script = join(packageDir, "scripts", "generate.mjs");

test("the checked-in document and types equal what the code serves (else: npm run generate)", async () => {
  const { stdout } = await run(process.execPath, [script, "--check"], { cwd: packageDir });
  assert.match(stdout, /up to date/);
});

test("the check notices a document that changed", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sg-openapi-"));
  try {
    const document = JSON.parse(readFileSync(join(packageDir, "openapi.json"), "utf8")) as {
      components: { schemas: { [name: string]: { properties?: { [name: string]: unknown } } } };
    };
    const order = document.components.schemas["Order"];
    assert.ok(order?.properties);
    order.properties["gift_note"] = { type: "string" }; // a field the types do not have
    const changed = join(dir, "openapi.json");
    writeFileSync(changed, JSON.stringify(document, null, 2) + "\n");
    const failed = await run(process.execPath, [script, "--document", changed], { cwd: packageDir }).then(
      () => null,
      (err: { code?: number; stderr?: string }) => err,
    );
    assert.ok(failed, "the check passed on a changed document");
    assert.equal(failed.code, 1);
    assert.match(failed.stderr ?? "", /src\/openapi\.ts/);
    assert.match(failed.stderr ?? "", /npm run generate/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
