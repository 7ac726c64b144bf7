//! A network of its own for sandboxes that need one: `network = "outbound"`
//! processes and `process-http` replicas. Each gets a network namespace
//! (bubblewrap's `--unshare-net`) reached only through user-mode networking
//! ([slirp4netns](https://github.com/rootless-containers/slirp4netns)), which
//! makes the sandbox's connections from the host's side with ordinary
//! sockets and never to the host's loopback (`--disable-host-loopback`).
//!
//! The decision a reader must know: what the node's egress policy denies is
//! denied **by routes inside the namespace**, `prohibit` routes the node adds
//! (as root, through netlink) while bubblewrap holds the sandbox on
//! `--block-fd`, before anything of the function runs. The function runs
//! without capabilities, so it cannot change them; a connection to a denied
//! address fails at once with `EACCES`. Ranges the operator opened with
//! `--allow-egress` are routed through slirp (IPv4 only: slirp gives the
//! sandbox no IPv6 at all). The node reaches a replica's `$PORT` by making
//! the socket inside the replica's namespace ([`socket_in`]).
//!
//! Only a node running as root does this: it needs `CAP_SYS_ADMIN` over the
//! namespace to add the routes and to reach a replica.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use wisp_core::egress::Cidr;

/// slirp's gateway inside the namespace; with `--disable-host-loopback` it
/// stands for nothing on the host.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// slirp's DNS forwarder inside the namespace, the sandbox's `resolv.conf`.
pub const RESOLV_CONF: &[u8] = b"nameserver 10.0.2.3\n";
/// How long slirp4netns may take to set the namespace up.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// IPv4 ranges the node's egress policy (`wisp_core::egress`) denies that a route can deny
/// (loopback and the unspecified range are the namespace's own).
const DENIED: [(Ipv4Addr, u8); 7] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// How the node's sandboxed networks are made: where slirp4netns is, and
/// the routes every namespace gets.
#[derive(Debug)]
pub struct NetConfig {
    slirp: PathBuf,
    /// Ranges routed to nowhere (`prohibit`).
    deny: Vec<(Ipv4Addr, u8)>,
    /// Ranges the operator opened, routed through slirp.
    allow: Vec<(Ipv4Addr, u8)>,
}

impl NetConfig {
    /// The routes for `allowed` (the operator's `--allow-egress`) and
    /// `node` (the node's own addresses); `None` if slirp4netns is missing.
    pub fn new(allowed: &[Cidr], node: &[IpAddr]) -> Option<Self> {
        let slirp = ["/usr/bin", "/usr/local/bin", "/bin"]
            .into_iter()
            .map(|dir| Path::new(dir).join("slirp4netns"))
            .find(|path| path.is_file())?;
        let allow: Vec<(Ipv4Addr, u8)> = allowed
            .iter()
            .filter_map(v4)
            .filter(|(address, _)| !address.is_loopback())
            .collect();
        let nodes = node.iter().filter_map(|address| match address {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some((*v4, 32)),
            _ => None,
        });
        let deny = DENIED
            .into_iter()
            .chain(nodes)
            // A range the operator opened whole is not denied at all; one
            // opened in part is denied around the part, which a more
            // specific route opens.
            .filter(|(address, prefix)| {
                !allow
                    .iter()
                    .any(|(open, bits)| bits <= prefix && same_prefix(*open, *address, *bits))
            })
            .collect();
        Some(Self { slirp, deny, allow })
    }

    /// The policy's ranges, for tests and logs.
    pub fn describe(&self) -> String {
        let show = |ranges: &[(Ipv4Addr, u8)]| {
            ranges
                .iter()
                .map(|(address, prefix)| format!("{address}/{prefix}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "denied: {}; opened: {}",
            show(&self.deny),
            show(&self.allow)
        )
    }
}

/// An IPv4 range's address and prefix, read back from its display (`Cidr`
/// keeps them private); `None` for IPv6.
fn v4(cidr: &Cidr) -> Option<(Ipv4Addr, u8)> {
    let text = cidr.to_string();
    let (address, prefix) = text.split_once('/')?;
    Some((address.parse().ok()?, prefix.parse().ok()?))
}

fn same_prefix(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let shift = 32 - u32::from(prefix);
    prefix == 0 || (a.to_bits() >> shift) == (b.to_bits() >> shift)
}

/// A sandbox started and held on its `--block-fd`, waiting for its network
/// (when it has user-mode networking) and for the node's endpoint in it.
#[derive(Debug)]
pub struct Pending {
    /// bubblewrap's `--info-fd`, read end.
    pub(crate) info: File,
    /// bubblewrap's `--block-fd`, write end: a byte lets the sandbox go on.
    pub(crate) block: File,
    /// How to reach out through slirp4netns; none for a sandbox without a network.
    pub(crate) config: Option<Arc<NetConfig>>,
    /// Whether the node listens inside, at `127.0.0.1:`[`ENDPOINT_PORT`].
    pub(crate) endpoint: bool,
}

/// Where the node listens inside a sandbox with a namespace of its own (see
/// [`crate::endpoint`]): the namespace is fresh, so the port is free, and
/// the node binds it before anything of the function runs.
pub const ENDPOINT_PORT: u16 = 80;

/// A sandbox's namespace, set up: dropping it stops slirp4netns.
#[derive(Debug)]
pub struct Network {
    netns: Arc<File>,
    /// Taken when dropped, to be reaped.
    slirp: Option<std::process::Child>,
    /// slirp4netns's `--exit-fd`: it exits when this closes, the node's death included.
    _exit: Option<OwnedFd>,
    /// The node's listener inside, until it is taken.
    pub(crate) endpoint: Option<std::net::TcpListener>,
}

impl Drop for Network {
    fn drop(&mut self) {
        let Some(mut slirp) = self.slirp.take() else {
            return;
        };
        let _ = slirp.kill();
        // slirp4netns exits only once the kernel has torn its tap device
        // down, tens of milliseconds: the call's response does not wait for it.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || slirp.wait())),
            Err(_) => drop(slirp.wait()),
        }
    }
}

impl Network {
    /// The namespace, for [`socket_in`].
    pub fn netns(&self) -> Arc<File> {
        self.netns.clone()
    }

