# SPDX-License-Identifier: MIT
# Ruby pg through pgsteer: exec_params (unnamed statements), prepare/exec_prepared (named),
# transactions, bytea, COPY, notifications (wait_for_notify) and libpq pipeline mode.
# Prints "ok NAME" or "FAIL NAME: message" per case (see tests/drivers/run_all.py).
require 'pg'
require 'timeout'

$stdout.sync = true
PORT = Integer(ENV.fetch('PGSTEER_PORT', '6432'))
PRIMARY = Integer(ENV.fetch('PRIMARY_PORT', '0'))
REPLICAS = ENV.fetch('REPLICA_PORTS', '').split(',').map { |p| Integer(p) }
S = ENV.fetch('DRIVER_SCHEMA', 'public')
CASE_TIMEOUT = Float(ENV.fetch('DRIVER_CASE_TIMEOUT', '30'))
ALL_BYTES = (0..255).to_a.pack('C*')
UNICODE_TEXT = "zażółć gęślą jaźń · Ελληνικά · 日本語 · \u{1F418}"

class CheckFailed < StandardError; end
class RollMeBack < StandardError; end

def check(cond, msg)
  raise CheckFailed, msg unless cond
end

def eqv(got, want, what)
  raise CheckFailed, "#{what}: got #{got.inspect[0, 300]}, want #{want.inspect[0, 300]}" unless got == want
end

def on_replica(p, what) = check(REPLICAS.include?(Integer(p)), "#{what} ran on port #{p}, not on a replica #{REPLICAS}")
def on_primary(p, what) = check(Integer(p) == PRIMARY, "#{what} ran on port #{p}, not on the primary #{PRIMARY}")

def expect_state(want, what)
  yield
  raise CheckFailed, "#{what}: no error, want SQLSTATE #{want}"
rescue PG::Error => e
  got = e.result&.error_field(PG::PG_DIAG_SQLSTATE)
  check(got == want, "#{what}: SQLSTATE #{got}, want #{want} (#{e.message.strip})")
end

def connect
  c = PG.connect(host: ENV.fetch('PGSTEER_HOST', '127.0.0.1'), port: PORT,
                 user: ENV.fetch('PGSTEER_USER', 'app'), password: ENV.fetch('PGSTEER_PASSWORD', 'secret'),
                 dbname: ENV.fetch('PGSTEER_DB', 'app'), application_name: 'drv-ruby', connect_timeout: 10)
  return c unless block_given?
  begin
    yield c
  ensure
    c.close
  end
end

def val(c, sql, params = nil)
  r = params ? c.exec_params(sql, params) : c.exec(sql)
  r.getvalue(0, 0)
end

