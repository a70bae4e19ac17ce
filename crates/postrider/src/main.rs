//! postrider: the mail transfer agent's binary.
fn main() {}
