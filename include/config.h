/* SPDX-License-Identifier: MIT */
/* Configuration: the YAML file's schema, its parser (libyaml) and validation. A config is
 * immutable once loaded; a reload builds a new one. Every problem is reported as
 * FILE:LINE:COL: message, and all problems are reported, not only the first. */
#ifndef PGSTEER_CONFIG_H
#define PGSTEER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_NODES           32
#define CONFIG_MAX_WORKERS         64
#define CONFIG_MAX_BUSY_POLL_US    10000 /* 10 ms: longer is a spinning thread, not a poll */
#define CONFIG_MAX_KEEPALIVE_S     32767 /* Linux's bound for TCP_KEEPIDLE and TCP_KEEPINTVL */
#define CONFIG_MAX_KEEPALIVE_COUNT 127   /* and for TCP_KEEPCNT */

enum node_role { NODE_PRIMARY = 0, NODE_REPLICA = 1 };
enum auth_method { AUTH_METHOD_SCRAM = 0, AUTH_METHOD_MD5 = 1, AUTH_METHOD_TRUST = 2 };
enum consistency { CONSISTENCY_SESSION = 0, CONSISTENCY_EVENTUAL = 1, CONSISTENCY_STRONG = 2 };
enum fallback { FALLBACK_PRIMARY = 0, FALLBACK_ERROR = 1 };
/* How reads spread over replicas: each session keeps the replica it was given (while that one
 * stays eligible), or every statement takes the next replica. */
enum read_balance { READ_BALANCE_SESSION = 0, READ_BALANCE_STATEMENT = 1 };
enum cpu_affinity { CPU_AFFINITY_OFF = 0, CPU_AFFINITY_AUTO = 1 };
/* TLS on pgsteer's connections to the nodes; the values are libpq's sslmode words. */
enum tls_mode {
    TLS_MODE_DISABLE = 0,
    TLS_MODE_PREFER = 1,
    TLS_MODE_REQUIRE = 2,
    TLS_MODE_VERIFY_CA = 3,
    TLS_MODE_VERIFY_FULL = 4
};
/* TLS on the clients' connections to pgsteer: allow serves TLS to a client that asks for it,
 * require refuses TCP clients that do not, verify-ca also asks each client for a certificate
 * signed by a CA in ca_file, verify-full also wants the certificate's CN to be the user name
 * the client logs in as. Unix-socket clients are never asked for TLS. */
enum client_tls_mode {
    CLIENT_TLS_DISABLE = 0,
    CLIENT_TLS_ALLOW = 1,
    CLIENT_TLS_REQUIRE = 2,
    CLIENT_TLS_VERIFY_CA = 3,
    CLIENT_TLS_VERIFY_FULL = 4
};

struct config_addr {
    char host[256]; /* numeric IPv4/IPv6 address or host name */
    int port;
};

struct config_user {
    char *name;
    char *password;
};

struct config_node {
    char *name;
    char *host;
    int port;
    enum node_role role;
    int weight;         /* >= 0, default 1; 0 = never read from */
    char *monitor_host; /* defaults to host */
    int monitor_port;   /* defaults to port */
    bool pooled;        /* `pooler: transaction`: reached through a transaction-pooling pooler,
                           so named prepared statements do not outlive a transaction there */
};

struct config_monitor {
    int interval_ms;        /* default 100, 10..60000 */
    int64_t max_lag_bytes;  /* default 16 MiB */
    int max_lag_ms;         /* default 1000 */
    int connect_timeout_ms; /* default 1000 */
    int recover_checks;     /* default 3 */
    char *user;             /* default: first user */
    char *password;         /* default: that user's password */
    char *dbname;           /* default "postgres" */
};

/* auth_query: the secrets of users named in neither `users` nor auth_file, looked up on the
 * primary by the monitor thread (monitor_lookup) at their login. */
struct config_auth_query {
    bool enabled;   /* the section is present */
    char *query;    /* one parameter ($1, the user's name); answers (name, secret) */
    char *user;     /* who runs it; default: monitor.user */
    char *password; /* that user's password (default: monitor.password for the monitor's user,
                       else the user's password in users or auth_file) */
    char *dbname;   /* default: monitor.dbname */
    int cache_ms;   /* a secret found is used for this long without asking again; default
                       60000; 0: asked at every login */
};

/* server_tls. Each file given was readable when the config was loaded. */
struct config_tls {
    enum tls_mode mode; /* default disable */
    char *ca_file;      /* NULL when unset; set whenever mode is verify-ca or verify-full */
    char *cert_file;    /* NULL when unset; set exactly when key_file is */
    char *key_file;     /* NULL when unset */
    char *crl_file;     /* CRLs the nodes' chains are checked against when verifying; NULL: none */
    int min_protocol;   /* lowest TLS version: 12 (default, TLS 1.2) or 13 */
    char *ciphers;      /* OpenSSL cipher list for TLS 1.2 (checked at load); NULL: OpenSSL's */
};

/* client_tls, admin_tls. Each file given was readable when the config was loaded. */
struct config_client_tls {
    enum client_tls_mode mode; /* default disable */
    char *cert_file;           /* pgsteer's certificate chain; set whenever mode is not disable */
    char *key_file;            /* its private key; set exactly when cert_file is */
    char *ca_file;  /* CAs of client certificates; set whenever mode is verify-ca or verify-full */
    char *crl_file; /* CRLs the clients' chains are checked against when verifying; NULL: none */
    int min_protocol; /* lowest TLS version: 12 (default, TLS 1.2) or 13 */
    char *ciphers;    /* OpenSSL cipher list for TLS 1.2 (checked at load); NULL: OpenSSL's */
};

