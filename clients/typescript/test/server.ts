// Starts a real stockguard server for the tests: `python -m stockguard serve` on a free port,
// against its own new database (created here, dropped at the end) on the PostgreSQL that
// STOCKGUARD_DATABASE_URL names, and its own Redis key prefix; without those URLs, against
// embedded servers in a temporary data directory.
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const repoRoot = resolve(packageDir, "..", "..");

export function python(): string {
  const fromEnv = process.env["STOCKGUARD_PYTHON"];
  if (fromEnv) return fromEnv;
  const venv = join(repoRoot, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

const ADMIN_DB = `
import asyncio, sys, asyncpg
async def main(url, op, name):
    conn = await asyncpg.connect(url)
    try:
        if op == "create":
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()
asyncio.run(main(*sys.argv[1:]))
`;

const CLEAR_REDIS = `
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
for key in r.scan_iter(match=sys.argv[2] + "*", count=1000):
    r.delete(key)
`;

export interface TestServer {
  url: string;
  adminKey: string;
  serviceKey: string;
  env: NodeJS.ProcessEnv;
  logPath: string;
  stop(): Promise<void>;
}

function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

async function py(env: NodeJS.ProcessEnv, ...args: string[]): Promise<string> {
  const { stdout } = await run(python(), args, { env, cwd: repoRoot, maxBuffer: 16 << 20 });
  return stdout;
}

async function waitReady(url: string, child: ChildProcess, logPath: string): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`stockguard serve exited with ${child.exitCode}:\n${tail(logPath)}`);
    }
    try {
      const r = await fetch(`${url}/readyz`);
      if (r.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`stockguard serve not ready after 120 s:\n${tail(logPath)}`);
}

function tail(path: string): string {
  try {
    return readFileSync(path, "utf8").split("\n").slice(-40).join("\n");
  } catch {
    return "(no log)";
  }
}

export async function startServer(extraEnv: NodeJS.ProcessEnv = {}): Promise<TestServer> {
  const id = randomUUID().replaceAll("-", "").slice(0, 12);
  const dir = mkdtempSync(join(tmpdir(), "stockguard-ts-"));
  const logPath = join(dir, "serve.log");
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PYTHONPATH: [join(repoRoot, "src"), process.env["PYTHONPATH"]].filter(Boolean).join(":"),
    STOCKGUARD_LOG_JSON: "true",
    STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS: "true",
    ...extraEnv,
  };
  const baseDb = process.env["STOCKGUARD_DATABASE_URL"];
  const redisUrl = process.env["STOCKGUARD_REDIS_URL"];
  const dbName = `sg_ts_${id}`;
  const prefix = `sgts:${id}:`;
  if (baseDb) {
    await py(env, "-c", ADMIN_DB, baseDb, "create", dbName);
    env["STOCKGUARD_DATABASE_URL"] = withDatabase(baseDb, dbName);
  } else {
    env["STOCKGUARD_DATA_DIR"] = join(dir, "data"); // embedded PostgreSQL and Redis
  }
  if (redisUrl) env["STOCKGUARD_REDIS_PREFIX"] = prefix;

  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const log = openSync(logPath, "a");
  const child = spawn(
    python(),
    ["-m", "stockguard", "serve", "--host", "127.0.0.1", "--port", String(port)],
    { env, cwd: dir, stdio: ["ignore", log, log] },
  );
  closeSync(log);
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    }
    if (baseDb) await py(process.env, "-c", ADMIN_DB, baseDb, "drop", dbName).catch(() => {});
    if (redisUrl) await py(process.env, "-c", CLEAR_REDIS, redisUrl, prefix).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitReady(url, child, logPath);
    const key = async (role: string): Promise<string> =>
      (await py(env, "-m", "stockguard", "keys", "create", "--role", role, "--name", `ts-${role}`)).trim();
    const adminKey = await key("admin");
    const serviceKey = await key("service");
    return { url, adminKey, serviceKey, env, logPath, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
