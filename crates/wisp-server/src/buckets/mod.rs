//! Object buckets through S3's API, under `/s3`: a namespace's buckets
//! for `aws s3`, boto3, rclone and `curl -T`, path-style
//! (`/s3/{bucket}/{key}`). Requests are signed with SigV4 (a token's S3
//! keys: its id and secret from `wisp token s3-keys`) or carry the token
//! itself as a bearer. An admin or deploy token of a namespace reaches its
//! buckets; the node's admin token reaches `default`'s, and any
//! namespace's as `{bucket}.{namespace}`. Bodies stream to disk, never
//! whole in memory; errors are S3's XML, which its clients read.

mod chunked;
mod sigv4;
mod xml;

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::any,
};
use base64::Engine as _;
use futures_util::StreamExt as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use wisp_core::{
    objects::{Listing, ObjectError, ObjectPath, Objects, PAST_PREFIX, Staged, check_bucket},
    spec::DEFAULT_NAMESPACE,
    tenancy::{Action, Principal, s3_keys},
};

use self::{
    chunked::Chunked,
    sigv4::{STREAMING_SIGNED, STREAMING_UNSIGNED, Signed, UNSIGNED},
};
use crate::node::Node;

/// The largest object one PUT stores, as in S3; larger ones go in parts.
const MAX_PUT_BYTES: u64 = 5 << 30;
/// The largest XML document a client sends (a completion of 10,000 parts).
const MAX_XML_BYTES: usize = 2 << 20;
/// The bytes of an object read at once, and sent as one frame.
const READ_CHUNK: usize = 256 << 10;
/// The most keys a listing or a batch deletion takes, as in S3.
const MAX_KEYS: usize = 1000;

/// S3's sub-resources wisp does not implement: a request naming one is
/// answered 501 whatever its method, never taken for another operation.
const UNSUPPORTED: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "attributes",
    "cors",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "select",
    "tagging",
    "torrent",
    "versionId",
    "versioning",
    "versions",
    "website",
];

/// Keys in listings with `encoding-type=url`: all but unreserved and `/`.
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

pub(crate) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/s3", any(serve))
        .route("/s3/", any(serve))
        .route("/s3/{*rest}", any(serve))
}

/// An S3 error: its status, its code, and what was wrong.
#[derive(Debug)]
struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    fn not_implemented(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("{what} is not implemented by wisp's buckets"),
        )
    }
}

