//! Knowledge: what the loop has learned (the baselines, and the threshold
//! scales and verdict counts operators' feedback taught it), kept in the state
//! directory across restarts so a restart does not re-learn from scratch or
//! alarm during a new warm-up. Written atomically (temp file, fsync,
//! rename); a corrupt or foreign-version file is set aside with a warning
//! and learning starts over — never a crash, never silent.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::analyze::{Baseline, FeedbackCounts};

const VERSION: u32 = 1;
const FILE: &str = "mapek-knowledge.json";

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

impl Knowledge {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE),
        }
    }

    /// What was stored; empty when there is nothing or it cannot be used
    /// (set aside, with a warning, when unreadable).
    pub fn load(&self) -> Learned {
        let Ok(text) = fs::read_to_string(&self.path) else {
            return Learned::default();
        };
        match serde_json::from_str::<Stored>(&text) {
            Ok(stored) if stored.version == VERSION => stored.learned,
            Ok(stored) => {
                self.set_aside(&format!("version {} (expected {VERSION})", stored.version));
                Learned::default()
            }
            Err(err) => {
                self.set_aside(&err.to_string());
                Learned::default()
            }
        }
    }

    fn set_aside(&self, why: &str) {
        let aside = self.path.with_extension(format!(
            "json.unusable-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ));
        warn!(
            "MAPE-K knowledge {} is unusable ({why}); moved to {} and learning starts over",
            self.path.display(),
            aside.display()
        );
        if let Err(err) = fs::rename(&self.path, &aside) {
            warn!("could not move it aside: {err}");
        }
    }

    /// Writes what was learned atomically.
    pub fn save(&self, learned: &Learned) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let stored = Stored {
            version: VERSION,
            learned: learned.clone(),
        };
        let body = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sets_aside_garbage() {
        let dir = std::env::temp_dir().join(format!("sonde-knowledge-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let k = Knowledge::new(&dir);
        assert_eq!(k.load(), Learned::default());
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
        k.save(&b).unwrap();
        assert_eq!(k.load(), b);
        // A file from before feedback existed still loads.
        fs::write(
            dir.join(FILE),
            r#"{"version": 1, "baselines": {"x": {"mean": 1.0, "var": 0.0, "samples": 3}}}"#,
        )
        .unwrap();
        assert_eq!(k.load().baselines["x"].samples, 3);
        fs::write(dir.join(FILE), "{not json").unwrap();
        assert_eq!(k.load(), Learned::default());
        assert!(!dir.join(FILE).exists(), "the corrupt file was set aside");
        let aside = fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("unusable"));
        assert!(aside);
        let _ = fs::remove_dir_all(&dir);
    }
}
