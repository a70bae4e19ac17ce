//! postrider: the mail transfer agent's binary.
mod cli;
mod queue;
mod server;

fn main() {}