impl From<ObjectError> for S3Error {
    fn from(error: ObjectError) -> Self {
        let (status, code) = match &error {
            ObjectError::BadBucket(_) => (StatusCode::BAD_REQUEST, "InvalidBucketName"),
            ObjectError::BadKey => (StatusCode::BAD_REQUEST, "KeyTooLongError"),
            ObjectError::NoSuchBucket(_) => (StatusCode::NOT_FOUND, "NoSuchBucket"),
            ObjectError::NotEmpty(_) => (StatusCode::CONFLICT, "BucketNotEmpty"),
            ObjectError::NoSuchUpload(_) => (StatusCode::NOT_FOUND, "NoSuchUpload"),
            ObjectError::BadPart(_) => (StatusCode::BAD_REQUEST, "InvalidPart"),
            ObjectError::PartOrder => (StatusCode::BAD_REQUEST, "InvalidPartOrder"),
            ObjectError::BadPartNumber => (StatusCode::BAD_REQUEST, "InvalidArgument"),
            ObjectError::PartTooSmall(_) => (StatusCode::BAD_REQUEST, "EntityTooSmall"),
            ObjectError::Quota { .. } => (StatusCode::FORBIDDEN, "QuotaExceeded"),
            ObjectError::Backend(detail) => {
                tracing::error!("object buckets: {detail}");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "the buckets failed; see the node's log",
                );
            }
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<wisp_store::StoreError> for S3Error {
    fn from(error: wisp_store::StoreError) -> Self {
        ObjectError::Backend(error.to_string()).into()
    }
}

/// An answer with a body of XML.
fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn serve(State(node): State<Arc<Node>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().unwrap_or("").to_owned();
    match principal(&node, &parts, &query) {
        Ok((principal, verified)) => {
            respond(&node, parts, body, Access::Client(principal), verified).await
        }
        Err(error) => error_response(&parts, error),
    }
}

/// A function's request to its buckets, in-process (a path under `/s3`):
/// S3's API, with the buckets the function declares for credentials.
pub(crate) async fn for_function(
    node: &Arc<Node>,
    namespace: &str,
    name: &str,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Some(function) = node.function(namespace, name) else {
        let error = S3Error::denied(format!("function {name}.{namespace} is not deployed"));
        return error_response(&parts, error);
    };
    let access = Access::Function {
        namespace: namespace.to_owned(),
        buckets: function.spec.buckets.clone(),
    };
    respond(node, parts, body, access, None).await
}

/// Who asks.
enum Access {
    /// A client: its token's principal.
    Client(Principal),
    /// A function of the node: the buckets of its namespace it declares.
    Function {
        namespace: String,
        buckets: Vec<String>,
    },
}

/// Answers a request; `verified`, the client's signature once checked.
async fn respond(
    node: &Arc<Node>,
    parts: Parts,
    body: Body,
    access: Access,
    verified: Option<Verified>,
) -> Response {
    match handle(node, &parts, body, access, verified).await {
        Ok(response) => response,
        Err(error) => error_response(&parts, error),
    }
}

/// S3's error document for `error` (no body for a HEAD).
fn error_response(parts: &Parts, error: S3Error) -> Response {
    let request_id = hex::encode(rand::random::<[u8; 8]>());
    let mut response = xml_response(
        error.status,
        xml::error(error.code, &error.message, parts.uri.path(), &request_id),
    );
    if parts.method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

/// What a request names: a bucket (with its namespace) and a key.
struct Target {
    bucket: Option<String>,
    key: Option<String>,
}

fn target(path: &str) -> Result<Target, S3Error> {
    let rest = path.strip_prefix("/s3").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Target {
            bucket: None,
            key: None,
        });
    }
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let decode = |text: &str| {
        percent_decode_str(text)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| S3Error::bad("InvalidURI", "the path is not UTF-8"))
    };
    Ok(Target {
        bucket: Some(decode(bucket)?),
        key: (!key.is_empty()).then(|| decode(key)).transpose()?,
    })
}

/// A request whose signature was checked: the payload hash it covers,
/// and the key that signs its chunks.
struct Verified {
    payload: String,
    signer: sigv4::ChunkSigner,
}

/// The principal of a request: by its SigV4 signature, or its bearer token.
fn principal(
    node: &Node,
    parts: &Parts,
    query: &str,
) -> Result<(Principal, Option<Verified>), S3Error> {
    let signed = Signed::of(&parts.headers, query)
        .map_err(|error| S3Error::bad("AuthorizationHeaderMalformed", error.to_string()))?;
    let Some(signed) = signed else {
        let principal = crate::auth::token_principal(node, &parts.headers).ok_or_else(|| {
            S3Error::denied(
                "sign the request with a token's S3 keys (`wisp token s3-keys`), \
                 or send `Authorization: Bearer <token>`",
            )
        })?;
        return Ok((principal, None));
    };
    let admin: [u8; 32] = Sha256::digest(node.admin_token.as_bytes()).into();
    let (hash, principal) = if s3_keys(&admin).0 == signed.key_id {
        (admin, Principal::Node)
    } else {
        node.tenants.s3_key(&signed.key_id).ok_or_else(|| {
            S3Error::new(
                StatusCode::FORBIDDEN,
                "InvalidAccessKeyId",
                "the access key id is not one of the node's tokens",
            )
        })?
    };
    let now = chrono::Utc::now().timestamp();
    let signer = signed
        .verify(
            &s3_keys(&hash).1,
            &parts.method,
            parts.uri.path(),
            query,
            &parts.headers,
            now,
        )
        .map_err(|error| {
            let code = match error {
                sigv4::SignatureError::Skewed => "RequestTimeTooSkewed",
                sigv4::SignatureError::Mismatch => "SignatureDoesNotMatch",
                _ => "AccessDenied",
            };
            S3Error::new(StatusCode::FORBIDDEN, code, error.to_string())
        })?;
    Ok((
        principal,
        Some(Verified {
            payload: signed.payload,
            signer,
        }),
    ))
}

