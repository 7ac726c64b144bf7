//! The last step into a process sandbox. bubblewrap builds the sandbox's
//! namespaces and its view of the filesystem, then runs `wisp-jail`, which:
//!
//! 1. when the node is root, drops to the uid leased for this process, with
//!    no groups and no capabilities, not even in the bounding set;
//! 2. applies Landlock where the kernel has it: the function may read and
//!    execute only what its view shows (`/usr`, its own files, its secrets,
//!    `/proc`, the bound `/etc` files), write only to `/tmp` (and execute
//!    nothing from it) and existing devices, create nothing in `/dev`, bind
//!    only the TCP port it was
//!    given (a `process-http` replica), and neither connect to
//!    abstract UNIX sockets nor signal processes outside its sandbox;
//! 3. executes the function's program with the environment the node wrote
//!    to [`ENV_FD`], and no other: bubblewrap and this program run with a
//!    fixed one, so nothing a tenant declares (`LD_PRELOAD`, say) acts on a
//!    program that runs outside the sandbox or with privileges inside it.
//!
//! It is a program of its own because Landlock forbids mounting: it can only
//! be applied once bubblewrap has finished building the view.
//!
//! Run as `wisp-jail --template`, it is instead the warm sandbox of a
//! function (see [`template`]): it stays, and does the same for a fresh
//! process per call.

pub mod template;

use std::{ffi::OsString, os::unix::process::CommandExt as _};

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, Scope, path_beneath_rules,
};

/// Where a sandboxed function finds its own files (read-only), its working
/// directory and `$HOME`.
pub const FUNCTION_DIR: &str = "/function";
/// Where a function finds its secrets, one file each (as in OpenFaaS).
pub const SECRETS_DIR: &str = "/run/secrets";
/// The same files where OpenFaaS's functions read them.
pub const OPENFAAS_SECRETS_DIR: &str = "/var/openfaas/secrets";
/// Where the sandbox finds this program.
pub const JAIL_PATH: &str = "/run/wisp-jail";
/// The descriptor `wisp-jail` reads the function's environment from:
/// `NAME=VALUE` entries, each ending in a NUL byte.
pub const ENV_FD: i32 = 6;
/// The Landlock ABI whose rights this program asks for (Linux 6.12): older
/// kernels enforce what they know of them.
const ABI: ABI = ABI::V6;

/// What `wisp-jail` could not do; the function's process then does not start.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The command line is not one the node writes.
    #[error("usage: wisp-jail [--uid UID] [--bind any|none|port-env] -- PROGRAM [ARG...]: {0}")]
    Usage(String),
    /// Dropping to the leased uid failed.
    #[error("drop to uid {uid}: {error}")]
    Drop {
        /// The uid.
        uid: u32,
        /// The failed call.
        error: std::io::Error,
    },
    /// The environment could not be read from [`ENV_FD`].
    #[error("read the environment from descriptor {ENV_FD}: {0}")]
    Environment(std::io::Error),
    /// A Landlock ruleset could not be built or enforced.
    #[error("landlock: {0}")]
    Landlock(#[from] RulesetError),
    /// The warm sandbox could not make a call's namespaces or mounts.
    #[error("{0}")]
    Template(String),
    /// The program could not be executed.
    #[error("execute {program}: {error}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
    },
}

/// Which TCP ports the function may bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// Any: it has a network namespace of its own, which nothing outside reaches.
    Any,
    /// None: it reaches out through user-mode networking (or, on a node
    /// that cannot set that up, the host's network), outbound only.
    None,
    /// Only `$PORT`: it serves on that port (a `process-http` replica).
    PortEnv,
}

impl Bind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::None => "none",
            Self::PortEnv => "port-env",
        }
    }
}

/// How `wisp-jail` confines one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The uid (and gid) to run as, when the node is root.
    pub uid: Option<u32>,
    /// The TCP ports it may bind.
    pub bind: Bind,
}

