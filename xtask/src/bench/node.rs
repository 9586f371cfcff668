//! Scenario 7: what one node's agent costs as the node grows: interfaces
//! (pods' veths appearing and going away), cgroups, remote peers, and CPUs
//! (projected from the per-CPU maps' sizes). Each curve's points are
//! measured on one agent with the defaults, at each size in turn.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, UdpSocket},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sonde_tests::{
    NetNs, Scrape,
    cgroup::TestCgroup,
    http,
    ops::footprint::{held_links, held_maps, possible_cpus},
};

use super::{
    Ctx, Def,
    common::{
        Agent, BenchNet,
        bins::udp_flows,
        kernel::{proc_cpu, proc_mem},
        net, start_agent,
        stats::median,
    },
    report::{Op, Panel, Scenario, Series},
};

pub const DEF: Def = Def {
    id: "node",
    title: "Scale per node",
    about: "One agent with the defaults (`[mapek] govern_cost = false`, so that shedding \
            does not flatten a curve) at each size in turn. *Interfaces*: veth pairs into a \
            namespace, created 10 per second, found by the agent's rescan (no interface \
            list, as in the DaemonSet), one UDP datagram sent out of each and answered, \
            then removed 10 per second. *Cgroups*: child cgroups of one parent, a short \
            `sonde-workload getppid` run in each, 25 at a time on the 2 CPUs so that they \
            wait for a CPU. *Peers*: distinct source addresses, one UDP datagram each, into \
            the bench veth (`sonde-workload udp-flows`). At each point, over a window of \
            1 s collection cycles with one scrape a second: the agent's CPU time per \
            cycle, its RSS, the kernel memory of its maps (memlock in fdinfo), its BPF \
            links, the series in `/metrics` and the scrape's time. *CPUs*: the maps' \
            memory at N CPUs, from their per-CPU value areas (value size × entries × \
            CPUs), since this machine has only its own.",
    run,
};

/// The agent's configuration for every curve.
const CONFIG: &str = "[mapek]\ngovern_cost = false\n";

/// The namespace the interface curve's veth peers live in.
const IF_NS: &str = "sonde-bench-if";
/// Interfaces created or removed per second.
const IF_RATE: usize = 10;
/// The parent of the cgroup curve's cgroups.
const CG_PARENT: &str = "sonde-bench-cg";
/// Cgroups whose workload runs at once.
const CG_BATCH: usize = 25;

/// What one point on a curve measured.
#[derive(Debug, Clone, Default)]
struct Point {
    /// Series per metric family (histograms' lines under their family).
    families: BTreeMap<String, usize>,
    cpu_ms: f64,
    rss_mb: f64,
    maps_mib: f64,
    links: f64,
    series: f64,
    scrape_ms: f64,
    collector_ms: f64,
}

impl Point {
    /// Series less those of the per-syscall families, which grow with the
    /// distinct syscalls the node makes (the bench's own `ip`, `sh`, …),
    /// not with the dimension measured.
    fn series_beside_syscalls(&self) -> f64 {
        self.series
            - self
                .families
                .iter()
                .filter(|(f, _)| f.starts_with(SYSCALL_FAMILIES))
                .map(|(_, &n)| n as f64)
                .sum::<f64>()
    }
}

/// The prefix of the families with one or more series per syscall id.
const SYSCALL_FAMILIES: &str = "sonde_syscall";

/// One curve: (size, point) in order of size.
type Curve = Vec<(f64, Point)>;

