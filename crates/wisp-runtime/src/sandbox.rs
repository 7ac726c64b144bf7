//! The process sandbox: every process a function starts runs inside
//! bubblewrap (`bwrap`), in new user, mount, PID, IPC, UTS, cgroup and
//! network namespaces (an outbound process or a replica reaches out through
//! slirp4netns, see [`crate::netns`], when the node is root). It sees
//! `/usr` and the function's own files read-only, a private size-limited
//! `/tmp`, a minimal `/dev` and its own `/proc`; nothing else of the host.
//!
//! Around that: rlimits on address space, CPU seconds, processes and open
//! files; a seccomp filter (compiled here with `seccompiler`, handed to
//! bubblewrap on a pipe) that refuses the syscalls a function has no business
//! making; and, inside, `wisp-jail` (see that crate), which drops to an
//! unprivileged uid of its own per process in flight when the node runs as
//! root (so the process limit counts one call's processes and no sandbox can
//! signal or read another; each node on a machine draws from a block of uids
//! no other node uses) and applies Landlock before it runs the function.

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
use wisp_core::{egress::Cidr, spec::Network};
use wisp_jail::{
    Bind, ENV_FD, Entry, JAIL_PATH,
    template::{CONTROL_FD, Request, SECCOMP_FDS},
};

use crate::netns::{self, NetConfig, Pending, RESOLV_CONF};

/// The first uid a sandboxed process may run as, when the node is root.
pub const FIRST_UID: u32 = 300_000;
/// How many uids one node's sandboxes take turns with: the most processes
/// in flight at once.
pub const UIDS: u32 = 65_536;
/// How many blocks of [`UIDS`] uids, from [`FIRST_UID`] on, nodes on one
/// machine share out: each claims one for its life (see [`UidBlock`]).
const UID_BLOCKS: u32 = 1024;
/// Where nodes on one machine lock the uid block each uses.
const UID_LOCKS: &str = "/run/wisp/uids";
pub use wisp_jail::{FUNCTION_DIR, OPENFAAS_SECRETS_DIR, SECRETS_DIR};
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
/// The files a warm sandbox's template may hold open: one per call in
/// flight, and what a request brings.
const TEMPLATE_OPEN_FILES: u64 = 16_384;
/// The descriptors a sandboxed process starts with: bubblewrap reads its two
/// seccomp programs from the first two, its options from [`ARGS_FD`], and
/// `wisp-jail` the function's environment from [`ENV_FD`]. A sandbox with a
/// network of its own also has bubblewrap's `--info-fd` (the sandbox's pid),
/// `--block-fd` (held until the network is up) and its `resolv.conf`.
const FDS: [i32; 7] = [3, 4, ARGS_FD, ENV_FD, 7, 8, 9];
/// Where bubblewrap reads its options.
const ARGS_FD: i32 = 5;
// A warm sandbox's template finds its socket and seccomp programs among them.
const _: () = assert!(FDS[0] == CONTROL_FD && FDS[4] == SECCOMP_FDS[0] && FDS[5] == SECCOMP_FDS[1]);

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
    /// The seccomp program of warm sandboxes.
    warm: Vec<u8>,
    /// When the node is root: the unprivileged uids sandboxes take turns
    /// with, from the block this node holds.
    uids: Option<(UidBlock, Mutex<VecDeque<u32>>)>,
    /// When the node is root and slirp4netns is installed: how outbound
    /// processes and replicas get a network namespace of their own.
    net: Option<Arc<NetConfig>>,
    /// Whether functions without a network get warm sandboxes: on a root
    /// node whose kernel keeps their calls' abstract sockets apart.
    warm_sandboxes: bool,
}

