// SPDX-License-Identifier: MIT
// pg-promise through pgsteer: its pool (pg underneath), tasks and transactions (tx, nested
// tx as savepoints, read-only TransactionMode), PreparedStatement objects (named statements),
// multi-row inserts from helpers, and a direct connection for notifications.
'use strict';

const pgp = require('pg-promise')({ noWarnings: true });
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const h = require('./harness');
const { conf, check, eq, onReplica, onPrimary, expectError } = h;
const S = conf.schema;
const { PreparedStatement: PS } = pgp;
const { TransactionMode, isolationLevel } = pgp.txMode;

const db = pgp({ host: conf.host, port: conf.port, user: conf.user, password: conf.password,
                 database: conf.database, ssl: conf.ssl, application_name: 'drv-pg-promise',
                 max: 1, idleTimeoutMillis: 200 });

// Each case gets a fresh pgsteer session (a task on a new connection: max 1, and the idle
// connection is released between cases), so one case's writes do not route the next reads.
const fresh = async (fn) => {
  const c = await db.connect({ direct: true });
  try {
    return await fn(c);
  } finally {
    await c.done();
  }
};

const cases = {
  async routing() {
    await fresh(async (t) => {
      for (let i = 0; i < 4; i++) {
        onReplica((await t.one('select inet_server_port() as p')).p, `read ${i}`);
        onReplica((await t.one('select inet_server_port() + $1 - $1 as p', [i])).p, `param read ${i}`);
      }
      onPrimary((await t.one('insert into $1:name.items (k, v) values ($2, $3) returning inet_server_port() as p',
                             [S, 1, 'routing'])).p, 'insert');
    });
  },

  async params() {
    await fresh(async (t) => {
      await t.none('insert into ${s:name}.items (k, v, n) values (${k}, ${v}, ${n})', { s: S, k: 101, v: 'it\'s "quoted"', n: null });
      await t.none('insert into $1:name.items (k, v, n) values ($2, $3, $4)', [S, 102, 'second', 7]);
      eq(await t.any('select k, v, n from $1:name.items where k in ($2:csv) order by k', [S, [101, 102]]),
         [{ k: 101, v: 'it\'s "quoted"', n: null }, { k: 102, v: 'second', n: 7 }], 'rows');
    });
  },

  async read_own_write() {
    await fresh(async (t) => {
      for (let i = 0; i < 5; i++) {
        await t.none('insert into $1:name.items (k, v) values ($2, $3)', [S, 200 + i, 'ryw']);
        eq((await t.one('select count(*)::int as n from $1:name.items where k = $2', [S, 200 + i])).n, 1, `row ${i}`);
      }
    });
  },

  async prepare_threshold() {
    await fresh(async (t) => {
      const ps = new PS({ name: 'drv_pgp_read', text: 'select $1::int + 1 as v, inet_server_port() as p' });
      const ports = new Set();
      for (let i = 0; i < 12; i++) {
        ps.values = [i];
        const r = await t.one(ps);
        eq(r.v, i + 1, `named ${i}`);
        ports.add(r.p);
      }
      check([...ports].every((p) => conf.replicas.includes(p)), `named reads ran on ${[...ports]}`);
      const ins = new PS({ name: 'drv_pgp_ins', text: `insert into ${S}.items (k, v) values ($1, 'prep') returning inet_server_port() as p` });
      for (let i = 0; i < 6; i++) {
        ins.values = [800 + i];
        onPrimary((await t.one(ins)).p, `named insert ${i}`);
      }
    });
  },

  async tx_commit() {
    await db.tx(async (t) => {
      onPrimary((await t.one('insert into $1:name.items (k, v) values (300, $2) returning inet_server_port() as p', [S, 'c'])).p, 'insert in tx');
      const r = await t.one('select count(*)::int as n, inet_server_port() as p from $1:name.items where k = 300', [S]);
      eq(r.n, 1, 'read in tx');
      onPrimary(r.p, 'read in tx');
    });
    eq((await db.one('select count(*)::int as n from $1:name.items where k = 300', [S])).n, 1, 'committed');
  },

  async tx_rollback() {
    await db.tx(async (t) => {
      await t.none('insert into $1:name.items (k, v) values (301, $2)', [S, 'rb']);
      throw new Error('roll me back');
    }).catch((e) => { if (e.message !== 'roll me back') throw e; });
    eq((await db.one('select count(*)::int as n from $1:name.items where k = 301', [S])).n, 0, 'after rollback');
  },

  async tx_error() {
    await expectError(db.tx(async (t) => {
      await t.none('insert into $1:name.items (k, v) values (302, $2)', [S, 'e']);
      await t.one('select 1/$1::int as x', [0]);
    }), '22012', '1/0 in tx');
    eq((await db.one('select count(*)::int as n from $1:name.items where k = 302', [S])).n, 0, 'rolled back');
    await db.tx(async (t) => {
      await t.none('insert into $1:name.items (k, v) values (304, $2)', [S, 'outer']);
      await t.tx(async (t2) => {  // SAVEPOINT
        await t2.none('insert into $1:name.items (k, v) values (305, $2)', [S, 'inner']);
        await t2.one('select 1/0 as x');
      }).catch(() => {});
    });
    const r = await db.one('select count(*) filter (where k = 304)::int as a, count(*) filter (where k = 305)::int as b from $1:name.items', [S]);
    eq([r.a, r.b], [1, 0], 'savepoint');
    eq((await db.one('select $1::int + 1 as v', [41])).v, 42, 'goes on');
  },

  async session_settings() {
    await fresh(async (t) => {
      await t.none('set search_path to $1:name', [S]);
      await t.none("set application_name = 'drv-pg-promise-app'");
      const seen = [];
      for (let i = 0; i < 8; i++) {
        seen.push(await t.one("select inet_server_port() as p, v, current_setting('application_name') as a from only_here where $1", [true]));
      }
      check(seen.every((r) => r.v === S && r.a === 'drv-pg-promise-app'), `reads saw ${JSON.stringify(seen)}`);
      check(seen.some((r) => conf.replicas.includes(r.p)), `no read on a replica: ${JSON.stringify(seen)}`);
    });
  },

  async big_result() {
    const rows = await db.any("select g, repeat('x', 40) as x from generate_series(1, $1::int) g", [10000]);
    eq(rows.length, 10000, 'row count');
    eq(rows.reduce((a, r) => a + r.g, 0), 10000 * 10001 / 2, 'sum');
  },

  async bytea_text() {
    await fresh(async (t) => {
      const r = await t.one('select b, t, inet_server_port() as p from $1:name.blobs where id = 1', [S]);
      check(Buffer.compare(r.b, h.ALL_BYTES) === 0, 'seeded bytea differs');
      eq(r.t, h.UNICODE_TEXT, 'seeded text');
      onReplica(r.p, 'seeded read');
      eq(await t.one('select b, t from $1:name.blobs where id = 2', [S]), { b: null, t: null }, 'NULLs');
      await t.none('insert into $1:name.blobs values ($2, $3, $4)', [S, 10, h.ALL_BYTES, h.UNICODE_TEXT]);
      const w = await t.one('select b, t from $1:name.blobs where id = 10', [S]);
      check(Buffer.compare(w.b, h.ALL_BYTES) === 0, 'written bytea differs');
      eq(w.t, h.UNICODE_TEXT, 'written text');
    });
  },

  async statement_timeout() {
    await fresh(async (t) => {
      await t.none("set statement_timeout = '300ms'");
      const t0 = Date.now();
      await expectError(t.any('select pg_sleep(5)'), '57014', 'pg_sleep');
      check(Date.now() - t0 < 4000, 'cancel too slow');
      await t.none('reset statement_timeout');
      eq((await t.one('select $1::int as v', [1])).v, 1, 'session after cancel');
    });
  },

  async listen_notify() {
    const sco = await db.connect({ direct: true });
    try {
      const got = [];
      sco.client.on('notification', (m) => got.push(m.payload));
      await sco.none('listen $1:name', ['drv_pg_promise_chan']);
      await db.one('select pg_notify($1, $2)', ['drv_pg_promise_chan', 'hello ü']);
      const deadline = Date.now() + 5000;
      while (got.length < 1 && Date.now() < deadline) await h.sleep(20);
      eq(got, ['hello ü'], 'notifications');
    } finally {
      await sco.done();
    }
  },

  async copy() {
    await fresh(async (t) => {
      let data = '';
      for (let i = 0; i < 500; i++) data += `${i}\trow ${i}\n`;
      await pipeline(Readable.from([Buffer.from(data)]), t.client.query(copyFrom(`copy ${S}.copy_t (a, b) from stdin`)));
      const chunks = [];
      await pipeline(t.client.query(copyTo(`copy (select a, b from ${S}.copy_t order by a) to stdout`)),
                     new Writable({ write(ch, _e, cb) { chunks.push(ch); cb(); } }));
      eq(Buffer.concat(chunks).toString(), data, 'copy out');
    });
  },

  async pipeline() {
    // helpers.insert: one multi-row INSERT; t.batch: many queries issued together.
    const cs = new pgp.helpers.ColumnSet(['k', 'v'], { table: { table: 'items', schema: S } });
    await db.none(pgp.helpers.insert([...Array(500).keys()].map((i) => ({ k: 900 + i, v: `m${i}` })), cs));
    eq((await db.one('select count(*)::int as n from $1:name.items where k between 900 and 1399', [S])).n, 500, 'multi-row insert');
    const res = await db.task((t) => t.batch([...Array(20).keys()].map((i) => t.one('select $1::int as v', [i]))));
    eq(res.map((r) => r.v), [...Array(20).keys()], 'batch');
  },

  async read_only_tx() {
    const mode = new TransactionMode({ tiLevel: isolationLevel.serializable, readOnly: true, deferrable: true });
    await db.tx({ mode }, async (t) => {
      eq((await t.one('select count(*)::int as n from $1:name.only_here', [S])).n, 1, 'read');
    });
    await expectError(db.tx({ mode: new TransactionMode({ readOnly: true }) }, async (t) => {
      await t.none('insert into $1:name.items (k, v) values (700, $2)', [S, 'ro']);
    }), '25006', 'insert in read-only tx');
  },
};

h.runCases(cases).finally(() => pgp.end());
