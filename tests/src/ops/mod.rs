//! Helpers for `tests/tests/ops.rs`, the tests of the operations artifacts
//! (Prometheus alerts, Grafana dashboards, Kubernetes manifests, the systemd
//! unit, the container image and the generated docs): real Prometheus and
//! Alertmanager servers as RAII guards ([`servers`]), a crude PromQL
//! metric-name extractor ([`promql`]), just enough YAML reading for files
//! this repository writes itself ([`yaml`]), dashboard walking
//! ([`dashboards`]), the `docs/metrics.md` generator ([`metrics_doc`]) and
//! the agent's measured footprint ([`footprint`]) and the container image
//! test's seccomp profile ([`container`]).

pub mod container;
pub mod dashboards;
pub mod footprint;
pub mod metrics_doc;
pub mod promql;
pub mod servers;
pub mod yaml;

use std::path::PathBuf;

use crate::sys::workspace_dir;

/// A file of the repository, by path relative to the workspace root.
pub fn repo_path(rel: &str) -> PathBuf {
    workspace_dir().join(rel)
}

/// The text of a file of the repository; panics naming it.
pub fn read_repo_file(rel: &str) -> String {
    let p = repo_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Name of the environment variable that makes the generated-file checks
/// rewrite the files instead of failing.
pub const UPDATE_ENV: &str = "SONDE_UPDATE_DOCS";

/// Compares a generated file with the committed one. With
/// `SONDE_UPDATE_DOCS=1` it writes `generated` instead; otherwise it panics
/// with the first differing line and how to update.
pub fn check_generated(rel: &str, generated: &str, test_name: &str) {
    let path = repo_path(rel);
    if std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1") {
        std::fs::write(&path, generated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("{UPDATE_ENV}=1: rewrote {rel}");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == generated {
        return;
    }
    let first_diff = committed
        .lines()
        .zip(generated.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("line {}:\n  committed: {a}\n  generated: {b}", i + 1))
        .unwrap_or_else(|| {
            format!(
                "one is a prefix of the other ({} vs {} lines)",
                committed.lines().count(),
                generated.lines().count()
            )
        });
    panic!(
        "{rel} is out of date ({first_diff}).\nRegenerate it with:\n  \
         {UPDATE_ENV}=1 cargo test -p sonde-tests --test ops -- --test-threads=1 {test_name}\n\
         and commit the result."
    );
}

/// `deploy/kubernetes/monitoring/prometheusrule.yaml`: the groups of
/// `deploy/prometheus/alerts.yml` (from its `groups:` line on, comments
/// inside kept) as the spec of a Prometheus Operator PrometheusRule.
pub fn prometheus_rule_yaml(alerts_yml: &str) -> String {
    let start = alerts_yml
        .lines()
        .position(|l| l.starts_with("groups:"))
        .expect("alerts.yml has a top-level groups: key");
    let mut out = String::from(
        "# Generated from deploy/prometheus/alerts.yml by tests/tests/ops.rs: do not\n\
         # edit. Change alerts.yml, then run\n\
         #   SONDE_UPDATE_DOCS=1 cargo test -p sonde-tests --test ops -- kubernetes\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: sonde\n  namespace: sonde\n  labels:\n    app.kubernetes.io/name: sonde\n\
         spec:\n",
    );
    for line in alerts_yml.lines().skip(start) {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Percent-encodes a URL query value (RFC 3986 unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencode_escapes_promql() {
        assert_eq!(
            urlencode("rate(a{b=\"c\"}[1m])"),
            "rate%28a%7Bb%3D%22c%22%7D%5B1m%5D%29"
        );
        assert_eq!(urlencode("a b+c"), "a%20b%2Bc");
    }
}
