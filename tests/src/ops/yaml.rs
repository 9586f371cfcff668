//! Just enough YAML reading for the rule files this repository writes itself
//! (`deploy/prometheus/*.yml`): one rule per `- alert:` item, keys read by
//! indentation, block scalars (`|`, `>-`) folded back. Real YAML semantics
//! are checked by promtool; this only lets the tests look inside. For the
//! Kubernetes manifests, [`to_json`] goes through Python's yaml module (it
//! comes with kubernetes-validate).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::sys::run_with_timeout;

/// One alerting rule as written in a rule file.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    pub for_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].replace("\\\"", "\"").replace("''", "'")
    } else {
        v.to_string()
    }
}

/// The value of the `key: value` on `lines[i]`: plain
/// or quoted on the line, or a block scalar on the following more-indented
/// lines. Returns the value and the index of the next unread line.
fn value_at(lines: &[&str], i: usize, rest: &str) -> (String, usize) {
    let rest = rest.trim();
    let base = indent(lines[i]);
    if let Some(style) = ["|-", "|", ">-", ">"].iter().find(|s| rest == **s) {
        let mut j = i + 1;
        let mut block = Vec::new();
        while j < lines.len() && (lines[j].trim().is_empty() || indent(lines[j]) > base) {
            block.push(lines[j]);
            j += 1;
        }
        while block.last().is_some_and(|l| l.trim().is_empty()) {
            block.pop();
        }
        let cut = block
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| indent(l))
            .min()
            .unwrap_or(0);
        let dedented: Vec<&str> = block
            .iter()
            .map(|l| if l.len() >= cut { &l[cut..] } else { "" })
            .collect();
        let text = if style.starts_with('>') {
            dedented.join(" ")
        } else {
            dedented.join("\n")
        };
        (text, j)
    } else {
        (unquote(rest), i + 1)
    }
}

/// Every `- alert:` rule in a Prometheus rule file (recording rules are
/// skipped), with its expression, `for`, labels and annotations.
pub fn alert_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let Some(name) = t.strip_prefix("- alert:") else {
            i += 1;
            continue;
        };
        let item_indent = indent(lines[i]);
        let mut rule = Rule {
            alert: unquote(name),
            ..Rule::default()
        };
        let mut section: Option<(String, usize)> = None;
        i += 1;
        while i < lines.len() {
            let line = lines[i];
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                i += 1;
                continue;
            }
            let ind = indent(line);
            if ind <= item_indent {
                break;
            }
            let Some((key, rest)) = line.trim().split_once(':') else {
                i += 1;
                continue;
            };
            let key = key.trim().to_string();
            if let Some((sec, sec_indent)) = &section
                && ind > *sec_indent
            {
                let (v, next) = value_at(&lines, i, rest);
                match sec.as_str() {
                    "labels" => rule.labels.insert(key, v),
                    _ => rule.annotations.insert(key, v),
                };
                i = next;
                continue;
            }
            section = None;
            match key.as_str() {
                "labels" | "annotations" if rest.trim().is_empty() => {
                    section = Some((key, ind));
                    i += 1;
                }
                _ => {
                    let (v, next) = value_at(&lines, i, rest);
                    match key.as_str() {
                        "expr" => rule.expr = v,
                        "for" => rule.for_ = Some(v),
                        _ => {}
                    }
                    i = next;
                }
            }
        }
        rules.push(rule);
    }
    rules
}

/// Parses a (multi-document) YAML file into JSON values with Python's yaml
/// module; panics naming the file on a parse error or when Python or its
/// yaml module is missing.
pub fn to_json(path: &Path) -> Vec<serde_json::Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  print(json.dumps(docs))\n";
    let out = run_with_timeout(
        Command::new("python3").arg("-c").arg(script).arg(path),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "python3 could not parse {} as YAML ({}): {}\n(python3 needs the yaml module; \
         `pip install kubernetes-validate` brings it)",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("python3's JSON for {} is not JSON: {e}", path.display()));
    v.as_array().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rules_with_block_scalars() {
        let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        \
                    for: 2m\n        labels:\n          severity: critical\n        annotations:\n          \
                    summary: A {{ $labels.instance }}\n          description: >-\n            one\n            \
                    two\n          runbook_url: docs/runbook.md#a\n\n      - alert: B\n        expr: |\n          \
                    sum(x)\n            > 1\n        labels:\n          severity: \"warning\"\n";
        let rules = alert_rules(text);
        assert_eq!(rules.len(), 2, "{rules:#?}");
        assert_eq!(rules[0].alert, "A");
        assert_eq!(rules[0].expr, "up == 0");
        assert_eq!(rules[0].for_.as_deref(), Some("2m"));
        assert_eq!(rules[0].labels["severity"], "critical");
        assert_eq!(rules[0].annotations["description"], "one two");
        assert_eq!(rules[0].annotations["runbook_url"], "docs/runbook.md#a");
        assert_eq!(rules[1].expr, "sum(x)\n  > 1");
        assert_eq!(rules[1].labels["severity"], "warning");
        assert!(rules[1].for_.is_none());
    }
}
