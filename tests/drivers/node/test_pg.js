// SPDX-License-Identifier: MIT
// node-postgres (pg) through pgsteer: unnamed statements for parameterised queries, named
// statements for { name } queries (prepared once per connection, then Bind only), pg-cursor
// (Execute with a row limit + Flush, no Sync), pg-copy-streams and notifications.
'use strict';

process.noDeprecation = true; // pipeline() queues queries on a busy client on purpose
const pg = require('pg');
const Cursor = require('pg-cursor');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const h = require('./harness');
const { conf, check, eq, onReplica, onPrimary, expectError } = h;
const S = conf.schema;

async function connect(extra = {}) {
  const c = new pg.Client({ host: conf.host, port: conf.port, user: conf.user,
                            password: conf.password, database: conf.database, ssl: conf.ssl,
                            application_name: 'drv-node-pg', connectionTimeoutMillis: 10000,
                            ...extra });
  await c.connect();
  return c;
}

async function withClient(fn, extra) {
  const c = await connect(extra);
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

const one = async (c, q, v) => (await c.query(q, v)).rows[0];

const cases = {
  async routing() {
    await withClient(async (c) => {
      for (let i = 0; i < 4; i++) {
        onReplica((await one(c, 'select inet_server_port() as p')).p, `read ${i}`);
        onReplica((await one(c, 'select inet_server_port() + $1 - $1 as p', [i])).p,
                  `parameterised read ${i}`);
      }
      onPrimary((await one(c, `insert into ${S}.items (k, v) values ($1, $2) returning inet_server_port() as p`,
                           [1, 'routing'])).p, 'insert');
    });
  },

  async params() {
    await withClient(async (c) => {
      await c.query(`insert into ${S}.items (k, v, n) values ($1, $2, $3)`, [101, 'it\'s "quoted"', null]);
      await c.query(`insert into ${S}.items (k, v, n) values ($1, $2, $3)`, [102, 'second', 7]);
      const r = await c.query(`select k, v, n from ${S}.items where k = any($1) order by k`, [[101, 102]]);
      eq(r.rows, [{ k: 101, v: 'it\'s "quoted"', n: null }, { k: 102, v: 'second', n: 7 }], 'rows');
    });
  },

  async read_own_write() {
    await withClient(async (c) => {
      for (let i = 0; i < 5; i++) {
        await c.query(`insert into ${S}.items (k, v) values ($1, 'ryw')`, [200 + i]);
        eq((await one(c, `select count(*)::int as n from ${S}.items where k = $1`, [200 + i])).n, 1,
           `row ${i} right after its insert`);
      }
    });
  },

  async prepare_threshold() {
    await withClient(async (c) => {
      const ports = new Set();
      for (let i = 0; i < 12; i++) {
        const r = await one(c, { name: 'drv_read', text: 'select $1::int + 1 as v, inet_server_port() as p',
                                 values: [i] });
        eq(r.v, i + 1, `named query ${i}`);
        ports.add(r.p);
      }
      check([...ports].every((p) => conf.replicas.includes(p)), `named reads ran on ${[...ports]}`);
      check(ports.size === conf.replicas.length, `named reads used only ${[...ports]}`);
      for (let i = 0; i < 6; i++) {
        onPrimary((await one(c, { name: 'drv_ins', text: `insert into ${S}.items (k, v) values ($1, 'prep') returning inet_server_port() as p`,
                                  values: [800 + i] })).p, `named insert ${i}`);
      }
      for (let i = 0; i < 6; i++) {
        eq((await one(c, { name: 'drv_read', text: 'select $1::int + 1 as v, inet_server_port() as p',
                           values: [i] })).v, i + 1, `named read after writes ${i}`);
      }
      // Named statement used inside a transaction and again after it.
      await c.query('begin');
      eq((await one(c, { name: 'drv_read', text: 'select $1::int + 1 as v, inet_server_port() as p', values: [5] })).v, 6, 'in tx');
      await c.query('commit');
      eq((await one(c, { name: 'drv_read', text: 'select $1::int + 1 as v, inet_server_port() as p', values: [6] })).v, 7, 'after tx');
      // pg-cursor: Execute with a row limit followed by Flush; the portal lives until Sync.
      const cur = c.query(new Cursor('select g from generate_series(1, 1000) g where g > $1', [0]));
      let n = 0;
      for (;;) {
        const rows = await cur.read(100);
        if (!rows.length) break;
        n += rows.length;
      }
      await cur.close();
      eq(n, 1000, 'rows through pg-cursor');
      eq((await one(c, 'select 1 as x')).x, 1, 'after the cursor');
    });
  },

  async tx_commit() {
    await withClient(async (c) => {
      await c.query('begin');
      onPrimary((await one(c, `insert into ${S}.items (k, v) values (300, 'c') returning inet_server_port() as p`)).p, 'insert in tx');
      const r = await one(c, `select count(*)::int as n, inet_server_port() as p from ${S}.items where k = $1`, [300]);
      eq(r.n, 1, 'read in tx');
      onPrimary(r.p, 'read in tx');
      await c.query('commit');
      eq((await one(c, `select count(*)::int as n from ${S}.items where k = 300`)).n, 1, 'committed');
    });
  },

  async tx_rollback() {
    await withClient(async (c) => {
      await c.query('begin');
      await c.query(`insert into ${S}.items (k, v) values ($1, 'rb')`, [301]);
      eq((await one(c, `select count(*)::int as n from ${S}.items where k = 301`)).n, 1, 'in tx');
      await c.query('rollback');
      eq((await one(c, `select count(*)::int as n from ${S}.items where k = 301`)).n, 0, 'after rollback');
    });
  },

  async tx_error() {
    await withClient(async (c) => {
      await c.query('begin');
      await c.query(`insert into ${S}.items (k, v) values ($1, 'e')`, [302]);
      await expectError(c.query('select 1/$1::int', [0]), '22012', '1/0');
      await expectError(c.query('select $1::int', [1]), '25P02', 'after error');
      await c.query('rollback');
      eq((await one(c, `select count(*)::int as n from ${S}.items where k = 302`)).n, 0, 'rolled back');
      eq((await one(c, 'select $1::int + 1 as v', [41])).v, 42, 'session goes on');
    });
  },

  async session_settings() {
    await withClient(async (c) => {
      await c.query(`set search_path to ${S}`);
      await c.query("set application_name = 'drv-node-pg-app'");
      const seen = [];
      for (let i = 0; i < 8; i++) {
        seen.push(await one(c, { name: 'drv_ss', text: "select inet_server_port() as p, v, current_setting('application_name') as a from only_here where $1", values: [true] }));
      }
      check(seen.every((r) => r.v === S && r.a === 'drv-node-pg-app'), `reads saw ${JSON.stringify(seen)}`);
      check(seen.some((r) => conf.replicas.includes(r.p)), `no read on a replica: ${JSON.stringify(seen)}`);
      onPrimary((await one(c, "insert into items (k, v) values ($1, 'sp') returning inet_server_port() as p", [400])).p, 'insert via search_path');
    });
  },

  async big_result() {
    await withClient(async (c) => {
      const r = await c.query("select g, repeat('x', 40) as x from generate_series(1, $1::int) g", [10000]);
      eq(r.rows.length, 10000, 'row count');
      eq(r.rows.reduce((a, x) => a + x.g, 0), 10000 * 10001 / 2, 'sum');
    });
  },

  async bytea_text() {
    await withClient(async (c) => {
      const r = await one(c, `select b, t, inet_server_port() as p from ${S}.blobs where id = $1`, [1]);
      check(Buffer.compare(r.b, h.ALL_BYTES) === 0, 'seeded bytea differs');
      eq(r.t, h.UNICODE_TEXT, 'seeded text');
      onReplica(r.p, 'seeded read');
      eq(await one(c, `select b, t from ${S}.blobs where id = 2`), { b: null, t: null }, 'NULLs');
      await c.query(`insert into ${S}.blobs values ($1, $2, $3), ($4, $5, $6)`,
                    [10, h.ALL_BYTES, h.UNICODE_TEXT, 11, null, null]);
      const w = await one(c, `select b, t from ${S}.blobs where id = 10`);
      check(Buffer.compare(w.b, h.ALL_BYTES) === 0, 'written bytea differs');
      eq(w.t, h.UNICODE_TEXT, 'written text');
      eq(await one(c, `select b, t from ${S}.blobs where id = 11`), { b: null, t: null }, 'written NULLs');
    });
  },

  async statement_timeout() {
    await withClient(async (c) => {
      await c.query("set statement_timeout = '300ms'");
      const t0 = Date.now();
      await expectError(c.query('select pg_sleep(5)'), '57014', 'pg_sleep');
      check(Date.now() - t0 < 4000, 'cancel too slow');
      await c.query('reset statement_timeout');
      eq((await one(c, 'select $1::int as v', [1])).v, 1, 'session after cancel');
      // Client-side query_timeout does not cancel; statement_timeout per client config does.
    }, { statement_timeout: 400 });
  },

  async listen_notify() {
    const lc = await connect();
    const nc = await connect();
    try {
      const got = [];
      lc.on('notification', (m) => got.push(m.payload));
      await lc.query('listen drv_node_pg_chan');
      await nc.query("notify drv_node_pg_chan, 'hello ü'");
      await nc.query('select pg_notify($1, $2)', ['drv_node_pg_chan', 'second']);
      const deadline = Date.now() + 5000;
      while (got.length < 2 && Date.now() < deadline) await h.sleep(20);
      eq(got, ['hello ü', 'second'], 'notifications');
    } finally {
      await lc.end().catch(() => {});
      await nc.end().catch(() => {});
    }
  },

  async copy() {
    await withClient(async (c) => {
      let data = '';
      for (let i = 0; i < 1000; i++) data += `${i}\trow ${i} ü\n`;
      data += '1000\t\\N\n';
      await pipeline(Readable.from([Buffer.from(data)]), c.query(copyFrom(`copy ${S}.copy_t (a, b) from stdin`)));
      const chunks = [];
      await pipeline(c.query(copyTo(`copy (select a, b from ${S}.copy_t order by a) to stdout`)),
                     new Writable({ write(ch, _e, cb) { chunks.push(ch); cb(); } }));
      eq(Buffer.concat(chunks).toString(), data, 'copy out');
      eq((await one(c, 'select 1 as x')).x, 1, 'session after copy');
    });
  },

  async pipeline() {
    // pg queues queries client-side; many queries issued at once still share the
    // connection in order. Named statements across the burst.
    await withClient(async (c) => {
      const ps = [];
      for (let i = 0; i < 50; i++) {
        ps.push(c.query({ name: 'drv_pipe_ins', text: `insert into ${S}.items (k, v) values ($1, 'pipe') returning k`, values: [900 + i] }));
        ps.push(c.query('select $1::int * 10 as v', [i]));
      }
      const rs = await Promise.all(ps);
      for (let i = 0; i < 50; i++) {
        eq(rs[2 * i].rows[0].k, 900 + i, `insert ${i}`);
        eq(rs[2 * i + 1].rows[0].v, i * 10, `read ${i}`);
      }
    });
  },

  async read_only_tx() {
    await withClient(async (c) => {
      await c.query('begin read only');
      eq((await one(c, `select count(*)::int as n from ${S}.only_here`)).n, 1, 'read');
      await expectError(c.query(`insert into ${S}.items (k, v) values (700, 'ro')`), '25006', 'insert');
      await c.query('rollback');
      onPrimary((await one(c, `insert into ${S}.items (k, v) values (701, 'rw') returning inet_server_port() as p`)).p, 'insert after');
    });
  },
};

h.runCases(cases);
