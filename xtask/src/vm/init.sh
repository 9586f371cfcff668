#!/bin/sh
# PID 1 of the virtual machines `cargo xtask vm-test` boots (xtask/src/vm/).
# Mounts what Sonde needs, then for each profile in /vm/params runs
# `sonde check`, the integration-test binaries the profile names (with its
# settings forced) and, where the profile asks for it, `sonde run` under a
# known workload, and reports on the serial console. Every report line starts with
# "SONDE-VM: " and is parsed by xtask/src/vm/results.rs:
#
#   SONDE-VM: kernel RELEASE
#   SONDE-VM: out STEP LINE        (a line of a command's stdout)
#   SONDE-VM: err STEP LINE        (a line of its stderr, or the agent's log)
#   SONDE-VM: exit STEP CODE
#   SONDE-VM: value STEP KEY BEFORE AFTER
#   SONDE-VM: error STEP MESSAGE
#   SONDE-VM: done
#
# STEP is setup, check:PROFILE, run:PROFILE or test:PROFILE:BINARY (whose
# out lines are libtest's report). The host judges the numbers;
# this script only measures. Everything here is bounded in time, and the
# script never returns (PID 1 exiting would panic the kernel): it powers off.

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

. /vm/params

say() { echo "SONDE-VM: $*"; }

# relay KIND STEP FILE: every line of FILE as "KIND STEP LINE".
relay() {
    while IFS= read -r line || [ -n "$line" ]; do
        echo "SONDE-VM: $1 $2 $line"
    done < "$3"
}

now() { cut -d. -f1 /proc/uptime; }

# excerpt FILE: its last 300 bytes on one line (a report line is one line).
excerpt() { tail -c 300 "$1" 2>/dev/null | tr '\n' ' '; }

# get URL: the body on stdout, bounded in time. (Not `wget -T`: Debian 12's
# static busybox 1.35 segfaults with it.)
get() { timeout 10 wget -q -O - "$1" 2>/dev/null; }

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# metric NAME [LABEL=\"VALUE\"...]: the sum of the series called NAME that
# carry every given label, 0 when there is none.
metric() {
    name=$1
    shift
    get "$URL/metrics" | awk -v name="$name" -v labels="$*" '
        BEGIN { n = split(labels, want, " ") }
        index($0, name "{") == 1 || $1 == name {
            for (i = 1; i <= n; i++) if (index($0, want[i]) == 0) next
            sum += $NF; found = 1
        }
        END { printf "%.0f\n", found ? sum : 0 }'
}

ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f\n", a + b }'; }

# settle TARGET NAME [LABEL...]: waits until the series reaches TARGET (or
# SETTLE_TIMEOUT_S passes), then reads it once more a second later (five
# collector intervals) and prints that. The workload has exited by then, so
# everything it did is in the kernel's maps; the second read picks up what
# the collector had not exported yet. (Waiting for the value to stop moving
# would not work: every scrape is itself a TCP connect, and busybox makes
# the odd getppid call.)
settle() {
    target=$1
    shift
    deadline=$(($(now) + SETTLE_TIMEOUT_S))
    v=$(metric "$@")
    while ! ge "$v" "$target" && [ "$(now)" -lt "$deadline" ]; do
        sleep 0.2
        v=$(metric "$@")
    done
    sleep 1
    metric "$@"
}