/// Where a bucket named in a path lives: `{bucket}.{namespace}`, or the
/// caller's own namespace (`default` for the node's token). The caller must
/// be allowed to manage the namespace's data.
fn scope(access: &Access, named: &str) -> Result<(String, String), S3Error> {
    let principal = match access {
        Access::Client(principal) => principal,
        Access::Function { namespace, buckets } => {
            // Declared names are DNS labels: `{bucket}.{namespace}` is none.
            if !buckets.iter().any(|bucket| bucket == named) {
                return Err(S3Error::denied(format!(
                    "bucket `{named}` is not one of the function's: declare it in `buckets`"
                )));
            }
            return Ok((named.to_owned(), namespace.clone()));
        }
    };
    let (bucket, namespace) = match named.split_once('.') {
        Some((bucket, namespace)) => (bucket, namespace),
        None => match principal {
            Principal::Tenant { namespace, .. } => (named, namespace.as_str()),
            Principal::Node => (named, DEFAULT_NAMESPACE),
        },
    };
    principal
        .allow(namespace, Action::ManageData)
        .map_err(|error| S3Error::denied(error.to_string()))?;
    Ok((bucket.to_owned(), namespace.to_owned()))
}

async fn handle(
    node: &Arc<Node>,
    parts: &Parts,
    body: Body,
    access: Access,
    verified: Option<Verified>,
) -> Result<Response, S3Error> {
    let query = parts.uri.query().unwrap_or("").to_owned();
    let objects = node.objects.clone();
    let target = target(parts.uri.path())?;
    let params = Params(sigv4::decoded_pairs(&query));
    let param = |name: &str| params.get(name);
    if let Some(option) = UNSUPPORTED.iter().find(|option| param(option).is_some()) {
        return Err(S3Error::not_implemented(&format!("?{option}")));
    }
    let Some(named) = &target.bucket else {
        if parts.method != Method::GET {
            return Err(S3Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the service takes GET only",
            ));
        }
        let (namespace, declared) = match &access {
            Access::Client(principal) => {
                let namespace = match principal {
                    Principal::Tenant { namespace, .. } => namespace.clone(),
                    Principal::Node => DEFAULT_NAMESPACE.to_owned(),
                };
                principal
                    .allow(&namespace, Action::ManageData)
                    .map_err(|error| S3Error::denied(error.to_string()))?;
                (namespace, None)
            }
            Access::Function { namespace, buckets } => (namespace.clone(), Some(buckets)),
        };
        let mut buckets = objects.buckets(&namespace).await?;
        if let Some(declared) = declared {
            buckets.retain(|bucket| declared.contains(&bucket.name));
        }
        return Ok(xml_response(
            StatusCode::OK,
            xml::buckets(&namespace, &buckets, ""),
        ));
    };
    let (bucket, namespace) = scope(&access, named)?;
    let Some(stored) = node.tenants.namespace(&namespace) else {
        return Err(S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            format!("no namespace {namespace}"),
        ));
    };
    let quota = stored.quotas.max_object_bytes.map(|bytes| bytes.0);
    let Some(key) = target.key else {
        let at = Place {
            objects: objects.as_ref(),
            namespace: &namespace,
            bucket: &bucket,
            named,
        };
        return bucket_request(node, &at, parts, body, &params, verified.as_ref()).await;
    };
    check_bucket(&bucket)?;
    let at = ObjectPath {
        namespace,
        bucket,
        key,
    };
    let upload = param("uploadId");
    match parts.method {
        Method::PUT if parts.headers.contains_key("x-amz-copy-source") => {
            Err(S3Error::not_implemented("CopyObject"))
        }
        Method::PUT if upload.is_some() != param("partNumber").is_some() => Err(S3Error::bad(
            "InvalidArgument",
            "an UploadPart names both partNumber and uploadId",
        )),
        Method::GET | Method::HEAD if upload.is_some() => {
            Err(S3Error::not_implemented("ListParts"))
        }
        Method::PUT => {
            let staged = receive(node, &parts.headers, verified, body, quota).await?;
            match (param("partNumber"), upload) {
                (Some(number), Some(upload)) => {
                    let number = number
                        .parse()
                        .map_err(|_| S3Error::bad("InvalidArgument", "partNumber is a number"))?;
                    let etag = objects.put_part(&at, upload, number, staged, quota).await?;
                    Ok(etag_response(&etag))
                }
                _ => {
                    let content_type = text_header(&parts.headers, header::CONTENT_TYPE);
                    let info = objects.put(&at, staged, content_type, quota).await?;
                    crate::events::objects::changed(node, &at, Some(&info)).await;
                    Ok(etag_response(&info.etag))
                }
            }
        }
        Method::GET | Method::HEAD => read(objects.as_ref(), &at, parts).await,
        Method::DELETE => {
            if let Some(upload) = upload {
                objects.abort_upload(&at, upload).await?;
            } else if objects.delete(&at).await? {
                crate::events::objects::changed(node, &at, None).await;
            } else if !objects.has_bucket(&at.namespace, &at.bucket).await? {
                return Err(ObjectError::NoSuchBucket(named.clone()).into());
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::POST if param("uploads").is_some() => {
            let content_type = text_header(&parts.headers, header::CONTENT_TYPE);
            let upload = objects.create_upload(&at, content_type).await?;
            Ok(xml_response(
                StatusCode::OK,
                xml::document(
                    "InitiateMultipartUploadResult",
                    &format!(
                        "{}{}{}",
                        xml::element("Bucket", named),
                        xml::element("Key", &at.key),
                        xml::element("UploadId", &upload)
                    ),
                ),
            ))
        }
        Method::POST if upload.is_some() => {
            let document = small_body(body, verified.as_ref()).await?;
            let completed = xml::completed_parts(&document)
                .map_err(|error| S3Error::bad("MalformedXML", error))?;
            let info = objects
                .complete_upload(&at, upload.expect("uploadId"), completed, quota)
                .await?;
            crate::events::objects::changed(node, &at, Some(&info)).await;
            Ok(xml_response(
                StatusCode::OK,
                xml::document(
                    "CompleteMultipartUploadResult",
                    &format!(
                        "{}{}{}",
                        xml::element("Bucket", named),
                        xml::element("Key", &at.key),
                        xml::element("ETag", &format!("\"{}\"", info.etag))
                    ),
                ),
            ))
        }
        _ => Err(S3Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not an operation on an object", parts.method),
        )),
    }
}

