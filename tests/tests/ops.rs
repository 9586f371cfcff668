//! Operations artifacts, each exercised against the real thing: the
//! Prometheus alerts (promtool, and end to end through real Prometheus and
//! Alertmanager scraping a live agent with injected faults), the Grafana
//! dashboards (every panel query run through Prometheus' HTTP API; their
//! ConfigMaps for Grafana's sidecar built with kustomize), the Kubernetes
//! manifests (kubernetes-validate --strict, kustomize), the
//! systemd unit (systemd-analyze verify, and `sonde check` with exactly its
//! capabilities), the container image (podman; only with
//! SONDE_CONTAINER_TEST=1) and docs/metrics.md (regenerated from a live
//! scrape).
//!
//! Tools: promtool and prometheus (package prometheus),
//! prometheus-alertmanager, systemd-analyze, kubernetes-validate (pip),
//! setpriv; kubectl (kustomize) when the machine has it; podman and runc
//! for the container test. Only loopback traffic. Every server, agent and
//! directory is an RAII guard.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::agent::free_port;
use sonde_tests::ops::dashboards::{self, substitute};
use sonde_tests::ops::footprint::{self, mib};
use sonde_tests::ops::servers::{Alertmanager, Prometheus};
use sonde_tests::ops::{
    check_generated, container, metrics_doc, prometheus_rule_yaml, promql, read_repo_file,
    repo_path, yaml,
};
use sonde_tests::sys::{self, TempDir, have, need_tool, run_with_timeout};
use sonde_tests::{Agent, Config, Scrape, Workload, require_root};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const RUNBOOK: &str = "docs/runbook.md";
const METRICS_DOC: &str = "docs/metrics.md";
const K8S_DIR: &str = "deploy/kubernetes";
/// The Prometheus Operator objects: a kustomize component of the base.
const K8S_MONITORING_DIR: &str = "deploy/kubernetes/monitoring";
/// An overlay: the base plus the monitoring component.
const K8S_WITH_MONITORING: &str = "deploy/kubernetes-monitoring";
const DASHBOARDS_DIR: &str = "dashboards";
const UNIT: &str = "deploy/systemd/sonde.service";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
/// The capabilities the agent needs (CAP_SYS_RESOURCE only on < 5.11).
const CAPS: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"];
/// Metric name prefixes that the agent exports.
const PREFIXES: [&str; 2] = ["sonde_", "process_"];

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command that must exit 0 within `timeout`; returns stdout+stderr.
fn must_succeed(c: &mut Command, timeout: Duration) -> String {
    let desc = format!("{c:?}");
    let out = run_with_timeout(c, timeout);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{text}",
        out.status
    );
    text
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation but `-`
/// and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn runbook_anchors() -> BTreeSet<String> {
    read_repo_file(RUNBOOK)
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect()
}

// ---------------------------------------------------------------- alerts

#[test]
fn alert_rules_pass_promtool_and_link_the_runbook() {
    need_tool("promtool", "prometheus");
    let dir = repo_path("deploy/prometheus");
    let out = must_succeed(
        Command::new("promtool")
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
        Duration::from_secs(60),
    );
    let rules = yaml::alert_rules(&read_repo_file(ALERTS));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool counted a different number of rules than the {} alerts read here:\n{out}",
        rules.len()
    );
    let out = must_succeed(
        Command::new("promtool")
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(&dir),
        Duration::from_secs(120),
    );
    assert!(out.contains("SUCCESS"), "promtool test rules:\n{out}");

    // Each alert: severity, summary, description, a runbook section; shown
    // firing and not firing in alerts_test.yml.
    let anchors = runbook_anchors();
    let tests_text = read_repo_file(ALERTS_TEST);
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for r in &rules {
        if !names.insert(r.alert.clone()) {
            problems.push(format!("{}: defined twice", r.alert));
        }
        match r.labels.get("severity").map(String::as_str) {
            // Or the series' own severity (an anomaly's), which
            // alerts_test.yml shows taking both values.
            Some("critical" | "warning" | "info" | "{{ $labels.severity }}") => {}
            other => problems.push(format!("{}: severity {other:?}", r.alert)),
        }
        for key in ["summary", "description", "runbook_url"] {
            if r.annotations.get(key).is_none_or(|v| v.trim().is_empty()) {
                problems.push(format!("{}: no {key} annotation", r.alert));
            }
        }
        let desc = r
            .annotations
            .get("description")
            .cloned()
            .unwrap_or_default();
        if !desc.contains("$labels.instance") && !r.expr.starts_with("absent(") {
            problems.push(format!(
                "{}: the description does not name {{{{ $labels.instance }}}}",
                r.alert
            ));
        }
        let url = r
            .annotations
            .get("runbook_url")
            .cloned()
            .unwrap_or_default();
        match url.split_once('#') {
            Some((page, a))
                if page.starts_with("https://")
                    && page.ends_with(RUNBOOK)
                    && anchors.contains(a) => {}
            _ => problems.push(format!(
                "{}: runbook_url {url:?} is not an absolute link to a section of {RUNBOOK} \
                 (sections: {anchors:?})",
                r.alert
            )),
        }
        // alert_rule_test entries name the alert; a firing one has
        // exp_labels, a silent one `exp_alerts: []`.
        let entries: Vec<&str> = tests_text
            .split("- eval_time:")
            .filter(|e| e.contains(&format!("alertname: {}\n", r.alert)))
            .collect();
        if !entries.iter().any(|e| e.contains("exp_labels:")) {
            problems.push(format!("{}: no test case shows it firing", r.alert));
        }
        if !entries.iter().any(|e| e.contains("exp_alerts: []")) {
            problems.push(format!("{}: no test case shows it not firing", r.alert));
        }
    }
    assert!(
        problems.is_empty(),
        "alerts.yml:\n  {}",
        problems.join("\n  ")
    );
    println!(
        "promtool: {} alerts pass check and unit tests (each firing and not firing): {}",
        rules.len(),
        names.iter().cloned().collect::<Vec<_>>().join(", ")
    );
}

