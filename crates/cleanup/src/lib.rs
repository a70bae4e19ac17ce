//! The cleanup stage every message passes before it is queued, whatever its entry (an SMTP
//! session, the local submission socket, pickup/, the queue's own DSNs): the content policy for content handed
//! over whole, our `Received:` line, the hop count, the milters' edits applied byte for
//! byte, copies for lists with owners, the durable commit, and the news to the queue. As in
//! Postfix, the entry paths keep only their own decisions (protocol, relay, sender binding,
//! rate) and share this one stage, so none of them can queue what another would refuse.
//! It knows nothing of the queue manager but the [`Arrivals`] trait, so the queue uses it
//! for its own messages (DSNs) without a dependency cycle.

pub mod counters;
mod edit;
pub mod error;
mod lists;
#[cfg(test)]
mod tests;

pub use counters::Counters;
pub use error::{Canned, CleanupError, discarded_reply, spool_error_reply};

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use config::Config;
use message::{HeaderScan, Trace};
use smtp_proto::Reply;
use spool::{ContentWriter, Envelope, MessageRef, Spool, SpoolError, TxnId};
use tracing::{info, warn};

/// Whoever acts on newly queued mail (the queue manager). Told only after the commit, so
/// what it hears of is durable.
pub trait Arrivals: Send + Sync {
    fn arrived(
        &self,
        env: Envelope,
        mref: MessageRef,
        size: u64,
    ) -> impl Future<Output = ()> + Send;
}

/// What cleanup takes from the configuration, fixed per message: sessions keep the
/// configuration they started with, local submission the one its policy was built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Named in our `Received:` line.
    pub hostname: String,
    /// `smtp.max_hops`: this many `Received:` fields or more is a loop.
    pub max_hops: usize,
}

impl Settings {
    pub fn new(cfg: &Config) -> Self {
        Settings {
            hostname: cfg.hostname.clone(),
            max_hops: cfg.smtp.max_hops,
        }
    }
}

/// How a message came in: what our `Received:` line and the logs say about it.
#[derive(Debug, Clone)]
pub enum Origin {
    Smtp(SmtpTrace),
    /// A local user's submission; `via` names the path ("sendmail", "pickup").
    Local {
        uid: u32,
        via: String,
    },
    /// A delivery status notification the queue composed about `original`.
    Dsn {
        original: TxnId,
    },
}

/// What an SMTP session knows of its client, for the trace line.
#[derive(Debug, Clone)]
pub struct SmtpTrace {
    pub helo: Option<String>,
    pub client_ip: IpAddr,
    pub esmtp: bool,
    /// TLS version and cipher suite.
    pub tls: Option<(String, String)>,
}

/// The message's content as the entry hands it over.
pub enum Content<'a> {
    /// Streamed into the spool as it arrived, our trace line first (see
    /// [`Cleanup::open`]), already through the content policy and the hop-count scan while
    /// it streamed: SMTP refuses a bad BDAT chunk as it comes. `hops` is the number of
    /// `Received:` fields the client sent.
    Spooled { writer: ContentWriter, hops: usize },
    /// A whole message handed over at once (local submission): cleanup checks it, puts our
    /// trace line in front and writes it to the spool.
    Whole(&'a [u8]),
}

/// One message for cleanup.
pub struct Incoming<'a> {
    /// The envelope as the entry accepted it; for [`Content::Whole`], `env.id` names the
    /// queue id to write it under.
    pub env: Envelope,
    pub content: Content<'a>,
    pub origin: Origin,
    /// What the milters asked for at end of message.
    pub changes: Option<milter::Changes>,
    /// For recipients from a list with an `owner-` alias: (recipient address, owner), the
    /// envelope sender of their copy, so bounces for the list go to its owner.
    pub owners: Vec<(String, String)>,
}

