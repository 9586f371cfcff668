//! Grafana dashboards (`dashboards/*.json`): loading, walking panels and
//! targets, substituting template variables the way Grafana would for an
//! "All" selection, and structural checks.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::ops::repo_path;

/// Lowest dashboard schema version accepted (Grafana 9.0 writes 36).
pub const MIN_SCHEMA_VERSION: u64 = 36;

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
        if !vars.iter().any(|v| v["name"] == "instance") {
            say("no instance template variable".into());
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
                } else if !expr.contains("$instance") {
                    say(format!(
                        "panel {title:?} {r}: expr does not filter on $instance: {expr}"
                    ));
                }
            }
        }
        problems
    }
}

/// Grafana's `label_values(metric, label)` / `label_values(label)` as
/// PromQL returning one series per value; other queries are kept as they are.
pub fn variable_query_to_promql(q: &str) -> String {
    let q = q.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match inner.rsplit_once(',') {
            Some((metric, label)) => format!("count by ({}) ({})", label.trim(), metric.trim()),
            None => format!("count by ({}) ({{__name__=~\".+\"}})", inner.trim()),
        };
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
    fn label_values_become_count_by() {
        assert_eq!(
            variable_query_to_promql("label_values(sonde_build_info, instance)"),
            "count by (instance) (sonde_build_info)"
        );
        assert_eq!(
            variable_query_to_promql(r#"label_values(up{job="sonde"}, instance)"#),
            r#"count by (instance) (up{job="sonde"})"#
        );
        assert_eq!(
            variable_query_to_promql("label_values(instance)"),
            r#"count by (instance) ({__name__=~".+"})"#
        );
    }
}