/// A request's query, decoded.
struct Params(Vec<(String, String)>);

impl Params {
    /// The value of `name`, if the query holds it (`""` when it has none).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A bucket of a namespace, as a request named it.
struct Place<'a> {
    objects: &'a dyn Objects,
    namespace: &'a str,
    bucket: &'a str,
    /// The bucket as the path named it (`photos`, `photos.team-a`).
    named: &'a str,
}

/// The operations on a bucket itself.
async fn bucket_request(
    node: &Arc<Node>,
    at: &Place<'_>,
    parts: &Parts,
    body: Body,
    params: &Params,
    verified: Option<&Verified>,
) -> Result<Response, S3Error> {
    let param = |name: &str| params.get(name);
    let Place {
        objects,
        namespace,
        bucket,
        named,
    } = *at;
    check_bucket(bucket)?;
    match parts.method {
        Method::PUT => {
            objects.create_bucket(namespace, bucket).await?;
            Ok(StatusCode::OK.into_response())
        }
        Method::HEAD => {
            if objects.has_bucket(namespace, bucket).await? {
                Ok(StatusCode::OK.into_response())
            } else {
                Err(ObjectError::NoSuchBucket(named.to_owned()).into())
            }
        }
        Method::DELETE => {
            objects.delete_bucket(namespace, bucket).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::GET if param("location").is_some() => {
            if !objects.has_bucket(namespace, bucket).await? {
                return Err(ObjectError::NoSuchBucket(named.to_owned()).into());
            }
            Ok(xml_response(
                StatusCode::OK,
                xml::document("LocationConstraint", ""),
            ))
        }
        Method::GET if param("uploads").is_some() => {
            Err(S3Error::not_implemented("ListMultipartUploads"))
        }
        Method::GET => list(at, params).await,
        Method::POST if param("delete").is_some() => {
            let document = small_body(body, verified).await?;
            if let Some(sent) = text_header(&parts.headers, "content-md5")
                && base64::engine::general_purpose::STANDARD.encode(md5_of(&document)) != sent
            {
                return Err(S3Error::bad(
                    "BadDigest",
                    "Content-MD5 does not match the body",
                ));
            }
            let (keys, quiet) = xml::deleted_keys(&document)
                .map_err(|error| S3Error::bad("MalformedXML", error))?;
            if keys.len() > MAX_KEYS {
                return Err(S3Error::bad(
                    "MalformedXML",
                    format!("a deletion names at most {MAX_KEYS} keys"),
                ));
            }
            let mut deleted = String::new();
            for key in keys {
                let at = ObjectPath {
                    namespace: namespace.to_owned(),
                    bucket: bucket.to_owned(),
                    key,
                };
                if objects.delete(&at).await? {
                    crate::events::objects::changed(node, &at, None).await;
                }
                if !quiet {
                    deleted += &format!("<Deleted>{}</Deleted>", xml::element("Key", &at.key));
                }
            }
            Ok(xml_response(
                StatusCode::OK,
                xml::document("DeleteResult", &deleted),
            ))
        }
        _ => Err(S3Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not an operation on a bucket", parts.method),
        )),
    }
}

