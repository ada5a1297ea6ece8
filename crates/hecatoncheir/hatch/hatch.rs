//! The hatch: the first process of a warmed or pooled sandbox — waits on its standard input (the
//! sandbox's door, a FIFO the shim holds) for the command of the request that takes the sandbox,
//! then becomes that command.
//!
//! Built by `build.rs` as a static binary (it runs inside any template, with whatever libc the
//! template has or has not) and mounted read-only at `/.tartarus/hatch`. The message, written by
//! the agent (`crate::hatch::Order`), is a decimal byte count and a newline, then that many bytes
//! of NUL-terminated fields: the program's path inside the sandbox, the working directory, what
//! the program's stdin is (`null`, or `door`: the door itself, for a resident that reads the next
//! order), the argument count, the arguments, then every `KEY=VALUE` of the environment.
//!
//! Because it replaces itself (`execve`), the request's command is the sandbox's init exactly as
//! when the sandbox boots with it: same pid, same signals, same exit status.
//!
//! Run as `hatch keep` (the order of a session, which has no command), it keeps the sandbox up
//! for `exec` until it is killed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{exit, Command, Stdio};

fn fail(code: i32, what: &str) -> ! {
    eprintln!("tartarus hatch: {what}");
    exit(code)
}

/// Reads one message: `<len>\n` then `len` bytes.
fn read_order(input: &mut impl Read) -> Vec<u8> {
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match input.read(&mut byte) {
            Ok(0) => fail(125, "the door closed before a command came"),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if header.len() < 20 => header.push(byte[0]),
            Ok(_) => fail(125, "unreadable order header"),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => fail(125, &format!("reading the door: {e}")),
        }
    }
    let len: usize = match std::str::from_utf8(&header).ok().and_then(|h| h.parse().ok()) {
        Some(n) if n <= 64 << 20 => n,
        _ => fail(125, "unreadable order length"),
    };
    let mut body = vec![0u8; len];
    if let Err(e) = input.read_exact(&mut body) {
        fail(125, &format!("reading the order: {e}"));
    }
    body
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("keep") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let body = read_order(&mut std::io::stdin().lock());
    let fields: Vec<String> = body
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    // The body ends with a NUL, so the last split piece is empty.
    let fields = match fields.split_last() {
        Some((last, rest)) if last.is_empty() => rest,
        _ => fail(125, "malformed order"),
    };
    let (program, cwd, stdin, argc) = match fields {
        [p, c, i, n, ..] => (p, c, i, n.parse::<usize>().unwrap_or(usize::MAX)),
        _ => fail(125, "malformed order"),
    };
    let rest = &fields[4..];
    if argc == 0 || argc > rest.len() {
        fail(125, "malformed order: bad argument count");
    }
    let (argv, env) = rest.split_at(argc);
    let mut cmd = Command::new(program);
    cmd.arg0(&argv[0]).args(&argv[1..]).env_clear().current_dir(cwd);
    match stdin.as_str() {
        "door" => {}
        "null" => {
            cmd.stdin(Stdio::null());
        }
        other => fail(125, &format!("malformed order: stdin {other:?}")),
    }
    for e in env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
    fail(code, &format!("cannot run {}: {err}", argv[0]))
}
