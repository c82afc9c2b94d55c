// `npm test`: one real stockguard server for the whole run, then `node --test` over the
// compiled test files (they read STOCKGUARD_TEST_URL and the keys from the environment).
// With STOCKGUARD_TEST_URL, STOCKGUARD_TEST_ADMIN_KEY and STOCKGUARD_TEST_SERVICE_KEY
// already set, the tests use that server instead.
import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "./server.js";

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith(".test.js"))
  .filter((f) => only.length === 0 || only.some((o) => f.startsWith(o)))
  .sort()
  .map((f) => join(here, f));

const started = Date.now();
let server: Awaited<ReturnType<typeof startServer>> | undefined;
const env = { ...process.env };
if (!env["STOCKGUARD_TEST_URL"]) {
  server = await startServer();
  env["STOCKGUARD_TEST_URL"] = server.url;
  env["STOCKGUARD_TEST_ADMIN_KEY"] = server.adminKey;
  env["STOCKGUARD_TEST_SERVICE_KEY"] = server.serviceKey;
  console.log(`stockguard serving on ${server.url} (started in ${Date.now() - started} ms)`);
}
const code = await new Promise<number>((resolve) => {
  const child = spawn(process.execPath, ["--test", "--test-concurrency=2", ...files], {
    env,
    stdio: "inherit",
  });
  child.on("exit", (c, signal) => resolve(c ?? (signal ? 1 : 0)));
});
if (server) {
  if (code !== 0) {
    const log = readFileSync(server.logPath, "utf8").split("\n").slice(-40).join("\n");
    console.error(`the server's last log lines (${server.logPath}):\n${log}`);
  }
  await server.stop();
}
console.log(`npm test: ${code === 0 ? "passed" : "FAILED"} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(code);
