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
                Pgsteer(cl, extra_yaml="log_level: info\n", monitor="{interval_ms: 50}") as px:
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


if __name__ == "__main__":
    unittest.main()
