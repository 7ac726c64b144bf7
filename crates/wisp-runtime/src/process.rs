//! Executables, one process per request, with the OpenFaaS watchdog's
//! contract: the body on STDIN, `Http_*` environment variables, STDOUT as the
//! response, STDERR to the log, a non-zero exit status as a failure. What a
//! process used (peak RSS, CPU time) is read when it exits, before it is reaped.
//!
//! Every process leads its own process group, so at the deadline the whole
//! group is killed, children included. [`Program::command`] is the one place
//! a function's process is set up, for this kind and for `process-http`
//! replicas alike; with a [`Jail`] it starts inside the sandbox.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

use crate::{
    Invocation, InvokeError, LogStream, Meter, Output, PrepareError, Response,
    endpoint::{self, NodeAccess, Serving},
    full_response,
    sandbox::{FUNCTION_DIR, Jail, Lease},
    stdio_content_type,
    warm::{self, Warm},
    watchdog_env,
};

/// The most a process may write to STDOUT (its response body).
pub const MAX_STDOUT: u64 = 64 << 20;
/// How much of a streamed STDOUT is read at a time.
const CHUNK: usize = 64 << 10;
/// The most of a process's STDERR that is kept for the log, per invocation.
pub const MAX_STDERR: u64 = 64 << 10;
/// `PATH` for functions, which inherit nothing from the node's environment.
const FUNCTION_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A function's command line, resolved, with its directory and environment.
#[derive(Debug, Clone)]
pub struct Program {
    /// The working directory: the unpacked artifact, or an empty directory.
    pub dir: PathBuf,
    /// The executable's absolute path.
    pub program: PathBuf,
    /// The arguments after the program.
    pub args: Vec<String>,
    /// Environment variables the function declared.
    pub env: Vec<(String, String)>,
    /// The sandbox its processes run in; none when the node runs unsandboxed.
    pub jail: Option<Jail>,
    /// What its processes reach at `$WISP_API_URL` ([`crate::endpoint`]);
    /// no endpoint when absent.
    pub node: Option<Arc<NodeAccess>>,
}

impl Program {
    /// A program from its command line, split on whitespace as the watchdog
    /// splits `fprocess`. The program is resolved now, so a missing one is
    /// refused at deploy time: `./x` in the artifact directory, a bare name
    /// in [`FUNCTION_PATH`].
    pub fn new(
        dir: PathBuf,
        command: &str,
        env: Vec<(String, String)>,
    ) -> Result<Self, PrepareError> {
        let mut words = command.split_whitespace().map(str::to_owned);
        let program = words
            .next()
            .ok_or_else(|| PrepareError::InvalidArtifact("the command is empty".into()))?;
        let found = if program.contains('/') {
            Some(dir.join(&program)).filter(|path| is_executable(path))
        } else {
            FUNCTION_PATH
                .split(':')
                .map(|bin| Path::new(bin).join(&program))
                .find(|path| is_executable(path))
        };
        let program = found.ok_or_else(|| {
            PrepareError::InvalidArtifact(format!(
                "the command `{program}` is not an executable file (paths are looked up in \
                 the artifact, names in {FUNCTION_PATH})"
            ))
        })?;
        Ok(Self {
            dir,
            program,
            args: words.collect(),
            env,
            jail: None,
            node: None,
        })
    }

    /// The command every process of a function starts from: its own process
    /// group, its directory, only the environment it declared and `extra`
    /// (what this process is told: the request, its port), output piped,
    /// inside its jail if it has one (whose uid lease must then be kept
    /// until the process is gone). Unsandboxed, the program is an absolute
    /// path, which lets the standard library spawn with `posix_spawn`: no
    /// copy of the node's page tables, as `fork` makes.
    pub fn command(
        &self,
        extra: Vec<(String, String)>,
    ) -> std::io::Result<(tokio::process::Command, Option<Lease>)> {
        let env = self.environment(extra);
        let token = self.node.as_ref().map(|_| endpoint::token());
        let (mut command, lease) = match &self.jail {
            Some(jail) => jail.command(&self.dir, &self.program, &env, token.as_deref())?,
            None => {
                let mut command = tokio::process::Command::new(&self.program);
                command.current_dir(&self.dir).env_clear().envs(env);
                let lease = match &token {
                    Some(token) => {
                        let listener =
                            std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
                        command.envs(endpoint::env(listener.local_addr()?.port(), token));
                        Some(Lease::unsandboxed(listener, token))
                    }
                    None => None,
                };
                (command, lease)
            }
        };
        command
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Ok((command, lease))
    }

