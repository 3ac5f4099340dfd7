//! The `ratelimit` command. Everything lives in the library; see `ratelimit --help`.

fn main() -> std::process::ExitCode {
    ratelimiter_cli::main()
}
