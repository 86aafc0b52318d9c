//! Checkpoints in the archive's object store, under `_checkpoints/`:
//!
//! ```text
//! _checkpoints/<epoch, 20 digits>/p<process>-w<worker>-<part>.bin   state of one worker
//! _checkpoints/<epoch, 20 digits>/p<process>.done                     written last, per process
//! ```
//!
//! A checkpoint is complete when the `.done` marker of every process of the cluster is there;
//! a process writes its marker only after its parts are stored and its sinks confirmed. The
//! key is outside the datasets (`telemetry/`, `alerts/`, …), so archive queries never see it.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveConfig, ArchiveError, open_store};

/// The prefix of every checkpoint key.
const ROOT: &str = "_checkpoints";

/// A failed checkpoint operation.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The object store failed.
    #[error("checkpoint store, {key}: {source}")]
    Store {
        /// The key (or prefix) concerned.
        key: String,
        /// Why.
        source: object_store::Error,
    },
    /// A marker is not what this version writes.
    #[error("checkpoint marker {key}: {source}")]
    Marker {
        /// The marker's key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// What a process's `.done` marker records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The checkpoint epoch: the state covers every message of an earlier epoch.
    pub epoch: u64,
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Workers per process.
    pub workers: usize,
    /// Wall-clock time the marker was written, epoch ms.
    pub written_ms: i64,
}

/// The checkpoint area of an archive's object store.
#[derive(Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// The root directory when the store is local: a deleted checkpoint's directory is removed
    /// too (a local store keeps empty directories, which would list as checkpoints).
    local_root: Option<std::path::PathBuf>,
}

fn epoch_dir(epoch: u64) -> String {
    format!("{ROOT}/{epoch:020}")
}

fn part_key(epoch: u64, process: usize, worker: usize, part: &str) -> Path {
    Path::from(format!(
        "{}/p{process}-w{worker}-{part}.bin",
        epoch_dir(epoch)
    ))
}

fn marker_key(epoch: u64, process: usize) -> Path {
    Path::from(format!("{}/p{process}.done", epoch_dir(epoch)))
}

impl CheckpointStore {
    /// Opens the checkpoint area of the archive `config` (same store, same credentials).
    pub fn open(config: &ArchiveConfig) -> Result<Self, ArchiveError> {
        let local_root = match config.root.split_once("://") {
            None => Some(config.root.as_str()),
            Some(("file", path)) => Some(path),
            Some(_) => None,
        };
        Ok(Self {
            store: open_store(&config.root, &config.s3)?,
            local_root: local_root.map(std::path::PathBuf::from),
        })
    }

