//! `understudy completions SHELL` prints a completion script that knows the subcommands.

mod common;

use common::run_cli;

#[test]
fn completion_scripts_for_bash_zsh_and_fish_name_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef understudy"),
        ("fish", "complete -c understudy"),
    ] {
        let (code, out, err) = run_cli(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: no {marker:?} in the script");
        for sub in ["agent", "switchover", "serve", "ctl"] {
            assert!(
                out.contains(sub),
                "{shell}: the script does not know `{sub}`"
            );
        }
    }
    let (code, _, err) = run_cli(&["completions", "tcsh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
}
