//! `postrider queue ...`: asks the running daemon over its control socket; when no daemon
//! answers, reads the spool read-only so `list`, `show` and `shape` still work.

use std::process::ExitCode;

use config::Config;

use crate::cli::QueueAction;
use crate::control;
use crate::sysexits;
use queue::api::{self, MessageInfo, Request, Response};

pub fn run(cfg: &Config, action: QueueAction, json: bool) -> ExitCode {
    let req = match action {
        QueueAction::List => Request::List,
        QueueAction::Show { id } => Request::Show { id },
        QueueAction::Shape { top } => Request::Shape { top },
        QueueAction::Flush { domain } => Request::Flush { domain },
        QueueAction::Hold { id } => Request::Hold { id },
        QueueAction::Release { id } => Request::Release { id },
        QueueAction::Delete { id } => Request::Delete { id },
        QueueAction::Run { once: false } => {
            eprintln!(
                "postrider queue run: add --once (to run continuously use `postrider serve`)"
            );
            return ExitCode::from(sysexits::USAGE);
        }
        QueueAction::Run { once: true } => {
            return match crate::serve::run_queue_once(cfg.clone()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("postrider: {e:#}");
                    ExitCode::from(sysexits::TEMPFAIL)
                }
            };
        }
    };
    let resp = match control::request(&cfg.control_socket(), &req) {
        Ok(Some(r)) => r,
        Ok(None) => match offline(cfg, &req) {
            Ok(r) => r,
            Err(code) => return code,
        },
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "postrider: control socket {}: {}",
                cfg.control_socket().display(),
                not_allowed(cfg)
            );
            return ExitCode::from(NOPERM);
        }
        Err(e) => {
            eprintln!(
                "postrider: control socket {}: {e}",
                cfg.control_socket().display()
            );
            return ExitCode::from(sysexits::UNAVAILABLE);
        }
    };
    print(resp, json)
}

/// sysexits.h EX_NOPERM.
const NOPERM: u8 = 77;

/// Why a user may not look at the queue, and who may.
fn not_allowed(cfg: &Config) -> String {
    use std::os::unix::fs::MetadataExt;
    let owner = match std::fs::metadata(&cfg.spool) {
        Ok(m) => match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(m.uid())) {
            Ok(Some(u)) => format!("user '{}'", u.name),
            _ => format!("uid {}", m.uid()),
        },
        Err(_) => "the daemon's user".to_string(),
    };
    format!(
        "permission denied: the queue in {} holds everyone's mail and only its owner ({owner}) and root may read it; run `postrider queue` as one of them",
        cfg.spool.display()
    )
}

/// The daemon is down: answer read-only questions from the spool itself.
fn offline(cfg: &Config, req: &Request) -> Result<Response, ExitCode> {
    if !matches!(
        req,
        Request::List | Request::Show { .. } | Request::Shape { .. }
    ) {
        eprintln!(
            "postrider: the daemon is not running (no control socket at {}); only list, show and shape work without it",
            cfg.control_socket().display()
        );
        return Err(ExitCode::from(sysexits::UNAVAILABLE));
    }
    // Only a spool that is really not there is an empty queue; one this user cannot reach
    // is an error below.
    if std::fs::metadata(&cfg.spool).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(match req {
            Request::Show { id } => Response::error(format!("no message {id} in the queue")),
            Request::Shape { .. } => Response::Shape(vec![]),
            _ => Response::List(vec![]),
        });
    }
    let rec = spool::inspect(&cfg.spool).map_err(|e| {
        if e.is_permission_denied() {
            eprintln!("postrider: {}", not_allowed(cfg));
            return ExitCode::from(NOPERM);
        }
        eprintln!("postrider: reading the spool {}: {e}", cfg.spool.display());
        ExitCode::from(sysexits::SOFTWARE)
    })?;
    if let Request::Shape { top } = req {
        return Ok(Response::Shape(api::shape(
            rec.messages.iter().map(|(env, _)| env),
            *top,
        )));
    }
    let mut list: Vec<MessageInfo> = rec
        .messages
        .iter()
        .map(|(env, mref)| MessageInfo::of(env, mref.len()))
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(match req {
        Request::Show { id } => match list.into_iter().find(|m| &m.id == id) {
            Some(m) => Response::Message(m),
            None => Response::error(format!("no message {id} in the queue")),
        },
        _ => Response::List(list),
    })
}

fn print(resp: Response, json: bool) -> ExitCode {
    if json {
        // The payload alone, so `jq '.[].id'` works on `queue --json list`.
        let value = match &resp {
            Response::List(l) => serde_json::to_value(l),
            Response::Message(m) => serde_json::to_value(m),
            Response::Shape(s) => serde_json::to_value(s),
            Response::Done(d) => Ok(serde_json::json!({ "ok": d })),
            Response::Stats(s) => serde_json::to_value(s),
            Response::Error { message } => Ok(serde_json::json!({ "error": message })),
        };
        match value.and_then(|v| serde_json::to_string_pretty(&v)) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("postrider: {e}");
                return ExitCode::from(sysexits::SOFTWARE);
            }
        }
        return match resp {
            Response::Error { .. } => ExitCode::FAILURE,
            _ => ExitCode::SUCCESS,
        };
    }
    match resp {
        Response::List(list) => {
            if list.is_empty() {
                println!("Mail queue is empty");
            }
            for m in &list {
                let held = if m.held { " (held)" } else { "" };
                let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
                println!(
                    "{}{held} {:>8} {} {sender}",
                    m.id,
                    m.size,
                    message::rfc5322_date(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.arrival)
                    )
                );
                for r in &m.recipients {
                    match &r.last_error {
                        Some(e) => {
                            println!("    {} [{}, {} tries] {e}", r.address, r.state, r.tries)
                        }
                        None => println!("    {} [{}]", r.address, r.state),
                    }
                }
            }
            if !list.is_empty() {
                let n: usize = list.iter().map(|m| m.recipients.len()).sum();
                println!("-- {} message(s), {n} recipient(s)", list.len());
            }
            ExitCode::SUCCESS
        }
        Response::Message(m) => {
            println!(
                "id: {}\nsize: {}\narrival: {}\nsender: <{}>\nheld: {}",
                m.id, m.size, m.arrival, m.sender, m.held
            );
            for r in &m.recipients {
                println!(
                    "recipient: <{}> state={} tries={} last_error={}",
                    r.address,
                    r.state,
                    r.tries,
                    r.last_error.as_deref().unwrap_or("-")
                );
            }
            if let Some(h) = &m.headers {
                println!("headers:");
                for line in h.lines() {
                    println!("    {line}");
                }
            }
            ExitCode::SUCCESS
        }
        Response::Shape(rows) => {
            println!(
                "{:<30} {:>6} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5}",
                "domain",
                "total",
                "5",
                "10",
                "20",
                "40",
                "80",
                "160",
                "320",
                "640",
                "1280",
                "1280+"
            );
            for r in rows {
                print!("{:<30} {:>6}", r.domain, r.total);
                for b in r.buckets {
                    print!(" {b:>5}");
                }
                println!();
            }
            ExitCode::SUCCESS
        }
        Response::Done(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Response::Stats(s) => {
            println!("{s:?}");
            ExitCode::SUCCESS
        }
        Response::Error { message } => {
            eprintln!("postrider: {message}");
            ExitCode::FAILURE
        }
    }
}