    /// Whether the sandbox reaches out through slirp4netns.
    pub(crate) fn reaches_out(&self) -> bool {
        self.slirp.is_some()
    }
}

impl Pending {
    /// Adds the routes, starts slirp4netns, binds the node's endpoint, and
    /// lets the sandbox go on. On failure the sandbox is killed before it
    /// runs anything.
    pub fn start(mut self) -> std::io::Result<Network> {
        let pid = child_pid(&mut self.info)?;
        let mut up = || -> std::io::Result<Network> {
            let netns = Arc::new(File::open(format!("/proc/{pid}/ns/net"))?);
            let deny = self
                .config
                .as_ref()
                .map(|config| config.deny.clone())
                .unwrap_or_default();
            let endpoint = self.endpoint;
            let endpoint = in_netns(&netns, move || {
                wait_for_loopback()?;
                if !deny.is_empty() {
                    let netlink = Netlink::open()?;
                    deny.iter()
                        .try_for_each(|(address, prefix)| netlink.add(*address, *prefix, None))?;
                }
                endpoint
                    .then(|| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, ENDPOINT_PORT)))
                    .transpose()
            })?;
            let mut network = Network {
                netns,
                slirp: None,
                _exit: None,
                endpoint,
            };
            if let Some(config) = &self.config {
                network.reach_out(pid, config)?;
            }
            self.block.write_all(b"1")?;
            Ok(network)
        };
        up().inspect_err(|_| {
            // SAFETY: kill(2) on the sandbox's first process; the kernel then
            // kills everything in its PID namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    }
}

impl Network {
    /// Starts slirp4netns for the sandbox whose first process is `pid`, and
    /// routes what the operator opened through it.
    fn reach_out(&mut self, pid: libc::pid_t, config: &NetConfig) -> std::io::Result<()> {
        let (mut ready, ready_write) = std::io::pipe()?;
        let (exit_read, exit) = std::io::pipe()?;
        let (ready_fd, exit_fd) = (ready_write.as_raw_fd(), exit_read.as_raw_fd());
        let mut command = std::process::Command::new(&config.slirp);
        command
            .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .arg(format!("--ready-fd={ready_fd}"))
            .arg(format!("--exit-fd={exit_fd}"))
            .arg(pid.to_string())
            .arg("tap0")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: fcntl(2) on two descriptor numbers, between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(move || {
                for fd in [ready_fd, exit_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut slirp = command.spawn()?;
        drop((ready_write, exit_read));
        let mut byte = [0u8; 1];
        let answered =
            wait_readable(ready.as_raw_fd(), READY_TIMEOUT)? && ready.read_exact(&mut byte).is_ok();
        if !answered {
            let _ = slirp.kill();
            let _ = slirp.wait();
            return Err(std::io::Error::other(
                "slirp4netns did not set up the sandbox's network",
            ));
        }
        self.slirp = Some(slirp);
        self._exit = Some(exit.into());
        let allow = config.allow.clone();
        in_netns(&self.netns, move || {
            let netlink = Netlink::open()?;
            allow
                .iter()
                .try_for_each(|(address, prefix)| netlink.add(*address, *prefix, Some(GATEWAY)))
        })
    }
}

/// The sandbox's first process, as bubblewrap's `--info-fd` names it.
fn child_pid(info: &mut File) -> std::io::Result<libc::pid_t> {
    let mut text = Vec::new();
    let mut buffer = [0u8; 256];
    while !text.contains(&b'}') {
        let read = restarted(|| info.read(&mut buffer))?;
        if read == 0 {
            break;
        }
        text.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&text);
    text.split_once("\"child-pid\"")
        .and_then(|(_, rest)| {
            let digits: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .ok_or_else(|| std::io::Error::other(format!("bubblewrap said no child pid: {text}")))
}

/// Waits until bubblewrap has brought the namespace's loopback up: slirp4netns
/// brings it up too, and bubblewrap, finding its address already there,
/// would fail.
fn wait_for_loopback() -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments; owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just made and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        // SAFETY: an all-zero ifreq is valid; its name is set below.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of one ifreq.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        if flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(
                "the sandbox's loopback never came up",
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// `call` again for as long as a signal interrupts it: the node's threads
/// take the SIGCHLD of every process it starts, and a blocking call of a
/// thread that takes one fails with `EINTR`.
fn restarted<T>(mut call: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match call() {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// The result of a syscall that returns -1 and sets `errno` on failure.
fn checked(result: isize) -> std::io::Result<usize> {
    usize::try_from(result).map_err(|_| std::io::Error::last_os_error())
}

/// Whether `fd` became readable within `timeout`.
fn wait_readable(fd: i32, timeout: Duration) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    restarted(|| {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // SAFETY: poll(2) on one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) };
        checked(ready as isize).map(|ready| ready > 0)
    })
}

/// Runs `work` on a thread of its own inside `netns`; the thread ends with
/// it, so no other work of the node ever runs in a sandbox's namespace.
fn in_netns<T: Send>(
    netns: &File,
    work: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) on a descriptor of a network namespace; it
                // moves this thread alone, which ends after `work`.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("a namespace thread panicked")))
    })
}

/// A non-blocking TCP socket made inside `netns`, not yet connected: the
/// node connects it to a replica's `127.0.0.1:$PORT`, which is the replica's
/// own loopback.
pub fn socket_in(netns: &File) -> std::io::Result<OwnedFd> {
    in_netns(netns, || {
        // SAFETY: socket(2) with constant arguments; it returns a new
        // descriptor, owned below, or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just made and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// A route netlink socket, enough to add IPv4 routes.
struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> std::io::Result<Self> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just made and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds `address/prefix` to the main table: `prohibit` without a
    /// gateway, through `via` with one. Waits for the kernel's answer.
    fn add(&self, address: Ipv4Addr, prefix: u8, via: Option<Ipv4Addr>) -> std::io::Result<()> {
        let attribute = |kind: u16, address: Ipv4Addr| {
            let mut bytes = Vec::with_capacity(8);
            bytes.extend_from_slice(&8u16.to_ne_bytes());
            bytes.extend_from_slice(&kind.to_ne_bytes());
            bytes.extend_from_slice(&address.octets());
            bytes
        };
        let mut body = vec![
            libc::AF_INET as u8,
            prefix,
            0, // source length
            0, // tos
            libc::RT_TABLE_MAIN,
            libc::RTPROT_STATIC,
            libc::RT_SCOPE_UNIVERSE,
            if via.is_some() {
                libc::RTN_UNICAST
            } else {
                libc::RTN_PROHIBIT
            },
            0,
            0,
            0,
            0, // flags
        ];
        body.extend(attribute(libc::RTA_DST, address));
        if let Some(via) = via {
            body.extend(attribute(libc::RTA_GATEWAY, via));
        }
        let flags =
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut message = Vec::with_capacity(16 + body.len());
        message.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        message.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&1u32.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend(body);
        restarted(|| {
            // SAFETY: send(2) of a buffer we own, to the kernel.
            checked(unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                )
            })
        })?;
        let mut answer = [0u8; 512];
        let read = restarted(|| {
            // SAFETY: recv(2) into a buffer we own.
            checked(unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    answer.as_mut_ptr().cast(),
                    answer.len(),
                    0,
                )
            })
        })?;
        // nlmsghdr (16 bytes) then, for NLMSG_ERROR, the errno (0 on success).
        let kind = u16::from_ne_bytes([answer[4], answer[5]]);
        if read < 20 || i32::from(kind) != libc::NLMSG_ERROR {
            return Err(std::io::Error::other("netlink: an unexpected answer"));
        }
        let errno = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
        if errno != 0 {
            let error = std::io::Error::from_raw_os_error(-errno);
            return Err(std::io::Error::new(
                error.kind(),
                format!("add the route {address}/{prefix}: {error}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opened_ranges_lift_denials_they_cover() {
        let Some(config) = NetConfig::new(
            &[
                "10.0.0.0/8".parse().unwrap(),
                "192.168.5.0/24".parse().unwrap(),
            ],
            &["203.0.113.7".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        ) else {
            return; // no slirp4netns here
        };
        assert!(!config.deny.contains(&(Ipv4Addr::new(10, 0, 0, 0), 8)));
        assert!(config.deny.contains(&(Ipv4Addr::new(192, 168, 0, 0), 16)));
        assert!(config.deny.contains(&(Ipv4Addr::new(203, 0, 113, 7), 32)));
        assert!(config.allow.contains(&(Ipv4Addr::new(192, 168, 5, 0), 24)));
        assert!(!config.deny.iter().any(|(address, _)| address.is_loopback()));
    }
}