# wait_line WORD FILE PID: until a line of FILE starts with WORD (a workload
# saying it got there), while PID lives, for at most 20 s.
wait_line() {
    deadline=$(($(now) + 20))
    while ! grep -q "^$1" "$2" 2>/dev/null; do
        alive "$3" && [ "$(now)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# wait_ready FILE PID: until FILE says "ready" (a listening workload).
wait_ready() { wait_line ready "$1" "$2"; }

# stop PID: SIGTERM, then SIGKILL after STOP_TIMEOUT_S; sets rc to the exit
# code (not a subshell: only this shell can wait for its child).
stop() {
    kill -TERM "$1" 2>/dev/null
    deadline=$(($(now) + STOP_TIMEOUT_S))
    while alive "$1"; do
        if [ "$(now)" -ge "$deadline" ]; then
            say "error $step did not exit within ${STOP_TIMEOUT_S}s of SIGTERM: killed"
            kill -KILL "$1" 2>/dev/null
            break
        fi
        sleep 0.2
    done
    wait "$1"
    rc=$?
}

# listen PORT [WORKLOAD]: a listener on 127.0.0.1:PORT in the background
# (sonde-workload tcp-listen, or WORKLOAD: tcp-sink), its pid in
# $listener; says why and returns 1 if it never became ready.
listen() {
    sonde-workload "${2:-tcp-listen}" "127.0.0.1:$1" 120 >/tmp/listen.out 2>&1 &
    listener=$!
    wait_ready /tmp/listen.out "$listener" && return 0
    say "error $step ${2:-tcp-listen} 127.0.0.1:$1 never became ready: $(excerpt /tmp/listen.out)"
    unlisten
    return 1
}

unlisten() {
    kill "$listener" 2>/dev/null
    wait "$listener"
}

# connects PORT: TCP_M connects to 127.0.0.1:PORT, one after the other; the
# number that failed in $failed.
connects() {
    i=0
    failed=0
    while [ "$i" -lt "$TCP_M" ]; do
        sonde-workload tcp-connect "127.0.0.1:$1" >/dev/null 2>/tmp/workload.err || failed=$((failed + 1))
        i=$((i + 1))
    done
}

# netem ARGS...: loopback's root qdisc becomes netem with these parameters
# (every packet over lo passes it once).
netem() {
    /vm/bin/tc qdisc replace dev lo root netem "$@" 2>/tmp/tc.err && return 0
    say "error $step tc qdisc replace dev lo root netem $*: $(excerpt /tmp/tc.err)"
    return 1
}

netem_off() { /vm/bin/tc qdisc del dev lo root 2>/dev/null; }

count_tcp() {
    port=$((7100 + index))
    listen "$port" || return
    before=$(metric sonde_tcp_connect_duration_seconds_count)
    connects "$port"
    [ "$failed" -eq 0 ] || say "error $step $failed of $TCP_M tcp-connect failed: $(excerpt /tmp/workload.err)"
    after=$(settle "$(add "$before" "$TCP_M")" sonde_tcp_connect_duration_seconds_count)
    unlisten
    say "value $step tcp_connects $before $after"
}

# below NAME: samples of histogram NAME at or under 2^26 ns (67 ms), the
# last log2 bucket a 100 ms round trip cannot fall in.
below() { metric "${1}_bucket" 'le="0.067108864"'; }

# Every packet over lo delayed by NETEM_DELAY_MS: a handshake takes two such
# trips, and so does the smoothed RTT of every connection made under it
# (the scrapes' included). Reports the samples above and below 67 ms of the
# connect-latency and RTT histograms.
count_delay() {
    port=$((7400 + index))
    listen "$port" || return
    if ! netem delay "${NETEM_DELAY_MS}ms"; then
        unlisten
        return
    fi
    # Connections opened before the delay have closed by now.
    sleep 1
    c0=$(metric sonde_tcp_connect_duration_seconds_count)
    cf0=$(below sonde_tcp_connect_duration_seconds)
    r0=$(metric sonde_tcp_rtt_seconds_count)
    rf0=$(below sonde_tcp_rtt_seconds)
    connects "$port"
    [ "$failed" -eq 0 ] || say "error $step $failed of $TCP_M tcp-connect failed under netem delay: $(excerpt /tmp/workload.err)"
    c1=$(settle "$(add "$c0" "$TCP_M")" sonde_tcp_connect_duration_seconds_count)
    cf1=$(below sonde_tcp_connect_duration_seconds)
    r1=$(metric sonde_tcp_rtt_seconds_count)
    rf1=$(below sonde_tcp_rtt_seconds)
    netem_off
    unlisten
    say "value $step connects_slow $((c0 - cf0)) $((c1 - cf1))"
    say "value $step connects_fast $cf0 $cf1"
    say "value $step rtt_slow $((r0 - rf0)) $((r1 - rf1))"
    say "value $step rtt_fast $rf0 $rf1"
}

# unsettled PORT: sockets on PORT (either end) in a state that can still
# retransmit: anything but TIME_WAIT (06) and LISTEN (0A) in /proc/net/tcp.
unsettled() {
    awk -v port="$(printf ':%04X' "$1")" '
        NR > 1 && (substr($2, 9) == port || substr($3, 9) == port) && $4 != "06" && $4 != "0A" { n++ }
        END { print n + 0 }' /proc/net/tcp
}

# The kernel's own count of retransmitted segments (/proc/net/snmp).
retrans_segs() {
    awk '$1 == "Tcp:" {
        if (!col) { for (i = 2; i <= NF; i++) if ($i == "RetransSegs") col = i; next }
        print $col; exit
    }' /proc/net/snmp
}

# quiet_read: Sonde's retransmits ($r) and skipped retransmit runs ($m) at
# a moment the kernel's RetransSegs ($k) stood still for a second before
# and after reading them (Sonde exports within a collector interval, 200 ms),
# so the three describe the same retransmissions.
quiet_read() {
    deadline=$(($(now) + SETTLE_TIMEOUT_S))
    while :; do
        k=$(retrans_segs)
        sleep 1
        r=$(metric sonde_tcp_retransmits_total)
        m=$(metric sonde_bpf_program_missed_runs_total 'program="sonde_tcp_retransmit')
        sleep 1
        [ "$(retrans_segs)" = "$k" ] && return
        if [ "$(now)" -ge "$deadline" ]; then
            say "error $step the kernel kept retransmitting for ${SETTLE_TIMEOUT_S}s"
            return
        fi
    done
}

# One connection to a sink, made before NETEM_LOSS_PCT of the packets over
# lo are dropped; then LOSS_MESSAGES segments of 1000 bytes, 10 ms apart,
# and both closes. Lost segments and FINs are retransmitted (by timeout,
# fast retransmit or tail-loss probe), each one segment on lo (its MSS is
# 64 KiB), so Sonde's retransmits must equal the kernel's own RetransSegs
# (/proc/net/snmp). No scrape runs while the loss is on.
count_loss() {
    port=$((7500 + index))
    listen "$port" tcp-sink || return
    # Start from quiet (the earlier counts' sockets may still retransmit).
    quiet_read
    r0=$r
    m0=$m
    k0=$k
    sonde-workload tcp-send "127.0.0.1:$port" "$LOSS_MESSAGES" 1000 1000 >/tmp/send.out 2>&1 &
    sender=$!
    if wait_line connected /tmp/send.out "$sender" && netem loss "${NETEM_LOSS_PCT}%"; then
        wait "$sender" || say "error $step tcp-send under netem loss: $(excerpt /tmp/send.out)"
    else
        say "error $step tcp-send never connected: $(excerpt /tmp/send.out)"
        kill "$sender" 2>/dev/null
        wait "$sender"
    fi
    netem_off
    unlisten
    # A FIN lost several times is retransmitted seconds after the loss is
    # gone (the timer backs off): wait until neither end is left in a state
    # that retransmits, then read the kernel, Sonde, and the kernel again.
    deadline=$(($(now) + SETTLE_TIMEOUT_S))
    while [ "$(unsettled "$port")" -gt 0 ] && [ "$(now)" -lt "$deadline" ]; do
        sleep 0.5
    done
    [ "$(unsettled "$port")" -eq 0 ] || say "error $step sockets on port $port still closing after ${SETTLE_TIMEOUT_S}s"
    quiet_read
    say "value $step retransmits $r0 $r"
    say "value $step retransmit_runs_missed $m0 $m"
    say "value $step kernel_retrans_segs $k0 $k"
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

run_profile() {
    counts=$(cat "/vm/profiles/$1.counts")
    [ -n "$counts" ] || return 0
    step=run:$1
    URL=http://127.0.0.1:$((9745 + index))
    sonde run --config "/vm/profiles/$1.toml" --listen "${URL#http://}" >/tmp/agent.log 2>&1 &
    agent=$!
    deadline=$(($(now) + START_TIMEOUT_S))
    until get "$URL/health/startup" >/dev/null; do
        if ! alive "$agent" || [ "$(now)" -ge "$deadline" ]; then
            say "error $step agent not started within ${START_TIMEOUT_S}s"
            kill -KILL "$agent" 2>/dev/null
            wait "$agent"
            say "exit $step $?"
            relay err "$step" /tmp/agent.log
            return
        fi
        sleep 0.2
    done
    for c in $counts; do
        "count_$c"
    done
    stop "$agent"
    say "exit $step $rc"
    relay err "$step" /tmp/agent.log
}

say "kernel $(uname -r)"
step=setup
for m in /vm/modules/*.ko; do
    [ -e "$m" ] || continue
    insmod "$m" 2>/tmp/insmod.err || say "error setup insmod ${m##*/}: $(cat /tmp/insmod.err)"
done
ip link set lo up || say "error setup ip link set lo up failed"

index=0
for p in $PROFILES; do
    # A profile whose check fails is not run: the agent would refuse too.
    if check_profile "$p"; then
        run_profile "$p"
        run_tests "$p"
    fi
    index=$((index + 1))
done
say done
sync
poweroff -f
# Not reached unless poweroff failed: ask the kernel directly.
echo o >/proc/sysrq-trigger
sleep 60
