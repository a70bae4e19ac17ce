//! Lists with owners: their recipients leave the original and get a copy of their own with
//! the owner as envelope sender (what sendmail and Postfix do for `owner-NAME`), so a list's
//! bounces go to whoever runs it, not to the original sender.

use spool::{Envelope, Recipient};

/// One owner's copy: its sender and recipients.
pub(crate) struct Copy {
    pub owner: String,
    pub recipients: Vec<Recipient>,
}

/// Takes the recipients that came from lists with owners out of `env`, grouped by owner in
/// the order they first appear.
pub(crate) fn split(env: &mut Envelope, owners: &[(String, String)]) -> Vec<Copy> {
    let mut groups: Vec<Copy> = Vec::new();
    let mut rest = Vec::new();
    for r in env.recipients.drain(..) {
        match owners
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(&r.address))
        {
            Some((_, o)) => match groups.iter_mut().find(|g| &g.owner == o) {
                Some(g) => g.recipients.push(r),
                None => groups.push(Copy {
                    owner: o.clone(),
                    recipients: vec![r],
                }),
            },
            None => rest.push(r),
        }
    }
    env.recipients = rest;
    groups
}