/// ListObjects, version 1 or 2.
async fn list(at: &Place<'_>, params: &Params) -> Result<Response, S3Error> {
    let param = |name: &str| params.get(name);
    let max_keys = match param("max-keys") {
        Some(max) => max
            .parse::<usize>()
            .map_err(|_| S3Error::bad("InvalidArgument", "max-keys is a number"))?
            .min(MAX_KEYS),
        None => MAX_KEYS,
    };
    let v2 = param("list-type") == Some("2");
    let token = param("continuation-token");
    let start = if v2 {
        match token {
            Some(token) => hex::decode(token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    S3Error::bad(
                        "InvalidArgument",
                        "the continuation token is not the node's",
                    )
                })?,
            None => param("start-after").unwrap_or("").to_owned(),
        }
    } else {
        param("marker").unwrap_or("").to_owned()
    };
    let prefix = param("prefix").unwrap_or("");
    let delimiter = param("delimiter").filter(|delimiter| !delimiter.is_empty());
    // A marker inside a rolled-up prefix (a version 1 `NextMarker` is the
    // prefix itself) starts past the whole prefix, which was listed.
    let start = match (delimiter, start.strip_prefix(prefix)) {
        (Some(delimiter), Some(rest)) if !start.ends_with(PAST_PREFIX) => {
            match rest.find(delimiter) {
                Some(at) => format!(
                    "{}{PAST_PREFIX}",
                    &start[..prefix.len() + at + delimiter.len()]
                ),
                None => start,
            }
        }
        _ => start,
    };
    let listing = if max_keys == 0 {
        if !at.objects.has_bucket(at.namespace, at.bucket).await? {
            return Err(ObjectError::NoSuchBucket(at.named.to_owned()).into());
        }
        Listing::default()
    } else {
        at.objects
            .list(at.namespace, at.bucket, prefix, delimiter, &start, max_keys)
            .await?
    };
    let next = listing.next.clone().map(|next| {
        if v2 {
            hex::encode(next)
        } else {
            // A marker is a key: past a rolled-up prefix, the prefix itself.
            next.trim_end_matches(PAST_PREFIX).to_owned()
        }
    });
    let asked = xml::Asked {
        bucket: at.named,
        prefix,
        delimiter,
        max_keys,
        url_encoded: param("encoding-type") == Some("url"),
        v2: v2.then_some((token, param("start-after"))),
        marker: param("marker"),
    };
    Ok(xml_response(
        StatusCode::OK,
        xml::listing(&asked, &listing, next),
    ))
}

/// A key percent-encoded for a listing with `encoding-type=url`.
fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY).to_string()
}

