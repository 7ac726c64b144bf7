//! The process sandbox: every process a function starts runs inside
//! bubblewrap (`bwrap`), in new user, mount, PID, IPC, UTS, cgroup and (unless
//! the function declared `network = "outbound"`) network namespaces. It sees
//! `/usr` and the function's own files read-only, a private size-limited
//! `/tmp`, a minimal `/dev` and its own `/proc`; nothing else of the host.
//!
//! Around that: rlimits on address space, CPU seconds, processes and open
//! files; a seccomp filter (compiled here with `seccompiler`, handed to
//! bubblewrap on a pipe) that refuses the syscalls a function has no business
//! making; and, inside, `wisp-jail` (see that crate), which drops to an
//! unprivileged uid of its own per process in flight when the node runs as
//! root (so the process limit counts one call's processes and no sandbox can
//! signal or read another) and applies Landlock before it runs the function.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Write as _,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use wisp_core::spec::Network;
use wisp_jail::{Bind, Entry, JAIL_PATH};

/// The first uid a sandboxed process may run as, when the node is root.
pub const FIRST_UID: u32 = 300_000;
/// How many uids sandboxes take turns with: the most processes in flight at once.
pub const UIDS: u32 = 65_536;
pub use wisp_jail::{FUNCTION_DIR, SECRETS_DIR};
/// The size of a sandbox's private `/tmp`.
pub const TMP_SIZE: u64 = 64 << 20;
/// The most processes (and threads) one call may have at once, when the node is root.
pub const MAX_PROCESSES: u64 = 64;
/// The most processes (and threads) one `process-http` replica may have at
/// once, when the node is root: a thread per connection is common.
pub const MAX_REPLICA_TASKS: u64 = 1024;
/// The niceness sandboxed processes run at.
pub const NICENESS: libc::c_int = 10;
/// The most files one process may have open.
pub const MAX_OPEN_FILES: u64 = 256;
/// The descriptors bubblewrap reads its two seccomp programs from.
const FILTER_FDS: [i32; 2] = [3, 4];

/// Why the sandbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// bubblewrap is not installed.
    #[error(
        "process functions run in a sandbox that needs the bubblewrap package (apt install \
         bubblewrap), or start the node with --no-sandbox"
    )]
    NoBubblewrap,
    /// `wisp-jail` is not installed beside the node's binary.
    #[error(
        "process functions enter their sandbox through {0}, which is missing: install wisp \
         with both its programs, or start the node with --no-sandbox"
    )]
    NoJail(PathBuf),
    /// bubblewrap is there but cannot make a sandbox here (user namespaces off, ...).
    #[error("bubblewrap cannot create a sandbox on this machine: {0}")]
    Unusable(String),
    /// The seccomp program did not compile for this architecture.
    #[error("the seccomp filter: {0}")]
    Filter(String),
}

/// What the node's sandboxes share: where bubblewrap and `wisp-jail` are,
/// the compiled seccomp programs, and the uids they take turns with.
#[derive(Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    jail: PathBuf,
    /// The seccomp program every sandbox gets: `clone3` is not there.
    clone3: Vec<u8>,
    /// The seccomp program for functions without a network.
    isolated: Vec<u8>,
    /// The seccomp program for functions with outbound network: no listening sockets either.
    outbound: Vec<u8>,
    /// When the node is root: the unprivileged uids sandboxes take turns with.
    uids: Option<Mutex<VecDeque<u32>>>,
}

impl Sandbox {
    /// Finds bubblewrap, and `wisp-jail` beside the running program, and
    /// checks that they can make a sandbox here.
    pub fn new() -> Result<Arc<Self>, SandboxError> {
        let bwrap = ["/usr/bin", "/usr/local/bin", "/bin"]
            .into_iter()
            .map(|dir| Path::new(dir).join("bwrap"))
            .find(|path| path.is_file())
            .ok_or(SandboxError::NoBubblewrap)?;
        let jail = std::env::current_exe()
            .map_err(|error| SandboxError::Unusable(format!("find the running program: {error}")))?
            .with_file_name("wisp-jail");
        if !jail.is_file() {
            return Err(SandboxError::NoJail(jail));
        }
        // SAFETY: geteuid(2) has no preconditions.
        let uids = (unsafe { libc::geteuid() } == 0)
            .then(|| Mutex::new((FIRST_UID..FIRST_UID + UIDS).collect()));
        let sandbox = Arc::new(Self {
            bwrap,
            jail,
            clone3: clone3_filter()?,
            isolated: filter(false)?,
            outbound: filter(true)?,
            uids,
        });
        sandbox.check()?;
        Ok(sandbox)
    }

    /// Runs `true` in a sandbox once, so a machine that cannot sandbox is
    /// refused at start, not at the first call.
    fn check(self: &Arc<Self>) -> Result<(), SandboxError> {
        let jail = Jail {
            sandbox: self.clone(),
            memory: 64 << 20,
            cpu_time: Some(Duration::from_secs(1)),
            network: Network::None,
            serves: false,
            secrets: None,
        };
        let (mut command, _lease) = jail
            .command(Path::new("/"), Path::new("/usr/bin/true"))
            .map_err(|error| SandboxError::Unusable(error.to_string()))?;
        let output = command
            .as_std_mut()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|error| SandboxError::Unusable(error.to_string()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(SandboxError::Unusable(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ))
        }
    }

