//! AWS Signature Version 4, as S3 clients sign: in the `Authorization`
//! header or in a presigned URL's query, and chunk by chunk for a body sent
//! `aws-chunked`. A key's secret is the hex SHA-256 of its wisp token,
//! which is what the node keeps of a token, so it can check a signature
//! without ever holding the token.

use axum::http::{HeaderMap, Method};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use ring::hmac;
use sha2::{Digest as _, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's time may be from the node's, as S3 allows.
const MAX_SKEW_SECONDS: i64 = 15 * 60;
/// The longest a presigned URL lives, as S3 allows.
const MAX_EXPIRES_SECONDS: i64 = 7 * 24 * 3600;

/// What RFC 3986 leaves unreserved, and SigV4 never encodes.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The payload hash of a body sent without one.
pub(super) const UNSIGNED: &str = "UNSIGNED-PAYLOAD";
/// The payload hash of a body sent `aws-chunked`, each chunk signed.
pub(super) const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
/// The payload hash of a body sent `aws-chunked`, unsigned, checksum in a trailer.
pub(super) const STREAMING_UNSIGNED: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// Why a request's signature is refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum SignatureError {
    #[error("the Authorization header is not AWS Signature Version 4: {0}")]
    Malformed(&'static str),
    #[error("the request's time is more than 15 minutes from the node's")]
    Skewed,
    #[error("the presigned URL has expired")]
    Expired,
    #[error("the signature does not match: check the secret access key")]
    Mismatch,
}

/// A request's signature, as sent: checked once its key's secret is known.
pub(super) struct Signed {
    /// The access key id.
    pub key_id: String,
    /// `YYYYMMDD/region/service/aws4_request`.
    scope: String,
    /// `YYYYMMDDTHHMMSSZ`.
    time: String,
    signed_headers: Vec<String>,
    signature: String,
    /// The payload hash the signature covers.
    pub payload: String,
    /// Whether it came in the query (a presigned URL).
    presigned: bool,
}

impl Signed {
    /// The signature of a request, if it carries one: in the
    /// `Authorization` header, or in the query of a presigned URL.
    pub(super) fn of(headers: &HeaderMap, query: &str) -> Result<Option<Self>, SignatureError> {
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            let Some(rest) = value.to_str().ok().and_then(|v| v.strip_prefix(ALGORITHM)) else {
                return Ok(None);
            };
            let mut credential = None;
            let mut signed_headers = None;
            let mut signature = None;
            for field in rest.split(',') {
                match field.trim().split_once('=') {
                    Some(("Credential", value)) => credential = Some(value),
                    Some(("SignedHeaders", value)) => signed_headers = Some(value),
                    Some(("Signature", value)) => signature = Some(value),
                    _ => {}
                }
            }
            let (key_id, scope) = credential
                .and_then(|c| c.split_once('/'))
                .ok_or(SignatureError::Malformed("no Credential"))?;
            let time =
                header(headers, "x-amz-date").ok_or(SignatureError::Malformed("no X-Amz-Date"))?;
            return Ok(Some(Self {
                key_id: key_id.to_owned(),
                scope: scope.to_owned(),
                time: time.to_owned(),
                signed_headers: signed_headers
                    .ok_or(SignatureError::Malformed("no SignedHeaders"))?
                    .split(';')
                    .map(str::to_owned)
                    .collect(),
                signature: signature
                    .ok_or(SignatureError::Malformed("no Signature"))?
                    .to_owned(),
                payload: header(headers, "x-amz-content-sha256")
                    .unwrap_or(UNSIGNED)
                    .to_owned(),
                presigned: false,
            }));
        }
        let pairs = decoded_pairs(query);
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        if get("X-Amz-Algorithm") != Some(ALGORITHM) {
            return Ok(None);
        }
        let (key_id, scope) = get("X-Amz-Credential")
            .and_then(|c| c.split_once('/'))
            .ok_or(SignatureError::Malformed("no X-Amz-Credential"))?;
        Ok(Some(Self {
            key_id: key_id.to_owned(),
            scope: scope.to_owned(),
            time: get("X-Amz-Date")
                .ok_or(SignatureError::Malformed("no X-Amz-Date"))?
                .to_owned(),
            signed_headers: get("X-Amz-SignedHeaders")
                .ok_or(SignatureError::Malformed("no X-Amz-SignedHeaders"))?
                .split(';')
                .map(str::to_owned)
                .collect(),
            signature: get("X-Amz-Signature")
                .ok_or(SignatureError::Malformed("no X-Amz-Signature"))?
                .to_owned(),
            payload: UNSIGNED.to_owned(),
            presigned: true,
        }))
    }

    /// Checks the signature with the key's `secret`, and the request's
    /// time against `now` (seconds since the Unix epoch); the key that signs the body's chunks, if it is sent so.
    pub(super) fn verify(
        &self,
        secret: &str,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<ChunkSigner, SignatureError> {
        if self.time.len() != 16 || !self.time.is_ascii() {
            return Err(SignatureError::Malformed(
                "X-Amz-Date is not YYYYMMDDTHHMMSSZ",
            ));
        }
        let time = chrono::NaiveDateTime::parse_from_str(&self.time, "%Y%m%dT%H%M%SZ")
            .map_err(|_| SignatureError::Malformed("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?
            .and_utc()
            .timestamp();
        if self.presigned {
            let expires: i64 = decoded_pairs(query)
                .iter()
                .find(|(key, _)| key == "X-Amz-Expires")
                .and_then(|(_, value)| value.parse().ok())
                .filter(|expires| (1..=MAX_EXPIRES_SECONDS).contains(expires))
                .ok_or(SignatureError::Malformed(
                    "X-Amz-Expires is not 1 to 604800",
                ))?;
            if now > time + expires {
                return Err(SignatureError::Expired);
            }
            if time - now > MAX_SKEW_SECONDS {
                return Err(SignatureError::Skewed);
            }
        } else if (now - time).abs() > MAX_SKEW_SECONDS {
            return Err(SignatureError::Skewed);
        }
        let day = self
            .time
            .get(..8)
            .filter(|day| day.bytes().all(|b| b.is_ascii_digit()));
        if !day.is_some_and(|day| self.scope.starts_with(day))
            || !self.scope.ends_with("/aws4_request")
        {
            return Err(SignatureError::Malformed("the credential's scope"));
        }
        if !self.signed_headers.iter().any(|name| name == "host") {
            return Err(SignatureError::Malformed("the host header is not signed"));
        }
        let mut canonical_headers = String::new();
        for name in &self.signed_headers {
            let values: Vec<String> = headers
                .get_all(name.as_str())
                .iter()
                .map(|value| {
                    String::from_utf8_lossy(value.as_bytes())
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        let canonical = [
            method.as_str(),
            path,
            &canonical_query(query, self.presigned),
            &canonical_headers,
            &self.signed_headers.join(";"),
            &self.payload,
        ]
        .join("\n");
        let key = signing_key(secret, &self.scope);
        let expected = sign(
            &key,
            &format!(
                "{ALGORITHM}\n{}\n{}\n{}",
                self.time,
                self.scope,
                hex::encode(Sha256::digest(canonical))
            ),
        );
        if !crate::auth::constant_time_eq(expected.as_bytes(), self.signature.as_bytes()) {
            return Err(SignatureError::Mismatch);
        }
        Ok(ChunkSigner {
            key,
            time: self.time.clone(),
            scope: self.scope.clone(),
            previous: self.signature.clone(),
        })
    }
}

/// Checks the signatures of an `aws-chunked` body's chunks, each chaining
/// on the one before, the first on the request's.
pub(super) struct ChunkSigner {
    key: hmac::Key,
    time: String,
    scope: String,
    previous: String,
}

impl ChunkSigner {
    /// Checks the signature of the next chunk, whose bytes hash to `digest`.
    pub(super) fn check_digest(
        &mut self,
        digest: &[u8; 32],
        signature: &str,
    ) -> Result<(), SignatureError> {
        let expected = sign(
            &self.key,
            &format!(
                "{ALGORITHM}-PAYLOAD\n{}\n{}\n{}\n{}\n{}",
                self.time,
                self.scope,
                self.previous,
                hex::encode(Sha256::digest(b"")),
                hex::encode(digest)
            ),
        );
        if !crate::auth::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return Err(SignatureError::Mismatch);
        }
        self.previous = expected;
        Ok(())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn signing_key(secret: &str, scope: &str) -> hmac::Key {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    hmac::Key::new(hmac::HMAC_SHA256, &key)
}

fn sign(key: &hmac::Key, text: &str) -> String {
    hex::encode(hmac::sign(key, text.as_bytes()))
}

/// The query's pairs, percent-decoded, in the order sent.
pub(super) fn decoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_decode_str(&text.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(key), decode(value))
        })
        .collect()
}

/// The query as SigV4 signs it: pairs encoded strictly and sorted; a
/// presigned URL's signature left out.
fn canonical_query(query: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = decoded_pairs(query)
        .into_iter()
        .filter(|(key, _)| !(presigned && key == "X-Amz-Signature"))
        .map(|(key, value)| {
            (
                utf8_percent_encode(&key, STRICT).to_string(),
                utf8_percent_encode(&value, STRICT).to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's documentation of SigV4 for S3: a GET of
    /// `test.txt` with a range, signed with its published example key.
    #[test]
    fn the_documented_example_verifies_and_a_changed_byte_does_not() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        headers.insert("range", "bytes=0-9".parse().unwrap());
        headers.insert(
            "x-amz-content-sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap(),
        );
        headers.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
                .parse()
                .unwrap(),
        );
        let signed = Signed::of(&headers, "").unwrap().unwrap();
        assert_eq!(signed.key_id, "AKIAIOSFODNN7EXAMPLE");
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let then = 1_369_353_600; // 2013-05-24T00:00:00Z
        let verify = |secret: &str, path: &str, now: i64| {
            signed.verify(secret, &Method::GET, path, "", &headers, now)
        };
        assert!(verify(secret, "/test.txt", then).is_ok());
        assert!(matches!(
            verify(secret, "/test.txT", then),
            Err(SignatureError::Mismatch)
        ));
        assert!(matches!(
            verify(
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEz",
                "/test.txt",
                then
            ),
            Err(SignatureError::Mismatch)
        ));
        assert!(matches!(
            verify(secret, "/test.txt", then + 16 * 60),
            Err(SignatureError::Skewed)
        ));
        // A time that is not ASCII is refused, not sliced inside a character.
        let mut odd = Signed::of(&headers, "").unwrap().unwrap();
        odd.time = "201305\u{3000}24T000000Z".to_owned();
        assert!(matches!(
            odd.verify(secret, &Method::GET, "/test.txt", "", &headers, then),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn queries_are_signed_sorted_and_strictly_encoded() {
        assert_eq!(
            canonical_query("prefix=a%2Fb&list-type=2&delimiter=%2F&uploads", false),
            "delimiter=%2F&list-type=2&prefix=a%2Fb&uploads="
        );
        assert_eq!(
            canonical_query("X-Amz-Signature=abc&X-Amz-Date=1", true),
            "X-Amz-Date=1"
        );
    }
}