/// Generates loopback traffic and syscall activity: TCP accepts and a
/// refused connect, UDP datagrams (two of them in fragments), getppid
/// calls, failing closes and a few slow nanosleeps. Bounded: a few seconds.
fn loopback_traffic() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut listener = Workload::spawn(&["tcp-listen", &addr, "2"]);
    listener.expect_line("ready", Duration::from_secs(5));
    for _ in 0..3 {
        Workload::run(&["tcp-connect", &addr], Duration::from_secs(10));
    }
    // A refused connect (RST): nothing listens on this port.
    let refused = Workload::spawn(&["tcp-connect", &format!("127.0.0.1:{}", free_port())]);
    let _ = refused.wait(Duration::from_secs(10));
    let udp = format!("127.0.0.1:{}", free_port());
    let mut sink = Workload::spawn(&["udp-sink", &udp, "2"]);
    sink.expect_line("ready", Duration::from_secs(5));
    Workload::run(&["udp-send", &udp, "50", "200"], Duration::from_secs(30));
    // Two datagrams that hping3 cuts into fragments itself (lo's MTU
    // fragments nothing): IP fragments are counted per interface, and a
    // family appears once it has a series.
    sonde_tests::sys::need_tool("hping3", "hping3");
    let _ = Command::new("hping3")
        .args(["-q", "--udp", "-f", "-m", "64", "-d", "200", "-p"])
        .arg(free_port().to_string())
        .args(["-i", "u10000", "-c", "2", "127.0.0.1"])
        .output();
    Workload::run(&["getppid", "2000"], Duration::from_secs(30));
    Workload::run(&["close-bad", "200"], Duration::from_secs(30));
    Workload::run(&["nanosleep", "10", "3"], Duration::from_secs(30));
    synced_disk_writes();
    let _ = sink.wait(Duration::from_secs(10));
    let _ = listener.wait(Duration::from_secs(10));
}

/// A little block I/O, so that the block families have a row: 64 KiB
/// written and synced four times to a file in the build directory (on a
/// disk; /tmp may be a tmpfs, which does none).
fn synced_disk_writes() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ops-synced-writes");
    for _ in 0..4 {
        let mut file = std::fs::File::create(&path).expect("create the synced-writes file");
        file.write_all(&[0x5a; 64 << 10]).expect("write 64 KiB");
        file.sync_all().expect("sync the synced-writes file");
    }
    let _ = std::fs::remove_file(&path);
}

/// The agent with everything on that a scrape can show: network on `lo`,
/// bpf_stats, a low slow-syscall threshold.
fn rich_config() -> Config {
    Config::new()
        .network_on(&["lo"])
        .set("collector", "bpf_stats", "true")
        .set("syscalls", "slow_threshold_ms", "5")
}

/// A scrape of a live agent after [`loopback_traffic`].
fn rich_scrape() -> Scrape {
    let agent = Agent::start(&rich_config().render(), &[]);
    loopback_traffic();
    // A few collector intervals (200 ms), and some scrapes (TCP on lo).
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        agent.metrics();
    }
    agent.metrics()
}

fn exposed_families(scrape: &Scrape) -> BTreeMap<String, String> {
    scrape
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect()
}

