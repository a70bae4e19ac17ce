//! The queue manager's answers to the control socket and the metrics endpoint: listings,
//! one message, qshape, stats, flush, and the administrator's changes (hold, release,
//! delete), which are written off the scheduling loop and applied when durable.

use tokio::time::Instant;

use spool::{RcptState, TxnId, Update};
use tokio::sync::oneshot;

use super::{Manager, Msg, Pair, QueueMsg};
use crate::api::{MessageInfo, Request, Response};
use crate::job::Deliver;
use crate::schedule::{DomainId, rcpt_domain};

impl<D: Deliver> Manager<D> {
    /// The message's header section, read from the spool (bounded: headers are small).
    fn headers(&self, m: &Msg) -> String {
        use std::io::Read;
        let mut buf = Vec::new();
        match self.spool.open_content(&m.mref) {
            Ok(r) => {
                let _ = r.take(64 * 1024).read_to_end(&mut buf);
            }
            Err(e) => return format!("(cannot read the content: {e})"),
        }
        let n = message::header_section(&buf).len();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn info(&self, m: &Msg) -> MessageInfo {
        MessageInfo::of(&m.env, m.size)
    }

    /// Answers a request that only reads, or changes nothing durable (flush). Requests that
    /// change the queue go through [`Manager::write_then_apply`].
    fn control(&mut self, req: Request) -> Response {
        match req {
            Request::List => {
                let mut list: Vec<MessageInfo> =
                    self.messages.values().map(|m| self.info(m)).collect();
                list.sort_by(|a, b| a.id.cmp(&b.id));
                Response::List(list)
            }
            Request::Show { id } => match self.find(&id) {
                Some(m) => {
                    let mut info = self.info(m);
                    info.headers = Some(self.headers(m));
                    Response::Message(info)
                }
                None => Response::error(format!("no message {id} in the queue")),
            },
            Request::Shape { top } => Response::Shape(crate::api::shape(
                self.messages.values().map(|m| &m.env),
                top,
            )),
            Request::Stats => Response::Stats(self.stats()),
            Request::Flush { domain } => {
                let now = Instant::now();
                let ids: Vec<DomainId> = match &domain {
                    Some(d) => self.sched.id(&d.to_ascii_lowercase()).into_iter().collect(),
                    None => self.sched.domains().map(|(id, ..)| id).collect(),
                };
                if domain.is_some() && ids.is_empty() {
                    return Response::error(format!(
                        "no mail queued for {}",
                        domain.unwrap_or_default()
                    ));
                }
                for id in &ids {
                    self.sched.flush(*id, now);
                }
                Response::Done(format!("flushing {} domain(s)", ids.len()))
            }
            Request::Hold { .. } | Request::Release { .. } | Request::Delete { .. } => {
                Response::error("a change is answered once it is written")
            }
        }
    }

    fn find(&self, id: &str) -> Option<&Msg> {
        let tid: TxnId = id.parse().ok()?;
        self.messages.get(&tid)
    }

    /// Hold, release and delete: the update is written on a task of its own (the
    /// scheduling loop never waits for a disk), and applied, through the same transition
    /// recovery uses, when [`QueueMsg::Written`] comes back.
    pub(super) fn write_then_apply(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let (id, update) = match &req {
            Request::Hold { id } | Request::Release { id } | Request::Delete { id } => {
                let Some(tid) = self.find(id).map(|m| m.env.id) else {
                    let _ = reply.send(Response::error(format!("no message {id} in the queue")));
                    return;
                };
                let update = match req {
                    Request::Hold { .. } => Update::Hold { id: tid },
                    Request::Release { .. } => Update::Release { id: tid },
                    _ => Update::Delete { id: tid },
                };
                (tid, update)
            }
            _ => {
                let _ = reply.send(self.control(req));
                return;
            }
        };
        let (spool, tx) = (self.spool.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            let result = spool
                .update(vec![update.clone()])
                .await
                .map_err(|e| e.to_string());
            let _ = tx
                .send(QueueMsg::Written {
                    id,
                    update,
                    result,
                    reply,
                })
                .await;
        });
    }

    /// An administrator's change is durable (or failed): apply it and answer.
    pub(super) fn written(
        &mut self,
        id: TxnId,
        update: Update,
        result: Result<(), String>,
        reply: oneshot::Sender<Response>,
    ) {
        let _ = reply.send(match result {
            Err(e) => Response::error(format!("spool: {e}")),
            Ok(()) => self.apply_admin(id, &update),
        });
    }

    fn apply_admin(&mut self, tid: TxnId, update: &Update) -> Response {
        let Some(m) = self.messages.get_mut(&tid) else {
            return Response::error(format!("no message {tid} in the queue"));
        };
        if let Update::Delete { .. } = update {
            self.sched.remove_where(|p| p.id == tid);
            self.messages.remove(&tid);
            tracing::info!(queue_id = %tid, "deleted by the administrator");
            return Response::Done(format!("{tid} deleted"));
        }
        let held = matches!(update, Update::Hold { .. });
        if m.env.held == held {
            return Response::Done(format!("{tid} unchanged"));
        }
        m.env.apply(update);
        if held {
            self.sched.remove_where(|p| p.id == tid);
        } else {
            let now = Instant::now();
            let pairs: Vec<(String, Pair)> = m
                .env
                .recipients
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.state.is_final())
                .filter_map(|(i, r)| {
                    let rcpt = u16::try_from(i).ok()?;
                    Some((rcpt_domain(&r.address), Pair { id: tid, rcpt }))
                })
                .collect();
            for (d, p) in pairs {
                self.sched.add_new(&d, p, now);
            }
        }
        tracing::info!(queue_id = %tid, held, "hold state changed by the administrator");
        Response::Done(format!("{tid} {}", if held { "held" } else { "released" }))
    }

    /// Domains by pending recipients across age buckets (minutes), like Postfix's qshape.
    /// Gauges for the metrics endpoint; O(queue), asked once per scrape.
    fn stats(&self) -> crate::api::QueueStats {
        let mut s = crate::api::QueueStats {
            messages: self.messages.len() as u64,
            attempts_in_flight: self.sched.in_flight() as u64,
            ..Default::default()
        };
        for m in self.messages.values() {
            s.held_messages += u64::from(m.env.held);
            for r in &m.env.recipients {
                s.recipients_open += u64::from(!r.state.is_final());
                s.deferred_recipients += u64::from(r.state == RcptState::Deferred);
            }
        }
        for (_, _, _, level) in self.sched.domains() {
            s.domains += 1;
            let l = level as usize;
            if s.backoff_levels.len() <= l {
                s.backoff_levels.resize(l + 1, 0);
            }
            s.backoff_levels[l] += 1;
        }
        s
    }
}