    /// A process's whole environment: `PATH`, `HOME`, what the function
    /// declared and `extra`.
    fn environment(&self, extra: Vec<(String, String)>) -> Vec<(String, String)> {
        let home = match &self.jail {
            Some(_) => Path::new(FUNCTION_DIR),
            None => self.dir.as_path(),
        };
        [
            ("PATH".to_owned(), FUNCTION_PATH.to_owned()),
            ("HOME".to_owned(), home.to_string_lossy().into_owned()),
        ]
        .into_iter()
        .chain(self.env.iter().cloned())
        .chain(extra)
        .collect()
    }

    /// Serves the node's endpoint to a process started from
    /// [`Program::command`], once its network is up, for as long as the
    /// returned guard is kept; `depth` is how many in-process calls led to
    /// the process.
    pub fn serve_endpoint(
        &self,
        lease: Option<&mut Lease>,
        depth: u32,
    ) -> std::io::Result<Option<Serving>> {
        let (Some(node), Some((listener, token))) =
            (&self.node, lease.and_then(Lease::take_endpoint))
        else {
            return Ok(None);
        };
        endpoint::serve(listener, token, node.clone(), depth).map(Some)
    }
}

/// A prepared `process` function: one process per request.
#[derive(Debug, Clone)]
pub struct ProcessFunction {
    /// What to run.
    program: Program,
    /// Where its STDERR lines go.
    output: Output,
    /// Its warm sandbox, when its processes start in one ([`crate::warm`]).
    warm: Option<Arc<Warm>>,
}

/// A call's process, started: its STDIO, what waits for its exit status,
/// and what must be kept until it is gone (dropped, it ends the call's processes).
struct Running {
    stdin: Box<dyn AsyncWrite + Send + Unpin>,
    stdout: Box<dyn AsyncRead + Send + Unpin>,
    stderr: Box<dyn AsyncRead + Send + Unpin>,
    wait: std::pin::Pin<
        Box<dyn Future<Output = Result<std::process::ExitStatus, InvokeError>> + Send>,
    >,
    guard: Box<dyn Send>,
}

impl ProcessFunction {
    /// A function that runs `program`, its STDERR lines to `output`.
    pub fn new(program: Program, output: Output) -> Self {
        let warm = match (&program.jail, &program.node) {
            (Some(jail), None) => Warm::new(jail, program.dir.clone()),
            _ => None,
        };
        Self {
            program,
            output,
            warm,
        }
    }

    /// Starts a call's process in the function's warm sandbox.
    async fn start_warm(
        &self,
        warm: &Warm,
        request: Vec<(String, String)>,
        meter: Arc<Meter>,
    ) -> std::io::Result<Running> {
        let env = self.program.environment(request);
        let argv = std::iter::once(self.program.program.clone().into_os_string())
            .chain(self.program.args.iter().map(Into::into))
            .collect();
        let started = warm.start(argv, &env).await?;
        let outcome = started.outcome;
        let wait = async move {
            let outcome = warm::outcome(outcome).await.ok_or_else(|| {
                InvokeError::Internal(
                    "the sandbox could not start the process (see the function's log)".into(),
                )
            })?;
            meter.cpu(Duration::from_micros(outcome.cpu_micros));
            meter.memory(outcome.max_rss_kib * 1024);
            Ok(std::os::unix::process::ExitStatusExt::from_raw(
                outcome.status,
            ))
        };
        Ok(Running {
            stdin: Box::new(started.stdin),
            stdout: Box::new(started.stdout),
            stderr: Box::new(started.stderr),
            wait: Box::pin(wait),
            guard: Box::new(started.lease),
        })
    }

