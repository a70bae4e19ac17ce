//! Local submission: mail handed over by a local user, through the submission socket
//! (`submit.rs`, used by `sendmail` while the daemon runs) or a file in `pickup/` (left by
//! `sendmail` while it does not). Both paths know the submitting uid and pass the one policy
//! here, which decides the envelope sender, the recipient, size and rate limits and the relay
//! policy, then hand the message to cleanup, as every entry path does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleanup::{CleanupError, Content, Incoming, Origin};
use config::Config;
use smtp_proto::{Domain, Mailbox};
use spool::{Envelope, Recipient};

use queue::QueueHandle;
use smtp_server::policy::{Decision, RcptDomain, RelayPolicy};

/// The cleanup stage local submissions pass, as the daemon wires it.
pub type Cleanup = cleanup::Cleanup<QueueHandle>;

/// Room for the envelope lines in front of a message of the maximum size: a sender and
/// `max_recipients` recipients of at most 256 octets (RFC 5321's path limit) and newlines.
pub fn envelope_allowance(max_recipients: usize) -> u64 {
    1024 + (max_recipients as u64 + 1) * 258
}

/// Why a submission was not taken: an SMTP-style reply, so `sendmail` and the logs speak the
/// same language as the SMTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub status: &'static str,
    pub text: String,
}

impl Refusal {
    fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Refusal {
            code,
            status,
            text: text.into(),
        }
    }

    /// A 4xx: the same submission may succeed later (rate limit, full disk).
    pub fn is_temporary(&self) -> bool {
        self.code < 500
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// What the policy decided for one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The envelope sender the message is queued with.
    pub sender: String,
    pub recipients: Vec<String>,
}

/// The local-submission policy for one configuration, built after the privilege drop (so
/// the daemon's own uid is the one it runs as).
pub struct Policy {
    hostname: String,
    cleanup: cleanup::Settings,
    trusted: HashSet<u32>,
    max_recipients: usize,
    max_message_size: u64,
    per_minute: usize,
    /// 127.0.0.1 is in `relay_networks`: a local user may relay anywhere, as a client on
    /// 127.0.0.1 may.
    relay_anywhere: bool,
    local_domains: Vec<String>,
    relay_domains: Vec<String>,
    recent: Recent,
}

/// Each uid's recent submission times, kept across configuration reloads.
type Recent = Arc<Mutex<HashMap<u32, VecDeque<Instant>>>>;

const RATE_WINDOW: Duration = Duration::from_secs(60);

impl Policy {
    #[cfg(test)]
    pub fn new(cfg: &Config, own_uid: u32) -> Result<Self, String> {
        Self::with_rate(cfg, own_uid, Recent::default())
    }

    /// `own_uid` is the daemon's uid (always trusted). An unknown name in
    /// `local.trusted_users` is an error rather than silently trusting nobody.
    fn with_rate(cfg: &Config, own_uid: u32, recent: Recent) -> Result<Self, String> {
        let mut trusted = HashSet::from([0, own_uid]);
        for name in &cfg.local.trusted_users {
            match nix::unistd::User::from_name(name) {
                Ok(Some(u)) => {
                    trusted.insert(u.uid.as_raw());
                }
                Ok(None) => return Err(format!("local.trusted_users: there is no user '{name}'")),
                Err(e) => return Err(format!("local.trusted_users: looking up '{name}': {e}")),
            }
        }
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        Ok(Policy {
            hostname: cfg.hostname.clone(),
            cleanup: cleanup::Settings::new(cfg),
            trusted,
            max_recipients: cfg.smtp.max_recipients,
            max_message_size: cfg.smtp.max_message_size,
            per_minute: cfg.local.max_submissions_per_minute,
            relay_anywhere: cfg.smtp.relay_networks.iter().any(|n| n.contains(loopback)),
            local_domains: cfg.local.domains.clone(),
            relay_domains: cfg.smtp.relay_domains.clone(),
            recent,
        })
    }

    /// The most a submission may be on the wire or on disk: envelope lines and message.
    pub fn read_limit(&self) -> u64 {
        self.max_message_size + envelope_allowance(self.max_recipients)
    }

    pub fn is_trusted(&self, uid: u32) -> bool {
        self.trusted.contains(&uid)
    }