#[test]
fn alert_and_dashboard_metrics_exist_in_a_live_scrape() {
    if !require_root() {
        return;
    }
    // name -> where it is used
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in yaml::alert_rules(&read_repo_file(ALERTS)) {
        for n in promql::metric_names(&r.expr, &PREFIXES) {
            used.entry(n)
                .or_default()
                .insert(format!("alert {}", r.alert));
        }
    }
    for d in dashboards::load_all() {
        for t in d.targets() {
            for n in promql::metric_names(&t.expr, &PREFIXES) {
                used.entry(n)
                    .or_default()
                    .insert(format!("{} panel {:?}", t.dashboard, t.panel));
            }
        }
        for (var, q) in d.variable_queries() {
            for n in promql::metric_names(&q, &PREFIXES) {
                used.entry(n)
                    .or_default()
                    .insert(format!("{} variable {var}", d.file));
            }
        }
    }
    let scrape = rich_scrape();
    let families = exposed_families(&scrape);
    let missing: Vec<String> = used
        .iter()
        .filter(|(n, _)| promql::family_of(n, &families).is_none())
        .filter(|(n, _)| !dashboards::NEEDS_PODS.contains(&n.as_str()))
        .map(|(n, w)| {
            format!(
                "{n} (used by {})",
                w.iter().cloned().collect::<Vec<_>>().join("; ")
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metric names used in alerts or dashboards that the agent does not export:\n  {}\n\
         exported families: {:?}",
        missing.join("\n  "),
        families.keys().collect::<Vec<_>>()
    );
    let used_families: BTreeSet<&str> = used
        .keys()
        .filter_map(|n| promql::family_of(n, &families))
        .collect();
    println!(
        "{} metric names in alerts and dashboards ({} families of the {} exported) all exist; \
         exported but unused: {:?}",
        used.len(),
        used_families.len(),
        families.len(),
        families
            .keys()
            .filter(|f| !used_families.contains(f.as_str()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn metrics_doc_matches_a_live_scrape() {
    if !require_root() {
        return;
    }
    let scrape = rich_scrape();
    let families = metrics_doc::families(&scrape);
    let committed = std::fs::read_to_string(repo_path(METRICS_DOC)).unwrap_or_default();
    let kept = metrics_doc::rows(&committed);
    let unseen: Vec<&String> = kept.keys().filter(|n| !families.contains_key(*n)).collect();
    let doc = metrics_doc::render(&scrape, &kept);
    let without_help: Vec<&String> = families
        .iter()
        .filter(|(_, f)| f.help.trim().is_empty())
        .map(|(n, _)| n)
        .collect();
    assert!(
        without_help.is_empty(),
        "families without HELP: {without_help:?}"
    );
    check_generated(METRICS_DOC, &doc, "metrics_doc");
    println!(
        "{METRICS_DOC}: the {} families of a live scrape are documented as exposed; rows kept \
         for families this scrape did not show (exported only after some event; delete a row \
         by hand if the metric is gone): {unseen:?}",
        families.len()
    );
}

/// alerts.yml for a test run: `for:` durations to 0 s and the backlog
/// subquery resolution to 1 s, so faults show within seconds.
fn fast_rules() -> String {
    read_repo_file(ALERTS)
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("for: ") {
                format!("{}for: 0s", &l[..l.len() - t.len()])
            } else {
                l.replace(":30s]", ":1s]")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn firing_names(prom: &Prometheus) -> BTreeSet<String> {
    prom.firing()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn alerts_fire_end_to_end_through_alertmanager() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let am = Alertmanager::start();
    // A 4 KiB syscall ring (about 50 events) and slow syscalls from 20 ms,
    // with the default ignore list (waits never count as slow).
    let config = Config::new()
        .set("debug", "fault_injection", "true")
        .set("events", "syscall_ring_bytes", "4096")
        .set("syscalls", "slow_threshold_ms", "20");
    let mut agent = Agent::start(&config.render(), &[]);
    let prom = Prometheus::start(&[agent.addr()], Some(&fast_rules()), Some(am.server.addr()));
    prom.wait_scraped(1, 3, Duration::from_secs(30));
    let instance = agent.addr().to_string();
    let baseline = firing_names(&prom);
    for name in ["SondeComponentFailed", "SondeEventsLost", "SondeAgentDown"] {
        assert!(
            !baseline.contains(name),
            "{name} fires before any fault was injected (firing: {baseline:?})"
        );
    }
    let timeout = Duration::from_secs(60);
    let mut seen: Vec<String> = Vec::new();
    // Waits for the alert; `since` is when the fault was injected.
    let mut expect = |name: &str, labels: &[(&str, &str)], since: Instant| match am
        .wait_for(name, labels, timeout)
    {
        Ok((alert, _)) => {
            println!(
                "Alertmanager received {name} {} {:.1} s after the fault: {}",
                alert["labels"],
                since.elapsed().as_secs_f64(),
                alert["annotations"]["summary"]
            );
            seen.push(name.to_string());
        }
        Err(got) => panic!(
            "{name}{labels:?} did not reach Alertmanager within {timeout:?}; it holds: {got:?}\n\
                 Prometheus firing: {:?}\nPrometheus log:\n{}",
            firing_names(&prom),
            prom.server.log()
        ),
    };

    // 1. A failed component: /health/ready turns 503.
    let fault = Instant::now();
    let (status, body) = agent.post("/debug/fail?component=collector");
    assert_eq!(status, 200, "POST /debug/fail answered {status}: {body}");
    expect(
        "SondeComponentFailed",
        &[
            ("component", "collector"),
            ("instance", &instance),
            ("severity", "critical"),
        ],
        fault,
    );
    let (status, body) = agent.post("/debug/recover?component=collector");
    assert_eq!(status, 200, "POST /debug/recover answered {status}: {body}");

    // 2. A stalled ring reader: the 4 KiB ring fills, events are lost.
    let fault = Instant::now();
    let (status, body) = agent.post("/debug/stall-reader?ring=syscall&ms=20000");
    assert_eq!(
        status, 200,
        "POST /debug/stall-reader answered {status}: {body}"
    );
    let sleeper = Workload::spawn(&["nanosleep", "25", "150"]);
    expect(
        "SondeEventsLost",
        &[("ring", "syscall"), ("instance", &instance)],
        fault,
    );
    expect(
        "SondeRingBacklogGrowing",
        &[("ring", "syscall"), ("instance", &instance)],
        fault,
    );
    sleeper.wait_success(Duration::from_secs(30));

    // 3. The agent goes away: its target is down.
    let fault = Instant::now();
    match agent.terminate(Duration::from_secs(10)) {
        Some((status, _)) => assert!(
            status.success(),
            "the agent exited with {status} on SIGTERM"
        ),
        None => panic!("the agent did not exit within 10 s of SIGTERM"),
    }
    expect(
        "SondeAgentDown",
        &[("instance", &instance), ("job", "sonde")],
        fault,
    );

    let all: BTreeSet<String> = am
        .alerts()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("?").to_string())
        .collect();
    println!(
        "end to end in {:.1} s: seen at Alertmanager as expected: {seen:?}; everything it holds: {all:?}",
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- dashboards

#[test]
fn dashboards_are_well_formed() {
    let ds = dashboards::load_all();
    assert!(
        ds.len() >= 4,
        "expected at least 4 dashboards, found {}",
        ds.len()
    );
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for d in &ds {
        problems.extend(d.problems());
        let uid = d.json["uid"].as_str().unwrap_or_default().to_string();
        if !uids.insert(uid.clone()) {
            problems.push(format!("{}: uid {uid:?} used twice", d.file));
        }
    }
    assert!(
        problems.is_empty(),
        "dashboards:\n  {}",
        problems.join("\n  ")
    );
    let titles: Vec<String> = ds
        .iter()
        .map(|d| {
            format!(
                "{} ({} panels, {} queries)",
                d.json["title"].as_str().unwrap_or("?"),
                d.panels().iter().filter(|p| p["type"] != "row").count(),
                d.targets().len()
            )
        })
        .collect();
    println!("dashboards: {}", titles.join(", "));
}

#[test]
fn every_dashboard_query_returns_data() {
    if !require_root() {
        return;
    }
    let t0 = Instant::now();
    let agent = Agent::start(&rich_config().render(), &[]);
    let prom = Prometheus::start(&[agent.addr()], None, None);
    // About 15 s of scrapes under load.
    let until = Instant::now() + Duration::from_secs(12);
    let mut rounds = 0;
    while Instant::now() < until {
        loopback_traffic();
        rounds += 1;
    }
    prom.wait_scraped(1, 12, Duration::from_secs(30));
    // The scrape config gives the agent a node label (its host) and, like a
    // Prometheus holding one cluster, no cluster label: the dashboards'
    // `cluster=~".*"` must match series without it.
    let info = prom
        .query(r#"sonde_build_info{job="sonde"}"#)
        .expect("query sonde_build_info");
    assert_eq!(info.len(), 1, "sonde_build_info: {info:?}");
    let labels = &info[0]["metric"];
    let node = labels["node"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        node,
        agent.addr().ip().to_string(),
        "the test Prometheus relabels the target's host to node: {labels}"
    );
    assert!(
        labels["cluster"].is_null(),
        "no cluster label expected: {labels}"
    );

    let mut failures = Vec::new();
    let mut ok = 0;
    let mut total = 0;
    let mut legends_checked = 0;
    for d in dashboards::load_all() {
        // One node chosen, the job's default, All for everything else.
        let mut values = BTreeMap::new();
        for v in d.variables() {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let value = match name.as_str() {
                "node" => node.clone(),
                "job" => dashboards::DEFAULT_JOB.to_string(),
                "datasource" => continue,
                _ => v["allValue"].as_str().unwrap_or(".*").to_string(),
            };
            values.insert(name, value);
        }
        for (var, q) in d.variable_queries() {
            if var != "cluster" {
                continue;
            }
            // No cluster label here: Grafana's label_values finds no value
            // and the variable offers only All (.*).
            total += 1;
            match prom.query(&substitute(&q, &values)) {
                Ok(r) if r.is_empty() => ok += 1,
                Ok(r) => failures.push(format!(
                    "{} variable cluster: values without a cluster label: {r:?}",
                    d.file
                )),
                Err(e) => failures.push(format!("{} variable cluster: {e} in {q}", d.file)),
            }
        }
        // (query, legend format) of every variable but cluster and every panel.
        let mut queries: Vec<(String, String, String)> = d
            .variable_queries()
            .into_iter()
            .filter(|(var, _)| var != "cluster")
            .map(|(var, q)| (format!("variable {var}"), q, String::new()))
            .collect();
        queries.extend(d.targets().into_iter().map(|t| {
            (
                format!("panel {:?} {}", t.panel, t.ref_id),
                t.expr,
                t.legend,
            )
        }));
        for (what, expr, legend) in queries {
            if dashboards::needs_pods(&expr) {
                // No pods here: tests/tests/pods.rs runs these.
                continue;
            }
            total += 1;
            let q = substitute(&expr, &values);
            match prom.query(&q) {
                Ok(r) if !r.is_empty() => {
                    ok += 1;
                    // A series per node: the legend must tell them apart.
                    let per_node = r.iter().any(|s| s["metric"]["node"].is_string());
                    if per_node && !legend.is_empty() {
                        legends_checked += 1;
                        if !dashboards::names_label(&legend, "node") {
                            failures.push(format!(
                                "{} {what}: series carry node but legend {legend:?} does not \
                                 name {{{{node}}}}",
                                d.file
                            ));
                        }
                    }
                }
                Ok(_) => failures.push(format!("{} {what}: no data for {q}", d.file)),
                Err(e) => failures.push(format!("{} {what}: {e} in {q}", d.file)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} dashboard queries failed, returned nothing or have a legend without \
         the node (node {node}, no cluster label):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    println!(
        "{ok} of {total} dashboard queries (panel targets and variables) returned what they \
         should from Prometheus scraping a live agent (node {node:?}, job sonde, no cluster \
         label: cluster variables empty, All matches); {legends_checked} per-node queries have \
         a legend naming the node ({rounds} rounds of loopback traffic, {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
}

/// Client-side `kubectl apply` keeps the whole object in an annotation, and
/// an object's annotations may hold at most 256 KiB.
const APPLY_ANNOTATION_LIMIT: usize = 256 * 1024;

#[test]
fn dashboards_ship_as_configmaps_for_the_grafana_sidecar() {
    assert!(
        have("kubernetes-validate"),
        "kubernetes-validate is not installed; install it with `pip install kubernetes-validate` \
         (.ci/run does)"
    );
    let dir = repo_path(DASHBOARDS_DIR);
    let files: BTreeSet<String> = dashboards::load_all().into_iter().map(|d| d.file).collect();

    // The kustomization generates one ConfigMap per dashboard file, with
    // the sidecar's label and stable names.
    let kustomization = yaml::to_json(&dir.join("kustomization.yaml"))
        .pop()
        .expect("dashboards/kustomization.yaml holds a document");
    let options = &kustomization["generatorOptions"];
    assert_eq!(
        options["labels"]["grafana_dashboard"], "1",
        "generatorOptions.labels: grafana_dashboard: \"1\" (the sidecar's default label)"
    );
    assert_eq!(
        options["disableNameSuffixHash"], true,
        "generatorOptions.disableNameSuffixHash: true (stable names; the sidecar reloads in place)"
    );
    let listed: BTreeSet<String> = kustomization["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["files"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    assert_eq!(
        listed, files,
        "{DASHBOARDS_DIR}/kustomization.yaml configMapGenerator files vs the dashboards"
    );
    if !have("kubectl") {
        println!(
            "kubectl not installed: {DASHBOARDS_DIR}/kustomization.yaml lists the {} dashboards; \
             kustomize build not checked",
            files.len()
        );
        return;
    }

    // What kustomize renders: valid ConfigMaps carrying the files as they are.
    let tmp = TempDir::new("dashboards-kustomize");
    let built = must_succeed(
        Command::new("kubectl").arg("kustomize").arg(&dir),
        Duration::from_secs(60),
    );
    let out = tmp.write("built.yaml", &built);
    let report = kubernetes_validate(&[&out], None);
    kubernetes_validate(&[&out], Some("1.27"));
    let objects = yaml::to_json(&out);
    assert_eq!(
        report.lines().filter(|l| l.contains("passed")).count(),
        objects.len(),
        "kubernetes-validate did not pass every object:\n{report}"
    );
    let mut problems = Vec::new();
    let mut shipped = BTreeSet::new();
    let mut sizes = Vec::new();
    for o in &objects {
        let name = o["metadata"]["name"].as_str().unwrap_or("?");
        if o["kind"] != "ConfigMap" {
            problems.push(format!(
                "{name}: a {} (only ConfigMaps expected)",
                o["kind"]
            ));
            continue;
        }
        if o["metadata"]["labels"]["grafana_dashboard"] != "1" {
            problems.push(format!("{name}: no label grafana_dashboard: \"1\""));
        }
        let data = o["data"].as_object().cloned().unwrap_or_default();
        if data.len() != 1 {
            problems.push(format!(
                "{name}: {} data keys, want one dashboard",
                data.len()
            ));
        }
        for (key, text) in &data {
            let text = text.as_str().unwrap_or_default();
            let committed = std::fs::read_to_string(dir.join(key)).unwrap_or_default();
            if text != committed {
                problems.push(format!(
                    "{name}: data {key} differs from {DASHBOARDS_DIR}/{key}"
                ));
            }
            let size = serde_json::to_string(o).map(|s| s.len()).unwrap_or(0);
            if size >= APPLY_ANNOTATION_LIMIT {
                problems.push(format!(
                    "{name}: {size} bytes, too big for client-side kubectl apply \
                     ({APPLY_ANNOTATION_LIMIT})"
                ));
            }
            sizes.push(format!("{name} {} KiB", size / 1024));
            shipped.insert(key.clone());
        }
    }
    assert!(
        problems.is_empty(),
        "kubectl kustomize {DASHBOARDS_DIR}:\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(
        shipped, files,
        "dashboards shipped as ConfigMaps vs the files"
    );
    println!(
        "kubectl kustomize {DASHBOARDS_DIR}: {} ConfigMaps labelled grafana_dashboard=1 pass \
         kubernetes-validate --strict (1.27 and the newest schema), each carrying its dashboard \
         byte for byte: {}",
        objects.len(),
        sizes.join(", ")
    );
}

// ---------------------------------------------------------------- kubernetes

fn kubernetes_validate(files: &[&Path], version: Option<&str>) -> String {
    let mut c = Command::new("kubernetes-validate");
    c.arg("--strict");
    if let Some(v) = version {
        c.args(["-k", v]);
    }
    c.args(files);
    let out = run_with_timeout(&mut c, Duration::from_secs(120));
    let text = output_text(&out);
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "kubernetes-validate --strict{} failed ({}):\n{text}",
        version.map(|v| format!(" -k {v}")).unwrap_or_default(),
        out.status
    );
    text
}

fn mem_bytes(q: &str) -> u64 {
    let (num, mult) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1));
    num.parse::<u64>()
        .unwrap_or_else(|e| panic!("memory quantity {q:?}: {e}"))
        * mult
}

#[test]
fn kubernetes_manifests_validate() {
    assert!(
        have("kubernetes-validate"),
        "kubernetes-validate is not installed; install it with `pip install kubernetes-validate` \
         (.ci/run does)"
    );

    // The PrometheusRule carries alerts.yml's groups.
    check_generated(
        &format!("{K8S_MONITORING_DIR}/prometheusrule.yaml"),
        &prometheus_rule_yaml(&read_repo_file(ALERTS)),
        "kubernetes",
    );

    let yaml_files = |dir: &str| {
        let mut files: Vec<_> = std::fs::read_dir(repo_path(dir))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        files
    };
    let mut core = Vec::new();
    let mut objects: BTreeMap<String, Value> = BTreeMap::new();
    let mut crds = Vec::new();
    for dir in [K8S_DIR, K8S_MONITORING_DIR] {
        let files = yaml_files(dir);
        let mut kustomization = None;
        for f in &files {
            for doc in yaml::to_json(f) {
                let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
                let kind = doc["kind"].as_str().unwrap_or_default().to_string();
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                match (api.as_str(), kind.as_str()) {
                    ("kustomize.config.k8s.io/v1beta1", "Kustomization")
                    | ("kustomize.config.k8s.io/v1alpha1", "Component") => {
                        kustomization = Some(doc)
                    }
                    ("monitoring.coreos.com/v1", "PodMonitor" | "PrometheusRule") => {
                        assert_eq!(
                            dir, K8S_MONITORING_DIR,
                            "{name}: Prometheus Operator objects belong in the monitoring \
                             component, not the base (which must apply on a bare cluster)"
                        );
                        crds.push(format!("{name}: {kind}"));
                        objects.insert(kind, doc);
                    }
                    (a, k) if a.contains("monitoring.coreos.com") => {
                        panic!("{name}: unexpected {a} {k}")
                    }
                    ("", _) | (_, "") => panic!("{name}: a document without apiVersion or kind"),
                    _ => {
                        if !core.contains(f) {
                            core.push(f.clone());
                        }
                        // Kustomize's own inputs (the component's settings)
                        // never reach the cluster.
                        let local = doc["metadata"]["annotations"]["config.kubernetes.io/local-config"]
                            == "true";
                        if !local {
                            objects.insert(kind, doc);
                        }
                    }
                }
            }
        }
        // Each kustomization lists every manifest beside it.
        let kustomization =
            kustomization.unwrap_or_else(|| panic!("{dir} has a kustomization.yaml"));
        let listed: BTreeSet<String> = kustomization["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let present: BTreeSet<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .filter(|n| n != "kustomization.yaml")
            .collect();
        assert_eq!(
            listed, present,
            "{dir}/kustomization.yaml resources vs the files beside it"
        );
    }
    let core_refs: Vec<&Path> = core.iter().map(|p| p.as_path()).collect();
    // Strictly against the newest schema the validator ships and an older one.
    let report = kubernetes_validate(&core_refs, None);
    kubernetes_validate(&core_refs, Some("1.27"));
    let passed = report.lines().filter(|l| l.contains("passed")).count();
    assert_eq!(
        passed,
        core.len(),
        "kubernetes-validate did not pass every core manifest:\n{report}"
    );

    // The image is named in one place: the base's `images:` sets it.
    let daemonset_text = read_repo_file(&format!("{K8S_DIR}/daemonset.yaml"));
    assert!(
        daemonset_text.contains("image: sonde\n") && !daemonset_text.contains("localhost/"),
        "daemonset.yaml names the image `sonde`, which kustomization.yaml's images: sets"
    );
    if have("kubectl") {
        let tmp = TempDir::new("kustomize");
        let build = |dir: &str| {
            let built = must_succeed(
                Command::new("kubectl").arg("kustomize").arg(repo_path(dir)),
                Duration::from_secs(60),
            );
            let out = tmp.write(&format!("{}.yaml", dir.replace('/', "-")), &built);
            kubernetes_validate(&[&out], None);
            (built, yaml::to_json(&out))
        };
        // The base applies on a bare cluster: no custom resources.
        let (_, base) = build(K8S_DIR);
        let base_kinds: Vec<&str> = base.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert!(
            base.iter().all(|d| !d["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .contains("monitoring.coreos.com")),
            "kubectl kustomize {K8S_DIR} must need no CRDs: {base_kinds:?}"
        );
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "DaemonSet",
            "Service",
            "NetworkPolicy",
        ] {
            assert!(
                base_kinds.contains(&kind),
                "the base lacks a {kind}: {base_kinds:?}"
            );
        }
        let image = base
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].clone());
        assert_eq!(
            image,
            Some(Value::from("localhost/sonde:latest")),
            "the base's images: entry sets the DaemonSet's image"
        );
        // With the component: the operator's objects carry the selector label
        // and absolute runbook URLs, from the component's settings.
        let (_, with) = build(K8S_WITH_MONITORING);
        let mut seen = Vec::new();
        for d in &with {
            assert_ne!(
                d["metadata"]["name"], "sonde-monitoring-settings",
                "the component's settings ConfigMap must stay out of the output (local-config)"
            );
            let kind = d["kind"].as_str().unwrap_or_default();
            if !matches!(kind, "PodMonitor" | "PrometheusRule") {
                continue;
            }
            seen.push(kind.to_owned());
            assert_eq!(
                d["metadata"]["labels"]["release"], "kube-prometheus-stack",
                "{kind}: the release label kube-prometheus-stack's default selector matches"
            );
            for group in d["spec"]["groups"].as_array().into_iter().flatten() {
                for rule in group["rules"].as_array().into_iter().flatten() {
                    let url = rule["annotations"]["runbook_url"]
                        .as_str()
                        .unwrap_or_default();
                    assert!(
                        url.starts_with("https://") && url.contains("/runbook.md#"),
                        "{}: runbook_url {url:?} is not an absolute link to a runbook section",
                        rule["alert"]
                    );
                }
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            ["PodMonitor", "PrometheusRule"],
            "{K8S_WITH_MONITORING}"
        );
        println!(
            "kubectl kustomize: {K8S_DIR} ({} objects, no CRDs) and {K8S_WITH_MONITORING} \
             ({} objects) built and validated",
            base.len(),
            with.len()
        );
    } else {
        println!("kubectl not installed: kustomize builds not checked");
    }

    // The PrometheusRule's spec is a valid rule file.
    let rule = &objects["PrometheusRule"];
    let tmp = TempDir::new("prometheusrule");
    let rules_file = tmp.write("rules.yml", &rule["spec"].to_string());
    must_succeed(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules_file),
        Duration::from_secs(60),
    );

    // The DaemonSet: least privilege, host namespaces, probes, mounts.
    let ds = &objects["DaemonSet"];
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let mut problems = Vec::new();
    let mut want = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_string());
        }
    };
    want(pod["hostNetwork"] == true, "hostNetwork: true");
    want(pod["hostPID"] == true, "hostPID: true (host tids in /proc)");
    want(
        pod["tolerations"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["operator"] == "Exists" && t["key"].is_null())
        }),
        "a toleration with operator Exists and no key (every node)",
    );
    want(sc["privileged"] == false, "privileged: false");
    want(
        sc["allowPrivilegeEscalation"] == false,
        "allowPrivilegeEscalation: false",
    );
    want(
        sc["readOnlyRootFilesystem"] == true,
        "readOnlyRootFilesystem: true",
    );
    want(
        sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "capabilities.drop: [ALL]",
    );
    let added: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    want(
        added == CAPS.iter().copied().collect(),
        "capabilities.add: exactly BPF, PERFMON, NET_ADMIN, SYS_RESOURCE",
    );
    for (probe, path) in [
        ("startupProbe", "/health/startup"),
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
    ] {
        want(
            c[probe]["httpGet"]["path"] == path && c[probe]["httpGet"]["port"] == "metrics",
            &format!("{probe} on {path}, port metrics"),
        );
    }
    let port_ok = c["ports"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == 9745)
    });
    want(port_ok, "container port 9745 named metrics");
    for path in ["/sys/kernel/tracing", "/sys/kernel/btf"] {
        want(
            c["volumeMounts"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["mountPath"] == path && m["readOnly"] == true)
            }),
            &format!("{path} mounted read-only"),
        );
    }
    let svc = &objects["Service"];
    want(
        svc["spec"]["clusterIP"] == "None",
        "headless Service (clusterIP: None)",
    );
    want(
        svc["spec"]["ports"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["name"] == "metrics" && p["port"] == 9745)
        }),
        "Service port 9745 named metrics",
    );
    let pm = &objects["PodMonitor"];
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let job_label = pm["spec"]["jobLabel"].as_str().unwrap_or_default();
    want(
        pod_labels[job_label] == "sonde",
        "PodMonitor jobLabel names a pod label whose value is sonde (job=\"sonde\" in the alerts)",
    );
    want(
        pm["spec"]["selector"]["matchLabels"]
            .as_object()
            .is_some_and(|m| m.iter().all(|(k, v)| pod_labels[k] == *v)),
        "PodMonitor selector matches the DaemonSet's pods",
    );
    want(
        pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics",
        "PodMonitor scrapes port metrics",
    );
    assert!(
        problems.is_empty(),
        "daemonset/service/podmonitor: want\n  {}",
        problems.join("\n  ")
    );

    // The ConfigMap's config runs, and the measured footprint fits the
    // resources (needs root: it loads the programs).
    let config = objects["ConfigMap"]["data"]["sonde.toml"]
        .as_str()
        .expect("ConfigMap data sonde.toml")
        .to_string();
    let limits = &c["resources"]["limits"];
    let requests = &c["resources"]["requests"];
    let limit = mem_bytes(limits["memory"].as_str().expect("a memory limit"));
    let request = mem_bytes(requests["memory"].as_str().expect("a memory request"));
    assert!(
        limits["cpu"].is_null(),
        "no CPU limit (throttling turns into lost events)"
    );
    if sys::require_root() {
        let tmp = TempDir::new("configmap");
        let path = tmp.write("sonde.toml", &config);
        let out = must_succeed(
            sys::sonde_command()
                .arg("check")
                .arg("--config")
                .arg(&path)
                .args(["--interface", "lo"]),
            Duration::from_secs(60),
        );
        assert!(
            out.contains("result            ok"),
            "sonde check with the ConfigMap's config:\n{out}"
        );
        let agent = Agent::start(&config, &["--interface", "lo"]);
        std::thread::sleep(Duration::from_secs(2));
        let f = footprint::measure(agent.pid());
        let rss_metric = agent
            .metrics()
            .value("process_resident_memory_bytes", &[])
            .unwrap_or(0.0);
        let at_64 = f.map_bytes_at(64);
        println!(
            "footprint with the ConfigMap's config ({} build): RSS {:.1} MiB \
             (process_resident_memory_bytes {:.1} MiB), {} BPF maps {:.1} MiB on {} CPUs \
             ({:.2} MiB per CPU; {:.1} MiB at 64 CPUs); request {:.0} MiB, limit {:.0} MiB",
            if cfg!(debug_assertions) {
                "test"
            } else {
                "release"
            },
            mib(f.rss_bytes),
            mib(rss_metric as u64),
            f.maps,
            mib(f.map_bytes),
            f.cpus,
            mib(f.percpu_map_bytes / f.cpus.max(1)),
            mib(at_64),
            mib(request),
            mib(limit)
        );
        assert!(
            request >= f.map_bytes,
            "memory request {:.0} MiB is below the BPF maps alone ({:.1} MiB)",
            mib(request),
            mib(f.map_bytes)
        );
        assert!(
            limit >= f.rss_bytes + at_64,
            "memory limit {:.0} MiB is below RSS + maps on a 64-CPU node ({:.1} MiB)",
            mib(limit),
            mib(f.rss_bytes + at_64)
        );
    }
    println!(
        "kubernetes: {} core manifests pass kubernetes-validate --strict (1.27 and the newest \
         schema); CRDs checked for shape only: {crds:?}",
        core.len()
    );
}

