/* SPDX-License-Identifier: MIT */
/* Routing decisions. The order of the checks below is the policy: a transaction's node wins,
 * then everything that needs the primary, then reads by consistency and replica health. */
#include "router.h"

#include "classify.h"

#include <string.h>

static const char *const reason_names[ROUTE_REASON_COUNT] = {
    [ROUTE_READ] = "read",
    [ROUTE_WRITE] = "write",
    [ROUTE_TRANSACTION] = "transaction",
    [ROUTE_BEGIN] = "begin",
    [ROUTE_FORCED] = "forced",
    [ROUTE_WRITE_FUNCTION] = "write-function",
    [ROUTE_PINNED] = "pinned",
    [ROUTE_READ_YOUR_WRITES] = "read-your-writes",
    [ROUTE_FALLBACK] = "fallback",
    [ROUTE_STRONG] = "strong",
    [ROUTE_NO_NODE] = "no-eligible-replica",
};

void router_init(struct router *r)
{
    memset(r, 0, sizeof(*r));
}

void router_head_start(struct router *r, int node)
{
    if (node >= 0 && node < CONFIG_MAX_NODES)
        r->current[node] += 1;
}

const char *router_reason_name(enum route_reason reason)
{
    if ((unsigned)reason >= ROUTE_REASON_COUNT)
        return "unknown";
    return reason_names[reason];
}

/* Smooth weighted round robin over the replicas that qualify: each pick adds every candidate's
 * weight to its counter, takes the largest, and subtracts the total from the winner. It spreads
 * picks evenly (weights 2:1 give A B A, not A A B). Returns -1 when none qualifies. */
static int pick_replica(struct router *r, const struct router_input *in, lsn_t min_lsn)
{
    int best = -1;
    int total = 0;
    for (size_t i = 0; i < in->nnodes; i++) {
        const struct router_node *n = &in->nodes[i];
        if (n->is_primary || !n->eligible || n->weight <= 0)
            continue;
        if (min_lsn != LSN_INVALID && n->replay_lsn < min_lsn)
            continue;
        r->current[i] += n->weight;
        total += n->weight;
        if (best < 0 || r->current[i] > r->current[best])
            best = (int)i;
    }
    if (best >= 0)
        r->current[best] -= total;
    return best;
}

static bool any_eligible(const struct router_input *in)
{
    for (size_t i = 0; i < in->nnodes; i++) {
        if (!in->nodes[i].is_primary && in->nodes[i].eligible && in->nodes[i].weight > 0)
            return true;
    }
    return false;
}

struct route router_route(struct router *r, const struct router_session *s,
                          const struct router_input *in)
{
    struct route rt = {in->primary, ROUTE_WRITE};
    unsigned f = in->flags;

    if (s->tx_node >= 0) {
        rt.node = s->tx_node;
        rt.reason = ROUTE_TRANSACTION;
        return rt;
    }
    if (f & CL_FORCE_PRIMARY) {
        rt.reason = ROUTE_FORCED;
        return rt;
    }
    if (f & CL_WRITE_FUNCTION) {
        rt.reason = ROUTE_WRITE_FUNCTION;
        return rt;
    }
    if (f & CL_BEGIN) {
        rt.reason = ROUTE_BEGIN;
        return rt;
    }
    if (f & (CL_WRITE | CL_PIN | CL_SET_SESSION)) {
        /* Session changes go to the primary first and are replayed on the replicas before
         * their next statement; the primary is the one node every session may need. */
        rt.reason = ROUTE_WRITE;
        return rt;
    }
    if (s->pinned) {
        rt.reason = ROUTE_PINNED;
        return rt;
    }
    if (s->consistency == CONSISTENCY_STRONG) {
        rt.reason = ROUTE_STRONG;
        return rt;
    }
    /* A read (including BEGIN READ ONLY, which may run on a replica). */
    lsn_t need = s->min_lsn;
    if (s->consistency == CONSISTENCY_SESSION && s->write_unbounded) {
        rt.reason = ROUTE_READ_YOUR_WRITES;
        return rt;
    }
    if (s->preferred >= 0 && (size_t)s->preferred < in->nnodes) {
        const struct router_node *n = &in->nodes[s->preferred];
        if (!n->is_primary && n->eligible && n->weight > 0 &&
            (need == LSN_INVALID || n->replay_lsn >= need)) {
            rt.node = s->preferred;
            rt.reason = ROUTE_READ;
            return rt;
        }
    }
    int pick = pick_replica(r, in, need);
    if (pick >= 0) {
        rt.node = pick;
        rt.reason = ROUTE_READ;
        return rt;
    }
    if (need != LSN_INVALID && any_eligible(in)) {
        /* Some replica is eligible but none has replayed far enough: the primary has it. */
        rt.reason = ROUTE_READ_YOUR_WRITES;
        return rt;
    }
    if (in->fallback == FALLBACK_ERROR) {
        rt.node = -1;
        rt.reason = ROUTE_NO_NODE;
        return rt;
    }
    rt.reason = ROUTE_FALLBACK;
    return rt;
}
