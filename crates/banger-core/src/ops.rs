//! Long operations and their live progress (the seed's begin/status flow).
//!
//! An [`OpTracker`] is the single writer of one [`Operation`]: the VM actor running the
//! operation owns it and records stages as they start and end. Readers (the API's poll and SSE
//! routes, the web UI) subscribe through [`Operations`] and receive whole snapshots through a
//! `tokio::sync::watch` channel, so a slow reader never blocks the actor and always sees the
//! newest state. Finished operations are kept for a while (the newest [`KEEP_FINISHED`]) so a
//! client that polls late still gets the result.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use banger_api::{
    ApiError, Operation, OperationId, OperationKind, OperationStatus, Stage, StageStatus, VmId,
};
use chrono::Utc;
use tokio::sync::watch;

/// How many finished operations stay queryable.
pub const KEEP_FINISHED: usize = 512;

/// Every operation the daemon knows about.
#[derive(Debug, Clone, Default)]
pub struct Operations {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    live: HashMap<OperationId, watch::Receiver<Operation>>,
    finished_order: VecDeque<OperationId>,
}

impl Operations {
    /// Starts tracking a new operation and returns its single writer.
    pub fn begin(
        &self,
        kind: OperationKind,
        vm_id: Option<VmId>,
        vm_name: Option<String>,
    ) -> OpTracker {
        let op = Operation {
            id: OperationId::new(),
            kind,
            vm_id,
            vm_name,
            status: OperationStatus::Running,
            stages: Vec::new(),
            error: None,
            started_at: Utc::now(),
            ended_at: None,
        };
        let id = op.id;
        let (tx, rx) = watch::channel(op);
        self.lock().live.insert(id, rx);
        OpTracker {
            tx,
            registry: self.clone(),
            stage_started: None,
        }
    }

    /// The current snapshot of an operation.
    pub fn get(&self, id: OperationId) -> Option<Operation> {
        self.lock().live.get(&id).map(|rx| rx.borrow().clone())
    }

    /// A receiver that sees every later snapshot.
    pub fn subscribe(&self, id: OperationId) -> Option<watch::Receiver<Operation>> {
        self.lock().live.get(&id).cloned()
    }

    /// Snapshots of every known operation, newest first.
    pub fn list(&self) -> Vec<Operation> {
        let mut all: Vec<Operation> = self
            .lock()
            .live
            .values()
            .map(|rx| rx.borrow().clone())
            .collect();
        all.sort_by_key(|op| std::cmp::Reverse(op.started_at));
        all
    }

