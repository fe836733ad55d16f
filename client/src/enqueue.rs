//! Group commit for the outbox: one thread writes the outbox entries of all concurrent
//! [`crate::Client::send`] calls in one transaction (one fsync per batch instead of one per message),
//! off the tokio runtime.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::store::{ClientStore, OutboxRecord};

/// Most entries written in one transaction.
const MAX_BATCH: usize = 512;
/// Capacity of the queue to the writer thread.
const CAPACITY: usize = 4096;

type Job = (OutboxRecord, oneshot::Sender<Result<i64, StoreError>>);

/// Handle to the outbox writer thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct Enqueuer {
    tx: mpsc::Sender<Job>,
}

impl Enqueuer {
    /// Starts the writer thread for `store`.
    pub fn start(store: Arc<dyn ClientStore>) -> Result<Self, StoreError> {
        let (tx, mut rx) = mpsc::channel::<Job>(CAPACITY);
        std::thread::Builder::new()
            .name("ferry-outbox".into())
            .spawn(move || {
                // Ends when every sender is gone; each round writes what has queued up meanwhile.
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    let records: Vec<OutboxRecord> = jobs.iter().map(|(r, _)| r.clone()).collect();
                    match store.enqueue_batch(&records) {
                        Ok(ids) => {
                            for ((_, reply), id) in jobs.into_iter().zip(ids) {
                                let _ = reply.send(Ok(id));
                            }
                        }
                        Err(e) => {
                            let message = e.to_string();
                            for (_, reply) in jobs {
                                let _ = reply.send(Err(StoreError::Task(message.clone())));
                            }
                        }
                    }
                }
            })?;
        Ok(Enqueuer { tx })
    }

    /// Writes one entry durably and returns its id.
    pub async fn enqueue(&self, record: OutboxRecord) -> Result<i64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((record, reply))
            .await
            .map_err(|_| StoreError::Task("outbox writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Task("outbox writer stopped".into()))?
    }
}