// ---------------------------------------------------------------- systemd

fn unit_caps(unit: &str, key: &str) -> BTreeSet<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace())
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect()
}

/// Capabilities in this process's bounding set (from /proc/self/status).
fn bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0)
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit known for CAP_{other}"),
    }
}

/// `sonde check --interface lo` with exactly `caps` (as uid 0, bounding set
/// limited: root gets nothing else on execve).
fn check_with_caps(caps: &[&str]) -> (bool, String) {
    let set = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = Command::new("setpriv");
    c.arg(format!("--bounding-set=-all,{set}"))
        .arg("--inh-caps=-all")
        .arg(sys::sonde_bin())
        .args(["check", "--interface", "lo"]);
    sys::clear_sonde_env(&mut c);
    let out = run_with_timeout(&mut c, Duration::from_secs(60));
    (out.status.success(), output_text(&out))
}

#[test]
fn systemd_unit_verifies_and_its_capabilities_suffice() {
    need_tool("systemd-analyze", "systemd");
    let unit = read_repo_file(UNIT);
    let want: BTreeSet<String> = CAPS.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        unit_caps(&unit, "CapabilityBoundingSet"),
        want,
        "CapabilityBoundingSet"
    );
    assert_eq!(
        unit_caps(&unit, "AmbientCapabilities"),
        want,
        "AmbientCapabilities"
    );
    for line in [
        "ExecStart=/usr/local/bin/sonde run --config /etc/sonde/sonde.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{UNIT} lacks {line:?}");
    }
    assert!(
        !unit.lines().any(|l| l.starts_with("ProtectProc=")),
        "ProtectProc=invisible hides /proc/TID from the collector's stale-start sweep"
    );

    // systemd-analyze verify wants ExecStart to exist: point a copy at the
    // built binary and a test config.
    let tmp = TempDir::new("systemd");
    let config = tmp.write("sonde.toml", &Config::new().render());
    let bin = sys::sonde_bin();
    let copy = unit
        .replace("/usr/local/bin/sonde", &bin.display().to_string())
        .replace("/etc/sonde/sonde.toml", &config.display().to_string());
    let path = tmp.write("sonde.service", &copy);
    let out = run_with_timeout(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        Duration::from_secs(60),
    );
    let text = output_text(&out);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sonde.service") || l.contains("sonde"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {} ({}):\n{text}",
        path.display(),
        out.status
    );
    println!("systemd-analyze verify: clean");

    if !require_root() || !have("setpriv") {
        return;
    }
    // The unit's capabilities suffice (those this machine can grant), and
    // none of the three that every kernel needs can go.
    let bset = bounding_set();
    let grantable: Vec<&str> = CAPS
        .iter()
        .copied()
        .filter(|c| bset & (1 << cap_bit(c)) != 0)
        .collect();
    let (ok, out) = check_with_caps(&grantable);
    assert!(
        ok && out.contains("privileges        ok"),
        "sonde check with only {grantable:?} failed:\n{out}"
    );
    for drop in ["BPF", "PERFMON", "NET_ADMIN"] {
        let fewer: Vec<&str> = grantable.iter().copied().filter(|c| *c != drop).collect();
        let (ok, out) = check_with_caps(&fewer);
        assert!(
            !ok,
            "sonde check succeeded without CAP_{drop} ({fewer:?}):\n{out}"
        );
    }
    // The drop-in for kernels or runtimes without CAP_BPF (docs/deploy.md).
    let (ok, out) = check_with_caps(&["SYS_ADMIN", "NET_ADMIN"]);
    assert!(
        ok,
        "sonde check with CAP_SYS_ADMIN and CAP_NET_ADMIN failed:\n{out}"
    );
    let missing: Vec<&&str> = CAPS.iter().filter(|c| !grantable.contains(c)).collect();
    println!(
        "sonde check passes with exactly {grantable:?} and fails without any of BPF, PERFMON, \
         NET_ADMIN; passes with SYS_ADMIN + NET_ADMIN (the drop-in){}",
        if missing.is_empty() {
            String::new()
        } else {
            format!(" ({missing:?} not in this machine's bounding set, not tried)")
        }
    );
}

