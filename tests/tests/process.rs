//! Process lifecycle events: N execs of /bin/true and /bin/false in turn
//! from one shell in a cgroup of the test's give N exec events naming the
//! file and its comm, the shell as parent and the cgroup (its directory's
//! inode number is its id), and N exit events with their exit codes (0
//! and 1, as the kernel's wait status: 0 and 256); the exec counter
//! agrees. The same through perf event arrays, the transport of kernels
//! without the BPF ring buffer.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use sonde_tests::{Agent, Config, cgroup::TestCgroup, require_root};

#[test]
fn execs_and_exits_are_reported_with_their_parent() {
    execs_and_exits(Config::new(), "ring buffer");
}

#[test]
fn execs_and_exits_arrive_through_perf_event_arrays_too() {
    execs_and_exits(
        Config::new().set("events", "transport", "\"perf_event_array\""),
        "perf event arrays (configured)",
    );
}

fn execs_and_exits(config: Config, transport: &str) {
    if !require_root() {
        return;
    }
    const N: usize = 50;
    let agent = Agent::start(&config.render(), &[]);
    let status = agent.get_json("/api/v1/status");
    assert_eq!(status["event_transport"], transport, "/api/v1/status");
    let execs = |s: &sonde_tests::Scrape| {
        s.value_or_zero("sonde_process_events_total", &[("event", "exec")])
    };
    let before = agent.metrics();
    let cgroup = TestCgroup::new("sonde-test-process");
    let cgroup_id = std::fs::metadata(cgroup.dir())
        .expect("the test's cgroup")
        .ino();
    let shell = cgroup
        .command(
            "sh",
            &[
                "-c",
                &format!(
                    "'i=0; while [ $i -lt {N} ]; do \
                     if [ $((i % 2)) -eq 0 ]; then /bin/true; else /bin/false; fi; \
                     i=$((i+1)); done'"
                ),
            ],
        )
        .spawn()
        .expect("starting sh");
    let shell_pid = shell.id() as u64;
    let status = shell.wait_with_output().expect("waiting for sh").status;
    assert!(status.success());
    agent
        .try_wait_for(Duration::from_secs(5), |s| {
            execs(s) - execs(&before) >= N as f64
        })
        .unwrap_or_else(|last| {
            panic!(
                "{N} execs: sonde_process_events_total{{event=\"exec\"}} rose by {}",
                execs(&last) - execs(&before)
            )
        });
    let events = agent.get_json("/api/v1/events");
    let events = events["events"].as_array().expect("events array");
    let ours = |kind: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["ppid"].as_u64() == Some(shell_pid))
            .collect::<Vec<_>>()
    };
    let execs_seen = ours("process_exec");
    let exits = ours("process_exit");
    // The kernel matrix shows `measured:` lines beside the test's result.
    println!(
        "measured: {} exec and {} exit events of {N} via {transport}",
        execs_seen.len(),
        exits.len()
    );
    assert_eq!(
        execs_seen.len(),
        N,
        "exec events with ppid {shell_pid} (the shell): {execs_seen:?}"
    );
    let files = |name: &str| execs_seen.iter().filter(|e| e["filename"] == name).count();
    assert_eq!(
        (files("/bin/true"), files("/bin/false")),
        (N / 2, N / 2),
        "{execs_seen:?}"
    );
    assert_eq!(
        exits.len(),
        N,
        "exit events with ppid {shell_pid}: {exits:?}"
    );
    assert!(
        execs_seen.iter().all(
            |e| e["filename"].as_str().and_then(|f| f.strip_prefix("/bin/")) == e["comm"].as_str()
        ),
        "every exec's comm the name of its file: {execs_seen:?}"
    );
    assert!(
        execs_seen
            .iter()
            .chain(&exits)
            .all(|e| e["cgroup_id"] == cgroup_id),
        "every event in the test's cgroup, id {cgroup_id}: {execs_seen:?} {exits:?}"
    );
    let codes = |code: u64| exits.iter().filter(|e| e["exit_code"] == code).count();
    assert_eq!(
        (codes(0), codes(256)),
        (N / 2, N / 2),
        "exit codes (wait status) of /bin/true and /bin/false: {exits:?}"
    );
}
