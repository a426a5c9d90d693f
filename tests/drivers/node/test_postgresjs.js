// SPDX-License-Identifier: MIT
// postgres.js through pgsteer. postgres.js prepares every query under a name (prepare: true),
// pipelines: queries issued together on one connection go out back to back, each with its
// own Sync, before any answer arrives; and sql.begin() sends BEGIN with what follows.
'use strict';

const postgres = require('postgres');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const h = require('./harness');
const { conf, check, eq, onReplica, onPrimary, expectError } = h;
const S = conf.schema;

function open(extra = {}) {
  return postgres({ host: conf.host, port: conf.port, user: conf.user, pass: conf.password,
                    database: conf.database, ssl: conf.ssl, max: 1, connect_timeout: 10,
                    onnotice: () => {},
                    connection: { application_name: 'drv-postgresjs' }, ...extra });
}

async function withSql(fn, extra) {
  const sql = open(extra);
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 2 }).catch(() => {});
  }
}

const cases = {
  async routing() {
    await withSql(async (sql) => {
      for (let i = 0; i < 4; i++) {
        onReplica((await sql`select inet_server_port() as p`)[0].p, `read ${i}`);
        onReplica((await sql`select inet_server_port() + ${i}::int - ${i}::int as p`)[0].p, `parameterised read ${i}`);
        onReplica((await sql.unsafe('select inet_server_port() as p'))[0].p, `unsafe read ${i}`);
      }
      onPrimary((await sql`insert into ${sql(S + '.items')} (k, v) values (${1}, ${'routing'}) returning inet_server_port() as p`)[0].p, 'insert');
    });
  },

  async params() {
    await withSql(async (sql) => {
      await sql`insert into ${sql(S)}.items (k, v, n) values (${101}, ${'it\'s "quoted"'}, ${null})`;
      await sql`insert into ${sql(S)}.items ${sql({ k: 102, v: 'second', n: 7 })}`;
      const rows = await sql`select k, v, n from ${sql(S)}.items where k in ${sql([101, 102])} order by k`;
      eq([...rows], [{ k: 101, v: 'it\'s "quoted"', n: null }, { k: 102, v: 'second', n: 7 }], 'rows');
    });
  },

  async read_own_write() {
    await withSql(async (sql) => {
      for (let i = 0; i < 5; i++) {
        await sql`insert into ${sql(S)}.items (k, v) values (${200 + i}, 'ryw')`;
        eq((await sql`select count(*)::int as n from ${sql(S)}.items where k = ${200 + i}`)[0].n, 1, `row ${i}`);
      }
    });
  },

  async prepare_threshold() {
    await withSql(async (sql) => {
      const ports = new Set();
      for (let i = 0; i < 12; i++) {
        const [r] = await sql`select ${i}::int + 1 as v, inet_server_port() as p`;
        eq(r.v, i + 1, `execution ${i}`);
        ports.add(r.p);
      }
      check([...ports].every((p) => conf.replicas.includes(p)), `prepared reads ran on ${[...ports]}`);
      check(ports.size === conf.replicas.length, `prepared reads used only ${[...ports]}`);
      for (let i = 0; i < 6; i++) {
        onPrimary((await sql`insert into ${sql(S)}.items (k, v) values (${800 + i}, 'prep') returning inet_server_port() as p`)[0].p, `insert ${i}`);
      }
      for (let i = 0; i < 6; i++) {
        eq((await sql`select ${i}::int + 1 as v, inet_server_port() as p`)[0].v, i + 1, `read after writes ${i}`);
      }
      // Cursor: a named portal fetched in chunks inside a transaction.
      let n = 0;
      await sql.begin(async (tx) => {
        for await (const rows of tx`select g from generate_series(1, 1000) g`.cursor(100)) n += rows.length;
      });
      eq(n, 1000, 'rows through a cursor');
    });
  },

  async tx_commit() {
    await withSql(async (sql) => {
      await sql.begin(async (tx) => {
        onPrimary((await tx`insert into ${sql(S)}.items (k, v) values (300, 'c') returning inet_server_port() as p`)[0].p, 'insert in tx');
        const [r] = await tx`select count(*)::int as n, inet_server_port() as p from ${sql(S)}.items where k = ${300}`;
        eq(r.n, 1, 'read in tx');
        onPrimary(r.p, 'read in tx');
      });
      eq((await sql`select count(*)::int as n from ${sql(S)}.items where k = 300`)[0].n, 1, 'committed');
      // Pipelined transaction: return an array of queries, all sent before any answer.
      await sql.begin((tx) => [
        tx`insert into ${sql(S)}.items (k, v) values (306, 'p1')`,
        tx`insert into ${sql(S)}.items (k, v) values (307, 'p2')`,
        tx`select 1`,
      ]);
      eq((await sql`select count(*)::int as n from ${sql(S)}.items where k in (306, 307)`)[0].n, 2, 'pipelined tx');
    });
  },

  async tx_rollback() {
    await withSql(async (sql) => {
      try {
        await sql.begin(async (tx) => {
          await tx`insert into ${sql(S)}.items (k, v) values (301, 'rb')`;
          eq((await tx`select count(*)::int as n from ${sql(S)}.items where k = 301`)[0].n, 1, 'in tx');
          throw new Error('roll me back');
        });
      } catch (e) {
        if (e.message !== 'roll me back') throw e;
      }
      eq((await sql`select count(*)::int as n from ${sql(S)}.items where k = 301`)[0].n, 0, 'after rollback');
    });
  },

  async tx_error() {
    await withSql(async (sql) => {
      await expectError(sql.begin(async (tx) => {
        await tx`insert into ${sql(S)}.items (k, v) values (302, 'e')`;
        await tx`select 1/${0}::int`;
      }), '22012', '1/0 in tx');
      eq((await sql`select count(*)::int as n from ${sql(S)}.items where k = 302`)[0].n, 0, 'rolled back');
      await sql.begin(async (tx) => {
        await tx`insert into ${sql(S)}.items (k, v) values (304, 'outer')`;
        await tx.savepoint(async (sp) => {
          await sp`insert into ${sql(S)}.items (k, v) values (305, 'inner')`;
          await sp`select 1/0`;
        }).catch(() => {});
      });
      const [r] = await sql`select count(*) filter (where k = 304)::int as a, count(*) filter (where k = 305)::int as b from ${sql(S)}.items`;
      eq([r.a, r.b], [1, 0], 'savepoint');
      eq((await sql`select ${41}::int + 1 as v`)[0].v, 42, 'session goes on');
    });
  },

  async session_settings() {
    await withSql(async (sql) => {
      await sql.unsafe(`set search_path to ${S}`);
      await sql`set application_name = 'drv-postgresjs-app'`;
      const seen = [];
      for (let i = 0; i < 8; i++) {
        seen.push((await sql`select inet_server_port() as p, v, current_setting('application_name') as a from only_here where ${true}`)[0]);
      }
      check(seen.every((r) => r.v === S && r.a === 'drv-postgresjs-app'), `reads saw ${JSON.stringify(seen)}`);
      check(seen.some((r) => conf.replicas.includes(r.p)), `no read on a replica: ${JSON.stringify(seen)}`);
      onPrimary((await sql`insert into items (k, v) values (${400}, 'sp') returning inet_server_port() as p`)[0].p, 'insert via search_path');
    });
  },

  async big_result() {
    await withSql(async (sql) => {
      const rows = await sql`select g, repeat('x', 40) as x from generate_series(1, ${10000}::int) g`;
      eq(rows.length, 10000, 'row count');
      eq(rows.reduce((a, r) => a + r.g, 0), 10000 * 10001 / 2, 'sum');
    });
  },

  async bytea_text() {
    await withSql(async (sql) => {
      const [r] = await sql`select b, t, inet_server_port() as p from ${sql(S)}.blobs where id = ${1}`;
      check(Buffer.compare(r.b, h.ALL_BYTES) === 0, 'seeded bytea differs');
      eq(r.t, h.UNICODE_TEXT, 'seeded text');
      onReplica(r.p, 'seeded read');
      eq([...(await sql`select b, t from ${sql(S)}.blobs where id = 2`)], [{ b: null, t: null }], 'NULLs');
      await sql`insert into ${sql(S)}.blobs values (${10}, ${h.ALL_BYTES}, ${h.UNICODE_TEXT}), (${11}, ${null}, ${null})`;
      const [w] = await sql`select b, t from ${sql(S)}.blobs where id = 10`;
      check(Buffer.compare(w.b, h.ALL_BYTES) === 0, 'written bytea differs');
      eq(w.t, h.UNICODE_TEXT, 'written text');
    });
  },

  async statement_timeout() {
    await withSql(async (sql) => {
      await sql`set statement_timeout = '300ms'`;
      const t0 = Date.now();
      await expectError(sql`select pg_sleep(5)`, '57014', 'pg_sleep');
      check(Date.now() - t0 < 4000, 'cancel too slow');
      await sql`reset statement_timeout`;
      eq((await sql`select ${1}::int as v`)[0].v, 1, 'session after cancel');
      const q = sql`select pg_sleep(5)`;  // query.cancel(): a CancelRequest
      setTimeout(() => q.cancel(), 300);
      const t1 = Date.now();
      await expectError(q, '57014', 'cancel()');
      check(Date.now() - t1 < 4000, 'CancelRequest too slow');
      eq((await sql`select ${2}::int as v`)[0].v, 2, 'session after CancelRequest');
    });
  },

  async listen_notify() {
    await withSql(async (sql) => {
      const got = [];
      await sql.listen('drv_postgresjs_chan', (p) => got.push(p));
      await sql.notify('drv_postgresjs_chan', 'hello ü');
      await sql`select pg_notify('drv_postgresjs_chan', 'second')`;
      const deadline = Date.now() + 5000;
      while (got.length < 2 && Date.now() < deadline) await h.sleep(20);
      eq(got, ['hello ü', 'second'], 'notifications');
    }, { max: 2 });
  },

  async copy() {
    await withSql(async (sql) => {
      let data = '';
      for (let i = 0; i < 1000; i++) data += `${i}\trow ${i} ü\n`;
      data += '1000\t\\N\n';
      await pipeline(Readable.from([Buffer.from(data)]),
                     await sql`copy ${sql(S)}.copy_t (a, b) from stdin`.writable());
      const chunks = [];
      await pipeline(await sql`copy (select a, b from ${sql(S)}.copy_t order by a) to stdout`.readable(),
                     new Writable({ write(ch, _e, cb) { chunks.push(ch); cb(); } }));
      eq(Buffer.concat(chunks).toString(), data, 'copy out');
      eq((await sql`select 1 as x`)[0].x, 1, 'session after copy');
    });
  },

  async pipeline() {
    await withSql(async (sql) => {
      // Reads only, issued at once: pipelined on one connection, spread over replicas.
      const reads = await Promise.all([...Array(30).keys()].map((i) => sql`select ${i}::int as v, inet_server_port() as p`));
      reads.forEach((r, i) => { eq(r[0].v, i, `read ${i}`); onReplica(r[0].p, `pipelined read ${i}`); });
      // Writes and reads interleaved in one pipeline: answers in order.
      const ps = [];
      for (let i = 0; i < 30; i++) {
        ps.push(sql`insert into ${sql(S)}.items (k, v) values (${900 + i}, 'pipe') returning k, inet_server_port() as p`);
        ps.push(sql`select ${i}::int * 10 as v`);
      }
      const rs = await Promise.all(ps);
      for (let i = 0; i < 30; i++) {
        eq(rs[2 * i][0].k, 900 + i, `insert ${i}`);
        onPrimary(rs[2 * i][0].p, `pipelined insert ${i}`);
        eq(rs[2 * i + 1][0].v, i * 10, `read after write ${i}`);
      }
      // An error in the middle of a pipeline fails that query only.
      const mixed = await Promise.allSettled([sql`select 1 as x`, sql`select 1/0`, sql`select 3 as x`]);
      eq(mixed.map((m) => m.status), ['fulfilled', 'rejected', 'fulfilled'], 'pipeline with an error');
      eq(mixed[1].reason.code, '22012', 'error code');
      eq(mixed[2].value[0].x, 3, 'query after the error');
    });
  },

  async read_only_tx() {
    await withSql(async (sql) => {
      await sql.begin('read only', async (tx) => {
        eq((await tx`select count(*)::int as n from ${sql(S)}.only_here`)[0].n, 1, 'read');
      });
      await expectError(sql.begin('read only', async (tx) => {
        await tx`insert into ${sql(S)}.items (k, v) values (700, 'ro')`;
      }), '25006', 'insert in read-only tx');
      onPrimary((await sql`insert into ${sql(S)}.items (k, v) values (701, 'rw') returning inet_server_port() as p`)[0].p, 'insert after');
    });
  },

  // The causal token through a driver that prepares every query under a name, SET and SHOW
  // of pgsteer.* included: session B, given session A's last write position, reads A's row.
  async causal_token() {
    await withSql(async (a) => {
      await withSql(async (b) => {
        await a`insert into ${a(S)}.items (k, v) values (7773, 'token')`;
        const token = (await a`show pgsteer.last_write_lsn`)[0]['pgsteer.last_write_lsn'];
        check(/^[0-9A-F]+\/[0-9A-F]+$/.test(token) && token !== '0/0', `token ${token}`);
        await b.unsafe(`set pgsteer.min_lsn = '${token}'`, [], { prepare: true });
        eq((await b`show pgsteer.min_lsn`)[0]['pgsteer.min_lsn'], token, 'min_lsn as set');
        eq((await b`select count(*)::int as n from ${b(S)}.items where k = 7773`)[0].n, 1,
           'the row, read with the token');
      });
    });
  },
};

h.runCases(cases);