// ---------------------------------------------------------------- container

#[test]
fn container_image_runs_sonde_check() {
    if std::env::var("SONDE_CONTAINER_TEST").as_deref() != Ok("1") {
        println!(
            "SKIPPED: set SONDE_CONTAINER_TEST=1 to build the static (musl) binary and the \
             image with podman (minutes on a cold cache)"
        );
        return;
    }
    if !require_root() {
        return;
    }
    need_tool("podman", "podman runc");
    need_tool("runc", "runc");
    let t0 = Instant::now();
    let target_dir = repo_path("target/container");
    let mut build = Command::new("cargo");
    build
        .args([
            "build",
            "--release",
            "-p",
            "sonde",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(sys::workspace_dir());
    sys::clear_sonde_env(&mut build);
    // A cold optimised build of the agent and its TLS stack on 2 cores:
    // about 10 minutes on a quiet machine, more when the machine is busy.
    must_succeed(&mut build, Duration::from_secs(1800));
    let built = t0.elapsed();
    let bin = target_dir.join("x86_64-unknown-linux-musl/release/sonde");
    let file = run_with_timeout(Command::new("file").arg(&bin), Duration::from_secs(10));
    let desc = output_text(&file);
    assert!(
        desc.contains("static"),
        "{} is not a static binary: {desc}",
        bin.display()
    );

    let ctx = TempDir::new("image");
    std::fs::copy(&bin, ctx.path().join("sonde")).expect("copy the binary into the context");
    let tag = format!("localhost/sonde-test:{}", std::process::id());
    let image = container::Image::build(&tag, &repo_path(CONTAINERFILE), ctx.path());

    let profile: Value = serde_json::from_str(
        &std::fs::read_to_string(container::PODMAN_DEFAULT_SECCOMP)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", container::PODMAN_DEFAULT_SECCOMP)),
    )
    .expect("podman's seccomp profile is JSON");
    let seccomp = ctx.write(
        "seccomp.json",
        &container::bpf_seccomp_profile(&profile).to_string(),
    );
    // The three adjustments this machine needs (runc, cgroupfs, ulimits),
    // then least privilege: three capabilities, read-only root, a seccomp
    // profile that allows bpf(2) with CAP_BPF instead of CAP_SYS_ADMIN.
    let mut run = Command::new("podman");
    run.args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "run",
        "--rm",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
        "--cap-drop=ALL",
        "--cap-add=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN",
        "--network",
        "host",
        "--read-only",
        "-v",
        "/sys/kernel/tracing:/sys/kernel/tracing:ro",
    ])
    .arg(format!("--security-opt=seccomp={}", seccomp.display()))
    .args([image.tag.as_str(), "check", "--interface", "lo"]);
    let out = must_succeed(&mut run, Duration::from_secs(120));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel_line = out
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_default();
    assert!(
        kernel_line.contains(release.trim()),
        "no kernel line naming {} in the container's `sonde check`:\n{out}",
        release.trim()
    );
    assert!(
        out.contains("result            ok"),
        "sonde check in the container:\n{out}"
    );
    println!(
        "container: static binary built in {:.0} s, image {tag} runs `sonde check` ({kernel_line}) \
         with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, a read-only root and a derived seccomp \
         profile; {:.0} s in all",
        built.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