impl Sandbox {
    /// Finds bubblewrap, and `wisp-jail` beside the running program, and
    /// checks that they can make a sandbox here. `allowed` are the ranges
    /// the operator opened (`--allow-egress`): the rest of what the egress
    /// policy denies, the node's own addresses included, is routed to
    /// nowhere inside the namespaces of outbound processes and replicas.
    pub fn new(allowed: &[Cidr]) -> Result<Arc<Self>, SandboxError> {
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
        let uids = if unsafe { libc::geteuid() } == 0 {
            let block = UidBlock::claim().map_err(|error| {
                SandboxError::Unusable(format!("claim a block of uids in {UID_LOCKS}: {error}"))
            })?;
            let first = block.first();
            Some((block, Mutex::new((first..first + UIDS).collect())))
        } else {
            None
        };
        let net = match uids {
            Some(_) => {
                let net = NetConfig::new(allowed, &crate::outbound::local_addresses());
                if net.is_none() {
                    tracing::warn!(
                        "slirp4netns is not installed (apt install slirp4netns): outbound \
                         processes and process-http replicas share the host's network"
                    );
                }
                net.map(Arc::new)
            }
            None => None,
        };
        let warm_sandboxes = uids.is_some() && wisp_jail::scopes_abstract_sockets();
        if uids.is_some() && !warm_sandboxes {
            tracing::warn!(
                "this kernel's Landlock cannot keep abstract sockets apart (Linux 6.12 or \
                 later can): every process call gets a sandbox of its own, with no warm ones"
            );
        }
        let sandbox = Arc::new(Self {
            bwrap,
            jail,
            clone3: clone3_filter()?,
            isolated: filter(Filter::Isolated)?,
            outbound: filter(Filter::Outbound)?,
            warm: filter(Filter::Warm)?,
            uids,
            net,
            warm_sandboxes,
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
            .command(Path::new("/"), Path::new("/usr/bin/true"), &[], None)
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
        let Some((_, uids)) = &self.uids else {
            return Ok(None);
        };
        let uid = uids.lock().expect("uids").pop_front().ok_or_else(|| {
            std::io::Error::other(format!("more than {UIDS} sandboxed processes at once"))
        })?;
        Ok(Some(Lease {
            uid: Some(Uid {
                uid,
                sandbox: self.clone(),
            }),
            ..Lease::default()
        }))
    }
}

/// The block of uids one node's sandboxes run as, locked for the node's
/// life: the process limit counts every process of a uid on the machine, so
/// two nodes on one machine (or a node and the leftovers of one just
/// killed) must never hand out the same uid, or a fork bomb in one starves
/// the other. The lock is an `flock`, gone with the process holding it.
#[derive(Debug)]
struct UidBlock {
    index: u32,
    _lock: std::fs::File,
}

impl UidBlock {
    /// Locks the first free block, starting from one picked by the node's
    /// pid so nodes starting together rarely race for the same lock.
    fn claim() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(UID_LOCKS)?;
        let start = std::process::id() % UID_BLOCKS;
        for index in (0..UID_BLOCKS).map(|offset| (start + offset) % UID_BLOCKS) {
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(UID_LOCKS).join(index.to_string()))?;
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { index, _lock: lock });
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(error);
            }
        }
        Err(std::io::Error::other(format!(
            "all {UID_BLOCKS} blocks are held by other nodes"
        )))
    }

    fn first(&self) -> u32 {
        FIRST_UID + self.index * UIDS
    }
}

/// What one sandboxed process holds until it is gone: the uid it runs as,
/// its network namespace, the node's endpoint in it.
#[derive(Debug, Default)]
pub struct Lease {
    uid: Option<Uid>,
    /// A namespace to set up once the sandbox is spawned.
    pending: Option<Pending>,
    /// That namespace, up; slirp4netns stops when it is dropped.
    network: Option<netns::Network>,
    /// The node's endpoint, bound on the host's loopback when the sandbox
    /// shares the host's network.
    endpoint: Option<std::net::TcpListener>,
    /// The token the process was given for the endpoint.
    api_token: Option<String>,
}

/// A uid one sandboxed process runs as; it goes to the back of the queue
/// when the process is gone, so it is not reused soon.
#[derive(Debug)]
struct Uid {
    uid: u32,
    sandbox: Arc<Sandbox>,
}

