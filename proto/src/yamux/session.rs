//! The yamux session state machine: bytes from the socket in, events and
//! bytes for the socket out.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::config::Config;
use super::error::{SessionError, StreamError};
use super::event::Event;
use super::header::{Flags, FrameType, Header, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, HEADER_LEN};
use super::keepalive::{Keepalive, KeepaliveAction};
use super::stream::{Stream, INITIAL_WINDOW};

/// Largest payload we put in one Data frame. yamux has no frame size limit
/// (Go sends up to the whole send window at once). Large frames keep the
/// header overhead negligible with 6 MiB+ windows. A cap still stops one
/// stream's write from forming a single frame of many MiB, which the peer
/// must then read before it sees any other stream's frames.
pub const MAX_DATA_FRAME: usize = 256 * 1024;

/// The least round-trip time window growth assumes: below it, what delays
/// a credit return is scheduling on the two hosts, not the path.
pub const GROWTH_RTT_FLOOR: Duration = Duration::from_millis(1);

/// Ping ids with this bit set are our round-trip probes; keepalive ids
/// count up from 0 and never reach it.
const PROBE_BIT: u32 = 1 << 31;

/// Payload of a Data frame whose header has been handled but whose bytes
/// have not all arrived yet.
#[derive(Clone, Copy, Debug)]
struct PendingPayload {
    stream_id: u32,
    /// Payload bytes still to come.
    remaining: u32,
    /// Hand the bytes to the application; otherwise skip them.
    deliver: bool,
    /// The frame carried FIN, to act on after its last byte.
    fin_after: bool,
}

impl PendingPayload {
    /// Payload to read past and drop.
    fn discard(stream_id: u32, len: u32) -> Self {
        PendingPayload {
            stream_id,
            remaining: len,
            deliver: false,
            fin_after: false,
        }
    }
}

/// A stream we half-closed, to reset if the peer's FIN is not in by
/// `deadline`.
#[derive(Clone, Copy, Debug)]
struct CloseTimer {
    deadline: Instant,
    stream_id: u32,
    serial: u64,
}

impl CloseTimer {
    /// Whether the stream this timer watches is still around. It may have
    /// closed normally since, and its id may even have been reused by a
    /// newer stream, which the serial tells apart.
    fn is_live(&self, streams: &HashMap<u32, Stream>) -> bool {
        streams
            .get(&self.stream_id)
            .is_some_and(|stream| stream.serial == self.serial)
    }
}

/// One yamux session over one connection, sans-IO.
///
/// The driver feeds socket bytes to [`Session::receive`], calls
/// [`Session::tick`] at [`Session::next_timeout`], hands
/// [`Session::poll_event`]'s events to the application, and writes whatever
/// [`Session::take_outbound`] returns to the socket. The application acts on
/// streams through [`Session::write_data`], [`Session::consumed`],
/// [`Session::close_stream`] and friends, which only queue frames.
#[derive(Debug)]
pub struct Session {
    config: Config,
    /// `config.max_stream_window`, raised to at least the initial window;
    /// the initial window itself until the session is admitted.
    max_window: u32,
    /// Whether the application admitted the session (see
    /// [`Config::pre_auth_streams`]).
    admitted: bool,
    /// Inbound streams refused with RST (backlog, stream caps, GoAway).
    refused_streams: u64,
    streams: HashMap<u32, Stream>,
    next_stream_id: u32,
    /// Serial for the next stream created (see [`Stream::serial`]).
    next_serial: u64,
    events: VecDeque<Event>,
    /// `StreamOpened` events queued but not yet polled: the accept backlog.
    unaccepted: usize,
    outbound: BytesMut,
    /// A Data frame we are in the middle of reading.
    payload: Option<PendingPayload>,
    keepalive: Keepalive,
    /// Half-closed streams awaiting the peer's FIN. Every timer has the same
    /// duration, so deadlines are queued in order and a FIFO suffices.
    close_timers: VecDeque<CloseTimer>,
    /// The latest time the driver told us about; the clock for timers that
    /// calls without a `now` argument start.
    now: Instant,
    /// We sent GoAway: refuse new inbound streams.
    local_go_away: bool,
    /// The peer sent GoAway: open no new streams.
    remote_go_away: bool,
    /// A fatal error happened; only flushing the outbound buffer is left.
    failed: bool,
    /// Round-trip time, from our last answered ping (probe or keepalive).
    rtt: Option<Duration>,
    /// The round-trip probe in flight: its ping id and when it went out.
    probe: Option<(u32, Instant)>,
    /// Window all live streams hold above the initial window, together.
    extra_window: u64,
    /// The most `extra_window` may reach (see [`Session::set_window_allowance`]).
    window_allowance: u64,
}

