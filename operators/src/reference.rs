//! The reference data in force — registry and fences — shared by one process's workers and
//! replaced whole when the files are reloaded (SPEC §3: "reloaded while running"). Workers
//! look at the version once per epoch, so a change applies from the next record on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::fences::FenceIndex;
use crate::registry::Registry;

/// One version of the reference data.
#[derive(Debug)]
pub struct Reference {
    /// 0 for the data loaded at start, +1 per reload.
    pub version: u64,
    /// Vehicles.
    pub registry: Arc<Registry>,
    /// Fences, with the indices of earlier versions kept ([`FenceIndex::reloaded`]).
    pub fences: Arc<FenceIndex>,
}

/// The current [`Reference`] of a process.
#[derive(Clone, Debug)]
pub struct ReferenceSlot {
    current: Arc<RwLock<Arc<Reference>>>,
    version: Arc<AtomicU64>,
}

impl ReferenceSlot {
    /// The data loaded at start.
    pub fn new(registry: Arc<Registry>, fences: Arc<FenceIndex>) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(Reference {
                version: 0,
                registry,
                fences,
            }))),
            version: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The version in force: cheap enough to ask per message.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The reference data in force.
    pub fn current(&self) -> Arc<Reference> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts reloaded data in force; returns its version. `fences` is the freshly loaded
    /// file: it is re-indexed against the fences in force.
    pub fn publish(&self, registry: Registry, fences: FenceIndex) -> u64 {
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        let version = slot.version + 1;
        *slot = Arc::new(Reference {
            version,
            registry: Arc::new(registry),
            fences: Arc::new(slot.fences.reloaded(fences)),
        });
        self.version.store(version, Ordering::Release);
        version
    }
}

/// A worker's view of the slot: tells when a new version came into force.
#[derive(Debug)]
pub struct ReferenceView {
    slot: ReferenceSlot,
    seen: Arc<Reference>,
}

impl ReferenceView {
    /// Starts at the version in force.
    pub fn new(slot: ReferenceSlot) -> Self {
        let seen = slot.current();
        Self { slot, seen }
    }

    /// The version seen last.
    pub fn get(&self) -> &Arc<Reference> {
        &self.seen
    }

    /// The newer version, if one came into force since the last call.
    pub fn changed(&mut self) -> Option<&Arc<Reference>> {
        if self.slot.version() == self.seen.version {
            return None;
        }
        self.seen = self.slot.current();
        Some(&self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_see_each_new_version_once() {
        let slot = ReferenceSlot::new(Arc::new(Registry::empty()), Arc::new(FenceIndex::empty()));
        let mut view = ReferenceView::new(slot.clone());
        assert!(view.changed().is_none());
        assert_eq!(slot.publish(Registry::empty(), FenceIndex::empty()), 1);
        assert_eq!(view.changed().map(|r| r.version), Some(1));
        assert!(view.changed().is_none());
        assert_eq!(view.get().version, 1);
    }
}