impl Lease {
    /// Sets up the network namespace of a sandbox just spawned from the
    /// command this lease came with, if the node has one to set up (the
    /// sandbox's own network, the node's endpoint in it), and lets the
    /// sandbox go on; until then it waits, before anything of the function
    /// runs. On failure the sandbox is killed.
    pub async fn network_up(&mut self) -> std::io::Result<()> {
        if let Some(pending) = self.pending.take() {
            let network = tokio::task::spawn_blocking(move || pending.start())
                .await
                .map_err(std::io::Error::other)??;
            self.network = Some(network);
        }
        Ok(())
    }

    /// Whether the sandbox has a network of its own, reached through
    /// slirp4netns, to be set up with [`Lease::network_up`].
    pub fn has_own_network(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| pending.config.is_some())
            || self
                .network
                .as_ref()
                .is_some_and(netns::Network::reaches_out)
    }

    /// The node's listener for the process's requests ([`crate::endpoint`])
    /// and the token the process was given, once the network is up; taken once.
    pub fn take_endpoint(&mut self) -> Option<(std::net::TcpListener, String)> {
        let listener = self.endpoint.take().or_else(|| {
            self.network
                .as_mut()
                .and_then(|network| network.endpoint.take())
        })?;
        Some((listener, self.api_token.take()?))
    }

    /// A lease for a process outside any sandbox that gets the node's
    /// endpoint on the host's loopback.
    pub(crate) fn unsandboxed(endpoint: std::net::TcpListener, token: &str) -> Self {
        Self {
            endpoint: Some(endpoint),
            api_token: Some(token.to_owned()),
            ..Self::default()
        }
    }

    /// The sandbox's own network namespace, once up: where the node makes
    /// the sockets that reach a replica.
    pub fn netns(&self) -> Option<Arc<std::fs::File>> {
        self.network.as_ref().map(netns::Network::netns)
    }
}

