//! The milters' end-of-message changes: recipients, sender and quarantine on the envelope,
//! header and body edits on the content. Header edits touch only the fields they name and
//! keep every other byte as it was, whatever its encoding.

use milter::Changes;
use spool::{ContentWriter, Envelope, Recipient, Spool, SpoolError};
use tracing::{info, warn};

use crate::CleanupError;

/// Whether any recipient is left after the changes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Left {
    Some,
    Nobody,
}

/// Applies the envelope changes in the order milters expect (additions, then removals, so
/// a milter can replace a recipient), and caps the result like client input.
pub(crate) fn apply_envelope(env: &mut Envelope, changes: &Changes) -> Result<Left, CleanupError> {
    for a in &changes.add_rcpts {
        env.recipients.push(Recipient {
            address: milter::strip(a),
            ..Default::default()
        });
    }
    for a in &changes.del_rcpts {
        let a = milter::strip(a);
        env.recipients
            .retain(|r| !r.address.eq_ignore_ascii_case(&a));
    }
    if let Some(f) = &changes.from {
        env.sender = milter::strip(f);
    }
    if let Some(why) = &changes.quarantine {
        info!(queue_id = %env.id, reason = %why, "quarantined by a milter: held");
        env.held = true;
    }
    if env.recipients.len() > config::MAX_RECIPIENTS {
        warn!(queue_id = %env.id, nrcpt = env.recipients.len(), "a milter added recipients past the limit of one message");
        return Err(CleanupError::TooManyRecipients(env.recipients.len()));
    }
    if env.recipients.is_empty() {
        info!(queue_id = %env.id, "a milter removed every recipient: discarded");
        return Ok(Left::Nobody);
    }
    Ok(Left::Some)
}

/// Writes the content again with the header and body changes, under the same queue id.
pub(crate) async fn rewrite(
    spool: &Spool,
    content: ContentWriter,
    changes: &Changes,
) -> Result<ContentWriter, SpoolError> {
    let id = content.id();
    let mut r = content.into_reader()?;
    let head = message::read_header_section(&mut r);
    let mut w = spool.content_writer(id);
    w.write(&message::apply_headers(&head, &changes.headers))
        .await?;
    match &changes.body {
        Some(body) => {
            // Milters may send bare LF; mail on disk has CRLF line ends.
            let mut fixed = Vec::with_capacity(body.len() + body.len() / 32);
            for (i, &b) in body.iter().enumerate() {
                if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
                    fixed.push(b'\r');
                }
                fixed.push(b);
            }
            w.write(&fixed).await?;
        }
        None => w.write_from(&mut r).await?,
    }
    Ok(w)
}