impl Entry {
    /// The arguments that ask `wisp-jail` for this entry, up to and including `--`.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(uid) = self.uid {
            args.extend(["--uid".to_owned(), uid.to_string()]);
        }
        args.extend(["--bind".to_owned(), self.bind.as_str().to_owned()]);
        args.push("--".to_owned());
        args
    }

    /// Parses what [`Entry::args`] wrote, followed by the program and its arguments.
    pub fn parse(
        mut args: impl Iterator<Item = OsString>,
    ) -> Result<(Self, Vec<OsString>), JailError> {
        let usage = |why: &str| JailError::Usage(why.to_owned());
        let mut entry = Self {
            uid: None,
            bind: Bind::Any,
        };
        loop {
            let arg = args.next().ok_or_else(|| usage("no `--`"))?;
            let mut value = || {
                args.next()
                    .and_then(|value| value.into_string().ok())
                    .ok_or_else(|| usage("a flag without its value"))
            };
            match arg.to_str() {
                Some("--") => break,
                Some("--uid") => {
                    entry.uid = Some(value()?.parse().map_err(|_| usage("a bad uid"))?);
                }
                Some("--bind") => {
                    entry.bind = match value()?.as_str() {
                        "any" => Bind::Any,
                        "none" => Bind::None,
                        "port-env" => Bind::PortEnv,
                        _ => return Err(usage("a bad --bind")),
                    };
                }
                _ => return Err(usage(&format!("unknown argument {arg:?}"))),
            }
        }
        let program: Vec<OsString> = args.collect();
        if program.is_empty() {
            return Err(usage("no program"));
        }
        Ok((entry, program))
    }

    /// Confines this process and executes `program` with the environment
    /// read from [`ENV_FD`]; returns only on failure.
    pub fn enter(&self, program: &[OsString]) -> JailError {
        match read_env() {
            Ok(env) => self.exec(program, env),
            Err(error) => JailError::Environment(error),
        }
    }

    /// Confines this process and executes `program` with `env` as its whole
    /// environment; returns only on failure.
    pub(crate) fn exec(&self, program: &[OsString], env: Vec<(OsString, OsString)>) -> JailError {
        if let Some(uid) = self.uid
            && let Err(error) = drop_to(uid)
        {
            return JailError::Drop { uid, error };
        }
        // The last `PORT` is the one the program sees, and the node writes
        // the replica's own after the function's variables.
        let port = env
            .iter()
            .rev()
            .find(|(name, _)| name == "PORT")
            .and_then(|(_, port)| port.to_str()?.parse().ok());
        if let Err(error) = self.landlock(port) {
            return error;
        }
        // Nothing but STDIN, STDOUT and STDERR passes on to the function
        // (bubblewrap's options, which name host paths, were on a descriptor).
        if let Err(error) = close_on_exec_from(3) {
            return JailError::Environment(error);
        }
        let error = std::process::Command::new(&program[0])
            .args(&program[1..])
            .env_clear()
            .envs(env)
            .exec();
        JailError::Exec {
            program: program[0].to_string_lossy().into_owned(),
            error,
        }
    }

    /// Applies the Landlock rules, as far as the kernel knows them; `port`
    /// is the function's `$PORT`.
    fn landlock(&self, port: Option<u16>) -> Result<(), JailError> {
        let read = AccessFs::from_read(ABI);
        let device = read | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(ABI))?
            .scope(Scope::from_all(ABI))?;
        if self.bind != Bind::Any {
            ruleset = ruleset.handle_access(AccessNet::BindTcp)?;
        }
        let mut ruleset = ruleset
            .create()?
            .add_rules(path_beneath_rules(
                [
                    "/usr",
                    "/bin",
                    "/sbin",
                    "/lib",
                    "/lib64",
                    "/etc",
                    "/proc",
                    FUNCTION_DIR,
                    SECRETS_DIR,
                    OPENFAAS_SECRETS_DIR,
                ],
                read,
            ))?
            .add_rules(path_beneath_rules(["/dev"], device))?
            .add_rules(path_beneath_rules(
                ["/tmp"],
                AccessFs::from_all(ABI) & !AccessFs::Execute,
            ))?;
        if self.bind == Bind::PortEnv
            && let Some(port) = port
        {
            ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
        }
        ruleset.restrict_self()?;
        Ok(())
    }
}

/// Whether this kernel's Landlock can keep a process from abstract UNIX
/// sockets made outside its domain (ABI 6, Linux 6.12): what keeps the
/// calls of a warm sandbox, which share a network namespace, apart.
pub fn scopes_abstract_sockets() -> bool {
    // SAFETY: landlock_create_ruleset(2) with no attributes and the
    // version flag only reports the kernel's ABI version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    version >= ABI as libc::c_long
}

/// `landlock_create_ruleset(2)`'s flag that asks for the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;

