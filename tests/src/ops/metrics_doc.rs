//! `docs/metrics.md`, generated from a live scrape: every metric family with
//! its type, labels and help text.

use std::collections::{BTreeMap, BTreeSet};

use crate::scrape::Scrape;

/// One metric family as exposed.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: String,
    pub labels: BTreeSet<String>,
    pub series: usize,
}

fn unescape_help(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push(' '),
                Some('\\') => out.push('\\'),
                Some(o) => {
                    out.push('\\');
                    out.push(o)
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Families of an exposition (from its `# HELP` and `# TYPE` lines), with the
/// label names seen on their series (`le` and `quantile` left out).
pub fn families(scrape: &Scrape) -> BTreeMap<String, Family> {
    let mut fams: BTreeMap<String, Family> = BTreeMap::new();
    for line in scrape.body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let f = fams.entry(name.to_string()).or_default();
            f.name = name.to_string();
            f.help = unescape_help(help);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let f = fams.entry(name.to_string()).or_default();
            f.name = name.to_string();
            f.kind = kind.trim().to_string();
        }
    }
    for s in &scrape.samples {
        let fam = if fams.contains_key(&s.name) {
            s.name.as_str()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| s.name.strip_suffix(suf))
                .filter(|b| fams.contains_key(*b))
                .unwrap_or(s.name.as_str())
        };
        let f = fams.entry(fam.to_string()).or_default();
        if f.name.is_empty() {
            f.name = fam.to_string();
            f.kind = "untyped".into();
        }
        if s.name == fam || s.name.ends_with("_count") {
            f.series += 1;
        }
        for (k, _) in &s.labels {
            if k != "le" && k != "quantile" {
                f.labels.insert(k.clone());
            }
        }
    }
    fams
}

/// Metrics renamed or changed to follow the Prometheus naming conventions:
/// (old, new, what changed). Rendered as the "Renamed" section, so a query
/// or alert written against an older agent can be updated; an old name's
/// row in the main table is dropped by the generator.
pub const RENAMED: &[(&str, &str, &str)] = &[
    (
        "sonde_data_completeness{signal}",
        "sonde_data_completeness_ratio{signal}",
        "`_ratio` suffix for a 0–1 ratio; same values",
    ),
    (
        "sonde_overhead_cpu_share{side}",
        "sonde_overhead_cpu_ratio{side}",
        "`_ratio` suffix (CPU seconds per second: 1 is one whole CPU); same values",
    ),
    (
        "sonde_peer_tcp_rtt_seconds_total{peer}, sonde_peer_tcp_rtt_samples_total{peer}",
        "sonde_peer_tcp_rtt_seconds{peer}",
        "two counters → one summary without quantiles: `_sum` (was `sonde_peer_tcp_rtt_seconds_total`) \
         and `_count` (was `sonde_peer_tcp_rtt_samples_total`); the mean RTT is \
         `rate(…_sum[5m]) / rate(…_count[5m])`",
    ),
    (
        "sonde_health_check_status{component}",
        "sonde_health_check_status{component,state}",
        "same name; 1/0.5/0 (ok/degraded/failed) → a state set: one series per `state` (ok, \
         degraded, failed), 1 for the current state and 0 for the others; failed is \
         `sonde_health_check_status{state=\"failed\"} == 1`",
    ),
    (
        "sonde_kernel_activity_total{kind=\"flow_created\"}",
        "sonde_flows_created_total",
        "removed: it duplicated `sonde_flows_created_total`",
    ),
    (
        "sonde_kernel_activity_total{kind=\"flow_event_rate_limited\"}",
        "sonde_flow_events_rate_limited_total",
        "one counter per thing counted; same values",
    ),
    (
        "sonde_kernel_activity_total{kind=\"ip_fragment\"}",
        "sonde_ip_fragments_total",
        "one counter per thing counted; since 2026-12-06 per interface, direction, family and \
         protocol, first fragments included (was: non-first fragments, all interfaces and both \
         directions together)",
    ),
    (
        "sonde_mapek_threshold{feature}",
        "sonde_anomaly_score_threshold{feature}",
        "was in each feature's own units (calls/s, seconds, shares…); now in deviations from the \
         feature's baseline, the unit of `sonde_anomaly_score`: a feature is anomalous when \
         `sonde_anomaly_score >= sonde_anomaly_score_threshold`",
    ),
    (
        "sonde_anomaly_score{feature}",
        "sonde_anomaly_score{feature}",
        "same name and values (deviations from the baseline, dimensionless); its threshold is now \
         in the same unit (`sonde_anomaly_score_threshold`)",
    ),
];

