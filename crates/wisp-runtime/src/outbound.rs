//! Outbound connections: a function's HTTP requests (`wasi:http`) and
//! anything else the node sends on a tenant's behalf (callbacks), under two
//! policies. The function's own, `allowed_outbound_hosts`, judges the URL;
//! the node's [`EgressPolicy`] judges the addresses the host resolves to.
//!
//! The decision a reader must know: [`connect`] resolves the host once,
//! checks every address, and connects only to an address it checked. Nothing
//! later resolves the name again, so a DNS answer that changes in between (a
//! rebind) cannot swap a checked address for a denied one. This is why wisp
//! sends guests' requests itself rather than through wasmtime-wasi-http's
//! `default_send_request`, which resolves and connects in one step.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::{Pin, pin},
    sync::{Arc, OnceLock},
    task::{Poll, ready},
    time::Duration,
};

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};
use wisp_core::egress::{EgressDenied, EgressPolicy, literal_address};

use crate::{LogStream, wasm::WasmLimits};

/// How long a connection or a first response byte may take when the guest
/// sets no bound: the guest's own deadline still bounds the whole call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every address the host resolves to is denied.
    #[error(transparent)]
    Denied(#[from] EgressDenied),
    /// The host does not resolve.
    #[error("{host} does not resolve: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// No allowed address accepted the connection.
    #[error("connect to {host}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// Why the last attempt failed.
        source: std::io::Error,
    },
    /// Connecting took longer than allowed.
    #[error("connect to {host}: timed out")]
    Timeout {
        /// The host.
        host: String,
    },
}

/// The addresses `host` stands for: itself if it is an address in any
/// spelling (`[::1]`, `2130706433`, `127.1`), else what it resolves to.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Some(address) = literal_address(host) {
        return Ok(vec![SocketAddr::new(address, port)]);
    }
    let resolved = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    Ok(resolved.collect())
}

/// The addresses of `host` the policy allows; denied if it allows none.
pub async fn allowed_addresses(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let mut denied = None;
    let allowed: Vec<SocketAddr> = resolve(host, port)
        .await?
        .into_iter()
        .filter(|address| match policy.check(address.ip()) {
            Ok(()) => true,
            Err(error) => {
                denied.get_or_insert(error);
                false
            }
        })
        .collect();
    match denied {
        Some(denied) if allowed.is_empty() => Err(denied.into()),
        _ => Ok(allowed),
    }
}

/// Connects to `host:port` through an address the policy allows, trying
/// each in turn, all within `timeout`.
pub async fn connect(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let mut last = None;
        for address in allowed_addresses(policy, host, port).await? {
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last = Some(error),
            }
        }
        Err(ConnectError::Connect {
            host: host.to_owned(),
            source: last.unwrap_or_else(|| std::io::Error::other("it resolves to no address")),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                host: host.to_owned(),
            })
        })
}

