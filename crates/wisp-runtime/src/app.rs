//! `process-http`: an executable that serves HTTP on `$PORT`, run as
//! long-lived replicas that requests are proxied to over keep-alive
//! connections.
//!
//! An [`AppFunction`] owns its replicas and one autoscaler task. The
//! autoscaler counts the requests in flight or waiting ("demand") every
//! [`TICK`] and keeps `ceil(peak demand / target_concurrency)` replicas,
//! bounded by the function's `min`/`max`, where the peak is taken over the
//! last `scale_down_delay`: a spike scales up at once, and replicas are
//! stopped only after demand has stayed low for the whole delay. A fixed
//! count set through the scale API overrides it.
//!
//! A request that finds no ready replica is held (a cold start) until one is
//! ready or its deadline passes. A replica that exits is removed at once, so
//! its in-flight requests fail with 502 and new ones go elsewhere; the
//! autoscaler replaces it. Stopping a replica takes it out of rotation first,
//! lets its in-flight requests finish, then sends SIGTERM and, after
//! [`STOP_GRACE`], SIGKILL to its process group.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader},
    sync::Notify,
    time::{Instant, Sleep},
};
use wisp_core::{Readiness, Scale};

use crate::{
    BoxError, Invocation, InvokeError, LogStream, Output, PrepareError, Response, ResponseBody,
    netns::socket_in,
    process::{Program, kill_group, signal_group},
    sandbox::Lease,
};

/// How often the autoscaler samples demand.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a replica may take to become ready before it is given up on.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping replica has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The first pause between readiness probes of a starting replica; it
/// doubles up to [`MAX_PROBE_INTERVAL`], so a fast app is found ready within
/// a millisecond or two and a slow one is not probed in a tight loop.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// The longest pause between readiness probes.
const MAX_PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// The longest pause between restarts of an app that keeps failing to start.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Response bodies of known length up to this size are read whole before the
/// response is sent on, so its head and body leave in one write.
const BUFFERED_BODY: u64 = 64 << 10;
/// The longest line of a replica's output kept for the log.
const MAX_LINE: u64 = 16 << 10;
/// Request and response headers that belong to one connection, not the message.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A prepared `process-http` function: its replicas and their autoscaler.
/// Dropping it stops them.
pub struct AppFunction {
    app: Arc<App>,
}

/// Replica counts, for the function's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Replicas running or starting.
    pub replicas: u64,
    /// Replicas ready for requests.
    pub ready: u64,
    /// Requests that waited for a replica to start.
    pub cold_starts: u64,
}

struct App {
    name: String,
    program: Program,
    scale: Scale,
    client: Client<ReplicaConnector, ResponseBody>,
    /// The network namespaces of replicas that have one, by port.
    namespaces: Namespaces,
    state: Mutex<State>,
    /// Signalled whenever a replica becomes ready or fails to start.
    changed: Notify,
    /// Wakes the autoscaler before its next tick.
    wake: Notify,
    /// Requests in flight or waiting for a replica.
    demand: AtomicU64,
    cold_starts: AtomicU64,
    next_replica: AtomicU64,
    closed: AtomicBool,
    /// The last line the app wrote, to explain a failed start.
    last_line: Mutex<String>,
    /// Where the replicas' output lines go.
    output: Output,
}

#[derive(Default)]
struct State {
    /// Replicas taking requests.
    ready: Vec<Arc<Replica>>,
    /// Replicas started and not ready yet.
    starting: u32,
    /// A replica count set through the scale API, overriding the autoscaler.
    fixed: Option<u32>,
    /// The latest failed start: when, and why.
    failure: Option<(Instant, String)>,
    /// Failed starts in a row, for the backoff.
    failures: u32,
}

struct Replica {
    id: u64,
    port: u16,
    in_flight: AtomicU64,
    /// Tells the replica's task to stop it.
    stop: Notify,
}