impl Session {
    /// A fresh session with no streams, its keepalive schedule starting at
    /// `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let admitted = config.pre_auth_streams == 0;
        Session {
            max_window: if admitted {
                config.effective_max_window()
            } else {
                INITIAL_WINDOW
            },
            admitted,
            refused_streams: 0,
            next_stream_id: config.role.first_stream_id(),
            keepalive: Keepalive::new(config.keepalive_interval, config.ping_timeout, now),
            config,
            streams: HashMap::new(),
            next_serial: 0,
            events: VecDeque::new(),
            unaccepted: 0,
            outbound: BytesMut::new(),
            payload: None,
            close_timers: VecDeque::new(),
            now,
            local_go_away: false,
            remote_go_away: false,
            failed: false,
            rtt: None,
            probe: None,
            extra_window: 0,
            window_allowance: u64::MAX,
        }
    }

    /// Admit the session: from now on inbound streams are capped by
    /// `max_streams` rather than `pre_auth_streams`, and new streams may
    /// have up to `max_stream_window` (streams already open keep theirs).
    /// With window auto-tuning a Ping goes out at `now` to measure the round
    /// trip that window growth is judged by.
    pub fn admit(&mut self, now: Instant) {
        self.admitted = true;
        self.max_window = self.config.effective_max_window();
        if self.config.window_autotune && self.probe.is_none() && !self.failed {
            let id = PROBE_BIT | (self.next_serial as u32 & !PROBE_BIT);
            self.probe = Some((id, now));
            self.queue(FrameType::Ping, Flags::SYN, 0, id);
        }
    }

    /// The round-trip time measured by our last answered ping, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Window all live streams hold above the initial 256 KiB, together:
    /// with auto-tuning, what the peer may make us buffer beyond the
    /// protocol's minimum.
    pub fn extra_window(&self) -> u64 {
        self.extra_window
    }

    /// Caps window growth: from now on streams grow only while
    /// [`Session::extra_window`] stays within `bytes` (and within
    /// `config.session_window_budget`). Windows already granted stay.
    pub fn set_window_allowance(&mut self, bytes: u64) {
        self.window_allowance = bytes;
    }

    /// The window a stream has now (0 if unknown).
    pub fn stream_window(&self, id: u32) -> u32 {
        self.streams.get(&id).map_or(0, Stream::window)
    }

    /// The receive window a new stream opens with.
    fn opening_window(&self) -> u32 {
        if self.config.window_autotune {
            INITIAL_WINDOW
        } else {
            self.max_window
        }
    }

    /// Inserts a new stream and counts its window.
    fn add_stream(&mut self, id: u32, awaiting_ack: bool) -> u32 {
        let window = self.opening_window();
        let serial = self.take_serial();
        self.streams
            .insert(id, Stream::new(window, awaiting_ack, serial, self.now));
        self.extra_window += u64::from(window - INITIAL_WINDOW);
        window
    }

    /// Forgets a stream and the window it held; whether it existed.
    fn remove_stream(&mut self, id: u32) -> bool {
        match self.streams.remove(&id) {
            Some(stream) => {
                self.extra_window = self
                    .extra_window
                    .saturating_sub(u64::from(stream.window() - INITIAL_WINDOW));
                true
            }
            None => false,
        }
    }

    /// How soon after the previous credit return a new one must come due
    /// for a stream's window to grow: two round trips, at least two
    /// [`GROWTH_RTT_FLOOR`]s.
    fn growth_interval(&self) -> Duration {
        2 * self.rtt.unwrap_or(GROWTH_RTT_FLOOR).max(GROWTH_RTT_FLOOR)
    }

    /// Keeps our keepalive ping from timing out while the driver has
    /// stopped reading on purpose (the answer may be in the bytes it has not
    /// read yet): an outstanding ping's deadline restarts at `now`.
    pub fn defer_keepalive(&mut self, now: Instant) {
        self.keepalive.defer(now);
    }

    /// Whether the session was admitted (or needed no admission).
    pub fn is_admitted(&self) -> bool {
        self.admitted
    }

    /// How many inbound streams were refused with RST so far.
    pub fn refused_streams(&self) -> u64 {
        self.refused_streams
    }

    /// The configuration this session runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Parses every complete frame header at the front of `input`, advancing
    /// past what it consumed. A header split across reads stays in `input`
    /// for the next call. Data payload is handed out as it arrives, split off
    /// `input` without copying, so a large frame can show up as several
    /// [`Event::Data`] pieces.
    ///
    /// A protocol violation (bad version or type, data beyond the receive
    /// window, SYN for an open stream, …) returns the error and queues
    /// GoAway(protocol error), which the driver should flush before closing.
    /// After any error the session is dead: further calls return
    /// [`SessionError::Closed`].
    pub fn receive(&mut self, input: &mut BytesMut, now: Instant) -> Result<(), SessionError> {
        if self.failed {
            return Err(SessionError::Closed);
        }
        self.now = now;
        self.receive_frames(input).map_err(|err| self.fail(err))
    }

    /// The next event for the application, in arrival order.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if matches!(event, Event::StreamOpened(_)) {
            self.unaccepted = self.unaccepted.saturating_sub(1);
        }
        Some(event)
    }

    /// Opens an outbound stream and returns its id. Queues the
    /// WindowUpdate|SYN that announces it, whose delta lifts the peer's
    /// credit from the initial 256 KiB to our `max_stream_window`. Go sends
    /// the same frame even when the delta is 0.
    pub fn open_stream(&mut self) -> Result<u32, StreamError> {
        if self.failed {
            return Err(StreamError::SessionFailed);
        }
        if self.remote_go_away {
            return Err(StreamError::RemoteGoAway);
        }
        let id = self.next_stream_id;
        // Go stops here too; the last two ids are never handed out.
        if id >= u32::MAX - 1 {
            return Err(StreamError::IdsExhausted);
        }
        self.next_stream_id = id + 2;
        let window = self.add_stream(id, true);
        let delta = Stream::opening_delta(window);
        self.queue(FrameType::WindowUpdate, Flags::SYN, id, delta);
        Ok(id)
    }

    /// Send credit left on a stream: 0 if the stream is unknown, gone, or
    /// closed for writing by us.
    pub fn send_window(&self, id: u32) -> u32 {
        self.streams.get(&id).map_or(0, Stream::send_window)
    }

    /// Queues Data frames carrying the first `min(send_window, data.len())`
    /// bytes of `data` and returns how many bytes that is. 0 means the
    /// window is exhausted: wait for [`Event::WindowUpdate`] for this stream.
    /// Each frame carries at most [`MAX_DATA_FRAME`] bytes.
    pub fn write_data(&mut self, id: u32, data: &[u8]) -> Result<usize, StreamError> {
        if self.failed {
            return Err(StreamError::SessionFailed);
        }
        let stream = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        if stream.local_closed {
            return Err(StreamError::ClosedForWriting(id));
        }
        let total = data.len().min(stream.send_window() as usize);
        let frames = total.div_ceil(MAX_DATA_FRAME);
        self.outbound.reserve(total + frames * HEADER_LEN);
        for chunk in data[..total].chunks(MAX_DATA_FRAME) {
            // A chunk is at most MAX_DATA_FRAME bytes, so it fits a u32.
            let len = chunk.len() as u32;
            Header::new(FrameType::Data, Flags::NONE, id, len).encode(&mut self.outbound);
            self.outbound.extend_from_slice(chunk);
        }
        // `total` is bounded by the u32 send window.
        stream.spend_send(total as u32);
        Ok(total)
    }

    /// Reports that the application consumed `n` bytes delivered by
    /// [`Event::Data`] on this stream. This is where receive credit flows
    /// back. As in Go, a WindowUpdate is queued only once the credit to
    /// return reaches half the stream's window (an eighth, auto-tuned).
    /// Uses the clock of the last
    /// `receive` or `tick`; see [`Session::consumed_at`].
    pub fn consumed(&mut self, id: u32, n: usize) {
        self.consumed_at(id, n, self.now);
    }

    /// [`Session::consumed`] at `now`. With auto-tuning, a stream that
    /// consumed half its window within `Session::growth_interval` has its
    /// window doubled (up to `max_stream_window`, within the session's
    /// budget and allowance), the growth granted with the next credit.
    pub fn consumed_at(&mut self, id: u32, n: usize, now: Instant) {
        if self.failed {
            return;
        }
        self.now = self.now.max(now);
        let interval = self.growth_interval();
        let room = self
            .window_allowance
            .min(self.config.session_window_budget)
            .saturating_sub(self.extra_window);
        let (autotune, cap) = (self.config.window_autotune, self.max_window);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        // Auto-tuned windows return credit in eighths rather than halves:
        // a window of W then keeps at least 7/8 W in flight, so it fills a
        // path of W × 8/7 bytes per round trip (Go's halves: 1/2 W).
        let divisor = if autotune { 8 } else { 2 };
        let Some(mut delta) = stream.consume(n, divisor) else {
            return;
        };
        if autotune {
            let grown = stream.grow(now, interval, cap, room);
            delta += grown;
            self.extra_window += u64::from(grown);
        }
        stream.grant(delta);
        self.queue(FrameType::WindowUpdate, Flags::NONE, id, delta);
    }

    /// Half-closes our direction: queues FIN (a WindowUpdate with FIN and
    /// delta 0). The stream is removed once the peer's FIN is in too. If it
    /// does not come within the stream close timeout, [`Session::tick`]
    /// resets the stream. Unknown or already closed streams are ignored.
    pub fn close_stream(&mut self, id: u32) {
        if self.failed {
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.local_closed {
            return;
        }
        stream.local_closed = true;
        let serial = stream.serial;
        let fully_closed = stream.remote_closed;
        self.queue(FrameType::WindowUpdate, Flags::FIN, id, 0);
        if fully_closed {
            self.remove_stream(id);
        } else if let Some(deadline) = self
            .config
            .stream_close_timeout
            .and_then(|timeout| self.now.checked_add(timeout))
        {
            self.compact_close_timers();
            self.close_timers.push_back(CloseTimer {
                deadline,
                stream_id: id,
                serial,
            });
        }
    }

    /// Aborts a stream: queues RST and forgets it. Any payload still arriving
    /// for it is dropped. Unknown streams are ignored.
    pub fn reset_stream(&mut self, id: u32) {
        if self.failed {
            return;
        }
        if self.remove_stream(id) {
            self.queue(FrameType::WindowUpdate, Flags::RST, id, 0);
        }
    }

    /// Queues GoAway with `code` (see [`GO_AWAY_NORMAL`] and friends). From
    /// now on new inbound streams are refused with RST. Streams already open
    /// carry on.
    pub fn go_away(&mut self, code: u32) {
        self.local_go_away = true;
        self.queue(FrameType::GoAway, Flags::NONE, 0, code);
    }

    /// Runs timers due at `now`: sends a keepalive Ping when one is due and
    /// resets half-closed streams whose close timeout ran out. Fails with
    /// [`SessionError::KeepaliveTimeout`] when our ping went unanswered for
    /// the ping timeout.
    pub fn tick(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.failed {
            return Err(SessionError::Closed);
        }
        self.now = now;
        self.expire_close_timers(now);
        match self.keepalive.poll(now) {
            KeepaliveAction::Idle => Ok(()),
            KeepaliveAction::SendPing(ping_id) => {
                self.queue(FrameType::Ping, Flags::SYN, 0, ping_id);
                Ok(())
            }
            KeepaliveAction::TimedOut => Err(self.fail(SessionError::KeepaliveTimeout)),
        }
    }

    /// When the driver should call [`Session::tick`] next; `None` if no
    /// timer is running.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let close = self.close_timers.front().map(|timer| timer.deadline);
        match (self.keepalive.next_deadline(), close) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether bytes are waiting to be written to the socket.
    pub fn has_outbound(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// Takes the bytes waiting to be written to the socket, leaving the
    /// buffer empty. The returned buffer shares its allocation with ours, so
    /// once the driver drops it, that memory is reused for later frames.
    pub fn take_outbound(&mut self) -> BytesMut {
        self.outbound.split()
    }

    /// Bytes waiting to be written to the socket. The session never stops
    /// queueing (ping replies and RSTs answer peer input), so a driver
    /// should stop reading while this is large and the socket is not
    /// draining it.
    pub fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    /// Streams currently tracked (open in at least one direction).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Whether the stream exists, open in at least one direction.
    pub fn is_stream_open(&self, id: u32) -> bool {
        self.streams.contains_key(&id)
    }

    /// Whether a fatal error has ended the session.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Receive credit the peer has left on a stream (0 if unknown); mostly
    /// for tests and metrics.
    pub fn recv_window(&self, id: u32) -> u32 {
        self.streams.get(&id).map_or(0, Stream::recv_window)
    }

    // ----- inbound -----

    /// The parse loop: alternates between headers and payload until `input`
    /// runs dry.
    fn receive_frames(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        loop {
            if self.payload.is_some() {
                if !self.receive_payload(input)? {
                    return Ok(());
                }
                continue;
            }
            let Some(raw) = input.first_chunk::<HEADER_LEN>() else {
                return Ok(());
            };
            let header = Header::decode(raw)?;
            input.advance(HEADER_LEN);
            match header.frame_type {
                FrameType::Data | FrameType::WindowUpdate => self.on_stream_frame(header)?,
                FrameType::Ping => self.on_ping(header),
                FrameType::GoAway => self.on_go_away(header.length)?,
            }
        }
    }

    /// Moves pending payload from `input` to the application (or drops it).
    /// Returns false when `input` ran out before the payload's end.
    fn receive_payload(&mut self, input: &mut BytesMut) -> Result<bool, SessionError> {
        let Some(mut payload) = self.payload.take() else {
            return Ok(true);
        };
        let n = input.len().min(payload.remaining as usize);
        if n > 0 {
            // `n <= remaining`, a u32.
            payload.remaining -= n as u32;
            // The stream may have been reset between two pieces of a frame.
            if payload.deliver && self.streams.contains_key(&payload.stream_id) {
                let bytes = input.split_to(n).freeze();
                self.events.push_back(Event::Data(payload.stream_id, bytes));
            } else {
                input.advance(n);
            }
        }
        if payload.remaining > 0 {
            self.payload = Some(payload);
            return Ok(false);
        }
        if payload.fin_after {
            self.on_remote_fin(payload.stream_id)?;
        }
        Ok(true)
    }

    /// A Data or WindowUpdate header: flags first (as Go does), then the
    /// window delta or payload.
    fn on_stream_frame(&mut self, header: Header) -> Result<(), SessionError> {
        let id = header.stream_id;
        let flags = header.flags;
        let is_data = header.frame_type == FrameType::Data;
        let opened = flags.contains(Flags::SYN) && self.on_remote_open(id)?;

        let Some(stream) = self.streams.get_mut(&id) else {
            // Most likely a stream we reset, or refused, while the peer was
            // still sending. Go drops such frames (reading past any payload)
            // without answering, and so do we.
            if is_data && header.length > 0 {
                self.payload = Some(PendingPayload::discard(id, header.length));
            }
            return Ok(());
        };

        if flags.contains(Flags::ACK) && stream.awaiting_ack {
            stream.awaiting_ack = false;
            self.events.push_back(Event::StreamAcked(id));
        }

        // RST overrides FIN and any payload: the stream is gone at once.
        if flags.contains(Flags::RST) {
            self.remove_stream(id);
            self.events.push_back(Event::Reset(id));
            if is_data && header.length > 0 {
                self.payload = Some(PendingPayload::discard(id, header.length));
            }
            return Ok(());
        }

        let fin = flags.contains(Flags::FIN);
        if is_data {
            let deliver = stream.accept_data(id, header.length)?;
            if header.length > 0 {
                // FIN waits until the last payload byte is delivered, so the
                // application sees the data before the end of stream.
                self.payload = Some(PendingPayload {
                    stream_id: id,
                    remaining: header.length,
                    deliver,
                    fin_after: fin,
                });
                return Ok(());
            }
        } else if header.length > 0 {
            stream.grant_send(header.length);
            // A new stream's credit is implied by StreamOpened, and a closed
            // writer has no use for credit.
            if !opened && !stream.local_closed {
                self.events.push_back(Event::WindowUpdate(id));
            }
        }
        if fin {
            self.on_remote_fin(id)?;
        }
        Ok(())
    }

    /// SYN for `id`. Creates and ACKs the stream, or refuses it with RST.
    /// Returns whether a stream was created.
    fn on_remote_open(&mut self, id: u32) -> Result<bool, SessionError> {
        // Go does not check these, but a Go peer never sends them. Taking
        // such an id would collide with one we may allocate ourselves.
        if id == 0 || self.config.role.owns(id) {
            return Err(SessionError::InvalidStreamId(id));
        }
        if self.streams.contains_key(&id) {
            return Err(SessionError::DuplicateStream(id));
        }
        // Refusing one stream keeps the session (and every other stream of
        // that frpc) alive. GoAway would tear all of them down.
        let cap = if self.admitted {
            self.config.max_streams
        } else {
            self.config.pre_auth_streams
        };
        if self.local_go_away
            || self.unaccepted >= self.config.accept_backlog
            || self.streams.len() >= cap
        {
            self.refused_streams += 1;
            self.queue(FrameType::WindowUpdate, Flags::RST, id, 0);
            return Ok(false);
        }
        let window = self.add_stream(id, false);
        // ACK right now, not on first use: see Event::StreamOpened.
        let delta = Stream::opening_delta(window);
        self.queue(FrameType::WindowUpdate, Flags::ACK, id, delta);
        self.events.push_back(Event::StreamOpened(id));
        self.unaccepted += 1;
        Ok(true)
    }

    /// FIN from the peer on `id`, once any payload of its frame is through.
    fn on_remote_fin(&mut self, id: u32) -> Result<(), SessionError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        // Go treats a second FIN as a protocol error and ends the session.
        if stream.remote_closed {
            return Err(SessionError::UnexpectedFin(id));
        }
        stream.remote_closed = true;
        let fully_closed = stream.local_closed;
        self.events.push_back(Event::Fin(id));
        if fully_closed {
            self.remove_stream(id);
        }
        Ok(())
    }

    /// Ping: answer a request with the same opaque value; match a reply
    /// against our keepalive.
    fn on_ping(&mut self, header: Header) {
        if header.flags.contains(Flags::SYN) {
            self.queue(FrameType::Ping, Flags::ACK, 0, header.length);
        } else if let Some((id, sent)) = self.probe {
            if id == header.length {
                self.rtt = Some(self.now.saturating_duration_since(sent));
            }
        }
        if !header.flags.contains(Flags::SYN) && header.length & PROBE_BIT == 0 {
            if let Some(rtt) = self.keepalive.on_ack(header.length, self.now) {
                self.rtt = Some(rtt);
            }
        }
    }

    /// GoAway from the peer. Code 0 only stops us from opening streams. Any
    /// other code ends the session, as it does in Go.
    fn on_go_away(&mut self, code: u32) -> Result<(), SessionError> {
        self.remote_go_away = true;
        self.events.push_back(Event::GoAway(code));
        if code == GO_AWAY_NORMAL {
            Ok(())
        } else {
            Err(SessionError::PeerGoAway { code })
        }
    }

    // ----- timers and shared plumbing -----

    /// Resets half-closed streams whose peer did not FIN in time, as Go's
    /// `StreamCloseTimeout` does. This stops a silent peer from pinning
    /// streams forever.
    fn expire_close_timers(&mut self, now: Instant) {
        while let Some(timer) = self.close_timers.front().copied() {
            if timer.deadline > now {
                break;
            }
            self.close_timers.pop_front();
            if timer.is_live(&self.streams) {
                self.remove_stream(timer.stream_id);
                self.queue(FrameType::WindowUpdate, Flags::RST, timer.stream_id, 0);
                self.events.push_back(Event::Reset(timer.stream_id));
            }
        }
    }

    /// Drops timers of streams that have since closed normally. Without
    /// this, a busy session closing thousands of streams a second would
    /// hold a timer for each of them for the whole timeout. Compacting only
    /// once the queue is twice the stream count keeps the cost amortized
    /// O(1) per close and the queue's length O(streams).
    fn compact_close_timers(&mut self) {
        if self.close_timers.len() <= 2 * self.streams.len() + 64 {
            return;
        }
        let streams = &self.streams;
        self.close_timers.retain(|timer| timer.is_live(streams));
    }

    /// Number of queued close timers, live or stale.
    #[cfg(test)]
    pub(crate) fn close_timer_count(&self) -> usize {
        self.close_timers.len()
    }

    /// Marks the session dead and returns `err`. A protocol violation is
    /// answered with GoAway(protocol error) first, as Go does.
    fn fail(&mut self, err: SessionError) -> SessionError {
        if err.is_protocol_violation() {
            self.go_away(GO_AWAY_PROTOCOL_ERROR);
        }
        self.failed = true;
        self.payload = None;
        err
    }

    /// Appends one header-only frame (or a Data header) to the outbound
    /// buffer.
    fn queue(&mut self, frame_type: FrameType, flags: Flags, id: u32, length: u32) {
        Header::new(frame_type, flags, id, length).encode(&mut self.outbound);
    }

    fn take_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }
}
