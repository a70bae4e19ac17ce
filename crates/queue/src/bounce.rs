//! Delivery status notifications (RFC 3464): which recipients need one under RFC 3461's
//! NOTIFY (failures, delays past `delivery.delay_warning`, successes when asked), who gets
//! it (the sender; for mail with a null sender the postmaster, a "double bounce"; a failed
//! double bounce is only logged), and making it durable as a message of its own before the
//! original may leave the queue.

use std::io::Read;
use std::time::Duration;

use cleanup::{Cleanup, CleanupError, Content, Incoming, Origin};
use spool::{
    Envelope, Handoff, MessageKind, MessageRef, Notify, RcptState, Recipient, Spool, TxnId, Update,
};

use crate::dsn::{Action, Dsn, DsnRecipient, status_of};
use message::header_section;

/// Content returned with a failure report is cut at this size (Postfix's bounce_size_limit).
const RETURN_LIMIT: u64 = 50_000;

/// The settings the DSN rules depend on.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Send one delay notice per recipient still undelivered after this long.
    pub delay_warning: Option<Duration>,
    /// Where double bounces go.
    pub postmaster: String,
}

/// Who receives reports about `env`, if anyone.
pub fn report_to<'a>(env: &'a Envelope, policy: &'a Policy) -> Option<&'a str> {
    match (env.sender.is_empty(), env.kind) {
        (false, _) => Some(&env.sender),
        (true, MessageKind::DoubleBounce) => None,
        (true, _) => Some(&policy.postmaster),
    }
}

/// The report a recipient's state calls for now, if any.
pub fn action_for(env: &Envelope, r: &Recipient, policy: &Policy, now: u64) -> Option<Action> {
    report_to(env, policy)?;
    let Notify {
        never,
        success,
        failure,
        delay,
    } = r.notify;
    let given = never || success || failure || delay;
    // Mail from the null sender only ever produces failure reports (to the postmaster).
    let null = env.sender.is_empty();
    match r.state {
        // A null-sender message's failure goes to the postmaster whatever NOTIFY said.
        RcptState::Failed if !r.dsn_sent && (null || (!never && (failure || !given))) => {
            Some(Action::Failed)
        }
        RcptState::Delivered if !r.dsn_sent && success && !null => match r.handoff {
            Handoff::DsnCapable => None,
            Handoff::Final => Some(Action::Delivered),
            Handoff::Relayed | Handoff::Unknown => Some(Action::Relayed),
        },
        RcptState::Deferred
            if !r.delay_dsn_sent && !never && !null && (delay || !given) && r.tries > 0 =>
        {
            let warn = policy.delay_warning?;
            (now.saturating_sub(env.arrival) >= warn.as_secs()).then_some(Action::Delayed)
        }
        _ => None,
    }
}

/// Indices of the recipients that need a report now.
pub fn pending(env: &Envelope, policy: &Policy) -> Vec<u16> {
    let now = spool::unix_now();
    env.recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| action_for(env, r, policy, now).is_some())
        // Never wrap onto another recipient's index (see config::MAX_RECIPIENTS).
        .filter_map(|(i, _)| u16::try_from(i).ok())
        .collect()
}

fn read_returned(spool: &Spool, mref: &MessageRef, headers_only: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let Ok(r) = spool.open_content(mref) else {
        return (out, false);
    };
    let _ = r.take(RETURN_LIMIT).read_to_end(&mut out);
    let full = !headers_only && mref.len() <= RETURN_LIMIT;
    if !full {
        // Headers only: also when the message is too big to return whole.
        let n = header_section(&out).len();
        out.truncate(n);
    }
    (out, full)
}

