//! What the node records about calls, in the shapes the API serves and the
//! CLI and web UI read: log lines, call records (the spans of a trace and the
//! meter readings of a bill), usage totals, and the W3C `traceparent` header.

use serde::{Deserialize, Serialize};

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The function's STDOUT.
    Stdout,
    /// The function's STDERR.
    Stderr,
    /// wisp's own line for a call: status, duration, memory.
    Wisp,
}

impl LogStream {
    /// The name stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Wisp => "wisp",
        }
    }

    /// The stream with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            "wisp" => Some(Self::Wisp),
            _ => None,
        }
    }
}

/// One stored log line, as `GET /system/logs` streams it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Its position in the log: later lines have larger ids.
    pub id: i64,
    /// When it was written (RFC 3339, UTC).
    pub time: String,
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// The call it belongs to; none for an HTTP app's own output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// Where it came from.
    pub stream: LogStream,
    /// The line, without its newline.
    pub message: String,
}

/// How a call reached its function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallSource {
    /// A synchronous HTTP request.
    Http,
    /// An async call or a trigger's event, run from the queue.
    Queue,
}

/// One finished call: a span of its trace and a reading of the meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// The call id (`X-Call-Id`); an async call's retries share it.
    pub call_id: String,
    /// The W3C trace id, 32 hex digits.
    pub trace_id: String,
    /// This call's span id, 16 hex digits.
    pub span_id: String,
    /// The span that made this call, if it came with a `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// How the call came in.
    pub source: CallSource,
    /// When it started (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    /// Wall time, in milliseconds.
    pub duration_ms: f64,
    /// The HTTP status it answered with.
    pub status: u16,
    /// Why it failed, if wisp saw it fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The function's memory limit, in bytes: what GB-seconds are billed on.
    pub memory_limit: u64,
    /// The most memory the call used, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<u64>,
    /// CPU time, in milliseconds, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
}

/// Whether a call that answered `status` counts as failed: a 5xx, or a 429
/// it was refused with. A 4xx is the caller's mistake, not the function's.
pub fn is_failure(status: u16) -> bool {
    status >= 500 || status == 429
}

/// A call in a trace, with the last line it wrote to STDERR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracedCall {
    /// The call.
    #[serde(flatten)]
    pub record: CallRecord,
    /// The last STDERR line of a failed call, the usual first clue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stderr: Option<String>,
}

/// Every call of one trace, as `GET /system/traces/{call_id}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// The trace id.
    pub trace_id: String,
    /// Its calls, in the order they started.
    pub calls: Vec<TracedCall>,
}

/// One function's totals, as `GET /system/usage` answers: what a bill is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// Calls.
    pub invocations: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Total wall time, in seconds.
    pub seconds: f64,
    /// Wall time times the memory limit, in GB-seconds (1 GB = 2^30 bytes, as Lambda bills).
    pub gb_seconds: f64,
    /// Total CPU time, in seconds, of the calls where it was measured.
    pub cpu_seconds: f64,
}

/// A W3C Trace Context `traceparent`: `00-{trace id}-{parent id}-{flags}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (not all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (not all zero).
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value; `None` when it is not valid, so the
    /// gateway starts a new trace instead (as the specification asks).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may add more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        u8::from_str_radix(version, 16).ok()?;
        let trace_id: [u8; 16] = decode_hex(trace_id)?;
        let parent_id: [u8; 8] = decode_hex(parent_id)?;
        let [flags] = decode_hex::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The header value. Written into a buffer rather than formatted: every
    /// call writes one.
    pub fn header(&self) -> [u8; 55] {
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let hex = |bytes: &[u8], into: &mut [u8]| {
            hex::encode_to_slice(bytes, into).expect("the buffer fits");
        };
        hex(&self.trace_id, &mut value[3..35]);
        hex(&self.parent_id, &mut value[36..52]);
        hex(&[self.flags], &mut value[53..55]);
        value
    }
}

/// The trace a call starts when it joins none, for a call id as wisp makes
/// them (a lowercase, hyphenated UUID): its 16 bytes. The trace id of such a
/// call is then its call id without the hyphens, and the call log finds a
/// trace's first call by its call id ([`call_of_trace`]).
pub fn trace_of_call(call_id: &str) -> Option<[u8; 16]> {
    let bytes = call_id.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&at| bytes[at] != b'-') {
        return None;
    }
    let mut digits = [0u8; 32];
    for (digit, byte) in digits
        .iter_mut()
        .zip(bytes.iter().filter(|&&byte| byte != b'-'))
    {
        *digit = *byte;
    }
    let trace: [u8; 16] = decode_hex(std::str::from_utf8(&digits).ok()?)?;
    (trace != [0; 16]).then_some(trace)
}

/// The call id whose trace [`trace_of_call`] makes `trace_id`.
pub fn call_of_trace(trace_id: &[u8; 16]) -> String {
    let digits = hex::encode(trace_id);
    format!(
        "{}-{}-{}-{}-{}",
        &digits[..8],
        &digits[8..12],
        &digits[12..16],
        &digits[16..20],
        &digits[20..]
    )
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    // The specification allows lowercase digits only.
    if !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(value).unwrap();
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.header(), value.as_bytes());
    }

    #[test]
    fn a_call_id_made_by_wisp_is_the_trace_it_starts() {
        let call = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736";
        let trace = trace_of_call(call).unwrap();
        assert_eq!(hex::encode(trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(call_of_trace(&trace), call);
        for other in [
            "4BF92F35-77B3-4DA6-A3CE-929D0E0E4736",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00000000-0000-0000-0000-000000000000",
            "my-own-call-id",
        ] {
            assert_eq!(trace_of_call(other), None, "{other}");
        }
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }
}
