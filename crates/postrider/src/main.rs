//! postrider: the mail transfer agent's binary. This file only turns the command line into
//! calls; `anyhow` stops here, the components below return typed errors.

mod cli;
mod control;
mod interfaces;
mod local;
mod metrics;
mod pickup;
mod queue_cmd;
mod sendmail;
mod serve;
mod submit;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, QueueArgs};
use config::Config;

/// sysexits.h codes the queue and sendmail commands use.
pub mod sysexits {
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const NOINPUT: u8 = 66;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const TEMPFAIL: u8 = 75;
    pub const CONFIG: u8 = 78;
}

fn main() -> ExitCode {
    // Installed as /usr/sbin/sendmail (a link), scripts call us with sendmail's options.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "sendmail")
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return match load_config(None) {
            Ok(cfg) => sendmail::run(&cfg, &args),
            Err(_) => ExitCode::from(sysexits::CONFIG),
        };
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => match load_config(cli.config.as_deref()) {
            Ok(cfg) => match serve::run(cfg, Config::locate(cli.config.as_deref())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("postrider: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Command::CheckConfig => check_config(cli.config.as_deref()),
        Command::Queue(q) => queue_command(cli.config.as_deref(), q),
        Command::Sendmail(args) => match load_config(cli.config.as_deref()) {
            Ok(cfg) => sendmail::run(&cfg, &args.args),
            Err(_) => ExitCode::from(sysexits::CONFIG),
        },
    }
}

fn load_config(explicit: Option<&Path>) -> Result<Config, ExitCode> {
    let Some(path) = Config::locate(explicit) else {
        return Ok(Config::default());
    };
    Config::load(&path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::FAILURE
    })
}

fn check_config(explicit: Option<&Path>) -> ExitCode {
    let path: Option<PathBuf> = Config::locate(explicit);
    match &path {
        None => {
            println!("no configuration file: the embedded defaults are valid");
            ExitCode::SUCCESS
        }
        Some(p) => match Config::load(p) {
            Ok(_) => {
                println!("{}: ok", p.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::FAILURE
            }
        },
    }
}

fn queue_command(explicit: Option<&Path>, q: QueueArgs) -> ExitCode {
    let cfg = match load_config(explicit) {
        Ok(c) => c,
        Err(code) => return code,
    };
    queue_cmd::run(&cfg, q.action, q.json)
}
