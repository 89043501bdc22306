//! A stand-alone guardian, for tests and for tools that are not the agent: runs
//! `understudy-guard <command> [args...]` exactly like `understudy __guard <command> [args...]`.

fn main() {
    let args = std::env::args_os().skip(1).collect();
    std::process::exit(understudy_service::guardian::run(args));
}
