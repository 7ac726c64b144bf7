//! The warm sandbox of a `process` function: one bubblewrap sandbox per
//! function, started once, in which `wisp-jail --template` waits for the
//! node's requests and starts a fresh process per call. The expensive,
//! call-independent work is done once: bubblewrap's namespaces and view of
//! the filesystem, and loading the seccomp program, which then holds for the
//! template and everything it starts. What must be fresh per call is made
//! per call: the template clones the call's process straight into new
//! mount, PID and IPC namespaces, as their PID 1. It mounts a private `/tmp`
//! and a `/proc` showing only the call's processes, takes the call's STDIN,
//! STDOUT and STDERR and rlimits, drops to the call's uid (no capabilities
//! left), applies Landlock and executes the program.
//!
//! When that process exits, the kernel ends every other process of its PID
//! namespace, and the template reaps it and writes the [`Outcome`] to the
//! call's status pipe: nothing a call starts outlives it, and no two calls
//! share a `/tmp`, a process table or IPC objects. When the node closes the
//! status pipe's other end (the call timed out or was cancelled), the
//! template kills the call's PID 1 at once, with the same effect. When the
//! node closes the control socket, the template exits; it is PID 1 of the
//! sandbox's own PID namespace (bubblewrap's `--as-pid-1`), so however it
//! ends, every call still running ends with it.
//!
//! As PID 1 of its namespace, the program ignores signals sent from inside
//! the call for which it set no handler (SIGKILL included), and those the
//! kernel sends it for its own doing (SIGPIPE: a write to a closed pipe
//! fails with EPIPE instead); a fault still kills it, and so does the
//! node's deadline (SIGKILL from the template). It inherits the call's
//! orphans, which it should reap, as they count against its processes.

use std::{
    ffi::OsString,
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
};

use crate::{Bind, Entry, JailError};

/// The descriptor the template reads the node's requests from: one end of
/// a `SOCK_SEQPACKET` socket pair, a [`Request`] per message with its four
/// descriptors ([`Request::FDS`]).
pub const CONTROL_FD: RawFd = 3;
/// The descriptors the template reads its seccomp programs from, once, at
/// start (bubblewrap reads its options from 5).
pub const SECCOMP_FDS: [RawFd; 2] = [7, 8];
/// The largest request the template reads.
pub const MAX_REQUEST: usize = 1 << 20;

/// One call for the template: how to confine its process and what to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The uid (and gid) the process runs as, when the node is root.
    pub uid: Option<u32>,
    /// RLIMIT_AS, in bytes.
    pub memory: Option<u64>,
    /// RLIMIT_CPU, in seconds.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_NPROC.
    pub processes: Option<u64>,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// The size of the call's private `/tmp`, in bytes.
    pub tmp_size: u64,
    /// The program (a path inside the sandbox) and its arguments.
    pub argv: Vec<OsString>,
    /// The program's whole environment.
    pub env: Vec<(OsString, OsString)>,
}

impl Request {
    /// How many descriptors come with a request: the call's STDIN, STDOUT
    /// and STDERR, and the write end of its status pipe.
    pub const FDS: usize = 4;

