#!/usr/bin/perl
# SPDX-License-Identifier: MIT
# DBD::Pg through pgsteer: server-side prepared statements (named, prepared once per
# statement handle and executed many times), placeholders, bytea, COPY, notifications.
# Prints "ok NAME" or "FAIL NAME: message" per case (see tests/drivers/run_all.py).
use strict;
use warnings;
use utf8;
use DBI;
use DBD::Pg qw(:pg_types);
use POSIX ();
use Time::HiRes qw(time sleep);

binmode STDOUT, ':encoding(UTF-8)';
$| = 1;
my $HOST = $ENV{PGSTEER_HOST} // '127.0.0.1';
my $PORT = $ENV{PGSTEER_PORT} // 6432;
my $PRIMARY = $ENV{PRIMARY_PORT} // 0;
my %REPLICA = map { $_ => 1 } split /,/, ($ENV{REPLICA_PORTS} // '');
my $S = $ENV{DRIVER_SCHEMA} // 'public';
my $TIMEOUT = $ENV{DRIVER_CASE_TIMEOUT} // 30;
my $ALL_BYTES = join '', map { chr } 0 .. 255;
my $UNICODE_TEXT = "zażółć gęślą jaźń · Ελληνικά · 日本語 · \x{1F418}";

sub connect_db {
    my (%attr) = @_;
    my $dbh = DBI->connect("dbi:Pg:host=$HOST;port=$PORT;dbname=" . ($ENV{PGSTEER_DB} // 'app')
                           . ";application_name=drv-perl;connect_timeout=10",
                           $ENV{PGSTEER_USER} // 'app', $ENV{PGSTEER_PASSWORD} // 'secret',
                           { RaiseError => 1, PrintError => 0, AutoCommit => 1,
                             pg_enable_utf8 => 1, %attr })
        or die "connect: $DBI::errstr\n";
    return $dbh;
}

sub check { my ($c, $m) = @_; die "CHECK: $m\n" unless $c; }
sub eqv {
    my ($got, $want, $what) = @_;
    my $g = defined $got ? $got : 'undef';
    my $w = defined $want ? $want : 'undef';
    die "CHECK: $what: got '$g', want '$w'\n" unless $g eq $w;
}
sub on_replica { my ($p, $w) = @_; check($REPLICA{$p}, "$w ran on port $p, not on a replica"); }
sub on_primary { my ($p, $w) = @_; check($p == $PRIMARY, "$w ran on port $p, not on the primary $PRIMARY"); }
sub expect_state {
    my ($code, $want, $what) = @_;
    eval { $code->(); 1 } and die "CHECK: $what: no error, want SQLSTATE $want\n";
    my $err = $@;
    die $err if $err =~ /^CHECK:/;
    my $state = $DBI::state // '';
    check($state eq $want, "$what: SQLSTATE $state, want $want ($err)");
}
sub val { my ($dbh, $sql, @a) = @_; return ($dbh->selectrow_array($sql, undef, @a))[0]; }

my @cases = (
    routing => sub {
        my $dbh = connect_db();
        on_replica(val($dbh, 'select inet_server_port()'), "read $_") for 1 .. 4;
        on_replica(val($dbh, 'select inet_server_port() + ? - ?', $_, $_), "param read $_") for 1 .. 4;
        on_primary(val($dbh, "insert into $S.items (k, v) values (?, ?) returning inet_server_port()", 1, 'routing'), 'insert');
        $dbh->disconnect;
    },
    params => sub {
        my $dbh = connect_db();
        my $ins = $dbh->prepare("insert into $S.items (k, v, n) values (?, ?, ?)");
        $ins->execute(101, q{it's "quoted"}, undef);
        $ins->execute(102, 'second', 7);
        my $rows = $dbh->selectall_arrayref("select k, v, n from $S.items where k in (?, ?) order by k", undef, 101, 102);
        eqv(join('|', map { join ',', map { $_ // 'NULL' } @$_ } @$rows), q{101,it's "quoted",NULL|102,second,7}, 'rows');
        $dbh->disconnect;
    },
    read_own_write => sub {
        my $dbh = connect_db();
        for my $i (0 .. 4) {
            $dbh->do("insert into $S.items (k, v) values (?, 'ryw')", undef, 200 + $i);
            eqv(val($dbh, "select count(*) from $S.items where k = ?", 200 + $i), 1, "row $i");
        }
        $dbh->disconnect;
    },
    prepare_threshold => sub {
        my $dbh = connect_db();
        my $sth = $dbh->prepare('select ?::int + 1, inet_server_port()');  # one named statement
        my %ports;
        for my $i (0 .. 11) {
            $sth->execute($i);
            my ($v, $p) = $sth->fetchrow_array;
            eqv($v, $i + 1, "execution $i");
            $ports{$p} = 1;
        }
        check(!grep({ !$REPLICA{$_} } keys %ports), 'named reads ran on ' . join(',', keys %ports));
        check(keys(%ports) == keys(%REPLICA), 'named reads used only ' . join(',', keys %ports));
        my $ins = $dbh->prepare("insert into $S.items (k, v) values (?, 'prep') returning inet_server_port()");
        for my $i (0 .. 5) { $ins->execute(800 + $i); on_primary(($ins->fetchrow_array)[0], "insert $i"); }
        for my $i (0 .. 5) { $sth->execute($i); eqv(($sth->fetchrow_array)[0], $i + 1, "after writes $i"); }
        $dbh->disconnect;
    },
    tx_commit => sub {
        my $dbh = connect_db();
        $dbh->begin_work;
        on_primary(val($dbh, "insert into $S.items (k, v) values (300, 'c') returning inet_server_port()"), 'insert in tx');
        my ($n, $p) = $dbh->selectrow_array("select count(*), inet_server_port() from $S.items where k = ?", undef, 300);
        eqv($n, 1, 'read in tx');
        on_primary($p, 'read in tx');
        $dbh->commit;
        eqv(val($dbh, "select count(*) from $S.items where k = 300"), 1, 'committed');
        $dbh->disconnect;
    },
    tx_rollback => sub {
        my $dbh = connect_db(AutoCommit => 0);
        $dbh->do("insert into $S.items (k, v) values (?, 'rb')", undef, 301);
        eqv(val($dbh, "select count(*) from $S.items where k = 301"), 1, 'in tx');
        $dbh->rollback;
        eqv(val($dbh, "select count(*) from $S.items where k = 301"), 0, 'after rollback');
        $dbh->rollback;
        $dbh->disconnect;
    },
    tx_error => sub {
        my $dbh = connect_db(AutoCommit => 0);
        $dbh->do("insert into $S.items (k, v) values (?, 'e')", undef, 302);
        expect_state(sub { val($dbh, 'select 1/?::int', 0) }, '22012', '1/0');
        expect_state(sub { val($dbh, 'select ?::int', 1) }, '25P02', 'after error');
        $dbh->rollback;
        eqv(val($dbh, "select count(*) from $S.items where k = 302"), 0, 'rolled back');
        $dbh->commit;
        eqv(val($dbh, 'select ?::int + 1', 41), 42, 'goes on');
        $dbh->commit;
        $dbh->disconnect;
    },
    session_settings => sub {
        my $dbh = connect_db();
        $dbh->do("set search_path to $S");
        $dbh->do("set application_name = 'drv-perl-app'");
        my $sth = $dbh->prepare("select inet_server_port(), v, current_setting('application_name') from only_here where ?");
        my (@seen, $bad, $rep);
        for (1 .. 8) {
            $sth->execute(1);
            my @r = $sth->fetchrow_array;
            push @seen, join ':', map { $_ // 'undef' } @r;
            $bad = 1 unless ($r[1] // '') eq $S && ($r[2] // '') eq 'drv-perl-app';
            $rep = 1 if $REPLICA{$r[0]};
        }
        check(!$bad, "reads saw @seen, want $S and drv-perl-app everywhere");
        check($rep, "no read on a replica: @seen");
        $dbh->disconnect;
    },
    big_result => sub {
        my $dbh = connect_db();
        my $rows = $dbh->selectall_arrayref("select g, repeat('x', 40) from generate_series(1, ?::int) g", undef, 10000);
        eqv(scalar @$rows, 10000, 'row count');
        my $sum = 0; $sum += $_->[0] for @$rows;
        eqv($sum, 10000 * 10001 / 2, 'sum');
        $dbh->disconnect;
    },
    bytea_text => sub {
        my $dbh = connect_db();
        my ($b, $t, $p) = $dbh->selectrow_array("select b, t, inet_server_port() from $S.blobs where id = ?", undef, 1);
        check($b eq $ALL_BYTES, 'seeded bytea differs');
        eqv($t, $UNICODE_TEXT, 'seeded text');
        on_replica($p, 'seeded read');
        my @n = $dbh->selectrow_array("select b, t from $S.blobs where id = 2");
        check(!defined $n[0] && !defined $n[1], 'NULLs');
        my $ins = $dbh->prepare("insert into $S.blobs values (?, ?, ?)");
        $ins->bind_param(2, undef, { pg_type => PG_BYTEA });
        $ins->execute(10, $ALL_BYTES, $UNICODE_TEXT);
        ($b, $t) = $dbh->selectrow_array("select b, t from $S.blobs where id = 10");
        check($b eq $ALL_BYTES, 'written bytea differs');
        eqv($t, $UNICODE_TEXT, 'written text');
        $dbh->disconnect;
    },
    statement_timeout => sub {
        my $dbh = connect_db();
        $dbh->do("set statement_timeout = '300ms'");
        my $t0 = time;
        expect_state(sub { $dbh->do('select pg_sleep(5)') }, '57014', 'pg_sleep');
        check(time - $t0 < 4, 'cancel too slow');
        $dbh->do('reset statement_timeout');
        eqv(val($dbh, 'select ?::int', 1), 1, 'session after cancel');
        $dbh->disconnect;
    },
    listen_notify => sub {
        my $l = connect_db();
        my $n = connect_db();
        $l->do('listen drv_perl_chan');
        $n->do(q{notify drv_perl_chan, 'hello ü'});
        $n->do(q{select pg_notify('drv_perl_chan', 'second')});
        my @got;
        my $deadline = time + 5;
        while (@got < 2 && time < $deadline) {
            my $fd = $l->{pg_socket};
            my $rin = '';
            vec($rin, $fd, 1) = 1;
            select($rin, undef, undef, 0.5);
            while (my $note = $l->pg_notifies) { push @got, $note->[2]; }
        }
        eqv(join('|', @got), 'hello ü|second', 'notifications');
        $l->disconnect; $n->disconnect;
    },
    copy => sub {
        my $dbh = connect_db();
        my $data = join('', map { "$_\trow $_ ü\n" } 0 .. 999) . "1000\t\\N\n";
        $dbh->do("copy $S.copy_t (a, b) from stdin");
        $dbh->pg_putcopydata($_) for map { "$_\n" } split /\n/, $data;
        $dbh->pg_putcopyend;
        $dbh->do("copy (select a, b from $S.copy_t order by a) to stdout");
        my ($out, $line) = ('', '');
        $out .= $line while $dbh->pg_getcopydata($line) >= 0;
        eqv($out, $data, 'copy out');
        eqv(val($dbh, 'select 1'), 1, 'session after copy');
        $dbh->disconnect;
    },
    pipeline => sub {
        # DBD::Pg has no pipeline; execute_array runs one named statement many times.
        my $dbh = connect_db();
        my $sth = $dbh->prepare("insert into $S.items (k, v) values (?, ?)");
        my @st;
        $sth->execute_array({ ArrayTupleStatus => \@st }, [map { 900 + $_ } 0 .. 199], [map { "arr $_" } 0 .. 199]);
        eqv(val($dbh, "select count(*) from $S.items where k between 900 and 1099"), 200, 'execute_array rows');
        $dbh->disconnect;
    },
    read_only_tx => sub {
        my $dbh = connect_db(AutoCommit => 0);
        $dbh->do('set transaction read only');
        eqv(val($dbh, "select count(*) from $S.only_here"), 1, 'read');
        expect_state(sub { $dbh->do("insert into $S.items (k, v) values (700, 'ro')") }, '25006', 'insert');
        $dbh->rollback;
        on_primary(val($dbh, "insert into $S.items (k, v) values (701, 'rw') returning inet_server_port()"), 'insert after');
        $dbh->commit;
        $dbh->disconnect;
    },
);

my %only = map { $_ => 1 } @ARGV;
my $failed = 0;
while (my ($name, $code) = splice @cases, 0, 2) {
    next if %only && !$only{$name};
    my $t0 = time;
    my $ok = eval {
        # Unsafe signal: interrupts a call blocked in libpq, so a hung case fails alone.
        POSIX::sigaction(POSIX::SIGALRM, POSIX::SigAction->new(sub { die "TIMEOUT\n" }))
            or die "sigaction: $!";
        alarm $TIMEOUT;
        $code->();
        alarm 0;
        1;
    };
    alarm 0;
    if ($ok) {
        printf "ok %s (%d ms)\n", $name, (time - $t0) * 1000;
    } else {
        my $e = $@ // 'unknown error';
        $e = "no answer within ${TIMEOUT}s (hung)" if $e eq "TIMEOUT\n";
        $e =~ s/^CHECK: //;
        $e =~ s/\s+/ /g;
        $failed++;
        print "FAIL $name: $e\n";
    }
}
exit($failed ? 1 : 0);
