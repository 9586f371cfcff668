//! Scenario 4: /metrics latency with about 10,000 series, from wrk and
//! from a real Prometheus server.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, bail};

use sonde_tests::{
    http,
    ops::servers::{Placement, Prometheus, PrometheusConfig},
    process::scratch_path,
};

use super::{
    Ctx, Def,
    common::{
        Agent, BenchNet, Proc, Scrape,
        bins::{spawn_workload, workload},
        net, start_agent,
    },
    report::{Op, Scenario},
};

pub const DEF: Def = Def {
    id: "scrape",
    title: "Scrape",
    about: "The agent (syscalls and network on the bench veth, `top_peers` raised) exports one \
            `sonde_peer_bytes_total` and one `sonde_peer_packets_total` series per remote \
            peer; one datagram from each of several thousand source addresses in the \
            namespace (`sonde-workload udp-flows`) brings the exposition to about 10,000 \
            series, on top of the syscall histograms. Then `wrk -t1 -c2 --latency` fetches \
            /metrics over loopback for a bounded time (latency percentiles from wrk), and a \
            real Prometheus server scrapes the agent every second (its own \
            `scrape_duration_seconds`, read back through its HTTP API).",
    run,
};

const SINK_PORT: u16 = 40_002;

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let peers: u32 = ctx.pick(4000, 500);
    let wrk_secs: u64 = ctx.pick(10, 2);
    let scrapes: u64 = ctx.pick(20, 3);
    let _net = BenchNet::create()?;
    let to = format!("{}:{SINK_PORT}", net().host_ip);
    let mut sink = spawn_workload(&ctx.bins, None, &[0], &["udp-sink", &to, "600"])?;
    sink.wait_line("ready", Duration::from_secs(5))?;
    let agent = start_agent(
        &ctx.bins,
        &format!("[network]\ntop_peers = {peers}\n"),
        &[net().host_if],
    )?;
    let peers_s = peers.to_string();
    workload(
        &ctx.bins,
        Some(net().netns),
        &[1],
        &["udp-flows", net().peers_first, &peers_s, &to, &peers_s],
        Duration::from_secs(60),
    )?;
    let m = wait_for_peers(&agent, peers as usize)?;
    let series = m.samples.len();
    let body = http::get(agent.addr(), "/metrics")?.body;
    println!("{series} series, {} bytes", body.len());
    s.figure("series exposed", "series", &[series as f64]);
    s.figure("exposition size", "KiB", &[body.len() as f64 / 1024.0]);

    let wrk = wrk(&agent, wrk_secs)?;
    println!(
        "wrk: p50 {:.2} ms, p99 {:.2} ms, {:.0} requests/s",
        wrk.p50_ms, wrk.p99_ms, wrk.rps
    );
    s.figure("wrk /metrics latency p50", "ms", &[wrk.p50_ms]);
    s.figure("wrk /metrics latency p99", "ms", &[wrk.p99_ms]);
    s.figure("wrk requests/s (2 connections)", "req/s", &[wrk.rps]);
    s.target(
        "wrk /metrics latency p99",
        "ms",
        &[wrk.p99_ms],
        Op::AtMost,
        50.0,
    );

    let prom = prometheus(&agent, scrapes)?;
    println!(
        "prometheus: {} scrapes, {} samples per scrape",
        prom.durations_ms.len(),
        prom.samples_scraped
    );
    s.figure(
        "Prometheus scrape_duration_seconds",
        "ms",
        &prom.durations_ms,
    );
    s.figure(
        "Prometheus scrape_samples_scraped",
        "series",
        &[prom.samples_scraped],
    );
    s.raw = serde_json::json!({
        "peers": peers,
        "wrk_seconds": wrk_secs,
        "wrk_output": wrk.output,
        "prometheus_scrapes": scrapes,
        "prometheus_scrape_duration_ms": prom.durations_ms,
    });
    drop(sink);
    Ok(agent.stop()?)
}

/// Scrapes until the peer series are there (or 20 s have passed).
fn wait_for_peers(agent: &Agent, peers: usize) -> anyhow::Result<Scrape> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent.try_metrics()?;
        let n = m.series("sonde_peer_packets_total", &[]).len();
        if n >= peers || std::time::Instant::now() >= deadline {
            if n < peers {
                println!("only {n} of {peers} peers exported after 20 s");
            }
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Wrk {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    output: String,
}

fn wrk(agent: &Agent, secs: u64) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        "-c2",
        &format!("-d{secs}s"),
        "--timeout",
        "5s",
        "--latency",
        &format!("http://{}/metrics", agent.addr()),
    ]);
    let out = Proc::spawn_on("wrk", cmd, &[0])?.finish(Duration::from_secs(secs + 30))?;
    let line = |prefix: &str| -> anyhow::Result<&str> {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no {prefix:?} line in wrk's output:\n{out}"))
    };
    let latency = |pct: &str| -> anyhow::Result<f64> {
        let l = line(pct)?;
        let v = l.split_whitespace().nth(1).unwrap_or_default();
        parse_duration_ms(v).with_context(|| format!("wrk latency {v:?}"))
    };
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw errors:\n{out}");
    }
    let rps = line("Requests/sec:")?
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("wrk Requests/sec")?;
    Ok(Wrk {
        p50_ms: latency("50%")?,
        p99_ms: latency("99%")?,
        rps,
        output: out.clone(),
    })
}

/// wrk's `812.00us`, `6.52ms`, `1.02s` in milliseconds.
fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

pub(super) struct Prom {
    pub durations_ms: Vec<f64>,
    pub samples_scraped: f64,
}

/// A Prometheus server scraping the agent every second, `scrapes` times.
pub(super) fn prometheus(agent: &Agent, scrapes: u64) -> anyhow::Result<Prom> {
    let prom = Prometheus::launch(
        &PrometheusConfig {
            targets: &[agent.addr()],
            interval: "1s",
            rules: None,
            rule_file: None,
            alertmanager: None,
            node: None,
        },
        &Placement {
            dir: Some(scratch_path("prometheus")),
            cpus: vec![0],
            log_level: Some("warn"),
            ..Placement::default()
        },
    )?;
    let addr = prom.server.addr();
    let query = |q: &str| -> anyhow::Result<serde_json::Value> {
        let http::Response { status, body, .. } =
            http::get(addr, &format!("/api/v1/query?query={q}"))?;
        if status != 200 {
            bail!("Prometheus answered {status} to {q}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    };
    // A range selector returns every raw sample of the window. Prometheus
    // starts scraping a few seconds after it is ready: wait for `scrapes`
    // of them, not for a fixed time.
    let range = "scrape_duration_seconds%5B10m%5D";
    let deadline = std::time::Instant::now() + Duration::from_secs(scrapes + 30);
    let durations_ms = loop {
        std::thread::sleep(Duration::from_secs(1));
        let v = query(range)?;
        let d: Vec<f64> = v["data"]["result"][0]["values"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
                    .map(|s| s * 1000.0)
                    .collect()
            })
            .unwrap_or_default();
        if d.len() as u64 >= scrapes {
            break d;
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "Prometheus scraped {} times in 30 s more than planned: {v}",
                d.len()
            );
        }
    };
    let samples = query("scrape_samples_scraped")?;
    let samples_scraped = samples["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    drop(prom);
    Ok(Prom {
        durations_ms,
        samples_scraped,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn wrk_durations() {
        assert_eq!(parse_duration_ms("812.00us"), Some(0.812));
        assert_eq!(parse_duration_ms("6.52ms"), Some(6.52));
        assert_eq!(parse_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(parse_duration_ms("x"), None);
    }
}