/// GetObject and HeadObject, with a `Range` when asked.
async fn read(objects: &dyn Objects, at: &ObjectPath, parts: &Parts) -> Result<Response, S3Error> {
    // Several ranges at once are answered with the whole object, as S3 does.
    let range = text_header(&parts.headers, header::RANGE).filter(|range| !range.contains(','));
    // What the range asks is known once the size is: read from the start,
    // then again from the offset only when it is not 0.
    let Some(mut object) = objects.get(at, 0).await? else {
        return Err(missing(objects, at).await);
    };
    let info = object.info.clone();
    let etag = format!("\"{}\"", info.etag);
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(info.modified.max(0) as u64),
            ),
        )
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_TYPE,
            info.content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        );
    let matched = text_header(&parts.headers, header::IF_NONE_MATCH).is_some_and(|tags| {
        tags.split(',').any(|tag| {
            matches!(tag.trim().trim_start_matches("W/"), "*")
                || tag.trim().trim_start_matches("W/") == etag
        })
    });
    if matched {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("response"));
    }
    let (status, start, length) = match range {
        None => (StatusCode::OK, 0, info.size),
        Some(range) => {
            let (start, end) = byte_range(&range, info.size).ok_or_else(|| {
                S3Error::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    format!(
                        "the range `{range}` is not within the object's {} bytes",
                        info.size
                    ),
                )
            })?;
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", info.size),
            );
            (StatusCode::PARTIAL_CONTENT, start, end + 1 - start)
        }
    };
    response = response
        .status(status)
        .header(header::CONTENT_LENGTH, length);
    if parts.method == Method::HEAD {
        return Ok(response.body(Body::empty()).expect("response"));
    }
    if start > 0 {
        let Some(from) = objects.get(at, start).await? else {
            return Err(missing(objects, at).await);
        };
        object = from;
        if object.info.etag != info.etag {
            // Replaced between the two reads: the client asks again.
            return Err(S3Error::new(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "the object changed while it was read; read it again",
            ));
        }
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(object.body.take(length), READ_CHUNK);
    Ok(response.body(Body::from_stream(stream)).expect("response"))
}

/// Why there is no object at `at`: its bucket is missing, or only the key.
async fn missing(objects: &dyn Objects, at: &ObjectPath) -> S3Error {
    match objects.has_bucket(&at.namespace, &at.bucket).await {
        Ok(false) => ObjectError::NoSuchBucket(at.bucket.clone()).into(),
        Ok(true) => S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            format!("no object `{}`", at.key),
        ),
        Err(error) => error.into(),
    }
}

/// The first and last byte a `Range: bytes=...` header asks of an object
/// of `size` bytes, if it can be answered.
fn byte_range(range: &str, size: u64) -> Option<(u64, u64)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            (size.saturating_sub(suffix), size.checked_sub(1)?)
        }
        (first, "") => (first.parse().ok()?, size.checked_sub(1)?),
        (first, last) => (
            first.parse().ok()?,
            last.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    (start <= end && start < size).then_some((start, end))
}

