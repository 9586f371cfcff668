//! A parser for the Prometheus text exposition format (version 0.0.4), enough
//! to look series up by name and labels.

use std::fmt;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// Value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(label, value)` pair in `want` is among this sample's
    /// labels (other labels may be present too).
    pub fn matches(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.name)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}} {}", self.value)
    }
}

/// A parsed `/metrics` body.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub body: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses an exposition body; panics with the offending line on a syntax
    /// error (the agent's output must be well-formed).
    pub fn parse(body: &str) -> Scrape {
        Scrape::try_parse(body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Scrape::parse`], returning the syntax error (with the line
    /// number and the line) instead of panicking.
    pub fn try_parse(body: &str) -> Result<Scrape, String> {
        let mut samples = Vec::new();
        for (no, line) in body.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok(s) => samples.push(s),
                Err(e) => return Err(format!("/metrics line {}: {e}: {line:?}", no + 1)),
            }
        }
        Ok(Scrape {
            body: body.to_string(),
            samples,
        })
    }

    /// Series called `name` whose labels include all pairs in `labels`.
    pub fn series<'a>(&'a self, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.matches(labels))
            .collect()
    }

    /// Value of the single series called `name` whose labels include all
    /// pairs in `labels`; `None` if there is none. Panics if several match,
    /// since the lookup is then ambiguous (use [`Scrape::sum`]).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.series(name, labels);
        match found.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!(
                "{} series match {name}{labels:?}, expected at most one:\n{}",
                many.len(),
                many.iter()
                    .map(|s| format!("  {s}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    /// Like [`Scrape::value`], treating a missing series as 0 (counters that
    /// have not been incremented yet may not be exported).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Sum over all series called `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).iter().map(|s| s.value).sum()
    }

    /// Panics unless a program whose name starts with `program_prefix` is
    /// attached in `mode` (a tier: "raw_tracepoint", "tracepoint", …).
    pub fn assert_attached_in_mode(&self, program_prefix: &str, mode: &str) {
        assert!(
            self.series("sonde_probe_attached", &[("mode", mode)])
                .iter()
                .any(|s| s.value == 1.0
                    && s.label("program")
                        .is_some_and(|p| p.starts_with(program_prefix))),
            "no {program_prefix}* program attached in mode {mode}:\n{}",
            self.grep("sonde_probe_attached")
        );
    }

    /// Every line of the body that mentions `needle`, for failure messages.
    pub fn grep(&self, needle: &str) -> String {
        let lines: Vec<&str> = self.body.lines().filter(|l| l.contains(needle)).collect();
        if lines.is_empty() {
            format!("(no line of /metrics contains {needle:?})")
        } else {
            lines.join("\n")
        }
    }
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].trim_start();
            rest = rest
                .strip_prefix('"')
                .ok_or("label value does not start with '\"'")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, c)) => {
                            value.push('\\');
                            value.push(c)
                        }
                        None => return Err("unterminated escape in label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            rest = &rest[end + 1..];
            labels.push((key, value));
        }
    }
    let mut fields = rest.split_whitespace();
    let v = fields.next().ok_or("no value")?;
    let value = match v {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v.parse().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("bad timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_values_and_comments() {
        let s = Scrape::parse(
            "# HELP a_total help\n# TYPE a_total counter\n\
             a_total{x=\"1\",y=\"q\\\"uote\\\\\"} 3\n\
             a_total{x=\"2\"} 4 1700000000000\n\
             b 1.5e3\n\
             h_bucket{le=\"+Inf\"} 7\n\
             g NaN\n",
        );
        assert_eq!(s.samples.len(), 5);
        assert_eq!(s.value("a_total", &[("x", "1")]), Some(3.0));
        assert_eq!(s.samples[0].label("y"), Some("q\"uote\\"));
        assert_eq!(s.sum("a_total", &[]), 7.0);
        assert_eq!(s.value("b", &[]), Some(1500.0));
        assert_eq!(s.value("h_bucket", &[("le", "+Inf")]), Some(7.0));
        assert!(s.value("g", &[]).unwrap().is_nan());
        assert_eq!(s.value("a_total", &[("x", "3")]), None);
        assert_eq!(s.value_or_zero("missing", &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "2 series match")]
    fn ambiguous_lookup_panics() {
        Scrape::parse("a{x=\"1\"} 1\na{x=\"2\"} 2\n").value("a", &[]);
    }
}
