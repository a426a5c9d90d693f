# SPDX-License-Identifier: MIT
"""The monitor notices role changes: a replica that was promoted takes no more reads (it is no
longer a replica of this primary), and a primary that goes away and comes back is logged. Runs
on its own small cluster, since promotion cannot be undone."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, Pgsteer  # noqa: E402
from wire import Conn, Query  # noqa: E402


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def read_ports(px, n=6):
    c = Conn(px.port)
    try:
        ports = set()
        for _ in range(n):
            c.send(Query("select inet_server_port()"))
            ports.add(int([m for m in c.until_ready() if m[0] == "D"][0][1][0]))
        return ports
    finally:
        c.close()


class FailoverTest(unittest.TestCase):
    def test_promoted_replica_gets_no_reads_and_primary_loss_is_logged(self):
        with Cluster(replicas=2) as cl, \
                Pgsteer(cl, extra_yaml="log_level: info\nread_balance: statement\n",
                        monitor="{interval_ms: 50}") as px:
            wait_for(lambda: read_ports(px) == set(cl.replica_ports), what="both replicas read")
            # Promote replica1: it leaves recovery and must stop taking reads.
            cl._run([cl._bin("pg_ctl"), "promote", "-w", "-D", cl.nodes[1].datadir])
            wait_for(lambda: "replica1 promoted" in px.log_text(), what="promotion logged")
            time.sleep(0.2)
            self.assertEqual(read_ports(px, 10), {cl.replica_ports[1]})
            # The primary goes away and comes back: one line each.
            cl.stop_node(0)
            wait_for(lambda: "primary down" in px.log_text(), what="primary down logged")
            cl.start_node(0)
            wait_for(lambda: "primary back" in px.log_text(), timeout=20, what="primary back")
            self.assertEqual(px.log_text().count("primary down"), 1)
            self.assertTrue(px.alive())


    def test_sessions_keeping_a_replica_spread_back_when_it_returns(self):
        # read_balance: session: a session moves off an evicted replica, and when the replica
        # is back, sessions pick again, so the load spreads back over it.
        with Cluster(replicas=2) as cl, \
                Pgsteer(cl, extra_yaml="read_balance: session\n",
                        monitor="{interval_ms: 50, recover_checks: 2}") as px:
            r1, r2 = cl.replica_ports
            conns = [Conn(px.port) for _ in range(4)]

            def ports(c, n=3):
                seen = set()
                for _ in range(n):
                    c.send(Query("select inet_server_port()"))
                    seen.add(int([m for m in c.until_ready() if m[0] == "D"][0][1][0]))
                return seen
            try:
                time.sleep(0.3)  # a few monitor rounds: both replicas eligible
                before = [ports(c) for c in conns]
                for p in before:
                    self.assertEqual(len(p), 1)  # each session keeps one replica
                self.assertEqual(set().union(*before), {r1, r2})
                cl.stop_node(2)
                wait_for(lambda: "replica2 evicted" in px.log_text(), what="replica2 evicted")
                during = [ports(c) for c in conns]
                self.assertEqual(set().union(*during), {r1})
                cl.start_node(2)
                wait_for(lambda: "replica2 back" in px.log_text(), timeout=20,
                         what="replica2 back")
                time.sleep(0.2)
                after = [ports(c) for c in conns]
                for p in after:
                    self.assertEqual(len(p), 1)
                self.assertEqual(set().union(*after), {r1, r2})
            finally:
                for c in conns:
                    c.close()


if __name__ == "__main__":
    unittest.main()