/// Streams a PUT's body into a staging file, decoding `aws-chunked` and
/// checking what the signature and `Content-MD5` say of it.
async fn receive(
    node: &Node,
    headers: &HeaderMap,
    verified: Option<Verified>,
    body: Body,
    quota: Option<u64>,
) -> Result<Staged, S3Error> {
    let payload = verified
        .as_ref()
        .map_or(UNSIGNED, |verified| verified.payload.as_str())
        .to_owned();
    let encoded = text_header(headers, header::CONTENT_ENCODING)
        .is_some_and(|encoding| encoding.split(',').any(|e| e.trim() == "aws-chunked"));
    let mut decoder = match payload.as_str() {
        STREAMING_SIGNED => Some(Chunked::new(verified.map(|verified| verified.signer))),
        STREAMING_UNSIGNED => Some(Chunked::new(None)),
        other if other.starts_with("STREAMING-") => {
            return Err(S3Error::not_implemented(&format!(
                "the payload mode {other}"
            )));
        }
        _ if encoded => Some(Chunked::new(None)),
        _ => None,
    };
    let mut hash = (payload.len() == 64).then(Sha256::new);
    if hash.is_none() && decoder.is_none() && payload != UNSIGNED {
        return Err(S3Error::bad(
            "InvalidArgument",
            format!("x-amz-content-sha256 `{payload}` is not a hash or a payload mode wisp takes"),
        ));
    }
    let mut staging = wisp_store::ObjectStore::staging(&node.config.data_dir)?;
    let mut stream = body.into_data_stream();
    let mut decoded = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            S3Error::bad(
                "IncompleteBody",
                format!("the body did not arrive whole: {error}"),
            )
        })?;
        if let Some(hash) = &mut hash {
            hash.update(&chunk);
        }
        let bytes: &[u8] = match &mut decoder {
            Some(decoder) => {
                decoded.clear();
                decoder.feed(&chunk, &mut decoded).map_err(chunk_error)?;
                &decoded
            }
            None => &chunk,
        };
        staging.write(bytes).await?;
        if staging.size() > MAX_PUT_BYTES {
            return Err(S3Error::bad(
                "EntityTooLarge",
                "one PUT stores at most 5 GiB: upload larger objects in parts",
            ));
        }
        // No object passes its namespace's quota alone: stop receiving it.
        if let Some(max) = quota
            && staging.size() > max
        {
            return Err(S3Error::new(
                StatusCode::FORBIDDEN,
                "QuotaExceeded",
                format!(
                    "the body is larger than its namespace's quota (max_object_bytes) of {max} bytes"
                ),
            ));
        }
    }
    if let Some(decoder) = &decoder {
        decoder.finish().map_err(chunk_error)?;
    }
    if let Some(hash) = hash
        && hex::encode(hash.finalize()) != payload
    {
        return Err(S3Error::bad(
            "XAmzContentSHA256Mismatch",
            "the body's SHA-256 is not the one x-amz-content-sha256 signed",
        ));
    }
    let staged = staging.finish().await?;
    if let Some(sent) = text_header(headers, "content-md5")
        && base64::engine::general_purpose::STANDARD.encode(staged.md5) != sent
    {
        return Err(S3Error::bad(
            "BadDigest",
            "Content-MD5 does not match the body",
        ));
    }
    Ok(staged)
}

fn chunk_error(error: chunked::ChunkError) -> S3Error {
    match error {
        chunked::ChunkError::Signature => S3Error::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            error.to_string(),
        ),
        chunked::ChunkError::Malformed(_) => S3Error::bad("IncompleteBody", error.to_string()),
    }
}

/// A small body (an XML document), read whole, and checked against the
/// SHA-256 its signature covers, if it covers one.
async fn small_body(body: Body, verified: Option<&Verified>) -> Result<Vec<u8>, S3Error> {
    let document = axum::body::to_bytes(body, MAX_XML_BYTES)
        .await
        .map(|bytes| bytes.to_vec())
        .map_err(|_| {
            S3Error::bad(
                "MalformedXML",
                "the document is larger than 2 MiB or cut short",
            )
        })?;
    match verified.map(|verified| verified.payload.as_str()) {
        None | Some(UNSIGNED) => Ok(document),
        Some(hash) if hash.len() == 64 => {
            if hex::encode(Sha256::digest(&document)) != hash {
                return Err(S3Error::bad(
                    "XAmzContentSHA256Mismatch",
                    "the body's SHA-256 is not the one x-amz-content-sha256 signed",
                ));
            }
            Ok(document)
        }
        Some(other) => Err(S3Error::bad(
            "InvalidArgument",
            format!("x-amz-content-sha256 `{other}` is not taken for an XML document"),
        )),
    }
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(bytes).into()
}

fn text_header(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn etag_response(etag: &str) -> Response {
    let mut response = StatusCode::OK.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_s3_reads_them() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=5-1", 100), None);
        assert_eq!(byte_range("bytes=0-", 0), None);
    }

    #[test]
    fn paths_name_a_bucket_and_a_key_decoded() {
        let named = target("/s3/photos/cats/a%20b.jpg").unwrap();
        assert_eq!(named.bucket.as_deref(), Some("photos"));
        assert_eq!(named.key.as_deref(), Some("cats/a b.jpg"));
        assert!(target("/s3/photos/").unwrap().key.is_none());
        assert!(target("/s3").unwrap().bucket.is_none());
        assert!(target("/s3/b/%ff").is_err());
    }
}