    /// Starts a call's process in a sandbox of its own, or none; `depth` is
    /// how many in-process calls led to it.
    async fn start_cold(
        &self,
        request: Vec<(String, String)>,
        depth: u32,
        meter: Arc<Meter>,
    ) -> Result<Running, InvokeError> {
        let spawn_error = |error: std::io::Error| {
            InvokeError::Internal(format!("spawn {}: {error}", self.program.program.display()))
        };
        let (mut command, mut lease) = self.program.command(request).map_err(spawn_error)?;
        let mut child = command.stdin(Stdio::piped()).spawn().map_err(spawn_error)?;
        drop(command);
        // From here on, however the call ends (cancelled while its network
        // is set up, too), nothing of it outlives it.
        let group = child.id().map(|pid| GroupGuard(pid as libc::pid_t));
        let serving = match lease.as_mut() {
            Some(lease) => lease.network_up().await,
            None => Ok(()),
        }
        .and_then(|()| self.program.serve_endpoint(lease.as_mut(), depth));
        let serving = match serving {
            Ok(serving) => serving,
            Err(error) => {
                let _ = child.start_kill();
                return Err(InvokeError::Internal(format!(
                    "set up the network of {}: {error}",
                    self.program.program.display()
                )));
            }
        };
        let exit = group.as_ref().and_then(|group| pidfd(group.0));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let wait = async move {
            // Read what it used while it is a zombie; reaping forgets it.
            if let Some(exit) = exit {
                meter_exit(exit, &meter).await;
            }
            child
                .wait()
                .await
                .map_err(|error| InvokeError::Internal(format!("wait: {error}")))
        };
        Ok(Running {
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            wait: Box::pin(wait),
            // The group is killed first; the uid and the network are the
            // process's own until then.
            guard: Box::new((group, lease, serving)),
        })
    }

    /// Runs one request in a fresh process.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Response, InvokeError> {
        let started = tokio::time::Instant::now();
        let request = watchdog_env(&invocation);
        let meter = invocation.meter.clone();
        let Running {
            stdin,
            stdout,
            stderr,
            wait,
            guard,
        } = match &self.warm {
            Some(warm) => {
                let start = tokio::time::timeout_at(
                    invocation.deadline,
                    self.start_warm(warm, request, meter),
                );
                match start.await {
                    Ok(started) => started.map_err(|error| {
                        InvokeError::Internal(format!(
                            "start {} in its warm sandbox: {error}",
                            self.program.program.display()
                        ))
                    })?,
                    Err(_) => return Err(InvokeError::Timeout(started.elapsed())),
                }
            }
            None => self.start_cold(request, invocation.depth, meter).await?,
        };
        let Invocation {
            call_id,
            body,
            deadline,
            streamed,
            ..
        } = invocation;
        let content_type = stdio_content_type(&self.program.env);
        if streamed {
            let (mut sender, channel) = http_body_util::Channel::new(1);
            let output = self.output.clone();
            let task = tokio::spawn(async move {
                // Whatever happens, nothing of this request outlives it.
                let _guard = guard;
                let run = async {
                    tokio::try_join!(
                        async {
                            body.write_into(stdin).await;
                            Ok(())
                        },
                        pump(stdout, &mut sender),
                        async { Ok(read_bounded(stderr, MAX_STDERR).await) },
                        async { Ok(wait.await) },
                    )
                };
                let outcome = match tokio::time::timeout_at(deadline, run).await {
                    // The reader went away: nobody is left to tell.
                    Ok(Err(Gone)) => return,
                    Ok(Ok(((), (), stderr, status))) => {
                        output.lines(
                            Some(&call_id),
                            LogStream::Stderr,
                            &stderr.unwrap_or_default().0,
                        );
                        status.and_then(exit_status)
                    }
                    Err(_) => Err(InvokeError::Timeout(deadline - started)),
                };
                // The body ends cleanly only when the sender is dropped unaborted.
                if let Err(error) = outcome {
                    sender.abort(Box::new(error));
                }
            });
            let body = Streaming {
                channel,
                task: task.abort_handle(),
            };
            let mut response = http::Response::new(http_body_util::BodyExt::boxed_unsync(body));
            if let Ok(value) = http::HeaderValue::from_str(&content_type) {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, value);
            }
            return Ok(response);
        }

        let run = async {
            let (_, out, err, status) = tokio::join!(
                body.write_into(stdin),
                read_bounded(stdout, MAX_STDOUT),
                read_bounded(stderr, MAX_STDERR),
                wait,
            );
            (out, err, status)
        };
        let outcome = tokio::time::timeout_at(deadline, run).await;
        // Whatever happened, nothing of this request may outlive it.
        drop(guard);
        let (stdout, stderr, status) = match outcome {
            Ok(finished) => finished,
            Err(_) => return Err(InvokeError::Timeout(deadline - started)),
        };
        self.output.lines(
            Some(&call_id),
            LogStream::Stderr,
            &stderr.unwrap_or_default().0,
        );
        let (stdout, truncated) =
            stdout.map_err(|error| InvokeError::Failed(format!("reading STDOUT: {error}")))?;
        if truncated {
            return Err(InvokeError::Failed(format!(
                "the response is larger than {MAX_STDOUT} bytes"
            )));
        }
        status.and_then(exit_status)?;
        Ok(full_response(&content_type, stdout))
    }
}

