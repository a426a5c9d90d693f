/* SPDX-License-Identifier: MIT */
/* Command line: run the proxy, check a configuration, print the version or help. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "proxy_main.h"
#include "status.h"
#include "version.h"

static void usage(FILE *f)
{
    fprintf(f,
            "pgsteer %s: a read/write-splitting PostgreSQL proxy\n\n"
            "Usage:\n"
            "  pgsteer -c FILE            run in the foreground, logging to stderr\n"
            "  pgsteer --check -c FILE    validate FILE; print every problem as\n"
            "                             FILE:LINE:COL: message and exit 1, or exit 0\n"
            "  pgsteer status [-c FILE | --admin HOST:PORT] [--json]\n"
            "                             print a running pgsteer's nodes, state, lag,\n"
            "                             reads and writes (see pgsteer status --help)\n"
            "  pgsteer --version          print the version\n"
            "  pgsteer --help             print this help\n",
            PGSTEER_VERSION);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    if (argc > 1 && strcmp(argv[1], "status") == 0)
        return status_main(argc - 1, argv + 1);
    const char *path = NULL;
    int check = 0, ch;
    while ((ch = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = 1;
            break;
        case 'V':
            printf("pgsteer %s\n", PGSTEER_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || path == NULL) {
        usage(stderr);
        return 2;
    }
    char *errors = NULL;
    struct config *cfg = config_load(path, &errors);
    if (cfg == NULL) {
        fputs(errors ? errors : "invalid configuration\n", stderr);
        free(errors);
        return 1;
    }
    if (check) {
        printf("%s: configuration is valid\n", path);
        config_free(cfg);
        return 0;
    }
    int level = log_parse_level(cfg->log_level ? cfg->log_level : "info");
    log_set_level(level < 0 ? LOG_INFO : (enum log_level)level);
    log_set_json(cfg->log_json);
    signal(SIGPIPE, SIG_IGN);
    int rc = proxy_run(cfg);
    config_free(cfg);
    return rc;
}