impl AppFunction {
    /// Prepares an app and starts its autoscaler, which starts `min` replicas
    /// in the background. Must be called within a tokio runtime.
    pub fn new(
        name: String,
        program: Program,
        scale: Scale,
        output: Output,
    ) -> Result<Self, PrepareError> {
        let namespaces = Namespaces::default();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(ReplicaConnector(namespaces.clone()));
        let app = Arc::new(App {
            name,
            program,
            scale,
            client,
            namespaces,
            state: Mutex::default(),
            changed: Notify::new(),
            wake: Notify::new(),
            demand: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            next_replica: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            last_line: Mutex::default(),
            output,
        });
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            PrepareError::Internal("process-http functions need a tokio runtime".into())
        })?;
        handle.spawn(autoscale(app.clone()));
        Ok(Self { app })
    }

    /// Waits until `min` replicas are ready, or fails with why the app did
    /// not start, so a broken app is refused at deploy time.
    pub async fn warm(&self) -> Result<(), InvokeError> {
        let since = Instant::now();
        let min = self.app.scale.min as usize;
        self.app
            .wait_for(since + READY_TIMEOUT, |state| {
                if state.ready.len() >= min {
                    Some(Ok(()))
                } else {
                    state
                        .failure_since(since)
                        .map(|why| Err(InvokeError::Failed(why)))
                }
            })
            .await
            .unwrap_or_else(|| {
                Err(InvokeError::Failed(format!(
                    "the app was not ready within {}s",
                    READY_TIMEOUT.as_secs()
                )))
            })
    }

    /// Proxies one request to the least busy ready replica, starting one if
    /// there is none.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Response, InvokeError> {
        let app = &self.app;
        let started = Instant::now();
        let demand = Counted::new(app.clone(), |app| &app.demand);
        let replica = self.replica(invocation.deadline).await?;
        let in_flight = Counted::new(replica.clone(), |replica| &replica.in_flight);

        let query = invocation
            .query
            .as_deref()
            .map(|query| format!("?{query}"))
            .unwrap_or_default();
        let uri = format!(
            "http://127.0.0.1:{}{}{query}",
            replica.port, invocation.path
        );
        let mut request = http::Request::new(invocation.body.into_body());
        *request.method_mut() = invocation.method;
        *request.uri_mut() = uri
            .parse()
            .map_err(|error| InvokeError::Failed(format!("bad request path: {error}")))?;
        let mut headers = invocation.headers;
        strip_hop_by_hop(&mut headers);
        if let Ok(call_id) = http::HeaderValue::from_str(&invocation.call_id) {
            headers.insert("x-call-id", call_id);
        }
        *request.headers_mut() = headers;

        let response =
            match tokio::time::timeout_at(invocation.deadline, app.client.request(request)).await {
                Err(_) => return Err(InvokeError::Timeout(invocation.deadline - started)),
                Ok(Err(error)) => {
                    return Err(InvokeError::Failed(format!(
                        "replica {} did not answer: {}",
                        replica.id,
                        error_chain(&error)
                    )));
                }
                Ok(Ok(response)) => response,
            };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if body
            .size_hint()
            .exact()
            .is_some_and(|length| length <= BUFFERED_BODY)
        {
            let body = match tokio::time::timeout_at(invocation.deadline, body.collect()).await {
                Err(_) => return Err(InvokeError::Timeout(invocation.deadline - started)),
                Ok(Err(error)) => {
                    return Err(InvokeError::Failed(format!(
                        "replica {} broke off its response: {error}",
                        replica.id
                    )));
                }
                Ok(Ok(collected)) => collected.to_bytes(),
            };
            return Ok(full_response(parts, body));
        }
        let body = Proxied {
            body,
            deadline: Box::pin(tokio::time::sleep_until(invocation.deadline)),
            _guards: (demand, in_flight),
        };
        Ok(http::Response::from_parts(parts, body.boxed_unsync()))
    }

    /// Sets a fixed replica count, or with `None` hands the count back to the autoscaler.
    pub fn set_replicas(&self, replicas: Option<u32>) {
        self.app.state().fixed = replicas;
        self.app.wake.notify_one();
    }

    /// How many replicas there are, ready or starting.
    pub fn counts(&self) -> ReplicaCounts {
        let state = self.app.state();
        ReplicaCounts {
            replicas: state.ready.len() as u64 + u64::from(state.starting),
            ready: state.ready.len() as u64,
            cold_starts: self.app.cold_starts.load(Ordering::Relaxed),
        }
    }

    /// Stops every replica and waits, up to [`STOP_GRACE`] past their
    /// in-flight requests, until their processes are gone.
    pub async fn drain(&self) {
        self.app.close();
        let deadline = Instant::now() + STOP_GRACE * 2;
        while self.app.state().starting > 0 || Arc::strong_count(&self.app) > 1 {
            if Instant::now() >= deadline {
                tracing::warn!("{}: replicas still stopping", self.app.name);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A ready replica, waiting for one to start when there is none.
    async fn replica(&self, deadline: tokio::time::Instant) -> Result<Arc<Replica>, InvokeError> {
        let app = &self.app;
        if let Some(replica) = app.state().least_busy() {
            return Ok(replica);
        }
        // A cold start: wake the autoscaler now rather than at its next tick.
        let since = Instant::now();
        app.cold_starts.fetch_add(1, Ordering::Relaxed);
        app.wake.notify_one();
        app.wait_for(deadline, |state| match state.least_busy() {
            Some(replica) => Some(Ok(replica)),
            None => state
                .failure_since(since)
                .map(|why| Err(InvokeError::Failed(why))),
        })
        .await
        .unwrap_or_else(|| Err(InvokeError::Timeout(deadline - since)))
    }
}

impl Drop for AppFunction {
    fn drop(&mut self) {
        self.app.close();
    }
}

impl App {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("app state")
    }

    /// Waits until `decide` answers, asking again whenever a replica becomes
    /// ready or fails to start; `None` once `deadline` passes.
    async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut decide: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(decided) = decide(&self.state()) {
                return Some(decided);
            }
            tokio::time::timeout_at(deadline, changed).await.ok()?;
        }
    }

    /// Stops the autoscaler and every replica.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for replica in std::mem::take(&mut self.state().ready) {
            replica.stop.notify_one();
        }
        self.wake.notify_one();
    }

    /// Starts or stops replicas to reach `wanted`.
    fn reconcile(self: &Arc<Self>, wanted: u32) {
        let mut state = self.state();
        let current = state.ready.len() as u32 + state.starting;
        if wanted > current {
            let backoff =
                MAX_BACKOFF.min(Duration::from_millis(100) * 2u32.pow(state.failures.min(6)));
            if state.failures > 0
                && state
                    .failure
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < backoff)
            {
                return;
            }
            for _ in current..wanted {
                state.starting += 1;
                tokio::spawn(run_replica(self.clone()));
            }
        } else if wanted < current && state.starting == 0 {
            // Stop the idlest replicas; they finish what they have in flight first.
            state.ready.sort_by_key(|replica| {
                std::cmp::Reverse(replica.in_flight.load(Ordering::Relaxed))
            });
            let excess = (current - wanted) as usize;
            let keep = state.ready.len().saturating_sub(excess);
            for replica in state.ready.split_off(keep) {
                tracing::info!(
                    "{}: stopping replica {} (scale down)",
                    self.name,
                    replica.id
                );
                replica.stop.notify_one();
            }
        }
    }

    /// Remembers why a replica did not start, and tells waiting requests.
    fn start_failed(&self, why: String) {
        let last = self.last_line.lock().expect("last line").clone();
        let why = if last.is_empty() {
            why
        } else {
            format!("{why}; its last output: {last}")
        };
        tracing::warn!("{}: {why}", self.name);
        {
            let mut state = self.state();
            state.starting -= 1;
            state.failures += 1;
            state.failure = Some((Instant::now(), why));
        }
        self.changed.notify_waiters();
    }
}

