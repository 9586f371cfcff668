//! Podman containers outside any pod, named from podman's own storage:
//! `<graphroot>/<driver>-containers/containers.json`, the containers/storage
//! listing every `podman run`, `create` and `rm` rewrites under its lock.
//! Read from disk rather than asked over podman's REST socket: podman has
//! no daemon, and its socket exists only where `podman system service`
//! was started on purpose; the file is there wherever podman ran.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Refuses larger listings (about 300 bytes a container: tens of thousands).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("cannot read podman's container list {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("podman's container list {path} is {size} bytes, more than {MAX_FILE_BYTES}")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("podman's container list {path} is not the JSON list podman writes: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One entry of `containers.json` (the fields read; the rest ignored).
#[derive(Debug, Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// The `containers.json` files under `graphroot` (one per storage driver
/// used: overlay, vfs, btrfs, …).
pub fn listings(graphroot: &Path) -> Vec<PathBuf> {
    let Ok(dirs) = std::fs::read_dir(graphroot) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = dirs
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().ends_with("-containers"))
        .map(|d| d.path().join("containers.json"))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Container id → name of every container in podman's storage under
/// `graphroot`, at most `max` (lowest ids first); empty where podman
/// never ran.
pub fn list(graphroot: &Path, max: usize) -> Result<HashMap<String, String>, PodmanError> {
    let mut all = Vec::new();
    for path in listings(graphroot) {
        let size = std::fs::metadata(&path)
            .map_err(|source| PodmanError::Read {
                path: path.clone(),
                source,
            })?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(PodmanError::TooLarge { path, size });
        }
        let text = std::fs::read(&path).map_err(|source| PodmanError::Read {
            path: path.clone(),
            source,
        })?;
        all.extend(parse(&text).map_err(|source| PodmanError::Parse { path, source })?);
    }
    all.sort();
    all.truncate(max);
    Ok(all.into_iter().collect())
}

/// (id, name) of each container of one `containers.json`; a container
/// without a name is named by the first 12 digits of its id, as podman
/// shows it.
fn parse(text: &[u8]) -> Result<Vec<(String, String)>, serde_json::Error> {
    let entries: Vec<Entry> = serde_json::from_slice(text)?;
    Ok(entries
        .into_iter()
        .filter(|e| !e.id.is_empty())
        .map(|e| {
            let id = e.id.to_ascii_lowercase();
            let name = e
                .names
                .into_iter()
                .next()
                .unwrap_or_else(|| id.chars().take(12).collect());
            (id, name)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "516e9279b2544effa3fdae56e0f1be2ea2e40feda0f087bf589c57c4908d9236";

    #[test]
    fn reads_what_podman_writes() {
        let text = format!(
            r#"[{{"id":"{ID}","names":["web"],"image":"i","layer":"l","created":"2026-12-05T07:18:31.5Z","flags":{{"MountLabel":""}}}},
                {{"id":"{}","names":[]}}]"#,
            "a".repeat(64)
        );
        let got = parse(text.as_bytes()).unwrap();
        assert_eq!(got[0], (ID.to_owned(), "web".to_owned()));
        assert_eq!(got[1].1, "aaaaaaaaaaaa");
    }

    #[test]
    fn bad_input_is_an_error_and_a_missing_store_is_empty() {
        assert!(parse(b"{\"not\": \"a list\"}").is_err());
        let dir = std::env::temp_dir().join(format!("sq-podman-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(list(&dir, 10).unwrap().is_empty());
        std::fs::create_dir_all(dir.join("overlay-containers")).unwrap();
        std::fs::write(dir.join("overlay-containers/containers.json"), b"[{").unwrap();
        let err = list(&dir, 10).unwrap_err().to_string();
        assert!(err.contains("containers.json"), "{err}");
        let many: Vec<String> = (0..5)
            .map(|i| format!(r#"{{"id":"{i:064x}","names":["c{i}"]}}"#))
            .collect();
        std::fs::write(
            dir.join("overlay-containers/containers.json"),
            format!("[{}]", many.join(",")),
        )
        .unwrap();
        let got = list(&dir, 3).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[&format!("{:064x}", 0)], "c0");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
