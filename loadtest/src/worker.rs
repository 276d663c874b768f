//! A worker thread: a single-threaded tokio runtime running its share of the connections.
//! Each connection slot loops: draw a kind, fill in a request, (re)connect if needed, send,
//! read the answer, count it.

use crate::http1::{self, ExchangeError, Reader};
use crate::mix::Mix;
use crate::plan::Plan;
use crate::request::IdGen;
use crate::stats::{ErrorKind, Live, Stats};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

type Conn = TlsStream<TcpStream>;

/// What every worker shares.
#[derive(Debug, Default)]
pub struct Shared {
    pub live: Live,
    /// The next source address's index (round robin over all workers).
    pub next_source: AtomicUsize,
}

/// The run's clock: when load starts, when measuring starts, when sending stops.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub warm_end: Instant,
    pub end: Instant,
}

/// One worker's state, shared by its connection slots (all on one thread).
struct Local {
    stats: RefCell<Stats>,
    mix: RefCell<Mix>,
    ids: RefCell<IdGen>,
    rng: RefCell<SmallRng>,
}

/// Runs `slots` (indices into all of the run's connections) on this thread until the end;
/// returns what it counted.
pub fn run(plan: Arc<Plan>, shared: Arc<Shared>, slots: Range<usize>, clock: Clock) -> Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut rng = SmallRng::from_os_rng();
        let w = Rc::new(Local {
            stats: RefCell::new(Stats::default()),
            mix: RefCell::new(Mix::new(plan.mix)),
            ids: RefCell::new(IdGen::new(&mut rng)),
            rng: RefCell::new(rng),
        });
        let tasks: Vec<_> = slots
            .map(|slot| {
                tokio::task::spawn_local(slot_loop(
                    plan.clone(),
                    shared.clone(),
                    w.clone(),
                    slot,
                    clock,
                ))
            })
            .collect();
        for t in tasks {
            t.await.expect("a connection slot panicked");
        }
        let w = Rc::try_unwrap(w).ok().expect("every slot is done");
        w.stats.into_inner()
    })
}

struct Slot {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    w: Rc<Local>,
    conn: Option<Conn>,
    reader: Reader,
    head: Vec<u8>,
}

async fn slot_loop(plan: Arc<Plan>, shared: Arc<Shared>, w: Rc<Local>, slot: usize, clock: Clock) {
    let mut s = Slot {
        plan: plan.clone(),
        shared,
        w,
        conn: None,
        reader: Reader::new(),
        head: Vec::with_capacity(1024),
    };
    tokio::time::sleep_until(clock.start).await;
    match plan.rate {
        None => loop {
            let now = Instant::now();
            if now >= clock.end {
                break;
            }
            s.one(now, now >= clock.warm_end).await;
        },
        Some(rate) => {
            // wrk2's schedule: each slot sends at its own fixed interval, offset so the slots
            // interleave; a late request is sent at once and its latency counts the delay.
            let interval = plan.connections as f64 / rate;
            let offset = slot as f64 / rate;
            for k in 0u64.. {
                let intended = clock.start + Duration::from_secs_f64(offset + k as f64 * interval);
                if intended >= clock.end {
                    break;
                }
                pace_until(intended).await;
                s.one(intended, intended >= clock.warm_end).await;
            }
        }
    }
}

