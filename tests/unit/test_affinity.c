/* SPDX-License-Identifier: MIT */
/* Unit tests for the pure parts of the cgroup CPU limit: cpu.max and cfs texts, and finding the
 * process's cgroup directory from /proc/self/mountinfo and /proc/self/cgroup. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "affinity.h"

static void test_cgroup_cpu_max(void **state)
{
    (void)state;
    assert_true(cgroup_cpu_max("150000 100000\n") == 1.5);
    assert_true(cgroup_cpu_max("50000 100000") == 0.5);
    assert_true(cgroup_cpu_max("200000 100000\n") == 2.0);
    assert_true(cgroup_cpu_max("max 100000\n") == 0);
    assert_true(cgroup_cpu_max("") == 0);
    assert_true(cgroup_cpu_max("100000") == 0);
    assert_true(cgroup_cpu_max("100000 0") == 0);
    assert_true(cgroup_cpu_max("12x 100000") == 0);
    assert_true(cgroup_cpu_max(NULL) == 0);
}

static void test_cgroup_cfs_quota(void **state)
{
    (void)state;
    assert_true(cgroup_cfs_quota("100000\n", "100000\n") == 1.0);
    assert_true(cgroup_cfs_quota("250000\n", "100000\n") == 2.5);
    assert_true(cgroup_cfs_quota("-1\n", "100000\n") == 0);
    assert_true(cgroup_cfs_quota("100000\n", "0\n") == 0);
    assert_true(cgroup_cfs_quota("x", "100000") == 0);
    assert_true(cgroup_cfs_quota(NULL, "100000") == 0);
    assert_true(cgroup_cfs_quota("100000", NULL) == 0);
}

/* A v1 machine with the cpu controller alone and with cpu,cpuacct, and a v2 one. */
static const char MOUNTINFO_V1[] =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup "
    "rw,cpu,cpuacct\n"
    "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
static const char CGROUP_V1[] = "4:memory:/app\n"
                                "3:cpuset:/\n"
                                "2:cpu,cpuacct:/kubepods/pod1/ctr\n"
                                "0::/\n";

static void test_cgroup_cpu_dir_v1(void **state)
{
    (void)state;
    char dir[256];
    size_t ml = 0;
    assert_int_equal(cgroup_cpu_dir(MOUNTINFO_V1, CGROUP_V1, 0, dir, sizeof(dir), &ml), 0);
    assert_string_equal(dir, "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/ctr");
    assert_int_equal(ml, strlen("/sys/fs/cgroup/cpu,cpuacct"));
    /* cpuset alone is not cpu */
    assert_int_equal(cgroup_cpu_dir(MOUNTINFO_V1, "3:cpuset:/x\n", 0, dir, sizeof(dir), &ml), -1);
    /* v2: the unified mount, at its root */
    assert_int_equal(cgroup_cpu_dir(MOUNTINFO_V1, CGROUP_V1, 1, dir, sizeof(dir), &ml), 0);
    assert_string_equal(dir, "/sys/fs/cgroup/unified");
    /* too small an output */
    assert_int_equal(cgroup_cpu_dir(MOUNTINFO_V1, CGROUP_V1, 0, dir, 10, &ml), -1);
}

static void test_cgroup_cpu_dir_v2(void **state)
{
    (void)state;
    char dir[256];
    size_t ml = 0;
    const char *mi = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    assert_int_equal(cgroup_cpu_dir(mi, "0::/system.slice/app.service\n", 1, dir, sizeof(dir), &ml),
                     0);
    assert_string_equal(dir, "/sys/fs/cgroup/system.slice/app.service");
    assert_int_equal(ml, strlen("/sys/fs/cgroup"));
    /* In a container the mount's root is the container's cgroup: the part under it counts. */
    const char *ctr = "30 20 0:25 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
    assert_int_equal(cgroup_cpu_dir(ctr, "0::/kubepods/pod1/sub\n", 1, dir, sizeof(dir), &ml), 0);
    assert_string_equal(dir, "/sys/fs/cgroup/sub");
    assert_int_equal(cgroup_cpu_dir(ctr, "0::/\n", 1, dir, sizeof(dir), &ml), 0);
    assert_string_equal(dir, "/sys/fs/cgroup");
    /* No v1 cpu hierarchy there; no v2 line in a v1-only cgroup file. */
    assert_int_equal(cgroup_cpu_dir(mi, "0::/a\n", 0, dir, sizeof(dir), &ml), -1);
    assert_int_equal(cgroup_cpu_dir(mi, "2:cpu:/a\n", 1, dir, sizeof(dir), &ml), -1);
    assert_int_equal(cgroup_cpu_dir("", "", 1, dir, sizeof(dir), &ml), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cgroup_cpu_max),
        cmocka_unit_test(test_cgroup_cfs_quota),
        cmocka_unit_test(test_cgroup_cpu_dir_v1),
        cmocka_unit_test(test_cgroup_cpu_dir_v2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
