//! `cargo xtask fuzz [--seconds N] [TARGET]`: builds the cargo-fuzz
//! targets in agent/fuzz/ (one per input Sonde takes from outside, see
//! docs/fuzzing.md) and runs each for N seconds from its committed seeds
//! (agent/fuzz/seeds/TARGET) plus the working corpus it grows
//! (agent/fuzz/corpus/TARGET, not committed). Prints execs, exec/s and
//! coverage per target from libFuzzer's final statistics, and the path of
//! any crashing input; fails if one crashed.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    toolchain::{self, NIGHTLY},
    util,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// One target (default: every target in agent/fuzz/Cargo.toml).
    pub target: Option<String>,
}

/// What one target's run did, from libFuzzer's output.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    execs: u64,
    execs_per_sec: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    /// The input libFuzzer wrote when the target crashed (or hung).
    crash: Option<String>,
}

fn fuzz_dir() -> PathBuf {
    util::workspace_root().join("agent/fuzz")
}

/// The targets: the `[[bin]]` names of the fuzz crate's manifest.
fn targets(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let name = value.trim_start().trim_start_matches('=').trim();
            out.push(name.trim_matches('"').to_owned());
        }
    }
    out
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::bootstrap::ensure_build()?;
    toolchain::ensure_cargo_fuzz()?;
    let dir = fuzz_dir();
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
        .with_context(|| format!("reading {}", dir.join("Cargo.toml").display()))?;
    let all = targets(&manifest);
    let chosen: Vec<String> = match &opts.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are {}", all.join(", ")),
        None => all,
    };

    util::header("building the fuzz targets (nightly, ASan, coverage)");
    // Built once, then each binary is run directly: `cargo fuzz run` would
    // build again with another debug profile, per target.
    util::run(cargo_fuzz().args(["build", "--fuzz-dir"]).arg(&dir))?;

    let mut results = Vec::new();
    for target in &chosen {
        util::header(&format!("fuzz {target} for {}s", opts.seconds));
        results.push((target.clone(), run_target(&dir, target, opts.seconds)?));
    }

    println!(
        "\n{:<18} {:>12} {:>9} {:>7} {:>7} {:>7}  result",
        "target", "execs", "exec/s", "cov", "ft", "corpus"
    );
    for (target, o) in &results {
        println!(
            "{target:<18} {:>12} {:>9} {:>7} {:>7} {:>7}  {}",
            o.execs,
            o.execs_per_sec,
            o.cov,
            o.ft,
            o.corpus,
            o.crash
                .as_deref()
                .map_or("ok".to_owned(), |c| format!("CRASH {c}"))
        );
    }
    let crashed: Vec<&str> = results
        .iter()
        .filter(|(_, o)| o.crash.is_some())
        .map(|(t, _)| t.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (reproduce: agent/fuzz/target/{HOST_TARGET}/release/TARGET INPUT)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// A short run of every target, for `cargo xtask test`.
pub fn smoke() -> anyhow::Result<()> {
    run(Options {
        seconds: 5,
        target: None,
    })
}

/// The target `cargo fuzz build` builds for (and names its output
/// directory after).
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn cargo_fuzz() -> std::process::Command {
    let mut cmd = util::command("rustup");
    cmd.args(["run", NIGHTLY, "cargo", "fuzz"]);
    cmd
}

fn run_target(dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let log = dir.join("target").join(format!("{target}.log"));
    let binary = dir
        .join("target")
        .join(HOST_TARGET)
        .join("release")
        .join(target);
    let mut cmd = util::command(&binary);
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args([
            &format!("-max_total_time={seconds}"),
            // A hang is a finding too: any input taking over 10 s.
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ])
        .arg(&corpus)
        .arg(&seeds);
    println!("$ {}", util::display(&cmd));
    let start = Instant::now();
    let output = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(parent) = log.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&log, stderr.as_bytes());
    let mut outcome = parse(&stderr);
    if !output.status.success() && outcome.crash.is_none() {
        outcome.crash = Some(format!("(no input written; see {})", log.display()));
    }
    if outcome.crash.is_some() {
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            println!("  {line}");
        }
    }
    println!(
        "{target}: {} execs ({}/s), cov {}, ft {}, corpus {} in {} (log {})",
        outcome.execs,
        outcome.execs_per_sec,
        outcome.cov,
        outcome.ft,
        outcome.corpus,
        util::human(start.elapsed()),
        log.display()
    );
    Ok(outcome)
}

/// Reads libFuzzer's output: the last status line (`#N ... cov: C ft: F
/// corp: K/…`), the `-print_final_stats` lines and any crash artifact.
fn parse(stderr: &str) -> Outcome {
    let mut o = Outcome::default();
    let after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    for line in stderr.lines() {
        if line.starts_with('#') && line.contains(" cov: ") {
            o.cov = after(line, " cov: ").unwrap_or(o.cov);
            o.ft = after(line, " ft: ").unwrap_or(o.ft);
            o.corpus = after(line, " corp: ").unwrap_or(o.corpus);
        } else if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            o.execs = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            o.execs_per_sec = v.trim().parse().unwrap_or(0);
        } else if let Some(i) = line.find("Test unit written to ") {
            o.crash = Some(line[i + "Test unit written to ".len()..].trim().to_owned());
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let dir = fuzz_dir();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let all = targets(&manifest);
        assert_eq!(all.len(), 9, "{all:?}");
        for t in &all {
            assert!(dir.join(format!("fuzz_targets/{t}.rs")).exists(), "{t}");
            let seeds = std::fs::read_dir(dir.join("seeds").join(t))
                .unwrap_or_else(|e| panic!("seeds/{t}: {e}"))
                .count();
            assert!(seeds > 0, "no seeds for {t}");
        }
    }

    #[test]
    fn reads_libfuzzer_statistics_and_crashes() {
        let out = "\
#1024\tpulse  cov: 512 ft: 900 corp: 40/2Kb exec/s: 512 rss: 60Mb
#2048\tNEW    cov: 530 ft: 950 corp: 41/2Kb lim: 4096 exec/s: 600 rss: 61Mb L: 3/4 MS: 1
==1== ERROR: libFuzzer: deadly signal
artifact_prefix='/x/artifacts/events/'; Test unit written to /x/artifacts/events/crash-abc
stat::number_of_executed_units: 2100
stat::average_exec_per_sec:     700
";
        assert_eq!(
            parse(out),
            Outcome {
                execs: 2100,
                execs_per_sec: 700,
                cov: 530,
                ft: 950,
                corpus: 41,
                crash: Some("/x/artifacts/events/crash-abc".into()),
            }
        );
    }
}