    /// The request as the template reads it: NUL-terminated fields, numbers
    /// in decimal (empty for none), then the argument count, the arguments
    /// and the environment's `NAME=VALUE` entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut field = |value: &[u8]| {
            bytes.extend_from_slice(value);
            bytes.push(0);
        };
        let number = |value: Option<u64>| value.map(|value| value.to_string()).unwrap_or_default();
        field(number(self.uid.map(u64::from)).as_bytes());
        field(number(self.memory).as_bytes());
        field(number(self.cpu_seconds).as_bytes());
        field(number(self.processes).as_bytes());
        field(self.open_files.to_string().as_bytes());
        field(self.tmp_size.to_string().as_bytes());
        field(self.argv.len().to_string().as_bytes());
        for arg in &self.argv {
            field(arg.as_bytes());
        }
        for (name, value) in &self.env {
            field(&[name.as_bytes(), b"=", value.as_bytes()].concat());
        }
        bytes
    }

    /// Parses what [`Request::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
        let mut fields = bytes.split(|&byte| byte == 0);
        let mut number = || -> Option<Option<u64>> {
            let field = std::str::from_utf8(fields.next()?).ok()?;
            if field.is_empty() {
                Some(None)
            } else {
                field.parse().ok().map(Some)
            }
        };
        let uid = number()?.map(u32::try_from).transpose().ok()?;
        let memory = number()?;
        let cpu_seconds = number()?;
        let processes = number()?;
        let open_files = number()??;
        let tmp_size = number()??;
        let argc = usize::try_from(number()??).ok()?;
        let argv: Vec<OsString> = fields
            .by_ref()
            .take(argc)
            .map(|arg| OsString::from_vec(arg.to_vec()))
            .collect();
        if argv.len() != argc || argc == 0 {
            return None;
        }
        let env = fields
            .filter_map(crate::env_entry)
            .map(|(name, value)| {
                (
                    OsString::from_vec(name.to_vec()),
                    OsString::from_vec(value.to_vec()),
                )
            })
            .collect();
        Some(Self {
            uid,
            memory,
            cpu_seconds,
            processes,
            open_files,
            tmp_size,
            argv,
            env,
        })
    }
}

/// How a call's process ended, as the template writes it to the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The wait status, as waitpid(2) reports it.
    pub status: i32,
    /// User and system CPU time of the process and its reaped children, in microseconds.
    pub cpu_micros: u64,
    /// The peak resident set of the process or its largest child, in KiB.
    pub max_rss_kib: u64,
}

impl Outcome {
    /// The size of an encoded outcome.
    pub const SIZE: usize = 20;

    /// The outcome's bytes, little-endian.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut bytes = [0; Self::SIZE];
        bytes[..4].copy_from_slice(&self.status.to_le_bytes());
        bytes[4..12].copy_from_slice(&self.cpu_micros.to_le_bytes());
        bytes[12..].copy_from_slice(&self.max_rss_kib.to_le_bytes());
        bytes
    }

    /// Parses what [`Outcome::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::SIZE] = bytes.try_into().ok()?;
        Some(Self {
            status: i32::from_le_bytes(bytes[..4].try_into().ok()?),
            cpu_micros: u64::from_le_bytes(bytes[4..12].try_into().ok()?),
            max_rss_kib: u64::from_le_bytes(bytes[12..].try_into().ok()?),
        })
    }
}

/// A call in flight: its process, PID 1 of the call's namespaces, and the
/// write end of its status pipe until the node gives up on the call.
struct Call {
    pid: libc::pid_t,
    status: Option<OwnedFd>,
}

/// Serves the node's requests until it closes the control socket; returns
/// only on an error that leaves the template unable to serve.
pub fn serve() -> JailError {
    // The seccomp programs hold for the template and every process it
    // starts: loaded once, not per call.
    if let Err(error) = SECCOMP_FDS
        .map(read_all)
        .into_iter()
        .collect::<std::io::Result<Vec<_>>>()
        .and_then(|programs| load_seccomp(&programs))
    {
        return JailError::Environment(error);
    }
    // The template keeps its capabilities, but no program it starts can
    // gain one: emptied once here instead of in every call's process.
    if let Err(error) = crate::drop_bounding_set() {
        return JailError::Environment(error);
    }
    // SAFETY: the node handed this descriptor to this program alone.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    // Not for a call's process to keep (bubblewrap placed it with dup2(2));
    // its children are reaped here, not by the kernel.
    // SAFETY: fcntl(2) and signal(2) on integers.
    if unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL) == libc::SIG_ERR
            || libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) != 0
    } {
        return JailError::Environment(std::io::Error::last_os_error());
    }
    let children = match children() {
        Ok(children) => children,
        Err(error) => return JailError::Environment(error),
    };
    let mut buffer = vec![0; MAX_REQUEST];
    let mut last = 0;
    let mut calls: Vec<Call> = Vec::new();
    loop {
        let mut polled: Vec<libc::pollfd> = [control.as_raw_fd(), children.as_raw_fd()]
            .into_iter()
            .map(|fd| (fd, libc::POLLIN))
            // A pipe's write end reports POLLERR once its reader is gone.
            .chain(
                calls
                    .iter()
                    .filter_map(|call| call.status.as_ref().map(|status| (status.as_raw_fd(), 0))),
            )
            .map(|(fd, events)| libc::pollfd {
                fd,
                events,
                revents: 0,
            })
            .collect();
        // SAFETY: poll(2) on an array this function owns.
        if unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) } < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return JailError::Environment(error);
        }
        // The node gave up on these calls (a deadline, a client gone):
        // killing PID 1 ends every process of the call.
        let mut gone = polled[2..].iter().map(|polled| polled.revents != 0);
        for call in calls.iter_mut().filter(|call| call.status.is_some()) {
            if gone.next() == Some(true) {
                call.status = None;
                // SAFETY: kill(2) of a child not yet reaped.
                unsafe { libc::kill(call.pid, libc::SIGKILL) };
            }
        }
        if polled[1].revents != 0 {
            reap(&children, &mut calls);
        }
        if polled[0].revents != 0 {
            match receive(&control, &mut buffer, &mut last) {
                Ok(Some((request, fds))) => calls.extend(start(&request, fds)),
                Ok(None) => {}
                Err(error) => return JailError::Environment(error),
            }
        }
    }
}