/// What became of a message cleanup took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Durable and handed to the queue: the original first (unless every recipient went
    /// to a list copy), then the list copies.
    Queued(Vec<TxnId>),
    /// Acknowledged and dropped (a milter removed every recipient).
    Discarded(TxnId),
}

impl Accepted {
    /// `250 2.0.0 Ok: queued as ID…` or `250 2.0.0 Ok: discarded as ID`.
    pub fn reply(&self) -> Reply {
        match self {
            Accepted::Queued(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                Reply::new(
                    250,
                    "2.0.0".parse().ok(),
                    &format!("Ok: queued as {}", ids.join(" ")),
                )
            }
            Accepted::Discarded(id) => discarded_reply(*id),
        }
    }
}

/// The cleanup stage: shared by every entry path (it holds handles only).
pub struct Cleanup<A> {
    spool: Spool,
    arrivals: A,
    counters: Arc<Counters>,
}

impl<A: Arrivals> Cleanup<A> {
    pub fn new(spool: Spool, arrivals: A, counters: Arc<Counters>) -> Self {
        Cleanup {
            spool,
            arrivals,
            counters,
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Opens the content of a message that will stream in, with our trace line already
    /// written, so the bytes that follow need never be copied to put it in front. A failed
    /// write is returned beside the writer: the entry still has to read what the client
    /// sends before it can answer.
    pub async fn open(
        &self,
        cfg: &Settings,
        origin: &Origin,
        id: TxnId,
        single_recipient: Option<&str>,
    ) -> (ContentWriter, Result<(), SpoolError>) {
        let mut w = self.spool.content_writer(id);
        let trace = trace_header(&cfg.hostname, origin, id, single_recipient);
        let r = w.write(trace.as_bytes()).await;
        (w, r)
    }

    /// Takes one message through cleanup to the queue. `Ok` is the reply's outcome; the
    /// message is durable once `Accepted::Queued` is returned.
    pub async fn commit(
        &self,
        cfg: &Settings,
        msg: Incoming<'_>,
    ) -> Result<Accepted, CleanupError> {
        let Incoming {
            mut env,
            content,
            origin,
            changes,
            owners,
        } = msg;
        let mut content = match content {
            Content::Spooled { writer, hops } => {
                check_hops(env.id, hops, cfg.max_hops)?;
                writer
            }
            Content::Whole(bytes) => self.write_whole(cfg, &env, &origin, bytes).await?,
        };
        if let Some(changes) = &changes {
            if edit::apply_envelope(&mut env, changes)? == edit::Left::Nobody {
                return Ok(Accepted::Discarded(env.id));
            }
            if changes.rewrites_content() {
                content = edit::rewrite(&self.spool, content, changes).await?;
            }
        }
        let mut ids = Vec::new();
        if !owners.is_empty() {
            let copies = lists::split(&mut env, &owners);
            for copy in copies {
                ids.push(self.list_copy(&env, copy, &mut content).await?);
            }
            if env.recipients.is_empty() {
                return Ok(Accepted::Queued(ids));
            }
        }
        let size = content.len();
        let mref = match self.spool.commit(&env, content).await {
            Ok(m) => m,
            Err(e) => {
                warn!(queue_id = %env.id, "spool commit failed: {e}");
                return Err(e.into());
            }
        };
        match &origin {
            Origin::Smtp(_) => info!(
                queue_id = %env.id,
                client = %env.client,
                from = %env.sender,
                size,
                nrcpt = env.recipients.len(),
                "received"
            ),
            Origin::Local { uid, via } => info!(
                queue_id = %env.id,
                from = %env.sender,
                size,
                nrcpt = env.recipients.len(),
                uid,
                via,
                "received by local submission"
            ),
            // The queue manager logs the report it queued ("sender notified").
            Origin::Dsn { original } => tracing::debug!(
                queue_id = %env.id,
                %original,
                size,
                "DSN committed"
            ),
        }
        let id = env.id;
        counters::inc(&self.counters.received);
        self.arrivals.arrived(env, mref, size).await;
        ids.insert(0, id);
        Ok(Accepted::Queued(ids))
    }

    /// The content policy and the hop count for a message handed over whole, then our
    /// trace line and the message into the spool.
    async fn write_whole(
        &self,
        cfg: &Settings,
        env: &Envelope,
        origin: &Origin,
        bytes: &[u8],
    ) -> Result<ContentWriter, CleanupError> {
        if let Err(v) = smtp_proto::check_content(bytes, false) {
            match origin {
                Origin::Local { uid, via } => warn!(
                    uid,
                    via,
                    "local submission refused: message contains {}",
                    v.describe()
                ),
                Origin::Smtp(_) | Origin::Dsn { .. } => {
                    warn!(queue_id = %env.id, "message refused: {}", v.describe())
                }
            }
            return Err(CleanupError::Content(v));
        }
        let mut scan = HeaderScan::new();
        scan.feed(bytes);
        check_hops(env.id, scan.received, cfg.max_hops)?;
        let single = match env.recipients.as_slice() {
            [r] => Some(r.address.as_str()),
            _ => None,
        };
        let (mut w, r) = self.open(cfg, origin, env.id, single).await;
        r?;
        w.write(bytes).await?;
        Ok(w)
    }

    /// Commits one list's copy of the message, with the list's owner as envelope sender.
    async fn list_copy(
        &self,
        original: &Envelope,
        copy: lists::Copy,
        content: &mut ContentWriter,
    ) -> Result<TxnId, SpoolError> {
        let id = self.spool.ids().next();
        let mut w = self.spool.content_writer(id);
        w.write_from(&mut content.read_back()?).await?;
        let size = w.len();
        let env = Envelope {
            id,
            sender: copy.owner,
            recipients: copy.recipients,
            ..original.clone()
        };
        let mref = self.spool.commit(&env, w).await?;
        info!(queue_id = %id, original = %original.id, from = %env.sender, size, nrcpt = env.recipients.len(), "received (list copy for its owner)");
        counters::inc(&self.counters.received);
        self.arrivals.arrived(env, mref, size).await;
        Ok(id)
    }
}

/// The loop check: as many `Received:` fields as `max_hops` or more means the message has
/// been here, or around, too often. Entries that run other stages first (the milters'
/// end of message) call it before them, so a looping message costs no milter time.
pub fn check_hops(id: TxnId, hops: usize, max_hops: usize) -> Result<(), CleanupError> {
    if hops >= max_hops {
        warn!(queue_id = %id, hops, "mail loop: too many Received headers");
        return Err(CleanupError::TooManyHops(hops));
    }
    Ok(())
}

/// Our `Received:` line for a message that came in by `origin`, CRLF-terminated.
pub fn trace_header(
    hostname: &str,
    origin: &Origin,
    id: TxnId,
    single_recipient: Option<&str>,
) -> String {
    let now = SystemTime::now();
    match origin {
        Origin::Smtp(t) => {
            let protocol = match (t.esmtp, t.tls.is_some()) {
                (true, true) => "ESMTPS",
                (true, false) => "ESMTP",
                (false, true) => "SMTPS",
                (false, false) => "SMTP",
            };
            let id = id.to_string();
            message::received(&Trace {
                helo: t.helo.as_deref().unwrap_or("unknown"),
                client_ip: t.client_ip,
                hostname,
                protocol,
                tls: t.tls.as_ref().map(|(v, c)| (v.as_str(), c.as_str())),
                queue_id: &id,
                single_recipient,
                when: now,
            })
        }
        Origin::Local { uid, via } => format!(
            "Received: by {hostname} (postrider {via}, from userid {uid})\r\n\tid {id}; {}\r\n",
            message::rfc5322_date(now)
        ),
        Origin::Dsn { original } => format!(
            "Received: by {hostname} (postrider, status of {original})\r\n\tid {id}; {}\r\n",
            message::rfc5322_date(now)
        ),
    }
}