struct config {
    char *path;
    struct config_addr listen; /* default 127.0.0.1:6432 */
    char *unix_socket_dir;     /* also listen on DIR/.s.PGSQL.<listen port>; NULL (default): no */
    struct config_addr admin_listen; /* default 127.0.0.1:9930 */
    bool has_admin_listen;
    enum auth_method auth_method; /* default scram-sha-256 */
    struct config_user *users;
    size_t nusers;
    struct config_user *admin_users;
    size_t nadmin_users;
    char *admin_token; /* NULL when unset */
    struct config_node *nodes;
    size_t nnodes;
    int primary;            /* index into nodes of the one primary */
    char **write_functions; /* lower-case function names */
    size_t nwrite_functions;
    struct config_monitor monitor;
    /* TLS to the nodes, for backends and the monitor's connections alike. Reloadable: a reload
     * applies to connections opened after it */
    struct config_tls server_tls;
    /* TLS from the clients over TCP. Reloadable: a reload applies to connections accepted
     * after it */
    struct config_client_tls client_tls;
    struct config_client_tls admin_tls; /* the admin port's: disable to verify-ca */
    enum consistency consistency;       /* default session */
    enum fallback fallback;             /* default primary */
    enum read_balance read_balance;     /* default session */
    /* Reads outside transactions, from sessions with no state of their own, share one
     * connection per replica and worker, pipelined (backend.c, "multiplexed reads") */
    bool multiplex_reads; /* default false ("off") */
    /* A shared backend that owes answers and has sent none for this long is stuck behind a
     * long read: sessions' reads use their own backends meanwhile. Default 10; 0: never */
    int multiplex_stall_ms;
    /* Unnamed statements of the extended protocol are kept prepared on each backend under a
     * name of pgsteer's, so that the node parses and plans a repeated text once (backend.c).
     * Default true ("on") */
    bool cache_unnamed_statements;
    bool prepare_simple_queries;
    /* A simple-protocol BEGIN outside a transaction block is answered at once and sent ahead
     * of the transaction's first statement (client.c). Default true ("on") */
    bool defer_begin;
    int max_client_conn;            /* default 10000 */
    int workers;                    /* event-loop threads; 0 (default): per CPU, cgroup-bounded */
    enum cpu_affinity cpu_affinity; /* default off; auto pins worker i to the i-th CPU */
    int busy_poll_us;               /* poll this long after input before sleeping; default 0 */
    int shutdown_timeout_ms;        /* default 30000 */
    /* a client not logged in this long after it connected is closed; default 60000; 0: never */
    int client_login_timeout_ms;
    int connect_timeout_ms; /* backend connect timeout, default 5000 */
    /* A client's backend that is idle when the client leaves is reset and kept for the next
     * client with the same user, database and startup parameters (backend.c, "the pool") */
    int backend_idle_max;        /* kept per node in the whole process; default 20; 0: none */
    int backend_idle_timeout_ms; /* closed after this long unused; default 60000 */
    int backend_lifetime_ms;     /* not kept once this old; default 3600000; 0: no limit */
    /* TCP keepalive on client and node sockets (proxy_tcp_tune): a peer that vanished without
     * closing (host gone, network cut) is dropped after idle + interval * count seconds. */
    bool tcp_keepalive;           /* default true ("on") */
    int tcp_keepalive_idle_s;     /* idle time before the first probe; default 60 */
    int tcp_keepalive_interval_s; /* between probes; default 10 */
    int tcp_keepalive_count;      /* unanswered probes that drop the connection; default 6 */
    char *auth_file;              /* more users, from a userlist file; NULL: none */
    struct config_auth_query auth_query;
    char *log_level; /* "debug" | "info" | "warning" | "error", default info */
    bool log_json;   /* log_format: json (default text) */
};

/* Load and validate `path`. On success returns a new config (free with config_free) and
 * leaves *errors NULL. On failure returns NULL and sets *errors to a malloc'd string with one
 * "FILE:LINE:COL: message\n" line per problem (the caller frees it). */
struct config *config_load(const char *path, char **errors);

/* Same, from a string in memory; `name` stands for FILE in messages. */
struct config *config_parse(const char *name, const char *text, size_t len, char **errors);

void config_free(struct config *c);

/* The libpq sslmode word for a mode ("disable", "prefer", ...); "?" for a value outside the
 * enum. */
const char *config_tls_mode_name(enum tls_mode m);

/* The client_tls mode word ("disable", "allow", ...); "?" for a value outside the enum. */
const char *config_client_tls_mode_name(enum client_tls_mode m);

/* Find a user by name; NULL when absent. */
const struct config_user *config_find_user(const struct config *c, const char *name);
const struct config_user *config_find_admin_user(const struct config *c, const char *name);

/* Write the path of the PostgreSQL-style socket for `port` in directory `dir`
 * ("DIR/.s.PGSQL.PORT", as libpq and PostgreSQL name it) into out[cap]. Returns 0, or -1 when
 * it does not fit. */
int config_socket_path(const char *dir, int port, char *out, size_t cap);

/* Parse "host:port" / "[v6]:port" into a; returns 0 or -1. */
int config_parse_addr(const char *s, struct config_addr *a);

#endif