/// A signalfd for the template's children, whose SIGCHLD it blocks (the
/// calls' processes unblock it before they execute their programs).
fn children() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls on a signal set this function owns.
    let fd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd(2) returned a descriptor no one else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reaps every call whose process has ended, with its PID namespace, and
/// writes its [`Outcome`] unless the node gave up on it.
fn reap(children: &OwnedFd, calls: &mut Vec<Call>) {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    // SAFETY: read(2) into a buffer this function owns; it only drains the signalfd.
    while unsafe { libc::read(children.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
    loop {
        let mut wait_status = 0;
        // SAFETY: all-zero is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4(2) with valid pointers.
        let pid = unsafe { libc::wait4(-1, &mut wait_status, libc::WNOHANG, &mut usage) };
        if pid <= 0 {
            return;
        }
        let Some(index) = calls.iter().position(|call| call.pid == pid) else {
            continue;
        };
        if let Some(status) = calls.swap_remove(index).status {
            let micros = |time: libc::timeval| time.tv_sec as u64 * 1_000_000 + time.tv_usec as u64;
            // The PID 1 and the children it reaped; not the processes the
            // kernel killed when it exited.
            let bytes = Outcome {
                status: wait_status,
                cpu_micros: micros(usage.ru_utime) + micros(usage.ru_stime),
                max_rss_kib: usage.ru_maxrss as u64,
            }
            .encode();
            // SAFETY: write(2) of a buffer this function owns; the pipe
            // takes it whole, and a reader gone is EPIPE (SIGPIPE is ignored).
            unsafe { libc::write(status.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        }
    }
}

/// Reads the node's next request and its descriptors, if one is there;
/// exits when the node closed its end, and answers a request it cannot
/// take with an error on the call's STDERR and a closed status pipe.
fn receive(
    control: &OwnedFd,
    buffer: &mut [u8],
    last: &mut usize,
) -> std::io::Result<Option<(Request, [OwnedFd; Request::FDS])>> {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(Request::FDS))];
    let mut ancillary = rustix::net::RecvAncillaryBuffer::new(&mut space);
    // What an earlier call was sent (its environment, secrets included)
    // is not left in the memory the next call's process starts with.
    buffer[..*last].fill(0);
    let received = match rustix::net::recvmsg(
        control,
        &mut [IoSliceMut::new(buffer)],
        &mut ancillary,
        rustix::net::RecvFlags::CMSG_CLOEXEC | rustix::net::RecvFlags::DONTWAIT,
    ) {
        Ok(received) => received,
        Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let fds: Vec<OwnedFd> = ancillary
        .drain()
        .flat_map(|message| match message {
            rustix::net::RecvAncillaryMessage::ScmRights(fds) => fds.collect(),
            _ => Vec::new(),
        })
        .collect();
    if received.bytes == 0 && fds.is_empty() {
        // The node closed its end: it is stopping, or dropped the function.
        // Leaving ends the sandbox's PID namespace, and every call in it.
        std::process::exit(0);
    }
    *last = received.bytes.min(buffer.len());
    let Ok(fds) = <[OwnedFd; Request::FDS]>::try_from(fds) else {
        return Ok(None);
    };
    let truncated = received
        .flags
        .intersects(rustix::net::ReturnFlags::TRUNC | rustix::net::ReturnFlags::CTRUNC);
    // Only as the node sends it, and never as root: a request without a
    // uid would run the function with the template's capabilities.
    let request = Request::decode(&buffer[..*last])
        .filter(|request| !truncated && request.uid.is_some_and(|uid| uid != 0));
    let Some(request) = request else {
        report(
            &fds[2],
            "read the call's request",
            &std::io::Error::from(std::io::ErrorKind::InvalidData),
        );
        // Dropping the descriptors closes the status pipe: the node sees the call fail.
        return Ok(None);
    };
    Ok(Some((request, fds)))
}

/// Starts a call's process as PID 1 of new mount, PID and IPC namespaces
/// (clone(2) without a stack is fork(2) with flags); `None` when it could
/// not be, the call's STDERR told why.
fn start(request: &Request, fds: [OwnedFd; Request::FDS]) -> Option<Call> {
    let [stdin, stdout, stderr, status] = fds;
    let namespaces = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;
    // SAFETY: as fork(2); this program is single-threaded, so the child
    // may do anything, allocating included.
    let pid = unsafe { libc::syscall(libc::SYS_clone, namespaces | libc::SIGCHLD, 0, 0, 0, 0) };
    match pid {
        0 => {
            let error = run(request, [&stdin, &stdout, &stderr]);
            let missing = matches!(
                &error,
                JailError::Exec { error, .. } if error.kind() == std::io::ErrorKind::NotFound
            );
            report_error(&stderr, &error);
            // SAFETY: _exit(2) ends this process at once.
            unsafe { libc::_exit(if missing { 127 } else { 126 }) }
        }
        -1 => {
            report(
                &stderr,
                "start the call's process",
                &std::io::Error::last_os_error(),
            );
            None
        }
        pid => Some(Call {
            pid: pid as libc::pid_t,
            status: Some(status),
        }),
    }
}

/// The call's process, PID 1 of its namespaces: a session of its own, a
/// private `/tmp` and `/proc`, then the function's program (see [`enter`]);
/// returns only on failure.
fn run(request: &Request, stdio: [&OwnedFd; 3]) -> JailError {
    // A session of its own: no controlling terminal of the node's to reach.
    // SAFETY: setsid(2) has no preconditions.
    if unsafe { libc::setsid() } < 0 {
        return JailError::Template(format!(
            "start the call's session: {}",
            std::io::Error::last_os_error()
        ));
    }
    if let Err(error) = private_mounts(request.tmp_size) {
        return JailError::Template(format!("mount the call's /tmp and /proc: {error}"));
    }
    enter(request, stdio)
}

/// The function's process: its STDIO, rlimits, working directory (the
/// function's files), uid, Landlock and seccomp, then the program; returns
/// only on failure.
fn enter(request: &Request, stdio: [&OwnedFd; 3]) -> JailError {
    // SAFETY: an empty signal set; the template blocks SIGCHLD, the program must not inherit that.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    for (fd, target) in stdio.iter().zip(0..) {
        // SAFETY: dup2(2) on descriptors this process owns; it clears close-on-exec.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } != target {
            return JailError::Environment(std::io::Error::last_os_error());
        }
    }
    let limits = [
        (libc::RLIMIT_AS, request.memory),
        (libc::RLIMIT_CPU, request.cpu_seconds),
        (libc::RLIMIT_NPROC, request.processes),
        (libc::RLIMIT_NOFILE, Some(request.open_files)),
        (libc::RLIMIT_CORE, Some(0)),
    ];
    for (resource, value) in limits {
        let Some(value) = value else { continue };
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit(2) with a pointer to a stack value.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return JailError::Environment(std::io::Error::last_os_error());
        }
    }
    if let Err(error) = std::env::set_current_dir(crate::FUNCTION_DIR) {
        return JailError::Environment(error);
    }
    let entry = Entry {
        uid: request.uid,
        bind: Bind::Any,
    };
    entry.exec(&request.argv, request.env.clone())
}

