//! The `hch` binary: a thin entry point over [`hch::cli`].

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the coordinator and workers allocate many small,
/// short-lived buffers per subquestion from several threads at once, where glibc's malloc spent
/// about a third of the loadtest's cycles (measured with perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match hch::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`hch sample | head -1`): nothing left to say.
        Err(error) if hch::cli::is_broken_pipe(&error) => ExitCode::SUCCESS,
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
