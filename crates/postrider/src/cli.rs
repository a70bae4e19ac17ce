//! Command-line interface: the outside contract of DESIGN.md §3.
//!
//! Only argument shapes live here; what each subcommand does lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// postrider: a mail transfer agent that receives mail over SMTP, keeps it safely on disk
/// and delivers it over SMTP or LMTP, scheduling by destination domain.
#[derive(Debug, Parser)]
#[command(name = "postrider", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file. Without it: $POSTRIDER_CONFIG, else /etc/postrider/postrider.toml,
    /// else the embedded defaults (listen on 127.0.0.1:2525, spool ./postrider-spool).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the MTA in the foreground until SIGTERM or SIGINT.
    Serve,
    /// Validate the configuration; print every error with its file, line and key; exit 1 on error.
    CheckConfig,
    /// Inspect and steer the mail queue (talks to the running daemon, or reads the spool
    /// read-only when it is down).
    Queue(QueueArgs),
    /// sendmail(1)-compatible submission: reads a message on standard input.
    /// Also used when the binary is invoked under the name `sendmail`.
    Sendmail(SendmailArgs),
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: QueueAction,
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages (like mailq): id, size, arrival, sender, recipients and last error.
    List,
    /// Show one message: envelope, state of each recipient, headers.
    Show { id: String },
    /// Domains by message count across age buckets (like Postfix's qshape).
    Shape {
        /// How many domains to show.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Attempt delivery now for one domain, or for every domain.
    Flush { domain: Option<String> },
    /// Keep a message in the queue without delivering it until released.
    Hold { id: String },
    /// Release a held (or quarantined) message.
    Release { id: String },
    /// Delete a message from the queue without a bounce.
    Delete { id: String },
    /// Attempt every queued domain once, whatever its schedule, and exit (the daemon must
    /// not be running on the spool; to run continuously use `postrider serve`).
    Run {
        /// Process the queue once and exit (the only mode).
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Args)]
pub struct SendmailArgs {
    /// sendmail options (-t, -i, -oi, -f SENDER, -F NAME, -bm, -bp, -bs, -q) and recipients.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_flag_works_after_subcommand() {
        let cli = Cli::try_parse_from(["postrider", "queue", "list", "-c", "/x.toml"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/x.toml")));
        assert!(matches!(
            cli.command,
            Command::Queue(QueueArgs {
                action: QueueAction::List,
                ..
            })
        ));
    }

    #[test]
    fn sendmail_keeps_raw_options() {
        let cli = Cli::try_parse_from(["postrider", "sendmail", "-t", "-oi", "-f", "a@b", "c@d"])
            .unwrap();
        let Command::Sendmail(args) = cli.command else {
            panic!("not sendmail")
        };
        assert_eq!(args.args, ["-t", "-oi", "-f", "a@b", "c@d"]);
    }
}
