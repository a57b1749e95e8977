//! Start-up tasks that must finish before a proxy reports ready (`/healthz/ready`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The set of start-up tasks still pending. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<String>>>,
}

impl Readiness {
    /// Registers a task that blocks readiness until [`Readiness::done`] is called for it.
    pub fn register(&self, task: impl Into<String>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.into());
    }

    /// Marks a task complete.
    pub fn done(&self, task: &str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.remove(task) && p.is_empty() {
            tracing::info!("all start-up tasks complete: ready");
        }
    }

    /// Tasks still pending (empty = ready).
    pub fn pending(&self) -> Vec<String> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
