//! What a run produces: the result model every scenario fills in, and its
//! renderings (JSON with every raw sample, a markdown table, and
//! docs/performance.md).

use std::fmt::Write as _;

use serde::Serialize;

use super::common::Summary;

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub quick: bool,
    pub environment: Environment,
    pub duration_s: f64,
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Serialize)]
pub struct Environment {
    pub kernel: String,
    pub cpu_model: String,
    pub nproc: usize,
    pub memory_gib: f64,
    pub sonde_version: String,
    pub git_revision: String,
    pub bpftrace_version: String,
    pub loadavg_at_start: String,
}

/// One scenario's results.
#[derive(Debug, Serialize)]
pub struct Scenario {
    pub id: &'static str,
    pub title: &'static str,
    /// What is measured and how, for the reader of the table.
    pub about: &'static str,
    pub figures: Vec<Figure>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    pub charts: Vec<Panel>,
    /// Anything else worth keeping (per-step data, tool output).
    pub raw: serde_json::Value,
    pub error: Option<String>,
    pub duration_s: f64,
}

impl Scenario {
    pub fn new(id: &'static str, title: &'static str, about: &'static str) -> Scenario {
        Scenario {
            id,
            title,
            about,
            figures: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
            charts: Vec::new(),
            raw: serde_json::Value::Null,
            error: None,
            duration_s: 0.0,
        }
    }

    /// A figure that must be positive (a time, a rate, a size).
    pub fn figure(&mut self, name: impl Into<String>, unit: &'static str, samples: &[f64]) {
        self.push_figure(name.into(), unit, samples, true);
    }

    /// A figure that may be zero or negative (a difference, a count of
    /// losses, a rate that noise can push to zero); a NaN sample (no
    /// denominator) is allowed too.
    pub fn figure_any(&mut self, name: impl Into<String>, unit: &'static str, samples: &[f64]) {
        self.push_figure(name.into(), unit, samples, false);
    }

    fn push_figure(&mut self, name: String, unit: &'static str, samples: &[f64], checked: bool) {
        self.figures.push(Figure {
            name,
            unit,
            summary: Summary::of(samples),
            samples: samples.to_vec(),
            checked,
        });
    }

