//! RCPT: the relay policy, local users and aliases (answered by the driver), the
//! milters' RCPT stage, duplicates and the recipient limits (`smtp.max_recipients`, and
//! what an alias or list expands to counts against it).

use smtp_proto::{Domain, ForwardPath, RcptParams, Reply};
use spool::{Notify, Recipient};
use tracing::info;

use super::commands::Wait;
use super::replies;
use super::state::State;
use super::{Action, Machine, MilterCall, Verdict};
use crate::policy::{Decision, RcptDomain, RelayPolicy};

/// A recipient on its way through the checks.
pub(super) struct Rcpt {
    address: String,
    local_part: String,
    domain: String,
    orcpt: Option<String>,
    notify: Notify,
    /// What an alias or list expands to; empty: the address itself.
    expanded: Vec<String>,
    owner: Option<String>,
}

fn to_spool_notify(n: smtp_proto::Notify) -> Notify {
    Notify {
        never: n.never,
        success: n.success,
        failure: n.failure,
        delay: n.delay,
    }
}

/// A local part or address from the aliases, as an address in `domain`.
fn qualify(a: String, domain: &str) -> String {
    if a.contains('@') {
        a
    } else {
        format!("{a}@{domain}")
    }
}

impl Machine {
    pub(super) fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Option<Action> {
        let max_rcpts = self.set.max_recipients;
        let txn = match &self.state {
            State::Mail(t) | State::Rcpt(t) => t,
            State::Bdat(..) => {
                self.refuse(replies::RCPT_DURING_BDAT.reply());
                return None;
            }
            _ => {
                self.refuse(replies::NEED_MAIL.reply());
                return None;
            }
        };
        if txn.rcpts.len() >= max_rcpts {
            self.refuse(replies::TOO_MANY_RECIPIENTS.reply());
            return None;
        }
        let mut rcpt = Rcpt {
            address: String::new(),
            local_part: String::new(),
            domain: String::new(),
            orcpt: params.orcpt.map(|(kind, addr)| format!("{kind};{addr}")),
            notify: params.notify.map(to_spool_notify).unwrap_or_default(),
            expanded: Vec::new(),
            owner: None,
        };
        let m = match to {
            ForwardPath::Postmaster => {
                rcpt.address = match self.set.local_domains.first() {
                    Some(d) => format!("postmaster@{d}"),
                    None => format!("postmaster@{}", self.set.hostname),
                };
                return self.rcpt_milter(rcpt);
            }
            ForwardPath::Mailbox(m) => m,
        };
        if m.needs_smtputf8() && !txn.params.smtputf8 {
            self.refuse(replies::RECIPIENT_NEEDS_SMTPUTF8.reply());
            return None;
        }
        let domain = match m.domain() {
            Domain::Name(n) => RcptDomain::Name(n),
            _ => RcptDomain::Literal,
        };
        let policy = RelayPolicy {
            local_domains: &self.set.local_domains,
            relay_domains: &self.set.relay_domains,
        };
        rcpt.address = m.to_string();
        match policy.decide(m.local_part(), domain, self.set.trusted) {
            Decision::Denied => {
                info!(session = %self.session, client = %self.set.peer, rcpt = %m, "relay access denied");
                self.refuse(replies::relay_denied(&rcpt.address));
                None
            }
            Decision::Local => {
                rcpt.local_part = m.local_part().to_string();
                rcpt.domain = m.domain().to_string();
                let lp = rcpt.local_part.clone();
                self.wait = Some(Wait::Local(rcpt));
                Some(Action::CheckLocal(lp))
            }
            Decision::Relay => self.rcpt_milter(rcpt),
        }
    }

    pub(super) fn rcpt_local(
        &mut self,
        mut rcpt: Rcpt,
        targets: Result<Vec<String>, Reply>,
        owner: Option<String>,
    ) {
        let targets = match targets {
            Ok(t) => t,
            Err(r) => return self.refuse(r),
        };
        // aliases(5): the alias is replaced by what it expands to; the address the client
        // gave is kept as ORCPT for DSNs.
        if targets.len() != 1 || targets[0] != rcpt.local_part {
            rcpt.owner = owner.map(|o| qualify(o, &rcpt.domain));
            rcpt.expanded = targets
                .into_iter()
                .map(|t| qualify(t, &rcpt.domain))
                .collect();
        }
        if let Some(a) = self.rcpt_milter(rcpt) {
            self.queued.push_back(a);
        }
    }

    fn rcpt_milter(&mut self, rcpt: Rcpt) -> Option<Action> {
        let discarded = self.txn().is_some_and(|t| t.discarded);
        if self.milters_connected && !discarded {
            let call = MilterCall::Rcpt(rcpt.address.clone());
            self.wait = Some(Wait::MilterRcpt(rcpt));
            return Some(Action::Milter(call));
        }
        self.rcpt_add(rcpt);
        None
    }

    pub(super) fn rcpt_milter_done(&mut self, rcpt: Rcpt, v: Verdict) {
        if v == Verdict::Discard
            && let Some(t) = self.txn_mut()
        {
            info!(queue_id = %t.id, rcpt = %rcpt.address, "a milter discards the message at RCPT");
            t.discarded = true;
        }
        if let Some(r) = self.refusal(v) {
            return self.refuse(r);
        }
        self.rcpt_add(rcpt);
    }

    fn rcpt_add(&mut self, rcpt: Rcpt) {
        let max_rcpts = self.set.max_recipients;
        let Some(txn) = self.txn_mut() else {
            return;
        };
        let addresses: Vec<(String, Option<String>)> = if rcpt.expanded.is_empty() {
            vec![(rcpt.address, rcpt.orcpt)]
        } else {
            let orcpt = rcpt
                .orcpt
                .or_else(|| Some(format!("rfc822;{}", rcpt.address)));
            rcpt.expanded
                .into_iter()
                .map(|a| (a, orcpt.clone()))
                .collect()
        };
        // An alias or list counts as what it expands to: the cap is on the message.
        let mut fresh: Vec<String> = addresses
            .iter()
            .map(|(a, _)| a.to_ascii_lowercase())
            .filter(|a| !txn.seen.contains(a))
            .collect();
        fresh.sort();
        fresh.dedup();
        if txn.rcpts.len() + fresh.len() > max_rcpts {
            return self.refuse(replies::TOO_MANY_RECIPIENTS.reply());
        }
        for (address, orcpt) in addresses {
            if !txn.seen.insert(address.to_ascii_lowercase()) {
                continue;
            }
            if let Some(o) = &rcpt.owner {
                txn.owners.push((address.clone(), o.clone()));
            }
            txn.rcpts.push(Recipient {
                address,
                orcpt,
                notify: rcpt.notify,
                ..Default::default()
            });
        }
        if matches!(&self.state, State::Mail(t) if !t.rcpts.is_empty()) {
            let State::Mail(t) = std::mem::replace(&mut self.state, State::Ready) else {
                unreachable!("matched above");
            };
            self.state = State::Rcpt(t);
        }
        self.push(&replies::RECIPIENT_OK.reply());
    }
}
