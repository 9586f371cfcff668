//! Crude PromQL reading: the metric names an expression uses, to check them
//! against the agent's exposition. Not a parser: identifiers are picked out
//! after skipping string literals and `$variables`, and kept when they start
//! with one of the given prefixes (label names and functions never do).

use std::collections::BTreeSet;

/// Identifiers in `expr` that start with one of `prefixes`.
pub fn metric_names(expr: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // Skip the string literal (backslash escapes inside "..." and '...').
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            // A dashboard variable: $name or ${name}.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_{}".contains(chars[i]))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            if prefixes.iter().any(|p| ident.starts_with(p)) {
                names.insert(ident);
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (5m, 1e3): not an identifier.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric family a series name belongs to, given the families and types
/// of an exposition (`# TYPE` lines): `x_bucket`, `x_sum` and `x_count` of a
/// histogram (or summary) `x` map to `x`; anything else must be a family
/// itself. `None` when the name is not exposed.
pub fn family_of<'a>(
    name: &'a str,
    families: &std::collections::BTreeMap<String, String>,
) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|t| t == "histogram" || (t == "summary" && suffix != "_bucket"))
        {
            return Some(base);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn picks_metric_names_only() {
        let e = r#"histogram_quantile(0.95, sum by (le, syscall) (rate(sonde_syscall_duration_seconds_bucket{instance=~"$instance", syscall="sonde_fake"}[$__rate_interval])))
            / on (instance) group_left sum(process_cpu_seconds_total) > 1e3 and up{job="sonde"} == 0 or ${sonde_var}"#;
        let names = metric_names(e, &["sonde_", "process_"]);
        let want: BTreeSet<String> = [
            "process_cpu_seconds_total",
            "sonde_syscall_duration_seconds_bucket",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn histogram_suffixes_map_to_their_family() {
        let mut f = BTreeMap::new();
        f.insert("sonde_h_seconds".to_string(), "histogram".to_string());
        f.insert("sonde_c_total".to_string(), "counter".to_string());
        f.insert("sonde_g_count".to_string(), "gauge".to_string());
        assert_eq!(
            family_of("sonde_h_seconds_bucket", &f),
            Some("sonde_h_seconds")
        );
        assert_eq!(
            family_of("sonde_h_seconds_count", &f),
            Some("sonde_h_seconds")
        );
        assert_eq!(family_of("sonde_c_total", &f), Some("sonde_c_total"));
        assert_eq!(family_of("sonde_g_count", &f), Some("sonde_g_count"));
        assert_eq!(family_of("sonde_c_total_sum", &f), None);
        assert_eq!(family_of("sonde_missing", &f), None);
    }
}