/// Marks every descriptor from `first` on close-on-exec: with one
/// close_range(2) call (Linux 5.11), or one by one on older kernels.
fn close_on_exec_from(first: libc::c_int) -> std::io::Result<()> {
    // SAFETY: close_range(2) takes integers only.
    let ranged = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ranged == 0 {
        return Ok(());
    }
    let open: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first)
        .collect();
    for fd in open {
        // SAFETY: fcntl(2) on an integer; a descriptor that was the
        // directory listing's own is closed by now and fails harmlessly.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Reads the function's environment from [`ENV_FD`] and closes it.
fn read_env() -> std::io::Result<Vec<(OsString, OsString)>> {
    use std::{
        io::Read as _,
        os::{fd::FromRawFd as _, unix::ffi::OsStringExt as _},
    };
    // SAFETY: the node opened this descriptor for this program alone, and
    // nothing else here uses it; the File closes it when dropped.
    let mut file = unsafe { std::fs::File::from_raw_fd(ENV_FD) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(parse_env(&bytes)
        .map(|(name, value)| {
            (
                OsString::from_vec(name.to_vec()),
                OsString::from_vec(value.to_vec()),
            )
        })
        .collect())
}

/// The `NAME=VALUE` entries of NUL-terminated bytes; one without `=` is skipped.
fn parse_env(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    bytes.split(|&byte| byte == 0).filter_map(env_entry)
}

/// The name and value of one `NAME=VALUE` entry; `None` without `=`.
fn env_entry(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let equals = entry.iter().position(|&byte| byte == b'=')?;
    Some((&entry[..equals], &entry[equals + 1..]))
}

/// Becomes `uid` (and gid `uid`) with no supplementary groups and no
/// capabilities left in any set.
fn drop_to(uid: u32) -> std::io::Result<()> {
    let check = |result: libc::c_int| {
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // The bounding set needs CAP_SETPCAP, so it goes while this is root.
    drop_bounding_set()?;
    // SAFETY: plain syscalls on integers, and a pointer that setgroups(2)
    // never reads with a count of 0.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(uid, uid, uid))?;
        // Leaving uid 0 clears the permitted, effective and ambient sets.
        check(libc::setresuid(uid, uid, uid))?;
    }
    clear_inheritable()
}

/// Empties the capability bounding set, which children inherit. The loop
/// ends at the first capability the kernel does not know (EINVAL); one
/// already gone (a warm sandbox's template empties the set once, for every
/// call) costs no new credentials.
pub(crate) fn drop_bounding_set() -> std::io::Result<()> {
    for cap in 0.. {
        // SAFETY: prctl(2) on integers.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } {
            0 => {}
            // SAFETY: as above.
            1 if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == 0 => {}
            _ => {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Empties the inheritable capability set, which changing uid leaves alone.
fn clear_inheritable() -> std::io::Result<()> {
    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let empty = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) reads a valid header and two data structs, as
    // version 3 asks; lowering every set is always allowed.
    if unsafe { libc::syscall(libc::SYS_capset, &header, empty.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_arguments() {
        for entry in [
            Entry {
                uid: Some(300_001),
                bind: Bind::PortEnv,
            },
            Entry {
                uid: None,
                bind: Bind::None,
            },
        ] {
            let args = entry
                .args()
                .into_iter()
                .chain(["/function/run.sh".to_owned(), "--flag".to_owned()])
                .map(OsString::from);
            let (parsed, program) = Entry::parse(args).unwrap();
            assert_eq!(parsed, entry);
            assert_eq!(program, ["/function/run.sh", "--flag"]);
        }
    }

    #[test]
    fn environments_are_read_as_the_node_writes_them() {
        let env: Vec<_> = parse_env(b"PORT=8080\0A=b=c\0EMPTY=\0junk\0").collect();
        assert_eq!(
            env,
            [
                (&b"PORT"[..], &b"8080"[..]),
                (b"A", b"b=c"),
                (b"EMPTY", b""),
            ]
        );
    }

    #[test]
    fn a_bad_command_line_is_refused() {
        for args in [
            &["--uid", "root", "--", "x"][..],
            &["--bind", "all", "--", "x"],
            &["--uid", "1"],
            &["--", ""][..1],
            &["--mystery", "--", "x"],
        ] {
            let parsed = Entry::parse(args.iter().map(OsString::from));
            assert!(matches!(parsed, Err(JailError::Usage(_))), "{args:?}");
        }
    }
}
