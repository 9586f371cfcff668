#!/bin/sh
# PID 1 of the virtual machines `cargo xtask vm-test` boots (xtask/src/vm/).
# Mounts what Sonde needs, then for each profile in /vm/params runs
# `sonde check` and the integration-test binaries the profile names (with
# its settings forced), and reports on the serial console. The tests do the
# measuring and judging; every report line starts with "SONDE-VM: " and is
# parsed by xtask/src/vm/results.rs:
#
#   SONDE-VM: kernel RELEASE
#   SONDE-VM: out STEP LINE        (a line of a command's stdout)
#   SONDE-VM: err STEP LINE        (a line of its stderr)
#   SONDE-VM: exit STEP CODE
#   SONDE-VM: error STEP MESSAGE
#   SONDE-VM: done
#
# STEP is setup, check:PROFILE or test:PROFILE:BINARY (whose out lines are
# libtest's report). Every test binary runs under a timeout, and the script
# never returns (PID 1 exiting would panic the kernel): it powers off.

/bin/busybox --install -s /bin
export PATH=/bin:/vm/bin NO_COLOR=1
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
# Where every node has it: tests run commands in cgroups of their own.
mount -t cgroup2 cgroup2 /sys/fs/cgroup

. /vm/params

say() { echo "SONDE-VM: $*"; }

# relay KIND STEP FILE: every line of FILE as "KIND STEP LINE".
relay() {
    while IFS= read -r line || [ -n "$line" ]; do
        echo "SONDE-VM: $1 $2 $line"
    done < "$3"
}

# run_tests PROFILE: the profile's integration-test binaries (tests/tests/,
# built for musl), one after the other, every agent they start given the
# profile's settings (SONDE_TEST_CONFIG); the tests /vm/skip names are left
# out. Captured output is shown for passing tests too (their `measured:`
# lines).
run_tests() {
    tests=$(cat "/vm/profiles/$1.tests")
    [ -n "$tests" ] || return 0
    force=$(cat "/vm/profiles/$1.force")
    for t in $tests; do
        step=test:$1:$t
        # BINARY runs all its tests, BINARY::TEST that one.
        filter=
        case $t in *::*) filter="${t#*::} --exact" ;; esac
        # iproute2's ip and tc before busybox's (the tests make veth pairs
        # and namespaces).
        # shellcheck disable=SC2046,SC2086 # --skip NAME pairs; NAME --exact
        PATH=/vm/bin:/bin SONDE_TEST_CONFIG=$force SONDE_TEST_TIMEOUT_SCALE=$TIMEOUT_SCALE CI=1 \
            SONDE_BIN=/vm/bin/sonde SONDE_WORKLOAD_BIN=/vm/bin/sonde-workload \
            timeout -s KILL "$TEST_TIMEOUT_S" "/vm/tests/${t%%::*}" $filter --test-threads=1 \
            --show-output $(cat /vm/skip) >/tmp/test.out 2>&1
        rc=$?
        relay out "$step" /tmp/test.out
        say "exit $step $rc"
    done
}

check_profile() {
    step=check:$1
    sonde check --config "/vm/profiles/$1.toml" >/tmp/check.out 2>/tmp/check.err
    rc=$?
    relay out "$step" /tmp/check.out
    relay err "$step" /tmp/check.err
    say "exit $step $rc"
    return "$rc"
}

say "kernel $(uname -r)"
step=setup
for m in /vm/modules/*.ko; do
    [ -e "$m" ] || continue
    insmod "$m" 2>/tmp/insmod.err || say "error setup insmod ${m##*/}: $(cat /tmp/insmod.err)"
done
ip link set lo up || say "error setup ip link set lo up failed"

for p in $PROFILES; do
    # A profile whose check fails is not run: the agent would refuse too.
    if check_profile "$p"; then
        run_tests "$p"
    fi
done
say done
sync
poweroff -f
# Not reached unless poweroff failed: ask the kernel directly.
echo o >/proc/sysrq-trigger
sleep 60
