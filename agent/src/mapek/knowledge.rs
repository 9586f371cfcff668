//! Knowledge: what the loop has learned (the baselines, and the threshold
//! scales and verdict counts operators' feedback taught it), kept in the state
//! directory across restarts so a restart does not re-learn from scratch or
//! alarm during a new warm-up.
//!
//! The file steers detection, so it is treated as untrusted input, written
//! by a privileged process in a directory someone else may be able to write:
//!
//! - **Write**: a temp file with a random name in the same directory,
//!   created `O_CREAT|O_EXCL` (a symlink planted at its name makes the create
//!   fail, it is never followed) with mode 0600, fsynced, then renamed over
//!   `mapek-knowledge.json` (a symlink there is replaced, not followed). The
//!   file is 0600 whatever the umask; a directory Sonde creates is 0700, an
//!   existing one keeps its mode.
//! - **Read**: opened `O_NOFOLLOW|O_NONBLOCK`; it must be a regular file of
//!   at most [`MAX_BYTES`] (1 MiB; a full file is a few KiB), owned by the
//!   agent's user, with one name. A symlink, a non-regular or larger file,
//!   another owner, a hard link, unparsable JSON or a foreign version is set
//!   aside (renamed `mapek-knowledge.json.corrupt-SECS.NANOS`) with a warning
//!   and learning starts over: never a crash, never silent. At most
//!   [`KEEP_SET_ASIDE`] set-aside copies are kept, the oldest are removed.
//!   A state directory others may write (another owner, or group/world
//!   writable) is warned about at start.
//! - **Values**: each entry is checked against its range on load. An entry
//!   out of range, or naming a feature or kind this agent does not know, is
//!   dropped with a warning naming the field and the range, and the rest of
//!   the file is used (the dropped entry starts from its default: a
//!   baseline is re-learned, a scale is 1). Sonde never writes such a
//!   value, so it came from elsewhere and is not worth keeping; dropping it
//!   rather than clamping it means a hostile scale of 1e9 does not leave the
//!   kind at the widest allowed threshold. The ranges:
//!   - `threshold_scale.KIND`: within [0.5, 4] ([`SCALE_MIN`], [`SCALE_MAX`]),
//!     what verdicts can reach (a false positive widens ×1.25 up to 4, a
//!     confirmation tightens ×0.95 down to 0.5).
//!   - `baselines.FEATURE.mean`: finite, within [0, limit] by the feature's
//!     unit ([`mean_limit`]): a share ≤ 1, seconds ≤ 3600, a rate or count
//!     ≤ 1e9. `var`: finite, within [0, limit²]. `samples` ≤ 1e12.
//!     `cusum`: finite and ≥ 0; above [`CUSUM_CAP`] (the drift alarm at the
//!     widest scale) it is clamped to it, since any larger value means the
//!     same (the alarm is due), with a warning.
//!   - `feedback.KIND.false_positive` and `.confirmed`: ≤ 1e9 each.
//!
//!   Entries are bounded by the features and kinds the agent knows.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs,
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::analyze::{
    Baseline, CUSUM_ALARM, FEATURES, FeedbackCounts, SCALE_MAX, SCALE_MIN, kinds,
};

const VERSION: u32 = 1;
const FILE: &str = "mapek-knowledge.json";
/// The largest knowledge file read (a full one is a few KiB).
pub const MAX_BYTES: u64 = 1 << 20;
/// Set-aside copies of unusable files kept; older ones are removed.
pub const KEEP_SET_ASIDE: usize = 3;
/// Set-aside copies are named `mapek-knowledge.json.corrupt-SECS.NANOS`;
/// `unusable-SECS` is what earlier versions wrote (counted and pruned too).
const SET_ASIDE_TAGS: [&str; 2] = ["corrupt-", "unusable-"];
/// Temp files are `.mapek-knowledge.json.RANDOM.tmp`.
const TEMP_PREFIX: &str = ".mapek-knowledge.json.";
const TEMP_SUFFIX: &str = ".tmp";
const TEMP_RANDOM: usize = 10;
/// A CUSUM at or above this fires the drift alarm at any allowed scale.
pub const CUSUM_CAP: f64 = CUSUM_ALARM * SCALE_MAX;
/// Bounds on stored counts.
const MAX_SAMPLES: u64 = 1_000_000_000_000;
const MAX_VERDICTS: u64 = 1_000_000_000;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    #[serde(flatten)]
    learned: Learned,
}

