//! The `/metrics` exposition: valid for `promtool check metrics`, served with
//! the text format's content type, well-formed histograms, and the
//! self-telemetry series.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::collections::BTreeMap;

use sonde_tests::sys::{self, wait_timeout};
use sonde_tests::{Agent, Config, LAB_HOST_IP, LAB_IF, Lab, Scrape, Workload, require_root};

/// Labels of a series other than `le`, sorted.
type SeriesKey = Vec<(String, String)>;

/// Structural problems in the histograms of a scrape: every series of a
/// `# TYPE x histogram` family needs cumulative `x_bucket` series ending in
/// `le="+Inf"` (the format's spelling), equal to `x_count`.
fn histogram_problems(scrape: &Scrape) -> Vec<String> {
    let mut problems = Vec::new();
    let families: Vec<&str> = scrape
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    for family in families {
        let bucket_name = format!("{family}_bucket");
        let mut groups: BTreeMap<SeriesKey, Vec<(String, f64)>> = BTreeMap::new();
        for b in scrape.series(&bucket_name, &[]) {
            let mut key: SeriesKey = b
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            key.sort();
            let le = b.label("le").unwrap_or("(missing)").to_string();
            groups.entry(key).or_default().push((le, b.value));
        }
        for (key, buckets) in groups {
            let labels: Vec<(&str, &str)> =
                key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let at = format!("{bucket_name}{labels:?}");
            let Some(inf) = buckets.iter().find(|(le, _)| le == "+Inf") else {
                let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
                problems.push(format!("{at}: no le=\"+Inf\" bucket; le values: {les:?}"));
                continue;
            };
            let count = scrape.value(&format!("{family}_count"), &labels);
            if count != Some(inf.1) {
                problems.push(format!(
                    "{at}: le=\"+Inf\" bucket is {} but {family}_count is {count:?}",
                    inf.1
                ));
            }
            let mut bounded: Vec<(f64, f64)> = Vec::new();
            for (le, v) in &buckets {
                match le.parse::<f64>() {
                    Ok(b) if le != "+Inf" => bounded.push((b, *v)),
                    Ok(_) => {}
                    Err(_) => problems.push(format!("{at}: le={le:?} is not a number")),
                }
            }
            bounded.sort_by(|a, b| a.0.total_cmp(&b.0));
            bounded.push((f64::INFINITY, inf.1));
            if bounded.windows(2).any(|w| w[1].1 < w[0].1) {
                problems.push(format!(
                    "{at}: bucket counts are not cumulative: {bounded:?}"
                ));
            }
        }
    }
    problems
}

#[test]
fn live_scrape_passes_promtool() {
    if !require_root() {
        return;
    }
    sys::need_tool("promtool", "prometheus");
    // Network side on, and a little traffic and syscall work, so that every
    // metric family has series.
    let lab = Lab::start(Config::new());
    let sink_addr = format!("{LAB_HOST_IP}:40110");
    let mut sink = Workload::spawn(&["udp-sink", &sink_addr, "30"]);
    sink.expect_line("ready", Duration::from_secs(10));
    Workload::run_in(
        &lab.ns,
        &["udp-send", &sink_addr, "100", "64"],
        Duration::from_secs(30),
    );
    Workload::run(&["close-bad", "100"], Duration::from_secs(10));
    let scrape = lab.agent.wait_for(
        &format!("packet series for {LAB_IF}"),
        Duration::from_secs(5),
        |s| {
            !s.series("sonde_packets_total", &[("interface", LAB_IF)])
                .is_empty()
        },
    );

    let response = lab.agent.request("GET", "/metrics");
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "/metrics Content-Type is {content_type:?}, expected text/plain; version=0.0.4"
    );

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(response.body.as_bytes())
        .expect("feed /metrics to promtool");
    if wait_timeout(&mut child, Duration::from_secs(30)).is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics rejected the live scrape ({}):\n{said}",
        out.status
    );
    if !said.trim().is_empty() {
        println!("promtool check metrics said:\n{said}");
    }

    // Self-telemetry every scrape must carry.
    let build = scrape.series(
        "sonde_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
    );
    assert!(
        build.len() == 1 && build[0].value == 1.0,
        "expected sonde_build_info{{version=\"{}\",...}} 1:\n{}",
        env!("CARGO_PKG_VERSION"),
        scrape.grep("sonde_build_info")
    );
    let rss = scrape.value_or_zero("process_resident_memory_bytes", &[]);
    assert!(rss > 0.0, "process_resident_memory_bytes is {rss}");
    assert!(
        scrape.value("process_cpu_seconds_total", &[]).is_some(),
        "process_cpu_seconds_total is missing"
    );
}

#[test]
fn histograms_are_well_formed() {
    if !require_root() {
        return;
    }
    let agent = Agent::start(&Config::new().render(), &[]);
    Workload::run(&["close-bad", "100"], Duration::from_secs(10));
    let scrape = agent.wait_for("syscall latency histograms", Duration::from_secs(5), |s| {
        !s.series("sonde_syscall_duration_seconds_bucket", &[])
            .is_empty()
    });
    let problems = histogram_problems(&scrape);
    assert!(
        problems.is_empty(),
        "{} malformed histogram series in /metrics; the first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