impl State {
    /// The ready replica with the fewest requests in flight.
    fn least_busy(&self) -> Option<Arc<Replica>> {
        self.ready
            .iter()
            .min_by_key(|replica| replica.in_flight.load(Ordering::Relaxed))
            .cloned()
    }

    /// Why the app failed to start, if it did after `since`.
    fn failure_since(&self, since: Instant) -> Option<String> {
        self.failure
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, why)| why.clone())
    }
}

/// The autoscaler: samples demand every [`TICK`] (or when woken) and
/// reconciles the replica count, until the app is closed.
async fn autoscale(app: Arc<App>) {
    let window = app.scale.scale_down_delay.0.max(TICK);
    let target = u64::from(app.scale.target_concurrency);
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    while !app.closed.load(Ordering::Relaxed) {
        let now = Instant::now();
        let demand = app.demand.load(Ordering::Relaxed);
        samples.push_back((now, demand));
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            samples.pop_front();
        }
        let peak = samples.iter().map(|(_, demand)| *demand).max().unwrap_or(0);
        let fixed = app.state().fixed;
        let wanted = match fixed {
            // A fixed count of 0 still wakes a replica for a request, as scale from zero does.
            Some(fixed) => fixed.max(u32::from(peak > 0)),
            None => (peak.div_ceil(target) as u32).clamp(app.scale.min, app.scale.max),
        };
        app.reconcile(wanted);
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = app.wake.notified() => {}
        }
    }
}