/// Everything learned, as stored. Files written before feedback existed
/// have no scales or counts: they default to empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    pub baselines: BTreeMap<String, Baseline>,
    #[serde(default)]
    pub threshold_scale: BTreeMap<String, f64>,
    #[serde(default)]
    pub feedback: BTreeMap<String, FeedbackCounts>,
}

pub struct Knowledge {
    path: PathBuf,
}

/// Why a stored file is not read.
enum Unread {
    /// Nothing stored.
    Missing,
    /// It exists but cannot be opened or read (permissions, I/O): left
    /// where it is.
    Unreadable(io::Error),
    /// Not something Sonde wrote: set aside.
    Unusable(String),
}

/// The agent's effective uid.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The largest plausible baseline mean of a feature, by the unit its name
/// ends with (Prometheus-style names: every feature has one).
pub fn mean_limit(feature: &str) -> Option<f64> {
    if feature.ends_with("_share") {
        Some(1.0)
    } else if feature.ends_with("_seconds") {
        Some(3600.0)
    } else if feature.ends_with("_per_second") || feature.ends_with("_per_cycle") {
        Some(1e9)
    } else if feature.ends_with("_per_cpu") {
        // Runnable tasks per CPU: a fork bomb's thousands, not billions.
        Some(1e6)
    } else {
        None
    }
}

/// A value for a log line: plain unless very large or small (1e300, not
/// 301 digits).
fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-6..1e15).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// Drops the entries outside their range (see the module header) and
/// clamps a CUSUM above [`CUSUM_CAP`]; returns what was kept and one line
/// per entry dropped or clamped, naming the field and its range.
pub fn validate(learned: Learned) -> (Learned, Vec<String>) {
    let mut problems = Vec::new();
    let known_kinds = kinds();
    let mut kept = Learned::default();
    for (feature, mut b) in learned.baselines {
        let limit = FEATURES
            .iter()
            .find(|f| f.0 == feature)
            .and_then(|f| mean_limit(f.0));
        let Some(limit) = limit else {
            problems.push(format!(
                "baselines.{feature}: not a feature this agent knows; dropped"
            ));
            continue;
        };
        let bad = if !(b.mean.is_finite() && (0.0..=limit).contains(&b.mean)) {
            Some(format!(
                "mean = {} is outside [0, {}]",
                num(b.mean),
                num(limit)
            ))
        } else if !(b.var.is_finite() && (0.0..=limit * limit).contains(&b.var)) {
            Some(format!(
                "var = {} is outside [0, {}]",
                num(b.var),
                num(limit * limit)
            ))
        } else if b.samples > MAX_SAMPLES {
            Some(format!("samples = {} is over {MAX_SAMPLES}", b.samples))
        } else if !(b.cusum.is_finite() && b.cusum >= 0.0) {
            Some(format!("cusum = {} is not finite and >= 0", num(b.cusum)))
        } else {
            None
        };
        if let Some(bad) = bad {
            problems.push(format!(
                "baselines.{feature}.{bad}; dropped (the feature's baseline is learned again)"
            ));
            continue;
        }
        if b.cusum > CUSUM_CAP {
            problems.push(format!(
                "baselines.{feature}.cusum = {} is above {CUSUM_CAP}; clamped to {CUSUM_CAP}",
                num(b.cusum)
            ));
            b.cusum = CUSUM_CAP;
        }
        kept.baselines.insert(feature, b);
    }
    for (kind, scale) in learned.threshold_scale {
        if !known_kinds.contains(&kind.as_str()) {
            problems.push(format!(
                "threshold_scale.{kind}: not an anomaly kind this agent knows; dropped"
            ));
        } else if !(scale.is_finite() && (SCALE_MIN..=SCALE_MAX).contains(&scale)) {
            problems.push(format!(
                "threshold_scale.{kind} = {} is outside [{SCALE_MIN}, {SCALE_MAX}]; \
                 dropped (the kind's threshold is as configured, scale 1)",
                num(scale)
            ));
        } else {
            kept.threshold_scale.insert(kind, scale);
        }
    }
    for (kind, counts) in learned.feedback {
        if !known_kinds.contains(&kind.as_str()) {
            problems.push(format!(
                "feedback.{kind}: not an anomaly kind this agent knows; dropped"
            ));
        } else if counts.false_positive > MAX_VERDICTS || counts.confirmed > MAX_VERDICTS {
            problems.push(format!(
                "feedback.{kind} = {} false_positive, {} confirmed is outside [0, \
                 {MAX_VERDICTS}]; dropped (the kind's verdicts count from 0)",
                counts.false_positive, counts.confirmed
            ));
        } else {
            kept.feedback.insert(kind, counts);
        }
    }
    (kept, problems)
}

