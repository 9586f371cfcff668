//! Grafana dashboards (`dashboards/*.json`): loading, walking panels and
//! targets, substituting template variables the way Grafana would for an
//! "All" selection, finding the vector selectors of a query, and structural
//! checks.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::ops::repo_path;

/// Lowest dashboard schema version accepted (Grafana 9.0 writes 36).
pub const MIN_SCHEMA_VERSION: u64 = 36;

/// The label filters every selector of every query carries: the variables
/// `job`, `cluster` and `node`, each as `label=~"$label"`.
pub const FILTERS: [&str; 3] = ["job", "cluster", "node"];

/// Families exported only where the container runtime reports pods
/// (`[kubernetes]`): absent from the ops tests' scrapes, proven by
/// tests/tests/pods.rs against a real containerd and Prometheus instead.
/// `sonde_pod_info` is also the cluster-wide IP → pod map: a join reads it
/// from every node, so it is not filtered on `node`.
pub const NEEDS_PODS: &[&str] = &["sonde_pod_info"];

/// A query that returns data only where pods run: it reads a
/// [`NEEDS_PODS`] family, or selects series by their pod (`pod!=""`).
pub fn needs_pods(expr: &str) -> bool {
    NEEDS_PODS.iter().any(|m| expr.contains(m)) || expr.contains(r#"pod!="""#)
}

/// The job the scrape configs in this repository name (the alerts select
/// on it); the `job` variable's default.
pub const DEFAULT_JOB: &str = "sonde";

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct Target {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
    /// `legendFormat`, empty when unset.
    pub legend: String,
}

/// Every `dashboards/*.json`, sorted by file name; panics on a file that
/// is not JSON.
pub fn load_all() -> Vec<Dashboard> {
    let dir = repo_path("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            Dashboard {
                file: p.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            }
        })
        .collect()
}