/// The addresses of this host's network interfaces, so a node listening on
/// every interface can deny them all as its own.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list it allocates, or
    // fails and leaves it untouched; it is freed once below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return addresses;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not freed yet.
        let interface = unsafe { &*entry };
        let address = interface.ifa_addr;
        if !address.is_null() {
            // SAFETY: `ifa_addr` points to a sockaddr whose family says its
            // real type; only the two families read here are cast.
            match i32::from(unsafe { (*address).sa_family }) {
                libc::AF_INET => {
                    let v4 = unsafe { &*address.cast::<libc::sockaddr_in>() };
                    addresses.push(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    let v6 = unsafe { &*address.cast::<libc::sockaddr_in6>() };
                    addresses.push(IpAddr::from(v6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        entry = interface.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

/// The TLS settings of guests' requests: the web's root certificates.
fn tls() -> tokio_rustls::TlsConnector {
    static CONNECTOR: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// What a sent request answers: the response, and the connection's I/O to
/// drive while its body is read.
type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

/// Why a guest's request was not sent.
enum SendError {
    /// The node's egress policy refused every address.
    Denied(EgressDenied),
    /// Anything else, as `wasi:http` reports it.
    Http(HttpError),
}

impl From<HttpError> for SendError {
    fn from(error: HttpError) -> Self {
        Self::Http(error)
    }
}

/// Sends a guest's request as wasmtime-wasi-http's default would, but
/// connected through [`connect`].
async fn send(
    egress: &EgressPolicy,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<Sent, SendError> {
    let uri = request.uri();
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let use_tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let host = authority.host().to_owned();
    let port = authority
        .port_u16()
        .unwrap_or(if use_tls { 443 } else { 80 });
    let connect_timeout = options
        .and_then(|options| options.connect_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|options| options.first_byte_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let stream = match connect(egress, &host, port, connect_timeout).await {
        Ok(stream) => stream,
        Err(ConnectError::Denied(denied)) => return Err(SendError::Denied(denied)),
        Err(ConnectError::Timeout { .. }) => return Err(HttpError::ConnectionTimeout.into()),
        Err(ConnectError::Resolve { .. }) => {
            return Err(HttpError::DnsError {
                rcode: Some("address not available".into()),
                info_code: None,
            }
            .into());
        }
        Err(ConnectError::Connect { source, .. }) => return Err(HttpError::Connect(source).into()),
    };
    // The request line carries only the path: scheme and authority are for proxies.
    let path = uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;
    if use_tls {
        let name = match literal_address(&host) {
            Some(address) => rustls::pki_types::ServerName::from(address),
            None => rustls::pki_types::ServerName::try_from(host)
                .map_err(HttpError::InvalidDnsNameError)?,
        };
        let stream = tls().connect(name, stream).await.map_err(HttpError::Tls)?;
        exchange(stream, request, connect_timeout, first_byte_timeout).await
    } else {
        exchange(stream, request, connect_timeout, first_byte_timeout).await
    }
    .map_err(SendError::Http)
}

/// HTTP/1.1 over a connected stream: sends the request and waits for the
/// response head, driving the connection meanwhile.
async fn exchange<S>(
    stream: S,
    request: http::Request<WasiBody>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
) -> Result<Sent, HttpError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    let mut response = pin!(async move {
        tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(HttpError::from)
    });
    let mut connection = Some(connection);
    let response = std::future::poll_fn(|cx| match response.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            let Some(io) = connection.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(io).poll(cx));
            connection = None;
            match done {
                Ok(()) => response.as_mut().poll(cx),
                Err(error) => Poll::Ready(Err(HttpError::from(error))),
            }
        }
    })
    .await?;
    let io = async move {
        match connection {
            Some(connection) => connection.await.map_err(|error| {
                if error.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    error.into()
                }
            }),
            None => Ok(()),
        }
    };
    Ok((
        response.map(|body| body.map_err(HttpError::from).boxed_unsync()),
        Box::new(io),
    ))
}

/// A guest's outbound HTTP: only to the function's `allowed_outbound_hosts`,
/// only to addresses the node's egress policy allows, carrying the call's
/// trace context. A refusal is `HttpRequestDenied` to the guest and a line
/// in the function's log with the call id.
pub(crate) struct OutboundPolicy {
    pub(crate) function: Arc<WasmLimits>,
    /// The node's egress policy.
    pub(crate) egress: Arc<EgressPolicy>,
    /// Where requests to `*.wisp.internal` go, if the node serves them.
    pub(crate) internal: Option<Arc<dyn Internal>>,
    /// How many in-process calls led to this one.
    pub(crate) depth: u32,
    /// The call, so a denied request is logged against it.
    pub(crate) call_id: String,
    /// The call's `traceparent`, added to requests that carry none, so the
    /// functions a guest calls join its trace.
    pub(crate) traceparent: Option<http::HeaderValue>,
}

/// What the host of a request to another function of the node ends with:
/// `http://{name}.wisp.internal/...` for a function of the caller's
/// namespace, `http://{name}.{namespace}.wisp.internal/...` for another's.
pub const INTERNAL_DOMAIN: &str = ".wisp.internal";

/// Calls between functions without a network hop: what a guest's request
/// to a host under [`INTERNAL_DOMAIN`] reaches. The node answers as it
/// would the same call from outside (statuses, limits, privacy), plus 508
/// for a chain deeper than it allows.
pub trait Internal: Send + Sync {
    /// Calls the function `reference` names (`name` or `name.namespace`),
    /// or the node's own services when it is empty ([`NODE_HOST`]).
    fn call(
        &self,
        caller: Caller,
        reference: String,
        request: http::Request<crate::ResponseBody>,
    ) -> Pin<Box<dyn Future<Output = crate::Response> + Send>>;
}

/// Who makes an in-process call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The calling function's namespace.
    pub namespace: String,
    /// The calling function's name.
    pub name: String,
    /// How deep the call is: 1 for a call from a function called from outside.
    pub depth: u32,
}

/// The host of the node's own services to its functions (their buckets,
/// `http://wisp.internal/s3/...`): reached in-process like another
/// function, as the empty reference, and without an allowlist entry, since
/// the node grants each function only what it declares.
pub const NODE_HOST: &str = "wisp.internal";

/// The function a request's host names under [`INTERNAL_DOMAIN`], as `name`
/// or `name.namespace`; empty for [`NODE_HOST`].
fn internal_reference(uri: &http::Uri) -> Option<String> {
    let host = uri.host()?.to_ascii_lowercase();
    if host == NODE_HOST {
        return Some(String::new());
    }
    let reference = host.strip_suffix(INTERNAL_DOMAIN)?;
    (!reference.is_empty() && reference.split('.').count() <= 2).then(|| reference.to_owned())
}

/// The W3C Trace Context header.
pub(crate) const TRACEPARENT: &str = "traceparent";

impl OutboundPolicy {
    fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or_default();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        self.function
            .allowed_outbound_hosts
            .iter()
            .any(|allowed| host_matches(allowed, scheme, host, port))
    }

    /// Logs a refusal in the function's log, against the call.
    fn deny(function: &WasmLimits, call_id: &str, uri: &http::Uri, why: &str) {
        function.output.0.line(
            Some(call_id),
            LogStream::Wisp,
            &format!("outbound request to {uri} denied: {why}"),
        );
    }
}

/// Whether `scheme://host:port` matches an allowlist entry such as
/// `https://api.example.com`, `http://*.example.com:8080` or `*://localhost:*`.
pub(crate) fn host_matches(allowed: &str, scheme: &str, host: &str, port: u16) -> bool {
    let Some((allowed_scheme, rest)) = allowed.split_once("://") else {
        return false;
    };
    let rest = rest.trim_end_matches('/');
    let (allowed_host, allowed_port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    let default_port = if scheme == "http" { 80 } else { 443 };
    let scheme_ok = allowed_scheme == "*" || allowed_scheme == scheme;
    let host_ok = allowed_host == "*"
        || allowed_host.eq_ignore_ascii_case(host)
        || allowed_host.strip_prefix("*.").is_some_and(|suffix| {
            host.len() > suffix.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
        });
    let port_ok = match allowed_port {
        Some("*") => true,
        Some(allowed) => allowed.parse::<u16>() == Ok(port),
        None => port == default_port,
    };
    scheme_ok && host_ok && port_ok
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = wasmtime_wasi_http::Result<Sent>> + Send> {
        let to_node = request
            .uri()
            .host()
            .is_some_and(|host| host.eq_ignore_ascii_case(NODE_HOST));
        if !to_node && !self.allows(request.uri()) {
            Self::deny(
                &self.function,
                &self.call_id,
                request.uri(),
                "not in allowed_outbound_hosts",
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let mut request = request;
        if let Some(traceparent) = &self.traceparent {
            request
                .headers_mut()
                .entry(TRACEPARENT)
                .or_insert_with(|| traceparent.clone());
        }
        if let Some(reference) = internal_reference(request.uri()) {
            let Some(internal) = self.internal.clone() else {
                return Box::new(async { Err(HttpError::DestinationNotFound) });
            };
            let caller = Caller {
                namespace: self.function.namespace.clone(),
                name: self.function.name.clone(),
                depth: self.depth + 1,
            };
            let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
            return Box::new(async move {
                let response = internal.call(caller, reference, request).await;
                let response = response.map(|body| {
                    body.map_err(|error| HttpError::InternalError(Some(error.to_string())))
                        .boxed_unsync()
                });
                // Nothing to drive: the callee's body streams by itself.
                let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, io))
            });
        }
        let (function, egress, call_id) = (
            self.function.clone(),
            self.egress.clone(),
            self.call_id.clone(),
        );
        Box::new(async move {
            let uri = request.uri().clone();
            match send(&egress, request, options).await {
                Ok(sent) => Ok(sent),
                Err(SendError::Http(error)) => Err(error),
                Err(SendError::Denied(denied)) => {
                    Self::deny(&function, &call_id, &uri, &denied.to_string());
                    Err(HttpError::HttpRequestDenied)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_hosts_match_scheme_host_and_port() {
        assert!(host_matches(
            "https://api.example.com",
            "https",
            "api.example.com",
            443
        ));
        assert!(!host_matches(
            "https://api.example.com",
            "http",
            "api.example.com",
            80
        ));
        assert!(!host_matches(
            "https://api.example.com",
            "https",
            "api.example.com",
            8443
        ));
        assert!(host_matches(
            "http://*.example.com:8080",
            "http",
            "a.example.com",
            8080
        ));
        assert!(!host_matches(
            "http://*.example.com:8080",
            "http",
            "example.com",
            8080
        ));
        assert!(!host_matches(
            "http://*.example.com:8080",
            "http",
            "evil-example.com",
            8080
        ));
        assert!(host_matches("*://localhost:*", "http", "localhost", 3000));
        assert!(!host_matches("localhost", "http", "localhost", 80));
    }

    #[tokio::test]
    async fn a_name_is_checked_after_it_resolves_and_connected_only_if_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shut = EgressPolicy::default();
        for host in ["localhost", "127.0.0.1", "2130706433", "[::ffff:127.0.0.1]"] {
            let error = connect(&shut, host, port, Duration::from_secs(5))
                .await
                .expect_err(host);
            assert!(matches!(error, ConnectError::Denied(_)), "{host}: {error}");
        }
        let open = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], []);
        let stream = connect(&open, "2130706433", port, Duration::from_secs(5))
            .await
            .expect("an opened range connects");
        assert_eq!(stream.peer_addr().unwrap().ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn the_hosts_own_addresses_include_loopback() {
        assert!(local_addresses().iter().any(IpAddr::is_loopback));
    }
}
