/* SPDX-License-Identifier: MIT */
/* Unit tests for the routing decision. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "classify.h"
#include "router.h"

/* Node 0 primary, nodes 1 and 2 replicas. */
static struct router_node nodes[3];

static void reset_nodes(void)
{
    nodes[0] = (struct router_node){.is_primary = true, .eligible = false, .weight = 1};
    nodes[1] = (struct router_node){.eligible = true, .weight = 1, .replay_lsn = 100};
    nodes[2] = (struct router_node){.eligible = true, .weight = 1, .replay_lsn = 200};
}

static struct route route(struct router *r, const struct router_session *s, unsigned flags,
                          enum fallback fb)
{
    struct router_input in = {
        .flags = flags, .nodes = nodes, .nnodes = 3, .primary = 0, .fallback = fb};
    return router_route(r, s, &in);
}

static const struct router_session fresh = {
    .tx_node = -1, .consistency = CONSISTENCY_SESSION, .preferred = -1};

static void test_router_route_read_round_robin(void **state)
{
    (void)state;
    reset_nodes();
    struct router r;
    router_init(&r);
    int seen[3] = {0};
    for (int i = 0; i < 10; i++) {
        struct route rt = route(&r, &fresh, 0, FALLBACK_PRIMARY);
        assert_int_equal(rt.reason, ROUTE_READ);
        seen[rt.node]++;
    }
    assert_int_equal(seen[0], 0);
    assert_int_equal(seen[1], 5);
    assert_int_equal(seen[2], 5);
}

static void test_router_head_start_rotates_from_there(void **state)
{
    (void)state;
    reset_nodes();
    struct router a, b;
    router_init(&a);
    router_init(&b);
    router_head_start(&b, 2);
    int want_a[] = {1, 2, 1, 2, 1, 2}, want_b[] = {2, 1, 2, 1, 2, 1};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(route(&a, &fresh, 0, FALLBACK_PRIMARY).node, want_a[i]);
        assert_int_equal(route(&b, &fresh, 0, FALLBACK_PRIMARY).node, want_b[i]);
    }
    /* A head start on a replica that does not qualify changes nothing for the others. */
    nodes[2].eligible = false;
    for (int i = 0; i < 3; i++)
        assert_int_equal(route(&b, &fresh, 0, FALLBACK_PRIMARY).node, 1);
    router_head_start(&b, -1);      /* out of range: ignored */
    router_head_start(&b, 1 << 20); /* likewise */
}

static void test_router_route_weights(void **state)
{
    (void)state;
    reset_nodes();
    nodes[1].weight = 3;
    struct router r;
    router_init(&r);
    int seen[3] = {0};
    for (int i = 0; i < 8; i++)
        seen[route(&r, &fresh, 0, FALLBACK_PRIMARY).node]++;
    assert_int_equal(seen[1], 6);
    assert_int_equal(seen[2], 2);
    /* weight 0 never gets reads */
    nodes[2].weight = 0;
    for (int i = 0; i < 5; i++)
        assert_int_equal(route(&r, &fresh, 0, FALLBACK_PRIMARY).node, 1);
}

