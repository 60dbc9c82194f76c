//! Reloading what was read from files, while running: everything on SIGHUP, and one thing
//! when one of its files changes (modification time or size, polled once a second). Each
//! reloadable thing (TLS certificates, JWT keys) registers its files and a callback; the
//! callback loads and swaps, and on failure keeps what it had and says why, which is logged
//! here. Nothing here knows what the files hold.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// How often the watcher looks at the files' modification times (and at SIGHUP).
pub const POLL: Duration = Duration::from_secs(1);

/// Loads a thing again; `Err` says why the old one stays.
pub type ReloadFn = Box<dyn Fn() -> Result<(), String> + Send>;

/// The reloadable things and the state of their files.
#[derive(Default)]
pub struct Reloader {
    entries: Vec<Entry>,
}

struct Entry {
    name: String,
    files: Vec<PathBuf>,
    /// Each file's (modification time, size) at the last look; `None`: unreadable.
    stamps: Vec<Option<(SystemTime, u64)>>,
    reload: ReloadFn,
}

impl Reloader {
    /// Registers `name` (for logs), the files it was loaded from and how to reload it.
    pub fn register(&mut self, name: impl Into<String>, files: Vec<PathBuf>, reload: ReloadFn) {
        let stamps = files.iter().map(stamp).collect();
        self.entries.push(Entry {
            name: name.into(),
            files,
            stamps,
            reload,
        });
    }

    /// Reloads what had a file change since the last look; returns how many tried.
    pub fn check(&mut self) -> usize {
        let mut tried = 0;
        for entry in &mut self.entries {
            let stamps: Vec<_> = entry.files.iter().map(stamp).collect();
            if stamps != entry.stamps {
                entry.stamps = stamps;
                entry.run("file change");
                tried += 1;
            }
        }
        tried
    }

    /// Reloads everything (SIGHUP).
    pub fn reload_all(&mut self) {
        for entry in &mut self.entries {
            entry.stamps = entry.files.iter().map(stamp).collect();
            entry.run("SIGHUP");
        }
    }

    /// Watches on a thread of its own for the life of the process: SIGHUP reloads
    /// everything, a changed file its owner. SIGHUP is caught even with nothing registered
    /// (it would otherwise end the process).
    pub fn spawn(mut self) -> io::Result<JoinHandle<()>> {
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
        std::thread::Builder::new()
            .name("wsgate-reload".into())
            .spawn(move || loop {
                std::thread::sleep(POLL);
                if hup.swap(false, Ordering::AcqRel) {
                    self.reload_all();
                } else {
                    self.check();
                }
            })
    }
}

impl Entry {
    fn run(&self, why: &str) {
        match (self.reload)() {
            Ok(()) => tracing::info!("{} reloaded ({why})", self.name),
            Err(e) => tracing::warn!("{} not reloaded ({why}), the old ones stay: {e}", self.name),
        }
    }
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_changed_file_reloads_its_owner_only() {
        let dir = std::env::temp_dir().join(format!("wsgate-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let mut reloader = Reloader::default();
        for (i, file) in [&a, &b].into_iter().enumerate() {
            let counts = counts.clone();
            reloader.register(
                format!("thing {i}"),
                vec![file.clone()],
                Box::new(move || {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    Err("refused".into())
                }),
            );
        }
        assert_eq!(reloader.check(), 0, "nothing changed");
        std::fs::write(&b, "22").unwrap(); // another size: seen even within one mtime tick
        assert_eq!(reloader.check(), 1);
        assert_eq!(
            reloader.check(),
            0,
            "a failed reload is not retried until the next change"
        );
        std::fs::remove_file(&a).unwrap();
        assert_eq!(reloader.check(), 1, "a vanished file is a change");
        reloader.reload_all();
        let seen = counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        assert_eq!(seen, [2, 2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