    /// `uid` has used up its submissions for now (what `check` would answer with 451).
    pub fn over_rate(&self, uid: u32, now: Instant) -> bool {
        if self.is_trusted(uid) || self.per_minute == 0 {
            return false;
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(&uid).is_some_and(|t| {
            t.iter()
                .filter(|t| now.saturating_duration_since(**t) < RATE_WINDOW)
                .count()
                >= self.per_minute
        })
    }

    /// Decides one submission by `uid` (whose login name is `user`, `None` if the uid has
    /// no passwd entry) asking for envelope sender `sender` ("" is `<>`). Refusals come
    /// before the rate is charged, so refused submissions do not use up the user's quota.
    pub fn check(
        &self,
        uid: u32,
        user: Option<&str>,
        sender: &str,
        rcpts: &[String],
        size: u64,
        now: Instant,
    ) -> Result<Accepted, Refusal> {
        let Some(user) = user else {
            return Err(Refusal::new(
                550,
                "5.7.1",
                format!("uid {uid} has no user name; local submission refused"),
            ));
        };
        let trusted = self.is_trusted(uid);
        let sender = if trusted {
            if !sender.is_empty() {
                Mailbox::parse(sender)
                    .map_err(|e| Refusal::new(553, "5.1.7", format!("sender <{sender}>: {e}")))?;
            }
            sender.to_owned()
        } else {
            // Untrusted users cannot choose the envelope sender (postdrop's rule): bounces and
            // the receiving side's accounting go back to whoever really sent it.
            format!("{user}@{}", self.hostname)
        };
        if rcpts.is_empty() {
            return Err(Refusal::new(554, "5.5.1", "no recipients"));
        }
        if rcpts.len() > self.max_recipients {
            // 452 in SMTP lets the client send the rest in another transaction; a local
            // submission cannot be split, so it is final.
            return Err(Refusal::new(
                552,
                "5.5.3",
                format!(
                    "{} recipients is over smtp.max_recipients ({})",
                    rcpts.len(),
                    self.max_recipients
                ),
            ));
        }
        let relay = RelayPolicy {
            local_domains: &self.local_domains,
            relay_domains: &self.relay_domains,
        };
        for r in rcpts {
            let m = Mailbox::parse(r)
                .map_err(|e| Refusal::new(553, "5.1.3", format!("recipient <{r}>: {e}")))?;
            let domain = match m.domain() {
                Domain::Name(n) => RcptDomain::Name(n),
                _ => RcptDomain::Literal,
            };
            if relay.decide(m.local_part(), domain, self.relay_anywhere) == Decision::Denied {
                return Err(Refusal::new(
                    554,
                    "5.7.1",
                    format!("<{r}>: Relay access denied"),
                ));
            }
        }
        if size > self.max_message_size {
            return Err(Refusal::new(
                552,
                "5.3.4",
                format!(
                    "{size} bytes is over smtp.max_message_size ({})",
                    self.max_message_size
                ),
            ));
        }
        if !trusted && self.per_minute > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let times = recent.entry(uid).or_default();
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= RATE_WINDOW)
            {
                times.pop_front();
            }
            if times.len() >= self.per_minute {
                return Err(Refusal::new(
                    451,
                    "4.7.0",
                    format!(
                        "{user} (uid {uid}) is over local.max_submissions_per_minute ({})",
                        self.per_minute
                    ),
                ));
            }
            times.push_back(now);
            // Forget users who went quiet, so the map stays as small as the set of active users.
            recent.retain(|_, t| !t.is_empty());
        }
        Ok(Accepted {
            sender,
            recipients: rcpts.to_vec(),
        })
    }

    /// Queues an accepted submission through cleanup, which applies the content policy
    /// (`sendmail` has already turned LF line ends into CRLF; a bare CR, a NUL or an overlong
    /// line remains refused, so neither pickup nor the socket can queue what SMTP would
    /// refuse), writes the `Received:` line and commits. `via` names the path ("pickup",
    /// "sendmail") in the header and the logs.
    pub async fn enqueue(
        &self,
        cleanup: &Cleanup,
        uid: u32,
        via: &str,
        accepted: Accepted,
        msg: &[u8],
    ) -> Result<spool::TxnId, Refusal> {
        let env = Envelope {
            id: cleanup.spool().ids().next(),
            arrival: spool::unix_now(),
            smtputf8: !accepted.sender.is_ascii()
                || accepted.recipients.iter().any(|r| !r.is_ascii()),
            sender: accepted.sender,
            envid: None,
            ret: None,
            body: if msg.iter().any(|b| *b >= 0x80) {
                spool::BodyType::EightBitMime
            } else {
                spool::BodyType::SevenBit
            },
            client: format!("{via} (uid {uid})"),
            held: false,
            kind: Default::default(),
            recipients: accepted
                .recipients
                .into_iter()
                .map(|address| Recipient {
                    address,
                    ..Default::default()
                })
                .collect(),
        };
        let id = env.id;
        let incoming = Incoming {
            env,
            content: Content::Whole(msg),
            origin: Origin::Local {
                uid,
                via: via.to_owned(),
            },
            changes: None,
            owners: Vec::new(),
        };
        match cleanup.commit(&self.cleanup, incoming).await {
            Ok(_) => Ok(id),
            Err(e) => Err(refusal_of(&e)),
        }
    }
}

