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

/// What a link token said about the relay at the other end of a
/// relay-to-relay link, or, on the dialing side, which relay was dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAuth {
    /// The other relay.
    pub relay_id: u32,
    /// The token's id, on the accepting side (a revocation names it);
    /// empty on the dialing side.
    pub jti: String,
    /// Whether this relay dialed (its frames are masked, as a WebSocket
    /// client's are).
    pub dialer: bool,
}

/// A new link, its outbox's receiving end and its byte count.
pub type NewLink<A> = (Rc<Link<A>>, mpsc::unbounded::Rx<Vec<u8>>, Rc<Cell<usize>>);

/// Who an authenticated mesh connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshAuth {
    /// A node, on `/ws/data`.
    Node(NodeAuth),
    /// Another relay, on `/ws/mesh`.
    Relay(LinkAuth),
}

/// The worker that serves the link to relay `relay_id`.
pub fn link_worker(relay_id: u32, workers: usize) -> usize {
    relay_id as usize % workers.max(1)
}

/// A connection, as the rest of its worker reaches it: a node's
/// (`A` = [`NodeAuth`]) or another relay's ([`LinkAuth`]).
pub struct Link<A = NodeAuth> {
    /// Who it is.
    pub auth: A,
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

impl<A> Link<A> {
    /// A link whose outbox holds at most `cap` bytes; the writer task
    /// takes the receiving end and `queued` (bytes) with it.
    pub fn new(auth: A, cap: usize) -> NewLink<A> {
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

/// Mesh frames gathered for one destination while a read is handled,
/// sent on in one piece when it is done ([`MeshNodes::take_batches`]).
pub struct Batch {
    /// The worker that serves the destination.
    pub worker: usize,
    /// The link's relay, or 0 for nodes of that worker.
    pub relay: u32,
    /// Whole seed frames, back to back.
    pub frames: Vec<u8>,
}

/// The mesh on this worker: its nodes, its links to other relays, and
/// the frames waiting to go to either.
#[derive(Default)]
pub struct MeshNodes {
    by_id: RefCell<HashMap<u32, Rc<Link>>>,
    links: RefCell<HashMap<u32, Rc<Link<LinkAuth>>>>,
    /// Relays this worker is dialing (or holds a dialed link to).
    dialing: RefCell<std::collections::HashSet<u32>>,
    batches: RefCell<Vec<Batch>>,
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

    /// Forget `link` (its connection ended), unless a newer one replaced
    /// it; whether it was forgotten.
    pub fn remove(&self, link: &Rc<Link>) -> bool {
        let mut m = self.by_id.borrow_mut();
        if m.get(&link.auth.node_id)
            .is_some_and(|l| Rc::ptr_eq(l, link))
        {
            m.remove(&link.auth.node_id);
            return true;
        }
        false
    }

    /// The link to relay `id`, if this worker holds one.
    pub fn link(&self, id: u32) -> Option<Rc<Link<LinkAuth>>> {
        self.links.borrow().get(&id).cloned()
    }

    /// Register a link; one held before to the same relay is closed.
    pub fn insert_link(&self, link: Rc<Link<LinkAuth>>) {
        let old = self.links.borrow_mut().insert(link.auth.relay_id, link);
        if let Some(old) = old {
            old.close(None, "replaced by a newer link");
        }
    }

    /// Forget a link that ended, unless a newer one replaced it.
    pub fn remove_link(&self, link: &Rc<Link<LinkAuth>>) {
        let mut m = self.links.borrow_mut();
        if m.get(&link.auth.relay_id)
            .is_some_and(|l| Rc::ptr_eq(l, link))
        {
            m.remove(&link.auth.relay_id);
        }
    }

    /// Every link, for a policy pass.
    pub fn all_links(&self) -> Vec<Rc<Link<LinkAuth>>> {
        self.links.borrow().values().cloned().collect()
    }

    /// Mark relay `id` as dialed from here; false if it already is.
    pub fn start_dialing(&self, id: u32) -> bool {
        self.dialing.borrow_mut().insert(id)
    }

    /// Relay `id` is no longer dialed from here.
    pub fn stop_dialing(&self, id: u32) {
        self.dialing.borrow_mut().remove(&id);
    }

    /// Add a whole seed frame for (`worker`, `relay`); the batch's size
    /// after it.
    pub fn gather(&self, worker: usize, relay: u32, frame: &[u8]) -> usize {
        let mut b = self.batches.borrow_mut();
        let i = match b
            .iter()
            .position(|x| x.worker == worker && x.relay == relay)
        {
            Some(i) => i,
            None => {
                b.push(Batch {
                    worker,
                    relay,
                    frames: Vec::with_capacity(frame.len().max(16 * 1024)),
                });
                b.len() - 1
            }
        };
        b[i].frames.extend_from_slice(frame);
        b[i].frames.len()
    }

    /// Everything gathered, to be sent on.
    pub fn take_batches(&self) -> Vec<Batch> {
        std::mem::take(&mut *self.batches.borrow_mut())
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
