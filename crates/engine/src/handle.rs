//! The engine as an actor: one thread owns the `LlmEngine`; the server talks to it
//! through channels and never touches a device.
//!
//! Requests arrive on a std channel (the thread blocks on it when idle and drains it
//! between steps). Each request gets a tokio unbounded channel for its deltas; when the
//! receiver is dropped (client gone) the next send fails and the sequence is aborted,
//! freeing its blocks on that step.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::engine::{EngineError, EngineRequest, LlmEngine, RequestOutput};
use crate::metrics::EngineMetrics;
use crate::sequence::SeqId;

/// Facts about the running engine that do not change.
#[derive(Clone, Debug)]
pub struct EngineInfo {
    pub model_name: String,
    pub max_model_len: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub vocab_size: usize,
}

enum Command {
    Add {
        req: Box<EngineRequest>,
        out: tmpsc::UnboundedSender<RequestOutput>,
        reply: oneshot::Sender<Result<SeqId, EngineError>>,
    },
    Abort(SeqId),
    Shutdown,
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    info: Arc<EngineInfo>,
    metrics: Arc<Mutex<EngineMetrics>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// A request sent to the engine thread, before it answered whether it accepts it.
struct PendingAdd {
    reply: oneshot::Receiver<Result<SeqId, EngineError>>,
    outputs: tmpsc::UnboundedReceiver<RequestOutput>,
}

/// A submitted request: its id and the stream of its deltas.
pub struct RequestStream {
    pub id: SeqId,
    pub outputs: tmpsc::UnboundedReceiver<RequestOutput>,
}

impl EngineHandle {
    /// Moves the engine onto its own thread.
    pub fn spawn(engine: LlmEngine, model_name: String) -> EngineHandle {
        let info = Arc::new(EngineInfo {
            model_name,
            max_model_len: engine.max_model_len(),
            num_blocks: engine.num_blocks(),
            block_size: engine.block_size(),
            vocab_size: engine.model().config.vocab_size,
        });
        let metrics = Arc::new(Mutex::new(engine.metrics().clone()));
        let (tx, rx) = mpsc::channel();
        let m = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name("sluice-engine".into())
            .spawn(move || engine_loop(engine, rx, m))
            .ok();
        EngineHandle {
            tx,
            info,
            metrics,
            thread: Arc::new(Mutex::new(thread)),
        }
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// A snapshot of the metrics as of the last step.
    pub fn metrics(&self) -> EngineMetrics {
        self.metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Sends a request to the engine thread.
    fn send_add(&self, req: EngineRequest) -> Result<PendingAdd, EngineError> {
        let (out_tx, outputs) = tmpsc::unbounded_channel();
        let (reply_tx, reply) = oneshot::channel();
        self.tx
            .send(Command::Add {
                req: Box::new(req),
                out: out_tx,
                reply: reply_tx,
            })
            .map_err(|_| EngineError::Stopped)?;
        Ok(PendingAdd { reply, outputs })
    }

    /// Submits a request; fails at once if it is invalid (e.g. too long).
    pub async fn submit(&self, req: EngineRequest) -> Result<RequestStream, EngineError> {
        let p = self.send_add(req)?;
        let id = p.reply.await.map_err(|_| EngineError::Stopped)??;
        Ok(RequestStream {
            id,
            outputs: p.outputs,
        })
    }

    /// Blocking variant of `submit` for non-async callers.
    pub fn submit_blocking(&self, req: EngineRequest) -> Result<RequestStream, EngineError> {
        let p = self.send_add(req)?;
        let id = p
            .reply
            .blocking_recv()
            .map_err(|_| EngineError::Stopped)??;
        Ok(RequestStream {
            id,
            outputs: p.outputs,
        })
    }

    pub fn abort(&self, id: SeqId) {
        let _ = self.tx.send(Command::Abort(id));
    }

    /// Stops the engine thread (running requests are dropped) and waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Ok(mut t) = self.thread.lock() {
            if let Some(h) = t.take() {
                let _ = h.join();
            }
        }
    }
}

fn engine_loop(mut engine: LlmEngine, rx: Receiver<Command>, metrics: Arc<Mutex<EngineMetrics>>) {
    let mut streams: HashMap<SeqId, tmpsc::UnboundedSender<RequestOutput>> = HashMap::new();
    publish(&engine, &metrics);
    loop {
        // Block when idle; otherwise take whatever arrived since the last step.
        if !engine.has_unfinished() {
            match rx.recv() {
                Ok(cmd) => {
                    if !apply(&mut engine, &mut streams, cmd) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !apply(&mut engine, &mut streams, cmd) {
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        // Clients that went away since the last step.
        let gone: Vec<SeqId> = streams
            .iter()
            .filter(|(_, s)| s.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            streams.remove(&id);
            engine.abort(id);
        }
        if !engine.has_unfinished() {
            publish(&engine, &metrics);
            continue;
        }
        match engine.step() {
            Ok(outputs) => {
                for o in outputs {
                    let done = o.finished.is_some();
                    let id = o.id;
                    let delivered = streams.get(&id).map(|s| s.send(o).is_ok()).unwrap_or(false);
                    if done {
                        streams.remove(&id);
                    } else if !delivered {
                        streams.remove(&id);
                        engine.abort(id);
                    }
                }
            }
            Err(e) => {
                // A step failure is our bug: fail every running request loudly rather
                // than hang them, and keep serving new ones.
                tracing::error!("engine step failed: {e}");
                let ids: Vec<SeqId> = streams.keys().copied().collect();
                for id in ids {
                    streams.remove(&id);
                    engine.abort(id);
                }
            }
        }
        publish(&engine, &metrics);
    }
}

fn publish(engine: &LlmEngine, metrics: &Arc<Mutex<EngineMetrics>>) {
    if let Ok(mut m) = metrics.lock() {
        *m = engine.metrics().clone();
        m.scheduler = engine.scheduler().stats();
    }
}

/// Returns false on shutdown.
fn apply(
    engine: &mut LlmEngine,
    streams: &mut HashMap<SeqId, tmpsc::UnboundedSender<RequestOutput>>,
    cmd: Command,
) -> bool {
    match cmd {
        Command::Add { req, out, reply } => {
            let r = engine.add_request(*req);
            if let Ok(id) = &r {
                streams.insert(*id, out);
            }
            let _ = reply.send(r);
            true
        }
        Command::Abort(id) => {
            streams.remove(&id);
            engine.abort(id);
            true
        }
        Command::Shutdown => false,
    }
}