/// A knowledge file's bytes as [`Knowledge::load`] takes them: what was
/// learned, each value in its range, and what was dropped; `Err` (why)
/// when the file is not Sonde's JSON of this version.
pub fn parse(bytes: &[u8]) -> Result<(Learned, Vec<String>), String> {
    match serde_json::from_slice::<Stored>(bytes) {
        Ok(stored) if stored.version == VERSION => Ok(validate(stored.learned)),
        Ok(stored) => Err(format!("version {} (expected {VERSION})", stored.version)),
        Err(err) => Err(err.to_string()),
    }
}

impl Knowledge {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE),
        }
    }

    /// What was stored, every value in its range; empty when there is
    /// nothing or it cannot be used (set aside, with a warning, when it is
    /// not what Sonde writes).
    pub fn load(&self) -> Learned {
        self.check_directory();
        self.remove_stale_temp_files();
        let bytes = match self.read() {
            Ok(bytes) => bytes,
            Err(Unread::Missing) => return Learned::default(),
            Err(Unread::Unreadable(err)) => {
                warn!(
                    "MAPE-K knowledge {} cannot be read ({err}); learning starts over",
                    self.path.display()
                );
                return Learned::default();
            }
            Err(Unread::Unusable(why)) => {
                self.set_aside(&why);
                return Learned::default();
            }
        };
        let (learned, problems) = match parse(&bytes) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.set_aside(&why);
                return Learned::default();
            }
        };
        for problem in problems {
            warn!("MAPE-K knowledge {}: {problem}", self.path.display());
        }
        learned
    }

    /// The file's bytes: a regular file, not a symlink, at most
    /// [`MAX_BYTES`].
    fn read(&self) -> Result<Vec<u8>, Unread> {
        // O_NONBLOCK: a FIFO planted at the name must not hang the start.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path);
        let file = match file {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(Unread::Missing),
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Unread::Unusable(
                    "it is a symbolic link, which is never followed".to_owned(),
                ));
            }
            Err(err) => return Err(Unread::Unreadable(err)),
        };
        let meta = file.metadata().map_err(Unread::Unreadable)?;
        if !meta.is_file() {
            return Err(Unread::Unusable("not a regular file".to_owned()));
        }
        // Sonde writes a file of its own with one name; another owner or a
        // second name (a hard link to a file elsewhere) means someone else
        // put it there.
        if meta.uid() != euid() {
            return Err(Unread::Unusable(format!(
                "owned by uid {}, not the agent's uid {}",
                meta.uid(),
                euid()
            )));
        }
        if meta.nlink() > 1 {
            return Err(Unread::Unusable(format!(
                "it has {} hard links; Sonde's file has one",
                meta.nlink()
            )));
        }
        let too_big = || {
            Unread::Unusable(format!(
                "{} bytes, over the {MAX_BYTES}-byte limit",
                meta.len()
            ))
        };
        if meta.len() > MAX_BYTES {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(Unread::Unreadable)?;
        // It may grow between the fstat and the read.
        if bytes.len() as u64 > MAX_BYTES {
            return Err(too_big());
        }
        Ok(bytes)
    }

    /// Renames the file (or symlink: never followed) aside and keeps the
    /// newest [`KEEP_SET_ASIDE`] set-aside copies.
    fn set_aside(&self, why: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut aside = OsString::from(self.path.as_os_str());
        aside.push(format!(
            ".{}{}.{:09}",
            SET_ASIDE_TAGS[0],
            now.as_secs(),
            now.subsec_nanos()
        ));
        let aside = PathBuf::from(aside);
        if let Err(err) = fs::rename(&self.path, &aside) {
            warn!(
                "MAPE-K knowledge {} is unusable ({why}) and could not be moved aside \
                 ({err}); learning starts over",
                self.path.display()
            );
            return;
        }
        let removed = self.prune_set_aside();
        let pruned = if removed.is_empty() {
            String::new()
        } else {
            format!(
                "; removed the {} oldest set-aside copies ({}), at most {KEEP_SET_ASIDE} are kept",
                removed.len(),
                removed.join(", ")
            )
        };
        warn!(
            "MAPE-K knowledge {} is unusable ({why}); moved to {} and learning starts over{pruned}",
            self.path.display(),
            aside.display()
        );
    }

    /// Removes all but the newest [`KEEP_SET_ASIDE`] set-aside copies (by
    /// the time in their names); returns the names removed.
    fn prune_set_aside(&self) -> Vec<String> {
        let (Some(dir), Some(file)) = (self.path.parent(), self.path.file_name()) else {
            return Vec::new();
        };
        let stem = format!("{}.", file.to_string_lossy());
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut copies: Vec<((u64, u32), String)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let rest = name.strip_prefix(&stem)?;
                let time = SET_ASIDE_TAGS
                    .iter()
                    .find_map(|tag| rest.strip_prefix(tag))?;
                // Unparsable times sort oldest, so they go first.
                let (secs, nanos) = time.split_once('.').unwrap_or((time, "0"));
                let key = (secs.parse().unwrap_or(0), nanos.parse().unwrap_or(0));
                Some((key, name))
            })
            .collect();
        copies.sort();
        let excess = copies.len().saturating_sub(KEEP_SET_ASIDE);
        copies
            .into_iter()
            .take(excess)
            // unlink: a symlink set aside is removed, not its target.
            .filter(|(_, name)| fs::remove_file(dir.join(name)).is_ok())
            .map(|(_, name)| name)
            .collect()
    }

    /// Warns when others may write the state directory: they could not
    /// make Sonde follow a link or read a huge file, but they could reset or
    /// (within the ranges) steer what it learned.
    fn check_directory(&self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Ok(meta) = fs::metadata(dir) else {
            return;
        };
        let mode = meta.permissions().mode();
        if meta.uid() != euid() || mode & 0o022 != 0 {
            warn!(
                "MAPE-K state directory {} is writable by others (owner uid {}, mode {:04o}): \
                 whoever can write it can reset or steer what Sonde learned; give it to uid \
                 {} with mode 0700",
                dir.display(),
                meta.uid(),
                mode & 0o7777,
                euid()
            );
        }
    }

    /// Removes temp files a save killed mid-way left behind.
    fn remove_stale_temp_files(&self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX)
                && name.ends_with(TEMP_SUFFIX)
                && fs::remove_file(entry.path()).is_ok()
            {
                info!(
                    "removed {}, left by an interrupted save",
                    entry.path().display()
                );
            }
        }
    }

    /// A new temp file in `dir`: `TEMP_PREFIX`, `random` random characters,
    /// `TEMP_SUFFIX`, created `O_CREAT|O_EXCL`, mode 0600.
    fn temp_file(dir: &Path, random: usize) -> io::Result<tempfile::NamedTempFile> {
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .rand_bytes(random)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)?;
        // Exactly 0600 whatever the umask (fchmod on the open file).
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(tmp)
    }

    /// Writes what was learned atomically, mode 0600.
    pub fn save(&self, learned: &Learned) -> io::Result<()> {
        self.save_with(learned, TEMP_RANDOM)
    }

    fn save_with(&self, learned: &Learned, random: usize) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // Created 0700 if missing; an existing directory keeps its mode.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let stored = Stored {
            version: VERSION,
            learned: learned.clone(),
        };
        let body = serde_json::to_vec_pretty(&stored).map_err(io::Error::other)?;
        if body.len() as u64 > MAX_BYTES {
            return Err(io::Error::other(format!(
                "{} bytes, over the {MAX_BYTES}-byte limit a load accepts",
                body.len()
            )));
        }
        // Removed on drop if anything below fails.
        let mut tmp = Self::temp_file(dir, random)?;
        tmp.write_all(&body)?;
        tmp.as_file().sync_all()?;
        // rename(2): a symlink at the target is replaced, not followed.
        tmp.persist(&self.path).map_err(|e| e.error)?;
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fresh directory for one test, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("sonde-knowledge-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn names(&self) -> Vec<String> {
            names(&self.0)
        }

        fn set_aside(&self) -> Vec<String> {
            set_aside_in(&self.0)
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn set_aside_in(dir: &Path) -> Vec<String> {
        names(dir)
            .into_iter()
            .filter(|n| n.contains(".corrupt-") || n.contains(".unusable-"))
            .collect()
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> Learned {
        let mut b = Learned::default();
        b.threshold_scale.insert("syn_flood".to_owned(), 1.25);
        b.feedback.insert(
            "syn_flood".to_owned(),
            FeedbackCounts {
                false_positive: 1,
                confirmed: 2,
            },
        );
        b.baselines.insert(
            "syscalls_per_second".to_owned(),
            Baseline {
                mean: 1.5,
                var: 0.25,
                samples: 7,
                cusum: 0.0,
            },
        );
        b
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn round_trips_and_sets_aside_garbage() {
        let dir = Dir::new("roundtrip");
        let k = Knowledge::new(&dir.0);
        assert_eq!(k.load(), Learned::default());
        let b = sample();
        k.save(&b).unwrap();
        assert_eq!(k.load(), b);
        // A file from before feedback existed still loads.
        fs::write(
            dir.0.join(FILE),
            r#"{"version": 1, "baselines": {"syscalls_per_second": {"mean": 1.0, "var": 0.0, "samples": 3}}}"#,
        )
        .unwrap();
        assert_eq!(k.load().baselines["syscalls_per_second"].samples, 3);
        fs::write(dir.0.join(FILE), "{not json").unwrap();
        assert_eq!(k.load(), Learned::default());
        assert!(!dir.0.join(FILE).exists(), "the corrupt file was set aside");
        assert_eq!(dir.set_aside().len(), 1, "{:?}", dir.names());
        // NaN is not JSON: the whole file is unusable.
        fs::write(
            dir.0.join(FILE),
            r#"{"version": 1, "baselines": {"syscalls_per_second": {"mean": NaN, "var": 0.0, "samples": 3}}}"#,
        )
        .unwrap();
        assert_eq!(k.load(), Learned::default());
        assert_eq!(dir.set_aside().len(), 2, "{:?}", dir.names());
        // A foreign version too.
        fs::write(dir.0.join(FILE), r#"{"version": 2, "baselines": {}}"#).unwrap();
        assert_eq!(k.load(), Learned::default());
        assert_eq!(dir.set_aside().len(), 3, "{:?}", dir.names());
    }

    #[test]
    fn the_saved_file_is_0600_and_a_new_directory_0700() {
        let dir = Dir::new("mode");
        let state = dir.0.join("state");
        let k = Knowledge::new(&state);
        // Even with a permissive umask.
        let old = unsafe { libc::umask(0) };
        let saved = k.save(&sample());
        unsafe { libc::umask(old) };
        saved.unwrap();
        assert_eq!(mode(&state.join(FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
        // An existing directory keeps its mode; a 0644 file is replaced by
        // a 0600 one.
        fs::set_permissions(&state, fs::Permissions::from_mode(0o751)).unwrap();
        fs::set_permissions(state.join(FILE), fs::Permissions::from_mode(0o644)).unwrap();
        k.save(&sample()).unwrap();
        assert_eq!(mode(&state), 0o751);
        assert_eq!(mode(&state.join(FILE)), 0o600);
        // No temp file is left behind.
        assert_eq!(
            fs::read_dir(&state).unwrap().count(),
            1,
            "{:?}",
            fs::read_dir(&state).unwrap().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_symlink_at_the_target_or_temp_name_is_never_followed() {
        let dir = Dir::new("symlink");
        let outside = dir.0.join("outside");
        fs::write(&outside, "precious").unwrap();
        let outside_mode = mode(&outside);
        let state = dir.0.join("state");
        fs::create_dir(&state).unwrap();
        let k = Knowledge::new(&state);
        let target = state.join(FILE);
        symlink(&outside, &target).unwrap();
        // The earlier fixed temp name, too.
        symlink(&outside, state.join("mapek-knowledge.json.tmp")).unwrap();
        // Loading through the link: refused, the link set aside.
        assert_eq!(k.load(), Learned::default());
        assert!(!target.exists());
        assert_eq!(set_aside_in(&state).len(), 1, "{:?}", names(&state));
        assert!(fs::symlink_metadata(state.join("mapek-knowledge.json.tmp")).is_ok());
        // Saving over a link replaces the link.
        symlink(&outside, &target).unwrap();
        k.save(&sample()).unwrap();
        assert!(fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
        // A symlink at the temp name makes the create fail (O_EXCL), it is
        // not written through: shown with a temp name that has no random
        // part, so the test can plant the link at it.
        let fixed = state.join(format!("{TEMP_PREFIX}{TEMP_SUFFIX}"));
        symlink(&outside, &fixed).unwrap();
        let err = k.save_with(&sample(), 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
        assert_eq!(mode(&outside), outside_mode);
        // A stale temp name is cleaned on load (unlink: the link, not the
        // file).
        k.load();
        assert!(fs::symlink_metadata(&fixed).is_err());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
    }

    #[test]
    fn an_oversized_or_non_regular_file_is_set_aside() {
        let dir = Dir::new("size");
        let k = Knowledge::new(&dir.0);
        k.save(&sample()).unwrap();
        // Valid JSON padded past the limit: refused for its size alone.
        let mut body = serde_json::to_vec(&Stored {
            version: VERSION,
            learned: sample(),
        })
        .unwrap();
        body.extend(std::iter::repeat_n(b' ', MAX_BYTES as usize));
        fs::write(dir.0.join(FILE), &body).unwrap();
        assert_eq!(k.load(), Learned::default());
        assert_eq!(dir.set_aside().len(), 1);
        // Exactly at the limit still loads.
        body.truncate(MAX_BYTES as usize);
        fs::write(dir.0.join(FILE), &body).unwrap();
        assert_eq!(k.load(), sample());
        // A FIFO does not hang the load.
        fs::remove_file(dir.0.join(FILE)).unwrap();
        let fifo = std::ffi::CString::new(dir.0.join(FILE).to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(k.load(), Learned::default());
        assert_eq!(dir.set_aside().len(), 2);
    }

    #[test]
    fn a_file_with_another_owner_or_a_second_name_is_set_aside() {
        let dir = Dir::new("owner");
        let k = Knowledge::new(&dir.0);
        k.save(&sample()).unwrap();
        let path = dir.0.join(FILE);
        // Hard-linked from elsewhere.
        let other = dir.0.join("elsewhere");
        fs::hard_link(&path, &other).unwrap();
        assert_eq!(k.load(), Learned::default());
        assert_eq!(dir.set_aside().len(), 1);
        assert!(fs::read_to_string(&other).unwrap().contains("version"));
        // Owned by someone else (needs root to chown: skipped otherwise).
        k.save(&sample()).unwrap();
        if std::os::unix::fs::chown(&path, Some(euid() + 1), None).is_ok() {
            assert_eq!(k.load(), Learned::default());
            assert_eq!(dir.set_aside().len(), 2);
        }
        // The file Sonde wrote itself loads.
        k.save(&sample()).unwrap();
        assert_eq!(k.load(), sample());
    }

    #[test]
    fn at_most_a_few_set_aside_copies_are_kept_oldest_removed() {
        let dir = Dir::new("prune");
        let k = Knowledge::new(&dir.0);
        // One copy from an earlier version's naming, the oldest.
        fs::write(dir.0.join(format!("{FILE}.unusable-1000")), "old").unwrap();
        for _ in 0..5 {
            fs::write(dir.0.join(FILE), "{garbage").unwrap();
            k.load();
        }
        let kept = dir.set_aside();
        assert_eq!(kept.len(), KEEP_SET_ASIDE, "{kept:?}");
        assert!(kept.iter().all(|n| n.contains(".corrupt-")), "{kept:?}");
    }

    #[test]
    fn every_feature_has_a_unit_with_a_range() {
        for (feature, _, _) in FEATURES {
            assert!(mean_limit(feature).is_some(), "{feature}");
        }
    }

    #[test]
    fn values_out_of_range_are_dropped_and_named() {
        let mut hostile = sample();
        let base = hostile.baselines["syscalls_per_second"].clone();
        for (feature, b) in [
            (
                "syscall_error_share",
                Baseline {
                    mean: 2.0,
                    ..base.clone()
                },
            ),
            (
                "tcp_rtt_mean_seconds",
                Baseline {
                    mean: -1.0,
                    ..base.clone()
                },
            ),
            (
                "packet_drops_per_second",
                Baseline {
                    mean: 1e300,
                    ..base.clone()
                },
            ),
            (
                "tcp_resets_sent_per_second",
                Baseline {
                    var: f64::INFINITY,
                    ..base.clone()
                },
            ),
            (
                "process_exits_per_second",
                Baseline {
                    samples: u64::MAX,
                    ..base.clone()
                },
            ),
            (
                "process_execs_per_second",
                Baseline {
                    cusum: f64::NAN,
                    ..base.clone()
                },
            ),
            ("not_a_feature", base.clone()),
            // Kept, clamped.
            (
                "half_open_syn_per_second",
                Baseline {
                    cusum: 1e9,
                    ..base.clone()
                },
            ),
        ] {
            hostile.baselines.insert(feature.to_owned(), b);
        }
        for (kind, scale) in [
            ("syscall_storm", 0.0),
            ("port_scan", 1e9),
            ("fork_storm", f64::NAN),
            ("cpu_saturation", 0.49),
            ("no_such_kind", 1.0),
            ("packet_loss", 0.5),
            ("connection_storm", 4.0),
        ] {
            hostile.threshold_scale.insert(kind.to_owned(), scale);
        }
        hostile.feedback.insert(
            "port_scan".to_owned(),
            FeedbackCounts {
                false_positive: MAX_VERDICTS + 1,
                confirmed: 0,
            },
        );
        let (kept, problems) = validate(hostile);
        let text = problems.join("\n");
        assert_eq!(
            kept.baselines.keys().collect::<Vec<_>>(),
            ["half_open_syn_per_second", "syscalls_per_second"],
            "{text}"
        );
        assert_eq!(kept.baselines["half_open_syn_per_second"].cusum, CUSUM_CAP);
        assert_eq!(
            kept.threshold_scale,
            BTreeMap::from([
                ("connection_storm".to_owned(), 4.0),
                ("packet_loss".to_owned(), 0.5),
                ("syn_flood".to_owned(), 1.25),
            ]),
            "{text}"
        );
        assert_eq!(kept.feedback.keys().collect::<Vec<_>>(), ["syn_flood"]);
        for line in [
            "baselines.syscall_error_share.mean = 2 is outside [0, 1]",
            "baselines.tcp_rtt_mean_seconds.mean = -1 is outside [0, 3600]",
            "baselines.packet_drops_per_second.mean = 1e300 is outside [0, 1000000000]",
            "baselines.tcp_resets_sent_per_second.var = inf is outside",
            "baselines.process_exits_per_second.samples = 18446744073709551615 is over",
            "baselines.process_execs_per_second.cusum = NaN",
            "baselines.not_a_feature: not a feature",
            "baselines.half_open_syn_per_second.cusum = 1000000000 is above 48; clamped to 48",
            "threshold_scale.syscall_storm = 0 is outside [0.5, 4]",
            "threshold_scale.port_scan = 1000000000 is outside [0.5, 4]",
            "threshold_scale.fork_storm = NaN is outside",
            "threshold_scale.cpu_saturation = 0.49 is outside",
            "threshold_scale.no_such_kind: not an anomaly kind",
            "feedback.port_scan = 1000000001 false_positive",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        assert_eq!(problems.len(), 14, "{text}");
    }
}
