//! What the queue manager answers: the requests of `postrider queue` and the metrics
//! endpoint, and the views of the queue it returns. The queue owns these types; the control
//! socket and the metrics endpoint only carry them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    List,
    Show {
        id: String,
    },
    Shape {
        top: usize,
    },
    Flush {
        domain: Option<String>,
    },
    Hold {
        id: String,
    },
    Release {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Queue gauges for the metrics endpoint.
    Stats,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", content = "data", rename_all = "snake_case")]
pub enum Response {
    List(Vec<MessageInfo>),
    Message(MessageInfo),
    Shape(Vec<ShapeRow>),
    Done(String),
    Stats(QueueStats),
    Error { message: String },
}

impl Response {
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageInfo {
    pub id: String,
    pub size: u64,
    pub arrival: u64,
    pub sender: String,
    pub held: bool,
    pub recipients: Vec<RecipientInfo>,
    /// The header section, for `queue show` (not in listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientInfo {
    pub address: String,
    pub state: String,
    pub tries: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShapeRow {
    pub domain: String,
    pub total: u64,
    /// Counts per age bucket: < 5, 10, 20, 40, 80, 160, 320, 640, 1280 minutes, and older.
    pub buckets: Vec<u64>,
}

impl MessageInfo {
    /// What `queue list` shows of a queued message.
    pub fn of(env: &spool::Envelope, size: u64) -> Self {
        MessageInfo {
            id: env.id.to_string(),
            size,
            arrival: env.arrival,
            sender: env.sender.clone(),
            held: env.held,
            recipients: env
                .recipients
                .iter()
                .map(|r| RecipientInfo {
                    address: r.address.clone(),
                    state: r.state.to_string(),
                    tries: r.tries,
                    last_error: r.last_error.clone(),
                })
                .collect(),
            headers: None,
        }
    }
}

/// Age buckets of `queue shape`, in minutes (Postfix's qshape).
const SHAPE_BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Open recipients by domain across age buckets, the `top` biggest domains first; from the
/// daemon's queue or, with the daemon down, from the spool.
pub fn shape<'a>(envs: impl Iterator<Item = &'a spool::Envelope>, top: usize) -> Vec<ShapeRow> {
    let now = spool::unix_now();
    let mut rows: std::collections::HashMap<String, ShapeRow> = Default::default();
    for env in envs {
        let age = now.saturating_sub(env.arrival) / 60;
        let bucket = SHAPE_BUCKETS
            .iter()
            .position(|&b| age < b)
            .unwrap_or(SHAPE_BUCKETS.len());
        for r in env.recipients.iter().filter(|r| !r.state.is_final()) {
            let d = crate::schedule::rcpt_domain(&r.address);
            let row = rows.entry(d.clone()).or_insert_with(|| ShapeRow {
                domain: d,
                total: 0,
                buckets: vec![0; SHAPE_BUCKETS.len() + 1],
            });
            row.total += 1;
            row.buckets[bucket] += 1;
        }
    }
    let mut rows: Vec<ShapeRow> = rows.into_values().collect();
    rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.domain.cmp(&b.domain)));
    rows.truncate(top);
    rows
}

/// The queue gauges the manager reports at scrape time.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct QueueStats {
    pub messages: u64,
    pub recipients_open: u64,
    pub deferred_recipients: u64,
    pub held_messages: u64,
    pub domains: u64,
    pub attempts_in_flight: u64,
    /// Domains at each backoff level (index = level).
    pub backoff_levels: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        for req in [
            Request::List,
            Request::Show { id: "S1".into() },
            Request::Shape { top: 5 },
            Request::Flush { domain: None },
            Request::Flush {
                domain: Some("example.com".into()),
            },
            Request::Hold { id: "S2".into() },
            Request::Release { id: "S3".into() },
            Request::Delete { id: "S4".into() },
        ] {
            let text = serde_json::to_string(&req).unwrap();
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        }
        assert_eq!(
            serde_json::to_string(&Request::List).unwrap(),
            r#"{"cmd":"list"}"#
        );
    }

    #[test]
    fn responses_round_trip_as_json() {
        let info = MessageInfo {
            id: "S1".into(),
            size: 10,
            arrival: 1,
            sender: String::new(),
            held: false,
            recipients: vec![RecipientInfo {
                address: "a@b".into(),
                state: "deferred".into(),
                tries: 2,
                last_error: Some("451 4.3.0 x".into()),
            }],
            headers: Some("Subject: x\r\n".into()),
        };
        for resp in [
            Response::List(vec![info.clone()]),
            Response::Message(info),
            Response::Shape(vec![ShapeRow {
                domain: "d".into(),
                total: 3,
                buckets: vec![1, 2],
            }]),
            Response::Done("ok".into()),
            Response::error("no"),
        ] {
            let json = serde_json::to_string(&resp).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), resp);
        }
    }
}
