//! Warm sandboxes: a `process` function whose processes need nothing of the
//! network keeps one sandbox, its template, started at its first call and
//! kept while the function is deployed; each call asks it for a fresh
//! process (see [`wisp_jail::template`] for what is fresh per call). A call
//! then costs one clone inside the sandbox instead of a bubblewrap start,
//! with the same confinement: namespaces, a private `/tmp`, a uid of its
//! own, rlimits, Landlock and seccomp.
//!
//! Only a node running as root warms sandboxes: it is what lets a call's
//! process run as a uid of its own, which no other call shares. Processes
//! that reach out, serve or talk to the node's endpoint start as before,
//! one bubblewrap sandbox each.

use std::{
    ffi::OsString,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::{
    io::unix::AsyncFd,
    net::unix::pipe::{Receiver, Sender},
};
use wisp_jail::template::{Outcome, Request};

use crate::sandbox::{Jail, Lease};

/// A function's warm sandbox, started on demand.
#[derive(Debug)]
pub struct Warm {
    jail: Jail,
    dir: PathBuf,
    template: Mutex<Option<Arc<Template>>>,
}

/// A template running: the sandbox's first process, and the socket it reads
/// requests from. Dropped, it is killed.
#[derive(Debug)]
struct Template {
    process: Mutex<tokio::process::Child>,
    control: AsyncFd<OwnedFd>,
}

/// A call's process, started in the warm sandbox.
pub struct Started {
    /// Its STDIN.
    pub stdin: Sender,
    /// Its STDOUT.
    pub stdout: Receiver,
    /// Its STDERR.
    pub stderr: Receiver,
    /// Where its [`Outcome`] comes; dropping this ends every process of the call.
    pub outcome: Receiver,
    /// Its uid, held until it is gone.
    pub lease: Option<Lease>,
}

impl Warm {
    /// A warm sandbox for the function whose files are `dir`, if `jail`
    /// allows one (see the module's documentation).
    pub fn new(jail: &Jail, dir: PathBuf) -> Option<Arc<Self>> {
        jail.warms().then(|| {
            Arc::new(Self {
                jail: jail.clone(),
                dir,
                template: Mutex::new(None),
            })
        })
    }

    /// Starts `argv` (whose program is a path on the host) with `env` as its
    /// whole environment, in a fresh process of the warm sandbox.
    pub async fn start(
        &self,
        mut argv: Vec<OsString>,
        env: &[(String, String)],
    ) -> std::io::Result<Started> {
        // NUL ends a field of the request: one inside a value would move
        // the rest of it into another field (an argument into the environment).
        let has_nul = |value: &[u8]| value.contains(&0);
        if argv.iter().any(|arg| has_nul(arg.as_encoded_bytes()))
            || env
                .iter()
                .any(|(name, value)| has_nul(name.as_bytes()) || has_nul(value.as_bytes()))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an argument or environment variable holds a NUL byte",
            ));
        }
        let lease = self.jail.lease()?;
        if let Some(program) = argv.first_mut() {
            *program = crate::sandbox::inside(&self.dir, std::path::Path::new(program)).into();
        }
        let request = self.jail.request(lease.as_ref(), argv, env).encode();
        let (stdin, stdin_write) = std::io::pipe()?;
        let (stdout_read, stdout) = std::io::pipe()?;
        let (stderr_read, stderr) = std::io::pipe()?;
        let (outcome_read, outcome) = std::io::pipe()?;
        let fds: [OwnedFd; Request::FDS] =
            [stdin.into(), stdout.into(), stderr.into(), outcome.into()];
        let mut retried = false;
        loop {
            let template = self.template()?;
            let sent = template
                .control
                .async_io(tokio::io::Interest::WRITABLE, |control| {
                    wisp_jail::template::send(
                        control,
                        &request,
                        &fds.each_ref().map(|fd| fd.as_fd()),
                    )
                })
                .await;
            match sent {
                Ok(()) => break,
                // The template is gone (killed, say): a new one, once. Any
                // other error (a request too large for the socket) fails
                // this call alone, and the calls in flight go on.
                Err(error) if !retried && gone(&error) => {
                    retried = true;
                    self.forget(&template);
                }
                Err(error) => return Err(error),
            }
        }
        drop(fds);
        Ok(Started {
            stdin: Sender::from_owned_fd(stdin_write.into())?,
            stdout: Receiver::from_owned_fd(stdout_read.into())?,
            stderr: Receiver::from_owned_fd(stderr_read.into())?,
            outcome: Receiver::from_owned_fd(outcome_read.into())?,
            lease,
        })
    }

    /// The running template, started if there is none or it has exited.
    fn template(&self) -> std::io::Result<Arc<Template>> {
        let mut slot = self.template.lock().expect("template");
        if let Some(template) = slot.as_ref()
            && matches!(
                template.process.lock().expect("process").try_wait(),
                Ok(None)
            )
        {
            return Ok(template.clone());
        }
        let (mut command, control) = self.jail.template(&self.dir)?;
        let process = command.kill_on_drop(true).spawn()?;
        // SAFETY: an OwnedFd stays open and keeps its descriptor for as long as it lives.
        let control =
            unsafe { AsyncFd::register_with_interest(control, tokio::io::Interest::WRITABLE)? };
        let template = Arc::new(Template {
            process: Mutex::new(process),
            control,
        });
        *slot = Some(template.clone());
        Ok(template)
    }

    /// Drops `template` if it is still the current one.
    fn forget(&self, template: &Arc<Template>) {
        let mut slot = self.template.lock().expect("template");
        if slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, template))
        {
            *slot = None;
        }
    }
}

/// Whether a send failed because the template's end of the socket is closed.
fn gone(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED | libc::ENOTCONN)
    )
}

/// Waits for a call's [`Outcome`]; `None` if its process could not be
/// started or its sandbox went away.
pub async fn outcome(mut outcome: Receiver) -> Option<Outcome> {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::with_capacity(Outcome::SIZE);
    (&mut outcome)
        .take(Outcome::SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .ok()?;
    Outcome::decode(&bytes)
}