impl Dashboard {
    /// Every panel, rows' nested panels included (rows themselves too).
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
            for p in list.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Every target with an `expr`.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for p in self.panels() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(Target {
                        dashboard: self.file.clone(),
                        panel: p["title"].as_str().unwrap_or("?").to_string(),
                        ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                        expr: expr.to_string(),
                        legend: t["legendFormat"].as_str().unwrap_or_default().to_string(),
                    });
                }
            }
        }
        out
    }

    /// The template variables.
    pub fn variables(&self) -> Vec<&Value> {
        self.json["templating"]["list"]
            .as_array()
            .map(|l| l.iter().collect())
            .unwrap_or_default()
    }

    /// PromQL of the query variables (`label_values(...)` translated).
    pub fn variable_queries(&self) -> Vec<(String, String)> {
        self.variables()
            .into_iter()
            .filter(|v| v["type"] == "query")
            .map(|v| {
                let q = v["query"]["query"]
                    .as_str()
                    .or(v["query"].as_str())
                    .or(v["definition"].as_str())
                    .unwrap_or_default();
                (
                    v["name"].as_str().unwrap_or("?").to_string(),
                    variable_query_to_promql(q),
                )
            })
            .collect()
    }

    /// What is wrong with the dashboard's structure, one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let d = &self.json;
        let mut say = |s: String| problems.push(format!("{}: {s}", self.file));
        match d["schemaVersion"].as_u64() {
            Some(v) if v >= MIN_SCHEMA_VERSION => {}
            other => say(format!(
                "schemaVersion {other:?}, want >= {MIN_SCHEMA_VERSION}"
            )),
        }
        for key in ["uid", "title"] {
            if d[key].as_str().is_none_or(str::is_empty) {
                say(format!("no {key}"));
            }
        }
        let vars = self.variables();
        let ds = vars.iter().find(|v| v["name"] == "datasource");
        match ds {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            Some(v) => say(format!(
                "variable datasource is not a prometheus datasource variable: {v}"
            )),
            None => say("no datasource template variable".into()),
        }
        for problem in filter_variable_problems(&vars) {
            say(problem);
        }
        // Other query variables (interface, syscall) are filtered too.
        for v in &vars {
            let name = v["name"].as_str().unwrap_or("?");
            if v["type"] != "query" || FILTERS.contains(&name) {
                continue;
            }
            let q = v["definition"].as_str().unwrap_or_default();
            for p in unfiltered(&variable_query_to_promql(q)) {
                say(format!("variable {name}: {p}"));
            }
        }
        // Datasource references: only ${datasource} (or Grafana's own).
        fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        let p = format!("{path}.{k}");
                        if k == "datasource" {
                            let uid = x["uid"].as_str().or(x.as_str());
                            let ok = match uid {
                                Some("${datasource}") | Some("$datasource") => true,
                                Some("-- Grafana --") => x["type"] == "grafana",
                                _ => false,
                            };
                            if !ok {
                                out.push(format!(
                                    "{p} = {x}: use {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}}"
                                ));
                            }
                        } else {
                            walk(x, &p, out);
                        }
                    }
                }
                Value::Array(a) => {
                    for (i, x) in a.iter().enumerate() {
                        walk(x, &format!("{path}[{i}]"), out);
                    }
                }
                _ => {}
            }
        }
        let mut ds_problems = Vec::new();
        walk(d, "", &mut ds_problems);
        for p in ds_problems {
            say(format!("hard-coded datasource at {p}"));
        }
        let mut ids = BTreeSet::new();
        for p in self.panels() {
            let title = p["title"].as_str().unwrap_or("?");
            match p["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                other => say(format!(
                    "panel {title:?}: missing or duplicate id {other:?}"
                )),
            }
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            match (x, w, h) {
                (Some(x), Some(w), Some(h)) if w > 0 && h > 0 && x + w <= 24 => {}
                _ => say(format!("panel {title:?}: bad gridPos {g}")),
            }
            if p["type"] == "row" {
                continue;
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                say(format!(
                    "panel {title:?}: no unit (fieldConfig.defaults.unit)"
                ));
            }
            if p["description"].as_str().is_none_or(str::is_empty) {
                say(format!("panel {title:?}: no description"));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                say(format!("panel {title:?}: no targets"));
            }
            let mut refs = BTreeSet::new();
            for t in &targets {
                let r = t["refId"].as_str().unwrap_or_default();
                if r.is_empty() || !refs.insert(r.to_string()) {
                    say(format!("panel {title:?}: missing or duplicate refId {r:?}"));
                }
                let expr = t["expr"].as_str().unwrap_or_default();
                if expr.trim().is_empty() {
                    say(format!("panel {title:?} {r}: empty expr"));
                } else {
                    for p in unfiltered(expr) {
                        say(format!("panel {title:?} {r}: {p}"));
                    }
                }
                let legend = t["legendFormat"].as_str().unwrap_or_default();
                if names_label(legend, "instance") {
                    say(format!(
                        "panel {title:?} {r}: legend {legend:?} names the instance (an address), \
                         not {{{{node}}}}"
                    ));
                }
            }
            // Tables show every label as a column: the node's, not the address.
            if p["type"] == "table" {
                let hides = p["transformations"].as_array().is_some_and(|ts| {
                    ts.iter().any(|t| {
                        t["id"] == "organize" && t["options"]["excludeByName"]["instance"] == true
                    })
                });
                if !hides {
                    say(format!(
                        "panel {title:?}: table shows the instance column (organize: \
                         excludeByName instance)"
                    ));
                }
            }
        }
        problems
    }
}

/// What is wrong with the `cluster`, `job` and `node` variables: each a
/// query variable on the label of its name, `cluster` and `node` allowing
/// All as `.*` (which also matches series without the label: a Prometheus
/// holding one cluster has no `cluster` label), `job` defaulting to
/// [`DEFAULT_JOB`]; and no `instance` variable (nodes are chosen by name).
pub fn filter_variable_problems(vars: &[&Value]) -> Vec<String> {
    let mut out = Vec::new();
    for name in FILTERS {
        let Some(v) = vars.iter().find(|v| v["name"] == name) else {
            out.push(format!("no {name} template variable"));
            continue;
        };
        let q = v["definition"].as_str().unwrap_or_default();
        let label_ok = q.starts_with("label_values(")
            && q.trim_end_matches(')').rsplit(',').next().map(str::trim) == Some(name);
        if v["type"] != "query" || !label_ok {
            out.push(format!(
                "variable {name}: want a query variable label_values(..., {name}), got {} {q:?}",
                v["type"]
            ));
        }
        if name == "job" {
            let current = &v["current"]["value"];
            if current != DEFAULT_JOB && current[0] != DEFAULT_JOB {
                out.push(format!(
                    "variable job: default {current}, want {DEFAULT_JOB:?}"
                ));
            }
        } else if v["includeAll"] != true || v["allValue"] != ".*" {
            out.push(format!(
                "variable {name}: want includeAll with allValue \".*\" (matches series \
                 without the label too)"
            ));
        }
    }
    if vars.iter().any(|v| v["name"] == "instance") {
        out.push("an instance variable: choose nodes by the node variable".into());
    }
    out
}

