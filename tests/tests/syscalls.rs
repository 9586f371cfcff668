//! Syscall accounting: exact workloads against `sonde_syscalls_total`,
//! `sonde_syscall_errors_total` and `sonde_syscall_duration_seconds`, with
//! bpftrace as an independent referee.

use std::time::Duration;

use sonde_tests::referee::{self, Bpftrace};
use sonde_tests::{Agent, Config, Scrape, Workload, require_root};

/// Longer than two collector intervals (200 ms in the test config), so two
/// equal scrapes this far apart mean the collector has caught up.
const SPACING: Duration = Duration::from_millis(500);
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(60);

fn calls(s: &Scrape, syscall: &str) -> f64 {
    s.value_or_zero("sonde_syscalls_total", &[("syscall", syscall)])
}

fn errors(s: &Scrape, syscall: &str) -> f64 {
    s.value_or_zero("sonde_syscall_errors_total", &[("syscall", syscall)])
}

fn timed(s: &Scrape, syscall: &str) -> f64 {
    s.value_or_zero(
        "sonde_syscall_duration_seconds_count",
        &[("syscall", syscall)],
    )
}

fn timed_sum(s: &Scrape, syscall: &str) -> f64 {
    s.value_or_zero(
        "sonde_syscall_duration_seconds_sum",
        &[("syscall", syscall)],
    )
}

/// The `le="+Inf"` bucket of `syscall`'s latency histogram; 0 while the
/// syscall has no histogram yet. Panics if it has buckets but no `+Inf` one.
fn inf_bucket(s: &Scrape, syscall: &str) -> f64 {
    let name = "sonde_syscall_duration_seconds_bucket";
    let les: Vec<&str> = s
        .series(name, &[("syscall", syscall)])
        .iter()
        .filter_map(|b| b.label("le"))
        .collect();
    if les.is_empty() {
        return 0.0;
    }
    s.value(name, &[("syscall", syscall), ("le", "+Inf")])
        .unwrap_or_else(|| {
            panic!(
                "{name}{{syscall=\"{syscall}\"}} has no le=\"+Inf\" bucket (the text \
                 exposition format spells the last bucket's bound +Inf); le values present: \
                 {les:?}"
            )
        })
}