    /// A target met when the median of `samples` is `op` `limit`.
    pub fn target(
        &mut self,
        name: impl Into<String>,
        unit: &'static str,
        samples: &[f64],
        op: Op,
        limit: f64,
    ) {
        let measured = Summary::of(samples);
        let m = measured.median;
        let pass = match op {
            Op::AtMost => m <= limit,
            Op::AtLeast => m >= limit,
            Op::Equal => samples.iter().all(|&x| x == limit),
        };
        self.targets.push(Target {
            name: name.into(),
            unit,
            measured,
            op,
            limit,
            pass,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub summary: Summary,
    pub samples: Vec<f64>,
    /// Must be finite and positive to pass the sanity check.
    pub checked: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub enum Op {
    AtMost,
    AtLeast,
    /// Every sample equals the limit.
    Equal,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub unit: &'static str,
    pub measured: Summary,
    pub op: Op,
    pub limit: f64,
    pub pass: bool,
}

impl Target {
    /// `PASS`, or `MISS` and by how much.
    pub fn verdict(&self) -> String {
        if self.pass {
            return "PASS".into();
        }
        if self.measured.n == 0 {
            return "n/a (undefined in every round)".into();
        }
        let m = self.measured.median;
        match self.op {
            Op::AtMost if self.limit != 0.0 => {
                format!("MISS ({:+.0}% over)", (m / self.limit - 1.0) * 100.0)
            }
            Op::AtLeast if self.limit != 0.0 => {
                format!("MISS ({:.0}% short)", (1.0 - m / self.limit) * 100.0)
            }
            _ => "MISS".into(),
        }
    }
}

/// One chart: lines of (x, y) points.
#[derive(Debug, Serialize)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A number for a table: thousands separators above 1,000, about three
/// significant digits below.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return if x < 0.0 { format!("-{out}") } else { out };
    }
    let decimals = if a >= 100.0 || a == 0.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        // Three significant digits (the epsilon keeps 0.1 from reading as
        // 0.0999… and getting a fourth).
        (2.0 - (a.log10() + 1e-9).floor()) as usize
    };
    format!("{x:.decimals$}")
}

fn range(s: &Summary) -> String {
    if s.n <= 1 {
        num(s.median)
    } else {
        format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
    }
}

fn op_text(t: &Target) -> String {
    let sym = match t.op {
        Op::AtMost => "≤",
        Op::AtLeast => "≥",
        Op::Equal => "=",
    };
    format!("{sym} {} {}", num(t.limit), t.unit)
        .trim_end()
        .to_owned()
}

/// The tables: a summary of every target, then each scenario's figures.
pub fn markdown(r: &Report, heading: &str) -> String {
    let e = &r.environment;
    let mut md = String::new();
    let _ = writeln!(md, "{heading} Sonde benchmark, {}\n", r.date);
    let _ = writeln!(
        md,
        "{} run in {:.0} s on {} ({} CPUs, {:.0} GiB), kernel {}; sonde {}, checkout {}; {}; load average at start {}.\n",
        if r.quick { "Quick" } else { "Full" },
        r.duration_s,
        e.cpu_model,
        e.nproc,
        e.memory_gib,
        e.kernel,
        e.sonde_version,
        e.git_revision,
        e.bpftrace_version,
        e.loadavg_at_start
    );
    let _ = writeln!(
        md,
        "Figures are median (min–max) over the rounds; every ratio is computed within a round, \
         from variants measured side by side, then summarised. A target passes when the median \
         meets it.\n"
    );
    let _ = writeln!(md, "{heading}# Targets\n");
    let _ = writeln!(md, "| scenario | target | measured | limit | result |");
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    for s in &r.scenarios {
        for t in &s.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} {} | {} | {} |",
                s.title,
                t.name,
                range(&t.measured),
                t.unit,
                op_text(t),
                t.verdict()
            );
        }
        if let Some(err) = &s.error {
            let _ = writeln!(
                md,
                "| {} | (did not complete) | {err} | | FAILED |",
                s.title
            );
        }
    }
    for (i, s) in r.scenarios.iter().enumerate() {
        let _ = writeln!(md, "\n{heading}# {}. {}\n", i + 1, s.title);
        let _ = writeln!(md, "{}\n", s.about);
        if let Some(err) = &s.error {
            let _ = writeln!(md, "**Failed:** {err}\n");
        }
        if !s.figures.is_empty() {
            let _ = writeln!(md, "| figure | median | min | max | n | unit |");
            let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | --- |");
            for f in &s.figures {
                let m = &f.summary;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    f.name,
                    num(m.median),
                    num(m.min),
                    num(m.max),
                    m.n,
                    f.unit
                );
            }
            md.push('\n');
        }
        for n in &s.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

/// docs/performance.md: how to read the figures, the hand-written
/// analysis (bench/analysis.md) if there is one, then the latest tables.
pub fn performance_doc(
    r: &Report,
    results_md: &str,
    chart: &str,
    analysis: Option<&str>,
) -> String {
    let mut doc = String::new();
    let _ = writeln!(
        doc,
        "# Performance\n\n\
         What Sonde costs, measured by `cargo xtask bench` (root; about 20 minutes on 2 cores; \
         `--quick` is the 4-minute smoke run that `cargo xtask test` does). Every scenario \
         measures Sonde side by side with its own baselines in the same run: the kernel's floor \
         (empty programs on the same hooks, `sonde baseline`), no program at all, and bpftrace \
         doing the same job. Variants alternate round-robin across repetitions so drift on the \
         machine hits them all alike; figures are min/median/max over the rounds, and ratios are \
         computed within each round. Raw samples: `bench/results/{date}.json`.\n\n\
         This page is generated from the latest full run ({date}); do not edit it by hand: \
         the analysis section comes from `bench/analysis.md`.\n\n\
         ![cost versus load](../bench/results/{chart})\n",
        date = r.date
    );
    if let Some(analysis) = analysis {
        doc.push('\n');
        doc.push_str(analysis.trim_end());
        doc.push('\n');
    }
    // The run's tables, one heading level down.
    doc.push_str(results_md);
    doc
}

#[cfg(test)]
mod tests {
    use super::num;

    #[test]
    fn numbers_for_tables() {
        assert_eq!(num(0.1), "0.100");
        assert_eq!(num(0.0377), "0.0377");
        assert_eq!(num(1.5), "1.50");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(405.2), "405");
        assert_eq!(num(1_240.0), "1,240");
        assert_eq!(num(-2_500_000.0), "-2,500,000");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "–");
    }
}
