//! A session's work-connection pool: the connections frpc opened in
//! advance (it is asked for `poolCount` at login and for one more each time
//! one is taken), and the user connections waiting for one.
//!
//! Follows frps: a user connection takes a pooled connection or asks frpc
//! for one and waits; either way it asks for another to refill the pool; a
//! connection that went stale in the pool is skipped. The pool knows
//! nothing of the session: the caller says how to ask frpc for more.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Duration;

use local_sync::oneshot;
use proto::msg::Message;

use crate::frp::msgio::{self, Wire};
use crate::transport::conn::Conn;

/// A work connection and the wire protocol it speaks.
pub type WorkConn = (Conn, Wire);

/// Why [`WorkConnPool::take`] came back without a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWorkConn {
    /// The session closed.
    Closed,
    /// frpc sent none within the wait.
    TimedOut,
    /// Every one tried was gone before it could be started.
    Stale,
    /// As many user connections as the session may have are waiting
    /// already (`fastpath.pendingUserConns`).
    TooManyWaiting,
}

/// One session's idle work connections and waiting user connections.
pub struct WorkConnPool {
    idle: RefCell<VecDeque<WorkConn>>,
    waiters: RefCell<VecDeque<oneshot::Sender<WorkConn>>>,
    /// The Login's `poolCount`, capped by the server: how many connections
    /// frpc is asked for at login, and how many stale ones a take skips.
    count: usize,
    /// Most idle connections kept; more are dropped.
    cap: usize,
    /// Most user connections waiting at once.
    max_waiting: usize,
    /// User connections waiting now.
    waiting: Cell<usize>,
    closed: Cell<bool>,
}

/// Counts one waiting user connection for as long as it lives.
struct Waiting<'a>(&'a Cell<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl WorkConnPool {
    /// A pool for a session that asked for `count` connections in advance
    /// and may have `max_waiting` user connections waiting for one.
    pub fn new(count: usize, max_waiting: usize) -> WorkConnPool {
        WorkConnPool {
            idle: RefCell::new(VecDeque::new()),
            waiters: RefCell::new(VecDeque::new()),
            count,
            cap: count + 10,
            max_waiting,
            waiting: Cell::new(0),
            closed: Cell::new(false),
        }
    }

    /// How many connections to ask frpc for at login.
    pub fn count(&self) -> usize {
        self.count
    }

    /// User connections waiting for a work connection now.
    pub fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// A work connection arrived: hand it to the first user connection
    /// still waiting, else keep it. False when it was dropped (the pool is
    /// closed or full).
    pub fn put(&self, conn: Conn, wire: Wire) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut conn = (conn, wire);
        loop {
            let waiter = self.waiters.borrow_mut().pop_front();
            match waiter {
                Some(tx) => match tx.send(conn) {
                    Ok(()) => return true,
                    // That user connection gave up waiting.
                    Err(back) => conn = back,
                },
                None => break,
            }
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= self.cap {
            return false;
        }
        idle.push_back(conn);
        true
    }

    /// Take a work connection and send it `start` (a StartWorkConn); the
    /// connection and the wire protocol it speaks.
    /// `ask` asks frpc for one more: when none is idle (then waits up to
    /// `wait` for it), and after each take to refill the pool.
    pub async fn take(
        &self,
        start: &Message,
        wait: Duration,
        ask: impl Fn(),
    ) -> Result<WorkConn, NoWorkConn> {
        for _ in 0..=self.count {
            if self.closed.get() {
                return Err(NoWorkConn::Closed);
            }
            let pooled = self.idle.borrow_mut().pop_front();
            let (mut conn, wire) = match pooled {
                Some(c) => c,
                None => {
                    if self.waiting.get() >= self.max_waiting {
                        return Err(NoWorkConn::TooManyWaiting);
                    }
                    self.waiting.set(self.waiting.get() + 1);
                    let _waiting = Waiting(&self.waiting);
                    let (tx, rx) = oneshot::channel();
                    self.waiters.borrow_mut().push_back(tx);
                    ask();
                    // monoio's timer is 640 bytes aligned to 128: boxed, it
                    // is allocated while a user connection waits, and the
                    // task of every relayed connection stays small and
                    // plainly aligned instead of carrying it for its life.
                    match Box::pin(monoio::time::timeout(wait, rx)).await {
                        Ok(Ok(c)) => c,
                        _ => return Err(NoWorkConn::TimedOut),
                    }
                }
            };
            ask();
            let (r, _) = conn.write_all(msgio::encode(start, wire)).await;
            if r.is_ok() {
                return Ok((conn, wire));
            }
        }
        Err(NoWorkConn::Stale)
    }

    /// The session closed: drop the idle connections and the waiters (their
    /// user connections end), and take no more.
    pub fn close(&self) {
        self.closed.set(true);
        self.idle.borrow_mut().clear();
        self.waiters.borrow_mut().clear();
    }
}