/// Gives the call a `/tmp` and a `/proc` of its own, in its own mount namespace.
fn private_mounts(tmp_size: u64) -> std::io::Result<()> {
    let mount = |source: &std::ffi::CStr,
                 target: &std::ffi::CStr,
                 kind: Option<&std::ffi::CStr>,
                 flags: libc::c_ulong,
                 data: Option<&std::ffi::CStr>| {
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let result = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                kind.map_or(std::ptr::null(), std::ffi::CStr::as_ptr),
                flags,
                data.map_or(std::ptr::null(), |data| data.as_ptr().cast()),
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // Nothing mounted here reaches the template's view, nor another call's.
    mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let options = std::ffi::CString::new(format!("size={tmp_size},mode=1777"))
        .map_err(std::io::Error::other)?;
    mount(
        c"tmpfs",
        c"/tmp",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&options),
    )?;
    mount(
        c"proc",
        c"/proc",
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// Loads seccomp programs (arrays of `sock_filter`, as the kernel reads them).
fn load_seccomp(programs: &[Vec<u8>]) -> std::io::Result<()> {
    for program in programs {
        let filter = libc::sock_fprog {
            len: (program.len() / std::mem::size_of::<libc::sock_filter>()) as u16,
            filter: program.as_ptr().cast_mut().cast(),
        };
        // SAFETY: prctl(2) on integers, then seccomp(2) reading a program
        // that outlives the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &filter as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Reads a descriptor to its end and closes it.
fn read_all(fd: RawFd) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    // SAFETY: the node handed this descriptor to this program alone.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Tells the call's STDERR (the function's log) why its process did not start.
fn report(stderr: &OwnedFd, step: &str, error: &std::io::Error) {
    report_error(stderr, &JailError::Template(format!("{step}: {error}")));
}

fn report_error(stderr: &OwnedFd, error: &JailError) {
    let line = format!("wisp-jail: {error}\n");
    // SAFETY: write(2) of a buffer this function owns.
    unsafe { libc::write(stderr.as_raw_fd(), line.as_ptr().cast(), line.len()) };
}

/// Sends a request with its descriptors over the control socket; used by
/// the node. Fails with `WouldBlock` when the socket is full.
pub fn send(
    control: impl std::os::fd::AsFd,
    request: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>; Request::FDS],
) -> std::io::Result<()> {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(Request::FDS))];
    let mut ancillary = rustix::net::SendAncillaryBuffer::new(&mut space);
    ancillary.push(rustix::net::SendAncillaryMessage::ScmRights(fds));
    rustix::net::sendmsg(
        control,
        &[IoSlice::new(request)],
        &mut ancillary,
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let request = Request {
            uid: Some(300_001),
            memory: Some(128 << 20),
            cpu_seconds: None,
            processes: Some(64),
            open_files: 256,
            tmp_size: 64 << 20,
            argv: vec!["/function/run".into(), "a b".into(), "".into()],
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("X".into(), "a=b".into()),
            ],
        };
        assert_eq!(Request::decode(&request.encode()), Some(request));
        assert_eq!(
            Request::decode(b"1\x00\x00\x00\x00256\x00"),
            None,
            "a truncated request"
        );
        assert_eq!(
            Request::decode(b"x\x00\x00\x00\x00256\x00100\x001\x00/p\x00"),
            None,
            "a bad uid"
        );
    }

    #[test]
    fn outcomes_round_trip() {
        let outcome = Outcome {
            status: 9,
            cpu_micros: 1_234_567,
            max_rss_kib: 2048,
        };
        assert_eq!(Outcome::decode(&outcome.encode()), Some(outcome));
        assert_eq!(Outcome::decode(&[0; 3]), None);
    }
}
