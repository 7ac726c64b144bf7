//! Events: the triggers a function declares ([`Trigger`], [`Schedule`]), the
//! states of an async call ([`CallState`]) and the API's view of one
//! ([`CallInfo`]).

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{HumanDuration, SpecError};

/// The shortest `@every` interval: shorter ones would flood the queue.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// A trigger as written in `wisp.toml` and the API: one key naming its source,
/// such as `{ cron = "*/5 * * * *" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDeclaration {
    /// A cron schedule: five fields (an optional sixth, first, for seconds),
    /// a nickname such as `@hourly`, or `@every 30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
}

/// A validated trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TriggerDeclaration", into = "TriggerDeclaration")]
pub enum Trigger {
    /// Fires on a schedule.
    Cron(Schedule),
}

impl Trigger {
    /// How `wisp describe` and errors name the trigger: `cron "*/5 * * * *"`.
    pub fn label(&self) -> String {
        match self {
            Self::Cron(schedule) => format!("cron \"{schedule}\""),
        }
    }
}

impl TryFrom<TriggerDeclaration> for Trigger {
    type Error = SpecError;

    fn try_from(declaration: TriggerDeclaration) -> Result<Self, SpecError> {
        match declaration {
            TriggerDeclaration {
                cron: Some(schedule),
            } => Ok(Self::Cron(schedule.parse()?)),
            TriggerDeclaration { cron: None } => Err(SpecError::Trigger(
                "a trigger needs a source, such as `{ cron = \"*/5 * * * *\" }`".into(),
            )),
        }
    }
}

impl From<Trigger> for TriggerDeclaration {
    fn from(trigger: Trigger) -> Self {
        match trigger {
            Trigger::Cron(schedule) => Self {
                cron: Some(schedule.to_string()),
            },
        }
    }
}

/// When a cron trigger fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A cron expression, evaluated in UTC.
    Cron {
        /// As written.
        text: String,
        /// Parsed.
        cron: Box<croner::Cron>,
    },
    /// `@every 30s`: a fixed interval.
    Every(HumanDuration),
}

impl Schedule {
    /// The first firing strictly after `time`.
    pub fn next_after(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, .. } => cron.find_next_occurrence(&time, false).ok(),
            Self::Every(interval) => {
                // Firings are aligned to multiples of the interval since the
                // epoch, so a restart keeps the same beat.
                let step = interval.0.as_millis() as i64;
                let now = time.timestamp_millis();
                let next = (now.div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(next)
            }
        }
    }
}

impl Schedule {
    /// The latest firing at or before `time`: the one a node that was down
    /// at that time has missed most recently.
    pub fn latest_at_or_before(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, .. } => cron.find_previous_occurrence(&time, true).ok(),
            Self::Every(interval) => {
                let step = interval.0.as_millis() as i64;
                DateTime::from_timestamp_millis(time.timestamp_millis().div_euclid(step) * step)
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let invalid = |why: String| SpecError::Trigger(format!("trigger cron \"{text}\": {why}"));
        if let Some(interval) = text.trim().strip_prefix("@every") {
            let interval: HumanDuration = interval
                .trim()
                .parse()
                .map_err(|error| invalid(format!("{error}")))?;
            if interval.0 < MIN_EVERY {
                return Err(invalid(format!(
                    "the interval must be at least {}",
                    HumanDuration(MIN_EVERY)
                )));
            }
            return Ok(Self::Every(interval));
        }
        let cron: croner::Cron = text.parse().map_err(|error: croner::errors::CronError| {
            invalid(format!(
                "{error} (use five fields: minute hour day-of-month month day-of-week)"
            ))
        })?;
        Ok(Self::Cron {
            text: text.to_owned(),
            cron: Box::new(cron),
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cron { text, .. } => f.write_str(text),
            Self::Every(interval) => write!(f, "@every {interval}"),
        }
    }
}

/// Where an async call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Waiting for a worker, or for its next attempt.
    Queued,
    /// A worker runs it now.
    Running,
    /// The function answered 1xx to 3xx.
    Succeeded,
    /// The function answered 4xx: retrying would not help.
    Failed,
    /// Every attempt failed (5xx, timeout or crash): a dead letter.
    Dead,
}

impl CallState {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    /// Every state, in order of a call's life.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Dead,
    ];

    /// Whether the call is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Dead)
    }
}

