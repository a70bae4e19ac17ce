//! Delivery status notifications for final recipient states: which recipients need one
//! (RFC 3461 NOTIFY; never for the null sender), and making the DSN durable as a message of
//! its own before the original may leave the queue.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use spool::{Envelope, MessageRef, Notify, RcptState, Recipient, Spool, SpoolError, Update};

use crate::dsn::{Action, Dsn, DsnRecipient, header_section, status_of};

/// Content returned with a failure report is cut at this size (Postfix's bounce_size_limit).
const RETURN_LIMIT: u64 = 50_000;

/// The report a recipient's state calls for, if any.
pub fn action_for(env: &Envelope, r: &Recipient) -> Option<Action> {
    if env.sender.is_empty() || r.dsn_sent {
        return None;
    }
    let Notify {
        never,
        success,
        failure,
        delay,
    } = r.notify;
    let given = never || success || failure || delay;
    match r.state {
        RcptState::Failed if !never && (failure || !given) => Some(Action::Failed),
        RcptState::Delivered if success => Some(Action::Delivered),
        _ => None,
    }
}

/// Indices of the recipients that need a report now.
pub fn pending(env: &Envelope) -> Vec<u16> {
    env.recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| action_for(env, r).is_some())
        .map(|(i, _)| i as u16)
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

/// Composes the DSN for `rcpts` of `env` and commits it. Returns the new message, or
/// `None` when the original sender cannot receive one.
pub async fn send(
    spool: &Spool,
    hostname: &str,
    env: &Envelope,
    mref: &MessageRef,
    rcpts: &[u16],
) -> Result<(Envelope, MessageRef), SpoolError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let headers_only = env.ret == Some(spool::DsnRet::Headers);
    let (spool2, mref2) = (spool.clone(), mref.clone());
    let (returned, returned_full) =
        tokio::task::spawn_blocking(move || read_returned(&spool2, &mref2, headers_only))
            .await
            .unwrap_or_default();
    let recipients: Vec<DsnRecipient> = rcpts
        .iter()
        .filter_map(|&i| env.recipients.get(usize::from(i)))
        .map(|r| {
            let action = action_for(env, r).unwrap_or(Action::Failed);
            let diag = r.last_error.clone();
            DsnRecipient {
                final_recipient: r.address.clone(),
                original_recipient: r.orcpt.clone(),
                action,
                status: match action {
                    Action::Failed => status_of(diag.as_deref().unwrap_or(""), true),
                    _ => "2.0.0".into(),
                },
                remote_mta: None,
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
        to: &env.sender,
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
        recipients: vec![Recipient {
            address: env.sender.clone(),
            notify: Notify {
                never: true,
                ..Default::default()
            },
            ..Default::default()
        }],
    };
    let mut w = spool.content_writer(id);
    w.write(&content).await?;
    let m = spool.commit(&bounce, w).await?;
    spool
        .update(vec![Update::DsnSent {
            id: env.id,
            rcpts: rcpts.to_vec(),
        }])
        .await?;
    Ok((bounce, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(notify: Notify, state: RcptState, sender: &str) -> Envelope {
        Envelope {
            id: spool::TxnId(1),
            arrival: 0,
            sender: sender.into(),
            envid: None,
            ret: None,
            body: spool::BodyType::SevenBit,
            smtputf8: false,
            client: String::new(),
            held: false,
            recipients: vec![Recipient {
                address: "r@d.test".into(),
                notify,
                state,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn notify_decides() {
        let n = |never, success, failure| Notify {
            never,
            success,
            failure,
            delay: false,
        };
        let e = env(n(false, false, false), RcptState::Failed, "s@x.test");
        assert_eq!(pending(&e), vec![0]);
        let e = env(n(true, false, false), RcptState::Failed, "s@x.test");
        assert!(pending(&e).is_empty());
        let e = env(n(false, true, false), RcptState::Failed, "s@x.test");
        assert!(
            pending(&e).is_empty(),
            "NOTIFY=SUCCESS only: no failure report"
        );
        let e = env(n(false, true, false), RcptState::Delivered, "s@x.test");
        assert_eq!(pending(&e), vec![0]);
        let e = env(n(false, false, false), RcptState::Delivered, "s@x.test");
        assert!(pending(&e).is_empty());
        // Never a DSN to the null sender (RFC 5321 §4.5.5).
        let e = env(n(false, false, false), RcptState::Failed, "");
        assert!(pending(&e).is_empty());
        let mut e = env(n(false, false, false), RcptState::Failed, "s@x.test");
        e.recipients[0].dsn_sent = true;
        assert!(pending(&e).is_empty());
    }
}
