/* SPDX-License-Identifier: MIT */
/* Thread names and CPU pinning (see affinity.h). */
#include "affinity.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __linux__
/* Written once by affinity_init before other threads start; read-only afterwards. */
static cpu_set_t allowed;
static int ncpus;
static int cpus[CPU_SETSIZE];

int affinity_init(void)
{
    CPU_ZERO(&allowed);
    ncpus = 0;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return 0;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &allowed))
            cpus[ncpus++] = i;
    return ncpus;
}

int affinity_pin_self(int worker)
{
    if (ncpus == 0 || worker < 0)
        return -1;
    int cpu = cpus[worker % ncpus];
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0)
        return -1;
    return cpu;
}

void affinity_unpin_self(void)
{
    if (ncpus > 0)
        (void)pthread_setaffinity_np(pthread_self(), sizeof(allowed), &allowed);
}

void thread_name_self(const char *name)
{
    char buf[16];
    strncpy(buf, name, sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = '\0';
    (void)pthread_setname_np(pthread_self(), buf);
}
#else
int affinity_init(void)
{
    return 0;
}

int affinity_pin_self(int worker)
{
    (void)worker;
    return -1;
}

void affinity_unpin_self(void)
{
}

void thread_name_self(const char *name)
{
    (void)name;
}
#endif

/* ---- CPU quota of the process's cgroup ---------------------------------------------------- */

double cgroup_cpu_max(const char *text)
{
    char quota[32];
    unsigned long long period = 0;
    if (text == NULL || sscanf(text, "%31s %llu", quota, &period) != 2 || period == 0)
        return 0;
    if (strcmp(quota, "max") == 0)
        return 0;
    char *end;
    unsigned long long q = strtoull(quota, &end, 10);
    if (*end != '\0' || q == 0)
        return 0;
    return (double)q / (double)period;
}

double cgroup_cfs_quota(const char *quota, const char *period)
{
    long long q, p;
    if (quota == NULL || period == NULL || sscanf(quota, "%lld", &q) != 1 ||
        sscanf(period, "%lld", &p) != 1 || q <= 0 || p <= 0)
        return 0;
    return (double)q / (double)p;
}

/* True when the comma-separated list [s, s+n) holds `word`. */
static int list_has(const char *s, size_t n, const char *word)
{
    size_t wl = strlen(word);
    const char *end = s + n;
    while (s < end) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        size_t len = comma ? (size_t)(comma - s) : (size_t)(end - s);
        if (len == wl && memcmp(s, word, wl) == 0)
            return 1;
        s += len + 1;
    }
    return 0;
}

int cgroup_cpu_dir(const char *mountinfo, const char *proc_cgroup, int v2, char *out, size_t outlen,
                   size_t *mount_len)
{
    /* The process's path in the hierarchy: "0::/path" (v2) or "N:cpu,cpuacct:/path" (v1). */
    const char *path = NULL;
    size_t path_len = 0;
    for (const char *line = proc_cgroup; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        const char *c1 = memchr(line, ':', len);
        const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - line)) : NULL;
        if (c2) {
            size_t clen = (size_t)(c2 - c1 - 1);
            int match = v2 ? (c1 == line + 1 && line[0] == '0' && clen == 0)
                           : list_has(c1 + 1, clen, "cpu");
            if (match) {
                path = c2 + 1;
                path_len = len - (size_t)(path - line);
                break;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    if (path == NULL)
        return -1;
    /* Its mount: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER". */
    for (const char *line = mountinfo; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[4096];
        if (len < sizeof(buf)) {
            memcpy(buf, line, len);
            buf[len] = '\0';
            char *f[6] = {0}, *save = NULL, *tok = strtok_r(buf, " ", &save);
            for (int i = 0; i < 6 && tok; i++, tok = strtok_r(NULL, " ", &save))
                f[i] = tok;
            while (tok && strcmp(tok, "-") != 0)
                tok = strtok_r(NULL, " ", &save);
            char *fstype = tok ? strtok_r(NULL, " ", &save) : NULL;
            char *source = fstype ? strtok_r(NULL, " ", &save) : NULL;
            char *super = source ? strtok_r(NULL, " ", &save) : NULL;
            int match = f[4] && fstype &&
                        (v2 ? strcmp(fstype, "cgroup2") == 0
                            : strcmp(fstype, "cgroup") == 0 && super &&
                                  list_has(super, strlen(super), "cpu"));
            if (match) {
                const char *root = f[3], *rest = path;
                size_t rest_len = path_len, root_len = strlen(root);
                if (strcmp(root, "/") != 0) {
                    if (path_len >= root_len && memcmp(path, root, root_len) == 0) {
                        rest += root_len;
                        rest_len -= root_len;
                    } else {
                        rest_len = 0; /* outside the mounted part: the mount point itself */
                    }
                }
                if (rest_len == 1 && rest[0] == '/')
                    rest_len = 0;
                size_t ml = strlen(f[4]);
                if (ml + rest_len + 1 > outlen)
                    return -1;
                memcpy(out, f[4], ml);
                memcpy(out + ml, rest, rest_len);
                out[ml + rest_len] = '\0';
                *mount_len = ml;
                return 0;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return -1;
}

/* Reads the file at `path` into buf, at most size - 1 bytes, NUL-terminated; returns buf, or
 * NULL when it cannot be opened (or buf is NULL). */
static char *read_file(const char *path, char *buf, size_t size)
{
    FILE *f = buf ? fopen(path, "r") : NULL;
    if (f == NULL)
        return NULL;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

double affinity_cpu_quota(void)
{
    enum { MOUNTINFO_MAX = 1 << 20, CGROUP_MAX = 1 << 16 };
    char *mbuf = malloc(MOUNTINFO_MAX), *cbuf = malloc(CGROUP_MAX);
    const char *mountinfo = read_file("/proc/self/mountinfo", mbuf, MOUNTINFO_MAX);
    const char *cgroup = read_file("/proc/self/cgroup", cbuf, CGROUP_MAX);
    double best = 0;
    for (int v2 = 1; v2 >= 0 && mountinfo && cgroup; v2--) {
        char dir[4096], file[4200], a[64], b[64];
        size_t mount_len;
        if (cgroup_cpu_dir(mountinfo, cgroup, v2, dir, sizeof(dir), &mount_len) < 0)
            continue;
        for (;;) {
            double q = 0;
            if (v2) {
                snprintf(file, sizeof(file), "%s/cpu.max", dir);
                q = cgroup_cpu_max(read_file(file, a, sizeof(a)));
            } else {
                snprintf(file, sizeof(file), "%s/cpu.cfs_quota_us", dir);
                char *qt = read_file(file, a, sizeof(a));
                snprintf(file, sizeof(file), "%s/cpu.cfs_period_us", dir);
                q = cgroup_cfs_quota(qt, read_file(file, b, sizeof(b)));
            }
            if (q > 0 && (best == 0 || q < best))
                best = q;
            char *slash = strrchr(dir, '/');
            if (slash == NULL || (size_t)(slash - dir) < mount_len)
                break;
            *slash = '\0';
        }
    }
    free(mbuf);
    free(cbuf);
    return best;
}
