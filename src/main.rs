//! The `portcullis` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

// Small, short-lived allocations on every request: mimalloc's thread-local free lists serve
// them for a fraction of glibc malloc's instructions. The binary only: the library leaves
// the choice to whoever embeds it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    portcullis::cli::main(portcullis::cli::Cli::parse())
}