/// Local submission words some of cleanup's refusals its own way (`sendmail` prints them
/// to a user, who gains nothing from the SMTP-smuggling label and may need the error).
fn refusal_of(e: &CleanupError) -> Refusal {
    match e {
        CleanupError::Content(v) => {
            let (code, status) = match v {
                smtp_proto::Violation::LineTooLong => (552, "5.6.0"),
                _ => (550, "5.6.11"),
            };
            Refusal::new(code, status, format!("Message contains {}", v.describe()))
        }
        CleanupError::Spool(e) if e.is_no_space() => {
            let c = cleanup::error::NO_SPACE;
            Refusal::new(c.code, c.status, c.text)
        }
        CleanupError::Spool(e) => Refusal::new(451, "4.3.0", format!("queue write failed: {e}")),
        CleanupError::TooManyHops(_) => {
            let c = cleanup::error::TOO_MANY_HOPS;
            Refusal::new(c.code, c.status, c.text)
        }
        CleanupError::TooManyRecipients(_) => Refusal::new(552, "5.5.3", e.reply().text()),
    }
}

/// The policy for the configuration new SMTP sessions use: rebuilt when SIGHUP replaces
/// it, so local submissions follow the same limits and relay settings as SMTP clients.
pub struct Policies {
    ctx: Arc<smtp_server::Ctx>,
    own_uid: u32,
    recent: Recent,
    cached: Mutex<(Arc<Config>, Arc<Policy>)>,
}

impl Policies {
    /// Fails (so the daemon does not start) on a `local.trusted_users` name with no user.
    pub fn new(ctx: Arc<smtp_server::Ctx>, own_uid: u32) -> Result<Self, String> {
        let cfg = ctx.config();
        let recent = Recent::default();
        let policy = Arc::new(Policy::with_rate(&cfg, own_uid, recent.clone())?);
        Ok(Policies {
            ctx,
            own_uid,
            recent,
            cached: Mutex::new((cfg, policy)),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        let cfg = self.ctx.config();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&cached.0, &cfg) {
            match Policy::with_rate(&cfg, self.own_uid, self.recent.clone()) {
                Ok(p) => *cached = (cfg, Arc::new(p)),
                Err(e) => {
                    // Keep the running policy rather than trust nobody or everybody.
                    tracing::warn!("SIGHUP: {e}; local submissions keep the previous settings");
                    cached.0 = cfg;
                }
            }
        }
        cached.1.clone()
    }
}

/// The login name of `uid`, if it has one (a passwd lookup: call off the async runtime).
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(relay_loopback: bool, per_minute: usize) -> Config {
        let mut c = Config {
            hostname: "mx.example.org".into(),
            ..Default::default()
        };
        c.smtp.max_recipients = 3;
        c.smtp.max_message_size = 1000;
        c.local.domains = vec!["example.org".into()];
        c.smtp.relay_domains = vec!["partner.test".into()];
        if !relay_loopback {
            c.smtp.relay_networks = vec!["192.0.2.0/24".parse().unwrap()];
        }
        c.local.max_submissions_per_minute = per_minute;
        c
    }

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const USER: u32 = 4242;

    #[test]
    fn untrusted_sender_is_the_user_and_trusted_may_choose() {
        let p = Policy::new(&cfg(true, 0), 999).unwrap();
        let now = Instant::now();
        let a = p
            .check(
                USER,
                Some("alice"),
                "ceo@bank.test",
                &v(&["x@victim.test"]),
                10,
                now,
            )
            .unwrap();
        assert_eq!(a.sender, "alice@mx.example.org");
        let a = p.check(USER, Some("alice"), "", &v(&["x@example.org"]), 10, now);
        assert_eq!(a.unwrap().sender, "alice@mx.example.org", "no <> either");
        for uid in [0, 999] {
            let a = p.check(
                uid,
                Some("root"),
                "ceo@bank.test",
                &v(&["x@victim.test"]),
                10,
                now,
            );
            assert_eq!(a.unwrap().sender, "ceo@bank.test");
            let a = p.check(uid, Some("root"), "", &v(&["x@victim.test"]), 10, now);
            assert_eq!(a.unwrap().sender, "");
        }
        assert_eq!(
            p.check(0, Some("root"), "a b@c", &v(&["x@example.org"]), 10, now)
                .unwrap_err()
                .code,
            553
        );
        assert_eq!(
            p.check(USER, None, "", &v(&["x@example.org"]), 10, now)
                .unwrap_err()
                .code,
            550
        );
    }