    fn lease(self: &Arc<Self>) -> std::io::Result<Option<Lease>> {
        let Some(uids) = &self.uids else {
            return Ok(None);
        };
        let uid = uids.lock().expect("uids").pop_front().ok_or_else(|| {
            std::io::Error::other(format!("more than {UIDS} sandboxed processes at once"))
        })?;
        Ok(Some(Lease {
            uid,
            sandbox: self.clone(),
        }))
    }
}

/// A uid one sandboxed process runs as; it goes to the back of the queue
/// when the process is gone, so it is not reused soon.
#[derive(Debug)]
pub struct Lease {
    uid: u32,
    sandbox: Arc<Sandbox>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(uids) = &self.sandbox.uids {
            uids.lock().expect("uids").push_back(self.uid);
        }
    }
}

/// How one function's processes are confined.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The node's sandbox.
    pub sandbox: Arc<Sandbox>,
    /// The address space a process may map (RLIMIT_AS). A `process-http`
    /// replica has none: thread stacks alone would exhaust it.
    pub memory: u64,
    /// CPU seconds a process may use (RLIMIT_CPU); none for long-running replicas.
    pub cpu_time: Option<Duration>,
    /// What the function may reach on the network.
    pub network: Network,
    /// Whether it serves HTTP on `$PORT` (a `process-http` replica): it then
    /// shares the host's network, so the gateway can reach it, and may listen.
    pub serves: bool,
    /// A directory of the function's secret files, mounted read-only at
    /// [`SECRETS_DIR`].
    pub secrets: Option<PathBuf>,
}

impl Jail {
    /// The command that runs `program` (an absolute path) inside the
    /// sandbox, with `dir` (the function's files) mounted read-only at
    /// [`FUNCTION_DIR`] as its working directory (a program in `dir` is run
    /// from there). The caller adds arguments and environment; bubblewrap
    /// passes the environment it is given on to the program. The lease must
    /// be kept until the process has been killed.
    pub fn command(
        &self,
        dir: &Path,
        program: &Path,
    ) -> std::io::Result<(tokio::process::Command, Option<Lease>)> {
        let lease = self.sandbox.lease()?;
        let mut command = tokio::process::Command::new(&self.sandbox.bwrap);
        command.args(["--unshare-ipc", "--unshare-pid", "--unshare-uts"]);
        command.args(["--unshare-cgroup-try", "--die-with-parent"]);
        if lease.is_none() {
            // Not root: a user namespace is what lets bubblewrap make the
            // others; the sandbox may not make one of its own.
            command.args(["--unshare-user", "--disable-userns"]);
        }
        if !(self.serves || self.network == Network::Outbound) {
            command.arg("--unshare-net");
        }
        command
            .args(["--hostname", "wisp"])
            .args(["--ro-bind", "/usr", "/usr"]);
        for link in ["/bin", "/lib", "/lib64", "/sbin"] {
            match std::fs::read_link(link) {
                Ok(target) => command.arg("--symlink").arg(target).arg(link),
                Err(_) => command.args(["--ro-bind-try", link, link]),
            };
        }
        command
            .args(["--proc", "/proc", "--dev", "/dev"])
            .args(["--perms", "1777", "--size", &TMP_SIZE.to_string()])
            .args(["--tmpfs", "/tmp", "--ro-bind"])
            .arg(dir)
            .args([FUNCTION_DIR, "--chdir", FUNCTION_DIR])
            // bubblewrap would make `/run` 0700, out of the function's reach.
            .args(["--perms", "0755", "--dir", "/run", "--ro-bind"])
            .arg(&self.sandbox.jail)
            .arg(JAIL_PATH);
        if let Some(secrets) = &self.secrets {
            command.arg("--ro-bind").arg(secrets).arg(SECRETS_DIR);
        }
        if self.serves || self.network == Network::Outbound {
            for file in [
                "/etc/resolv.conf",
                "/etc/hosts",
                "/etc/nsswitch.conf",
                "/etc/ssl",
                "/etc/ca-certificates",
            ] {
                command.args(["--ro-bind-try", file, file]);
            }
        }
        for fd in FILTER_FDS {
            command.args(["--add-seccomp-fd", &fd.to_string()]);
        }
        // When the node is root, bubblewrap runs as root (so it can bind any
        // path) and `wisp-jail` drops to the leased uid.
        let entry = Entry {
            uid: lease.as_ref().map(|lease| lease.uid),
            bind: match (self.serves, self.network) {
                (true, _) => Bind::PortEnv,
                (false, Network::Outbound) => Bind::None,
                (false, Network::None) => Bind::Any,
            },
        };
        command
            .args(["--", JAIL_PATH])
            .args(entry.args())
            .current_dir("/");
        match program.strip_prefix(dir) {
            Ok(own) => command.arg(Path::new(FUNCTION_DIR).join(own)),
            Err(_) => command.arg(program),
        };
        let program = match (self.network, self.serves) {
            (Network::Outbound, false) => &self.sandbox.outbound,
            _ => &self.sandbox.isolated,
        };
        let filters = [filter_pipe(&self.sandbox.clone3)?, filter_pipe(program)?];
        let limits = Limits {
            memory: (!self.serves).then_some(self.memory),
            cpu_time: self.cpu_time.map(|time| time.as_secs().max(1) + 1),
            processes: lease.is_some().then_some(if self.serves {
                MAX_REPLICA_TASKS
            } else {
                MAX_PROCESSES
            }),
        };
        // SAFETY: the closure runs in the child between fork and exec and only
        // calls async-signal-safe functions (prctl, setrlimit, dup2, fcntl),
        // with values copied into it; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                // The pipes are closed in the parent when the command is
                // dropped; the child has its own copies.
                limits.apply(filters.each_ref().map(|fd| fd.as_raw_fd()))
            });
        }
        Ok((command, lease))
    }
}