/// Whether a legend format uses `{{label}}`.
pub fn names_label(legend: &str, label: &str) -> bool {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|r| r.split_once("}}"))
        .any(|(inside, _)| inside.trim() == label)
}

/// One vector selector of a query: its metric name (empty for `{...}`
/// alone) and label matchers as (label, operator, value without quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<(String, String, String)>,
}

/// PromQL words that are not metric names: aggregations, their modifiers,
/// binary operators.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
];

/// The vector selectors of `expr`: a crude reader, not a parser (strings,
/// range and subquery brackets, `$variables` and numbers are skipped;
/// grouping label lists are skipped; an identifier followed by `(` is a
/// function).
pub fn selectors(expr: &str) -> Vec<Selector> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_string = |mut i: usize| -> (usize, String) {
        let q = c[i];
        let mut s = String::new();
        i += 1;
        while i < c.len() && c[i] != q {
            if c[i] == '\\' && q != '`' && i + 1 < c.len() {
                s.push(c[i]);
                i += 1;
            }
            s.push(c[i]);
            i += 1;
        }
        (i + 1, s)
    };
    let ident_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // Reads `{...}` at c[i] == '{'; returns the matchers and the next index.
    let matchers = |mut i: usize| -> (Vec<(String, String, String)>, usize) {
        let mut m = Vec::new();
        i += 1;
        loop {
            while i < c.len() && (c[i].is_whitespace() || c[i] == ',') {
                i += 1;
            }
            if i >= c.len() || c[i] == '}' {
                return (m, i + 1);
            }
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let label: String = c[start..i].iter().collect();
            i = skip_ws(i);
            let op_start = i;
            while i < c.len() && "=!~".contains(c[i]) {
                i += 1;
            }
            let op: String = c[op_start..i].iter().collect();
            i = skip_ws(i);
            if i >= c.len() || !"\"'`".contains(c[i]) || label.is_empty() || op.is_empty() {
                // Not a matcher list this reader understands: give up on it.
                return (
                    m,
                    c[i..]
                        .iter()
                        .position(|&x| x == '}')
                        .map_or(c.len(), |p| i + p + 1),
                );
            }
            let (next, value) = skip_string(i);
            m.push((label, op, value));
            i = next;
        }
    };
    while i < c.len() {
        let ch = c[i];
        if "\"'`".contains(ch) {
            i = skip_string(i).0;
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch == '$' {
            i += 1;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || "_{}:".contains(c[i])) {
                i += 1;
            }
        } else if ch == '{' {
            let (m, next) = matchers(i);
            out.push(Selector {
                metric: String::new(),
                matchers: m,
            });
            i = next;
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if next < c.len() && c[next] == '(' {
                if grouping.contains(&word.as_str()) {
                    i = c[next..]
                        .iter()
                        .position(|&x| x == ')')
                        .map_or(c.len(), |p| next + p + 1);
                }
                // Else a function or aggregation: its arguments follow.
            } else if next < c.len() && c[next] == '{' {
                let (m, after) = matchers(next);
                out.push(Selector {
                    metric: word,
                    matchers: m,
                });
                i = after;
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                out.push(Selector {
                    metric: word,
                    matchers: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The selectors of `expr` that lack one of the [`FILTERS`] as
/// `label=~"$label"`, one line each.
pub fn unfiltered(expr: &str) -> Vec<String> {
    let sels = selectors(expr);
    if sels.is_empty() {
        return vec![format!("no selector found in {expr}")];
    }
    sels.iter()
        .filter_map(|s| {
            let missing: Vec<&str> = FILTERS
                .iter()
                .copied()
                .filter(|f| !(*f == "node" && NEEDS_PODS.contains(&s.metric.as_str())))
                .filter(|f| {
                    !s.matchers
                        .iter()
                        .any(|(l, op, v)| l == f && op == "=~" && *v == format!("${f}"))
                })
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "selector {}{{..}} does not filter on {}: {expr}",
                    s.metric,
                    missing
                        .iter()
                        .map(|f| format!("{f}=~\"${f}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// Grafana's `label_values(metric, label)` / `label_values(label)` as
/// PromQL returning one series per value of the label (series without it
/// give no value, as in Grafana); other queries are kept as they are.
pub fn variable_query_to_promql(q: &str) -> String {
    let q = q.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (metric, label) = match inner.rsplit_once(',') {
            Some((metric, label)) => (metric.trim(), label.trim()),
            None => ("", inner.trim()),
        };
        let selector = match metric.strip_suffix('}') {
            Some(open) => format!("{open}, {label}!=\"\"}}"),
            None if metric.is_empty() => format!("{{__name__=~\".+\", {label}!=\"\"}}"),
            None => format!("{metric}{{{label}!=\"\"}}"),
        };
        return format!("count by ({label}) ({selector})");
    }
    q.to_string()
}

/// Replaces Grafana variables: `$name`, `${name}` and `${name:fmt}` from
/// `values`, and the built-in `$__rate_interval`, `$__interval`, `$__range`
/// (with values suited to a short test run: 1 s scrapes, about a minute of
/// data).
pub fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut all: Vec<(String, String)> =
        values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in [
        ("__rate_interval", "30s"),
        ("__interval", "5s"),
        ("__range", "1m"),
    ] {
        all.push((k.to_string(), v.to_string()));
    }
    // Longest names first, so $__rate_interval is not read as $__r...
    all.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    'outer: while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(braced) = after.strip_prefix('{')
            && let Some(end) = braced.find('}')
        {
            let name = braced[..end].split(':').next().unwrap_or_default();
            if let Some((_, v)) = all.iter().find(|(k, _)| k == name) {
                out.push_str(v);
                rest = &braced[end + 1..];
                continue 'outer;
            }
        }
        for (k, v) in &all {
            if let Some(r) = after.strip_prefix(k.as_str())
                && !r.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            {
                out.push_str(v);
                rest = r;
                continue 'outer;
            }
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_variables_and_builtins() {
        let mut v = BTreeMap::new();
        v.insert("instance".to_string(), "127.0.0.1:9745".to_string());
        v.insert("interface".to_string(), ".*".to_string());
        let e = r#"rate(x{instance=~"$instance", interface=~"${interface}", i="${instance:regex}"}[$__rate_interval]) + increase(y[$__range]) + $unknown"#;
        assert_eq!(
            substitute(e, &v),
            r#"rate(x{instance=~"127.0.0.1:9745", interface=~".*", i="127.0.0.1:9745"}[30s]) + increase(y[1m]) + $unknown"#
        );
    }

    #[test]
    fn substitutes_the_filter_variables() {
        let mut v = BTreeMap::new();
        v.insert("job".to_string(), "sonde".to_string());
        v.insert("cluster".to_string(), ".*".to_string());
        v.insert("node".to_string(), "node-a".to_string());
        v.insert("node_pool".to_string(), "p".to_string());
        let e = r#"x{job=~"$job", cluster=~"$cluster", node=~"${node}", pool="$node_pool"}"#;
        assert_eq!(
            substitute(e, &v),
            r#"x{job=~"sonde", cluster=~".*", node=~"node-a", pool="p"}"#
        );
    }

    #[test]
    fn label_values_become_count_by() {
        assert_eq!(
            variable_query_to_promql("label_values(sonde_build_info, node)"),
            r#"count by (node) (sonde_build_info{node!=""})"#
        );
        assert_eq!(
            variable_query_to_promql(r#"label_values(up{job="sonde"}, node)"#),
            r#"count by (node) (up{job="sonde", node!=""})"#
        );
        assert_eq!(
            variable_query_to_promql("label_values(node)"),
            r#"count by (node) ({__name__=~".+", node!=""})"#
        );
    }

    #[test]
    fn finds_selectors_and_their_matchers() {
        let e = r#"sum by (cluster, node, le) (rate(sonde_x_bucket{job=~"$job", a="b\"c"}[$__rate_interval])) / on (node) group_left sum(up) > 1e3 or vector(0) and time() - {__name__="y"}"#;
        let got: Vec<(String, usize)> = selectors(e)
            .into_iter()
            .map(|s| (s.metric, s.matchers.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("sonde_x_bucket".to_string(), 2),
                ("up".to_string(), 0),
                (String::new(), 1)
            ]
        );
        let ok = r#"60 * sum(rate(m{job=~"$job", cluster=~"$cluster", node=~"$node", r="s"}[5m]))"#;
        assert!(unfiltered(ok).is_empty(), "{:?}", unfiltered(ok));
        let bad =
            r#"a{job=~"$job", cluster=~"$cluster", node=~"$node"} - b{job=~"$job", node="$node"}"#;
        let p = unfiltered(bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains(
                r#"selector b{..} does not filter on cluster=~"$cluster", node=~"$node""#
            ),
            "{p:?}"
        );
    }

    #[test]
    fn legends_naming_a_label() {
        assert!(names_label("{{instance}} rss", "instance"));
        assert!(names_label("rss {{ instance }}", "instance"));
        assert!(!names_label("{{node}} {{instance_type}}", "instance"));
    }
}