    fn finished(&self, id: OperationId) {
        let mut registry = self.lock();
        registry.finished_order.push_back(id);
        while registry.finished_order.len() > KEEP_FINISHED {
            if let Some(old) = registry.finished_order.pop_front() {
                registry.live.remove(&old);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The single writer of one operation. Dropping it unfinished marks the operation failed, so a
/// panicking or cancelled actor never leaves a client waiting forever.
#[derive(Debug)]
pub struct OpTracker {
    tx: watch::Sender<Operation>,
    registry: Operations,
    stage_started: Option<Instant>,
}

impl OpTracker {
    /// The operation's id.
    pub fn id(&self) -> OperationId {
        self.tx.borrow().id
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Operation {
        self.tx.borrow().clone()
    }

    /// Names the VM once it is known (create allocates it inside the operation).
    pub fn set_vm(&mut self, id: VmId, name: &str) {
        self.tx.send_modify(|op| {
            op.vm_id = Some(id);
            op.vm_name = Some(name.to_string());
        });
    }

    /// Starts a stage, ending any stage still running as done.
    pub fn stage(&mut self, name: &str) {
        self.end_stage(StageStatus::Done, None);
        self.stage_started = Some(Instant::now());
        self.tx.send_modify(|op| {
            op.stages.push(Stage {
                name: name.to_string(),
                status: StageStatus::Running,
                started_at: Utc::now(),
                ended_at: None,
                duration_ms: None,
                detail: None,
            });
        });
    }

    /// Sets a short detail on the running stage.
    pub fn detail(&mut self, detail: impl Into<String>) {
        let detail = detail.into();
        self.tx.send_modify(|op| {
            if let Some(stage) = op.stages.last_mut() {
                stage.detail = Some(detail);
            }
        });
    }

    /// A handle that sets the running stage's detail from elsewhere (a stream of output lines
    /// while the stage runs), without borrowing the tracker.
    pub fn progress(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let tx = self.tx.clone();
        move |line: &str| {
            let line = line.trim_end().to_string();
            tx.send_modify(|op| {
                if let Some(stage) = op.stages.last_mut() {
                    stage.detail = Some(line);
                }
            });
        }
    }

    fn end_stage(&mut self, status: StageStatus, detail: Option<String>) {
        let Some(started) = self.stage_started.take() else {
            return;
        };
        let elapsed = started.elapsed();
        self.tx.send_modify(|op| {
            if let Some(stage) = op.stages.last_mut() {
                stage.status = status;
                stage.ended_at = Some(Utc::now());
                stage.duration_ms = Some(elapsed.as_millis() as u64);
                if detail.is_some() {
                    stage.detail = detail;
                }
            }
        });
    }

    /// Ends the running stage, if any, as done.
    pub fn end_stage_done(&mut self) {
        self.end_stage(StageStatus::Done, None);
    }

    /// Timings of the stages that finished, for the VM record.
    pub fn timings(&self) -> Vec<banger_api::StageTiming> {
        self.tx
            .borrow()
            .stages
            .iter()
            .filter_map(|s| {
                s.duration_ms.map(|ms| banger_api::StageTiming {
                    stage: s.name.clone(),
                    duration_ms: ms,
                })
            })
            .collect()
    }

    /// Ends the running stage as done and the operation as succeeded.
    pub fn succeed(mut self) -> Operation {
        self.end_stage(StageStatus::Done, None);
        self.finish(OperationStatus::Succeeded, None)
    }

    /// Ends the running stage and the operation as failed with `error`.
    pub fn fail(mut self, error: ApiError) -> Operation {
        self.end_stage(StageStatus::Failed, None);
        self.finish(OperationStatus::Failed, Some(error))
    }

    fn finish(&mut self, status: OperationStatus, error: Option<ApiError>) -> Operation {
        self.tx.send_modify(|op| {
            op.status = status;
            op.error = error;
            op.ended_at = Some(Utc::now());
        });
        self.registry.finished(self.id());
        self.snapshot()
    }
}

impl Drop for OpTracker {
    fn drop(&mut self) {
        if self.tx.borrow().status == OperationStatus::Running {
            self.end_stage(StageStatus::Failed, None);
            let error = ApiError::new(
                banger_api::ErrorCode::Internal,
                "the operation was abandoned before it finished",
            );
            self.finish(OperationStatus::Failed, Some(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_timed_in_order_and_snapshots_reach_subscribers() {
        let ops = Operations::default();
        let mut tracker = ops.begin(OperationKind::CreateVm, None, None);
        let id = tracker.id();
        let mut rx = ops.subscribe(id).unwrap();
        tracker.stage("allocate");
        tracker.detail("172.30.0.2");
        tracker.stage("disks");
        assert!(rx.has_changed().unwrap());
        let seen = rx.borrow_and_update().clone();
        assert_eq!(seen.stages.len(), 2);
        assert_eq!(seen.stages[0].status, StageStatus::Done);
        assert_eq!(seen.stages[0].detail.as_deref(), Some("172.30.0.2"));
        assert_eq!(seen.stages[1].status, StageStatus::Running);
        let done = tracker.succeed();
        assert_eq!(done.status, OperationStatus::Succeeded);
        assert!(done
            .stages
            .iter()
            .all(|s| s.status == StageStatus::Done && s.duration_ms.is_some()));
        assert_eq!(ops.get(id).unwrap().status, OperationStatus::Succeeded);
    }

    #[test]
    fn failure_marks_running_stage_failed() {
        let ops = Operations::default();
        let mut tracker = ops.begin(OperationKind::StartVm, None, None);
        tracker.stage("vmm");
        let op = tracker.fail(ApiError::new(banger_api::ErrorCode::Internal, "boom"));
        assert_eq!(op.status, OperationStatus::Failed);
        assert_eq!(op.stages[0].status, StageStatus::Failed);
        assert_eq!(op.error.unwrap().message, "boom");
    }

    #[test]
    fn dropping_an_unfinished_tracker_fails_the_operation() {
        let ops = Operations::default();
        let id = {
            let mut tracker = ops.begin(OperationKind::StopVm, None, None);
            tracker.stage("shutdown");
            tracker.id()
        };
        let op = ops.get(id).unwrap();
        assert_eq!(op.status, OperationStatus::Failed);
        assert!(op.error.unwrap().message.contains("abandoned"));
    }

    #[test]
    fn only_the_newest_finished_operations_are_kept() {
        let ops = Operations::default();
        let first = ops.begin(OperationKind::StopVm, None, None);
        let first_id = first.id();
        first.succeed();
        for _ in 0..KEEP_FINISHED {
            ops.begin(OperationKind::StopVm, None, None).succeed();
        }
        assert!(ops.get(first_id).is_none());
        assert_eq!(ops.list().len(), KEEP_FINISHED);
    }
}