/// One replica from start to exit: spawn, wait until ready, serve until it
/// exits or is told to stop.
async fn run_replica(app: Arc<App>) {
    let id = app.next_replica.fetch_add(1, Ordering::Relaxed);
    let (reservation, port) = match free_port() {
        Ok(free) => free,
        Err(error) => return app.start_failed(format!("no free port for a replica: {error}")),
    };
    let (mut command, mut lease) =
        match app.program.command(vec![("PORT".into(), port.to_string())]) {
            Ok(command) => command,
            Err(error) => return app.start_failed(format!("could not sandbox a replica: {error}")),
        };
    // A replica with a network of its own listens there, not on the host:
    // the node holds its port on the host instead, so that no other replica
    // of this app is given the same one. Otherwise the replica needs it now.
    let _reserved = lease
        .as_ref()
        .is_some_and(Lease::has_own_network)
        .then_some(reservation);
    command.stdin(std::process::Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            // A replica must not outlive the node, even when the node is killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            return app.start_failed(format!(
                "could not start {}: {error}",
                app.program.program.display()
            ));
        }
    };
    let group = child.id().map(|pid| pid as libc::pid_t);
    let serving = match lease.as_mut() {
        Some(lease) => lease.network_up().await,
        None => Ok(()),
    }
    // A replica serves many calls: its own calls are one deep.
    .and_then(|()| app.program.serve_endpoint(lease.as_mut(), 0));
    let _serving = match serving {
        Ok(serving) => serving,
        Err(error) => {
            if let Some(group) = group {
                kill_group(group);
            }
            let _ = child.wait().await;
            return app.start_failed(format!("could not set up a replica's network: {error}"));
        }
    };
    let _namespace = lease
        .as_ref()
        .and_then(|lease| lease.netns())
        .map(|netns| Registered::new(app.namespaces.clone(), port, netns));
    let mut forwarders = Vec::new();
    for (stream, output) in [
        (
            LogStream::Stdout,
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn AsyncRead + Send + Unpin>),
        ),
        (
            LogStream::Stderr,
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn AsyncRead + Send + Unpin>),
        ),
    ] {
        if let Some(output) = output {
            forwarders.push(tokio::spawn(forward_output(app.clone(), stream, output)));
        }
    }

    let replica = Arc::new(Replica {
        id,
        port,
        in_flight: AtomicU64::new(0),
        stop: Notify::new(),
    });
    let ready = tokio::select! {
        ready = tokio::time::timeout(READY_TIMEOUT, wait_ready(&app, port)) => ready.is_ok(),
        status = child.wait() => {
            if let Some(group) = group {
                kill_group(group);
            }
            // Its last words explain the failure: read them to the end first.
            for forwarder in forwarders {
                let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
            }
            let status = status.map_or_else(|error| error.to_string(), |status| status.to_string());
            return app.start_failed(format!("the app exited ({status}) before it was ready on $PORT"));
        }
    };
    if !ready || app.closed.load(Ordering::Relaxed) {
        if let Some(group) = group {
            kill_group(group);
        }
        let _ = child.wait().await;
        if ready {
            app.state().starting -= 1;
            app.changed.notify_waiters();
        } else {
            app.start_failed(format!(
                "the app was not ready within {}s",
                READY_TIMEOUT.as_secs()
            ));
        }
        return;
    }
    {
        let mut state = app.state();
        state.starting -= 1;
        state.failures = 0;
        state.ready.push(replica.clone());
    }
    tracing::info!("{}: replica {id} ready on port {port}", app.name);
    app.changed.notify_waiters();

    tokio::select! {
        status = child.wait() => {
            // It died on its own: out of rotation at once; its in-flight requests fail.
            app.state().ready.retain(|ready| ready.id != id);
            let status = status.map_or_else(|error| error.to_string(), |status| status.to_string());
            tracing::warn!("{}: replica {id} exited ({status}); replacing it", app.name);
            app.wake.notify_one();
        }
        () = replica.stop.notified() => {
            // Already out of rotation: let in-flight requests finish, then stop it.
            while replica.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Some(group) = group {
                signal_group(group, libc::SIGTERM);
            }
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                tracing::warn!("{}: replica {id} ignored SIGTERM; killing it", app.name);
            }
        }
    }
    if let Some(group) = group {
        kill_group(group);
    }
    let _ = child.wait().await;
}