    fn store_error(key: &Path) -> impl FnOnce(object_store::Error) -> CheckpointError + '_ {
        move |source| CheckpointError::Store {
            key: key.to_string(),
            source,
        }
    }

    /// Stores one part of a worker's state, given in pieces stored one after the other
    /// (overwriting a part left by an attempt that failed).
    pub async fn put_part(
        &self,
        epoch: u64,
        process: usize,
        worker: usize,
        part: &str,
        pieces: &[Bytes],
    ) -> Result<(), CheckpointError> {
        let key = part_key(epoch, process, worker, part);
        self.store
            .put(&key, pieces.iter().cloned().collect::<PutPayload>())
            .await
            .map(drop)
            .map_err(Self::store_error(&key))
    }

    /// Reads one part of a worker's state.
    pub async fn get_part(
        &self,
        epoch: u64,
        process: usize,
        worker: usize,
        part: &str,
    ) -> Result<Bytes, CheckpointError> {
        let key = part_key(epoch, process, worker, part);
        let got = self
            .store
            .get(&key)
            .await
            .map_err(Self::store_error(&key))?;
        got.bytes().await.map_err(Self::store_error(&key))
    }

    /// Writes a process's marker: its share of the checkpoint is complete.
    pub async fn put_marker(&self, marker: &Marker) -> Result<(), CheckpointError> {
        let key = marker_key(marker.epoch, marker.process);
        let json = serde_json::to_vec(marker).map_err(|source| CheckpointError::Marker {
            key: key.to_string(),
            source,
        })?;
        self.store
            .put(&key, PutPayload::from(json))
            .await
            .map(drop)
            .map_err(Self::store_error(&key))
    }

    /// The epochs that have a checkpoint directory, complete or not, ascending.
    pub async fn epochs(&self) -> Result<Vec<u64>, CheckpointError> {
        let root = Path::from(ROOT);
        let listed = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(Self::store_error(&root))?;
        let mut epochs: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The objects of checkpoint `epoch`.
    async fn objects(&self, epoch: u64) -> Result<Vec<object_store::ObjectMeta>, CheckpointError> {
        let dir = Path::from(epoch_dir(epoch));
        let listed = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(Self::store_error(&dir))?;
        Ok(listed.objects)
    }

    /// The markers written for `epoch`, by process.
    pub async fn markers(&self, epoch: u64) -> Result<Vec<Marker>, CheckpointError> {
        let mut markers = Vec::new();
        for object in self.objects(epoch).await? {
            if !object.location.as_ref().ends_with(".done") {
                continue;
            }
            let key = object.location;
            let got = self
                .store
                .get(&key)
                .await
                .map_err(Self::store_error(&key))?;
            let bytes = got.bytes().await.map_err(Self::store_error(&key))?;
            let marker: Marker =
                serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Marker {
                    key: key.to_string(),
                    source,
                })?;
            markers.push(marker);
        }
        markers.sort_by_key(|m| m.process);
        Ok(markers)
    }

    /// Whether every process of a cluster of `processes` wrote its marker for `epoch`; the
    /// markers if so.
    pub async fn complete(
        &self,
        epoch: u64,
        processes: usize,
    ) -> Result<Option<Vec<Marker>>, CheckpointError> {
        let markers = self.markers(epoch).await?;
        let all = (0..processes).all(|p| markers.iter().any(|m| m.process == p));
        Ok(all.then_some(markers))
    }

    /// The newest checkpoint complete for a cluster of `processes`, with its markers.
    pub async fn latest_complete(
        &self,
        processes: usize,
    ) -> Result<Option<(u64, Vec<Marker>)>, CheckpointError> {
        for epoch in self.epochs().await?.into_iter().rev() {
            if let Some(markers) = self.complete(epoch, processes).await? {
                return Ok(Some((epoch, markers)));
            }
        }
        Ok(None)
    }

    /// Deletes every object of checkpoint `epoch`, its marker first (so a half-deleted
    /// checkpoint is never taken for complete).
    pub async fn delete(&self, epoch: u64, processes: usize) -> Result<(), CheckpointError> {
        for process in 0..processes {
            let key = marker_key(epoch, process);
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(Self::store_error(&key)(source)),
            }
        }
        for object in self.objects(epoch).await? {
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(Self::store_error(&object.location)(source)),
            }
        }
        if let Some(root) = &self.local_root {
            // Only empty now; a failure leaves an empty directory, which is never complete.
            let _ = std::fs::remove_dir(root.join(epoch_dir(epoch)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> CheckpointStore {
        let config = ArchiveConfig {
            root: dir.display().to_string(),
            ..ArchiveConfig::default()
        };
        CheckpointStore::open(&config).expect("local store")
    }

    fn marker(epoch: u64, process: usize) -> Marker {
        Marker {
            epoch,
            process,
            processes: 2,
            workers: 1,
            written_ms: 0,
        }
    }

    #[test]
    fn a_checkpoint_is_complete_only_with_every_process_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert_eq!(store.latest_complete(2).await.expect("list"), None);
            for epoch in [300, 600] {
                store
                    .put_part(epoch, 0, 0, "fleet", &[Bytes::from_static(b"state")])
                    .await
                    .expect("part");
                store.put_marker(&marker(epoch, 0)).await.expect("marker");
            }
            store.put_marker(&marker(300, 1)).await.expect("marker");
            assert_eq!(store.epochs().await.expect("epochs"), vec![300, 600]);
            // 600 lacks process 1: the newest complete one is 300.
            let (epoch, markers) = store.latest_complete(2).await.expect("list").expect("one");
            assert_eq!(epoch, 300);
            assert_eq!(markers, vec![marker(300, 0), marker(300, 1)]);
            assert_eq!(
                store.get_part(600, 0, 0, "fleet").await.expect("get"),
                Bytes::from_static(b"state")
            );
            store.delete(300, 2).await.expect("delete");
            assert_eq!(store.epochs().await.expect("epochs"), vec![600]);
            assert_eq!(store.latest_complete(2).await.expect("list"), None);
            assert_eq!(
                store.latest_complete(1).await.expect("list").map(|c| c.0),
                Some(600)
            );
        });
    }
}