/// Composes the DSN for `rcpts` of `env`, takes it through cleanup (which commits it and
/// hands it to the queue like any other mail), then records that the recipients were
/// reported. Returns the report's queue id and whom it went to.
pub async fn send<A: cleanup::Arrivals>(
    cleanup: &Cleanup<A>,
    hostname: &str,
    policy: &Policy,
    env: &Envelope,
    mref: &MessageRef,
    rcpts: &[u16],
) -> Result<(TxnId, String), CleanupError> {
    let spool = cleanup.spool();
    let now = spool::unix_now();
    let to = report_to(env, policy)
        .unwrap_or(&policy.postmaster)
        .to_string();
    // Binary content cannot travel inside a message/rfc822 part of an 8-bit report: its
    // headers must do.
    let headers_only =
        env.ret == Some(spool::DsnRet::Headers) || env.body == spool::BodyType::BinaryMime;
    let (spool2, mref2) = (spool.clone(), mref.clone());
    let (returned, returned_full) =
        tokio::task::spawn_blocking(move || read_returned(&spool2, &mref2, headers_only))
            .await
            .unwrap_or_default();
    let recipients: Vec<DsnRecipient> = rcpts
        .iter()
        .filter_map(|&i| env.recipients.get(usize::from(i)))
        .map(|r| {
            let action = action_for(env, r, policy, now).unwrap_or(Action::Failed);
            let diag = r.last_error.clone();
            DsnRecipient {
                final_recipient: r.address.clone(),
                original_recipient: r.orcpt.clone(),
                action,
                status: match action {
                    Action::Failed => status_of(diag.as_deref().unwrap_or(""), 5),
                    Action::Delayed => status_of(diag.as_deref().unwrap_or(""), 4),
                    _ => smtp_proto::EnhancedCode::new(2, 0, 0),
                },
                // The relay is "host[ip]:port"; Remote-MTA names the host.
                remote_mta: r
                    .relay
                    .as_deref()
                    .map(|x| x.split('[').next().unwrap_or(x).to_string()),
                diagnostic: diag,
                last_attempt: now,
            }
        })
        .collect();
    let id = spool.ids().next();
    let boundary = format!("{id}/{hostname}");
    let message_id = format!("{id}@{hostname}");
    let postmaster = format!("MAILER-DAEMON@{hostname}");
    let dsn = Dsn {
        reporting_mta: hostname,
        postmaster: &postmaster,
        to: &to,
        envid: env.envid.as_deref(),
        arrival: env.arrival,
        recipients,
        returned: &returned,
        returned_full,
        now,
        boundary: &boundary,
        message_id: &message_id,
    };
    let content = dsn.compose();
    let bounce = Envelope {
        id,
        arrival: now,
        sender: String::new(),
        envid: None,
        ret: None,
        body: if env.body == spool::BodyType::SevenBit {
            spool::BodyType::SevenBit
        } else {
            spool::BodyType::EightBitMime
        },
        smtputf8: env.smtputf8,
        client: "local DSN".into(),
        held: false,
        kind: if env.sender.is_empty() {
            MessageKind::DoubleBounce
        } else {
            MessageKind::Dsn
        },
        recipients: vec![Recipient {
            address: to.clone(),
            notify: Notify {
                never: true,
                ..Default::default()
            },
            ..Default::default()
        }],
    };
    let settings = cleanup::Settings {
        hostname: hostname.to_string(),
        // A report has no hops of its own: the Received fields it returns are in its body.
        max_hops: usize::MAX,
    };
    cleanup
        .commit(
            &settings,
            Incoming {
                env: bounce,
                content: Content::Whole(&content),
                origin: Origin::Dsn { original: env.id },
                changes: None,
                owners: Vec::new(),
            },
        )
        .await?;
    spool
        .update(vec![Update::DsnSent {
            id: env.id,
            rcpts: rcpts.to_vec(),
        }])
        .await?;
    Ok((id, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(notify: Notify, state: RcptState, sender: &str) -> Envelope {
        Envelope {
            id: spool::TxnId(1),
            arrival: spool::unix_now() - 7200,
            sender: sender.into(),
            envid: None,
            ret: None,
            body: spool::BodyType::SevenBit,
            smtputf8: false,
            client: String::new(),
            held: false,
            kind: Default::default(),
            recipients: vec![Recipient {
                address: "r@d.test".into(),
                notify,
                state,
                tries: 1,
                ..Default::default()
            }],
        }
    }

    fn n(never: bool, success: bool, failure: bool, delay: bool) -> Notify {
        Notify {
            never,
            success,
            failure,
            delay,
        }
    }

    fn policy(delay_warning: Option<u64>) -> Policy {
        Policy {
            delay_warning: delay_warning.map(Duration::from_secs),
            postmaster: "postmaster@local.test".into(),
        }
    }

    fn action(e: &Envelope, p: &Policy) -> Option<Action> {
        action_for(e, &e.recipients[0], p, spool::unix_now())
    }

    #[test]
    fn notify_decides_failures_and_successes() {
        let p = policy(None);
        let none = n(false, false, false, false);
        assert_eq!(
            action(&env(none, RcptState::Failed, "s@x.test"), &p),
            Some(Action::Failed)
        );
        assert_eq!(
            action(
                &env(n(true, false, false, false), RcptState::Failed, "s@x.test"),
                &p
            ),
            None
        );
        assert_eq!(
            action(
                &env(n(false, true, false, false), RcptState::Failed, "s@x.test"),
                &p
            ),
            None,
            "NOTIFY=SUCCESS only: no failure report"
        );
        assert_eq!(
            action(&env(none, RcptState::Delivered, "s@x.test"), &p),
            None
        );
        let mut e = env(
            n(false, true, false, false),
            RcptState::Delivered,
            "s@x.test",
        );
        for (handoff, want) in [
            (Handoff::Relayed, Some(Action::Relayed)),
            (Handoff::Final, Some(Action::Delivered)),
            (Handoff::DsnCapable, None),
        ] {
            e.recipients[0].handoff = handoff;
            assert_eq!(action(&e, &p), want, "{handoff:?}");
        }
        let mut e = env(none, RcptState::Failed, "s@x.test");
        e.recipients[0].dsn_sent = true;
        assert!(pending(&e, &p).is_empty(), "reported once");
    }

    #[test]
    fn delay_notices_once_and_only_when_configured() {
        let none = n(false, false, false, false);
        let e = env(none, RcptState::Deferred, "s@x.test");
        assert_eq!(action(&e, &policy(None)), None, "off by default");
        assert_eq!(action(&e, &policy(Some(3600))), Some(Action::Delayed));
        assert_eq!(action(&e, &policy(Some(3 * 3600))), None, "not old enough");
        let e2 = env(
            n(false, false, true, false),
            RcptState::Deferred,
            "s@x.test",
        );
        assert_eq!(
            action(&e2, &policy(Some(3600))),
            None,
            "NOTIFY=FAILURE: no delay notice"
        );
        let mut e3 = e.clone();
        e3.recipients[0].mark_reported();
        assert_eq!(
            action(&e3, &policy(Some(3600))),
            None,
            "one notice per recipient"
        );
        // ...and the final report still comes.
        e3.recipients[0].state = RcptState::Failed;
        assert_eq!(action(&e3, &policy(Some(3600))), Some(Action::Failed));
    }

    #[test]
    fn recipient_indices_never_wrap() {
        let mut e = env(n(false, false, false, false), RcptState::Failed, "s@x.test");
        e.recipients = (0..65_540)
            .map(|i| Recipient {
                address: format!("r{i}@d.test"),
                state: RcptState::Failed,
                tries: 1,
                ..Default::default()
            })
            .collect();
        let p = pending(&e, &policy(None));
        assert_eq!(p.len(), 65_536, "indices 0..=65535 only");
        assert_eq!(p.iter().filter(|&&i| i < 4).count(), 4, "r0-r3 once each");
        assert_eq!(p.last(), Some(&u16::MAX));
    }

    #[test]
    fn null_sender_failures_go_to_the_postmaster_once() {
        let p = policy(Some(60));
        let mut e = env(n(true, false, false, false), RcptState::Failed, "");
        assert_eq!(report_to(&e, &p), Some("postmaster@local.test"));
        assert_eq!(action(&e, &p), Some(Action::Failed), "a bounce that failed");
        e.recipients[0].state = RcptState::Deferred;
        assert_eq!(action(&e, &p), None, "no delay notices about bounces");
        e.recipients[0].state = RcptState::Failed;
        e.kind = MessageKind::DoubleBounce;
        assert_eq!(report_to(&e, &p), None);
        assert!(
            pending(&e, &p).is_empty(),
            "a failed double bounce is only logged"
        );
    }
}