/// Waits until `at` to within microseconds. tokio's timer fires on its next millisecond tick,
/// up to 1 ms late, and in rate mode that lateness would be counted as the server's latency
/// (it measured 1.2 ms at the median at 100 req/s, against 0.2 ms in a closed loop): sleep to
/// within a tick, then yield until the moment. The generator's core spins meanwhile, which is
/// why it gets a core of its own.
async fn pace_until(at: Instant) {
    let tick = Duration::from_millis(2);
    if let Some(coarse) = at.checked_sub(tick) {
        if Instant::now() < coarse {
            tokio::time::sleep_until(coarse).await;
        }
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

impl Slot {
    /// One request, meant to start at `intended`.
    async fn one(&mut self, intended: Instant, measured: bool) {
        let kind = self.w.mix.borrow_mut().next_kind();
        self.plan.requests.write(
            kind,
            &mut self.w.ids.borrow_mut(),
            &mut self.w.rng.borrow_mut(),
            &mut self.head,
        );
        let began = Instant::now();
        let result = tokio::time::timeout_at(began + self.plan.timeout, self.attempt()).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err((
                ErrorKind::Timeout,
                format!("no answer within {:?}", self.plan.timeout),
            )),
        };
        let done = Instant::now();
        if self.record(
            kind,
            measured,
            done.saturating_duration_since(intended),
            result,
        ) {
            // Nothing listens, or the source ports are used up: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Counts one request's outcome; `true` if the slot should pause before the next.
    fn record(
        &mut self,
        kind: crate::mix::Kind,
        measured: bool,
        latency: Duration,
        result: Result<http1::Response, (ErrorKind, String)>,
    ) -> bool {
        let live = &self.shared.live;
        let mut stats = self.w.stats.borrow_mut();
        let body = if self.plan.requests.inline_body() {
            0
        } else {
            self.plan.requests.body.len()
        };
        stats.bytes_sent += (self.head.len() + body) as u64;
        if measured {
            stats.kinds[kind.index()].sent += 1;
        }
        match result {
            Ok(resp) => {
                live.responses.fetch_add(1, Ordering::Relaxed);
                stats.bytes_received += resp.received;
                if !resp.reusable || self.plan.new_conn {
                    self.conn = None;
                }
                if measured {
                    let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
                    stats.answered(kind, resp.status, micros);
                } else {
                    stats.warmup_responses += 1;
                }
                false
            }
            Err((error, message)) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                self.conn = None;
                if measured {
                    stats.failed(kind, error, || message);
                } else {
                    stats.warmup_errors += 1;
                }
                error == ErrorKind::Connect
            }
        }
    }

    /// Connects if needed, then exchanges the request in `head` (and the body).
    async fn attempt(&mut self) -> Result<http1::Response, (ErrorKind, String)> {
        if self.conn.is_none() {
            let c = connect(&self.plan, &self.shared).await?;
            self.w.stats.borrow_mut().connections += 1;
            self.conn = Some(c);
        }
        let conn = self.conn.as_mut().expect("connected");
        let body: &[u8] = if self.plan.requests.inline_body() {
            &[]
        } else {
            &self.plan.requests.body
        };
        http1::exchange(conn, &mut self.reader, &self.head, body)
            .await
            .map_err(|e| match e {
                ExchangeError::Io(e) => (ErrorKind::Io, e.to_string()),
                ExchangeError::Parse(e) => (ErrorKind::Parse, e),
            })
    }
}

/// A new TLS connection, from the next source address if there are any.
async fn connect(plan: &Plan, shared: &Shared) -> Result<Conn, (ErrorKind, String)> {
    let addr = plan.target.addr;
    let tcp = if plan.sources.is_empty() {
        TcpStream::connect(addr).await
    } else {
        let i = shared.next_source.fetch_add(1, Ordering::Relaxed) % plan.sources.len();
        connect_from(SocketAddr::new(plan.sources[i], 0), addr).await
    }
    .map_err(|e| (ErrorKind::Connect, format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    plan.connector
        .connect(plan.server_name.clone(), tcp)
        .await
        .map_err(|e| (ErrorKind::Tls, e.to_string()))
}

async fn connect_from(source: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    bind_address_no_port(&socket);
    socket.bind(source)?;
    socket.connect(to).await
}

/// Lets the kernel pick the source port at connect time, per destination, rather than at bind
/// time for any destination: many more connections per source address (Linux only).
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
    // Best effort: without it, each source address still gives tens of thousands of ports.
    let _ = setsockopt(socket, IpBindAddressNoPort, &true);
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) {}

/// Splits `connections` slots over `threads`: the i-th thread's range.
pub fn share(connections: usize, threads: usize, i: usize) -> Range<usize> {
    let base = connections / threads;
    let extra = connections % threads;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_slot_once() {
        for (c, t) in [(32, 1), (32, 3), (5, 5), (7, 2), (1, 1)] {
            let all: Vec<usize> = (0..t).flat_map(|i| share(c, t, i)).collect();
            assert_eq!(all, (0..c).collect::<Vec<_>>());
        }
    }
}