    #[test]
    fn limits_and_relay_follow_the_loopback_client() {
        let now = Instant::now();
        let closed = Policy::new(&cfg(false, 0), 999).unwrap();
        let open = Policy::new(&cfg(true, 0), 999).unwrap();
        let r = closed.check(USER, Some("a"), "", &v(&["x@victim.test"]), 10, now);
        assert_eq!(r.unwrap_err().status, "5.7.1");
        let r = closed.check(0, Some("root"), "", &v(&["x@victim.test"]), 10, now);
        assert_eq!(r.unwrap_err().status, "5.7.1", "root gets no relay either");
        for ok in ["x@example.org", "x@partner.test", "X@Example.ORG."] {
            assert!(
                closed
                    .check(USER, Some("a"), "", &v(&[ok]), 10, now)
                    .is_ok(),
                "{ok}"
            );
        }
        for trick in ["x%victim.test@example.org", "x@[192.0.2.1]"] {
            assert!(
                closed
                    .check(USER, Some("a"), "", &v(&[trick]), 10, now)
                    .is_err(),
                "{trick}"
            );
        }
        assert!(
            open.check(USER, Some("a"), "", &v(&["x@victim.test"]), 10, now)
                .is_ok()
        );
        let four = v(&[
            "a@example.org",
            "b@example.org",
            "c@example.org",
            "d@example.org",
        ]);
        let r = open.check(USER, Some("a"), "", &four, 10, now).unwrap_err();
        assert_eq!((r.code, r.status), (552, "5.5.3"));
        assert!(
            open.check(USER, Some("a"), "", &four[..3], 1000, now)
                .is_ok()
        );
        let r = open
            .check(USER, Some("a"), "", &four[..1], 1001, now)
            .unwrap_err();
        assert_eq!((r.code, r.status), (552, "5.3.4"));
        assert_eq!(
            open.check(USER, Some("a"), "", &[], 1, now)
                .unwrap_err()
                .code,
            554
        );
        assert!(
            open.check(USER, Some("a"), "", &v(&["not an address"]), 1, now)
                .is_err()
        );
    }

    #[test]
    fn cleanup_refusals_keep_the_local_wording() {
        use smtp_proto::Violation;
        let cases = [
            (
                CleanupError::Content(Violation::BareLf),
                "550 5.6.11 Message contains bare <LF>",
            ),
            (
                CleanupError::Content(Violation::Nul),
                "550 5.6.11 Message contains NUL octet",
            ),
            (
                CleanupError::Content(Violation::LineTooLong),
                "552 5.6.0 Message contains line longer than 1000 octets",
            ),
            (
                CleanupError::Spool(spool::SpoolError::Write {
                    no_space: true,
                    message: "full".into(),
                }),
                "452 4.3.1 Insufficient system storage",
            ),
            (
                CleanupError::Spool(spool::SpoolError::Closed),
                "451 4.3.0 queue write failed: the spool is shut down",
            ),
            (
                CleanupError::TooManyHops(50),
                "554 5.4.6 Too many hops: mail loop detected",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(refusal_of(&e).to_string(), want);
        }
    }

    #[test]
    fn rate_is_per_uid_per_minute_and_spares_trusted_users() {
        let p = Policy::new(&cfg(true, 2), 999).unwrap();
        let t0 = Instant::now();
        let r = v(&["x@example.org"]);
        let go = |uid: u32, at: Instant| p.check(uid, Some("u"), "", &r, 1, at);
        assert!(go(USER, t0).is_ok());
        assert!(go(USER, t0 + Duration::from_secs(1)).is_ok());
        let e = go(USER, t0 + Duration::from_secs(2)).unwrap_err();
        assert!(
            e.is_temporary() && e.text.contains("max_submissions_per_minute"),
            "{e}"
        );
        assert!(
            go(USER + 1, t0 + Duration::from_secs(2)).is_ok(),
            "another uid"
        );
        for _ in 0..10 {
            assert!(go(0, t0).is_ok(), "root is not limited");
        }
        // Refused submissions do not count; the window slides.
        assert!(go(USER, t0 + Duration::from_secs(60)).is_ok());
        assert!(go(USER, t0 + Duration::from_secs(60)).is_err());
        assert!(go(USER, t0 + Duration::from_secs(61)).is_ok());
    }
}
