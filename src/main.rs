use clap::Parser;

use amplihack::cli::{Cli, TopCommand};
use amplihack::interrupt;

fn main() {
    let cli = Cli::parse(); // exits 2 on invalid arguments, 0 on --help
    // A command handed to the Python amplihack gets its signals itself.
    if !matches!(cli.command, TopCommand::External(_)) {
        interrupt::install();
    }
    let code = match amplihack::run(cli) {
        Ok(()) => 0,
        Err(e) if e.is_broken_pipe() => 0,
        Err(e) => {
            if !matches!(e, amplihack::error::Error::Interrupted) {
                eprintln!("Error: {e}");
            }
            e.exit_code()
        }
    };
    // A Ctrl+C during a command that still finished its work exits 130 all the same.
    std::process::exit(if code == 0 && interrupt::requested() {
        130
    } else {
        code
    });
}
