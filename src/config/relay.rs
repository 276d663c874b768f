//! The `[relay]` section: the queue between verified deliveries and the Kubernetes API.

use super::{duration, duration_or_off, Problems};
use crate::relay::QueueSettings;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    queue_dir: Option<PathBuf>,
    wait: Option<String>,
    max_in_flight: Option<usize>,
    min_interval: Option<String>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    max_age: Option<String>,
    max_attempts: Option<u32>,
    events: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Where the durable queue lives; `None` keeps jobs in memory only.
    pub queue_dir: Option<PathBuf>,
    /// How long a delivery waits for its patches before it is answered 202.
    pub wait: Duration,
    pub queue: QueueSettings,
    /// Write a Kubernetes Event on each patched object saying which delivery asked for it.
    pub events: bool,
}

pub(super) fn relay(raw: RawRelay, p: &mut Problems) -> RelaySettings {
    let d = |key: &str, v: &Option<String>, default: Duration, p: &mut Problems| {
        duration(&format!("relay.{key}"), v.as_deref(), default, p)
    };
    let max_in_flight = raw.max_in_flight.unwrap_or(4);
    if max_in_flight == 0 {
        p.add("relay.max_in_flight", "must be at least 1");
    }
    let backoff_base = d(
        "backoff_base",
        &raw.backoff_base,
        Duration::from_millis(200),
        p,
    );
    let backoff_max = d("backoff_max", &raw.backoff_max, Duration::from_secs(5), p);
    if backoff_max < backoff_base {
        p.add(
            "relay.backoff_max",
            "must not be less than relay.backoff_base",
        );
    }
    RelaySettings {
        events: raw.events.unwrap_or(false),
        queue_dir: raw.queue_dir,
        // Zero answers 202 as soon as the delivery is queued.
        wait: duration_or_off("relay.wait", raw.wait.as_deref(), Duration::from_secs(2), p),
        queue: QueueSettings {
            max_in_flight: max_in_flight.max(1),
            min_interval: d("min_interval", &raw.min_interval, Duration::from_secs(1), p),
            backoff_base,
            backoff_max,
            max_age: d("max_age", &raw.max_age, Duration::from_secs(3600), p),
            max_attempts: raw.max_attempts.unwrap_or(0),
        },
    }
}
