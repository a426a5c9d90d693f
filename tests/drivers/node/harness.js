// SPDX-License-Identifier: MIT
// What the Node driver tests share: connection settings exported by run_all.py, checks, and a
// case runner that gives each case a time limit and prints "ok NAME" / "FAIL NAME: message".
'use strict';

const env = process.env;
const REPLICAS = (env.REPLICA_PORTS || '').split(',').filter(Boolean).map(Number);
const conf = {
  host: env.PGSTEER_HOST || '127.0.0.1',
  port: Number(env.PGSTEER_PORT || 6432),
  user: env.PGSTEER_USER || 'app',
  password: env.PGSTEER_PASSWORD || 'secret',
  database: env.PGSTEER_DB || 'app',
  primary: Number(env.PRIMARY_PORT || 0),
  replicas: REPLICAS,
  schema: env.DRIVER_SCHEMA || 'public',
  caseTimeout: Number(env.DRIVER_CASE_TIMEOUT || 30) * 1000,
  // TLS options when pgsteer takes clients over TLS only: its certificate checked against
  // the test CA, and its name (127.0.0.1) against the certificate's.
  ssl: env.PGSTEER_SSLROOTCERT
    ? { ca: require('fs').readFileSync(env.PGSTEER_SSLROOTCERT),
        host: env.PGSTEER_HOST || '127.0.0.1' }
    : false,
};
const ALL_BYTES = Buffer.from([...Array(256).keys()]);
const UNICODE_TEXT = 'zażółć gęślą jaźń · Ελληνικά · 日本語 · \u{1F418}';

class CheckFailed extends Error {}

function check(cond, msg) {
  if (!cond) throw new CheckFailed(msg);
}

function show(v) {
  const s = JSON.stringify(v, (k, x) => (typeof x === 'bigint' ? x.toString() : x));
  return s && s.length > 300 ? s.slice(0, 300) + '...' : s;
}

function eq(got, want, what) {
  const g = show(got), w = show(want);
  if (g !== w) throw new CheckFailed(`${what}: got ${g}, want ${w}`);
}

function onReplica(port, what) {
  check(REPLICAS.includes(Number(port)),
        `${what} ran on port ${port}, not on a replica ${REPLICAS} (primary ${conf.primary})`);
}

function onPrimary(port, what) {
  check(Number(port) === conf.primary, `${what} ran on port ${port}, not on the primary ${conf.primary}`);
}

function expectCode(err, want, what) {
  check(err && err.code === want,
        `${what}: SQLSTATE ${err && err.code}, want ${want} (${err && err.message})`);
}

async function expectError(promise, want, what) {
  try {
    await promise;
  } catch (e) {
    expectCode(e, want, what);
    return e;
  }
  throw new CheckFailed(`${what}: no error, want SQLSTATE ${want}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runCases(cases) {
  const only = new Set(process.argv.slice(2));
  let failed = 0;
  for (const [name, fn] of Object.entries(cases)) {
    if (only.size && !only.has(name)) continue;
    const t0 = Date.now();
    let timer;
    const timeout = new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`no answer within ${conf.caseTimeout / 1000}s (hung)`)),
                         conf.caseTimeout);
    });
    try {
      await Promise.race([fn(), timeout]);
      console.log(`ok ${name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      if (!(e instanceof CheckFailed)) process.stderr.write(`--- ${name}\n${e && e.stack}\n`);
      const msg = (e instanceof CheckFailed ? '' : `${e && e.constructor && e.constructor.name}: `)
        + String(e && e.message).replace(/\s+/g, ' ');
      console.log(`FAIL ${name}: ${msg.slice(0, 1500)}`);
    } finally {
      clearTimeout(timer);
    }
  }
  process.exit(failed ? 1 : 0);
}

module.exports = { conf, ALL_BYTES, UNICODE_TEXT, check, eq, onReplica, onPrimary, expectCode,
                   expectError, sleep, runCases, CheckFailed };