impl Drop for Uid {
    fn drop(&mut self) {
        if let Some((_, uids)) = &self.sandbox.uids {
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
    /// Whether it serves HTTP on `$PORT` (a `process-http` replica): it may
    /// listen there, and the gateway reaches it in its own network namespace
    /// (or the host's, when the node cannot make one; see [`crate::netns`]).
    pub serves: bool,
    /// A directory of the function's secret files, mounted read-only at
    /// [`SECRETS_DIR`].
    pub secrets: Option<PathBuf>,
}

impl Jail {
    /// The command that runs `program` (an absolute path) inside the
    /// sandbox, with `dir` (the function's files) mounted read-only at
    /// [`FUNCTION_DIR`] as its working directory (a program in `dir` is run
    /// from there), and `env` as its whole environment. The caller adds
    /// arguments. The lease must be kept until the process has been killed.
    ///
    /// Nothing of the function reaches the programs that run outside the
    /// sandbox or with privileges in it: bubblewrap starts with an empty
    /// environment and reads its options (which name host paths) from a
    /// descriptor, so they are not on its command line, which the sandbox
    /// sees as its first process's; `wisp-jail` gets `env` on another
    /// descriptor and sets it only on the function's program, as it execs it.
    ///
    /// With `api_token`, the process is told where the node's endpoint is
    /// and that token ([`crate::endpoint`]), wherever the node can listen
    /// for it: in the sandbox's own network namespace when the node is root,
    /// on the host's loopback when the sandbox shares the host's network.
    /// The listener comes with the lease, after [`Lease::network_up`].
    pub fn command(
        &self,
        dir: &Path,
        program: &Path,
        env: &[(String, String)],
        api_token: Option<&str>,
    ) -> std::io::Result<(tokio::process::Command, Option<Lease>)> {
        let mut lease = self.sandbox.lease()?;
        let root = lease.is_some();
        let wants_network = self.serves || self.network == Network::Outbound;
        // Root, with slirp4netns: a namespace of its own even for the network.
        let own_network = self.sandbox.net.as_ref().filter(|_| wants_network && root);
        // The node enters the sandbox's namespace when it is root and the
        // sandbox has one; it listens on the host's when they share it.
        let enters = root && (own_network.is_some() || !wants_network);
        let api = match api_token {
            Some(token) if enters => Some((token, None)),
            Some(token) if wants_network => {
                let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
                Some((token, Some(listener)))
            }
            _ => None,
        };
        let mut env = env.to_vec();
        if let Some((token, listener)) = &api {
            let port = match listener {
                Some(listener) => listener.local_addr()?.port(),
                None => netns::ENDPOINT_PORT,
            };
            env.extend(crate::endpoint::env(port, token));
        }
        let mut network_fds = [None, None, None];
        let mut options = Options::default();
        options.args(["--unshare-ipc", "--unshare-pid", "--unshare-uts"]);
        // A session of its own: the node's terminal, if it has one, is out of reach.
        options.args(["--unshare-cgroup-try", "--die-with-parent", "--new-session"]);
        if lease.is_none() {
            // Not root: a user namespace is what lets bubblewrap make the
            // others; the sandbox may not make one of its own.
            options.args(["--unshare-user", "--disable-userns"]);
        }
        if !wants_network || own_network.is_some() {
            options.arg("--unshare-net");
        }
        let endpoint_inside = api.as_ref().is_some_and(|(_, listener)| listener.is_none());
        if let Some(lease) = lease
            .as_mut()
            .filter(|_| own_network.is_some() || endpoint_inside)
        {
            let (info, info_write) = std::io::pipe()?;
            let (block_read, block) = std::io::pipe()?;
            options.args(["--info-fd", &FDS[4].to_string()]);
            options.args(["--block-fd", &FDS[5].to_string()]);
            network_fds = [
                Some(OwnedFd::from(info_write)),
                Some(block_read.into()),
                None,
            ];
            if own_network.is_some() {
                // bubblewrap would make it 0600, root's: out of the function's reach.
                options.args(["--perms", "0644", "--ro-bind-data", &FDS[6].to_string()]);
                options.arg("/etc/resolv.conf");
                network_fds[2] = Some(memory_file(RESOLV_CONF.to_vec())?);
            }
            lease.api_token = api_token.map(str::to_owned);
            lease.pending = Some(Pending {
                info: OwnedFd::from(info).into(),
                block: OwnedFd::from(block).into(),
                config: own_network.cloned(),
                endpoint: endpoint_inside,
            });
        }
        self.view(&mut options, dir, wants_network, own_network.is_some());
        options.args(["--chdir", FUNCTION_DIR]);
        for fd in &FDS[..2] {
            options.args(["--add-seccomp-fd", &fd.to_string()]);
        }
        // When the node is root, bubblewrap runs as root (so it can bind any
        // path) and `wisp-jail` drops to the leased uid.
        let entry = Entry {
            uid: lease
                .as_ref()
                .and_then(|lease| lease.uid.as_ref())
                .map(|uid| uid.uid),
            bind: match (self.serves, self.network) {
                (true, _) => Bind::PortEnv,
                (false, Network::Outbound) => Bind::None,
                (false, Network::None) => Bind::Any,
            },
        };
        let mut command = tokio::process::Command::new(&self.sandbox.bwrap);
        command
            .env_clear()
            .args(["--args", &ARGS_FD.to_string(), "--", JAIL_PATH])
            .args(entry.args())
            .current_dir("/");
        command.arg(inside(dir, program));
        let filter = match (self.network, self.serves) {
            (Network::Outbound, false) => &self.sandbox.outbound,
            _ => &self.sandbox.isolated,
        };
        let environment = env.iter().flat_map(|(name, value)| {
            [name.as_bytes(), b"=", value.as_bytes(), b"\0"]
                .into_iter()
                .flatten()
                .copied()
        });
        let [info, block, resolv] = network_fds;
        let fds = [
            Some(filter_pipe(&self.sandbox.clone3)?),
            Some(filter_pipe(filter)?),
            Some(memory_file(options.0.into_iter().collect())?),
            Some(memory_file(environment.collect())?),
            info,
            block,
            resolv,
        ];
        let limits = Limits {
            parent_death: true,
            open_files: MAX_OPEN_FILES,
            memory: (!self.serves).then_some(self.memory),
            cpu_time: self.cpu_time.map(|time| time.as_secs().max(1) + 1),
            processes: root.then_some(if self.serves {
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
                // The descriptors are closed in the parent when the command
                // is dropped; the child has its own copies.
                limits.apply(
                    fds.each_ref()
                        .map(|fd| fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())),
                )
            });
        }
        if let Some((token, Some(listener))) = api {
            lease = Some(Lease {
                endpoint: Some(listener),
                api_token: Some(token.to_owned()),
                ..lease.unwrap_or_default()
            });
        }
        Ok((command, lease))
    }

    /// Whether this function's processes start in a warm sandbox
    /// ([`crate::warm`]): when the node is root and its kernel's Landlock
    /// keeps abstract sockets apart, for processes without a network that
    /// do not serve.
    pub(crate) fn warms(&self) -> bool {
        self.sandbox.warm_sandboxes && self.network == Network::None && !self.serves
    }

    /// A uid for one process, when the node is root.
    pub(crate) fn lease(&self) -> std::io::Result<Option<Lease>> {
        self.sandbox.lease()
    }

    /// What a warm sandbox is asked for one call: `argv` (the program a
    /// path inside the sandbox) with `env`, as the leased uid, within this
    /// jail's limits.
    pub(crate) fn request(
        &self,
        lease: Option<&Lease>,
        argv: Vec<std::ffi::OsString>,
        env: &[(String, String)],
    ) -> Request {
        Request {
            uid: lease
                .and_then(|lease| lease.uid.as_ref())
                .map(|uid| uid.uid),
            memory: Some(self.memory),
            cpu_seconds: self.cpu_time.map(|time| time.as_secs().max(1) + 1),
            processes: Some(MAX_PROCESSES),
            open_files: MAX_OPEN_FILES,
            tmp_size: TMP_SIZE,
            argv,
            env: env
                .iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        }
    }

    /// The command that starts this function's warm sandbox, and the
    /// node's end of the socket it takes requests on. The template is in
    /// the sandbox's namespaces and view, without seccomp, rlimits or uid
    /// of its own: it applies them to each call's process. It is not killed
    /// with the thread that spawned it, as a call's process is (neither by
    /// bubblewrap's `--die-with-parent`): it lives as long as the function,
    /// and exits when the node closes the socket, as it does when the node
    /// dies. It is PID 1 of the sandbox's PID namespace, so however it ends,
    /// every call still running in the sandbox ends with it. It leads a
    /// session of its own, away from the node's terminal.
    pub(crate) fn template(
        &self,
        dir: &Path,
    ) -> std::io::Result<(tokio::process::Command, OwnedFd)> {
        let (node, template) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )?;
        // The template blocks on its end; the node never does on its own.
        rustix::io::ioctl_fionbio(&template, false)?;
        let mut options = Options::default();
        options
            .args([
                "--unshare-ipc",
                "--unshare-pid",
                "--as-pid-1",
                "--unshare-uts",
            ])
            .args(["--unshare-cgroup-try", "--unshare-net", "--new-session"]);
        self.view(&mut options, dir, false, false);
        // The template's own processes are not the function's: the
        // function's process works in its directory, they in `/`.
        options.args(["--chdir", "/"]);
        let mut command = tokio::process::Command::new(&self.sandbox.bwrap);
        command
            .env_clear()
            .args([
                "--args",
                &ARGS_FD.to_string(),
                "--",
                JAIL_PATH,
                "--template",
            ])
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        let fds = [
            Some(template),
            None,
            Some(memory_file(options.0)?),
            None,
            Some(filter_pipe(&self.sandbox.clone3)?),
            Some(filter_pipe(&self.sandbox.warm)?),
            None,
        ];
        let limits = Limits {
            parent_death: false,
            // A status pipe for each call in flight.
            open_files: TEMPLATE_OPEN_FILES,
            memory: None,
            cpu_time: None,
            processes: None,
        };
        // SAFETY: as in `command`: only async-signal-safe calls, nothing allocated.
        unsafe {
            command.pre_exec(move || {
                limits.apply(
                    fds.each_ref()
                        .map(|fd| fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())),
                )
            });
        }
        Ok((command, node))
    }

    /// What the sandbox sees of the filesystem: `/usr`, the function's
    /// files at [`FUNCTION_DIR`], a private `/tmp`, `/proc`, a minimal
    /// `/dev`, `wisp-jail`, its secrets and, with a network, the few `/etc`
    /// files that reaching out needs (`resolv.conf` unless the sandbox has
    /// a network of its own, whose `resolv.conf` is its own).
    fn view(&self, options: &mut Options, dir: &Path, wants_network: bool, own_network: bool) {
        options
            .args(["--hostname", "wisp"])
            .args(["--ro-bind", "/usr", "/usr"]);
        for link in ["/bin", "/lib", "/lib64", "/sbin"] {
            match std::fs::read_link(link) {
                Ok(target) => options.arg("--symlink").arg(target).arg(link),
                Err(_) => options.args(["--ro-bind-try", link, link]),
            };
        }
        options
            .args(["--proc", "/proc", "--dev", "/dev"])
            .args(["--perms", "1777", "--size", &TMP_SIZE.to_string()])
            .args(["--tmpfs", "/tmp", "--ro-bind"])
            .arg(dir)
            .arg(FUNCTION_DIR)
            // bubblewrap would make `/run` 0700, out of the function's reach.
            .args(["--perms", "0755", "--dir", "/run", "--ro-bind"])
            .arg(&self.sandbox.jail)
            .arg(JAIL_PATH);
        if let Some(secrets) = &self.secrets {
            options.arg("--ro-bind").arg(secrets).arg(SECRETS_DIR);
            // Its parents made reachable, as `/run` above.
            options
                .args(["--perms", "0755", "--dir", "/var"])
                .args(["--perms", "0755", "--dir", "/var/openfaas"])
                .arg("--ro-bind")
                .arg(secrets)
                .arg(OPENFAAS_SECRETS_DIR);
        }
        if wants_network {
            if !own_network {
                options.args(["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]);
            }
            for file in [
                "/etc/hosts",
                "/etc/nsswitch.conf",
                "/etc/ssl",
                "/etc/ca-certificates",
            ] {
                options.args(["--ro-bind-try", file, file]);
            }
        }
    }
}

/// Where the sandbox sees `program`: in [`FUNCTION_DIR`] if it is one of
/// the function's files in `dir`, else where the host has it.
pub(crate) fn inside(dir: &Path, program: &Path) -> PathBuf {
    match program.strip_prefix(dir) {
        Ok(own) => Path::new(FUNCTION_DIR).join(own),
        Err(_) => program.to_owned(),
    }
}

/// bubblewrap's options, NUL-terminated, as `--args FD` reads them.
#[derive(Default)]
struct Options(Vec<u8>);

impl Options {
    fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        use std::os::unix::ffi::OsStrExt as _;
        self.0.extend_from_slice(arg.as_ref().as_bytes());
        self.0.push(0);
        self
    }

    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&mut self, args: I) -> &mut Self {
        for arg in args {
            self.arg(arg);
        }
        self
    }
}