/// The family names in a cell of [`RENAMED`] (`a{x}, b{y}` → a, b).
fn base_names(cell: &str) -> impl Iterator<Item = &str> {
    cell.split(", ")
        .map(|name| name.split('{').next().unwrap_or(name))
}

/// Families whose name a rename retired.
pub fn retired() -> BTreeSet<String> {
    let current: BTreeSet<&str> = RENAMED
        .iter()
        .flat_map(|(_, new, _)| base_names(new))
        .collect();
    RENAMED
        .iter()
        .flat_map(|(old, _, _)| base_names(old))
        .filter(|old| !current.contains(old))
        .map(str::to_string)
        .collect()
}

/// The table rows of a `docs/metrics.md` text, by family name (the main
/// table only: the "Renamed" section is generated from [`RENAMED`]).
pub fn rows(doc: &str) -> BTreeMap<String, String> {
    doc.lines()
        .take_while(|l| !l.starts_with("## Renamed"))
        .filter_map(|l| {
            let name = l.strip_prefix("| `")?.split('`').next()?;
            Some((name.to_string(), l.to_string()))
        })
        .collect()
}

/// The `docs/metrics.md` text for a scrape. `kept` are rows (from the
/// committed file) of families this scrape did not show: families whose
/// series exist only after some event (an anomaly, a drop) are exported only
/// then, so one scrape cannot prove them gone.
pub fn render(scrape: &Scrape, kept: &BTreeMap<String, String>) -> String {
    let fams = families(scrape);
    let mut out = String::new();
    out.push_str(
        "# Metrics\n\n\
         Every metric family the agent exports at `/metrics`, generated from a live scrape by\n\
         `tests/tests/ops.rs` (test `metrics_doc_matches_a_live_scrape`), which fails when this\n\
         file and the agent disagree. Do not edit it by hand; after changing metrics, run as root:\n\n\
         ```sh\n\
         cargo build -p sonde && cargo build -p sonde-tests --bins\n\
         SONDE_UPDATE_DOCS=1 cargo test -p sonde-tests --test ops -- --test-threads=1 metrics_doc\n\
         ```\n\n\
         The scrape comes from an agent with every program enabled, the network side on `lo`,\n\
         `[collector] bpf_stats = true`, and a little TCP, UDP and syscall traffic, so that every\n\
         family has series. Labels are the ones seen on the family's series; a histogram `x` is\n\
         exposed as `x_bucket{le}`, `x_sum` and `x_count`, a summary\n\
         `x` (no quantiles) as `x_sum` and `x_count`. Every series also gets the scrape's\n\
         `instance` and `job` labels in Prometheus. Families whose series appear only after\n\
         some event (an anomaly detected, a packet dropped) are exported only from then on;\n\
         when the generating scrape does not show one, its row is kept as it was (the test\n\
         prints which), so a metric removed from the agent must have its row deleted by hand.\n\
         Alerts: `deploy/prometheus/alerts.yml` (runbook: `docs/runbook.md`); dashboards:\n\
         `dashboards/`.\n\n",
    );
    out.push_str("| metric | type | labels | help |\n| --- | --- | --- | --- |\n");
    let retired = retired();
    let mut lines: BTreeMap<String, String> = kept
        .iter()
        .filter(|(name, _)| !fams.contains_key(*name) && !retired.contains(*name))
        .map(|(n, r)| (n.clone(), format!("{r}\n")))
        .collect();
    for f in fams.values() {
        let labels = if f.labels.is_empty() {
            "—".to_string()
        } else {
            f.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.insert(
            f.name.clone(),
            format!(
                "| `{}` | {} | {} | {} |\n",
                f.name,
                f.kind,
                labels,
                f.help.replace('|', "\\|")
            ),
        );
    }
    out.extend(lines.into_values());
    out.push_str(
        "\n## Renamed\n\n\
         Metrics renamed or changed to follow the Prometheus naming conventions (from\n\
         `RENAMED` in `tests/src/ops/metrics_doc.rs`). Queries, alerts and dashboards written\n\
         against the old names need the new ones; the old names are no longer exported.\n\n\
         | old | new | what changed |\n| --- | --- | --- |\n",
    );
    for (old, new, what) in RENAMED {
        let code = |names: &str| {
            names
                .split(", ")
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            code(old),
            code(new),
            what.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_labels() {
        let s = Scrape::parse(
            "# HELP a_total A | thing\n# TYPE a_total counter\na_total{x=\"1\"} 1\na_total{y=\"2\"} 1\n\
             # HELP h_seconds H\n# TYPE h_seconds histogram\nh_seconds_bucket{s=\"r\",le=\"1\"} 1\n\
             h_seconds_bucket{s=\"r\",le=\"+Inf\"} 1\nh_seconds_sum{s=\"r\"} 1\nh_seconds_count{s=\"r\"} 1\n\
             # HELP g G\n# TYPE g gauge\ng 3\n",
        );
        let f = families(&s);
        assert_eq!(f.len(), 3);
        assert_eq!(f["h_seconds"].kind, "histogram");
        assert_eq!(f["h_seconds"].labels.iter().collect::<Vec<_>>(), vec!["s"]);
        assert_eq!(f["h_seconds"].series, 1);
        assert_eq!(f["a_total"].series, 2);
        let mut kept = BTreeMap::new();
        kept.insert(
            "b_total".to_string(),
            "| `b_total` | counter | `k` | B |".to_string(),
        );
        kept.insert("g".to_string(), "| `g` | gauge | — | old |".to_string());
        let md = render(&s, &kept);
        assert!(
            md.contains(
                "| `a_total` | counter | `x`, `y` | A \\| thing |\n\
                 | `b_total` | counter | `k` | B |\n\
                 | `g` | gauge | — | G |\n"
            ),
            "{md}"
        );
        assert_eq!(rows(&md).len(), 4);
        assert!(md.contains("\n## Renamed\n"), "{md}");
        assert!(
            md.contains("| `sonde_overhead_cpu_share{side}` | `sonde_overhead_cpu_ratio{side}` |"),
            "{md}"
        );
    }

    #[test]
    fn retired_names_are_the_old_ones_no_longer_exported() {
        let r = retired();
        for old in [
            "sonde_data_completeness",
            "sonde_overhead_cpu_share",
            "sonde_peer_tcp_rtt_seconds_total",
            "sonde_peer_tcp_rtt_samples_total",
            "sonde_kernel_activity_total",
            "sonde_mapek_threshold",
        ] {
            assert!(r.contains(old), "{old} not retired: {r:?}");
        }
        for kept in ["sonde_health_check_status", "sonde_anomaly_score"] {
            assert!(!r.contains(kept), "{kept} retired: {r:?}");
        }
        // A rows() of a rendered doc does not read the Renamed table.
        let md = render(
            &Scrape::parse("# HELP g G\n# TYPE g gauge\ng 1\n"),
            &BTreeMap::new(),
        );
        assert_eq!(rows(&md).keys().collect::<Vec<_>>(), vec!["g"]);
    }
}
