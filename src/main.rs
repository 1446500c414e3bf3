//! The `hch` binary: a thin entry point over [`hch::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    match hch::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The message and its causes, without a backtrace: these are errors for the person at
            // the terminal (bad input, missing files), not bugs.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  {}", cause.to_string().replace('\n', "\n  "));
            }
            ExitCode::FAILURE
        }
    }
}