/// The rlimits of one sandboxed process, applied between fork and exec.
#[derive(Debug, Clone, Copy)]
struct Limits {
    memory: Option<u64>,
    cpu_time: Option<u64>,
    processes: Option<u64>,
}

impl Limits {
    fn apply(self, filters: [i32; 2]) -> std::io::Result<()> {
        let set = |resource, value: u64| {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit(2) with a valid pointer to a stack value.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: each call is a plain syscall on integers this child owns.
        unsafe {
            // Nothing it starts may outlive the node, even when the node is killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // bubblewrap reads the filters from known descriptors, which
            // must survive exec. Both are first moved out of the way (so
            // placing one cannot overwrite the other), then placed with dup2,
            // which clears close-on-exec.
            let mut moved = [0; 2];
            for (fd, slot) in filters.into_iter().zip(&mut moved) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, target) in moved.into_iter().zip(FILTER_FDS) {
                if libc::dup2(fd, target) != target {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        if let Some(bytes) = self.memory {
            set(libc::RLIMIT_AS, bytes)?;
        }
        set(libc::RLIMIT_NOFILE, MAX_OPEN_FILES)?;
        // Below the node's own threads, so busy processes cannot take the
        // gateway's CPU; and for good, as an unprivileged process cannot
        // raise it again.
        // SAFETY: setpriority(2) on this process, with no pointers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set(libc::RLIMIT_CORE, 0)?;
        if let Some(seconds) = self.cpu_time {
            set(libc::RLIMIT_CPU, seconds)?;
        }
        if let Some(processes) = self.processes {
            set(libc::RLIMIT_NPROC, processes)?;
        }
        Ok(())
    }
}

/// A pipe holding the seccomp program, its write end already closed: what
/// bubblewrap's `--seccomp FD` reads to the end. A pipe per process, so
/// concurrent starts never share a read offset.
fn filter_pipe(program: &[u8]) -> std::io::Result<OwnedFd> {
    let (read, write) = std::io::pipe()?;
    // The program is a few hundred bytes, well within a pipe's buffer.
    (&write).write_all(program)?;
    drop(write);
    Ok(read.into())
}

/// Syscalls no function needs and a sandbox escape would: mounting,
/// namespaces, tracing other processes, loading kernel code, changing the
/// clock or the machine.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_fanotify_init,
    libc::SYS_personality,
];

/// `clone` flags that would make new namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// Compiles the seccomp program, as the bytes of its `sock_filter` array.
fn filter(outbound: bool) -> Result<Vec<u8>, SandboxError> {
    let error = |error: seccompiler::BackendError| SandboxError::Filter(error.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .map(|&syscall| (syscall, Vec::new()))
        .collect();
    let flags = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|condition| SeccompRule::new(vec![condition]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    rules.insert(libc::SYS_clone, flags);
    if outbound {
        for syscall in [
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept,
            libc::SYS_accept4,
        ] {
            rules.insert(syscall, Vec::new());
        }
    }
    compile(rules, libc::EPERM)
}

/// A program refusing `clone3` with ENOSYS. clone3 takes its flags in
/// memory, out of a filter's reach; refused so, it makes the C library fall
/// back to `clone`, whose flags the main program checks.
fn clone3_filter() -> Result<Vec<u8>, SandboxError> {
    compile(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
    )
}

/// Compiles rules that fail the syscalls they match with `errno` into the
/// bytes of a `sock_filter` array, as the kernel reads them.
fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<Vec<u8>, SandboxError> {
    let error = |error: seccompiler::BackendError| SandboxError::Filter(error.to_string());
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(error)?;
    let program = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(error)?;
    Ok(program
        .iter()
        .flat_map(|instruction| {
            let mut bytes = [0u8; 8];
            bytes[..2].copy_from_slice(&instruction.code.to_ne_bytes());
            bytes[2] = instruction.jt;
            bytes[3] = instruction.jf;
            bytes[4..].copy_from_slice(&instruction.k.to_ne_bytes());
            bytes
        })
        .collect())
}
