//! Polling watcher of CONFIG_DIR.
//!
//! Polling (mtime + size, then a content hash) instead of inotify: it works the same on every
//! filesystem (bind mounts, ConfigMap symlink swaps, network filesystems) and 200 ms polls of a
//! handful of files cost nothing. Runs on its own thread because parsing a large config is
//! blocking work.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::parse::{parse_file, ConfigError};
use super::{ConfigSnapshot, Object, CONFIG_ERRORS_TOTAL};

/// Subdirectory depth limit (guards against symlink loops).
const MAX_DEPTH: usize = 8;
/// Files younger than this are hashed on every poll (see [`FileStore::rescan`]).
const RECENT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    size: u64,
}

#[derive(Debug)]
struct FileEntry {
    stamp: Stamp,
    hash: u64,
    objects: Vec<Object>,
    errors: Vec<ConfigError>,
}

/// Parsed objects per file of the config directory.
#[derive(Debug, Default)]
pub struct FileStore {
    files: BTreeMap<PathBuf, FileEntry>,
    /// Last directory-level error reported, so a persistent problem is logged once.
    dir_error: Option<String>,
}

impl FileStore {
    /// Re-reads `dir`: parses new or changed files, drops deleted ones. Returns true when the
    /// set of objects or errors changed. On a directory-level error (e.g. the directory vanished
    /// or is unreadable) the previous objects are kept: pushing "everything deleted" to every
    /// node because of a transient mount problem would be far worse than stale config.
    pub fn rescan(&mut self, dir: &Path) -> bool {
        let mut found = Vec::new();
        if let Err(e) = list_yaml_files(dir, 0, &mut found) {
            let msg = format!("cannot read config directory {}: {e}", dir.display());
            if self.dir_error.as_deref() != Some(&msg) {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read config directory; keeping the last good config");
                self.dir_error = Some(msg);
            }
            return false;
        }
        if self.dir_error.take().is_some() {
            tracing::info!(dir = %dir.display(), "config directory readable again");
        }

        let mut changed = false;
        let before = self.files.len();
        self.files
            .retain(|path, _| found.iter().any(|(p, _)| p == path));
        if self.files.len() != before {
            changed = true;
            tracing::info!(
                removed = before - self.files.len(),
                "config files deleted; their objects are removed"
            );
        }

        for (path, stamp) in found {
            // A file modified within the last couple of seconds is re-read even with an equal
            // stamp: filesystem timestamps are coarse (ext4 ticks every few ms), so a second
            // same-size write in the same tick would otherwise go unnoticed. The hash below
            // keeps that cheap (no re-parse when the bytes are the same).
            let recent = stamp
                .mtime
                .and_then(|m| m.elapsed().ok())
                .is_none_or(|age| age < RECENT);
            if !recent && self.files.get(&path).is_some_and(|e| e.stamp == stamp) {
                continue;
            }
            let text = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Deleted between listing and reading: the next scan drops it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot read config file; keeping its previous objects");
                    continue;
                }
            };
            let hash = {
                let mut h = DefaultHasher::new();
                text.hash(&mut h);
                h.finish()
            };
            if let Some(entry) = self.files.get_mut(&path) {
                if entry.hash == hash {
                    // Touched but unchanged: nothing to push.
                    entry.stamp = stamp;
                    continue;
                }
            }
            let parsed = match std::str::from_utf8(&text) {
                Ok(t) => parse_file(&path, t),
                Err(e) => {
                    let mut p = super::parse::ParsedFile::default();
                    p.errors.push(ConfigError {
                        file: path.clone(),
                        document: 0,
                        line: 0,
                        kind: None,
                        object: None,
                        field: String::new(),
                        message: format!("file is not UTF-8: {e}"),
                    });
                    p
                }
            };
            for err in &parsed.errors {
                // One line per invalid object: file, object, field and reason are all in `err`.
                tracing::error!(
                    kind = err.kind_label(),
                    "invalid config object skipped: {err}"
                );
                metrics::counter!(CONFIG_ERRORS_TOTAL, "kind" => err.kind_label().to_string())
                    .increment(1);
            }
            tracing::debug!(file = %path.display(), objects = parsed.objects.len(), errors = parsed.errors.len(), "config file loaded");
            self.files.insert(
                path,
                FileEntry {
                    stamp,
                    hash,
                    objects: parsed.objects,
                    errors: parsed.errors,
                },
            );
            changed = true;
        }
        changed
    }

    /// Merges all files (in path order) into one snapshot.
    pub fn snapshot(&self, generation: u64) -> ConfigSnapshot {
        let mut s =
            ConfigSnapshot::from_objects(self.files.values().flat_map(|f| f.objects.iter()));
        s.generation = generation;
        s.errors = self
            .files
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .collect();
        s.files = self.files.keys().cloned().collect();
        s
    }
}