fn run(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let mut curves: Vec<(&'static str, Curve)> = Vec::new();
    let interfaces = interfaces(ctx, s)?;
    curves.push(("interfaces", interfaces));
    let cgroups = cgroups(ctx, s)?;
    curves.push(("cgroups", cgroups));
    let peers = peers(ctx, s)?;
    curves.push(("peers", peers));
    for (what, curve) in &curves {
        slopes(s, what, curve);
    }
    cpus(ctx, s)?;
    let panel = |title: &str, y: &str, f: fn(&Point) -> f64| Panel {
        title: title.into(),
        x_label: "interfaces, cgroups or peers".into(),
        y_label: y.into(),
        log_x: false,
        series: curves
            .iter()
            .map(|(what, c)| Series {
                name: (*what).into(),
                points: c.iter().map(|(x, p)| (*x, f(p))).collect(),
            })
            .collect(),
    };
    s.charts.push(panel(
        "Agent CPU per 1 s cycle vs node size",
        "ms per cycle",
        |p| p.cpu_ms,
    ));
    s.charts
        .push(panel("/metrics series vs node size", "series", |p| {
            p.series
        }));
    s.raw = serde_json::json!({
        "curves": curves.iter().map(|(what, c)| serde_json::json!({
            "dimension": what,
            "points": c.iter().map(|(x, p)| serde_json::json!({
                "size": x, "cpu_ms_per_cycle": p.cpu_ms, "rss_mb": p.rss_mb,
                "maps_mib": p.maps_mib, "links": p.links, "series": p.series,
                "scrape_ms": p.scrape_ms, "collector_ms": p.collector_ms,
                "series_by_family": p.families,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    Ok(())
}

/// Measures `agent` over `window` collection cycles, scraping once a
/// second (the scrapes' cost is in the CPU figure, as Prometheus's is).
fn measure(agent: &Agent, window: usize) -> anyhow::Result<Point> {
    let pid = agent.pid();
    let (cpu0, t0) = (proc_cpu(pid)?, Instant::now());
    let (mut scrape_ms, mut collector_ms, mut series) = (Vec::new(), Vec::new(), 0.0);
    let mut families = BTreeMap::new();
    for _ in 0..window {
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        let r = http::get(agent.addr(), "/metrics").context("scraping /metrics")?;
        scrape_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.status != 200 {
            bail!("/metrics answered {}", r.status);
        }
        families = series_by_family(&r.body);
        series = families.values().sum::<usize>() as f64;
        let m = Scrape::try_parse(&r.body).map_err(anyhow::Error::msg)?;
        collector_ms.push(m.sum("sonde_collector_duration_seconds", &[]) * 1000.0);
    }
    let cycles = t0.elapsed().as_secs_f64(); // interval_ms = 1000
    let maps = held_maps(pid);
    Ok(Point {
        families,
        cpu_ms: (proc_cpu(pid)? - cpu0) * 1000.0 / cycles,
        rss_mb: proc_mem(pid)?.rss,
        maps_mib: maps.iter().map(|m| m.memlock as f64).sum::<f64>() / 1048576.0,
        links: held_links(pid) as f64,
        series,
        scrape_ms: median(&scrape_ms),
        collector_ms: median(&collector_ms),
    })
}

/// Series in an exposition body (its lines that are neither comments nor
/// blank), by family: the name before `{` or a space, less a histogram's
/// `_bucket`, `_sum` or `_count`.
fn series_by_family(body: &str) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap_or(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        *by.entry(family.to_string()).or_insert(0) += 1;
    }
    by
}

/// The families whose series count changed most from `a` to `b`.
fn grew(a: &Point, b: &Point) -> String {
    let mut d: Vec<(String, i64)> = b
        .families
        .iter()
        .map(|(f, &n)| {
            (
                f.clone(),
                n as i64 - *a.families.get(f).unwrap_or(&0) as i64,
            )
        })
        .chain(
            a.families
                .iter()
                .filter(|(f, _)| !b.families.contains_key(*f))
                .map(|(f, &n)| (f.clone(), -(n as i64))),
        )
        .filter(|(_, n)| *n != 0)
        .collect();
    d.sort_by_key(|(_, n)| std::cmp::Reverse(n.abs()));
    d.iter()
        .take(6)
        .map(|(f, n)| format!("{f} {n:+}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints and records one point of the `what` curve at `size`, and adds it
/// to `curve`.
fn record(s: &mut Scenario, curve: &mut Curve, what: &str, size: usize, p: Point) {
    if let Some((_, last)) = curve.last() {
        println!("       series changed: {}", grew(last, &p));
    }
    println!(
        "{size:>6} {what}: CPU {:6.2} ms/cycle, collector {:6.2} ms, RSS {:5.1} MB, maps {:5.1} MiB, \
         {} links, {} series, scrape {:5.2} ms",
        p.cpu_ms, p.collector_ms, p.rss_mb, p.maps_mib, p.links, p.series, p.scrape_ms
    );
    let at = format!("{size} {what}");
    s.figure_any(format!("{at}: agent CPU per cycle"), "ms", &[p.cpu_ms]);
    s.figure(format!("{at}: agent RSS"), "MB", &[p.rss_mb]);
    s.figure(format!("{at}: kernel map memory"), "MiB", &[p.maps_mib]);
    s.figure(format!("{at}: /metrics series"), "series", &[p.series]);
    s.figure(format!("{at}: scrape time"), "ms", &[p.scrape_ms]);
    curve.push((size as f64, p));
}

/// The slope of each figure from the curve's first point to its last.
fn slopes(s: &mut Scenario, what: &str, curve: &Curve) {
    let (Some((x0, a)), Some((x1, b))) = (curve.first(), curve.last()) else {
        return;
    };
    let dx = x1 - x0;
    if dx <= 0.0 {
        return;
    }
    let one = what.trim_end_matches('s');
    s.note(format!(
        "From {x0} to {x1} {what}, the series that changed most: {}.",
        grew(a, b)
    ));
    s.figure_any(
        format!("per {one}: agent CPU per cycle"),
        "µs",
        &[(b.cpu_ms - a.cpu_ms) * 1000.0 / dx],
    );
    s.figure_any(
        format!("per {one}: agent RSS"),
        "KB",
        &[(b.rss_mb - a.rss_mb) * 1000.0 / dx],
    );
    s.figure_any(
        format!("per {one}: /metrics series"),
        "series",
        &[(b.series - a.series) / dx],
    );
    s.figure_any(
        format!("per {one}: /metrics series, per-syscall families aside"),
        "series",
        &[(b.series_beside_syscalls() - a.series_beside_syscalls()) / dx],
    );
    s.figure_any(
        format!("per {one}: scrape time"),
        "µs",
        &[(b.scrape_ms - a.scrape_ms) * 1000.0 / dx],
    );
}

/// The agent's accounted interfaces, by its status API.
fn attached(agent: &Agent) -> anyhow::Result<Vec<String>> {
    let r = agent.try_request("GET", "/api/v1/status")?;
    let v: serde_json::Value = serde_json::from_str(&r.body).context("parsing /api/v1/status")?;
    Ok(v["interfaces"]
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until `done(interfaces the agent accounts)`, or fails after 30 s.
fn wait_attached(agent: &Agent, done: impl Fn(&[String]) -> bool) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let now = attached(agent)?;
        if done(&now) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!(
                "after 30 s the agent accounts {} interfaces: {now:?}",
                now.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Veth pair `i`'s names (host end, namespace end) and the addresses of
/// its /30 from 198.18.64.0/18 (benchmarking range, RFC 2544).
fn pair(i: usize) -> (String, String, Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(198, 18, 64, 0)) + 4 * i as u32;
    (
        format!("sbif{i}"),
        format!("sbip{i}"),
        Ipv4Addr::from(base + 1),
        Ipv4Addr::from(base + 2),
    )
}

/// Runs `ip [-n NS] -batch -` with `lines`.
fn ip_batch(netns: Option<&str>, lines: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("ip's stdin")?
        .write_all(lines.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Applies `chunk(range)` to `from..to` at [`IF_RATE`] a second.
fn at_rate(
    from: usize,
    to: usize,
    mut chunk: impl FnMut(std::ops::Range<usize>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut i = from;
    while i < to {
        let t = Instant::now();
        let end = (i + IF_RATE).min(to);
        chunk(i..end)?;
        i = end;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    Ok(())
}

fn interfaces(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<Curve> {
    let counts: &[usize] = ctx.pick(&[0, 100, 250, 500], &[0, 20]);
    let window = ctx.pick(5, 2);
    let _ns = NetNs::try_new(IF_NS)?; // removing it removes any pair left
    let agent = start_agent(&ctx.bins, CONFIG, &[])?;
    let ours = |names: &[String]| names.iter().filter(|n| n.starts_with("sbif")).count();
    let before = attached(&agent)?.len();
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let mut curve = Vec::new();
    let mut made = 0;
    for &n in counts {
        at_rate(made, n, |range| {
            let (mut host, mut peer) = (String::new(), String::new());
            for i in range {
                let (h, p, ha, pa) = pair(i);
                host += &format!(
                    "link add {h} type veth peer name {p} netns {IF_NS}\n\
                     addr add {ha}/30 dev {h}\nlink set {h} up\n"
                );
                peer += &format!("addr add {pa}/30 dev {p}\nlink set {p} up\n");
            }
            ip_batch(None, &host)?;
            ip_batch(Some(IF_NS), &peer)
        })?;
        made = n;
        let lag = wait_attached(&agent, |now| ours(now) == n)?;
        // Traffic on each, both ways: a datagram out, the port-unreachable
        // reply in.
        for i in 0..n {
            socket.send_to(b"sonde", (pair(i).3, 9))?;
        }
        std::thread::sleep(Duration::from_secs(2));
        let p = measure(&agent, window)?;
        if Some(&n) == counts.last() {
            // The referee for the series count: what Prometheus ingests.
            let prom = super::scrape::prometheus(&agent, 5)?;
            println!(
                "{n} interfaces: Prometheus ingests {} samples per scrape ({} counted here), scrape {:.1} ms",
                prom.samples_scraped,
                p.series,
                median(&prom.durations_ms)
            );
            s.figure(
                format!("{n} interfaces: samples per scrape, by Prometheus"),
                "samples",
                &[prom.samples_scraped],
            );
            s.figure(
                format!("{n} interfaces: Prometheus scrape duration"),
                "ms",
                &prom.durations_ms,
            );
        }
        record(s, &mut curve, "interfaces", n, p);
        if n > 0 {
            s.figure(
                format!("{n} interfaces: attached after the last was created"),
                "s",
                &[lag.as_secs_f64()],
            );
        }
    }
    let links_before = curve.first().map_or(0.0, |(_, p)| p.links);
    let links_at_max = curve.last().map_or(0.0, |(_, p)| p.links);
    s.figure_any(
        "interfaces: BPF links per interface",
        "links",
        &[(links_at_max - links_before) / made.max(1) as f64],
    );
    at_rate(0, made, |range| {
        let lines: String = range.map(|i| format!("link del {}\n", pair(i).0)).collect();
        ip_batch(None, &lines)
    })?;
    let lag = wait_attached(&agent, |now| now.len() == before && ours(now) == 0)?;
    s.figure(
        format!("{made} interfaces removed: forgotten after the last went"),
        "s",
        &[lag.as_secs_f64()],
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = measure(&agent, window)?;
    let m = agent.try_metrics()?;
    let left = m
        .samples
        .iter()
        .filter(|x| x.label("interface").is_some_and(|i| i.starts_with("sbif")))
        .count();
    println!(
        "after removing {made}: {left} series still name one, {} links (before: {links_before}), RSS {:.1} MB",
        after.links, after.rss_mb
    );
    s.target(
        "Interfaces removed: series still naming one",
        "series",
        &[left as f64],
        Op::Equal,
        0.0,
    );
    s.target(
        "Interfaces removed: BPF links held beyond those before",
        "links",
        &[after.links - links_before],
        Op::Equal,
        0.0,
    );
    s.figure(
        format!("{made} interfaces removed: agent RSS"),
        "MB",
        &[after.rss_mb],
    );
    agent.stop()?;
    Ok(curve)
}

fn cgroups(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<Curve> {
    let counts: &[usize] = ctx.pick(&[0, 250, 1000, 2000], &[0, 50]);
    let window = ctx.pick(5, 2);
    let parent = TestCgroup::named(CG_PARENT)?;
    let agent = start_agent(&ctx.bins, CONFIG, &[])?;
    let mut made: Vec<TestCgroup> = Vec::new();
    let mut curve = Vec::new();
    for &n in counts {
        while made.len() < n {
            let batch: Vec<TestCgroup> = (made.len()..n.min(made.len() + CG_BATCH))
                .map(|i| TestCgroup::named(&format!("{CG_PARENT}/cg{i}")))
                .collect::<std::io::Result<_>>()?;
            let mut children = Vec::new();
            for cg in &batch {
                let mut c = cg.command(
                    &ctx.bins.workload.display().to_string(),
                    &["getppid", "20000"],
                );
                c.stdout(Stdio::null());
                children.push(c.spawn().context("starting a workload in a cgroup")?);
            }
            for mut c in children {
                c.wait()?;
            }
            made.extend(batch);
        }
        std::thread::sleep(Duration::from_secs(2));
        let p = measure(&agent, window)?;
        record(s, &mut curve, "cgroups", n, p);
    }
    // Children first, then the parent.
    drop(made);
    drop(parent);
    agent.stop()?;
    Ok(curve)
}

fn peers(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<Curve> {
    let counts: &[usize] = ctx.pick(&[1, 100, 1_000, 10_000], &[1, 100]);
    let window = ctx.pick(5, 2);
    let _net = BenchNet::create()?;
    let agent = start_agent(&ctx.bins, CONFIG, &[net().host_if])?;
    let to = format!("{}:40004", net().host_ip);
    let mut curve = Vec::new();
    for &n in counts {
        // The same n source addresses each time, on a new source port:
        // every peer sends again, so all n are active in this window.
        udp_flows(&ctx.bins, n as u64, &to, n as u64)?;
        std::thread::sleep(Duration::from_secs(2));
        let p = measure(&agent, window)?;
        record(s, &mut curve, "peers", n, p);
    }
    agent.stop()?;
    Ok(curve)
}

/// The agent's map memory at more CPUs than this machine has: each
/// per-CPU map's value area grows with the CPUs, the rest does not.
fn cpus(ctx: &Ctx, s: &mut Scenario) -> anyhow::Result<()> {
    let agent = start_agent(&ctx.bins, CONFIG, &[])?;
    let maps = held_maps(agent.pid());
    let names: Vec<(u64, String)> = maps.iter().map(|m| (m.id, map_name(m.id))).collect();
    agent.stop()?;
    let name = |id: u64| {
        names
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("map {id}"), |(_, n)| n.clone())
    };
    let possible = possible_cpus();
    let total: u64 = maps.iter().map(|m| m.memlock).sum();
    let per_cpu: u64 = maps.iter().map(|m| m.per_cpu_bytes(possible)).sum();
    let fixed = total.saturating_sub(per_cpu) as f64;
    let one_cpu = per_cpu as f64 / possible as f64;
    let mut points = Vec::new();
    for n in [possible, 16, 64, 128, 256] {
        let mib = (fixed + one_cpu * n as f64) / 1048576.0;
        s.figure(format!("{n} CPUs: kernel map memory"), "MiB", &[mib]);
        points.push((n as f64, mib));
    }
    s.figure("per CPU: kernel map memory", "KiB", &[one_cpu / 1024.0]);
    let mut biggest: Vec<_> = maps
        .iter()
        .filter(|m| m.per_cpu_bytes(possible) > 0)
        .collect();
    biggest.sort_by_key(|m| std::cmp::Reverse(m.per_cpu_bytes(possible)));
    let on_use: Vec<String> = maps
        .iter()
        .filter(|m| m.is_per_cpu() && m.allocated_on_use())
        .map(|m| {
            format!(
                "{} ({} B per key per CPU)",
                name(m.id),
                m.value_size.div_ceil(8) * 8
            )
        })
        .collect();
    s.note(format!(
        "Per-CPU hash maps allocated as keys appear, whose memory grows with the keys in \
         use times the CPUs rather than being reserved: {}.",
        on_use.join(", ")
    ));
    s.note(format!(
        "Kernel map memory: {:.1} MiB here ({possible} possible CPUs), of which {:.1} KiB per \
         CPU reserved in {} preallocated per-CPU maps; the largest per CPU: {}.",
        total as f64 / 1048576.0,
        one_cpu / 1024.0,
        biggest.len(),
        biggest
            .iter()
            .take(3)
            .map(|m| format!(
                "{} ({} entries × {} B, {:.0} KiB per CPU)",
                name(m.id),
                m.max_entries,
                m.value_size,
                m.per_cpu_bytes(1) as f64 / 1024.0
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s.charts.push(Panel {
        title: "Kernel map memory vs CPUs (from per-CPU map sizes)".into(),
        x_label: "CPUs".into(),
        y_label: "MiB".into(),
        log_x: true,
        series: vec![Series {
            name: "maps, memlock".into(),
            points,
        }],
    });
    Ok(())
}

/// A map's name, by bpftool (fdinfo has none).
fn map_name(id: u64) -> String {
    sonde_tests::bpf::map_name(id).unwrap_or_else(|| format!("map {id}"))
}