CASES = {
  'routing' => lambda {
    connect do |c|
      4.times { |i| on_replica(val(c, 'select inet_server_port()'), "read #{i}") }
      4.times { |i| on_replica(val(c, 'select inet_server_port() + $1 - $1', [i]), "param read #{i}") }
      on_primary(val(c, "insert into #{S}.items (k, v) values ($1, $2) returning inet_server_port()", [1, 'routing']), 'insert')
    end
  },
  'params' => lambda {
    connect do |c|
      c.exec_params("insert into #{S}.items (k, v, n) values ($1, $2, $3)", [101, %q(it's "quoted"), nil])
      c.exec_params("insert into #{S}.items (k, v, n) values ($1, $2, $3)", [102, 'second', 7])
      rows = c.exec_params("select k, v, n from #{S}.items where k in ($1, $2) order by k", [101, 102]).values
      eqv(rows, [['101', %q(it's "quoted"), nil], ['102', 'second', '7']], 'rows')
    end
  },
  'read_own_write' => lambda {
    connect do |c|
      5.times do |i|
        c.exec_params("insert into #{S}.items (k, v) values ($1, 'ryw')", [200 + i])
        eqv(val(c, "select count(*) from #{S}.items where k = $1", [200 + i]), '1', "row #{i}")
      end
    end
  },
  'prepare_threshold' => lambda {
    connect do |c|
      c.prepare('drv_read', 'select $1::int + 1, inet_server_port()')
      ports = 12.times.map do |i|
        r = c.exec_prepared('drv_read', [i])
        eqv(r.getvalue(0, 0), (i + 1).to_s, "execution #{i}")
        Integer(r.getvalue(0, 1))
      end.uniq
      check((ports - REPLICAS).empty?, "named reads ran on #{ports}")
      check(ports.size == REPLICAS.size, "named reads used only #{ports}")
      c.prepare('drv_ins', "insert into #{S}.items (k, v) values ($1, 'prep') returning inet_server_port()")
      6.times { |i| on_primary(c.exec_prepared('drv_ins', [800 + i]).getvalue(0, 0), "insert #{i}") }
      6.times { |i| eqv(c.exec_prepared('drv_read', [i]).getvalue(0, 0), (i + 1).to_s, "after writes #{i}") }
      eqv(c.describe_prepared('drv_read').nfields, 2, 'describe_prepared')
      c.exec('deallocate drv_read')
      c.prepare('drv_read', 'select $1::int * 2')
      eqv(c.exec_prepared('drv_read', [21]).getvalue(0, 0), '42', 'prepared again')
    end
  },
  'tx_commit' => lambda {
    connect do |c|
      c.transaction do
        on_primary(val(c, "insert into #{S}.items (k, v) values (300, 'c') returning inet_server_port()"), 'insert in tx')
        r = c.exec_params("select count(*), inet_server_port() from #{S}.items where k = $1", [300])
        eqv(r.getvalue(0, 0), '1', 'read in tx')
        on_primary(r.getvalue(0, 1), 'read in tx')
      end
      eqv(val(c, "select count(*) from #{S}.items where k = 300"), '1', 'committed')
    end
  },
  'tx_rollback' => lambda {
    connect do |c|
      begin
        c.transaction do # an exception in the block makes it send ROLLBACK
          c.exec_params("insert into #{S}.items (k, v) values ($1, 'rb')", [301])
          eqv(val(c, "select count(*) from #{S}.items where k = 301"), '1', 'in tx')
          raise RollMeBack
        end
      rescue RollMeBack
        nil
      end
      eqv(val(c, "select count(*) from #{S}.items where k = 301"), '0', 'after rollback')
    end
  },
  'tx_error' => lambda {
    connect do |c|
      c.exec('begin')
      c.exec_params("insert into #{S}.items (k, v) values ($1, 'e')", [302])
      expect_state('22012', '1/0') { c.exec_params('select 1/$1::int', [0]) }
      expect_state('25P02', 'after error') { c.exec_params('select $1::int', [1]) }
      c.exec('rollback')
      eqv(val(c, "select count(*) from #{S}.items where k = 302"), '0', 'rolled back')
      eqv(val(c, 'select $1::int + 1', [41]), '42', 'goes on')
    end
  },
  'session_settings' => lambda {
    connect do |c|
      c.exec("set search_path to #{S}")
      c.exec("set application_name = 'drv-ruby-app'")
      seen = 8.times.map do
        c.exec_params("select inet_server_port(), v, current_setting('application_name') from only_here where $1", [true]).values[0]
      end
      check(seen.all? { |r| r[1] == S && r[2] == 'drv-ruby-app' }, "reads saw #{seen}")
      check(seen.any? { |r| REPLICAS.include?(Integer(r[0])) }, "no read on a replica: #{seen}")
    end
  },
  'big_result' => lambda {
    connect do |c|
      r = c.exec_params("select g, repeat('x', 40) from generate_series(1, $1::int) g", [10_000])
      eqv(r.ntuples, 10_000, 'row count')
      eqv(r.column_values(0).sum(&:to_i), 10_000 * 10_001 / 2, 'sum')
      n = 0
      c.send_query_params('select g from generate_series(1, 10000) g', [])
      c.set_single_row_mode
      while (res = c.get_result)
        n += res.ntuples
        res.clear
      end
      eqv(n, 10_000, 'single-row mode')
    end
  },
  'bytea_text' => lambda {
    connect do |c|
      r = c.exec_params("select b, t, inet_server_port() from #{S}.blobs where id = $1", [1], 1)
      eqv(r.getvalue(0, 0).b, ALL_BYTES, 'seeded bytea (binary result)')
      eqv(r.getvalue(0, 1).force_encoding('UTF-8'), UNICODE_TEXT, 'seeded text')
      r = c.exec_params("select b, t, inet_server_port() from #{S}.blobs where id = $1", [1])
      eqv(c.unescape_bytea(r.getvalue(0, 0)), ALL_BYTES, 'seeded bytea (text result)')
      on_replica(r.getvalue(0, 2), 'seeded read')
      eqv(c.exec("select b, t from #{S}.blobs where id = 2").values, [[nil, nil]], 'NULLs')
      c.exec_params("insert into #{S}.blobs values ($1, $2, $3)", [10, { value: ALL_BYTES, format: 1 }, UNICODE_TEXT])
      r = c.exec_params("select b, t from #{S}.blobs where id = 10", [], 1)
      eqv(r.getvalue(0, 0).b, ALL_BYTES, 'written bytea')
      eqv(r.getvalue(0, 1).force_encoding('UTF-8'), UNICODE_TEXT, 'written text')
    end
  },
  'statement_timeout' => lambda {
    connect do |c|
      c.exec("set statement_timeout = '300ms'")
      t0 = Time.now
      expect_state('57014', 'pg_sleep') { c.exec('select pg_sleep(5)') }
      check(Time.now - t0 < 4, 'cancel too slow')
      c.exec('reset statement_timeout')
      eqv(val(c, 'select $1::int', [1]), '1', 'session after cancel')
      c.send_query('select pg_sleep(5)')  # PG::Connection#cancel: a CancelRequest
      sleep 0.3
      c.cancel
      t0 = Time.now
      expect_state('57014', 'cancel') { c.get_last_result }
      check(Time.now - t0 < 4, 'CancelRequest too slow')
      eqv(val(c, 'select $1::int', [2]), '2', 'session after CancelRequest')
    end
  },
  'listen_notify' => lambda {
    connect do |l|
      connect do |n|
        l.exec('listen drv_ruby_chan')
        n.exec("notify drv_ruby_chan, 'hello ü'")
        n.exec_params('select pg_notify($1, $2)', ['drv_ruby_chan', 'second'])
        got = []
        2.times { l.wait_for_notify(5) { |_ch, _pid, payload| got << payload.force_encoding('UTF-8') } }
        eqv(got, ['hello ü', 'second'], 'notifications')
      end
    end
  },
  'copy' => lambda {
    connect do |c|
      data = (0..999).map { |i| "#{i}\trow #{i} ü\n" }.join + "1000\t\\N\n"
      c.copy_data("copy #{S}.copy_t (a, b) from stdin") { c.put_copy_data(data) }
      out = +''
      c.copy_data("copy (select a, b from #{S}.copy_t order by a) to stdout") do
        while (row = c.get_copy_data)
          out << row
        end
      end
      eqv(out.force_encoding('UTF-8'), data, 'copy out')
      eqv(val(c, 'select 1'), '1', 'session after copy')
    end
  },
  'pipeline' => lambda {
    connect do |c|
      # libpq pipeline mode: several Syncs in flight, reads then writes.
      c.enter_pipeline_mode
      20.times { |i| c.send_query_params('select $1::int, inet_server_port()', [i]) ; c.pipeline_sync }
      10.times { |i| c.send_query_params("insert into #{S}.items (k, v) values ($1, 'pipe') returning k, inet_server_port()", [900 + i]); c.pipeline_sync }
      reads = []
      20.times do
        r = c.get_result
        reads << r.values[0]
        c.get_result # nil after each query
        eqv(c.get_result.result_status, PG::PGRES_PIPELINE_SYNC, 'sync')
      end
      writes = []
      10.times do
        r = c.get_result
        writes << r.values[0]
        c.get_result
        eqv(c.get_result.result_status, PG::PGRES_PIPELINE_SYNC, 'sync')
      end
      c.exit_pipeline_mode
      reads.each_with_index { |r, i| eqv(r[0], i.to_s, "pipelined read #{i}"); on_replica(r[1], "pipelined read #{i}") }
      writes.each_with_index { |r, i| eqv(r[0], (900 + i).to_s, "pipelined insert #{i}"); on_primary(r[1], "pipelined insert #{i}") }
    end
  },
  'read_only_tx' => lambda {
    connect do |c|
      c.exec('begin transaction read only')
      eqv(val(c, "select count(*) from #{S}.only_here"), '1', 'read')
      expect_state('25006', 'insert') { c.exec("insert into #{S}.items (k, v) values (700, 'ro')") }
      c.exec('rollback')
      on_primary(val(c, "insert into #{S}.items (k, v) values (701, 'rw') returning inet_server_port()"), 'insert after')
    end
  },
}.freeze

only = ARGV
failed = 0
CASES.each do |name, fn|
  next unless only.empty? || only.include?(name)
  t0 = Time.now
  begin
    Timeout.timeout(CASE_TIMEOUT) { fn.call }
    puts format('ok %s (%d ms)', name, (Time.now - t0) * 1000)
  rescue Exception => e # rubocop:disable Lint/RescueException
    failed += 1
    msg = e.is_a?(CheckFailed) ? e.message : "#{e.class}: #{e.message}"
    msg = "no answer within #{CASE_TIMEOUT}s (hung)" if e.is_a?(Timeout::Error)
    warn "--- #{name}\n#{e.backtrace&.first(5)&.join("\n")}" unless e.is_a?(CheckFailed)
    puts "FAIL #{name}: #{msg.gsub(/\s+/, ' ')[0, 1500]}"
  end
end
exit(failed.zero? ? 0 : 1)