static void test_router_route_writes_go_to_primary(void **state)
{
    (void)state;
    reset_nodes();
    struct router r;
    router_init(&r);
    struct {
        unsigned flags;
        enum route_reason reason;
    } cases[] = {
        {CL_WRITE, ROUTE_WRITE},          {CL_WRITE | CL_WRITE_FUNCTION, ROUTE_WRITE_FUNCTION},
        {CL_FORCE_PRIMARY, ROUTE_FORCED}, {CL_BEGIN, ROUTE_BEGIN},
        {CL_SET_SESSION, ROUTE_WRITE},    {CL_PIN | CL_WRITE, ROUTE_WRITE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct route rt = route(&r, &fresh, cases[i].flags, FALLBACK_PRIMARY);
        assert_int_equal(rt.node, 0);
        assert_int_equal(rt.reason, cases[i].reason);
    }
}

static void test_router_route_transaction_sticks(void **state)
{
    (void)state;
    reset_nodes();
    struct router r;
    router_init(&r);
    struct router_session s = fresh;
    s.tx_node = 2;
    struct route rt = route(&r, &s, CL_WRITE, FALLBACK_PRIMARY);
    assert_int_equal(rt.node, 2);
    assert_int_equal(rt.reason, ROUTE_TRANSACTION);
    /* BEGIN READ ONLY is a read */
    rt = route(&r, &fresh, CL_BEGIN_READ_ONLY, FALLBACK_PRIMARY);
    assert_int_not_equal(rt.node, 0);
}

static void test_router_route_session_state(void **state)
{
    (void)state;
    reset_nodes();
    struct router r;
    router_init(&r);
    struct router_session s = fresh;
    s.pinned = true;
    assert_int_equal(route(&r, &s, 0, FALLBACK_PRIMARY).reason, ROUTE_PINNED);
    s = fresh;
    s.consistency = CONSISTENCY_STRONG;
    assert_int_equal(route(&r, &s, 0, FALLBACK_PRIMARY).reason, ROUTE_STRONG);
    s = fresh;
    s.write_unbounded = true;
    assert_int_equal(route(&r, &s, 0, FALLBACK_PRIMARY).reason, ROUTE_READ_YOUR_WRITES);
}

static void test_router_route_min_lsn(void **state)
{
    (void)state;
    reset_nodes();
    struct router r;
    router_init(&r);
    struct router_session s = fresh;
    s.min_lsn = 150; /* only node 2 has replayed this far */
    for (int i = 0; i < 4; i++)
        assert_int_equal(route(&r, &s, 0, FALLBACK_PRIMARY).node, 2);
    s.min_lsn = 300; /* nobody has: the primary */
    struct route rt = route(&r, &s, 0, FALLBACK_PRIMARY);
    assert_int_equal(rt.node, 0);
    assert_int_equal(rt.reason, ROUTE_READ_YOUR_WRITES);
}

static void test_router_route_fallback(void **state)
{
    (void)state;
    reset_nodes();
    nodes[1].eligible = false;
    nodes[2].eligible = false;
    struct router r;
    router_init(&r);
    struct route rt = route(&r, &fresh, 0, FALLBACK_PRIMARY);
    assert_int_equal(rt.node, 0);
    assert_int_equal(rt.reason, ROUTE_FALLBACK);
    rt = route(&r, &fresh, 0, FALLBACK_ERROR);
    assert_int_equal(rt.node, -1);
    assert_int_equal(rt.reason, ROUTE_NO_NODE);
    /* writes do not care */
    assert_int_equal(route(&r, &fresh, CL_WRITE, FALLBACK_ERROR).node, 0);
}

static void test_router_route_keeps_preferred_replica(void **state)
{
    (void)state;
    reset_nodes();
    struct router r;
    router_init(&r);
    struct router_session s = fresh;
    s.preferred = 1;
    for (int i = 0; i < 5; i++)
        assert_int_equal(route(&r, &s, 0, FALLBACK_PRIMARY).node, 1);
    /* the round robin did not move: a fresh session starts where it was */
    assert_int_equal(route(&r, &fresh, 0, FALLBACK_PRIMARY).node, 1);
    /* not eligible, or behind the session's LSN: another replica */
    nodes[1].eligible = false;
    assert_int_equal(route(&r, &s, 0, FALLBACK_PRIMARY).node, 2);
    nodes[1].eligible = true;
    s.min_lsn = 150;
    assert_int_equal(route(&r, &s, 0, FALLBACK_PRIMARY).node, 2);
    /* a preferred primary index is ignored */
    s = fresh;
    s.preferred = 0;
    assert_int_not_equal(route(&r, &s, 0, FALLBACK_PRIMARY).node, 0);
}

static void test_router_reason_name_stable(void **state)
{
    (void)state;
    assert_string_equal(router_reason_name(ROUTE_READ), "read");
    assert_string_equal(router_reason_name(ROUTE_READ_YOUR_WRITES), "read-your-writes");
    assert_string_equal(router_reason_name(ROUTE_REASON_COUNT), "unknown");
    for (int i = 0; i < ROUTE_REASON_COUNT; i++)
        assert_non_null(router_reason_name((enum route_reason)i));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_route_read_round_robin),
        cmocka_unit_test(test_router_route_weights),
        cmocka_unit_test(test_router_head_start_rotates_from_there),
        cmocka_unit_test(test_router_route_writes_go_to_primary),
        cmocka_unit_test(test_router_route_transaction_sticks),
        cmocka_unit_test(test_router_route_session_state),
        cmocka_unit_test(test_router_route_min_lsn),
        cmocka_unit_test(test_router_route_fallback),
        cmocka_unit_test(test_router_route_keeps_preferred_replica),
        cmocka_unit_test(test_router_reason_name_stable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