/// A process's exit status as an outcome: 0 is success.
fn exit_status(status: std::process::ExitStatus) -> Result<(), InvokeError> {
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(InvokeError::Exit(code)),
        None => {
            let signal = std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or_default();
            Err(InvokeError::Failed(format!(
                "the process was killed by signal {signal}"
            )))
        }
    }
}

/// A streamed STDOUT: dropped, it stops its process at once (killing its
/// group), as a call whose client went away does.
struct Streaming {
    channel: http_body_util::Channel<Bytes, crate::BoxError>,
    task: tokio::task::AbortHandle,
}

impl hyper::body::Body for Streaming {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, crate::BoxError>>> {
        std::pin::Pin::new(&mut self.channel).poll_frame(cx)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reader of a streamed STDOUT went away.
struct Gone;

/// Sends what `stdout` gives, chunk by chunk, as it comes.
async fn pump(
    mut stdout: impl AsyncRead + Unpin,
    sender: &mut http_body_util::channel::Sender<Bytes, crate::BoxError>,
) -> Result<(), Gone> {
    let mut buffer = bytes::BytesMut::new();
    loop {
        buffer.reserve(CHUNK);
        match stdout.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => sender
                .send_data(buffer.split().freeze())
                .await
                .map_err(|_| Gone)?,
        }
    }
}

/// Kills a process group when dropped, so nothing of a call outlives it
/// however it ends: finished, timed out, or cancelled while its process runs
/// (the client went away, the node is stopping).
struct GroupGuard(libc::pid_t);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// A pidfd for a child that has not been reaped (so its pid cannot be reused).
fn pidfd(pid: libc::pid_t) -> Option<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    // SAFETY: an OwnedFd stays open and keeps its descriptor for as long as it lives.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
    }
}