/// Collects `*.yaml` / `*.yml` files under `dir`, skipping hidden entries (editor swap files,
/// the `..data` directories of Kubernetes ConfigMap volumes).
fn list_yaml_files(
    dir: &Path,
    depth: usize,
    out: &mut Vec<(PathBuf, Stamp)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as ConfigMap volumes need.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                list_yaml_files(&path, depth + 1, out)?;
            }
            continue;
        }
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if meta.is_file() && is_yaml {
            out.push((
                path,
                Stamp {
                    mtime: meta.modified().ok(),
                    size: meta.len(),
                },
            ));
        }
    }
    Ok(())
}

/// Owns the [`FileStore`] of a directory and publishes snapshots when it changes.
pub struct ConfigWatcher {
    dir: Option<PathBuf>,
    store: FileStore,
    generation: u64,
    tx: watch::Sender<Arc<ConfigSnapshot>>,
}

impl ConfigWatcher {
    /// Loads `dir` once (synchronously) and returns the watcher and a receiver of snapshots.
    /// `None` means no config directory: the snapshot stays empty.
    pub fn load(dir: Option<PathBuf>) -> (Self, watch::Receiver<Arc<ConfigSnapshot>>) {
        let mut store = FileStore::default();
        if let Some(d) = &dir {
            store.rescan(d);
        }
        let snap = store.snapshot(1);
        tracing::info!(
            dir = ?dir, files = snap.files.len(), namespaces = snap.namespaces.len(), pods = snap.pods.len(),
            services = snap.services.len(), errors = snap.errors.len(), "config loaded"
        );
        let (tx, rx) = watch::channel(Arc::new(snap));
        (
            ConfigWatcher {
                dir,
                store,
                generation: 1,
                tx,
            },
            rx,
        )
    }

    /// One poll: re-reads the directory and publishes a snapshot if anything changed.
    pub fn poll(&mut self) -> bool {
        let Some(dir) = &self.dir else { return false };
        if !self.store.rescan(dir) {
            return false;
        }
        self.generation += 1;
        let snap = self.store.snapshot(self.generation);
        tracing::info!(
            generation = self.generation,
            files = snap.files.len(),
            pods = snap.pods.len(),
            services = snap.services.len(),
            errors = snap.errors.len(),
            "config changed"
        );
        self.tx.send_replace(Arc::new(snap));
        true
    }

    /// Polls every `interval` on a dedicated thread until `shutdown` turns true or is dropped.
    pub fn spawn(
        mut self,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("config-watcher".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                if *shutdown.borrow() || shutdown.has_changed().is_err() {
                    return;
                }
                self.poll();
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescan_tracks_edits_deletes_and_noop_touches() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, "kind: Namespace\nmetadata: {name: a}\n").unwrap();
        std::fs::write(
            dir.path().join("notes.txt"),
            "kind: Namespace\nmetadata: {name: ignored}\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/b.yml"),
            "kind: Namespace\nmetadata: {name: b}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".hidden.yaml"),
            "kind: Namespace\nmetadata: {name: h}\n",
        )
        .unwrap();

        let (mut w, rx) = ConfigWatcher::load(Some(dir.path().to_path_buf()));
        let names: Vec<_> = rx.borrow().namespaces.keys().cloned().collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(!w.poll(), "nothing changed");

        // Same content rewritten: no new snapshot.
        std::fs::write(&f, "kind: Namespace\nmetadata: {name: a}\n").unwrap();
        assert!(!w.poll());

        std::fs::write(&f, "kind: Namespace\nmetadata: {name: a2}\n").unwrap();
        assert!(w.poll());
        assert!(rx.borrow().namespaces.contains_key("a2"));
        assert_eq!(rx.borrow().generation, 2);

        std::fs::remove_file(dir.path().join("sub/b.yml")).unwrap();
        assert!(w.poll());
        assert!(!rx.borrow().namespaces.contains_key("b"));
    }

    #[test]
    fn missing_directory_keeps_last_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg");
        std::fs::create_dir(&cfg).unwrap();
        std::fs::write(cfg.join("a.yaml"), "kind: Namespace\nmetadata: {name: a}\n").unwrap();
        let (mut w, rx) = ConfigWatcher::load(Some(cfg.clone()));
        std::fs::rename(&cfg, dir.path().join("moved")).unwrap();
        assert!(!w.poll());
        assert!(rx.borrow().namespaces.contains_key("a"));
    }
}