/// Polls until the replica on `port` passes its readiness probe.
async fn wait_ready(app: &App, port: u16) {
    let mut interval = PROBE_INTERVAL;
    loop {
        let ready = match &app.scale.readiness {
            Readiness::Tcp => connect(&app.namespaces, port).await.is_ok(),
            Readiness::Http(path) => match format!("http://127.0.0.1:{port}{path}").parse() {
                Ok(uri) => {
                    let probe = app.client.get(uri);
                    matches!(
                        tokio::time::timeout(Duration::from_secs(1), probe).await,
                        Ok(Ok(response)) if response.status().is_success()
                    )
                }
                Err(_) => false,
            },
        };
        if ready {
            return;
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_PROBE_INTERVAL);
    }
}

/// Hands a replica's output over line by line, keeping the last line.
async fn forward_output(
    app: Arc<App>,
    stream: LogStream,
    output: Box<dyn AsyncRead + Send + Unpin>,
) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            continue;
        }
        app.output.0.line(None, stream, text);
        *app.last_line.lock().expect("last line") = text.to_owned();
    }
}

/// A response whose body is already whole.
fn full_response(parts: http::response::Parts, body: Bytes) -> Response {
    let body: ResponseBody = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    http::Response::from_parts(parts, body)
}

/// The network namespaces of replicas that have one of their own, by port:
/// there, `127.0.0.1:$PORT` is the replica's own loopback, not the host's.
type Namespaces = Arc<Mutex<HashMap<u16, Arc<File>>>>;

/// A replica's namespace, known to the connector while this lives.
struct Registered {
    namespaces: Namespaces,
    port: u16,
}

impl Registered {
    fn new(namespaces: Namespaces, port: u16, netns: Arc<File>) -> Self {
        namespaces.lock().expect("namespaces").insert(port, netns);
        Self { namespaces, port }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.namespaces
            .lock()
            .expect("namespaces")
            .remove(&self.port);
    }
}

/// Connects to a replica's `127.0.0.1:port`: in its own network namespace
/// when it has one (the socket is made there), else on the host.
async fn connect(namespaces: &Namespaces, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let netns = namespaces.lock().expect("namespaces").get(&port).cloned();
    let stream = match netns {
        Some(netns) => {
            let socket = std::net::TcpStream::from(socket_in(&netns)?);
            tokio::net::TcpSocket::from_std_stream(socket)
                .connect(address)
                .await?
        }
        None => tokio::net::TcpStream::connect(address).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The gateway's connector to replicas: [`connect`] to the URI's port.
#[derive(Clone)]
struct ReplicaConnector(Namespaces);

impl tower_service::Service<http::Uri> for ReplicaConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio::net::TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let namespaces = self.0.clone();
        Box::pin(async move {
            let port = uri
                .port_u16()
                .ok_or_else(|| std::io::Error::other("a replica URI without a port"))?;
            connect(&namespaces, port).await.map(TokioIo::new)
        })
    }
}

/// A port nobody listens on now, for a replica's `$PORT`, held by the
/// listener until it is dropped.
fn free_port() -> std::io::Result<(std::net::TcpListener, u16)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// An error with its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Counts a request on one of its owner's counters (the app's demand, a
/// replica's requests in flight) for as long as the guard lives.
struct Counted<T> {
    owner: Arc<T>,
    counter: fn(&T) -> &AtomicU64,
}

impl<T> Counted<T> {
    fn new(owner: Arc<T>, counter: fn(&T) -> &AtomicU64) -> Self {
        counter(&owner).fetch_add(1, Ordering::Relaxed);
        Self { owner, counter }
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        (self.counter)(&self.owner).fetch_sub(1, Ordering::Relaxed);
    }
}

/// A replica's response body, streamed to the client until the deadline;
/// the request counts as in flight until the body is done.
struct Proxied {
    body: Incoming,
    deadline: Pin<Box<Sleep>>,
    _guards: (Counted<App>, Counted<Replica>),
}

impl Body for Proxied {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(
                "the function timed out writing its response".into()
            )));
        }
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(|error| error.into())
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