/// The rlimits of one sandboxed process, applied between fork and exec.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Killed with the thread that spawned it: a process of one call.
    parent_death: bool,
    open_files: u64,
    memory: Option<u64>,
    cpu_time: Option<u64>,
    processes: Option<u64>,
}

impl Limits {
    /// `fds` go to [`FDS`]; -1 is none.
    fn apply(self, fds: [i32; 7]) -> std::io::Result<()> {
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
            if self.parent_death && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // bubblewrap and `wisp-jail` read from known descriptors, which
            // must survive exec. All are first moved out of the way (so
            // placing one cannot overwrite another), then placed with dup2,
            // which clears close-on-exec.
            let mut moved = [-1; 7];
            for (fd, slot) in fds.into_iter().zip(&mut moved) {
                if fd < 0 {
                    continue;
                }
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, target) in moved.into_iter().zip(FDS) {
                if fd >= 0 && libc::dup2(fd, target) != target {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        if let Some(bytes) = self.memory {
            set(libc::RLIMIT_AS, bytes)?;
        }
        set(libc::RLIMIT_NOFILE, self.open_files)?;
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

/// A memory file holding `bytes`, read from the start: options and
/// environments can be larger than a pipe holds.
fn memory_file(bytes: Vec<u8>) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: memfd_create(2) with a NUL-terminated name; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"wisp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just made and nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    (&file).write_all(&bytes)?;
    std::io::Seek::rewind(&mut &file)?;
    Ok(file.into())
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

/// The bit that marks a syscall number as the x32 ABI's.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

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

/// Which seccomp program a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// A process without a network, in a sandbox of its own.
    Isolated,
    /// A process that reaches out: no listening sockets either.
    Outbound,
    /// A warm sandbox's template and every call's process in it
    /// ([`crate::warm`]). The template makes each call's mount, PID and IPC
    /// namespaces and mounts its `/tmp` and `/proc`, so `mount` and `clone`
    /// with those three flags pass the filter; a call's process, with no
    /// capabilities left, cannot use them anyway. Calls share the
    /// template's network namespace, so no socket but UNIX and netlink ones
    /// may be made: without a network, all it could reach is another call's.
    Warm,
}

/// Compiles the seccomp program, as the bytes of its `sock_filter` array.
fn filter(kind: Filter) -> Result<Vec<u8>, SandboxError> {
    let error = |error: seccompiler::BackendError| SandboxError::Filter(error.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .filter(|&&syscall| !(kind == Filter::Warm && syscall == libc::SYS_mount))
        .map(|&syscall| (syscall, Vec::new()))
        .collect();
    let first_argument = |length: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(0, length, op, value)
            .and_then(|condition| SeccompRule::new(vec![condition]))
    };
    let flags = NAMESPACE_FLAGS
        .iter()
        .filter(|&&flag| {
            kind != Filter::Warm
                || ![libc::CLONE_NEWNS, libc::CLONE_NEWPID, libc::CLONE_NEWIPC].contains(&flag)
        })
        .map(|&flag| {
            let flag = flag as u64;
            first_argument(SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    rules.insert(libc::SYS_clone, flags);
    match kind {
        Filter::Isolated => {}
        Filter::Outbound => {
            for syscall in [
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_accept,
                libc::SYS_accept4,
            ] {
                rules.insert(syscall, Vec::new());
            }
        }
        Filter::Warm => {
            // Any family but UNIX and netlink sockets: IP, and the families
            // that reach a peer on the same machine otherwise (SMC, TIPC,
            // RDS, vsock). The domain is an `int`: its upper half is
            // whatever the caller left there.
            let other = [libc::AF_UNIX, libc::AF_NETLINK]
                .into_iter()
                .map(|domain| {
                    SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Ne,
                        domain as u64,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .and_then(SeccompRule::new)
                .map_err(error)?;
            rules.insert(libc::SYS_socket, vec![other]);
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
    // x32 syscalls (the x86-64 architecture, numbers from bit 30 on) would
    // match no rule above, so they are refused first, whatever they are.
    let x32: &[libc::sock_filter] = if cfg!(target_arch = "x86_64") {
        &[
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: X32_SYSCALL_BIT,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | errno as u32,
            },
        ]
    } else {
        &[]
    };
    Ok(x32
        .iter()
        .copied()
        .map(|instruction| {
            (
                instruction.code,
                instruction.jt,
                instruction.jf,
                instruction.k,
            )
        })
        .chain(program.iter().map(|instruction| {
            (
                instruction.code,
                instruction.jt,
                instruction.jf,
                instruction.k,
            )
        }))
        .flat_map(|(code, jt, jf, k)| {
            let mut bytes = [0u8; 8];
            bytes[..2].copy_from_slice(&code.to_ne_bytes());
            bytes[2] = jt;
            bytes[3] = jf;
            bytes[4..].copy_from_slice(&k.to_ne_bytes());
            bytes
        })
        .collect())
}