/// Waits until `f` moved by at least `min_delta` from `before`, then until
/// it stops changing; returns the settled scrape.
fn settle(
    agent: &Agent,
    what: &str,
    before: f64,
    min_delta: f64,
    f: impl Fn(&Scrape) -> f64 + Copy,
) -> Scrape {
    agent
        .try_wait_for(Duration::from_secs(5), |s| f(s) - before >= min_delta)
        .unwrap_or_else(|last| {
            panic!(
                "{what}: expected a rise of at least {min_delta} within 5 s of the workload, \
                 got {} (before {before}); matching /metrics lines:\n{}",
                f(&last) - before,
                last.grep("syscall=\"")
                    .lines()
                    .filter(|l| l.contains(what))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    agent.wait_stable(what, Duration::from_secs(5), SPACING, f)
}

/// A scrape to diff against, taken once the collector has caught up with a
/// quiet syscall (use only for syscalls the rest of the machine rarely
/// makes, or it never settles).
fn quiet_baseline(agent: &Agent, syscall: &'static str) -> Scrape {
    agent.wait_stable(
        &format!("{syscall} counters before the workload"),
        Duration::from_secs(10),
        SPACING,
        move |s| (calls(s, syscall), errors(s, syscall), timed(s, syscall)),
    )
}

fn within(actual: f64, expected: f64, rel: f64) -> bool {
    (actual - expected).abs() <= expected.abs() * rel
}

#[test]
fn getppid_calls_are_counted_and_timed() {
    if !require_root() {
        return;
    }
    let agent = Agent::start(&Config::new().render(), &[]);
    assert_hook(&agent, "raw_tracepoint");
    assert_getppid_counted(&agent);
}

/// The classic tracepoint is the fallback where raw tracepoints are
/// missing; forced here, it must count exactly the same.
#[test]
fn classic_tracepoint_fallback_counts_getppid_exactly() {
    if !require_root() {
        return;
    }
    let config = Config::new().set("syscalls", "hook", "\"tracepoint\"");
    let agent = Agent::start(&config.render(), &[]);
    assert_hook(&agent, "tracepoint");
    assert_getppid_counted(&agent);
}

/// Latency sampling (`latency_sample_every = 10`): every call is still
/// counted exactly, failures too; about one in ten is timed.
#[test]
fn sampled_timing_still_counts_every_call() {
    if !require_root() {
        return;
    }
    const N: f64 = 200_000.0;
    let config = Config::new().set("syscalls", "latency_sample_every", "10");
    let agent = Agent::start(&config.render(), &[]);
    let before = quiet_baseline(&agent, "getppid");
    Workload::run(&["getppid", "200000"], WORKLOAD_TIMEOUT);
    let after = settle(&agent, "getppid", calls(&before, "getppid"), N, |s| {
        calls(s, "getppid")
    });
    let d_calls = calls(&after, "getppid") - calls(&before, "getppid");
    println!("measured: getppid +{d_calls} of {N}, sampling 1 in 10");
    assert!(
        (N..=N * 1.01).contains(&d_calls),
        "sampling 1 in 10: sonde_syscalls_total{{syscall=\"getppid\"}} rose by {d_calls} for \
         {N} calls"
    );
    // The sequence is per CPU and other processes' syscalls interleave, so
    // the timed share is close to, not exactly, a tenth.
    let d_timed = timed(&after, "getppid") - timed(&before, "getppid");
    assert!(
        within(d_timed, d_calls / 10.0, 0.15),
        "sampling 1 in 10: _count rose by {d_timed} for {d_calls} calls (expected about {})",
        d_calls / 10.0
    );
    let e0 = errors(&after, "close");
    Workload::run(&["close-bad", "20000"], WORKLOAD_TIMEOUT);
    let failed = agent
        .try_wait_for(Duration::from_secs(5), |s| {
            errors(s, "close") - e0 >= 20_000.0
        })
        .map(|s| errors(&s, "close") - e0)
        .unwrap_or_else(|last| errors(&last, "close") - e0);
    assert!(
        failed >= 20_000.0,
        "sampling 1 in 10: 20000 failing close() calls, errors rose by {failed}"
    );
}

/// Both syscall programs are attached in `mode`.
fn assert_hook(agent: &Agent, mode: &str) {
    let scrape = agent.metrics();
    for tp in ["sys_enter", "sys_exit"] {
        let hook = format!("{mode}:{tp}");
        assert_eq!(
            scrape.value("sonde_probe_attached", &[("hook", &hook), ("mode", mode)]),
            Some(1.0),
            "expected sonde_probe_attached{{hook=\"{hook}\",mode=\"{mode}\"}} 1:\n{}",
            scrape.grep("sonde_probe_attached")
        );
    }
}

fn assert_getppid_counted(agent: &Agent) {
    const N: f64 = 200_000.0;
    let before = quiet_baseline(agent, "getppid");

    Workload::run(&["getppid", "200000"], WORKLOAD_TIMEOUT);
    let after = settle(agent, "getppid", calls(&before, "getppid"), N, |s| {
        calls(s, "getppid")
    });

    let d_calls = calls(&after, "getppid") - calls(&before, "getppid");
    // The kernel matrix shows `measured:` lines beside the test's result.
    println!("measured: getppid +{d_calls} of {N}");
    assert!(
        (N..=N * 1.01).contains(&d_calls),
        "sonde_syscalls_total{{syscall=\"getppid\"}} rose by {d_calls} for {N} getppid calls \
         (expected {N} ..= {})",
        N * 1.01
    );

    let d_timed = timed(&after, "getppid") - timed(&before, "getppid");
    assert!(
        within(d_timed, d_calls, 0.01),
        "sonde_syscall_duration_seconds_count{{syscall=\"getppid\"}} rose by {d_timed}, not \
         within 1% of the call count's rise {d_calls}"
    );
    let d_inf = inf_bucket(&after, "getppid") - inf_bucket(&before, "getppid");
    assert_eq!(
        d_inf, d_timed,
        "the le=\"+Inf\" bucket of sonde_syscall_duration_seconds{{syscall=\"getppid\"}} rose \
         by {d_inf}, but _count by {d_timed}: a histogram's +Inf bucket must equal its count"
    );
    let d_sum = timed_sum(&after, "getppid") - timed_sum(&before, "getppid");
    let mean = d_sum / d_timed;
    assert!(
        mean > 0.0 && mean < 1e-3,
        "mean getppid latency from sonde_syscall_duration_seconds is {mean} s \
         (_sum rose {d_sum}, _count {d_timed}); getppid takes well under a millisecond"
    );
}

#[test]
fn failing_close_calls_are_counted_as_errors() {
    if !require_root() {
        return;
    }
    const N: f64 = 50_000.0;
    let agent = Agent::start(&Config::new().render(), &[]);
    // close is busy machine-wide, so its counters never settle: diff
    // against any scrape taken before the workload (a scrape reflects the
    // last collection, which is never later than the scrape itself), and
    // wait for the errors to have risen by at least N.
    let before = agent.metrics();
    Workload::run(&["close-bad", "50000"], WORKLOAD_TIMEOUT);
    let e0 = errors(&before, "close");
    let after = agent
        .try_wait_for(Duration::from_secs(5), |s| errors(s, "close") - e0 >= N)
        .unwrap_or_else(|last| {
            panic!(
                "sonde_syscall_errors_total{{syscall=\"close\"}} rose by {} within 5 s of \
                 {N} close(-1) calls (each fails with EBADF); expected at least {N}",
                errors(&last, "close") - e0
            )
        });

    let d_err = errors(&after, "close") - errors(&before, "close");
    let d_calls = calls(&after, "close") - calls(&before, "close");
    println!("measured: close errors +{d_err} of {N}");
    assert!(
        d_err >= N,
        "sonde_syscall_errors_total{{syscall=\"close\"}} rose by {d_err} for {N} close(-1) \
         calls (each fails with EBADF)"
    );
    assert!(
        d_calls >= d_err,
        "sonde_syscalls_total{{syscall=\"close\"}} rose by {d_calls}, less than the errors \
         ({d_err}): every failed call is a call"
    );
}

#[test]
fn getppid_count_agrees_with_bpftrace() {
    if !require_root() {
        return;
    }
    const N: u64 = 200_000;
    let agent = Agent::start(&Config::new().render(), &[]);
    let program = format!(
        "BEGIN {{ printf(\"ready\\n\"); }} \
         tracepoint:raw_syscalls:sys_enter /args->id == {}/ {{ @c = count(); }}",
        libc::SYS_getppid
    );
    let bt = Bpftrace::start(&program, "ready");
    let before = quiet_baseline(&agent, "getppid");

    Workload::run(&["getppid", &N.to_string()], WORKLOAD_TIMEOUT);
    let after = settle(
        &agent,
        "getppid",
        calls(&before, "getppid"),
        N as f64,
        |s| calls(s, "getppid"),
    );
    let out = bt.stop();
    let bpftrace_count = referee::scalar(&out, "@c") as f64;
    let d_calls = calls(&after, "getppid") - calls(&before, "getppid");

    println!("getppid: agent +{d_calls}, bpftrace {bpftrace_count}, workload {N}");
    assert!(
        bpftrace_count >= N as f64,
        "bpftrace counted {bpftrace_count} getppid entries for a workload of {N}; its output:\n{out}"
    );
    assert!(
        within(d_calls, bpftrace_count, 0.01),
        "the agent counted {d_calls} getppid calls, bpftrace {bpftrace_count} over the same \
         workload of {N}: they differ by more than 1%"
    );
}

/// Histogram buckets of `sonde_syscall_duration_seconds` for `syscall`, as
/// (upper bound in seconds, cumulative count), sorted by bound.
fn buckets(s: &Scrape, syscall: &str) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = s
        .series(
            "sonde_syscall_duration_seconds_bucket",
            &[("syscall", syscall)],
        )
        .iter()
        .filter_map(|b| Some((b.label("le")?.parse::<f64>().ok()?, b.value)))
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

#[test]
fn nanosleep_latency_lands_in_the_right_bucket() {
    if !require_root() {
        return;
    }
    // Three 50 ms sleeps through the raw nanosleep syscall, which little
    // else on a machine uses (libc sleeps with clock_nanosleep).
    const SLEEPS: f64 = 3.0;
    let agent = Agent::start(&Config::new().render(), &[]);
    let before = quiet_baseline(&agent, "nanosleep");
    Workload::run(&["nanosleep", "50", "3"], WORKLOAD_TIMEOUT);
    let after = settle(
        &agent,
        "nanosleep",
        timed(&before, "nanosleep"),
        SLEEPS,
        |s| timed(s, "nanosleep"),
    );

    let (b0, b1) = (buckets(&before, "nanosleep"), buckets(&after, "nanosleep"));
    assert!(
        !b1.is_empty(),
        "no sonde_syscall_duration_seconds_bucket series for nanosleep:\n{}",
        after.grep("nanosleep")
    );
    // The bucket holding 50 ms: largest bound below 50 ms, smallest at or
    // above 51 ms (a 50 ms sleep overshoots by well under a millisecond).
    let cum = |b: &[(f64, f64)], pick: &dyn Fn(f64) -> bool, last: bool| {
        let it = b.iter().filter(|(le, _)| pick(*le));
        let found = if last {
            it.last()
        } else {
            it.min_by(|x, y| x.0.total_cmp(&y.0))
        };
        found.map(|&(le, v)| (le, v)).unwrap_or((0.0, 0.0))
    };
    let (lo, lo_after) = cum(&b1, &|le| le < 0.05, true);
    let (hi, hi_after) = cum(&b1, &|le| le >= 0.051, false);
    let lo_before = cum(&b0, &|le| le == lo, true).1;
    let hi_before = cum(&b0, &|le| le == hi, true).1;
    let in_bucket = (hi_after - hi_before) - (lo_after - lo_before);
    assert!(
        in_bucket >= SLEEPS,
        "{SLEEPS} nanosleeps of 50 ms added {in_bucket} to the ({lo}, {hi}] s bucket of \
         sonde_syscall_duration_seconds{{syscall=\"nanosleep\"}}; buckets before {b0:?}, \
         after {b1:?}"
    );
    let d_sum = timed_sum(&after, "nanosleep") - timed_sum(&before, "nanosleep");
    let d_count = timed(&after, "nanosleep") - timed(&before, "nanosleep");
    assert!(
        d_sum >= 0.05 * SLEEPS && d_sum <= 0.06 * d_count.max(SLEEPS),
        "sonde_syscall_duration_seconds_sum{{syscall=\"nanosleep\"}} rose by {d_sum} s for \
         {d_count} timed calls including {SLEEPS} sleeps of 50 ms"
    );
}

/// `latency_histograms` bounds the largest family: with room for 3, at
/// most 3 syscalls have a latency histogram while every syscall made has
/// its counters, and the 3 chosen stay the same as others get busier.
#[test]
fn latency_histograms_are_bounded_and_stay_with_the_syscalls_chosen() {
    if !require_root() {
        return;
    }
    let config = Config::new().set("syscalls", "latency_histograms", "3");
    let agent = Agent::start(&config.render(), &[]);
    let histogrammed = |s: &Scrape| -> Vec<String> {
        let mut names: Vec<String> = s
            .series("sonde_syscall_duration_seconds_count", &[])
            .iter()
            .filter_map(|x| x.label("syscall").map(String::from))
            .collect();
        names.sort();
        names
    };
    let first = agent
        .try_wait_for(Duration::from_secs(10), |s| {
            s.series("sonde_syscalls_total", &[]).len() > 3 && histogrammed(s).len() == 3
        })
        .unwrap_or_else(|last| {
            panic!(
                "expected more than 3 syscalls counted and 3 with a histogram:\n{}",
                last.grep("sonde_syscall")
            )
        });
    // A syscall not chosen becomes the busiest of all.
    let chosen = histogrammed(&first);
    let busy = if chosen.iter().any(|c| c == "getppid") {
        "close"
    } else {
        "getppid"
    };
    let workload = if busy == "getppid" {
        ["getppid", "200000"]
    } else {
        ["close-bad", "200000"]
    };
    Workload::run(&workload, WORKLOAD_TIMEOUT);
    let after = settle(&agent, busy, calls(&first, busy), 200_000.0, |s| {
        calls(s, busy)
    });
    assert!(calls(&after, busy) >= 200_000.0, "{}", after.grep(busy));
    assert_eq!(
        histogrammed(&after),
        chosen,
        "the syscalls with a latency histogram changed after {busy} got busy"
    );
    println!(
        "{} syscalls counted, histograms for {chosen:?}",
        after.series("sonde_syscalls_total", &[]).len()
    );
}