/// Waits until the process has exited, then meters its peak RSS and CPU time
/// (its own and its reaped children's) without reaping it.
async fn meter_exit(exit: tokio::io::unix::AsyncFd<OwnedFd>, meter: &Meter) {
    // A pidfd is readable once its process has exited.
    if exit.readable().await.is_err() {
        return;
    }
    // SAFETY: all-zero is a valid siginfo_t and rusage (plain C structs).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the raw waitid(2) syscall with valid pointers to the two structs
    // it fills; WNOWAIT leaves the child to be reaped by its owner.
    let waited = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            libc::P_PIDFD,
            exit.as_raw_fd(),
            &mut info as *mut libc::siginfo_t,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            &mut usage as *mut libc::rusage,
        )
    };
    if waited != 0 {
        return;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    meter.cpu(time(usage.ru_utime) + time(usage.ru_stime));
    // ru_maxrss is in kilobytes.
    meter.memory(usage.ru_maxrss as u64 * 1024);
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Kills a process group; it may already be gone.
pub(crate) fn kill_group(group: libc::pid_t) {
    signal_group(group, libc::SIGKILL);
}

/// Sends `signal` to a process group; it may already be gone.
pub(crate) fn signal_group(group: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group; it has
    // no memory-safety preconditions.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// Reads up to `limit` bytes; the flag says whether there was more.
async fn read_bounded(
    reader: impl AsyncRead + Unpin,
    limit: u64,
) -> std::io::Result<(Bytes, bool)> {
    let mut buffer = Vec::new();
    let mut reader = reader.take(limit + 1);
    reader.read_to_end(&mut buffer).await?;
    let truncated = buffer.len() as u64 > limit;
    buffer.truncate(limit as usize);
    Ok((Bytes::from(buffer), truncated))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt as _;

    use super::*;

    fn invocation(body: &str, timeout: Duration) -> Invocation {
        Invocation {
            call_id: "test".into(),
            method: http::Method::POST,
            path: "/p".into(),
            query: None,
            headers: http::HeaderMap::new(),
            body: Bytes::from(body.to_owned()).into(),
            streamed: false,
            depth: 0,
            deadline: tokio::time::Instant::now() + timeout,
            meter: Arc::default(),
        }
    }

    /// Keeps the lines a function writes.
    #[derive(Default)]
    struct Lines(std::sync::Mutex<Vec<(Option<String>, LogStream, String)>>);

    impl crate::OutputSink for Lines {
        fn line(&self, call_id: Option<&str>, stream: LogStream, line: &str) {
            self.0
                .lock()
                .unwrap()
                .push((call_id.map(str::to_owned), stream, line.to_owned()));
        }
    }

    fn shell_with(script: &str, lines: Arc<Lines>) -> ProcessFunction {
        let mut program = Program::new(std::env::temp_dir(), "sh -c", vec![]).unwrap();
        program.args.push(script.into());
        ProcessFunction::new(program, Output(lines))
    }

    fn shell(script: &str) -> ProcessFunction {
        shell_with(script, Arc::default())
    }

    #[tokio::test]
    async fn body_in_response_out() {
        let response = shell("echo $Http_Method $Http_Path; cat")
            .invoke(invocation("hi", Duration::from_secs(5)))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "POST /p\nhi");
    }

    #[tokio::test]
    async fn non_zero_exit_is_an_error_and_stderr_is_kept() {
        let lines = Arc::new(Lines::default());
        let error = shell_with("echo oops >&2; exit 3", lines.clone())
            .invoke(invocation("", Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(error, InvokeError::Exit(3)), "{error}");
        assert_eq!(
            *lines.0.lock().unwrap(),
            [(Some("test".into()), LogStream::Stderr, "oops".into())]
        );
    }

    #[tokio::test]
    async fn peak_memory_and_cpu_time_are_metered() {
        let invocation = invocation("", Duration::from_secs(10));
        let meter = invocation.meter.clone();
        // 64 MiB touched, and a busy loop, in the child.
        shell("head -c 67108864 /dev/zero | tail -c 1 >/dev/null; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
            .invoke(invocation)
            .await
            .unwrap();
        let cpu = meter.cpu_time().expect("CPU time is measured");
        assert!(cpu > Duration::ZERO, "{cpu:?}");
        let peak = meter.memory_peak().expect("peak memory is measured");
        assert!(peak >= 1 << 20, "{peak}");
    }

    #[tokio::test]
    async fn the_whole_group_is_killed_at_the_deadline() {
        let marker = tempfile_path();
        let script = format!("(sleep 2; touch {}) & sleep 10", marker.display());
        let error = shell(&script)
            .invoke(invocation("", Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert!(matches!(error, InvokeError::Timeout(_)), "{error}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "the background child outlived the timeout"
        );
    }

    #[test]
    fn missing_programs_are_refused_up_front() {
        for command in ["no-such-program-anywhere", "./missing.sh", ""] {
            assert!(
                Program::new(std::env::temp_dir(), command, vec![]).is_err(),
                "{command}"
            );
        }
    }

    fn tempfile_path() -> PathBuf {
        std::env::temp_dir().join(format!("wisp-process-test-{}", std::process::id()))
    }
}
