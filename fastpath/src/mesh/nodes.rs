//! The mesh nodes connected to one worker, by node id, each with its
//! outbox: WebSocket frames ready to write, drained by the connection's
//! writer task in batches.
//!
//! Every node of a network is served by the same worker (the network's
//! home, [`home_worker`]), so a DATA frame between two nodes is a lookup
//! here and a push onto the other node's outbox: no lock, no other thread.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use local_sync::mpsc;
use proto::mesh::control::ErrorBody;
use proto::mesh::{frame, MsgType};
use proto::ws;

/// The worker that serves every node of `network_id`, of `workers`.
pub fn home_worker(network_id: u32, workers: usize) -> usize {
    network_id as usize % workers.max(1)
}

/// What a relay token said about the node holding a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAuth {
    /// The node.
    pub node_id: u32,
    /// Its network.
    pub network_id: u32,
    /// The token's id (a revocation names it).
    pub jti: String,
    /// The token's expiry, unix seconds.
    pub exp: u64,
}

/// One node's connection, as the rest of its worker reaches it.
pub struct Link {
    /// Who it is.
    pub auth: NodeAuth,
    outbox: RefCell<Option<mpsc::unbounded::Tx<Vec<u8>>>>,
    queued: Rc<Cell<usize>>,
    cap: usize,
}

/// A binary WebSocket message (server to client: unmasked) holding `msg`.
pub fn ws_binary(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 10);
    ws::encode_head(ws::Opcode::Binary, true, msg.len(), None, &mut out);
    out.extend_from_slice(msg);
    out
}

/// A seed frame of `kind` with a JSON `payload`, as a WebSocket message.
pub fn ws_seed_frame(kind: MsgType, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame::HEADER_LEN + payload.len());
    // Payloads built here are small JSON bodies, far under the limit.
    let _ = frame::encode(kind, 0, payload, &mut f);
    ws_binary(&f)
}

/// ERROR with `body`, as a WebSocket message.
pub fn ws_error(body: &ErrorBody) -> Vec<u8> {
    ws_seed_frame(
        MsgType::Error,
        &serde_json::to_vec(body).unwrap_or_default(),
    )
}

/// A WebSocket Close with `code` and `reason`.
pub fn ws_close(code: u16, reason: &str) -> Vec<u8> {
    let payload = ws::close_payload(code, reason);
    let mut out = Vec::with_capacity(payload.len() + 2);
    ws::encode_head(ws::Opcode::Close, true, payload.len(), None, &mut out);
    out.extend_from_slice(&payload);
    out
}

impl Link {
    /// A link whose outbox holds at most `cap` bytes; the writer task
    /// takes the receiving end and `queued` (bytes) with it.
    pub fn new(
        auth: NodeAuth,
        cap: usize,
    ) -> (Rc<Link>, mpsc::unbounded::Rx<Vec<u8>>, Rc<Cell<usize>>) {
        let (tx, rx) = mpsc::unbounded::channel();
        let queued = Rc::new(Cell::new(0));
        let link = Rc::new(Link {
            auth,
            outbox: RefCell::new(Some(tx)),
            queued: Rc::clone(&queued),
            cap,
        });
        (link, rx, queued)
    }

    /// Whether `len` more bytes fit in the outbox (checked before a frame
    /// is built for it, so that a drop costs no allocation).
    pub fn has_room(&self, len: usize) -> bool {
        self.queued.get() + len <= self.cap
    }

    /// Queue a frame for the node; false (the frame dropped) when its
    /// outbox is full or the link is closing.
    pub fn push(&self, frame: Vec<u8>) -> bool {
        if self.queued.get() + frame.len() > self.cap {
            return false;
        }
        self.force(frame)
    }

    /// Queue a frame whatever the outbox holds (errors, closes: a few).
    fn force(&self, frame: Vec<u8>) -> bool {
        let len = frame.len();
        let sent = match &*self.outbox.borrow() {
            Some(tx) => tx.send(frame).is_ok(),
            None => false,
        };
        if sent {
            self.queued.set(self.queued.get() + len);
        }
        sent
    }

    /// Send `error` (if any) and a Close, then end the connection: the
    /// writer sends what is queued, shuts down and aborts the socket, which
    /// stops the reader.
    pub fn close(&self, error: Option<&ErrorBody>, reason: &str) {
        self.close_with(1000, error, reason)
    }

    /// [`Link::close`] with WebSocket close `code` (1002 for a protocol
    /// error, 1009 for a message too large).
    pub fn close_with(&self, code: u16, error: Option<&ErrorBody>, reason: &str) {
        if let Some(e) = error {
            self.force(ws_error(e));
        }
        self.force(ws_close(code, reason));
        self.outbox.borrow_mut().take();
    }

    /// Whether [`Link::close`] ran.
    pub fn is_closing(&self) -> bool {
        self.outbox.borrow().is_none()
    }
}

/// The nodes on this worker.
#[derive(Default)]
pub struct MeshNodes {
    by_id: RefCell<HashMap<u32, Rc<Link>>>,
}

impl MeshNodes {
    /// Node `id`'s link, if it is connected here.
    pub fn get(&self, id: u32) -> Option<Rc<Link>> {
        self.by_id.borrow().get(&id).cloned()
    }

    /// Register `link`; a link the node held before is closed.
    pub fn insert(&self, link: Rc<Link>) {
        let old = self.by_id.borrow_mut().insert(link.auth.node_id, link);
        if let Some(old) = old {
            old.close(None, "replaced by a newer connection of this node");
        }
    }

    /// Forget `link` (its connection ended), unless a newer one replaced it.
    pub fn remove(&self, link: &Rc<Link>) {
        let mut m = self.by_id.borrow_mut();
        if m.get(&link.auth.node_id)
            .is_some_and(|l| Rc::ptr_eq(l, link))
        {
            m.remove(&link.auth.node_id);
        }
    }

    /// Every link, for a policy pass.
    pub fn all(&self) -> Vec<Rc<Link>> {
        self.by_id.borrow().values().cloned().collect()
    }

    /// How many nodes are connected here.
    pub fn len(&self) -> usize {
        self.by_id.borrow().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_id.borrow().is_empty()
    }
}