impl fmt::Display for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                format!("unknown call status `{text}` (queued, running, succeeded, failed, dead)")
            })
    }
}

/// An async call: `GET /system/calls/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    /// The call id, as answered in `X-Call-Id`.
    pub id: String,
    /// The function.
    pub function: String,
    /// Its namespace.
    pub namespace: String,
    /// Where the call is.
    pub status: CallState,
    /// Attempts started so far.
    pub attempts: u32,
    /// What fired it: `http`, or the trigger such as `cron "@every 1m"`.
    pub source: String,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When its latest attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When its next attempt is due, while it waits for a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The function's response to the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CallResult>,
    /// Where the result is POSTed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// `pending`, `delivered` or `failed`, when there is a callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_status: Option<String>,
}

/// A function's response to an async call, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult {
    /// The HTTP status.
    pub status: u16,
    /// Its headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Its body as text (lossy UTF-8), cut at the node's limit.
    pub body: String,
    /// Whether the body was cut.
    #[serde(default)]
    pub truncated: bool,
}

/// `GET /system/calls`: the newest calls first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallList {
    /// The calls.
    pub calls: Vec<CallInfo>,
}

/// What a function's trigger is doing, in its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// The trigger, such as `cron "@every 1m"`.
    pub trigger: String,
    /// `scheduled` for a cron trigger.
    pub state: String,
    /// When it last fired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<String>,
    /// When it fires next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_firing_at: Option<String>,
}

/// The queue's counters, in `GET /system/info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    /// Calls waiting for a worker or for a retry.
    pub depth: u64,
    /// Calls running now.
    pub running: u64,
    /// Calls in the dead-letter list.
    pub dead: u64,
    /// Calls accepted since the node started.
    pub enqueued: u64,
    /// Attempts started since the node started.
    pub attempts: u64,
    /// Attempts that will be retried.
    pub retries: u64,
    /// Calls found running at start-up and run again (at-least-once).
    pub redelivered: u64,
    /// Callbacks delivered.
    pub callbacks_delivered: u64,
    /// Callbacks given up on.
    pub callbacks_failed: u64,
    /// Trigger firings since the node started.
    pub trigger_firings: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn cron_schedules_fire_on_their_fields() {
        let schedule: Schedule = "*/5 * * * *".parse().unwrap();
        assert_eq!(
            schedule.next_after(at("2026-01-01T10:02:30Z")),
            Some(at("2026-01-01T10:05:00Z"))
        );
        let daily: Schedule = "@daily".parse().unwrap();
        assert_eq!(
            daily.next_after(at("2026-01-01T10:02:30Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-01-01T10:02:30Z")),
            Some(at("2026-01-01T10:00:00Z"))
        );
    }

    #[test]
    fn every_keeps_a_beat_aligned_to_its_interval() {
        let schedule: Schedule = "@every 30s".parse().unwrap();
        assert_eq!(schedule.to_string(), "@every 30s");
        assert_eq!(
            schedule.next_after(at("2026-01-01T10:00:31Z")),
            Some(at("2026-01-01T10:01:00Z"))
        );
        assert_eq!(
            schedule.next_after(at("2026-01-01T10:01:00Z")),
            Some(at("2026-01-01T10:01:30Z"))
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-01-01T10:01:10Z")),
            Some(at("2026-01-01T10:01:00Z"))
        );
    }

    #[test]
    fn bad_schedules_name_the_trigger() {
        for (text, expected) in [
            ("*/5 * * *", "trigger cron \"*/5 * * *\""),
            ("61 * * * *", "trigger cron \"61 * * * *\""),
            ("@every soon", "not a valid duration"),
            ("@every 10ms", "at least 1s"),
        ] {
            let error = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "`{error}` should mention `{expected}`"
            );
        }
    }

    #[test]
    fn triggers_round_trip_as_declared() {
        let trigger: Trigger = serde_json::from_str(r#"{"cron": "@every 1m"}"#).unwrap();
        assert_eq!(trigger.label(), "cron \"@every 1m\"");
        assert_eq!(
            serde_json::to_string(&trigger).unwrap(),
            r#"{"cron":"@every 1m"}"#
        );
        assert!(serde_json::from_str::<Trigger>("{}").is_err());
        assert!(serde_json::from_str::<Trigger>(r#"{"kafka": "x"}"#).is_err());
    }
}
