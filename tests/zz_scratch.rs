#![allow(clippy::disallowed_methods)]
mod common;
use common::*;
use std::process::Stdio;

#[test]
fn scratch_two_kills() {
    let env = TestEnv::new();
    let r = env.start_running("SLEEP=300");
    let a = env.std_cmd(&["kill", &r.id]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let b = env.std_cmd(&["kill", "--force", &r.id]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    eprintln!("A {}\n{}\n{}", code(&a), stdout(&a), stderr(&a));
    eprintln!("B {}\n{}\n{}", code(&b), stdout(&b), stderr(&b));
    eprintln!("{}", env.session(&r.id));
    panic!("show");
}
